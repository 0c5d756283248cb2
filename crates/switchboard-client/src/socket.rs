//! The client's WebSocket, in the encoding the connection negotiated.
//!
//! The rest of the client reads and writes JSON text frames (its queues, resends and
//! dispatch never change). On a MessagePack connection this wrapper writes each text
//! frame as the same envelope in MessagePack and reads MessagePack binary frames back as
//! JSON text; raw bytes travel as `binary` envelopes both ways
//! ([`switchboard_proto::msgpack::binary_envelope`]).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use switchboard_proto::msgpack;
use tokio_tungstenite::tungstenite::{Error, Message};

type Inner =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One open WebSocket to the server.
pub(crate) struct Ws {
    inner: Inner,
    /// Envelopes travel in MessagePack: the server accepted the subprotocol.
    msgpack: bool,
    /// How long an incoming envelope may be as JSON.
    max_json: usize,
}

impl Ws {
    pub(crate) fn new(inner: Inner, msgpack: bool, max_message_size: usize) -> Ws {
        Ws {
            inner,
            msgpack,
            max_json: max_message_size.saturating_mul(4),
        }
    }

    /// True if envelopes travel in MessagePack on this connection.
    pub(crate) fn is_msgpack(&self) -> bool {
        self.msgpack
    }

    /// Sends a close frame and waits for the server's (bounded by the caller).
    pub(crate) async fn close(&mut self) -> Result<(), Error> {
        self.inner.close(None).await
    }

    /// A frame as this connection writes it.
    fn encode(&self, frame: Message) -> Message {
        if !self.msgpack {
            return frame;
        }
        match frame {
            Message::Text(t) => match msgpack::from_json(t.as_str()) {
                Ok(bytes) => Message::Binary(bytes.into()),
                // Not JSON: the server answers it as such.
                Err(_) => Message::Text(t),
            },
            Message::Binary(raw) => Message::Binary(msgpack::binary_envelope(&raw).into()),
            other => other,
        }
    }

    /// A frame as the rest of the client reads it (`None`: not one it can read).
    fn decode(&self, frame: Message) -> Option<Message> {
        match frame {
            Message::Binary(bytes) if self.msgpack => {
                if let Some(raw) = msgpack::binary_data(&bytes) {
                    return Some(Message::Binary(bytes.slice_ref(raw)));
                }
                match msgpack::to_json(&bytes, self.max_json) {
                    Ok(json) => Some(Message::text(json)),
                    Err(e) => {
                        tracing::warn!(error = %e, "a MessagePack frame from the server could not be read");
                        None
                    }
                }
            }
            other => Some(other),
        }
    }
}

impl Stream for Ws {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(frame)) => {
                    if let Some(frame) = self.decode(frame) {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

impl Sink<Message> for Ws {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Message) -> Result<(), Error> {
        let frame = self.encode(frame);
        Pin::new(&mut self.inner).start_send(frame)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
