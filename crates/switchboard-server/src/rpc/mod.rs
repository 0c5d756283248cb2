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

mod call;
mod method;
mod prepare;
mod schema;

pub(crate) use call::{Calls, start_call};
pub(crate) use method::Methods;
pub use method::{ExtractorList, IntoRpcResult, MethodInfo, RpcHandler, RpcMethod, WithParams};

/// The name of the built-in method that lists every method.
pub const LISTALL: &str = "listall";
