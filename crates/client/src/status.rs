//! The status `status()` reports, with the original package's names.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Connecting, or waiting to reconnect after a drop.
    Connecting,
    /// Connected and welcomed by the server.
    Online,
    /// Not connected and not trying (stopped by a "stop" close code or by `close`).
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connecting => "CONNECTING",
            Status::Online => "ONLINE",
            Status::Offline => "OFFLINE",
        }
    }

    /// True when the client can send (the original's `isConnected`).
    pub fn is_connected(self) -> bool {
        matches!(self, Status::Online)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
