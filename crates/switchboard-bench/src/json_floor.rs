//! `switchboard-floor --json`: the server a user would write by hand with
//! tokio-tungstenite and serde_json, speaking switchboard's envelope. One task per
//! connection decodes each text frame into typed structs and answers it: `ping` with
//! `pong`, an `rpc` call of `echo` with the ack of its `ref`. It checks nothing else
//! (no limits, no schema, no record of answers, no metrics), so it is the floor for
//! what a typed JSON message costs, where the plain echo server is the floor for a
//! frame.

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;

/// An incoming envelope.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(rename = "ref", default)]
    ref_id: Option<String>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// An `rpc` payload.
#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow)]
    method: &'a str,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

/// The params of `echo`.
#[derive(Deserialize)]
struct EchoParams {
    message: String,
}

/// An outgoing envelope.
#[derive(Serialize)]
struct Outgoing<'a, P> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: P,
}

/// An outgoing envelope without a payload.
#[derive(Serialize)]
struct Bare<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
}

/// The payload of an ack.
#[derive(Serialize)]
struct Ack<'a, R> {
    #[serde(rename = "ref")]
    ref_id: &'a str,
    status: &'a str,
    result: R,
}

/// The payload of an error.
#[derive(Serialize)]
struct Failure<'a> {
    code: &'a str,
    message: &'a str,
}

/// The answer to one text frame.
fn answer(text: &str) -> String {
    let failure = |code, message| Outgoing {
        kind: "error",
        payload: Failure { code, message },
    };
    let Ok(incoming) = serde_json::from_str::<Incoming>(text) else {
        return encode(&failure("INVALID_JSON", "not an envelope"));
    };
    match incoming.kind {
        "ping" => encode(&Bare { kind: "pong" }),
        "rpc" => {
            let call = incoming
                .payload
                .and_then(|p| serde_json::from_str::<Call>(p.get()).ok());
            let Some(call) = call.filter(|c| c.method == "echo") else {
                return encode(&failure("UNKNOWN_METHOD", "only `echo` is served"));
            };
            let params = call
                .params
                .and_then(|p| serde_json::from_str::<EchoParams>(p.get()).ok());
            match (params, incoming.ref_id.as_deref()) {
                (Some(p), Some(ref_id)) => encode(&Outgoing {
                    kind: "ack",
                    payload: Ack {
                        ref_id,
                        status: "ok",
                        result: p.message,
                    },
                }),
                _ => encode(&failure(
                    "INVALID_PARAMS",
                    "`echo` takes a message and a ref",
                )),
            }
        }
        _ => encode(&failure("UNKNOWN_TYPE", "only `ping` and `rpc` are served")),
    }
}

fn encode<T: Serialize>(out: &T) -> String {
    serde_json::to_string(out).unwrap_or_default()
}

/// Serves until the process is stopped.
pub async fn json(port: u16) -> anyhow::Result<()> {
    crate::accept_each(port, |mut ws| async move {
        // The load waits for a welcome, as switchboard sends one.
        let welcome = r#"{"type":"connected","payload":{}}"#;
        if ws.send(Message::text(welcome)).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(text) = msg {
                if ws.send(Message::text(answer(text.as_str()))).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::answer;

    #[test]
    fn answers_a_ping_and_an_echo_call_as_switchboard_does() {
        assert_eq!(answer(r#"{"type":"ping"}"#), r#"{"type":"pong"}"#);
        assert_eq!(
            answer(
                r#"{"type":"rpc","ref":"7","payload":{"method":"echo","params":{"message":"hi"}}}"#
            ),
            r#"{"type":"ack","payload":{"ref":"7","status":"ok","result":"hi"}}"#
        );
        assert!(
            answer(r#"{"type":"rpc","ref":"7","payload":{"method":"add"}}"#)
                .contains("UNKNOWN_METHOD")
        );
        assert!(answer("{").contains("INVALID_JSON"));
    }
}
