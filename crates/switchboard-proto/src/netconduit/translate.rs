//! netconduit's messages as native envelopes, and back: a `MESSAGE` `{type, data}` is
//! the envelope `{type, payload}`; an `RPC_REQUEST` is an `rpc` whose `ref` carries
//! the correlation id, and its `ack` becomes the `RPC_RESPONSE` netconduit's client
//! reads (errors inside `result`, with netconduit's numeric codes); heartbeats are
//! answered at the edge.

use serde_json::{Value, json};

use super::frame::{Header, Kind, encode_frame};

/// The `ref` prefix of a netconduit call (never seen by the client).
const CALL_REF: &str = "nc:";

/// The `ref` prefix of a `listall` call, answered in netconduit's shape.
const LISTALL_REF: &str = "ncl:";

/// What a frame from a netconduit client asks for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Inbound {
    /// Hand this native envelope (JSON text) to the server.
    Native(String),
    /// Answer the client with this frame at once (a pong).
    Reply(Vec<u8>),
    /// The client closes the connection.
    Close,
    /// The client asks the server to stop sending (backpressure) until [`Inbound::Resume`].
    Pause,
    /// The client takes messages again.
    Resume,
    /// Nothing to do (a pong, an acknowledgement).
    Nothing,
}

/// What a native frame from the server becomes for a netconduit client.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outbound {
    /// Send this frame.
    Frame(Vec<u8>),
    /// The server's `connected`: its payload (the client's id, its session).
    Connected(Value),
    /// Nothing for this client (an answer to a message it sent without a `ref`).
    Nothing,
}

/// A frame from a netconduit client, translated. `Err` says why the frame cannot be
/// taken (the connection stays; the reason is for an `error` message).
///
/// ```
/// use serde_json::json;
/// use switchboard_proto::netconduit::{Header, Inbound, Kind, inbound};
/// let h = Header { kind: Kind::RpcRequest, flags: 0, length: 0, correlation: 9 };
/// let Inbound::Native(text) = inbound(&h, json!({"method": "add", "params": {"a": 1}})).unwrap()
/// else { panic!() };
/// assert_eq!(text, r#"{"payload":{"method":"add","params":{"a":1}},"ref":"nc:9","type":"rpc"}"#);
/// ```
pub fn inbound(header: &Header, payload: Value) -> Result<Inbound, String> {
    match header.kind {
        Kind::Message => {
            let Value::Object(mut fields) = payload else {
                return Err("a MESSAGE payload is a map with `type` and `data`".to_owned());
            };
            let Some(Value::String(kind)) = fields.remove("type") else {
                return Err("a MESSAGE needs a string `type`".to_owned());
            };
            let mut envelope =
                json!({"type": kind, "payload": fields.remove("data").unwrap_or(Value::Null)});
            // Addressing, for senders that add it beside `type` and `data`; otherwise
            // "others", as datadivr's: a type with a handler is handled, any other is
            // relayed to every other client (on servers that relay, like the hub).
            let mut addressed = false;
            for key in ["room", "to"] {
                if let Some(v @ Value::String(_)) = fields.remove(key) {
                    envelope[key] = v;
                    addressed = true;
                }
            }
            if !addressed {
                envelope["to"] = json!("others");
            }
            Ok(Inbound::Native(envelope.to_string()))
        }
        Kind::RpcRequest => {
            let Value::Object(mut fields) = payload else {
                return Err("an RPC_REQUEST payload is a map with `method` and `params`".to_owned());
            };
            let Some(Value::String(method)) = fields.remove("method") else {
                return Err("an RPC_REQUEST needs a string `method`".to_owned());
            };
            let prefix = if method == "listall" {
                LISTALL_REF
            } else {
                CALL_REF
            };
            let params = fields.remove("params").unwrap_or(Value::Null);
            let envelope = json!({
                "type": "rpc",
                "ref": format!("{prefix}{}", header.correlation),
                "payload": {"method": method, "params": params},
            });
            Ok(Inbound::Native(envelope.to_string()))
        }
        Kind::Ping => Ok(Inbound::Reply(encode_frame(Kind::Pong, 0, None))),
        Kind::Close => Ok(Inbound::Close),
        Kind::Pause => Ok(Inbound::Pause),
        Kind::Resume => Ok(Inbound::Resume),
        _ => Ok(Inbound::Nothing),
    }
}

/// A native frame from the server, translated for a netconduit client.
///
/// ```
/// use switchboard_proto::netconduit::{Outbound, outbound};
/// let frame = r#"{"type":"chat","payload":{"text":"hi"},"from":"c1"}"#;
/// assert!(matches!(outbound(frame), Outbound::Frame(_)));
/// assert_eq!(outbound(r#"{"type":"ack","payload":{"ref":"mine","status":"ok"}}"#), Outbound::Nothing);
/// ```
pub fn outbound(native: &str) -> Outbound {
    let Ok(Value::Object(mut envelope)) = serde_json::from_str::<Value>(native) else {
        return Outbound::Nothing;
    };
    let kind = envelope
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let payload = envelope.remove("payload").unwrap_or(Value::Null);
    match kind.as_str() {
        "connected" => Outbound::Connected(payload),
        "ack" | "error" => match call_of(&payload) {
            Some((correlation, listall)) => {
                let result = rpc_result(&kind, payload, listall);
                let body = json!({"success": true, "result": result});
                Outbound::Frame(encode_frame(Kind::RpcResponse, correlation, Some(&body)))
            }
            // An answer to one of the client's messages: netconduit has no acks.
            None if kind == "ack" => Outbound::Nothing,
            None => message("error", payload),
        },
        "rpc_response" => Outbound::Nothing,
        _ => message(&kind, payload),
    }
}

fn message(kind: &str, data: Value) -> Outbound {
    let body = json!({"type": kind, "data": data});
    Outbound::Frame(encode_frame(Kind::Message, 0, Some(&body)))
}

/// The correlation id an answer's `ref` carries, and whether it was a `listall`.
fn call_of(payload: &Value) -> Option<(u64, bool)> {
    let r = payload.get("ref")?.as_str()?;
    if let Some(id) = r.strip_prefix(LISTALL_REF) {
        return Some((id.parse().ok()?, true));
    }
    Some((r.strip_prefix(CALL_REF)?.parse().ok()?, false))
}

/// netconduit's `result`: `{"success": true, "data"}` or `{"success": false, "error",
/// "code", "details"?}`.
fn rpc_result(kind: &str, mut payload: Value, listall: bool) -> Value {
    let ok = kind == "ack" && payload.get("status").and_then(Value::as_str) == Some("ok");
    if ok {
        let result = payload
            .get_mut("result")
            .map(Value::take)
            .unwrap_or(Value::Null);
        let data = if listall { methods(result) } else { result };
        return json!({"success": true, "data": data});
    }
    let code = payload
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("INTERNAL")
        .to_owned();
    let mut error = json!({
        "success": false,
        "error": payload.get("message").cloned().unwrap_or(Value::Null),
        "code": code_of(&code),
    });
    if let Some(details) = payload.get_mut("details").map(Value::take) {
        error["details"] = if code == "INVALID_PARAMS" {
            validation_details(details)
        } else {
            details
        };
    }
    error
}

/// netconduit's number for a native error code.
///
/// ```
/// assert_eq!(switchboard_proto::netconduit::code_of("UNKNOWN_METHOD"), 4000);
/// ```
pub fn code_of(native: &str) -> u16 {
    match native {
        "UNKNOWN_METHOD" => 4000,
        "INVALID_PARAMS" | "INVALID_PAYLOAD" => 2000,
        "AUTH_REQUIRED" | "UNAUTHORIZED" => 3000,
        "AUTH_FAILED" => 3001,
        "TOKEN_EXPIRED" => 3002,
        "FORBIDDEN" => 3003,
        "RATE_LIMITED" => 6000,
        "TIMEOUT" => 1002,
        "INTERNAL" => 1001,
        _ => 1000,
    }
}

/// Native `{"errors": [{"path", "reason"}]}` as netconduit's `{"errors": [{"field",
/// "message", "type"}]}`.
fn validation_details(mut details: Value) -> Value {
    let Some(errors) = details.get_mut("errors").and_then(Value::as_array_mut) else {
        return details;
    };
    let errors: Vec<Value> = errors
        .iter_mut()
        .map(|e| {
            json!({
                "field": e.get_mut("path").map(Value::take).unwrap_or(Value::Null),
                "message": e.get_mut("reason").map(Value::take).unwrap_or(Value::Null),
                "type": "value_error",
            })
        })
        .collect();
    json!({"errors": errors})
}

/// Native `listall` (`[{name, description?, params, result, requires_auth}]`) as
/// netconduit's `{"methods": [{name, description, parameters, return_type,
/// requires_auth}], "count"}`.
fn methods(list: Value) -> Value {
    let Value::Array(list) = list else {
        return list;
    };
    let methods: Vec<Value> = list
        .into_iter()
        .map(|mut m| {
            let mut take = |k: &str| m.get_mut(k).map(Value::take).unwrap_or(Value::Null);
            json!({
                "name": take("name"),
                "description": take("description"),
                "parameters": take("params"),
                "return_type": take("result"),
                "requires_auth": take("requires_auth"),
            })
        })
        .collect();
    json!({"count": methods.len(), "methods": methods})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconduit::{HEADER_LEN, decode_payload};

    fn read(frame: &[u8]) -> (Header, Value) {
        let h = Header::parse(frame[..HEADER_LEN].try_into().unwrap(), 1 << 20).unwrap();
        let p = decode_payload(&h, &frame[HEADER_LEN..], 1 << 20).unwrap();
        (h, p)
    }

    fn head(kind: Kind, correlation: u64) -> Header {
        Header {
            kind,
            flags: 0,
            length: 0,
            correlation,
        }
    }

    #[test]
    fn a_message_becomes_an_envelope_and_back() {
        let m = inbound(
            &head(Kind::Message, 0),
            json!({"type": "chat", "data": {"t": 1}}),
        )
        .unwrap();
        assert_eq!(
            m,
            Inbound::Native(r#"{"payload":{"t":1},"to":"others","type":"chat"}"#.to_owned())
        );
        let Outbound::Frame(f) = outbound(r#"{"type":"chat","payload":{"t":1},"from":"x"}"#) else {
            panic!("a frame")
        };
        let (h, p) = read(&f);
        assert_eq!(h.kind, Kind::Message);
        assert_eq!(p, json!({"type": "chat", "data": {"t": 1}}));
    }

    #[test]
    fn wrong_shapes_are_refused_with_a_reason() {
        assert!(inbound(&head(Kind::Message, 0), json!([1])).is_err());
        assert!(inbound(&head(Kind::Message, 0), json!({"data": 1})).is_err());
        assert!(inbound(&head(Kind::RpcRequest, 1), json!({"method": 3})).is_err());
    }

    #[test]
    fn a_call_and_its_answers_keep_the_correlation_id() {
        let Inbound::Native(text) = inbound(
            &head(Kind::RpcRequest, 77),
            json!({"method": "add", "params": {"a": 1}}),
        )
        .unwrap() else {
            panic!("native")
        };
        assert!(text.contains(r#""ref":"nc:77""#), "{text}");
        let ok = r#"{"type":"ack","payload":{"ref":"nc:77","status":"ok","result":3}}"#;
        let Outbound::Frame(f) = outbound(ok) else {
            panic!("a frame")
        };
        let (h, p) = read(&f);
        assert_eq!((h.kind, h.correlation), (Kind::RpcResponse, 77));
        assert_eq!(
            p,
            json!({"success": true, "result": {"success": true, "data": 3}})
        );
        let bad = r#"{"type":"ack","payload":{"ref":"nc:78","status":"error","code":"INVALID_PARAMS","message":"m","details":{"errors":[{"path":"a","reason":"r"}]}}}"#;
        let Outbound::Frame(f) = outbound(bad) else {
            panic!("a frame")
        };
        let (h, p) = read(&f);
        assert_eq!(h.correlation, 78);
        assert_eq!(
            p["result"],
            json!({"success": false, "error": "m", "code": 2000,
                   "details": {"errors": [{"field": "a", "message": "r", "type": "value_error"}]}})
        );
    }

    #[test]
    fn listall_answers_in_netconduits_shape() {
        let Inbound::Native(text) =
            inbound(&head(Kind::RpcRequest, 5), json!({"method": "listall"})).unwrap()
        else {
            panic!("native")
        };
        assert!(text.contains(r#""ref":"ncl:5""#));
        let answer = r#"{"type":"ack","payload":{"ref":"ncl:5","status":"ok","result":[{"name":"add","params":{},"result":{},"requires_auth":false}]}}"#;
        let Outbound::Frame(f) = outbound(answer) else {
            panic!("a frame")
        };
        let data = &read(&f).1["result"]["data"];
        assert_eq!(data["count"], 1);
        assert_eq!(data["methods"][0]["name"], "add");
        assert_eq!(data["methods"][0]["parameters"], json!({}));
    }

    #[test]
    fn heartbeats_are_answered_and_acks_of_messages_dropped() {
        let Inbound::Reply(f) = inbound(&head(Kind::Ping, 0), Value::Null).unwrap() else {
            panic!("a pong")
        };
        assert_eq!(read(&f).0.kind, Kind::Pong);
        assert_eq!(
            inbound(&head(Kind::Pong, 0), Value::Null).unwrap(),
            Inbound::Nothing
        );
        assert_eq!(
            outbound(r#"{"type":"rpc_response","payload":{}}"#),
            Outbound::Nothing
        );
        assert!(matches!(
            outbound(r#"{"type":"connected","payload":{"client_id":"c"}}"#),
            Outbound::Connected(_)
        ));
    }
}
