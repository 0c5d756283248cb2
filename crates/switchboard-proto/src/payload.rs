//! The payload: always a JSON object, kept as the text it arrived as.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A message payload: always a JSON object, kept as the JSON text it arrived as.
///
/// Keeping the text (rather than a parsed tree) means a message that is only relayed
/// is never parsed twice, and a typed handler parses it straight into its own type.
///
/// ```
/// use switchboard_proto::Payload;
/// let p = Payload::from_serialize(&serde_json::json!({"content": "hi"})).unwrap();
/// assert_eq!(p.get(), r#"{"content":"hi"}"#);
/// assert!(Payload::from_serialize(&42).is_err()); // a payload is always an object
/// ```
#[derive(Clone)]
pub struct Payload(Option<Box<str>>);

/// The text of the empty payload: every payload made empty (most messages a server
/// reads, `ping` among them, have none) allocates nothing.
const EMPTY: &str = "{}";

/// Payloads compare by their JSON text: `{"a":1}` and `{ "a": 1 }` differ.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Payload {}

impl Payload {
    /// The empty payload, `{}`.
    pub fn empty() -> Payload {
        Payload(None)
    }

    /// Wraps the text of a JSON object already validated and checked for depth (by
    /// the decoder).
    pub(crate) fn checked(text: Box<str>) -> Payload {
        Payload(Some(text))
    }

    /// Serializes `value` into a payload. Fails unless it serializes to a JSON object.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Payload, PayloadError> {
        let raw = serde_json::value::to_raw_value(value).map_err(|e| PayloadError {
            path: String::new(),
            message: e.to_string(),
        })?;
        Payload::from_raw(raw)
    }

    /// Wraps JSON text already known to be valid, checking that it is an object nested
    /// no deeper than [`MAX_PAYLOAD_DEPTH`](crate::MAX_PAYLOAD_DEPTH).
    pub fn from_raw(raw: Box<RawValue>) -> Result<Payload, PayloadError> {
        if crate::envelope::nests_deeper_than(raw.get(), crate::MAX_PAYLOAD_DEPTH) {
            return Err(PayloadError {
                path: String::new(),
                message: format!(
                    "payload nests deeper than {} levels",
                    crate::MAX_PAYLOAD_DEPTH
                ),
            });
        }
        if is_object(raw.get()) {
            Ok(Payload(Some(raw.into())))
        } else {
            Err(PayloadError {
                path: String::new(),
                message: "payload must be a JSON object".to_owned(),
            })
        }
    }

    /// Parses JSON text into a payload, checking that it is an object.
    pub fn from_json(text: &str) -> Result<Payload, PayloadError> {
        let raw = RawValue::from_string(text.to_owned()).map_err(|e| PayloadError {
            path: String::new(),
            message: e.to_string(),
        })?;
        Payload::from_raw(raw)
    }

    /// The payload's JSON text.
    pub fn get(&self) -> &str {
        self.0.as_deref().unwrap_or(EMPTY)
    }

    /// The payload as a raw JSON value, for a struct that serializes it as it stands.
    ///
    /// The payload keeps its text as a `str`, so this reads it through serde_json once
    /// more (without copying it); [`get`](Payload::get) is free.
    ///
    /// ```
    /// let p = switchboard_proto::Payload::from_json(r#"{"n":1}"#).unwrap();
    /// assert_eq!(p.as_raw().get(), p.get());
    /// ```
    pub fn as_raw(&self) -> &RawValue {
        // The text is valid JSON by construction; the fallback is never taken.
        serde_json::from_str(self.get())
            .unwrap_or_else(|_| serde_json::from_str(EMPTY).unwrap_or_else(|_| unreachable!()))
    }

    /// Deserializes the payload into `T`; the error names the path of the field that
    /// did not fit (for example `user.age`).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        // Most payloads fit: read those at full speed, and track the path only to
        // explain one that does not.
        if let Ok(value) = serde_json::from_str(self.get()) {
            return Ok(value);
        }
        let mut de = serde_json::Deserializer::from_str(self.get());
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            PayloadError {
                path: if path == "." { String::new() } else { path },
                message: strip_position(&inner.to_string()),
            }
        })
    }

    /// The payload as a `serde_json::Value` tree.
    pub fn to_value(&self) -> serde_json::Value {
        // The text is valid JSON by construction.
        serde_json::from_str(self.get()).unwrap_or(serde_json::Value::Null)
    }

    /// True for `{}` (with or without whitespace inside).
    pub fn is_empty(&self) -> bool {
        let text = self.get().trim();
        // An object's text starts with `{` and ends with `}` (both ASCII).
        text.len() >= 2 && text[1..text.len() - 1].trim().is_empty()
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::empty()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_raw().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Payload::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<serde_json::Value> for Payload {
    type Error = PayloadError;
    fn try_from(v: serde_json::Value) -> Result<Self, Self::Error> {
        Payload::from_serialize(&v)
    }
}

/// A payload that did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("at `{path}`: ") })]
pub struct PayloadError {
    /// Where in the payload it went wrong, e.g. `items[2].name`; empty for the payload itself.
    pub path: String,
    /// What was wrong there.
    pub message: String,
}

/// serde_json appends " at line 1 column 17"; the field path says more to a user.
pub(crate) fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

pub(crate) fn is_object(json: &str) -> bool {
    json.trim_start().starts_with('{')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_errors_name_the_field() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct User {
            name: String,
            age: u8,
        }
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            user: User,
        }
        let p = Payload::from_json(r#"{"user":{"name":"a","age":"old"}}"#).unwrap();
        let err = p.deserialize::<Outer>().unwrap_err();
        assert_eq!(err.path, "user.age");
        assert!(err.message.contains("expected u8"), "{err}");
        assert_eq!(err.to_string(), format!("at `user.age`: {}", err.message));

        let p = Payload::from_json(r#"{"user":{"name":"a"}}"#).unwrap();
        let err = p.deserialize::<Outer>().unwrap_err();
        assert_eq!(err.path, "user");
        assert!(err.message.contains("missing field `age`"), "{err}");
    }

    #[test]
    fn payload_must_be_an_object() {
        assert!(Payload::from_json("[1]").is_err());
        assert!(Payload::from_json("nope").is_err());
        assert!(Payload::from_json(" {\"a\":1}").is_ok());
        assert!(Payload::from_serialize(&json!(null)).is_err());
        assert!(Payload::from_json("{ }").unwrap().is_empty());
        assert!(Payload::from_json(" {} ").unwrap().is_empty());
        assert!(!Payload::from_json("{\"a\":1}").unwrap().is_empty());
    }
}
