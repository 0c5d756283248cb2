//! What the JSON Schema of a method's params says about reading them: whether
//! deserializing alone checks everything it asks (then params skip the validator), the
//! field order for positional params, and readable paths for errors.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use switchboard_proto::ErrorCode;

use crate::HandlerError;

/// True if a params schema asks nothing that deserializing the type does not check
/// too: structure and types only (`type`, `properties`, `required`,
/// `additionalProperties`, `items`, `anyOf`/`oneOf`/`allOf`, `$ref` into `$defs`), and
/// integer formats with their type's own bounds. Lengths, ranges, patterns, string
/// formats, enums and anything unknown make it false: then every call is validated.
pub(super) fn serde_checks_all(schema: &Value) -> bool {
    let all = |v: &Value| match v {
        Value::Array(items) => items.iter().all(serde_checks_all),
        Value::Object(map) => map.values().all(serde_checks_all),
        _ => false,
    };
    let map = match schema {
        Value::Bool(_) => return true,
        Value::Object(map) => map,
        _ => return false,
    };
    let bounds = map
        .get("format")
        .and_then(Value::as_str)
        .and_then(integer_bounds);
    map.iter().all(|(key, v)| match key.as_str() {
        "type" | "required" | "description" | "title" | "default" | "examples" | "deprecated"
        | "readOnly" | "writeOnly" | "$schema" | "$id" => true,
        "$ref" => v.as_str().is_some_and(|r| r.starts_with("#/")),
        "properties" | "$defs" | "definitions" => v.is_object() && all(v),
        "items" | "anyOf" | "oneOf" | "allOf" => {
            if v.is_array() {
                all(v)
            } else {
                serde_checks_all(v)
            }
        }
        "additionalProperties" => serde_checks_all(v),
        "format" => bounds.is_some(),
        "minimum" => bounds.is_some_and(|(lo, _)| v.as_f64() == Some(lo)),
        "maximum" => bounds.is_some_and(|(_, hi)| hi.is_some() && v.as_f64() == hi),
        _ => false,
    })
}

/// The bounds an integer format's Rust type has anyway (serde refuses what is outside).
fn integer_bounds(format: &str) -> Option<(f64, Option<f64>)> {
    Some(match format {
        "uint8" => (0.0, Some(f64::from(u8::MAX))),
        "uint16" => (0.0, Some(f64::from(u16::MAX))),
        "uint32" => (0.0, Some(f64::from(u32::MAX))),
        "uint64" | "uint128" | "uint" => (0.0, None),
        "int8" => (f64::from(i8::MIN), Some(f64::from(i8::MAX))),
        "int16" => (f64::from(i16::MIN), Some(f64::from(i16::MAX))),
        "int32" => (f64::from(i32::MIN), Some(f64::from(i32::MAX))),
        "int64" | "int128" | "int" => (f64::MIN, None),
        "float" | "double" => (f64::MIN, None),
        _ => return None,
    })
}

pub(super) fn invalid_params(reason: &str, path: &str) -> HandlerError {
    let message = if path.is_empty() {
        format!("invalid params: {reason}")
    } else {
        format!("invalid params: {path}: {reason}")
    };
    HandlerError::code_of(ErrorCode::InvalidParams, message)
        .with_details(json!({"errors": [{"path": path, "reason": reason}]}))
}

/// The field names of a struct, in declaration order, found by asking its `Deserialize`
/// impl; `None` for anything that is not a plain struct.
pub(super) fn struct_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    use serde::de::{self, Visitor};

    struct Probe(Option<&'static [&'static str]>);

    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Stop {
            Stop
        }
    }

    impl<'de> de::Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0
}

/// A location in the params as a readable path: `/roles/0` becomes `roles[0]`.
pub(super) fn readable_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::method::schema_value;
    use super::*;
    use schemars::JsonSchema;
    use schemars::generate::SchemaSettings;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Two {
        a: i64,
        b: i64,
    }

    #[test]
    fn struct_fields_are_found_in_order() {
        assert_eq!(struct_fields::<Two>(), Some(&["a", "b"][..]));
        assert_eq!(struct_fields::<(i64, i64)>(), None);
        assert_eq!(struct_fields::<Value>(), None);
    }

    fn schema_of<T: JsonSchema>() -> Value {
        schema_value(
            SchemaSettings::default()
                .for_deserialize()
                .into_generator()
                .into_root_schema_for::<T>(),
        )
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Plain {
        name: String,
        count: u8,
        big: u64,
        signed: i32,
        ratio: f64,
        tags: Vec<String>,
        nick: Option<String>,
        inner: Two,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        a: i64,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Bounded {
        #[schemars(range(min = 0, max = 150))]
        age: u8,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Long {
        #[schemars(length(min = 3))]
        name: String,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Mail {
        #[schemars(email)]
        to: String,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Color {
        Red,
        Blue,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Painted {
        color: Color,
    }

    #[test]
    fn only_schemas_that_deserializing_checks_take_the_fast_path() {
        assert!(serde_checks_all(&schema_of::<Two>()));
        assert!(serde_checks_all(&schema_of::<Plain>()));
        assert!(serde_checks_all(&schema_of::<Strict>()));
        // What serde would not check: a narrower range, a length, a format, an enum.
        assert!(!serde_checks_all(&schema_of::<Bounded>()));
        assert!(!serde_checks_all(&schema_of::<Long>()));
        assert!(!serde_checks_all(&schema_of::<Mail>()));
        assert!(!serde_checks_all(&schema_of::<Painted>()));
        assert!(!serde_checks_all(
            &json!({"type": "string", "pattern": "^a"})
        ));
        assert!(!serde_checks_all(
            &json!({"type": "object", "x-unknown": 1})
        ));
    }

    #[test]
    fn pointers_become_readable_paths() {
        assert_eq!(readable_path(""), "");
        assert_eq!(readable_path("/username"), "username");
        assert_eq!(readable_path("/roles/0"), "roles[0]");
        assert_eq!(readable_path("/a/b~1c/2/d"), "a.b/c[2].d");
    }
}
