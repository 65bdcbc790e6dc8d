//! Engines: where clients, presence and topic memberships live, and how
//! frames reach clients.
//!
//! The hub never touches routing tables itself; it asks an [`Engine`]. The
//! in-memory engine serves a single node. A cluster engine (Redis) implements
//! the same trait: it keeps local connections the same way and adds remote
//! delivery, cluster-wide presence and read views — which is why every method
//! is async and fallible even though the memory engine never waits or fails.

mod memory;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pubsub_protocol::{ClientId, Presence, Topic, UserId};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::connection::{ClientHandle, ClientInfo, Frame};
use crate::presence::StatusChange;

pub use memory::MemoryEngine;

/// The outcome of a delivery to one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UserDelivery {
    /// The user had at least one connected client.
    pub online: bool,
    /// Clients the frame was queued for.
    pub clients: usize,
}

/// A user: presence and connected clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub id: UserId,
    pub presence: Presence,
    pub clients: Vec<ClientInfo>,
}

/// Settings the server hands its engine when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// How long a user keeps their status after their last client leaves.
    pub presence_grace: Duration,
    /// How long an OFFLINE user nobody watches is remembered (for `lastOnlineTs`).
    pub presence_retention: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            presence_grace: Duration::from_millis(
                pubsub_protocol::limits::DEFAULT_PRESENCE_GRACE_MS,
            ),
            presence_retention: Duration::from_secs(3600),
        }
    }
}

/// Sizes and presence figures, for `/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Users with at least one connected client.
    pub users: usize,
    pub clients: usize,
    /// Users by status (OFFLINE counts users still remembered).
    pub users_by_status: BTreeMap<String, usize>,
    /// How many users have 1, 2, 3, 4–5, 6–10 or more clients.
    pub clients_per_user: BTreeMap<String, usize>,
    /// Presence events queued (one per recipient).
    pub presence_events: u64,
    /// Topics with at least one member.
    pub topics: usize,
    /// Topic memberships (a client in two topics counts twice).
    pub topic_members: usize,
}

/// The result of `watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchOutcome {
    /// Now watching; the current presence of each requested user.
    Watching(Vec<Presence>),
    /// The connection would watch more than `limit` users; nothing changed.
    TooMany { limit: usize },
}

/// The result of `join`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Joined (or already a member); the topic's member count.
    Joined { members: usize },
    /// The connection would be in more than `limit` topics; nothing changed.
    TooMany { limit: usize },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The engine's backing service cannot be reached; retrying may work.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs and `/stats`.
    fn name(&self) -> &'static str;

    /// Called once when the server starts serving.
    async fn start(&self, settings: EngineSettings) -> Result<(), EngineError>;

    /// Every status change of every user (for the application's hooks).
    fn status_changes(&self) -> broadcast::Receiver<StatusChange>;

    // ------------------------------------------------------------ clients

    /// Registers a newly authenticated local client, initially `active` or
    /// idle. Returns its user's presence including it.
    async fn attach(
        &self,
        client: Arc<ClientHandle>,
        active: bool,
    ) -> Result<Presence, EngineError>;

    /// Removes a local client, its watches and its topic memberships. Must
    /// succeed (best effort) even when a backing service is down: the
    /// connection is gone either way. Returns the user's presence afterwards.
    async fn detach(&self, client: &Arc<ClientHandle>) -> Presence;

    // ------------------------------------------------------------ routing

    /// Queues `frame` for one client. False if no such client is connected.
    async fn send_to_client(&self, client: &ClientId, frame: &Frame) -> Result<bool, EngineError>;

    /// Queues `frame` for every client of `user` except `except`.
    async fn send_to_user(
        &self,
        user: &UserId,
        except: Option<&ClientId>,
        frame: &Frame,
    ) -> Result<UserDelivery, EngineError>;

    /// Queues `frame` for every client of each user, in order.
    async fn send_to_users(
        &self,
        users: &[UserId],
        frame: &Frame,
    ) -> Result<Vec<UserDelivery>, EngineError> {
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            out.push(self.send_to_user(user, None, frame).await?);
        }
        Ok(out)
    }

    /// Queues `frame` for every connected client; returns how many.
    async fn send_to_all(&self, frame: &Frame) -> Result<usize, EngineError>;

    /// Closes one client's connection with a close code and reason.
    async fn disconnect_client(
        &self,
        client: &ClientId,
        code: u16,
        reason: String,
    ) -> Result<bool, EngineError>;

    // ------------------------------------------------------------ presence

    /// Marks a client active or idle; returns its user's presence afterwards.
    async fn set_activity(
        &self,
        client: &ClientHandle,
        active: bool,
    ) -> Result<Presence, EngineError>;

    /// The presence of each user (unknown users are OFFLINE, version 0).
    async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>, EngineError>;

    /// Starts sending `watcher` every status change of `users`. The snapshot
    /// and the subscription are taken atomically per user.
    async fn watch(
        &self,
        watcher: &Arc<ClientHandle>,
        users: &[UserId],
        limit: usize,
    ) -> Result<WatchOutcome, EngineError>;

    /// Stops watching `users`; returns how many users `watcher` still watches.
    async fn unwatch(&self, watcher: &ClientHandle, users: &[UserId])
    -> Result<usize, EngineError>;

    // ------------------------------------------------------------ topics

    async fn join(
        &self,
        client: &Arc<ClientHandle>,
        topic: &Topic,
        limit: usize,
    ) -> Result<JoinOutcome, EngineError>;

    /// False if the client was not a member.
    async fn leave(&self, client: &ClientHandle, topic: &Topic) -> Result<bool, EngineError>;

    /// Queues `frame` for every member of `topic` except `except`.
    async fn publish(
        &self,
        topic: &Topic,
        except: Option<&ClientId>,
        frame: &Frame,
    ) -> Result<usize, EngineError>;

    async fn topic_members(&self, topic: &Topic) -> Result<usize, EngineError>;

    // ------------------------------------------------------------ read views

    async fn user(&self, user: &UserId) -> Result<Option<UserInfo>, EngineError>;

    /// Users with connected clients (or inside their grace period).
    async fn users(&self) -> Result<Vec<UserInfo>, EngineError>;

    async fn client(&self, client: &ClientId) -> Result<Option<ClientInfo>, EngineError>;

    /// Current sizes for `/stats`.
    fn counts(&self) -> Counts;
}
