//! Typed RPC: methods with typed parameters and results, validated against the JSON
//! Schema of their parameter type before they run, and discoverable with `listall`.
//!
//! A call is `{"type": "rpc", "payload": {"method": "add", "params": {"a": 1, "b": 2}}, "ref": "1"}`
//! and is answered with the `ack` of its `ref`: `{"status": "ok", "result": 3}`, or an
//! error with a code (`UNKNOWN_METHOD`, `INVALID_PARAMS`, `AUTH_REQUIRED`, the method's
//! own code, `INTERNAL` for a panic).
//!
//! ```
//! use schemars::JsonSchema;
//! use serde::Deserialize;
//! use switchboard_server::{HandlerError, Server};
//!
//! /// Add two numbers.
//! #[derive(Deserialize, JsonSchema)]
//! struct Add { a: i64, b: i64 }
//!
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct CreateUser {
//!     #[schemars(length(min = 3, max = 30))]
//!     username: String,
//!     #[schemars(email)]
//!     email: String,
//!     #[schemars(range(min = 0, max = 150))]
//!     age: u8,
//!     #[serde(default)]
//!     roles: Vec<String>,
//! }
//!
//! let server = Server::builder()
//!     .rpc("add", |args: Add| async move { args.a + args.b })
//!     .rpc("divide", |(a, b): (f64, f64)| async move {
//!         if b == 0.0 {
//!             return Err(HandlerError::new("DIVISION_BY_ZERO", "Cannot divide by zero"));
//!         }
//!         Ok(a / b)
//!     })
//!     .rpc("create_user", |u: CreateUser| async move { u.username })
//!     .build();
//! ```

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_proto::{ErrorCode, MAX_TYPE_LEN, RawValue};

use crate::HandlerError;
use crate::extract::{FromMessage, Json, MessageContext};
use crate::handler::BoxFuture;

/// The name of the built-in method that lists every method.
pub const LISTALL: &str = "listall";

/// What an RPC method returns: a value (sent as the result), `Result<T, E>` (an error
/// reaches the caller with its code), or [`Json<T>`].
pub trait IntoRpcResult: Send + 'static {
    /// The result type, whose JSON Schema `listall` publishes.
    type Ok: Serialize + JsonSchema + Send;
    /// Splits into the result or the error.
    fn into_rpc_result(self) -> Result<Self::Ok, HandlerError>;
}

impl<T, E> IntoRpcResult for Result<T, E>
where
    T: Serialize + JsonSchema + Send + 'static,
    E: Into<HandlerError> + Send + 'static,
{
    type Ok = T;
    fn into_rpc_result(self) -> Result<T, HandlerError> {
        self.map_err(Into::into)
    }
}

impl<T: Serialize + JsonSchema + Send + 'static> IntoRpcResult for Json<T> {
    type Ok = T;
    fn into_rpc_result(self) -> Result<T, HandlerError> {
        Ok(self.0)
    }
}

macro_rules! plain_results {
    ($($t:ty),* $(,)?) => {$(
        impl IntoRpcResult for $t {
            type Ok = $t;
            fn into_rpc_result(self) -> Result<$t, HandlerError> {
                Ok(self)
            }
        }
    )*};
}

plain_results!(
    (),
    bool,
    i8,
    i16,
    i32,
    i64,
    u8,
    u16,
    u32,
    u64,
    usize,
    isize,
    f32,
    f64,
    String,
    &'static str,
    Value
);

impl<T: Serialize + JsonSchema + Send + 'static> IntoRpcResult for Vec<T> {
    type Ok = Vec<T>;
    fn into_rpc_result(self) -> Result<Vec<T>, HandlerError> {
        Ok(self)
    }
}

impl<T: Serialize + JsonSchema + Send + 'static> IntoRpcResult for Option<T> {
    type Ok = Option<T>;
    fn into_rpc_result(self) -> Result<Option<T>, HandlerError> {
        Ok(self)
    }
}

impl<T: Serialize + JsonSchema + Send + 'static> IntoRpcResult for BTreeMap<String, T> {
    type Ok = BTreeMap<String, T>;
    fn into_rpc_result(self) -> Result<BTreeMap<String, T>, HandlerError> {
        Ok(self)
    }
}

/// An async function that can be an RPC method: its first argument is the parameters
/// (any `Deserialize + JsonSchema` type), the others are extractors ([`Conn`](crate::Conn),
/// [`Server`](crate::Server), [`State`](crate::State), [`Identity`](crate::Identity), ...);
/// or no arguments at all.
pub trait RpcHandler<T, Args>: Clone + Send + Sync + 'static {
    /// What the method returns.
    type Output: IntoRpcResult;
    /// Runs the method.
    fn call(&self, cx: &MessageContext, params: T) -> BoxFuture<'static, Self::Output>;
}

impl<F, Fut, O> RpcHandler<(), ()> for F
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    O: IntoRpcResult,
{
    type Output = O;
    fn call(&self, _cx: &MessageContext, _params: ()) -> BoxFuture<'static, O> {
        Box::pin((self)())
    }
}

/// Marks the argument lists of RPC handlers that take parameters (an implementation
/// detail of [`RpcHandler`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct WithParams;

macro_rules! rpc_handler {
    ($($e:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        impl<F, Fut, O, T, $($e,)*> RpcHandler<T, (WithParams, T, $($e,)*)> for F
        where
            F: Fn(T, $($e,)*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = O> + Send + 'static,
            O: IntoRpcResult,
            T: Send + 'static,
            $($e: FromMessage,)*
        {
            type Output = O;
            fn call(&self, cx: &MessageContext, params: T) -> BoxFuture<'static, O> {
                $(
                    // Extractors are checked before the call (see `Method::extract`); a
                    // failure here cannot happen, but never panic on it.
                    let $e = match $e::from_message(cx) {
                        Ok(v) => v,
                        Err(_) => return Box::pin(std::future::pending()),
                    };
                )*
                Box::pin((self)(params, $($e,)*))
            }
        }
    };
}

rpc_handler!();
rpc_handler!(E1);
rpc_handler!(E1, E2);
rpc_handler!(E1, E2, E3);
rpc_handler!(E1, E2, E3, E4);
rpc_handler!(E1, E2, E3, E4, E5);

/// Type-erased method body: validated params in, encoded result or error out.
type Call = dyn Fn(MessageContext, Params) -> BoxFuture<'static, Result<Box<RawValue>, HandlerError>>
    + Send
    + Sync;

/// Reads params straight from their JSON text into the method's type; `None` if they
/// do not fit (the slow path then says why).
type ParseRaw = dyn Fn(&str) -> Option<Box<dyn Any + Send>> + Send + Sync;

/// A call's params, checked: as a JSON tree (validated against the schema), or already
/// read into the method's parameter type (the fast path).
pub(crate) enum Params {
    Json(Value),
    Typed(Box<dyn Any + Send>),
}

/// Checks the extractors a method asks for before it runs.
type Precheck = dyn Fn(&MessageContext) -> Result<(), HandlerError> + Send + Sync;

/// One RPC method: name, description, schemas, whether it needs authentication, and
/// the handler. Build it with [`RpcMethod::new`] to set a description or require
/// authentication; [`ServerBuilder::rpc`](crate::ServerBuilder::rpc) is the short form.
///
/// ```
/// use switchboard_server::{RpcMethod, Server, Identity};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Echo { message: String }
///
/// let server = Server::builder()
///     .rpc_method(
///         RpcMethod::new("whoami", |(): (), who: Identity| async move { who.id })
///             .description("The caller's identity")
///             .requires_auth(),
///     )
///     .rpc("echo", |e: Echo| async move { e.message })
///     .build();
/// ```
pub struct RpcMethod {
    name: String,
    description: Option<String>,
    requires_auth: bool,
    params_schema: Value,
    result_schema: Value,
    /// The parameter struct's field names in order, for positional (array) params.
    fields: Option<&'static [&'static str]>,
    no_params: bool,
    call: Arc<Call>,
    /// Set when the params schema asks nothing that deserializing the parameter type
    /// does not check too: such params are read straight from the text.
    parse_raw: Option<Arc<ParseRaw>>,
    precheck: Arc<Precheck>,
}

impl std::fmt::Debug for RpcMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMethod")
            .field("name", &self.name)
            .field("requires_auth", &self.requires_auth)
            .finish_non_exhaustive()
    }
}

fn schema_value(schema: Schema) -> Value {
    let mut v = schema.to_value();
    if let Some(map) = v.as_object_mut() {
        map.remove("$schema");
    }
    v
}

impl RpcMethod {
    /// A method named `name` run by `handler`.
    pub fn new<H, T, A>(name: impl Into<String>, handler: H) -> RpcMethod
    where
        H: RpcHandler<T, A>,
        T: DeserializeOwned + JsonSchema + Send + 'static,
        A: ExtractorList,
    {
        let no_params = TypeId::of::<T>() == TypeId::of::<()>();
        let params_schema = if no_params {
            json!({"type": "object", "properties": {}, "additionalProperties": false})
        } else {
            schema_value(
                SchemaSettings::default()
                    .for_deserialize()
                    .into_generator()
                    .into_root_schema_for::<T>(),
            )
        };
        let result_schema = schema_value(
            SchemaSettings::default()
                .for_serialize()
                .into_generator()
                .into_root_schema_for::<<H::Output as IntoRpcResult>::Ok>(),
        );
        let description = params_schema
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let parse_raw: Option<Arc<ParseRaw>> = (!no_params && serde_checks_all(&params_schema))
            .then(|| {
                Arc::new(|text: &str| {
                    serde_json::from_str::<T>(text)
                        .ok()
                        .map(|t| Box::new(t) as Box<dyn Any + Send>)
                }) as Arc<ParseRaw>
            });
        let call: Arc<Call> = Arc::new(move |cx: MessageContext, params: Params| {
            let parsed: Result<T, HandlerError> = match params {
                // Read by the fast path; always of type T.
                Params::Typed(typed) => typed
                    .downcast::<T>()
                    .map(|p| *p)
                    .map_err(|_| HandlerError::internal("params of the wrong type")),
                Params::Json(_) if no_params => serde_json::from_value(Value::Null)
                    .map_err(|e| invalid_params(&e.to_string(), "")),
                // Params that fit (nearly all: they passed the schema) are read at full
                // speed; the path is tracked only to explain the ones that do not.
                Params::Json(params) => T::deserialize(&params).or_else(|_| {
                    serde_path_to_error::deserialize(&params).map_err(|e| {
                        let path = e.path().to_string();
                        invalid_params(&e.inner().to_string(), if path == "." { "" } else { &path })
                    })
                }),
            };
            let fut = parsed.map(|p| handler.call(&cx, p));
            Box::pin(async move {
                let result = fut?.await.into_rpc_result()?;
                serde_json::value::to_raw_value(&result)
                    .map_err(|e| HandlerError::internal(format!("the result did not encode: {e}")))
            })
        });
        RpcMethod {
            name: name.into(),
            description,
            requires_auth: false,
            params_schema,
            result_schema,
            fields: struct_fields::<T>(),
            no_params,
            call,
            parse_raw,
            precheck: Arc::new(A::check),
        }
    }

    /// Describes the method in `listall` (default: the parameter type's doc comment).
    pub fn description(mut self, description: impl Into<String>) -> RpcMethod {
        self.description = Some(description.into());
        self
    }

    /// Only authenticated clients may call it; others get `AUTH_REQUIRED`.
    pub fn requires_auth(mut self) -> RpcMethod {
        self.requires_auth = true;
        self
    }

    /// The method's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// True if a params schema asks nothing that deserializing the type does not check
/// too: structure and types only (`type`, `properties`, `required`,
/// `additionalProperties`, `items`, `anyOf`/`oneOf`/`allOf`, `$ref` into `$defs`), and
/// integer formats with their type's own bounds. Lengths, ranges, patterns, string
/// formats, enums and anything unknown make it false: then every call is validated.
fn serde_checks_all(schema: &Value) -> bool {
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

/// The extractor arguments of an [`RpcHandler`], checked before the method runs so a
/// failed extraction (say, [`Identity`](crate::Identity) on an anonymous client) is a
/// clean error.
pub trait ExtractorList: 'static {
    /// Tries every extractor.
    fn check(cx: &MessageContext) -> Result<(), HandlerError>;
}

impl ExtractorList for () {
    fn check(_: &MessageContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

macro_rules! extractor_list {
    ($($e:ident),*) => {
        impl<T: 'static, $($e: FromMessage,)*> ExtractorList for (WithParams, T, $($e,)*) {
            fn check(_cx: &MessageContext) -> Result<(), HandlerError> {
                $( $e::from_message(_cx)?; )*
                Ok(())
            }
        }
    };
}

extractor_list!();
extractor_list!(E1);
extractor_list!(E1, E2);
extractor_list!(E1, E2, E3);
extractor_list!(E1, E2, E3, E4);
extractor_list!(E1, E2, E3, E4, E5);

fn invalid_params(reason: &str, path: &str) -> HandlerError {
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
fn struct_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
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
fn readable_path(pointer: &str) -> String {
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

/// A method ready to run: its compiled validator beside it.
pub(crate) struct Compiled {
    method: RpcMethod,
    validator: Option<jsonschema::Validator>,
}

/// Every method of a server, and `listall`.
#[derive(Default)]
pub(crate) struct Methods {
    by_name: BTreeMap<String, Arc<Compiled>>,
}

impl Methods {
    pub(crate) fn add(&mut self, method: RpcMethod) {
        assert!(
            !method.name.is_empty() && method.name.len() <= MAX_TYPE_LEN,
            "an RPC method name is 1 to {MAX_TYPE_LEN} bytes: {:?}",
            method.name
        );
        let validator = if method.no_params {
            None
        } else {
            match jsonschema::options()
                .should_validate_formats(true)
                .build(&method.params_schema)
            {
                Ok(v) => Some(v),
                Err(e) => {
                    // Schemars output is valid JSON Schema; if not, serde still checks.
                    tracing::warn!(method = %method.name, error = %e, "no schema validation");
                    None
                }
            }
        };
        self.by_name.insert(
            method.name.clone(),
            Arc::new(Compiled { method, validator }),
        );
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Compiled>> {
        self.by_name.get(name).cloned()
    }

    /// `listall`: every method with its description, schemas and auth requirement.
    pub(crate) fn list(&self) -> Vec<MethodInfo> {
        self.by_name
            .values()
            .map(|c| MethodInfo {
                name: c.method.name.clone(),
                description: c.method.description.clone(),
                params: c.method.params_schema.clone(),
                result: c.method.result_schema.clone(),
                requires_auth: c.method.requires_auth,
            })
            .collect()
    }
}

/// One entry of `listall` (and of `GET /rpc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MethodInfo {
    /// The method name.
    pub name: String,
    /// What it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of its parameters (an object of named arguments).
    pub params: Value,
    /// The JSON Schema of its result.
    pub result: Value,
    /// Whether only authenticated clients may call it.
    pub requires_auth: bool,
}

/// The `payload` of an `rpc` message.
#[derive(Deserialize)]
struct CallPayload {
    method: String,
    #[serde(default)]
    params: Option<Value>,
}

/// The `payload` of an `rpc` message, borrowed from its text (the fast path).
#[derive(Deserialize)]
struct CallText<'a> {
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
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
    (m.precheck)(cx)?;
    Ok(compiled)
}

/// Reads an `rpc` payload, finds the method, checks auth and the params. Cheap and
/// synchronous: the connection's reader runs it before spawning the call.
pub(crate) fn prepare(methods: &Methods, cx: &MessageContext) -> Result<Prepared, HandlerError> {
    // The fast path: named params whose schema asks nothing that deserializing does not
    // check are read straight from the text into the method's type. Anything else, and
    // anything that does not fit, takes the general path below, which explains errors.
    if let Ok(call) = serde_json::from_str::<CallText<'_>>(cx.envelope.payload.get()) {
        let compiled = find(methods, &call.method, cx)?;
        if let Some(parse) = &compiled.method.parse_raw {
            let params = match call.params.map(RawValue::get) {
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
        _ => vec![json!({"path": at, "reason": e.to_string()})],
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
}

impl Prepared {
    /// The method, to answer the call once it ran.
    pub(crate) fn method(&self) -> Arc<Compiled> {
        self.compiled.clone()
    }

    /// Runs the method.
    pub(crate) fn run(
        self,
        cx: MessageContext,
    ) -> BoxFuture<'static, Result<Box<RawValue>, HandlerError>> {
        (self.compiled.method.call)(cx, self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
