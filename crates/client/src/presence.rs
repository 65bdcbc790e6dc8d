//! Presence from the client's side: reporting this client's activity,
//! querying and watching other users, and the latest known presence of each
//! watched user (kept in version order, re-watched after reconnects).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use pubsub_protocol::{OutgoingFrame, Presence, UserId};
use serde_json::Value;

use crate::client::{Client, IntoRecipients, parse_users};
use crate::error::SendError;

/// Watched users and the newest presence seen for each.
#[derive(Debug, Default)]
pub(crate) struct PresenceBook {
    watched: HashMap<UserId, Option<Presence>>,
}

impl PresenceBook {
    pub(crate) fn users(&self) -> Vec<UserId> {
        self.watched.keys().cloned().collect()
    }

    /// Forgets what is held (but keeps watching): versions from an earlier
    /// connection are not comparable with the next one's.
    pub(crate) fn reset(&mut self) {
        for held in self.watched.values_mut() {
            *held = None;
        }
    }

    /// Keeps `presence` if the user is watched and it is newer than what we hold.
    pub(crate) fn offer(&mut self, presence: Presence) -> bool {
        match self.watched.get_mut(&presence.user) {
            Some(slot)
                if slot
                    .as_ref()
                    .is_none_or(|held| held.version < presence.version) =>
            {
                *slot = Some(presence);
                true
            }
            _ => false,
        }
    }

    /// Applies an ack of `watch` or `presence`: `{"users": {id: presence}}`.
    pub(crate) fn offer_all(&mut self, result: &Value) -> HashMap<String, Presence> {
        let users: HashMap<String, Presence> = result
            .get("users")
            .and_then(|u| serde_json::from_value(u.clone()).ok())
            .unwrap_or_default();
        for presence in users.values() {
            self.offer(presence.clone());
        }
        users
    }
}

impl Client {
    /// Reports whether this client is active (in use) or idle. The user is
    /// ONLINE while any of their clients is active, AWAY while none is.
    /// Remembered across reconnects. Returns the user's presence.
    pub async fn set_active(&self, active: bool) -> Result<Presence, SendError> {
        let shared = self.shared();
        shared.active.store(active, Ordering::Relaxed);
        let result = self
            .control_request(OutgoingFrame {
                kind: "activity",
                active: Some(active),
                ..OutgoingFrame::default()
            })
            .await?;
        parse_presence(result.get("presence"))
    }

    /// This user's presence as the server last reported it.
    pub fn user_presence(&self) -> Option<Presence> {
        self.shared().own_presence.lock().clone()
    }

    /// The current presence of each user (unknown users are OFFLINE).
    pub async fn presence(
        &self,
        users: impl IntoRecipients,
    ) -> Result<HashMap<String, Presence>, SendError> {
        let users = parse_users(users.into_recipients())?;
        let result = self.users_request("presence", &users).await?;
        Ok(self.shared().watched.lock().offer_all(&result))
    }

    /// Watches users: answers with their presence now, then every status
    /// change arrives as a `@pubsub/PRESENCE_CHANGE` event (subscribe to it)
    /// and updates [`Client::presence_of`]. Watches are re-established after
    /// a reconnect.
    pub async fn watch(
        &self,
        users: impl IntoRecipients,
    ) -> Result<HashMap<String, Presence>, SendError> {
        let users = parse_users(users.into_recipients())?;
        {
            let mut book = self.shared().watched.lock();
            for user in &users {
                book.watched.entry(user.clone()).or_insert(None);
            }
        }
        match self.users_request("watch", &users).await {
            Ok(result) => Ok(self.shared().watched.lock().offer_all(&result)),
            Err(e) => {
                if !e.retryable {
                    let mut book = self.shared().watched.lock();
                    for user in &users {
                        book.watched.remove(user);
                    }
                }
                Err(e)
            }
        }
    }

    /// Stops watching users; returns how many this connection still watches.
    pub async fn unwatch(&self, users: impl IntoRecipients) -> Result<usize, SendError> {
        let users = parse_users(users.into_recipients())?;
        {
            let mut book = self.shared().watched.lock();
            for user in &users {
                book.watched.remove(user);
            }
        }
        let result = self.users_request("unwatch", &users).await?;
        Ok(result["watching"].as_u64().unwrap_or(0) as usize)
    }

    /// The newest presence seen for a watched user.
    pub fn presence_of(&self, user: &str) -> Option<Presence> {
        let user = UserId::new(user).ok()?;
        self.shared()
            .watched
            .lock()
            .watched
            .get(&user)
            .cloned()
            .flatten()
    }

    async fn users_request(
        &self,
        kind: &'static str,
        users: &[UserId],
    ) -> Result<Value, SendError> {
        self.control_request(OutgoingFrame {
            kind,
            users: Some(users),
            ..OutgoingFrame::default()
        })
        .await
    }
}

fn parse_presence(value: Option<&Value>) -> Result<Presence, SendError> {
    value
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| {
            SendError::local(
                pubsub_protocol::ErrorCode::Internal,
                "the server's answer has no presence",
                None,
            )
        })
}
