//! Counters behind `stats()` and `GET /stats`.
//!
//! Plain relaxed atomics: they are read rarely and each is bumped once per
//! frame or per fan-out (never once per recipient).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pubsub_protocol::ErrorCode;
use serde::Serialize;

use crate::engine::Counts;

macro_rules! counter_group {
    ($name:ident, $snap:ident { $($field:ident => $json:literal),* $(,)? }) => {
        #[derive(Default)]
        pub(crate) struct $name {
            $(pub(crate) $field: AtomicU64,)*
        }

        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
        pub struct $snap {
            $(#[serde(rename = $json)] pub $field: u64,)*
        }

        impl $name {
            fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counter_group!(MessagesIn, MessagesInSnapshot {
    broadcast => "broadcast",
    send_to_user => "sendToUser",
    send_to_server => "sendToServer",
    publish => "publish",
    join => "join",
    leave => "leave",
    activity => "activity",
    presence => "presence",
    watch => "watch",
    unwatch => "unwatch",
    ping => "ping",
    pong => "pong",
    invalid => "invalid",
});

counter_group!(MessagesOut, MessagesOutSnapshot {
    message => "message",
    ack => "ack",
    error => "error",
    event => "event",
    ping => "ping",
    pong => "pong",
    welcome => "welcome",
});

counter_group!(Connections, ConnectionsSnapshot {
    opened => "opened",
    closed => "closed",
    rejected => "rejected",
    slow_consumer => "slowConsumer",
    heartbeat_timeout => "heartbeatTimeout",
    message_too_big => "messageTooBig",
    too_many_errors => "tooManyErrors",
});

counter_group!(TopicTraffic, TopicTrafficSnapshot {
    publishes => "publishes",
    deliveries => "deliveries",
});

pub(crate) struct Stats {
    started: Instant,
    started_at_ms: u64,
    pub(crate) messages_in: MessagesIn,
    pub(crate) messages_out: MessagesOut,
    pub(crate) connections: Connections,
    pub(crate) topics: TopicTraffic,
    pub(crate) retries_replayed: AtomicU64,
    errors: Vec<AtomicU64>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            started_at_ms: now_ms(),
            messages_in: MessagesIn::default(),
            messages_out: MessagesOut::default(),
            connections: Connections::default(),
            topics: TopicTraffic::default(),
            retries_replayed: AtomicU64::new(0),
            errors: ErrorCode::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
        self.messages_out.error.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        node: &str,
        engine: &str,
        auth: &str,
        counts: Counts,
    ) -> StatsSnapshot {
        let mut messages_out = self.messages_out.snapshot();
        messages_out.event = counts.presence_events;
        let traffic = self.topics.snapshot();
        StatsSnapshot {
            node: node.to_owned(),
            engine: engine.to_owned(),
            auth: auth.to_owned(),
            started_at: self.started_at_ms,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            users: counts.users,
            clients: counts.clients,
            messages_in: self.messages_in.snapshot(),
            messages_out,
            errors: ErrorCode::ALL
                .iter()
                .zip(&self.errors)
                .map(|(code, n)| (code.name().to_owned(), n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            connections: self.connections.snapshot(),
            retries_replayed: self.retries_replayed.load(Ordering::Relaxed),
            retry_window_bytes: 0,
            presence: PresenceSnapshot {
                users_by_status: counts.users_by_status,
                clients_per_user: counts.clients_per_user,
                events_sent: counts.presence_events,
            },
            topics: TopicsSnapshot {
                topics: counts.topics,
                members: counts.topic_members,
                publishes: traffic.publishes,
                deliveries: traffic.deliveries,
            },
        }
    }
}

/// What `stats()` returns and `GET /stats` serves.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    pub node: String,
    pub engine: String,
    pub auth: String,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    pub uptime_seconds: f64,
    /// Users with at least one connected client.
    pub users: usize,
    /// Connected clients.
    pub clients: usize,
    /// Frames received, by kind.
    pub messages_in: MessagesInSnapshot,
    /// Frames queued for clients, by kind (`message` counts each recipient).
    pub messages_out: MessagesOutSnapshot,
    /// Error frames sent, by error name (only those that occurred).
    pub errors: BTreeMap<String, u64>,
    pub connections: ConnectionsSnapshot,
    /// Retries answered from the retry window instead of being processed again.
    pub retries_replayed: u64,
    /// Bytes of outcomes the retry window holds for all users, as its
    /// budgets count them; small when clients report their acks
    /// (`received`).
    pub retry_window_bytes: usize,
    pub presence: PresenceSnapshot,
    pub topics: TopicsSnapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceSnapshot {
    /// Users by status; OFFLINE counts users still remembered.
    pub users_by_status: BTreeMap<String, usize>,
    /// How many users have 1, 2, 3, 4-5, 6-10 or 11+ clients.
    pub clients_per_user: BTreeMap<String, usize>,
    /// Presence events queued, one per recipient.
    pub events_sent: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicsSnapshot {
    /// Topics with at least one member.
    pub topics: usize,
    /// Memberships across all topics.
    pub members: usize,
    pub publishes: u64,
    /// Messages queued by publishes, one per recipient.
    pub deliveries: u64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
