//! `switchboard serve`: settings merged (flags, environment, file, defaults), the hub
//! built, bound and started (so a backplane that cannot start fails before anything is
//! printed), the address printed, then served until SIGTERM or Ctrl-C.

use anyhow::Context;

use crate::access::Access;
use crate::args::ServeArgs;
use crate::hub::{ClusterLink, hub};
use crate::settings::FileSettings;

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    raise_open_files_limit();
    let file = match &args.config {
        Some(path) => FileSettings::load(path)?,
        None => FileSettings::default(),
    };
    let settings = file.merge(args.settings());
    let (redis, nats) = (settings.redis.clone(), settings.nats.clone());
    let (node_ttl, log_window) = (settings.redis_node_ttl, settings.redis_log_window);
    let nats_node_ttl = settings.nats_node_ttl;
    let netconduit_port = settings.netconduit_port;
    let accept_hash = settings.netconduit_password_hash.unwrap_or(false);
    if redis.is_some() && nats.is_some() {
        anyhow::bail!("choose one cluster: redis or nats, not both");
    }
    let access = Access::from_settings(&settings)?;
    let mut config = settings.into_config()?;
    config.api_key = access.api_key.clone();
    let required = match (&config.password, &access.jwt) {
        (Some(_), _) => ", password required",
        (None, Some(_)) => ", JWT required",
        (None, None) => "",
    };
    let api = if access.api_key.is_some() {
        ", server API at /api"
    } else {
        ""
    };
    let link = match (redis.as_deref(), nats.as_deref()) {
        (Some(url), _) => Some(ClusterLink::Redis {
            url,
            node_ttl,
            log_window,
        }),
        (None, Some(url)) => Some(ClusterLink::Nats {
            url,
            node_ttl: nats_node_ttl,
        }),
        (None, None) => None,
    };
    let server = hub(config, link, access)?;
    let listening = server.bind().await.context("cannot start")?;
    let local = listening.local_addr();
    let (ws, http) = if listening.is_tls() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    // On stdout, for people and for scripts that started us on port 0.
    println!(
        "switchboard listening on {ws}://{local}{} (page: {http}://{local}/){required}{api}",
        server.config().path,
    );
    if let Some(port) = netconduit_port {
        let password = server.config().password.clone();
        serve_netconduit(&server, port, password, accept_hash).await?;
    }
    listening.run().await.context("server failed")?;
    Ok(())
}

/// Binds netconduit's TCP port on the hub's host and serves it beside the WebSocket
/// port; says where on stdout.
async fn serve_netconduit(
    server: &switchboard_server::Server,
    port: u16,
    password: Option<String>,
    accept_hash: bool,
) -> anyhow::Result<()> {
    use switchboard_server::NetconduitConfig;
    let addr = format!("{}:{port}", server.config().host);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot bind netconduit's port {addr}"))?;
    let local = listener.local_addr()?;
    let config = match password {
        Some(p) => NetconduitConfig::with_password(p).accept_password_hash(accept_hash),
        None => NetconduitConfig::open(),
    };
    let hash = match (server.config().password.is_some(), accept_hash) {
        (true, true) => ", password hash accepted (replayable: trusted networks only)",
        (true, false) => {
            ", refusing every client: add --netconduit-password-hash to accept its password hash"
        }
        _ => "",
    };
    println!("netconduit clients on tcp://{local}{hash}");
    let server = server.clone();
    tokio::spawn(async move {
        if let Err(e) = server.serve_netconduit(listener, config).await {
            tracing::error!(error = %e, "netconduit listener failed");
        }
    });
    Ok(())
}

/// Raises this process's open-file limit to its hard limit: every connection is a file
/// descriptor, and the usual soft limit (1,024) would lock new clients out long before
/// `max_connections`.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some() && limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(limit = ?limit.maximum, "open-file limit raised"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}
