//! TLS: serving `wss://` with rustls, from PEM files or a rustls config of your own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::{ServeError, Server};

/// How long a client has to finish the TLS handshake and send its HTTP request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl Server {
    /// Serves `wss://` on `listener` until [`shutdown`](Server::shutdown) completes:
    /// the same endpoints as [`serve`](Server::serve), behind TLS.
    pub async fn serve_tls(&self, listener: TcpListener, tls: TlsConfig) -> Result<(), ServeError> {
        let addr = listener.local_addr()?;
        let _ = self.inner.local_addr.set(addr);
        self.start().await?;
        tracing::info!(%addr, name = %self.inner.config.name, "switchboard listening (TLS)");
        let acceptor = TlsAcceptor::from(tls.0);
        let app = self.router();
        let stop = self.inner.stop_accepting.clone();
        let http = TaskTracker::new();
        loop {
            let (tcp, remote) = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors, most likely: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stop.clone());
            http.spawn(async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let service =
                    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(remote));
                        app.clone().oneshot(req)
                    });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HANDSHAKE_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = stop.cancelled() => {
                        // Upgraded WebSockets live on in their own tasks; this ends
                        // plain HTTP keep-alive connections.
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
        http.close();
        self.stopped().await;
        Ok(())
    }
}
