//! TLS for the job protocol: loads the PEM certificate chain and key named by the
//! configuration into a [`TlsAcceptor`] (rustls with the ring provider: no C toolchain
//! needed). The handshake runs per connection in the listener's task, under the protocol's
//! handshake timeout; `conn` then serves the decrypted stream like a plain one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
pub use tokio_rustls::TlsAcceptor;

/// Why the TLS files could not be used. Each message names the file and what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {source}; pass a PEM file with --tls-cert")]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the TLS certificate file {path} holds no certificate; it must be PEM")]
    NoCert { path: PathBuf },
    #[error("cannot read the TLS key {path}: {source}; pass a PEM private key with --tls-key")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the acceptor from a PEM certificate chain (leaf first) and a PEM private key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|source| TlsError::Cert { path: cert.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert { path: cert.to_owned() });
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsError::Key { path: key.to_owned(), source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
