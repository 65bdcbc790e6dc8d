//! [`ServerHandle`]: the embedding application's way to send, read and stop
//! — from handlers (through `HandlerContext`), HTTP routes or anywhere else.

use std::sync::Arc;

use pubsub_protocol::server_frame::write_topic_message;
use pubsub_protocol::{Action, ActionError, ClientId, Presence, Topic, UserId, Via, close};
use serde::Serialize;

use crate::connection::{ClientInfo, Frame};
use crate::engine::{EngineError, UserDelivery, UserInfo};
use crate::hub::Hub;
use crate::stats::StatsSnapshot;

/// Why a server-side send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid action: {0}")]
    InvalidAction(#[from] ActionError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A cheap, clonable handle to a running (or built) server.
#[derive(Clone)]
pub struct ServerHandle {
    hub: Arc<Hub>,
}

impl ServerHandle {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// Encodes a server-originated action once, for any number of recipients.
    fn frame<A: Serialize + ?Sized>(&self, action: &A) -> Result<Frame, SendError> {
        self.encode(action, Via::Server, None)
    }

    fn encode<A: Serialize + ?Sized>(
        &self,
        action: &A,
        via: Via,
        topic: Option<&Topic>,
    ) -> Result<Frame, SendError> {
        let raw = serde_json::value::to_raw_value(action).map_err(|_| ActionError::NotAnObject)?;
        let action = Action::from_raw(raw, false)?;
        let id = self.hub.next_server_message_id();
        Ok(Frame::text_with(|out| {
            write_topic_message(out, &id, via, None, topic, &action.as_ref());
        }))
    }

    /// Publishes `action` to every member of `topic` (it arrives with
    /// `via: "topic"` and no sender). Returns how many clients it was queued for.
    pub async fn publish<A: Serialize + ?Sized>(
        &self,
        topic: &Topic,
        action: &A,
    ) -> Result<usize, SendError> {
        let frame = self.encode(action, Via::Topic, Some(topic))?;
        let delivered = self.hub.engine.publish(topic, None, &frame).await?;
        self.hub.count_topic_publish(delivered);
        Ok(delivered)
    }

    /// How many clients are joined to `topic`.
    pub async fn topic_members(&self, topic: &Topic) -> Result<usize, EngineError> {
        self.hub.engine.topic_members(topic).await
    }

    /// The presence of each user (unknown users are OFFLINE, version 0).
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>, EngineError> {
        self.hub.engine.presence(users).await
    }

    /// Sends `action` to one client. False if it is not connected.
    pub async fn send_to_client<A: Serialize + ?Sized>(
        &self,
        client: &ClientId,
        action: &A,
    ) -> Result<bool, SendError> {
        let frame = self.frame(action)?;
        let sent = self.hub.engine.send_to_client(client, &frame).await?;
        self.hub.count_deliveries(usize::from(sent));
        Ok(sent)
    }

    /// Sends `action` to every client of `user`.
    pub async fn send_to_user<A: Serialize + ?Sized>(
        &self,
        user: &UserId,
        action: &A,
    ) -> Result<UserDelivery, SendError> {
        self.broadcast_to_user(user, None, action).await
    }

    /// Sends `action` to every client of `user` except `except`.
    pub async fn broadcast_to_user<A: Serialize + ?Sized>(
        &self,
        user: &UserId,
        except: Option<&ClientId>,
        action: &A,
    ) -> Result<UserDelivery, SendError> {
        let frame = self.frame(action)?;
        let delivery = self.hub.engine.send_to_user(user, except, &frame).await?;
        self.hub.count_deliveries(delivery.clients);
        Ok(delivery)
    }

    /// Sends `action` to every client of each user; results in the same order.
    pub async fn send_to_users<A: Serialize + ?Sized>(
        &self,
        users: &[UserId],
        action: &A,
    ) -> Result<Vec<UserDelivery>, SendError> {
        let frame = self.frame(action)?;
        let deliveries = self.hub.engine.send_to_users(users, &frame).await?;
        self.hub
            .count_deliveries(deliveries.iter().map(|d| d.clients).sum());
        Ok(deliveries)
    }

    /// Sends `action` to every connected client (announcements).
    pub async fn send_to_all<A: Serialize + ?Sized>(&self, action: &A) -> Result<usize, SendError> {
        let frame = self.frame(action)?;
        let n = self.hub.engine.send_to_all(&frame).await?;
        self.hub.count_deliveries(n);
        Ok(n)
    }

    /// Closes a client's connection (close code 1000: the client will not
    /// reconnect by itself). False if it is not connected.
    pub async fn disconnect_client(
        &self,
        client: &ClientId,
        reason: &str,
    ) -> Result<bool, EngineError> {
        self.hub
            .engine
            .disconnect_client(client, close::NORMAL, reason.to_owned())
            .await
    }

    pub async fn user(&self, user: &UserId) -> Result<Option<UserInfo>, EngineError> {
        self.hub.engine.user(user).await
    }

    /// Every user with at least one connected client.
    pub async fn users(&self) -> Result<Vec<UserInfo>, EngineError> {
        self.hub.engine.users().await
    }

    pub async fn client(&self, client: &ClientId) -> Result<Option<ClientInfo>, EngineError> {
        self.hub.engine.client(client).await
    }

    /// Counters and sizes, as served by `GET /stats`.
    pub fn stats(&self) -> StatsSnapshot {
        self.hub.stats_snapshot()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.hub.node
    }

    /// Starts a graceful shutdown (the original's `disconnect`); see
    /// `RunningServer::shutdown` to also wait for it.
    pub fn shutdown(&self) {
        self.hub.begin_shutdown();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.hub.is_shutting_down()
    }
}
