//! Engines: where clients are registered and how frames reach them.
//!
//! The hub never touches routing tables itself; it asks an [`Engine`]. The
//! in-memory engine serves a single node. A cluster engine (Redis) implements
//! the same trait: it keeps local connections the same way and adds remote
//! delivery and cluster-wide read views, which is why every method is async
//! and fallible even though the memory engine never waits or fails.

mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use pubsub_protocol::{ClientId, UserId};
use serde::Serialize;

use crate::connection::{ClientHandle, ClientInfo, Frame};

pub use memory::MemoryEngine;

/// The outcome of a delivery to one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UserDelivery {
    /// The user had at least one connected client.
    pub online: bool,
    /// Clients the frame was queued for.
    pub clients: usize,
}

/// A user and their connected clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub id: UserId,
    pub clients: Vec<ClientInfo>,
}

/// Sizes, for `/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub users: usize,
    pub clients: usize,
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

    /// Registers a newly authenticated local client.
    async fn attach(&self, client: Arc<ClientHandle>) -> Result<(), EngineError>;

    /// Removes a local client. Must succeed (best effort) even when the
    /// backing service is down: the connection is gone either way.
    async fn detach(&self, client: &ClientHandle);

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

    async fn user(&self, user: &UserId) -> Result<Option<UserInfo>, EngineError>;

    async fn users(&self) -> Result<Vec<UserInfo>, EngineError>;

    async fn client(&self, client: &ClientId) -> Result<Option<ClientInfo>, EngineError>;

    /// Current sizes; cheap enough to call for every `/stats` request.
    fn counts(&self) -> Counts;
}
