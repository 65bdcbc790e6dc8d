//! Server settings: limits and timeouts. Every field has a default, so an
//! empty TOML table is a valid configuration. Durations are milliseconds.

use std::time::Duration;

use pubsub_protocol::limits as defaults;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Path of the WebSocket endpoint.
    pub path: String,
    /// Largest inbound message after reassembly; larger closes with 1009.
    pub max_message_bytes: usize,
    /// Most distinct users in one `sendToUser`.
    pub max_recipients: usize,
    /// Most distinct users in one `presence`, `watch` or `unwatch`.
    pub max_users_per_request: usize,
    /// Most users one connection may watch.
    pub max_watched_users: usize,
    /// Most topics one connection may join.
    pub max_topics: usize,
    /// Time a user keeps their status after their last client disconnects,
    /// so a reload does not flap OFFLINE/ONLINE.
    pub presence_grace_ms: u64,
    /// How long an OFFLINE user nobody watches is remembered (for `lastOnlineTs`).
    pub presence_retention_ms: u64,
    /// Bytes queued for one connection before it is closed as a slow consumer (4507).
    pub max_outbound_bytes: usize,
    /// Requests per second per connection; 0 disables the limit.
    pub max_requests_per_sec: u32,
    /// Invalid frames tolerated per minute before closing with 4429.
    pub max_invalid_frames_per_min: u32,
    /// Concurrent `sendToServer` calls per connection; further frames wait unread.
    pub max_in_flight_per_connection: usize,
    /// Open WebSocket connections per node; more are closed with 1013.
    pub max_connections: usize,
    /// Pending TCP connections the kernel queues before the server accepts
    /// them (capped by the kernel's `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Interval of the server's `ping`.
    pub heartbeat_interval_ms: u64,
    /// Extra silence tolerated after `heartbeat_interval_ms` before closing with 4504.
    pub heartbeat_timeout_ms: u64,
    /// Time allowed from TCP accept to a completed, authenticated upgrade.
    pub handshake_timeout_ms: u64,
    /// Time the handler gets per `sendToServer` before `handler_timeout`.
    pub handler_timeout_ms: u64,
    /// Time one batch of writes may block before the client counts as a slow consumer.
    pub write_timeout_ms: u64,
    /// How long a request's outcome is remembered for retries with the same id.
    pub retry_window_ms: u64,
    /// Memory for remembered outcomes per user; the oldest are forgotten first.
    /// Each outcome counts its id and frame bytes plus 64; with the ring's
    /// spare capacity and the id filter, a full window holds about this much.
    /// Each request of a user touches its window, so where many users each
    /// send hundreds of requests a second a smaller budget also makes every
    /// request cheaper (docs/benchmarks.md, "rpc"), at the price of a
    /// shorter window for those users.
    pub retry_window_max_bytes_per_user: usize,
    /// Memory for remembered outcomes on this node, all users together,
    /// counted as for the per-user budget.
    pub retry_window_max_bytes: usize,
    /// Longest a graceful shutdown waits for in-flight work before it stops anyway.
    pub shutdown_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            path: pubsub_protocol::DEFAULT_PATH.to_owned(),
            max_message_bytes: defaults::DEFAULT_MAX_MESSAGE_BYTES,
            max_recipients: defaults::DEFAULT_MAX_RECIPIENTS,
            max_users_per_request: defaults::DEFAULT_MAX_USERS_PER_REQUEST,
            max_watched_users: defaults::DEFAULT_MAX_WATCHED_USERS,
            max_topics: defaults::DEFAULT_MAX_TOPICS,
            presence_grace_ms: defaults::DEFAULT_PRESENCE_GRACE_MS,
            presence_retention_ms: 3_600_000,
            max_outbound_bytes: 1024 * 1024,
            max_requests_per_sec: defaults::DEFAULT_MAX_REQUESTS_PER_SEC,
            max_invalid_frames_per_min: 20,
            max_in_flight_per_connection: 64,
            max_connections: 100_000,
            listen_backlog: 4096,
            heartbeat_interval_ms: defaults::DEFAULT_HEARTBEAT_MS,
            heartbeat_timeout_ms: defaults::DEFAULT_HEARTBEAT_TIMEOUT_MS,
            handshake_timeout_ms: 10_000,
            handler_timeout_ms: 30_000,
            write_timeout_ms: 10_000,
            retry_window_ms: 120_000,
            retry_window_max_bytes_per_user: 64 * 1024,
            retry_window_max_bytes: 64 * 1024 * 1024,
            shutdown_timeout_ms: 15_000,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server setting `{field}`: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: &'static str,
}

impl ServerConfig {
    /// Checks values that would make the server misbehave rather than just be slow.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, reason| Err(ConfigError { field, reason });
        if !self.path.starts_with('/') {
            return fail("path", "must start with '/'");
        }
        if self.max_message_bytes < 256 {
            return fail("max_message_bytes", "must be at least 256");
        }
        if self.max_recipients == 0 {
            return fail("max_recipients", "must be at least 1");
        }
        if self.max_users_per_request == 0 {
            return fail("max_users_per_request", "must be at least 1");
        }
        if self.max_outbound_bytes < self.max_message_bytes {
            return fail("max_outbound_bytes", "must be at least max_message_bytes");
        }
        if self.max_in_flight_per_connection == 0 {
            return fail("max_in_flight_per_connection", "must be at least 1");
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_timeout_ms == 0 {
            return fail(
                "heartbeat_interval_ms",
                "heartbeat interval and timeout must be positive",
            );
        }
        for (field, value) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("handler_timeout_ms", self.handler_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
        ] {
            if value == 0 {
                return fail(field, "must be positive");
            }
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn handler_timeout(&self) -> Duration {
        Duration::from_millis(self.handler_timeout_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub fn retry_window(&self) -> Duration {
        Duration::from_millis(self.retry_window_ms)
    }
    pub fn engine_settings(&self) -> crate::engine::EngineSettings {
        crate::engine::EngineSettings {
            presence_grace: Duration::from_millis(self.presence_grace_ms),
            presence_retention: Duration::from_millis(self.presence_retention_ms),
        }
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// The limits announced to clients in `welcome`.
    pub fn wire_limits(&self) -> pubsub_protocol::Limits {
        pubsub_protocol::Limits {
            max_message_bytes: self.max_message_bytes,
            max_recipients: self.max_recipients,
            max_id_bytes: pubsub_protocol::ids::MAX_ID_BYTES,
            max_requests_per_sec: self.max_requests_per_sec,
            max_users_per_request: self.max_users_per_request,
        }
    }
}
