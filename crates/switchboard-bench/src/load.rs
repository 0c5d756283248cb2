//! Driving connections: opening them, pacing, round trips, timestamps in frames.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use switchboard_proto::msgpack;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::histogram::Histogram;
use crate::report::Report;
use crate::server::ServerProc;
pub(crate) use crate::socket_config::ws_config;
use crate::{Protocol, Target};

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Opens one WebSocket from `source` (a 127.0.0.x address, for more than 64k sockets),
/// offering `subprotocol`.
pub(crate) async fn open(
    url: &str,
    addr: SocketAddr,
    source: Option<IpAddr>,
    subprotocol: Option<&'static str>,
) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut request = url.into_client_request()?;
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())).await?;
    Ok(ws)
}

/// A frame written in `target`'s encoding: JSON text, or MessagePack.
pub(crate) fn wire(target: Target, frame: Message) -> Message {
    match (target.subprotocol(), frame) {
        (Some(_), Message::Text(t)) => match msgpack::from_json(t.as_str()) {
            Ok(bytes) => Message::Binary(bytes.into()),
            Err(_) => Message::Text(t),
        },
        (_, frame) => frame,
    }
}

/// Reads until a data frame (a MessagePack one as its JSON); answers Socket.IO's pings.
pub(crate) async fn next_text(
    ws: &mut Ws,
) -> anyhow::Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.as_str() == "2" {
                    ws.send(Message::text("3")).await?; // Engine.IO ping
                    continue;
                }
                return Ok(t);
            }
            Some(Ok(Message::Binary(b))) => {
                // A tick's stamp is all the load reads of it (as of a JSON one).
                if let Some(t) = msgpack_stamp(&b) {
                    return Ok(format!(r#"{{"t":{t}}}"#).into());
                }
                return Ok(msgpack::to_json(&b, usize::MAX)?.into());
            }
            Some(Ok(Message::Close(f))) => anyhow::bail!("closed: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection dropped"),
        }
    }
}

/// Connects and completes the target's own handshake.
pub(crate) async fn connect(
    target: Target,
    server: &ServerProc,
    source: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    let mut ws = open(&server.url(), server.addr, source, target.subprotocol()).await?;
    match target.protocol() {
        Protocol::Switchboard => {
            next_text(&mut ws).await?; // connected
        }
        Protocol::Floor => {}
        Protocol::Socketio => {
            next_text(&mut ws).await?; // 0{sid...}
            ws.send(Message::text("40")).await?;
            next_text(&mut ws).await?; // 40{sid}
        }
    }
    Ok(ws)
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `t` stamp of a MessagePack tick (the key `t` and a uint 32 or 64), found without
/// reading the rest.
pub(crate) fn msgpack_stamp(frame: &[u8]) -> Option<u64> {
    let at = frame.windows(2).position(|w| w == [0xa1, b't'])? + 2;
    let rest = frame.get(at..)?;
    match rest.first()? {
        0xcf => Some(u64::from_be_bytes(rest.get(1..9)?.try_into().ok()?)),
        0xce => Some(u64::from(u32::from_be_bytes(
            rest.get(1..5)?.try_into().ok()?,
        ))),
        _ => None,
    }
}

/// The `"t":<micros>` stamp in a frame, found without parsing it.
pub(crate) fn stamp(frame: &str) -> Option<u64> {
    let at = frame.find("\"t\":")? + 4;
    let digits: &str = &frame[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}
/// What a connection sends for its `n`th round trip: the same frame each time, or,
/// where the template has `{n}`, a frame with that connection's next number there (a
/// request's `ref`, Socket.IO's ack id), as a real client numbers its requests.
#[derive(Clone)]
pub(crate) struct Request {
    target: Target,
    template: Arc<str>,
    fixed: Option<Message>,
}

impl Request {
    pub(crate) fn new(target: Target, template: &str) -> Request {
        let fixed = (!template.contains("{n}")).then(|| wire(target, Message::text(template)));
        Request {
            target,
            template: template.into(),
            fixed,
        }
    }

    pub(crate) fn nth(&self, n: u64) -> Message {
        match &self.fixed {
            Some(frame) => frame.clone(),
            None => wire(
                self.target,
                Message::text(self.template.replace("{n}", &n.to_string())),
            ),
        }
    }
}

/// Round trips: each connection sends `request` and waits for any answer, until the deadline.
pub(crate) async fn round_trips(
    target: Target,
    server: &ServerProc,
    n: usize,
    tasks: usize,
    duration: Duration,
    rate: u64,
    request: Request,
) -> anyhow::Result<Report> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(connect(target, server, None).await?);
    }
    let (_, cpu0) = server.usage();
    let start = Instant::now();
    let deadline = start + duration;
    let pace = (rate > 0).then(|| Pacer::start(rate, deadline));
    let tasks = tasks.clamp(1, n.max(1));
    let mut groups: Vec<Vec<Ws>> = (0..tasks).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        groups[i % tasks].push(c);
    }
    let mut handles = Vec::new();
    for group in groups {
        let request = request.clone();
        let tokens = pace.as_ref().map(|p| p.tokens.clone());
        handles.push(tokio::spawn(async move {
            let runs = group.into_iter().map(|mut ws| {
                let (request, tokens) = (request.clone(), tokens.clone());
                async move {
                    let mut hist = Histogram::new();
                    let mut ops = 0u64;
                    while Instant::now() < deadline {
                        if let Some(tokens) = &tokens {
                            match tokens.acquire().await {
                                Ok(permit) => permit.forget(),
                                Err(_) => break,
                            }
                        }
                        let frame = request.nth(ops + 1);
                        let sent = Instant::now();
                        if ws.send(frame).await.is_err() || next_text(&mut ws).await.is_err() {
                            break;
                        }
                        hist.record(sent.elapsed().as_micros() as u64);
                        ops += 1;
                    }
                    let _ = ws.close(None).await;
                    (ops, hist)
                }
            });
            drive(runs).await
        }));
    }
    let mut report = Report {
        target,
        ops: 0,
        seconds: 0.0,
        latency: Histogram::new(),
        cpu: Duration::ZERO,
        rss_delta: 0,
        note: String::new(),
        round: 0,
    };
    for h in handles {
        for (ops, hist) in h.await? {
            report.ops += ops;
            report.latency.merge(&hist);
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.cpu = server.usage().1.saturating_sub(cpu0);
    drop(pace);
    Ok(report)
}

/// Paces requests at a fixed rate: a thread hands out send tokens every 100 us (tokio's
/// timers tick by the millisecond, which would send each millisecond's requests in one
/// burst, and measure the burst's queueing rather than the server). Connections wait
/// for a token, send, and wait for the answer; latency counts from the send.
pub(crate) struct Pacer {
    tokens: Arc<tokio::sync::Semaphore>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pacer {
    pub(crate) fn start(rate: u64, deadline: Instant) -> Pacer {
        let tokens = Arc::new(tokio::sync::Semaphore::new(0));
        let handed = tokens.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut given = 0u64;
            while Instant::now() < deadline {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                if due > given {
                    handed.add_permits((due - given) as usize);
                    given = due;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            // Let waiting connections see the deadline.
            handed.close();
        });
        Pacer {
            tokens,
            thread: Some(thread),
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.tokens.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The frame a publisher sends, stamped with the send time.
///
/// The floor relays what it is sent as it is: unless `bare_floor` it is sent a frame
/// shaped like switchboard's delivery of the same tick (`to`, `from`, `offset` added),
/// so that both servers' receivers read the same bytes.
pub(crate) fn tick(target: Target, pad: &str, bare_floor: bool, number: u64) -> Message {
    let t = now_us();
    let frame = match target.protocol() {
        Protocol::Switchboard => Message::text(format!(
            r#"{{"type":"tick","to":"others","payload":{{"t":{t},"p":"{pad}"}}}}"#
        )),
        Protocol::Floor if bare_floor => Message::text(format!(r#"{{"t":{t},"p":"{pad}"}}"#)),
        Protocol::Floor => Message::text(format!(
            r#"{{"type":"tick","payload":{{"t":{t},"p":"{pad}"}},"to":"all","from":"0000000000000001","offset":{}}}"#,
            number + 1
        )),
        Protocol::Socketio => Message::text(format!(r#"42["tick",{{"t":{t},"p":"{pad}"}}]"#)),
    };
    wire(target, frame)
}

/// The padding that makes a `tick` about `size` bytes on the wire.
pub(crate) fn padding(size: usize) -> String {
    "x".repeat(size.saturating_sub(48).max(1))
}

pub(crate) fn room_tick(target: Target, room: &str) -> Message {
    let t = now_us();
    let frame = match target.protocol() {
        Protocol::Socketio => Message::text(format!(r#"42["room",{{"room":"{room}","t":{t}}}]"#)),
        _ => Message::text(format!(
            r#"{{"type":"tick","room":"{room}","payload":{{"t":{t}}}}}"#
        )),
    };
    wire(target, frame)
}

/// Drives many futures in one task, polling only those that were woken (a plain
/// `join_all` of a few dozen polls them all on every wake-up).
pub(crate) async fn drive<F: std::future::Future>(
    runs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut runs: futures_util::stream::FuturesUnordered<F> = runs.into_iter().collect();
    let mut done = Vec::with_capacity(runs.len());
    while let Some(out) = runs.next().await {
        done.push(out);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn stamps_are_found_without_parsing() {
        assert_eq!(
            stamp(r#"{"type":"tick","payload":{"t":1234,"p":"x"}}"#),
            Some(1234)
        );
        assert_eq!(stamp(r#"42["tick",{"t":99}]"#), Some(99));
        assert_eq!(stamp("nothing"), None);
        let frame =
            msgpack::from_json(r#"{"type":"tick","payload":{"t":1764000000000000,"p":"x"}}"#)
                .unwrap_or_default();
        assert_eq!(msgpack_stamp(&frame), Some(1_764_000_000_000_000));
    }
}
