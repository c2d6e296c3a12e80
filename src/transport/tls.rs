//! TLS for TURN over TLS (RFC 8656 §3.1): rustls with TLS 1.2 and 1.3 only,
//! certificates read from PEM files (by [`crate::certificate`]) and swapped on
//! reload while open connections keep the certificate they were handshaken with.

use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certificate::{TlsFiles, TlsProblem, crypto_provider, load_certified_key};
use crate::config::Services;

/// The certificate a listener presents, replaceable at run time.
#[derive(Debug)]
pub(crate) struct ReloadableCertificate {
    /// The files and what was read from them, swapped together.
    current: RwLock<(TlsFiles, Arc<CertifiedKey>)>,
}

impl ReloadableCertificate {
    pub(crate) fn new(files: TlsFiles) -> Result<Arc<Self>, TlsProblem> {
        let current = load_certified_key(&files)?;
        Ok(Arc::new(Self {
            current: RwLock::new((files, current)),
        }))
    }

    /// Reads `files` (the same or others); on failure the old certificate
    /// stays in use.
    pub(crate) fn reload_from(&self, files: TlsFiles) -> Result<(), TlsProblem> {
        let fresh = load_certified_key(&files)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (files, fresh);
        Ok(())
    }

    /// A rustls server config serving this certificate (TLS 1.2 and 1.3),
    /// with ALPN "stun.turn" (RFC 7443) and "http/1.1" for what it serves;
    /// a client offering neither still connects.
    pub(crate) fn server_config(self: &Arc<Self>, services: Services) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        if services.turn {
            config.alpn_protocols.push(b"stun.turn".to_vec());
        }
        if services.http {
            config.alpn_protocols.push(b"http/1.1".to_vec());
        }
        Arc::new(config)
    }
}

impl ResolvesServerCert for ReloadableCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .1
                .clone(),
        )
    }
}
