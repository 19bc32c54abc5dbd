//! [`TlsOptions`]: how the client checks a qd server's certificate, and the dialing of a
//! TLS stream over TCP (rustls with the ring provider; no native libraries).
//!
//! The trust anchors are the CA certificates the caller gives (PEM, from a file or bytes);
//! for a self-signed server, its own certificate is its CA. Nothing is trusted by default:
//! a qd deployment is normally a private CA's business, and trusting every public CA would
//! let any certificate for the host name through.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::error::Error;

/// TLS settings for [`crate::ClientBuilder::tls`].
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM text of the CA certificates to trust.
    ca_pem: Vec<u8>,
    /// The name the certificate must be for; defaults to the host of the address.
    server_name: Option<String>,
}

impl TlsOptions {
    pub fn new() -> Self {
        TlsOptions::default()
    }

    /// Trusts the CA certificates in this PEM text (may be called more than once).
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca_pem.extend_from_slice(pem.as_ref());
        self.ca_pem.push(b'\n');
        self
    }

    /// Trusts the CA certificates in this PEM file.
    pub fn ca_pem_file(self, path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            Error::invalid_arg(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        Ok(self.ca_pem(pem))
    }

    /// The name the server's certificate must carry, when it is not the address's host
    /// (e.g. connecting by IP to a certificate for `qd.internal`).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Builds the connector once, when the client is built, so a bad CA fails at once.
    pub(crate) fn connector(&self, addr: &str) -> Result<Tls, Error> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let cert = cert.map_err(|e| Error::invalid_arg(format!("bad CA PEM: {e}")))?;
            roots.add(cert).map_err(|e| Error::invalid_arg(format!("bad CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::invalid_arg(
                "TLS needs a CA certificate to trust: give TlsOptions::ca_pem or ca_pem_file (for a self-signed server, its certificate)",
            ));
        }
        let host = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_owned(),
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|e| Error::invalid_arg(format!("bad TLS server name {host:?}: {e}")))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid_arg(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls { connector: TlsConnector::from(Arc::new(config)), name })
    }
}

/// A ready connector and the name to check; cloned into every dial.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Tls {
    pub(crate) async fn wrap(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), tcp).await
    }
}

/// `host` of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("qd.internal:7700"), "qd.internal");
        assert_eq!(host_of("127.0.0.1:7700"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7700"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
