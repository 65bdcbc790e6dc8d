//! The status `status()` reports, with the original package's names: the
//! user's presence (ONLINE / AWAY) while connected, CONNECTING while
//! (re)connecting, OFFLINE once stopped.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Connecting, or waiting to reconnect after a drop.
    Connecting,
    /// Connected, and the user is active in at least one client.
    Online,
    /// Connected, but none of the user's clients is active.
    Away,
    /// Not connected and not trying (stopped by a "stop" close code or by `close`).
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connecting => "CONNECTING",
            Status::Online => "ONLINE",
            Status::Away => "AWAY",
            Status::Offline => "OFFLINE",
        }
    }

    /// True when the client can send (the original's `isConnected`: ONLINE or AWAY).
    pub fn is_connected(self) -> bool {
        matches!(self, Status::Online | Status::Away)
    }

    /// The status to report while connected, from the user's presence.
    pub(crate) fn of_connected(presence: Option<&pubsub_protocol::Presence>) -> Self {
        match presence.map(|p| p.status) {
            Some(pubsub_protocol::UserStatus::Away) => Status::Away,
            _ => Status::Online,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
