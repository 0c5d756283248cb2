//! Preparing a call: the `rpc` payload read, the method found, auth and extractors
//! checked, the params validated against the method's schema (or read straight into its
//! type when the schema asks nothing more than that).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proto::ErrorCode;
use switchboard_proto::reply::excerpt;

/// The longest `reason` of one params error (it may quote the value).
const MAX_REASON: usize = 256;

use super::method::{Compiled, Methods, Params, RpcMethod, Running};
use super::schema::{invalid_params, readable_path};
use crate::HandlerError;
use crate::extract::MessageContext;

/// The `payload` of an `rpc` message.
#[derive(Deserialize)]
struct CallPayload {
    method: String,
    #[serde(default)]
    params: Option<Value>,
}

/// The `payload` of a plain `rpc` message, borrowed from its text (the fast path): the
/// method's name without escapes, the params' text. `None` for anything else (a key
/// given twice or unknown, a name with escapes), which the general path reads. The
/// payload was validated when its envelope was read, so its values are only skipped.
fn call_text(payload: &str) -> Option<(&str, Option<&str>)> {
    use switchboard_proto::scan::{members_of_valid, plain};
    let (mut method, mut params) = (None, None);
    members_of_valid(payload, |key, value| {
        match key {
            "method" if method.is_none() => method = Some(plain(value)?),
            "params" if params.is_none() => params = Some(value),
            _ => return None,
        }
        Some(())
    })?;
    Some((method?, params))
}

/// A parsed call: the method, and the params checked against its schema.
pub(crate) struct Prepared {
    compiled: Arc<Compiled>,
    params: Params,
}

/// The method named `name`, if this client may call it.
fn find(methods: &Methods, name: &str, cx: &MessageContext) -> Result<Arc<Compiled>, HandlerError> {
    let compiled = methods.get(name).ok_or_else(|| {
        HandlerError::code_of(
            ErrorCode::UnknownMethod,
            format!("no method `{name}` (call `listall` for the list)"),
        )
        .with_details(json!({"method": name}))
    })?;
    let m = &compiled.method;
    if m.requires_auth && !cx.conn.is_authenticated() {
        return Err(HandlerError::code_of(
            ErrorCode::AuthRequired,
            format!("`{}` needs an authenticated client", m.name),
        ));
    }
    cx.server().permit(&cx.conn, crate::Action::Call(&m.name))?;
    (m.precheck)(cx)?;
    Ok(compiled)
}

/// Reads an `rpc` payload, finds the method, checks auth and the params. Cheap and
/// synchronous: the connection's reader runs it before spawning the call.
pub(crate) fn prepare(methods: &Methods, cx: &MessageContext) -> Result<Prepared, HandlerError> {
    // The fast path: named params whose schema asks nothing that deserializing does not
    // check are read straight from the text into the method's type. Anything else, and
    // anything that does not fit, takes the general path below, which explains errors.
    if let Some((method, raw_params)) = call_text(cx.envelope.payload.get()) {
        let compiled = find(methods, method, cx)?;
        if let Some(parse) = &compiled.method.parse_raw {
            let params = match raw_params {
                None | Some("null") => "{}",
                Some(text) => text,
            };
            if params.starts_with('{') {
                if let Some(typed) = parse(params) {
                    return Ok(Prepared {
                        compiled,
                        params: Params::Typed(typed),
                    });
                }
            }
        }
    }
    let call: CallPayload = cx
        .envelope
        .payload
        .deserialize()
        .map_err(|e| HandlerError::invalid_payload(&e))?;
    let compiled = find(methods, &call.method, cx)?;
    let m = &compiled.method;
    let params = match call.params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::Array(items)) => positional(m, items)?,
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(invalid_params(
                &format!("params must be an object of named arguments or an array, not {other}"),
                "",
            ));
        }
    };
    if m.no_params {
        if params.as_object().is_some_and(|o| !o.is_empty()) {
            return Err(invalid_params(
                &format!("`{}` takes no parameters", m.name),
                "",
            ));
        }
    } else if let Some(validator) = compiled.validator.as_ref().filter(|v| !v.is_valid(&params)) {
        // The fast check passed over; collect every error only for invalid params.
        let errors: Vec<Value> = validator
            .iter_errors(&params)
            .flat_map(|e| describe(&e))
            .collect();
        if !errors.is_empty() {
            let summary: Vec<String> = errors
                .iter()
                .map(|e| match e["path"].as_str() {
                    Some("") | None => e["reason"].as_str().unwrap_or("").to_owned(),
                    Some(p) => format!("{p}: {}", e["reason"].as_str().unwrap_or("")),
                })
                .collect();
            return Err(HandlerError::code_of(
                ErrorCode::InvalidParams,
                format!("invalid params: {}", summary.join("; ")),
            )
            .with_details(json!({ "errors": errors })));
        }
    }
    Ok(Prepared {
        compiled,
        params: Params::Json(params),
    })
}

/// One validation error as `{path, reason}`; a missing or an unexpected property is
/// reported at the property's own path.
fn describe(e: &jsonschema::ValidationError<'_>) -> Vec<Value> {
    use jsonschema::error::ValidationErrorKind as K;
    let at = readable_path(e.instance_path().as_str());
    let join = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    match e.kind() {
        K::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            vec![json!({"path": join(&name), "reason": "missing required field"})]
        }
        K::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| json!({"path": join(name), "reason": "unknown field"}))
            .collect(),
        _ => vec![json!({"path": at, "reason": excerpt(e.to_string(), MAX_REASON)})],
    }
}

/// Positional params: `[1, 2]` for a struct `{a, b}` becomes `{"a": 1, "b": 2}`; a
/// tuple or a sequence type takes the array as it is.
fn positional(m: &RpcMethod, items: Vec<Value>) -> Result<Value, HandlerError> {
    match m.fields {
        Some(fields) => {
            if items.len() > fields.len() {
                return Err(invalid_params(
                    &format!(
                        "`{}` takes at most {} arguments ({}), got {}",
                        m.name,
                        fields.len(),
                        fields.join(", "),
                        items.len()
                    ),
                    "",
                ));
            }
            Ok(Value::Object(
                fields
                    .iter()
                    .zip(items)
                    .map(|(f, v)| ((*f).to_owned(), v))
                    .collect(),
            ))
        }
        None if m.no_params && items.is_empty() => Ok(Value::Object(Default::default())),
        None => Ok(Value::Array(items)),
    }
}

impl Compiled {
    /// The method's name.
    pub(crate) fn name(&self) -> &str {
        &self.method.name
    }

    /// Runs the method, polling it once.
    pub(crate) fn run(&self, cx: &MessageContext, params: Params) -> Running {
        (self.method.call)(cx, params)
    }

    /// Records how long a call took (`ok`: without an error), when metrics are counted.
    pub(crate) fn observe(&self, started: std::time::Instant, ok: bool) {
        if let Some(timing) = self.timing.get() {
            timing.observe(started, ok);
        }
    }
}

impl Prepared {
    /// The method, and the params to run it with.
    pub(crate) fn into_parts(self) -> (Arc<Compiled>, Params) {
        (self.compiled, self.params)
    }
}
