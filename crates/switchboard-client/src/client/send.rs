//! Sending: messages, envelopes, binary frames, room and direct sends, requests matched
//! to their ack by `ref`, RPC calls, joining and leaving rooms. While offline, sends wait
//! in the bounded queue and go out after the reconnect.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use switchboard_proto::{Envelope, Parts, Payload, encode_parts, types};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use super::Client;
use crate::locks::lock;
use crate::state::{Outgoing, Pending};
use crate::{RequestError, SendError};

impl Client {
    /// Queues one frame: written at once while connected, kept (up to the offline
    /// bound) while reconnecting, refused when the client has ended.
    pub(crate) async fn enqueue(
        &self,
        msg: Message,
        ref_id: Option<String>,
    ) -> Result<(), SendError> {
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        let mut out = Some(Outgoing { msg, ref_id, len });
        let config = &self.inner.config;
        loop {
            let space = self.inner.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut ob = lock(&self.inner.outbox);
                if ob.closed || ob.close_requested.is_some() {
                    return Err(SendError::NotConnected);
                }
                if !ob.online {
                    if !config.reconnect.enabled {
                        return Err(SendError::NotConnected);
                    }
                    if ob.frames.len() >= config.offline_queue.max(1)
                        || ob.bytes + len > config.offline_queue_bytes
                    {
                        return Err(SendError::QueueFull(ob.frames.len()));
                    }
                    ob.bytes += len;
                    if let Some(o) = out.take() {
                        ob.frames.push_back(o);
                    }
                    return Ok(());
                }
                if ob.frames.len() < config.send_queue.max(1) {
                    ob.bytes += len;
                    if let Some(o) = out.take() {
                        ob.frames.push_back(o);
                    }
                    drop(ob);
                    self.inner.wake.notify_one();
                    return Ok(());
                }
            }
            space.await;
        }
    }

    async fn send_parts<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        ref_id: Option<&str>,
        room: Option<&str>,
        to: Option<&str>,
    ) -> Result<(), SendError> {
        let payload =
            Payload::from_serialize(payload).map_err(|e| SendError::Encode(e.to_string()))?;
        let text = encode_parts(&Parts {
            kind,
            payload: &payload,
            ref_id,
            room,
            to,
            from: None,
            trace: None,
            offset: None,
        });
        self.enqueue(Message::text(text), ref_id.map(str::to_owned))
            .await
    }

    /// Sends `{"type": kind, "payload": payload}`. The payload must serialize to a JSON
    /// object. While reconnecting the message is queued and sent, in order, once the
    /// connection is back.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_parts(kind, payload, None, None, None).await
    }

    /// Sends a whole envelope as it is.
    pub async fn send_envelope(&self, envelope: &Envelope) -> Result<(), SendError> {
        self.enqueue(Message::text(envelope.encode()), envelope.ref_id.clone())
            .await
    }

    /// Sends raw text (which the server will parse as an envelope).
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), SendError> {
        self.enqueue(Message::text(text.into()), None).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.enqueue(Message::Binary(data.into()), None).await
    }

    /// Sends a message to a room (`room` in the envelope): its other members receive it.
    pub async fn send_to<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_parts(kind, payload, None, Some(room), None).await
    }

    /// The same as [`send_to`](Client::send_to).
    pub async fn send_to_room<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_to(room, kind, payload).await
    }

    /// Sends a message to one client by id, or to `"all"` / `"others"` (`to` in the envelope).
    pub async fn send_direct<T: Serialize + ?Sized>(
        &self,
        to: &str,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        self.send_parts(kind, payload, None, None, Some(to)).await
    }

    /// Sends a message with a fresh `ref` and waits for its `ack`: the handler's result,
    /// deserialized into `R` (use `serde_json::Value` to take it as it is, `()` to ignore it).
    ///
    /// While reconnecting the request is queued and sent after the reconnect (its
    /// timeout still runs). A request already sent when the connection drops is sent
    /// again after the reconnect, and takes effect once when the session resumes (see
    /// [`ClientConfig::retry_in_flight`](crate::ClientConfig::retry_in_flight)).
    pub async fn request<R: DeserializeOwned, T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        timeout: Duration,
    ) -> Result<R, RequestError> {
        self.request_envelope(kind, payload, None, None, timeout)
            .await
    }

    /// Like [`request`](Client::request), with the envelope's `room` and `to` set.
    pub async fn request_envelope<R: DeserializeOwned, T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        room: Option<&str>,
        to: Option<&str>,
        timeout: Duration,
    ) -> Result<R, RequestError> {
        let seq = self.inner.next_id();
        let ref_id = self.inner.ref_for(seq);
        let payload =
            Payload::from_serialize(payload).map_err(|e| RequestError::Encode(e.to_string()))?;
        let frame = Message::text(encode_parts(&Parts {
            kind,
            payload: &payload,
            ref_id: Some(&ref_id),
            room,
            to,
            from: None,
            trace: None,
            offset: None,
        }));
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            tx,
            written: false,
            frame: Some(frame.clone()),
            seq,
        };
        lock(&self.inner.pending).insert(ref_id.clone(), pending);
        let deadline = tokio::time::Instant::now() + timeout;
        let sent =
            tokio::time::timeout_at(deadline, self.enqueue(frame, Some(ref_id.clone()))).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                lock(&self.inner.pending).remove(&ref_id);
                return Err(e.into());
            }
            Err(_) => {
                lock(&self.inner.pending).remove(&ref_id);
                return Err(RequestError::Timeout(timeout));
            }
        }
        let answer = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(RequestError::Closed),
            Err(_) => {
                lock(&self.inner.pending).remove(&ref_id);
                // Not sent yet (offline): take it out of the queue too.
                let mut ob = lock(&self.inner.outbox);
                if let Some(pos) = ob
                    .frames
                    .iter()
                    .position(|o| o.ref_id.as_deref() == Some(ref_id.as_str()))
                {
                    if let Some(o) = ob.frames.remove(pos) {
                        ob.bytes -= o.len;
                    }
                }
                return Err(RequestError::Timeout(timeout));
            }
        };
        let value = answer?.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(value).map_err(|e| RequestError::Decode(e.to_string()))
    }

    /// Calls an RPC method and returns its typed result. `params` is an object of named
    /// arguments (a struct, a map, `json!({...})`), an array of positional ones, or `()`
    /// for none. Any number of calls may be in flight at once; each waits for its own
    /// answer, matched by `ref`.
    ///
    /// Errors: [`RequestError::Remote`] with the server's code (`UNKNOWN_METHOD`,
    /// `INVALID_PARAMS` with `details.errors`, `AUTH_REQUIRED`, the method's own code,
    /// `INTERNAL`), [`RequestError::Timeout`], [`RequestError::NotConnected`],
    /// [`RequestError::ConnectionLost`], [`RequestError::Decode`] when the result is not
    /// an `R`.
    ///
    /// ```no_run
    /// # async fn demo(client: switchboard_client::Client) -> Result<(), switchboard_client::RequestError> {
    /// use std::time::Duration;
    /// let sum: i64 = client
    ///     .call("add", &serde_json::json!({"a": 1, "b": 2}), Duration::from_secs(5))
    ///     .await?;
    /// assert_eq!(sum, 3);
    /// # Ok(()) }
    /// ```
    pub async fn call<R: DeserializeOwned, P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<R, RequestError> {
        let params =
            serde_json::to_value(params).map_err(|e| RequestError::Encode(e.to_string()))?;
        let params = if params.is_null() { json!({}) } else { params };
        self.request(
            types::RPC,
            &json!({ "method": method, "params": params }),
            timeout,
        )
        .await
    }

    /// The server's RPC methods with their descriptions and JSON Schemas (`listall`).
    pub async fn methods(&self, timeout: Duration) -> Result<Vec<serde_json::Value>, RequestError> {
        self.call("listall", &(), timeout).await
    }

    /// Joins a room and waits for the server to confirm. The client remembers its rooms
    /// and joins them again after every reconnect.
    pub async fn join(&self, room: &str) -> Result<(), RequestError> {
        // Its position comes with the answer (read by the driver, in order).
        let _: serde_json::Value = self
            .request(
                types::JOIN_ROOM,
                &json!({ "room_id": room }),
                self.inner.config.request_timeout,
            )
            .await?;
        lock(&self.inner.rooms).insert(room.to_owned());
        Ok(())
    }

    /// Leaves a room and waits for the server to confirm.
    pub async fn leave(&self, room: &str) -> Result<(), RequestError> {
        // Forget it first, so a reconnect meanwhile does not join it again.
        lock(&self.inner.rooms).remove(room);
        lock(&self.inner.streams).forget_room(room);
        let _: serde_json::Value = self
            .request(
                types::LEAVE_ROOM,
                &json!({ "room_id": room }),
                self.inner.config.request_timeout,
            )
            .await?;
        Ok(())
    }

    /// The rooms this client has joined.
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.inner.rooms).iter().cloned().collect()
    }

    /// True if this client has joined `room`.
    pub fn is_in_room(&self, room: &str) -> bool {
        lock(&self.inner.rooms).contains(room)
    }
}
