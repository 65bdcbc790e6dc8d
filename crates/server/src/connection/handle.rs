//! A connected client as the rest of the server sees it: its identity and a
//! way to hand it frames. Engines keep these in their routing tables.

use std::net::SocketAddr;
use std::sync::Arc;

use pubsub_protocol::{ClientId, UserId};
use serde::Serialize;

use super::flusher::Home;
use super::outbox::{Frame, Kick, Outbox};

/// Facts about a connected client, as shown to handlers and in read views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    pub id: ClientId,
    pub user: UserId,
    pub remote_addr: SocketAddr,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    /// The node the client is connected to (one string shared by all of
    /// the node's clients).
    pub node: Arc<str>,
}

/// A local connection: its outbound queue plus its facts. The outbox
/// first (`repr(C)`), next to the reference counts, since every request
/// touches both; the facts, inline rather than shared, cost no allocation
/// of their own, and a handler's context holds the handle to reach them.
#[repr(C)]
pub struct ClientHandle {
    outbox: Outbox,
    /// The flusher of the thread the connection runs on (`None` if it was
    /// made outside a runtime).
    home: Option<Home>,
    info: ClientInfo,
}

impl ClientHandle {
    pub(crate) fn new(
        info: ClientInfo,
        socket: Arc<tokio::net::TcpStream>,
        max_outbound_bytes: usize,
    ) -> Self {
        Self {
            outbox: Outbox::new(socket, max_outbound_bytes),
            home: Home::current(),
            info,
        }
    }

    pub fn info(&self) -> &ClientInfo {
        &self.info
    }

    pub fn id(&self) -> &ClientId {
        &self.info.id
    }

    pub fn user(&self) -> &UserId {
        &self.info.user
    }

    /// Queues a frame for this client; the thread's flusher writes it,
    /// together with whatever else is pending for this client (see
    /// flusher.rs). False if it was not queued (the client is closing or
    /// just overflowed its queue).
    ///
    /// Every delivery to a client goes this way, whatever sent it: a
    /// connection's answers to its own requests are the only frames written
    /// directly.
    pub fn deliver(self: &Arc<Self>, frame: &Frame) -> bool {
        match self.outbox.push_deferred(frame.clone()) {
            None => false,
            Some(first) => {
                if first {
                    super::flusher::schedule(self);
                }
                true
            }
        }
    }

    /// Marks the client gone: it accepts no more frames. Called when its
    /// connection ends, so stale references held elsewhere cost nothing.
    pub(crate) fn close(&self) {
        self.outbox.kick(Kick {
            code: pubsub_protocol::close::NORMAL,
            reason: std::borrow::Cow::Borrowed("connection closed"),
        });
    }

    /// True once the connection is ending (closed, kicked or overflowed).
    pub fn is_closed(&self) -> bool {
        self.outbox.kicked().is_some()
    }

    /// Closes the connection with `code` and `reason` after what is queued.
    pub fn disconnect(&self, code: u16, reason: impl Into<std::borrow::Cow<'static, str>>) {
        self.outbox.kick(Kick {
            code,
            reason: reason.into(),
        });
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub(crate) fn home(&self) -> Option<&Home> {
        self.home.as_ref()
    }
}

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}
