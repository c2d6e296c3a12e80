//! TLS for TURN over TLS (RFC 8656 §3.1): rustls with TLS 1.2 and 1.3 only,
//! certificates read from PEM files and swapped on reload while open
//! connections keep the certificate they were handshaken with.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{Services, TlsFiles};

/// Which of a listener's two files a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFile {
    Certificate,
    PrivateKey,
}

/// Why a certificate or key could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsProblem {
    pub(crate) file: TlsFile,
    pub(crate) message: String,
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and its private key and checks they belong together.
pub(crate) fn load_certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsProblem> {
    let certificate_problem = |message: String| TlsProblem {
        file: TlsFile::Certificate,
        message,
    };
    let key_problem = |message: String| TlsProblem {
        file: TlsFile::PrivateKey,
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .map_err(|e| certificate_problem(pem_message(&files.certificate, &e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| certificate_problem(pem_message(&files.certificate, &e)))?;
    if chain.is_empty() {
        return Err(certificate_problem(format!(
            "no PEM certificate found in {}",
            files.certificate.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.private_key)
        .map_err(|e| key_problem(pem_message(&files.private_key, &e)))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| {
            key_problem(format!(
                "{} does not fit {}: {e}",
                files.private_key.display(),
                files.certificate.display()
            ))
        })
}

fn pem_message(path: &Path, error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(io) => {
            format!("cannot read {}: {}", path.display(), io.kind())
        }
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("no PEM item of the expected kind in {}", path.display())
        }
        other => format!("{} is not valid PEM: {other:?}", path.display()),
    }
}

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
        let mut config = ServerConfig::builder_with_provider(provider())
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
