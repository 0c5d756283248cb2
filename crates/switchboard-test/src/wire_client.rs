//! A client that writes WebSocket frames byte by byte (hostile and malformed input).

use crate::TIMEOUT;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::net::TcpStream;

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
