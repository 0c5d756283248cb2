//! TLS: serving `wss://` with rustls, from PEM files or a rustls config of your own.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::ServeError;

/// A TLS server configuration (rustls, TLS 1.2 and 1.3).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use switchboard_server::{Server, TlsConfig};
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
/// Server::builder().build().serve_tls(listener, tls).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Loads a certificate chain and a private key (PKCS#8, PKCS#1 or SEC1) from PEM files.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, ServeError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| ServeError::Config(format!("cannot read {}: {e}", p.display())))
        };
        TlsConfig::from_pem(&read(cert)?, &read(key)?)
            .map_err(|e| ServeError::Config(format!("{} / {}: {e}", cert.display(), key.display())))
    }

    /// Builds the configuration from PEM text: the certificate chain, then the key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsConfig, ServeError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ServeError::Config(format!("bad certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ServeError::Config("no certificate in the PEM".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| ServeError::Config(format!("bad private key PEM: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| ServeError::Config(format!("TLS certificate and key: {e}")))?;
        Ok(TlsConfig::from_rustls(config))
    }

    /// Uses a rustls configuration you built (client certificates, SNI, ...).
    pub fn from_rustls(mut config: rustls::ServerConfig) -> TlsConfig {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConfig(Arc::new(config))
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.0.clone())
    }
}
