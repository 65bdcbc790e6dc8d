//! Topics from the client's side: join, leave, publish. Joined topics are
//! re-joined after a reconnect.

use pubsub_protocol::{ErrorCode, OutgoingFrame, RequestKind, Topic};
use serde::Serialize;

use crate::client::Client;
use crate::error::SendError;

fn topic(name: &str) -> Result<Topic, SendError> {
    Topic::new(name).map_err(|e| SendError::local(ErrorCode::InvalidTopic, e.to_string(), None))
}

impl Client {
    /// Joins a topic; returns its member count. Re-joined after reconnects.
    pub async fn join(&self, name: &str) -> Result<usize, SendError> {
        let topic = topic(name)?;
        self.shared().topics.lock().insert(topic.clone());
        match self.membership_request("join", &topic).await {
            Ok(result) => Ok(result["members"].as_u64().unwrap_or(0) as usize),
            Err(e) => {
                if !e.retryable {
                    self.shared().topics.lock().remove(&topic);
                }
                Err(e)
            }
        }
    }

    /// Leaves a topic; false if this connection was not in it.
    pub async fn leave(&self, name: &str) -> Result<bool, SendError> {
        let topic = topic(name)?;
        self.shared().topics.lock().remove(&topic);
        let result = self.membership_request("leave", &topic).await?;
        Ok(result["left"].as_bool().unwrap_or(false))
    }

    /// Topics this client is in (and will re-join after a reconnect).
    pub fn topics(&self) -> Vec<String> {
        self.shared()
            .topics
            .lock()
            .iter()
            .map(|t| t.to_string())
            .collect()
    }

    /// Publishes `action` to every client joined to `topic` (this client too
    /// if `echo`); returns how many it was queued for. Retries with
    /// [`Client::retry`] are not delivered twice.
    pub async fn publish<A: Serialize + ?Sized>(
        &self,
        name: &str,
        action: &A,
        echo: bool,
    ) -> Result<usize, SendError> {
        let mut request = self.prepare(RequestKind::Publish, None, action)?;
        request.topic = Some(topic(name)?);
        request.echo = Some(echo);
        let result = self.request(request).await?;
        Ok(result["delivered"].as_u64().unwrap_or(0) as usize)
    }

    async fn membership_request(
        &self,
        kind: &'static str,
        topic: &Topic,
    ) -> Result<serde_json::Value, SendError> {
        self.control_request(OutgoingFrame {
            kind,
            topic: Some(topic),
            ..OutgoingFrame::default()
        })
        .await
    }
}
