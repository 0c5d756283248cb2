//! Serving a [`Server`]: on a listener (plain or TLS), on its configured address until a
//! signal ([`Server::run`], built on [`Server::bind`]), or mounted in an axum app.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::TlsConfig;
use super::accept::accept_loop;
use crate::{ServeError, Server};

/// A server bound to its configured address and started (backplane up, startup hooks
/// run), not yet serving: what [`Server::bind`] returns, so a program can say where it
/// listens before it serves.
///
/// ```no_run
/// # async fn demo() -> Result<(), switchboard_server::ServeError> {
/// let server = switchboard_server::Server::builder().build();
/// let listening = server.bind().await?;
/// println!("listening on {}", listening.local_addr());
/// listening.run().await // until Ctrl-C or SIGTERM
/// # }
/// ```
#[derive(Debug)]
pub struct Listening {
    server: Server,
    listener: TcpListener,
    tls: Option<TlsConfig>,
    local_addr: SocketAddr,
}

impl Listening {
    /// The address bound (the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// True when it serves `wss://`.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<(), ServeError> {
        let server = self.server.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal received");
            server.shutdown().await;
        });
        self.serve().await
    }

    /// Serves until [`Server::shutdown`] completes.
    pub async fn serve(self) -> Result<(), ServeError> {
        self.server.serve_started(self.listener, self.tls).await
    }
}

impl Server {
    /// Serves on `listener` until [`shutdown`](Server::shutdown) completes.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), ServeError> {
        self.set_local_addr(listener.local_addr()?);
        self.start().await?;
        self.serve_started(listener, None).await
    }

    /// Serves `wss://` on `listener` until [`shutdown`](Server::shutdown) completes:
    /// the same endpoints as [`serve`](Server::serve), behind TLS.
    pub async fn serve_tls(&self, listener: TcpListener, tls: TlsConfig) -> Result<(), ServeError> {
        self.set_local_addr(listener.local_addr()?);
        self.start().await?;
        self.serve_started(listener, Some(tls)).await
    }

    /// Binds the configured `host:port` and starts the server (the backplane, the
    /// startup hooks), ready to [`run`](Listening::run). With
    /// [`tls_cert`](crate::ServerConfig::tls_cert) and
    /// [`tls_key`](crate::ServerConfig::tls_key) set, it will serve `wss://`.
    pub async fn bind(&self) -> Result<Listening, ServeError> {
        let config = self.config();
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(ServeError::Config(
                    "`tls_cert` and `tls_key` go together: set both or neither".into(),
                ));
            }
        };
        let addr = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local_addr = listener.local_addr()?;
        self.set_local_addr(local_addr);
        self.start().await?;
        Ok(Listening {
            server: self.clone(),
            listener,
            tls,
            local_addr,
        })
    }

    /// Binds the configured `host:port` and serves until Ctrl-C or SIGTERM, then shuts
    /// down gracefully: [`bind`](Server::bind), then [`Listening::run`].
    pub async fn run(&self) -> Result<(), ServeError> {
        self.bind().await?.run().await
    }

    /// The accept loop of a started server, until shutdown completes.
    async fn serve_started(
        &self,
        listener: TcpListener,
        tls: Option<TlsConfig>,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        tracing::info!(%addr, %scheme, name = %self.name(), "switchboard listening");
        let acceptor = tls.map(|t| t.acceptor());
        accept_loop(listener, self, acceptor).await;
        self.stopped().await;
        Ok(())
    }

    /// The axum router: the WebSocket endpoint at the configured path (default `/ws`),
    /// `/health`, `/rpc`, and the routes added with
    /// [`ServerBuilder::routes`](crate::ServerBuilder::routes). Mount it in your own app
    /// with `Router::merge`.
    pub fn router(&self) -> axum::Router {
        super::router(self.clone())
    }

    /// The WebSocket endpoint alone, to route at a path of your choice.
    pub fn ws_route(&self) -> axum::routing::MethodRouter {
        super::ws_route(self.clone())
    }

    /// A WebSocket endpoint that sends every text and binary frame back as it came,
    /// through the same transport, limits and outbound queue as the real endpoint but
    /// with no protocol: for conformance suites (Autobahn) and transport benchmarks.
    /// Not routed unless you route it.
    ///
    /// ```
    /// let server = switchboard_server::Server::builder().build();
    /// let app = server.router().route("/echo", server.echo_route());
    /// ```
    pub fn echo_route(&self) -> axum::routing::MethodRouter {
        super::echo_route(self.clone())
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
