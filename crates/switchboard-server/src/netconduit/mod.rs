//! netconduit's own clients over raw TCP ([`Server::serve_netconduit`]): each
//! connection is authenticated at the edge, then bridged to the server's WebSocket
//! endpoint in memory, its frames translated to native envelopes and back
//! (`switchboard_proto::netconduit`). Everything past the edge (rooms, relay, RPC,
//! limits, permissions, metrics) sees a native client at the netconduit client's
//! address.

mod bridge;
mod reader;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::{ServeError, Server};

/// How long a netconduit client has to authenticate.
pub(crate) const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// How netconduit clients authenticate.
///
/// netconduit sends an unsalted SHA-256 of the password: whoever sees it once (the
/// wire is plain TCP) can replay it for ever, so a server with a password accepts it
/// only when [`accept_password_hash`](NetconduitConfig::accept_password_hash) says so.
///
/// ```
/// use switchboard_server::NetconduitConfig;
/// // A server whose clients authenticate with "secret123", netconduit's included.
/// let config = NetconduitConfig::with_password("secret123").accept_password_hash(true);
/// assert!(config.accepts_password_hash());
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct NetconduitConfig {
    password: Option<String>,
    accept_hash: bool,
}

impl NetconduitConfig {
    /// No password: any netconduit client is let in (as any WebSocket client is).
    pub fn open() -> NetconduitConfig {
        NetconduitConfig::default()
    }

    /// The server's password: the bridge authenticates to the server with it once the
    /// netconduit client proved it knows it.
    pub fn with_password(password: impl Into<String>) -> NetconduitConfig {
        NetconduitConfig {
            password: Some(password.into()),
            accept_hash: false,
        }
    }

    /// Accepts netconduit's replayable password hash (off by default: every netconduit
    /// client is refused while a password is set).
    #[must_use]
    pub fn accept_password_hash(mut self, accept: bool) -> NetconduitConfig {
        self.accept_hash = accept;
        self
    }

    /// Whether netconduit's password hash is accepted.
    pub fn accepts_password_hash(&self) -> bool {
        self.accept_hash
    }
}

impl Server {
    /// Serves netconduit's own clients (the `netconduit` 5 Python package, raw TCP) on
    /// `listener` until the server stops accepting: the same rooms, relay and RPC as
    /// WebSocket clients, in netconduit's frames. Start the server first
    /// ([`bind`](Server::bind) or [`serve`](Server::serve)).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), switchboard_server::ServeError> {
    /// use switchboard_server::{NetconduitConfig, Server};
    /// let server = Server::builder().build();
    /// let listening = server.bind().await?;
    /// let tcp = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
    /// tokio::spawn({
    ///     let server = server.clone();
    ///     async move { server.serve_netconduit(tcp, NetconduitConfig::open()).await }
    /// });
    /// listening.run().await
    /// # }
    /// ```
    pub async fn serve_netconduit(
        &self,
        listener: TcpListener,
        config: NetconduitConfig,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr()?;
        if config.password.is_some() && config.accept_hash {
            tracing::warn!(%addr, "netconduit clients authenticate with an unsalted SHA-256 \
                of the password, replayable by whoever sees it: keep this port on a trusted network");
        }
        tracing::info!(%addr, "netconduit listening");
        let stop = self.accepting_stopped();
        let slots = self.http_slots();
        let tasks = TaskTracker::new();
        while let Some((tcp, remote)) = crate::http::accept_next(&listener, &stop).await {
            // Until it is authenticated, a connection holds a slot like an HTTP one:
            // capped overall and per address; past the cap it is answered and closed.
            let slot = slots.take(Some(remote.ip()));
            let (server, config) = (self.clone(), config.clone());
            tasks.spawn(async move {
                bridge::serve(server, tcp, remote, config, slot).await;
            });
        }
        tasks.close();
        Ok(())
    }
}
