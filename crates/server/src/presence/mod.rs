//! Presence: a user's status computed from all of their tabs.
//!
//! - [`state`](self): the per-user state machine (ONLINE / AWAY / OFFLINE,
//!   active client, grace period, versions), shared by every engine.
//! - events.rs: the system events a transition sends, encoded once.
//! - this file: the policy hook (who may see whom) and the application hooks
//!   (connect, disconnect, status change).
//!
//! The engine applies transitions under the user's lock and queues their
//! events before releasing it, so every recipient sees one user's events in
//! version order.

pub(crate) mod events;
pub(crate) mod state;

use async_trait::async_trait;
use pubsub_protocol::{Presence, UserId};

use crate::connection::ClientInfo;

/// Decides whose presence a client may query or watch.
#[async_trait]
pub trait PresencePolicy: Send + Sync + 'static {
    async fn can_see(&self, viewer: &ClientInfo, user: &UserId) -> bool;
}

/// Everyone may see everyone (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeeEveryone;

#[async_trait]
impl PresencePolicy for SeeEveryone {
    async fn can_see(&self, _viewer: &ClientInfo, _user: &UserId) -> bool {
        true
    }
}

/// Users may only see their own presence.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeeOnlySelf;

#[async_trait]
impl PresencePolicy for SeeOnlySelf {
    async fn can_see(&self, viewer: &ClientInfo, user: &UserId) -> bool {
        &viewer.user == user
    }
}

/// A user's status changed (both snapshots, before and after).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub old: Presence,
    pub new: Presence,
}

/// Application callbacks. They run on a task of their own, in order, and
/// never hold up a connection; implement only what you need.
#[async_trait]
pub trait PresenceHooks: Send + Sync + 'static {
    /// A client connected; `presence` is its user's presence afterwards.
    async fn on_connect(&self, _client: &ClientInfo, _presence: &Presence) {}
    /// A client disconnected; `presence` is its user's presence afterwards
    /// (the status changes only when the grace period ends).
    async fn on_disconnect(&self, _client: &ClientInfo, _presence: &Presence) {}
    /// A user's status changed, including to OFFLINE after the grace period.
    async fn on_status_change(&self, _change: &StatusChange) {}
}

/// Shared hooks (the application keeps a handle to read what they record).
#[async_trait]
impl<T: PresenceHooks + ?Sized> PresenceHooks for std::sync::Arc<T> {
    async fn on_connect(&self, client: &ClientInfo, presence: &Presence) {
        (**self).on_connect(client, presence).await;
    }
    async fn on_disconnect(&self, client: &ClientInfo, presence: &Presence) {
        (**self).on_disconnect(client, presence).await;
    }
    async fn on_status_change(&self, change: &StatusChange) {
        (**self).on_status_change(change).await;
    }
}
