//! Errors: a send that failed (with what is needed to retry it) and a
//! connection that could not be established.

use pubsub_protocol::ErrorCode;
use serde_json::Value;

use crate::request::PreparedRequest;

/// A send that was rejected: by the server (an `error` frame) or locally
/// (disconnected, timed out, not connected). Retry with [`crate::Client::retry`],
/// which resends the same message id so the server does not process it twice.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{name} ({code}): {message}")]
pub struct SendError {
    pub code: u16,
    pub name: String,
    pub message: String,
    pub retryable: bool,
    /// Details from the server's handler, if it gave any.
    pub data: Option<Value>,
    /// The messaging request, for [`crate::Client::retry`]; `None` for
    /// requests that are idempotent anyway (watch, join, activity, …).
    pub request: Option<Box<PreparedRequest>>,
}

impl SendError {
    pub(crate) fn local(
        code: ErrorCode,
        message: impl Into<String>,
        request: Option<PreparedRequest>,
    ) -> Self {
        Self {
            code: code.code(),
            name: code.name().to_owned(),
            message: message.into(),
            retryable: code.retryable(),
            data: None,
            request: request.map(Box::new),
        }
    }

    /// The code as a known [`ErrorCode`], if this client version knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }

    /// The action that was sent (`null` for requests without one).
    pub fn action(&self) -> Value {
        self.request
            .as_ref()
            .map_or(Value::Null, |r| r.action_value())
    }
}

/// Why `Client::connect` could not establish a first connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    /// The TLS settings could not be used (an invalid root certificate).
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("refused by the server: close code {code} ({reason})")]
    Refused { code: u16, reason: String },
    #[error("could not connect: {0}")]
    Transport(String),
    #[error("no welcome from the server within the connect timeout")]
    Timeout,
    #[error("the client was closed")]
    Closed,
}
