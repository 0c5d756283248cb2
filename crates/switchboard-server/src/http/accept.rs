//! The accept loop: every TCP connection is served as HTTP/1.1 with upgrades, behind
//! TLS when the server has it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Server;
use crate::timed_io::TimedIo;
use tower::ServiceExt;

/// How long a client has to finish its handshake (TLS, then the HTTP upgrade request).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop` and serves each as HTTP/1.1 with upgrades, in a task
/// of its own that ends when the request is upgraded (the WebSocket then lives in its
/// own task) or the connection closes. With `tls`, the TLS handshake comes first. After
/// `stop`, connections still speaking plain HTTP finish their request and close.
pub(crate) async fn accept_loop(listener: TcpListener, server: &Server, tls: Option<TlsAcceptor>) {
    let app = server.router();
    let stop = server.accepting_stopped();
    let slots = server.http_slots();
    let write_timeout = server.config().http_write_timeout;
    let http = TaskTracker::new();
    while let Some((tcp, remote)) = accept_next(&listener, &stop).await {
        // Until it is a WebSocket, a connection holds an HTTP slot: capped overall and
        // per address, so idle or stalled HTTP connections cannot take every descriptor.
        let slot = match slots.take(Some(remote.ip())) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(%remote, ?why, "HTTP connection refused: too many");
                continue;
            }
        };
        let tcp = TimedIo::new(tcp, write_timeout);
        let (app, stop, tls) = (app.clone(), stop.clone(), tls.clone());
        http.spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_http(tcp, remote, app, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_http(stream, remote, app, stop).await,
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    http.close();
}

/// The next connection, until `stop`; with Nagle's batching off (small frames go out
/// at once: the writers already batch what is queued). A failed accept (out of file
/// descriptors, most likely) backs off instead of spinning.
pub(crate) async fn accept_next(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, remote));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves one connection's HTTP requests until it is upgraded or closes.
pub(crate) async fn serve_http<Io>(
    io: Io,
    remote: SocketAddr,
    app: axum::Router,
    stop: CancellationToken,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            // Upgraded WebSockets live on in their own tasks; this ends plain HTTP
            // keep-alive connections.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
