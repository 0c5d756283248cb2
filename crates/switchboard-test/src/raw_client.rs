//! A WebSocket client with no protocol logic: JSON frames in and out as they are.

use crate::TIMEOUT;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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
        RawClient::connect_with_headers(url, &[]).await
    }

    /// Opens the socket with extra request headers (`X-Forwarded-For`, `Origin`, ...).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> RawClient {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut request = url.into_client_request().expect("a WebSocket URL");
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
            .expect("connect");
        RawClient {
            ws,
            id: String::new(),
        }
    }

    /// Opens the socket from a local address of the caller's choosing (a loopback
    /// address such as 127.0.0.2, to be another client address); `Err` when the server
    /// dropped the connection before the WebSocket opened.
    pub async fn try_connect_from(url: &str, source: IpAddr) -> Result<RawClient, String> {
        let addr: SocketAddr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("a ws://IP:PORT/... url");
        let open = async {
            let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|e| e.to_string())?;
            let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
                .await
                .map_err(|e| e.to_string())
        };
        let (ws, _) = tokio::time::timeout(TIMEOUT, open)
            .await
            .map_err(|_| "no answer in time".to_owned())??;
        Ok(RawClient {
            ws,
            id: String::new(),
        })
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
