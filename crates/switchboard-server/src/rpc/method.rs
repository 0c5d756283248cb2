//! RPC methods: how a typed async fn becomes a method (parameters, result, extractors),
//! and the registry of a server's methods that `listall` lists.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use futures_util::future::Either;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_proto::MAX_TYPE_LEN;

use crate::HandlerError;
use crate::extract::{FromMessage, Json, MessageContext};
use crate::handler::BoxFuture;
use crate::metrics::{Metrics, Timing};

use super::schema::{invalid_params, serde_checks_all, struct_fields};

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
    /// The running method (not boxed: the server boxes it once, with the encoding of
    /// its result).
    type Future: Future<Output = Self::Output> + Send + 'static;
    /// Runs the method.
    fn call(&self, cx: &MessageContext, params: T) -> Self::Future;
}

impl<F, Fut, O> RpcHandler<(), ()> for F
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    O: IntoRpcResult,
{
    type Output = O;
    type Future = Fut;
    fn call(&self, _cx: &MessageContext, _params: ()) -> Fut {
        (self)()
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
            type Future = Either<Fut, std::future::Pending<O>>;
            fn call(&self, cx: &MessageContext, params: T) -> Self::Future {
                $(
                    // Extractors are checked before the call (see `Method::extract`); a
                    // failure here cannot happen, but never panic on it.
                    let $e = match $e::from_message(cx) {
                        Ok(v) => v,
                        Err(_) => return Either::Right(std::future::pending()),
                    };
                )*
                Either::Left((self)(params, $($e,)*))
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

/// Type-erased method body: validated params in, encoded result or error out, polled
/// once where it starts.
type Call = dyn Fn(&MessageContext, Params) -> Running + Send + Sync;

/// What a method gives back: its answer (the result's JSON text, or the error).
pub(crate) type Answer = Result<String, HandlerError>;

/// A method after its first poll.
pub(crate) enum Running {
    /// It finished at once (most do: a computation, a lookup).
    Done(Answer),
    /// It waits for something.
    Waiting(BoxFuture<'static, Answer>),
}

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
    pub(super) name: String,
    pub(super) description: Option<String>,
    pub(super) requires_auth: bool,
    pub(super) params_schema: Value,
    pub(super) result_schema: Value,
    /// The parameter struct's field names in order, for positional (array) params.
    pub(super) fields: Option<&'static [&'static str]>,
    pub(super) no_params: bool,
    pub(super) call: Arc<Call>,
    /// Set when the params schema asks nothing that deserializing the parameter type
    /// does not check too: such params are read straight from the text.
    pub(super) parse_raw: Option<Arc<ParseRaw>>,
    pub(super) precheck: Arc<Precheck>,
}

impl std::fmt::Debug for RpcMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMethod")
            .field("name", &self.name)
            .field("requires_auth", &self.requires_auth)
            .finish_non_exhaustive()
    }
}

pub(super) fn schema_value(schema: Schema) -> Value {
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
        let call: Arc<Call> = Arc::new(move |cx: &MessageContext, params: Params| {
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
            let running = match parsed {
                Ok(p) => handler.call(cx, p),
                Err(e) => return Running::Done(Err(e)),
            };
            // One box, the method's future inside (it is not `Unpin`: polled in place,
            // it could not move to a task after).
            let mut fut: BoxFuture<'static, Answer> =
                Box::pin(async move { encode_result(running.await) });
            match (&mut fut).now_or_never() {
                Some(answer) => Running::Done(answer),
                None => Running::Waiting(fut),
            }
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

/// A method's output as its answer: the result as the text serde_json writes (a
/// `RawValue` would be copied once more, to fit its buffer to its length), or the error.
fn encode_result(output: impl IntoRpcResult) -> Answer {
    let result = output.into_rpc_result()?;
    serde_json::to_string(&result)
        .map_err(|e| HandlerError::internal(format!("the result did not encode: {e}")))
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

/// A method ready to run: its compiled validator beside it.
pub(crate) struct Compiled {
    pub(super) method: RpcMethod,
    pub(super) validator: Option<jsonschema::Validator>,
    /// Its duration histograms, when the server counts metrics (set once it is built).
    pub(super) timing: OnceLock<Timing>,
}

/// Every method of a server, and `listall`.
#[derive(Default)]
pub(crate) struct Methods {
    by_name: BTreeMap<String, Arc<Compiled>>,
}

impl Methods {
    /// Every method's name.
    pub(crate) fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

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
            Arc::new(Compiled {
                method,
                validator,
                timing: OnceLock::new(),
            }),
        );
    }

    /// Gives each method its duration histograms.
    pub(crate) fn time_with(&self, metrics: &Metrics) {
        for compiled in self.by_name.values() {
            if let Some(timing) = metrics.rpc_timing(&compiled.method.name) {
                let _ = compiled.timing.set(timing);
            }
        }
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
