//! Test harness for switchboard: a server on port 0 and a raw WebSocket client that
//! speaks frames exactly as written, for tests that check the wire itself.
//!
//! Every wait is bounded by [`TIMEOUT`] so a broken test fails instead of hanging, and
//! nothing sleeps to synchronise: tests wait for the frame or event they expect.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchboard_server::{Server, ServerBuilder, ServerConfig};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any harness wait lasts before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A server listening on a free loopback port.
pub struct TestServer {
    /// The server handle.
    pub server: Server,
    /// Where it listens.
    pub addr: SocketAddr,
    task: Option<JoinHandle<()>>,
    tls: bool,
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and a client TLS
/// configuration that trusts it (and nothing else).
pub struct TestCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// A client configuration that trusts only this certificate.
    pub client: std::sync::Arc<rustls::ClientConfig>,
}

impl TestCert {
    /// Generates a fresh one.
    pub fn generate() -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("self-signed certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ck.cert.der().clone())
            .expect("trust the test certificate");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TestCert {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
            client: std::sync::Arc::new(client),
        }
    }
}

impl TestServer {
    /// Builds and serves on 127.0.0.1:0; returns once it is listening.
    pub async fn start(builder: ServerBuilder) -> TestServer {
        TestServer::start_on("127.0.0.1:0".parse().expect("an address"), builder).await
    }

    /// Builds and serves on `addr` (to restart a server where its clients expect it).
    pub async fn start_on(addr: SocketAddr, builder: ServerBuilder) -> TestServer {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the address");
        let addr = listener.local_addr().expect("local addr");
        let server = builder.build();
        let s = server.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = s.serve(listener).await {
                panic!("server failed: {e}");
            }
        });
        TestServer {
            server,
            addr,
            task: Some(task),
            tls: false,
        }
    }

    /// Builds and serves `wss://` on 127.0.0.1:0 with `cert`.
    pub async fn start_tls(builder: ServerBuilder, cert: &TestCert) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        let tls = switchboard_server::TlsConfig::from_pem(
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
        )
        .expect("TLS config");
        let server = builder.build();
        let s = server.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = s.serve_tls(listener, tls).await {
                panic!("server failed: {e}");
            }
        });
        TestServer {
            server,
            addr,
            task: Some(task),
            tls: true,
        }
    }

    /// A server with default settings and the given handlers.
    pub async fn with(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> TestServer {
        TestServer::start(configure(Server::builder())).await
    }

    /// Test defaults: port 0, a short shutdown grace and close timeout.
    pub fn config() -> ServerConfig {
        ServerConfig {
            port: 0,
            shutdown_grace: Duration::from_secs(5),
            // Test clients often hold a socket they no longer read: do not wait long for
            // their close answer.
            close_timeout: Duration::from_millis(250),
            ..ServerConfig::default()
        }
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.addr, self.server.config().path)
    }

    /// An HTTP URL on the server.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connects a raw client and reads its `connected` frame.
    pub async fn raw(&self) -> RawClient {
        let mut c = RawClient::connect(&self.url()).await;
        let hello = c.recv().await;
        assert_eq!(hello["type"], "connected", "first frame: {hello}");
        c.id = hello["payload"]["client_id"]
            .as_str()
            .expect("client_id")
            .to_owned();
        c
    }

    /// Shuts the server down and waits for `serve` to return.
    pub async fn stop(mut self) {
        self.server.shutdown().await;
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("serve returns after shutdown")
                .expect("serve task");
        }
    }
}

/// A WebSocket client with no protocol logic: it sends and reads frames as they are.
pub struct RawClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The client id from `connected` (empty until read).
    pub id: String,
}

/// A close frame as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code; 1006 if the connection dropped without a close frame.
    pub code: u16,
    /// The reason text.
    pub reason: String,
}

impl RawClient {
    /// Opens the socket without reading anything.
    pub async fn connect(url: &str) -> RawClient {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        RawClient {
            ws,
            id: String::new(),
        }
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends text exactly as given.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send text");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(Message::binary(data))
            .await
            .expect("send binary");
    }

    /// The next data or close frame; panics on timeout or a dropped connection.
    async fn next_frame(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("read frame");
            match msg {
                Message::Close(f) => panic!("closed while waiting for a frame: {f:?}"),
                Message::Text(_) | Message::Binary(_) => return msg,
                _ => {}
            }
        }
    }

    /// The next text frame as JSON; panics on binary, close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next_frame().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The next frame, which must be binary.
    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.next_frame().await {
            Message::Binary(b) => b.to_vec(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Sends `value` and returns the next frame.
    pub async fn roundtrip(&mut self, value: Value) -> Value {
        self.send(value).await;
        self.recv().await
    }

    /// Reads until the server closes; returns the close frame, skipping other frames.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Closed {
                        code: u16::from(f.code),
                        reason: f.reason.to_string(),
                    };
                }
                Some(Ok(Message::Close(None))) => {
                    return Closed {
                        code: 1005,
                        reason: String::new(),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    return Closed {
                        code: 1006,
                        reason: String::new(),
                    };
                }
            }
        }
    }

    /// True if no frame arrives before the server answers a `ping`: proves nothing was
    /// queued for this client before it, without sleeping.
    pub async fn nothing_pending(&mut self) -> bool {
        let frame = self.roundtrip(serde_json::json!({"type": "ping"})).await;
        frame["type"] == "pong"
    }

    /// Closes the socket politely (code 1000).
    pub async fn close(mut self) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        // Drain until the server's close answer arrives.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(TIMEOUT, self.ws.next()).await {}
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_connection(self) {
        drop(self);
    }
}

/// A WebSocket client written against the raw TCP socket: it completes the handshake,
/// then sends frames byte for byte as the test builds them (bad opcodes, invalid UTF-8,
/// lying lengths) and never answers pings, like a dead or hostile peer.
pub struct WireClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    /// The opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

impl WireFrame {
    /// For a close frame: the close code (1005 when there is none).
    pub fn close_code(&self) -> u16 {
        if self.payload.len() >= 2 {
            u16::from_be_bytes([self.payload[0], self.payload[1]])
        } else {
            1005
        }
    }

    /// The payload as JSON (for text frames).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("a JSON text frame")
    }
}

/// Builds one client frame: `fin`, `opcode`, masked with a fixed key when `masked`.
pub fn wire_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f)];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

impl WireClient {
    /// Connects to `addr` and upgrades at `path`, with extra request headers.
    pub async fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> WireClient {
        WireClient::connect_sending(addr, path, headers, &[]).await
    }

    /// Like [`connect_with`](WireClient::connect_with), with `early` bytes (frames)
    /// written in the same write as the upgrade request, before its answer.
    pub async fn connect_sending(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        early: &[u8],
    ) -> WireClient {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(early);
        stream.write_all(&bytes).await.expect("send handshake");
        let mut c = WireClient {
            stream,
            buf: Vec::new(),
        };
        let head = c.read_http_head().await;
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "expected a WebSocket upgrade, got: {head}"
        );
        c
    }

    /// Connects to `addr` and upgrades at `/ws`.
    pub async fn connect(addr: SocketAddr) -> WireClient {
        WireClient::connect_with(addr, "/ws", &[]).await
    }

    /// Sends an HTTP request without completing an upgrade and returns the response head.
    pub async fn http_head(addr: SocketAddr, request: &str) -> String {
        use tokio::io::AsyncWriteExt;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut c = WireClient {
            stream,
            buf: Vec::new(),
        };
        c.stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        c.read_http_head().await
    }

    async fn read_http_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            if self.fill().await == 0 {
                return String::from_utf8_lossy(&self.buf).into_owned();
            }
        }
    }

    async fn fill(&mut self) -> usize {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("data in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Writes raw bytes; false if the server has already closed the socket.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Sends one well-formed, masked text frame.
    pub async fn send_text(&mut self, text: &str) -> bool {
        self.send_raw(&wire_frame(true, 0, 1, text.as_bytes(), true))
            .await
    }

    /// The next frame from the server, or `None` when the socket closed.
    pub async fn next_frame(&mut self) -> Option<WireFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// The next text frame as JSON, skipping pings; panics on close.
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_frame().await {
                Some(f) if f.opcode == 1 => return f.json(),
                Some(f) if f.opcode == 8 => panic!("closed with {}", f.close_code()),
                Some(_) => {}
                None => panic!("connection dropped"),
            }
        }
    }

    /// Reads until the close frame and returns its code, collecting the text frames
    /// before it. 1006 when the socket closed without one.
    pub async fn closed(&mut self) -> (u16, Vec<Value>) {
        let mut texts = Vec::new();
        loop {
            match self.next_frame().await {
                Some(f) if f.opcode == 8 => return (f.close_code(), texts),
                Some(f) if f.opcode == 1 => texts.push(f.json()),
                Some(_) => {}
                None => return (1006, texts),
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<(WireFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4;
    }
    if buf.len() < at + len {
        return None;
    }
    Some((
        WireFrame {
            opcode,
            payload: buf[at..at + len].to_vec(),
        },
        at + len,
    ))
}

/// A TCP proxy in front of a server, to break the network on purpose: [`cut`](Proxy::cut)
/// drops every connection through it (no close frame: what a client sees when the
/// network fails), and [`block`](Proxy::block) also refuses new ones until
/// [`unblock`](Proxy::unblock).
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: std::sync::Arc<ProxyState>,
    task: JoinHandle<()>,
}

struct ProxyState {
    blocked: std::sync::atomic::AtomicBool,
    cut: tokio::sync::watch::Sender<u64>,
    accepted: std::sync::atomic::AtomicUsize,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        let state = std::sync::Arc::new(ProxyState {
            blocked: std::sync::atomic::AtomicBool::new(false),
            cut: tokio::sync::watch::channel(0).0,
            accepted: std::sync::atomic::AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if st.blocked.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                st.accepted
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut cut = st.cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, state, task }
    }

    /// The WebSocket URL through the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Drops every connection through the proxy now.
    pub fn cut(&self) {
        self.state.cut.send_modify(|n| *n += 1);
    }

    /// Drops every connection and refuses new ones.
    pub fn block(&self) {
        self.state
            .blocked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
    }

    /// Lets connections through again.
    pub fn unblock(&self) {
        self.state
            .blocked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many connections it has let through so far.
    pub fn accepted(&self) -> usize {
        self.state
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `switchboard` binary running as a child process (killed on drop).
pub struct Hub {
    child: std::process::Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// The first line it printed.
    pub line: String,
}

/// A file under the temp directory that is removed on drop.
pub struct TempFile(std::path::PathBuf);

impl TempFile {
    /// Writes `contents` to a fresh file whose name ends with `name`.
    pub fn new(name: &str, contents: &str) -> TempFile {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "switchboard-test-{}-{n}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("io");
        TempFile(path)
    }

    /// Its path.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("io")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs a binary to completion: exit success, stdout, stderr.
pub fn run(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("io");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Hub {
    /// Starts the binary with exactly these arguments and extra environment, and reads
    /// the address from its first line.
    pub fn spawn(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> Hub {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start switchboard");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Hub { child, addr, line }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Connects a raw client and reads its `connected`.
    pub async fn raw(&self) -> RawClient {
        let mut c = RawClient::connect(&self.url()).await;
        let hello = c.recv().await;
        assert_eq!(hello["type"], "connected");
        c.id = hello["payload"]["client_id"]
            .as_str()
            .expect("io")
            .to_owned();
        c
    }

    /// A plain HTTP GET; the whole response.
    pub fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .expect("io");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("io");
        out
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `redis-server` (Debian's package) on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Option<std::process::Child>,
    /// The port it listens on.
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts one on a free port; panics with a clear message when `redis-server` is
    /// not installed (`scripts/test` installs it).
    pub fn start() -> RedisServer {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchboard-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis");
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let mut r = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts the process on `self.port`; true once it answers PING.
    fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.to_str().expect("a UTF-8 path"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run redis-server ({e}): install Debian's redis-server (scripts/test does)"
            ),
        };
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // the port was taken meanwhile
            }
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        false
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// The URL for clients.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: Redis keeps nothing here).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !self.spawn() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
