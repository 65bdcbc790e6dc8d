//! The server's handler for `sendToServer` (the original's `handler` option).
//!
//! Whatever the handler returns becomes the `result` of the client's ack; an
//! error becomes an `error` frame with code 2001 and the handler's message.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use pubsub_protocol::Action;
use serde::Serialize;

use crate::context::HandlerContext;

/// A handler's successful answer, already serialised: one valid JSON value,
/// which the ack carries verbatim.
#[derive(Debug, Clone)]
pub struct Reply(String);

impl Reply {
    /// The reply's JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }
}

/// The action itself as the reply, its bytes as they arrived (no copy, no
/// second serialisation): what an echo handler answers.
impl From<Action> for Reply {
    fn from(action: Action) -> Self {
        Self(action.into_json())
    }
}

/// What a handler returns.
pub type HandlerResult = Result<Reply, HandlerError>;

/// Serialises `value` as the reply.
pub fn reply<T: Serialize + ?Sized>(value: &T) -> HandlerResult {
    serde_json::to_string(value)
        .map(Reply)
        .map_err(|e| HandlerError::new(format!("the handler's reply could not be serialised: {e}")))
}

/// A handler's refusal or failure, sent to the client as `handler_error`.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerError {
    pub message: String,
    /// Whether the client may retry with the same message id. Retryable errors
    /// are not remembered in the retry window, so the retry runs the handler again.
    pub retryable: bool,
    /// Application details passed to the client as `data`.
    pub data: Option<serde_json::Value>,
}

impl HandlerError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            data: None,
        }
    }

    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    pub fn with_data(mut self, data: impl Serialize) -> Self {
        self.data = serde_json::to_value(data).ok();
        self
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

/// Handles actions sent with `sendToServer`. Implement it with a plain
/// `async fn` (no `#[async_trait]`: the trait uses Rust's own async
/// functions in traits, so a call boxes nothing of the handler's):
///
/// ```
/// use pubsub_server::{Handler, HandlerContext, HandlerResult, Reply};
/// use pubsub_protocol::Action;
///
/// struct Echo;
///
/// impl Handler for Echo {
///     async fn handle(&self, _ctx: HandlerContext, action: Action) -> HandlerResult {
///         Ok(Reply::from(action))
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        ctx: HandlerContext,
        action: Action,
    ) -> impl Future<Output = HandlerResult> + Send;
}

/// A [`Handler`] as the hub holds it: a trait object whose call is one
/// boxed future that owns the handler (a reference) and the handler's own
/// future, inline. (`async_trait` would box the handler's future, and the
/// call that keeps the handler alive would need a second box around it.)
pub(crate) trait DynHandler: Send + Sync + 'static {
    fn call(
        self: Arc<Self>,
        ctx: HandlerContext,
        action: Action,
    ) -> BoxFuture<'static, HandlerResult>;
}

impl<H: Handler> DynHandler for H {
    fn call(
        self: Arc<Self>,
        ctx: HandlerContext,
        action: Action,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move { self.handle(ctx, action).await })
    }
}

/// Answers every action with the action itself, its bytes as they arrived:
/// `pubsub serve --handler echo`, for trying a client out and for the rpc
/// benchmark's "trivial handler".
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoHandler;

impl Handler for EchoHandler {
    async fn handle(&self, _ctx: HandlerContext, action: Action) -> HandlerResult {
        Ok(Reply::from(action))
    }
}

struct HandlerFn<F>(F);

impl<F, Fut, T> Handler for HandlerFn<F>
where
    F: Fn(HandlerContext, Action) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, HandlerError>> + Send + 'static,
    T: Serialize + Send + 'static,
{
    async fn handle(&self, ctx: HandlerContext, action: Action) -> HandlerResult {
        let value = (self.0)(ctx, action).await?;
        reply(&value)
    }
}

/// Wraps an async closure as a [`Handler`]; it may return any serialisable value.
///
/// ```no_run
/// # use pubsub_server::{handler_fn, HandlerError};
/// let handler = handler_fn(|ctx, action| async move {
///     match action.action_type() {
///         "WHO_AM_I" => Ok(serde_json::json!({ "user": ctx.user() })),
///         other => Err(HandlerError::new(format!("unknown action {other}"))),
///     }
/// });
/// ```
pub fn handler_fn<F, Fut, T>(f: F) -> impl Handler
where
    F: Fn(HandlerContext, Action) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, HandlerError>> + Send + 'static,
    T: Serialize + Send + 'static,
{
    HandlerFn(f)
}
