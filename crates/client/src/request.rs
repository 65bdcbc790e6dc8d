//! A request ready to send: its kind, id, recipients and action.

use std::sync::Arc;

use pubsub_protocol::client_frame::encode_request;
use pubsub_protocol::{MessageId, RequestKind, UserId};
use serde_json::Value;
use serde_json::value::RawValue;

/// A request with its message id fixed, so sending it again is a retry the
/// server recognises.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub kind: RequestKind,
    pub id: MessageId,
    pub to: Option<Vec<UserId>>,
    pub(crate) action: Arc<RawValue>,
}

impl PreparedRequest {
    pub(crate) fn encode(&self) -> String {
        encode_request(self.kind, &self.id, self.to.as_deref(), &self.action)
    }

    pub fn action_value(&self) -> Value {
        serde_json::from_str(self.action.get()).unwrap_or(Value::Null)
    }
}
