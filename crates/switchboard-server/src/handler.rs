//! Handlers: async functions of extractors, and what they may return.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::HandlerError;
use crate::extract::{FromMessage, Json, MessageContext};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler produced: a reply value (sent back to the sender), or none.
pub type HandlerResult = Result<Option<Box<RawValue>>, HandlerError>;

/// A handler's return value.
///
/// | return type | what the sender gets |
/// | --- | --- |
/// | `()` | nothing (an `ack` with status `ok` if the message had a `ref`) |
/// | [`Json<T>`] / `serde_json::Value` | the value: as the ack's `result`, or as `<type>_response` |
/// | `Option<T>` | `None` is like `()` |
/// | `Result<T, E>` | `Err` becomes an `error` (or error ack) with the error's code |
pub trait IntoReply {
    /// Turns the value into a reply.
    fn into_reply(self) -> HandlerResult;
}

impl IntoReply for () {
    fn into_reply(self) -> HandlerResult {
        Ok(None)
    }
}

fn to_raw<T: Serialize + ?Sized>(value: &T) -> HandlerResult {
    serde_json::value::to_raw_value(value)
        .map(Some)
        .map_err(|e| HandlerError::internal(format!("cannot encode the handler's reply: {e}")))
}

impl<T: Serialize> IntoReply for Json<T> {
    fn into_reply(self) -> HandlerResult {
        to_raw(&self.0)
    }
}

impl IntoReply for serde_json::Value {
    fn into_reply(self) -> HandlerResult {
        to_raw(&self)
    }
}

impl IntoReply for Box<RawValue> {
    fn into_reply(self) -> HandlerResult {
        Ok(Some(self))
    }
}

impl<T: IntoReply> IntoReply for Option<T> {
    fn into_reply(self) -> HandlerResult {
        match self {
            Some(v) => v.into_reply(),
            None => Ok(None),
        }
    }
}

impl<T: IntoReply, E: Into<HandlerError>> IntoReply for Result<T, E> {
    fn into_reply(self) -> HandlerResult {
        match self {
            Ok(v) => v.into_reply(),
            Err(e) => Err(e.into()),
        }
    }
}

impl IntoReply for HandlerError {
    fn into_reply(self) -> HandlerResult {
        Err(self)
    }
}

/// A message handler: implemented for every `async fn` (or closure returning a future)
/// whose arguments implement [`FromMessage`] (up to eight) and whose output implements
/// [`IntoReply`].
///
/// ```
/// use switchboard_server::{Conn, Json, Server};
///
/// async fn ping() {}
/// async fn echo(Json(v): Json<serde_json::Value>) -> Json<serde_json::Value> { Json(v) }
/// async fn hello(conn: Conn, server: Server) -> Json<String> {
///     Json(format!("hello {}, {} online", conn.id(), server.connection_count()))
/// }
///
/// let server = Server::builder().on("p", ping).on("echo", echo).on("hello", hello).build();
/// ```
pub trait Handler<Args>: Send + Sync + 'static {
    /// Extracts the arguments and starts the handler.
    fn call(&self, cx: &MessageContext) -> BoxFuture<'static, HandlerResult>;
}

macro_rules! impl_handler {
    ($($ty:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        impl<F, Fut, R, $($ty,)*> Handler<($($ty,)*)> for F
        where
            F: Fn($($ty),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoReply + 'static,
            $($ty: FromMessage,)*
        {
            fn call(&self, cx: &MessageContext) -> BoxFuture<'static, HandlerResult> {
                $(
                    let $ty = match $ty::from_message(cx) {
                        Ok(v) => v,
                        Err(e) => return Box::pin(std::future::ready(Err(e))),
                    };
                )*
                let fut = (self)($($ty),*);
                Box::pin(async move { fut.await.into_reply() })
            }
        }
    };
}

impl_handler!();
impl_handler!(T1);
impl_handler!(T1, T2);
impl_handler!(T1, T2, T3);
impl_handler!(T1, T2, T3, T4);
impl_handler!(T1, T2, T3, T4, T5);
impl_handler!(T1, T2, T3, T4, T5, T6);
impl_handler!(T1, T2, T3, T4, T5, T6, T7);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8);

/// A handler with its argument types erased, as the router stores it.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    fn call(&self, cx: &MessageContext) -> BoxFuture<'static, HandlerResult>;
}

pub(crate) struct Erased<H, Args> {
    handler: H,
    _args: std::marker::PhantomData<fn() -> Args>,
}

impl<H, Args> Erased<H, Args> {
    pub(crate) fn new(handler: H) -> Self {
        Erased {
            handler,
            _args: std::marker::PhantomData,
        }
    }
}

impl<H: Handler<Args>, Args: 'static> ErasedHandler for Erased<H, Args> {
    fn call(&self, cx: &MessageContext) -> BoxFuture<'static, HandlerResult> {
        self.handler.call(cx)
    }
}
