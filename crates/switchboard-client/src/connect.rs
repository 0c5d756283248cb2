//! Opening one connection: the WebSocket handshake, `auth`, and the server's `connected`.

use futures_util::{SinkExt, StreamExt};
use switchboard_proto::msgpack;
use switchboard_proto::{
    Envelope, ErrorBody, Payload, Reconnect, ResumeOutcome, ResumeRequest, reconnect_hint, types,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;

use crate::streams::ConnectedStreams;
use crate::{ClientConfig, ConnectError};

pub(crate) use crate::socket::Ws;

/// The `ref` of the `auth` message the client sends when it connects.
pub(crate) const AUTH_REF: &str = "auth";

/// What the server said when the connection opened (`connected`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Session {
    /// This client's id, which others use to send it direct messages. A reconnect
    /// that resumes the session keeps it; one that cannot gets a new one.
    pub client_id: String,
    /// The authenticated user's id, or the client id when it did not authenticate
    /// (absent from older servers).
    #[serde(default)]
    pub user_id: Option<String>,
    /// This connection's session id.
    pub session_id: String,
    /// The server's name.
    pub server: String,
    /// Who the client authenticated as, when it did.
    #[serde(default)]
    pub identity: Option<serde_json::Value>,
    /// After a reconnect: whether the session was resumed, and what each stream
    /// recovered (see [`Client::on_resume`](crate::Client::on_resume)).
    #[serde(default)]
    pub resumed: Option<ResumeOutcome>,
    /// True if envelopes travel in MessagePack on this connection: the client offered
    /// it ([`ClientConfig::msgpack`]) and the server accepted.
    #[serde(skip)]
    pub msgpack: bool,
}

pub(crate) fn check_url(url: &str) -> Result<(), ConnectError> {
    if url.starts_with("ws://") || url.starts_with("wss://") {
        Ok(())
    } else {
        Err(ConnectError::InvalidUrl(format!(
            "{url}: expected ws:// or wss://"
        )))
    }
}

/// A connection just opened: the socket, `connected`, and its streams part.
/// A connection open: the socket, what `connected` said, the positions it gave, and
/// the token it authenticated with (from the token source).
pub(crate) type Opened = (Ws, Session, ConnectedStreams, Option<String>);

/// Opens a connection and waits for `connected` (sending `auth` first when configured,
/// then `resume` when there is a session to resume).
pub(crate) async fn open(
    url: &str,
    config: &ClientConfig,
    resume: Option<&ResumeRequest>,
) -> Result<Opened, ConnectError> {
    check_url(url)?;
    // A token from the source, fresh for this connection.
    let token = match &config.token_source {
        Some(source) => Some(source.fetch().await.map_err(ConnectError::Token)?),
        None => None,
    };
    let auth = match &token {
        Some(token) => Some(crate::token::auth_with(config.auth.as_ref(), token)),
        None => config.auth.clone(),
    };
    let url = match resume {
        Some(_) if url.contains('?') => format!("{url}&resume=1"),
        Some(_) => format!("{url}?resume=1"),
        None => url.to_owned(),
    };
    let url = url.as_str();
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    let connector = config.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::InvalidUrl(format!("{url}: {e}")))?;
    if config.msgpack {
        request.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(msgpack::SUBPROTOCOL),
        );
    }
    let handshake =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config), true, connector);
    let (ws, response) = tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Unreachable)?;
    // A server that does not speak MessagePack answers without the subprotocol: JSON.
    let msgpack = response
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .is_some_and(|p| p.as_bytes() == msgpack::SUBPROTOCOL.as_bytes());
    let mut ws = Ws::new(ws, msgpack, config.max_message_size);
    if let Some(auth) = &auth {
        let payload = Payload::from_serialize(auth)
            .map_err(|e| ConnectError::InvalidUrl(format!("bad auth payload: {e}")))?;
        let frame = Envelope {
            ref_id: Some(AUTH_REF.to_owned()),
            ..Envelope::with_payload(types::AUTH, payload)
        };
        ws.send(Message::text(frame.encode()))
            .await
            .map_err(ConnectError::Unreachable)?;
    }
    if let Some(resume) = resume {
        let payload = Payload::from_serialize(resume)
            .map_err(|e| ConnectError::InvalidUrl(format!("bad resume payload: {e}")))?;
        let frame = Envelope::with_payload(types::RESUME, payload);
        ws.send(Message::text(frame.encode()))
            .await
            .map_err(ConnectError::Unreachable)?;
    }

    // The first frame is `connected`, or an error and a close when refused.
    let (session, streams) = tokio::time::timeout(config.connect_timeout, async {
        let mut refusal: Option<ErrorBody> = None;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let Ok(env) = Envelope::decode(t.as_str()) else {
                        continue;
                    };
                    match env.kind.as_str() {
                        types::CONNECTED => {
                            let not_ours = |e: switchboard_proto::PayloadError| {
                                ConnectError::InvalidUrl(format!("not a switchboard server: {e}"))
                            };
                            let session = env.payload_as::<Session>().map_err(not_ours)?;
                            let streams = env.payload_as::<ConnectedStreams>().unwrap_or_default();
                            return Ok((session, streams));
                        }
                        types::ERROR => refusal = env.payload_as().ok(),
                        // A refused `auth` is answered with an error ack.
                        types::ACK => {
                            if let Ok(v) = env.payload_as::<serde_json::Value>() {
                                if v["status"] == "error" {
                                    refusal = Some(ErrorBody::custom(
                                        v["code"].as_str().unwrap_or("").to_owned(),
                                        v["message"].as_str().unwrap_or(""),
                                    ));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                    let (c, m) = match refusal {
                        Some(b) => (b.code.into_owned(), b.message),
                        None => (
                            code.to_string(),
                            frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                        ),
                    };
                    return Err(ConnectError::Refused {
                        code: c,
                        message: m,
                        reconnect: reconnect_hint(code),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ConnectError::Unreachable(e)),
                None => {
                    return Err(ConnectError::Refused {
                        code: "1006".into(),
                        message: "connection dropped".into(),
                        reconnect: Reconnect::Backoff,
                    });
                }
            }
        }
    })
    .await
    .map_err(|_| ConnectError::Timeout)??;
    let session = Session {
        msgpack: ws.is_msgpack(),
        ..session
    };
    Ok((ws, session, streams, token))
}
