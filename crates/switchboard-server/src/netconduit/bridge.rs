//! One netconduit connection: authenticated at the edge, then bridged to the server's
//! WebSocket endpoint in memory, frames translated both ways, heartbeats kept.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_proto::ErrorCode;
use switchboard_proto::netconduit::{
    FrameError, Inbound, Kind, Outbound, encode_frame, inbound, outbound,
};
use tokio::io::{AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::reader::{ReadError, read_frame, read_loop};
use super::{AUTH_TIMEOUT, NetconduitConfig};
use crate::Server;
use crate::slots::{Refused, Slot};

/// The in-memory WebSocket to the server.
type Bridge = WebSocketStream<DuplexStream>;

/// Bytes in flight between the bridge and the server, each way.
const PIPE: usize = 64 << 10;

/// Serves one netconduit client until it or the server closes.
pub(super) async fn serve(
    server: Server,
    tcp: TcpStream,
    remote: SocketAddr,
    config: NetconduitConfig,
    slot: Result<Slot, Refused>,
) {
    let max = server.config().max_message_size;
    let write_timeout = server.config().http_write_timeout;
    let (mut rd, mut wr) = tcp.into_split();
    let Ok(slot) = slot else {
        tracing::debug!(%remote, "netconduit connection refused: too many");
        refuse(&mut wr, "too many connections; try again later").await;
        return;
    };
    let (header, payload) = match tokio::time::timeout(AUTH_TIMEOUT, read_frame(&mut rd, max)).await
    {
        Ok(Ok(frame)) => frame,
        Ok(Err(ReadError::Frame(e))) => return refuse(&mut wr, &e.to_string()).await,
        Ok(Err(ReadError::Closed)) => return,
        Err(_) => return refuse(&mut wr, "authentication timed out").await,
    };
    if header.kind != Kind::AuthRequest {
        return refuse(&mut wr, "authenticate first (AUTH_REQUEST)").await;
    }
    // Guesses count against the address as the native password's do.
    let throttle = server.auth().throttle();
    if let Some(wait) = throttle.blocked(remote.ip(), std::time::Instant::now()) {
        return refuse(&mut wr, &crate::auth::throttled_message(wait)).await;
    }
    if let Err(reason) = check_password(&config, &payload) {
        tracing::info!(%remote, reason, "netconduit authentication failed");
        throttle.failed(remote.ip(), std::time::Instant::now());
        return refuse(&mut wr, reason).await;
    }
    let (ws, connected) =
        match tokio::time::timeout(AUTH_TIMEOUT, open(&server, remote, &config)).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(reason)) => return refuse(&mut wr, &reason).await,
            Err(_) => return refuse(&mut wr, "the server did not answer in time").await,
        };
    drop(slot);
    let welcome = json!({
        "session_token": connected.get("session_id").or_else(|| connected.get("client_id")),
        "server_info": {
            "name": server.name(),
            "version": env!("CARGO_PKG_VERSION"),
            "client_id": connected.get("client_id"),
        },
    });
    let frame = encode_frame(Kind::AuthSuccess, 0, Some(&welcome));
    if write(&mut wr, &frame, write_timeout).await.is_err() {
        return;
    }
    let (frames_tx, frames) = mpsc::channel(16);
    let reading = tokio::spawn(read_loop(rd, max, frames_tx));
    pump(&server, ws, frames, &mut wr).await;
    reading.abort();
    let _ = wr.shutdown().await;
}

/// Whether the client knows the password (netconduit sends its SHA-256 in hex).
fn check_password(config: &NetconduitConfig, payload: &Value) -> Result<(), &'static str> {
    let Some(password) = &config.password else {
        return Ok(());
    };
    if !config.accept_hash {
        return Err("this server does not accept netconduit's password hash");
    }
    let given = payload
        .get("password_hash")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let expected = hex(&Sha256::digest(password.as_bytes()));
    if bool::from(
        given
            .to_ascii_lowercase()
            .as_bytes()
            .ct_eq(expected.as_bytes()),
    ) {
        Ok(())
    } else {
        Err("Invalid password")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the in-memory WebSocket (native dialect, the client's address) and waits for
/// `connected`: its payload, or why the server refused.
async fn open(
    server: &Server,
    remote: SocketAddr,
    config: &NetconduitConfig,
) -> Result<(Bridge, Value), String> {
    let (near, far) = tokio::io::duplex(PIPE);
    tokio::spawn(crate::http::serve_http(
        far,
        remote,
        server.router(),
        server.accepting_stopped(),
    ));
    let url = format!("ws://netconduit{}?dialect=native", server.config().path);
    let (mut ws, _) = tokio_tungstenite::client_async(url, near)
        .await
        .map_err(|e| format!("the server refused the connection: {e}"))?;
    if let Some(password) = &config.password {
        let auth = json!({"type": "auth", "ref": "auth", "payload": {"password": password}});
        ws.send(Message::text(auth.to_string()))
            .await
            .map_err(|e| e.to_string())?;
    }
    while let Some(message) = ws.next().await {
        match message.map_err(|e| e.to_string())? {
            Message::Text(text) => match outbound(&text) {
                Outbound::Connected(payload) => return Ok((ws, payload)),
                _ => {
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    if v["type"] == "error" {
                        let why = v["payload"]["message"].as_str().unwrap_or("refused");
                        return Err(why.to_owned());
                    }
                }
            },
            Message::Close(frame) => {
                let why = frame.map_or_else(|| "closed".to_owned(), |f| f.reason.to_string());
                return Err(why);
            }
            _ => {}
        }
    }
    Err("the server closed the connection".to_owned())
}

/// Moves frames both ways until either side ends; keeps the heartbeat (a ping after
/// `heartbeat_interval` of silence, the end after `heartbeat_timeout`).
async fn pump<W>(
    server: &Server,
    mut ws: Bridge,
    mut frames: mpsc::Receiver<Result<(switchboard_proto::netconduit::Header, Value), ReadError>>,
    wr: &mut W,
) where
    W: AsyncWrite + Unpin,
{
    let config = server.config();
    let (interval, timeout) = (config.heartbeat_interval, config.heartbeat_timeout);
    let write_timeout = config.http_write_timeout;
    let mut heard = Instant::now();
    let mut pinged = false;
    // A client's PAUSE stops reading from the server until its RESUME: what comes
    // meanwhile waits in the connection's outbound queue, under its usual bounds.
    let mut paused = false;
    let mut tick = tokio::time::interval(interval.min(timeout / 2).max(Duration::from_millis(10)));
    loop {
        let out: Option<Vec<u8>> = tokio::select! {
            read = frames.recv() => match read {
                Some(Ok((header, payload))) => {
                    heard = Instant::now();
                    pinged = false;
                    match inbound(&header, payload) {
                        Ok(Inbound::Native(text)) => {
                            if ws.send(Message::text(text)).await.is_err() {
                                break;
                            }
                            None
                        }
                        Ok(Inbound::Reply(frame)) => Some(frame),
                        Ok(Inbound::Close) => break,
                        Ok(Inbound::Pause) => {
                            paused = true;
                            None
                        }
                        Ok(Inbound::Resume) => {
                            paused = false;
                            None
                        }
                        Ok(_) => None,
                        Err(reason) => Some(error_message(ErrorCode::InvalidPayload, &reason)),
                    }
                }
                Some(Err(ReadError::Frame(e))) => {
                    // The stream is out of step: say why, then close.
                    let _ = write(wr, &error_message(code_of(&e), &e.to_string()), write_timeout).await;
                    break;
                }
                Some(Err(ReadError::Closed)) | None => break,
            },
            message = ws.next(), if !paused => match message {
                Some(Ok(Message::Text(text))) => match outbound(&text) {
                    Outbound::Frame(frame) => Some(frame),
                    _ => None,
                },
                Some(Ok(Message::Close(frame))) => {
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    let close = encode_frame(Kind::Close, 0, Some(&json!({"reason": reason})));
                    let _ = write(wr, &close, write_timeout).await;
                    break;
                }
                Some(Ok(_)) => None,
                Some(Err(_)) | None => break,
            },
            _ = tick.tick() => {
                if heard.elapsed() >= timeout {
                    tracing::debug!("netconduit client stopped answering heartbeats");
                    break;
                }
                if heard.elapsed() >= interval && !pinged {
                    pinged = true;
                    Some(encode_frame(Kind::Ping, 0, None))
                } else {
                    None
                }
            }
        };
        if let Some(frame) = out {
            if write(wr, &frame, write_timeout).await.is_err() {
                break;
            }
        }
    }
    let _ = ws.close(None).await;
}

/// The native code for a bad frame.
fn code_of(e: &FrameError) -> ErrorCode {
    match e {
        FrameError::TooLarge { .. } | FrameError::InflatesTooLarge { .. } => {
            ErrorCode::MessageTooLarge
        }
        _ => ErrorCode::InvalidPayload,
    }
}

/// An `error` message in netconduit's frame, as a native client would hear it.
fn error_message(code: ErrorCode, message: &str) -> Vec<u8> {
    let body = json!({"type": "error", "data": {"code": code.as_str(), "message": message}});
    encode_frame(Kind::Message, 0, Some(&body))
}

/// Writes one frame, failing past `timeout` (a client that stopped reading).
async fn write<W>(wr: &mut W, frame: &[u8], timeout: Duration) -> Result<(), ()>
where
    W: AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, wr.write_all(frame)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Answers `AUTH_FAILURE` with `reason` and closes.
async fn refuse<W>(wr: &mut W, reason: &str)
where
    W: AsyncWrite + Unpin,
{
    let frame = encode_frame(Kind::AuthFailure, 0, Some(&json!({"reason": reason})));
    let _ = write(wr, &frame, Duration::from_secs(2)).await;
    let _ = wr.shutdown().await;
}
