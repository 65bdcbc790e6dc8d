//! A messaging request ready to send — `broadcast`, `sendToUser`,
//! `sendToServer` or `publish` — with its message id fixed, so sending it
//! again is a retry the server recognises and never processes twice.
//! Once its ack has arrived the client tells the server it has the answer
//! (`received`), and the server forgets it: sending it after a success is a
//! new request.

use std::sync::Arc;

use pubsub_protocol::{MessageId, OutgoingFrame, RequestKind, Topic, UserId};
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub kind: RequestKind,
    pub id: MessageId,
    /// Recipients of `sendToUser`.
    pub to: Option<Vec<UserId>>,
    /// Topic of `publish`.
    pub topic: Option<Topic>,
    /// `publish` only: deliver to the publishing client too.
    pub echo: Option<bool>,
    pub(crate) action: Arc<RawValue>,
}

impl PreparedRequest {
    pub(crate) fn encode(&self) -> String {
        OutgoingFrame {
            kind: self.kind.as_str(),
            id: Some(&self.id),
            to: self.to.as_deref(),
            topic: self.topic.as_ref(),
            echo: self.echo,
            action: Some(&self.action),
            ..OutgoingFrame::default()
        }
        .encode()
    }

    pub fn action_value(&self) -> Value {
        serde_json::from_str(self.action.get()).unwrap_or(Value::Null)
    }
}
