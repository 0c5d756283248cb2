//! The server's replies: `error` and `ack` frames, and the error body they share.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::code::ErrorCode;

use crate::types;

/// An error as it travels on the wire: a stable code, a human message, and optional
/// structured details (for example the failing field paths).
///
/// ```
/// use switchboard_proto::{ErrorBody, ErrorCode};
/// let e = ErrorBody::new(ErrorCode::UnknownType, "no handler for `dance`");
/// assert_eq!(e.code, "UNKNOWN_TYPE");
/// assert_eq!(e.known_code(), Some(ErrorCode::UnknownType));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The UPPER_SNAKE error code: one of [`ErrorCode`] or an application's own.
    pub code: Cow<'static, str>,
    /// What went wrong, for people.
    pub message: String,
    /// Structured context, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// The longest error `message`, in bytes (longer ones are cut, ending in `…`).
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// `text` cut to at most `max` bytes on a character boundary, ending in `…` when cut.
///
/// ```
/// use switchboard_proto::reply::excerpt;
/// assert_eq!(excerpt("short".into(), 10), "short");
/// assert_eq!(excerpt("\"".repeat(20_000), 8), "\"\"\"\"\"…");
/// ```
pub fn excerpt(mut text: String, max: usize) -> String {
    const ELLIPSIS: &str = "…";
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(ELLIPSIS);
    text
}

impl ErrorBody {
    /// An error with one of switchboard's own codes.
    ///
    /// The message is cut to [`MAX_ERROR_MESSAGE`] bytes: an error that quotes what the
    /// client sent quotes an excerpt, so the reply stays small whatever came in.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code: Cow::Borrowed(code.as_str()),
            message: excerpt(message.into(), MAX_ERROR_MESSAGE),
            details: None,
        }
    }

    /// An error with an application-defined code, e.g. `"USER_NOT_FOUND"`.
    pub fn custom(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code: code.into(),
            message: excerpt(message.into(), MAX_ERROR_MESSAGE),
            details: None,
        }
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> ErrorBody {
        self.details = Some(details);
        self
    }

    /// The code as a known [`ErrorCode`], if it is one.
    pub fn known_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_wire(&self.code)
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The status of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// The message was handled; `result` holds the handler's return value, if any.
    Ok,
    /// The message failed; `code` and `message` say why.
    Error,
}

/// The payload of an `ack` frame, as a client reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The `ref` of the acknowledged message.
    #[serde(rename = "ref")]
    pub ref_id: String,
    /// Whether it succeeded.
    pub status: AckStatus,
    /// The handler's return value (status `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error code (status `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The error message (status `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Error details (status `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Ack {
    /// The result, or the error this ack reports.
    pub fn into_result(self) -> Result<Option<serde_json::Value>, ErrorBody> {
        match self.status {
            AckStatus::Ok => Ok(self.result),
            AckStatus::Error => Err(ErrorBody {
                code: Cow::Owned(
                    self.code
                        .unwrap_or_else(|| ErrorCode::HandlerError.as_str().to_owned()),
                ),
                message: self.message.unwrap_or_default(),
                details: self.details,
            }),
        }
    }
}

/// An ack's payload; the error's fields are spelled out (not `flatten`ed, which
/// serializes through a map, slowly).
#[derive(Serialize)]
struct AckOut<'a> {
    #[serde(rename = "ref")]
    ref_id: &'a str,
    status: AckStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

/// `{"type": kind, "payload": payload}`, written in one pass: the same text as
/// [`encode_parts`](crate::encode_parts) with only a type and a payload.
#[derive(Serialize)]
struct FrameOut<'a, P> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: &'a P,
}

fn frame(kind: &str, payload: &impl Serialize) -> String {
    // Payloads built here are structs of strings and JSON values: serializing cannot fail.
    serde_json::to_string(&FrameOut { kind, payload }).unwrap_or_else(|_| unreachable!())
}

/// `{"type":"ack","payload":{"ref":…,"status":"ok","result":…}}`; `result` is left out
/// when the handler returned nothing.
///
/// ```
/// let frame = switchboard_proto::ack_ok("m1", None);
/// assert_eq!(frame, r#"{"type":"ack","payload":{"ref":"m1","status":"ok"}}"#);
/// ```
pub fn ack_ok(ref_id: &str, result: Option<&RawValue>) -> String {
    ack_ok_text(ref_id, result.map(RawValue::get))
}

/// [`ack_ok`] with the result given as JSON text, written as it stands: the caller
/// vouches that it is one valid JSON value (say, what `serde_json::to_string` wrote),
/// which spares making it a `RawValue` first.
///
/// ```
/// let frame = switchboard_proto::ack_ok_text("7", Some(r#"{"sum":3}"#));
/// assert_eq!(frame, r#"{"type":"ack","payload":{"ref":"7","status":"ok","result":{"sum":3}}}"#);
/// ```
pub fn ack_ok_text(ref_id: &str, result: Option<&str>) -> String {
    // Every acknowledged message and RPC call is answered through here: written by
    // hand, at its exact size (the same text serde_json writes for an `AckOut`).
    use crate::encode::{push_quoted, quoted_len};
    const HEAD: &str = r#"{"type":"ack","payload":{"ref":"#;
    const OK: &str = r#","status":"ok""#;
    const RESULT: &str = r#","result":"#;
    let len = HEAD.len()
        + quoted_len(ref_id)
        + OK.len()
        + result.map_or(0, |r| RESULT.len() + r.len())
        + 2;
    let mut out = String::with_capacity(len);
    out.push_str(HEAD);
    push_quoted(&mut out, ref_id);
    out.push_str(OK);
    if let Some(result) = result {
        out.push_str(RESULT);
        out.push_str(result);
    }
    out.push_str("}}");
    out
}

/// `{"type":"ack","payload":{"ref":…,"status":"error","code":…,"message":…}}`.
pub fn ack_error(ref_id: &str, error: &ErrorBody) -> String {
    frame(
        types::ACK,
        &AckOut {
            ref_id,
            status: AckStatus::Error,
            result: None,
            code: Some(&error.code),
            message: Some(&error.message),
            details: error.details.as_ref(),
        },
    )
}

/// `{"type":"error","payload":{"code":…,"message":…}}`, for failures of messages
/// without a `ref`.
///
/// ```
/// use switchboard_proto::{error_frame, ErrorBody, ErrorCode};
/// let f = error_frame(&ErrorBody::new(ErrorCode::InvalidJson, "expected value"));
/// assert_eq!(f, r#"{"type":"error","payload":{"code":"INVALID_JSON","message":"expected value"}}"#);
/// ```
pub fn error_frame(error: &ErrorBody) -> String {
    frame(types::ERROR, error)
}

/// The reply to a failed message: an error `ack` when it had a `ref`, else an `error`.
pub fn error_reply(ref_id: Option<&str>, error: &ErrorBody) -> String {
    match ref_id {
        Some(r) => ack_error(r, error),
        None => error_frame(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;
    use serde_json::json;

    #[test]
    fn acks_round_trip_through_the_client_shape() {
        let result = serde_json::value::to_raw_value(&json!({"sent": true})).unwrap();
        let env = Envelope::decode(&ack_ok("r1", Some(&result))).unwrap();
        assert_eq!(env.kind, "ack");
        let ack: Ack = env.payload_as().unwrap();
        assert_eq!(ack.ref_id, "r1");
        assert_eq!(
            ack.clone().into_result().unwrap(),
            Some(json!({"sent": true}))
        );

        let err = ErrorBody::custom("DIVIDE_BY_ZERO", "cannot divide by zero")
            .with_details(json!({"b": 0}));
        let env = Envelope::decode(&ack_error("r2", &err)).unwrap();
        assert_eq!(
            env.payload.to_value(),
            json!({"ref":"r2","status":"error","code":"DIVIDE_BY_ZERO",
                   "message":"cannot divide by zero","details":{"b":0}})
        );
        let ack: Ack = env.payload_as().unwrap();
        assert_eq!(ack.into_result().unwrap_err(), err);
    }

    #[test]
    fn the_hand_written_ack_is_what_serde_json_writes() {
        let result = serde_json::value::to_raw_value(&json!({"a": "x\"y", "n": [1]})).unwrap();
        for ref_id in ["1", "r\"ef\\", "ünï\n"] {
            for result in [None, Some(&*result)] {
                let expected = frame(
                    types::ACK,
                    &AckOut {
                        ref_id,
                        status: AckStatus::Ok,
                        result,
                        code: None,
                        message: None,
                        details: None,
                    },
                );
                let ours = ack_ok(ref_id, result);
                assert_eq!(ours, expected);
                assert_eq!(ours.len(), ours.capacity());
            }
        }
    }

    #[test]
    fn replies_are_written_as_the_envelope_encoder_writes_them() {
        let result = serde_json::value::to_raw_value(&json!({"sent": true, "n": [1, 2]})).unwrap();
        let ack = ack_ok("r\"1", Some(&result));
        let env = Envelope::decode(&ack).unwrap();
        assert_eq!(env.encode(), ack);
        let body = ErrorBody::new(ErrorCode::InvalidParams, "bad \"x\"")
            .with_details(json!({"errors": [{"path": "a", "reason": "r"}]}));
        for frame in [ack_error("r", &body), error_frame(&body)] {
            let env = Envelope::decode(&frame).unwrap();
            assert_eq!(env.encode(), frame);
        }
        assert_eq!(
            ack_error("r", &body),
            r#"{"type":"ack","payload":{"ref":"r","status":"error","code":"INVALID_PARAMS","message":"bad \"x\"","details":{"errors":[{"path":"a","reason":"r"}]}}}"#
        );
    }

    #[test]
    fn error_reply_picks_ack_when_there_is_a_ref() {
        let e = ErrorBody::new(ErrorCode::UnknownType, "x");
        assert!(error_reply(Some("a"), &e).starts_with(r#"{"type":"ack""#));
        assert!(error_reply(None, &e).starts_with(r#"{"type":"error""#));
    }
}
