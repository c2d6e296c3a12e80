//! Loading a certificate chain and its private key from PEM files, for the
//! configuration check and for the TLS listeners alike. It sits below both
//! `config` and `transport` and depends on neither.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A listener's certificate chain and private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub(crate) certificate: PathBuf,
    pub(crate) private_key: PathBuf,
}

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

/// The rustls crypto provider that keys are checked with and TLS is served with.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
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
    CertifiedKey::from_der(chain, key, &crypto_provider())
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
