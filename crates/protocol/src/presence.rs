//! The presence model (the original package's user status, plus what
//! multi-tab presence needs) and the system event types.

use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, UserId};

/// A user's status, computed from all of their clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserStatus {
    /// At least one client is active.
    Online,
    /// Clients are connected but none is active.
    Away,
    /// No client is connected (after the grace period).
    Offline,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Online => "ONLINE",
            UserStatus::Away => "AWAY",
            UserStatus::Offline => "OFFLINE",
        }
    }
}

/// A user's presence. `version` increases with every change of any field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub user: UserId,
    pub status: UserStatus,
    pub previous_status: Option<UserStatus>,
    pub online_since_ts: Option<u64>,
    pub last_online_ts: Option<u64>,
    pub away_since_ts: Option<u64>,
    pub active_client: Option<ClientId>,
    pub clients: usize,
    pub version: u64,
}

impl Presence {
    /// The presence of a user the server has never seen.
    pub fn unknown(user: UserId) -> Self {
        Self {
            user,
            status: UserStatus::Offline,
            previous_status: None,
            online_since_ts: None,
            last_online_ts: None,
            away_since_ts: None,
            active_client: None,
            clients: 0,
            version: 0,
        }
    }
}

/// Types of the system events the server sends in `event` frames.
pub mod events {
    /// The user's status changed; fields: the user's presence.
    pub const STATUS_CHANGE: &str = "@pubsub/STATUS_CHANGE";
    /// Another client of the user connected; fields: user, client, clients, version.
    pub const CLIENT_CONNECTED: &str = "@pubsub/CLIENT_CONNECTED";
    /// Another client of the user disconnected; fields: user, client, clients, version.
    pub const CLIENT_DISCONNECTED: &str = "@pubsub/CLIENT_DISCONNECTED";
    /// The user's active client changed; fields: user, activeClient, previousActiveClient, version.
    pub const ACTIVE_CLIENT_CHANGE: &str = "@pubsub/ACTIVE_CLIENT_CHANGE";
    /// A watched user's status changed; fields: that user's presence.
    pub const PRESENCE_CHANGE: &str = "@pubsub/PRESENCE_CHANGE";
}
