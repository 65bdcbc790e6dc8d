//! The hub: state shared by every connection of a node, and the processing of
//! client requests (`broadcast`, `sendToUser`, `sendToServer`) into deliveries
//! and answers. It owns no sockets; connections hand it decoded frames.

mod handler_call;
mod hooks;
mod messaging;
mod presence;
mod requests;
mod retry_window;
mod topics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use pubsub_protocol::server_frame::{ErrorParts, write_error};
use pubsub_protocol::{ClientId, DecodeLimits, ErrorCode, MessageId, Sender};
use tokio::time::Instant;
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, VerifyClient};
use crate::config::ServerConfig;
use crate::connection::Frame;
use crate::engine::Engine;
use crate::handler::DynHandler;
use crate::presence::{PresenceHooks, PresencePolicy};
use crate::stats::{Stats, StatsSnapshot};
use crate::topics::TopicPolicy;

pub(crate) use handler_call::HandlerCall;
pub(crate) use hooks::{HookEvent, HookQueue, run_hooks};
pub(crate) use requests::Answer;
pub(crate) use retry_window::RetryWindow;
use retry_window::UserSlot;

pub(crate) struct Hub {
    pub(crate) config: ServerConfig,
    pub(crate) node: Arc<str>,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) handler: Option<Arc<dyn DynHandler>>,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) verify: Option<Arc<dyn VerifyClient>>,
    pub(crate) presence_policy: Arc<dyn PresencePolicy>,
    pub(crate) topic_policy: Arc<dyn TopicPolicy>,
    pub(crate) hooks: Option<Arc<dyn PresenceHooks>>,
    pub(crate) hook_queue: Option<HookQueue>,
    pub(crate) retry_window: RetryWindow,
    pub(crate) stats: Stats,
    /// Cancelled when graceful shutdown starts, only by
    /// [`Hub::begin_shutdown`], which sets `shutting_down` first.
    shutdown: CancellationToken,
    /// Set just before `shutdown` is cancelled: what a connection's loop
    /// reads on every turn. The token's own `is_cancelled` takes a lock.
    shutting_down: AtomicBool,
    /// Every connection task (HTTP and WebSocket), so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    pub(crate) decode_limits: DecodeLimits,
    pub(crate) open_connections: AtomicUsize,
    /// Random per process start, so a restarted node with a fixed node id
    /// never hands out a client id a client saw before the restart.
    boot: String,
    next_client: AtomicU64,
    next_message: AtomicU64,
}

/// Who makes the requests of one connection, and what the hub keeps for
/// that connection from one request to the next.
pub(crate) struct Caller {
    pub(crate) sender: Sender,
    retry_slot: UserSlot,
    /// When the connection last read a frame. One clock read per read
    /// serves both the session's silence check and the time of the
    /// requests that read brought (their age in the retry window), instead
    /// of one more per request.
    pub(crate) received_at: Instant,
}

impl Caller {
    pub(crate) fn new(sender: Sender) -> Self {
        Self {
            sender,
            retry_slot: UserSlot::default(),
            received_at: Instant::now(),
        }
    }
}

pub(crate) struct HubParts {
    pub(crate) config: ServerConfig,
    pub(crate) node: Arc<str>,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) handler: Option<Arc<dyn DynHandler>>,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) verify: Option<Arc<dyn VerifyClient>>,
    pub(crate) presence_policy: Arc<dyn PresencePolicy>,
    pub(crate) topic_policy: Arc<dyn TopicPolicy>,
    pub(crate) hooks: Option<Arc<dyn PresenceHooks>>,
}

impl Hub {
    pub(crate) fn new(parts: HubParts) -> Self {
        let retry_window = RetryWindow::new(
            parts.config.retry_window(),
            parts.config.retry_window_max_bytes_per_user,
            parts.config.retry_window_max_bytes,
        );
        Self {
            decode_limits: DecodeLimits {
                max_recipients: parts.config.max_recipients,
                max_users_per_request: parts.config.max_users_per_request,
            },
            config: parts.config,
            node: parts.node,
            engine: parts.engine,
            handler: parts.handler,
            auth: parts.auth,
            verify: parts.verify,
            presence_policy: parts.presence_policy,
            topic_policy: parts.topic_policy,
            hook_queue: parts.hooks.as_ref().map(|_| HookQueue::new()),
            hooks: parts.hooks,
            retry_window,
            stats: Stats::new(),
            shutdown: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            open_connections: AtomicUsize::new(0),
            boot: (0..4)
                .map(|_| char::from_digit(fastrand::u32(..36), 36).unwrap_or('0'))
                .collect(),
            next_client: AtomicU64::new(1),
            next_message: AtomicU64::new(1),
        }
    }

    /// Starts graceful shutdown: connections drain, listeners stop.
    pub(crate) fn begin_shutdown(&self) {
        // Before the cancel, whose wake-ups send tasks to read the flag.
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.cancel();
    }

    /// Resolves once graceful shutdown has started.
    pub(crate) fn shutdown_started(&self) -> WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// The same, as a future that owns its share of the token.
    pub(crate) fn shutdown_started_owned(&self) -> WaitForCancellationFutureOwned {
        self.shutdown.clone().cancelled_owned()
    }

    /// Whether graceful shutdown has started; one atomic load.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// A client id unique across the cluster and across restarts: node id,
    /// boot tag, local sequence.
    pub(crate) fn next_client_id(&self) -> ClientId {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        ClientId::new(format!("{}-{}{n}", self.node, self.boot))
            .unwrap_or_else(|_| unreachable_id())
    }

    /// Id for a message the server itself sends.
    pub(crate) fn next_server_message_id(&self) -> MessageId {
        let n = self.next_message.fetch_add(1, Ordering::Relaxed);
        MessageId::new(format!("srv-{}-{}{n}", self.node, self.boot))
            .unwrap_or_else(|_| unreachable_id())
    }

    /// Builds an `error` frame and counts it.
    pub(crate) fn error_frame(
        &self,
        id: Option<&MessageId>,
        code: ErrorCode,
        message: &str,
    ) -> Frame {
        self.stats.error(code);
        Frame::text_with(|out| write_error(out, ErrorParts::new(id, code, message)))
    }

    pub(crate) fn count_deliveries(&self, n: usize) {
        self.stats
            .messages_out
            .message
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn stats_snapshot(&self) -> StatsSnapshot {
        let mut snapshot = self.stats.snapshot(
            &self.node,
            self.engine.name(),
            self.auth.mode(),
            self.engine.counts(),
        );
        snapshot.retry_window_bytes = self.retry_window.bytes();
        snapshot
    }
}

/// Node ids are validated at build time to be short and printable, so ids
/// derived from them are always valid; this is never reached.
fn unreachable_id<T>() -> T {
    panic!("node id produced an invalid identifier")
}
