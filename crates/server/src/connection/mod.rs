//! Connections: one task per WebSocket, from the upgraded socket to the
//! close handshake. Nothing else reads from the socket; anything may write to
//! it through the connection's [`Outbox`].
//!
//! - mod.rs: the session's life — register, welcome, run, unregister, close.
//! - session.rs: the loop — read and dispatch, heartbeat, limits, drain.
//! - wire.rs: RFC 6455 framing. reader.rs: reads through a per-thread buffer.
//! - outbox.rs: a connection's own answers written directly, and the bounded
//!   queue for deliveries and for what the socket did not take.
//!   flusher.rs: write-behind for every delivery. signal.rs: how an outbox
//!   wakes its connection's task. socket_calls.rs: the `recv` and `send`
//!   system calls both make, without libc's cancellation points.
//! - handle.rs: what engines hold. budget.rs: token buckets.

#[cfg(test)]
mod autobahn;
mod budget;
mod flusher;
mod handle;
mod outbox;
mod reader;
mod session;
mod signal;
mod socket_calls;
mod wire;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pubsub_protocol::server_frame::{Welcome, encode_welcome};
use pubsub_protocol::{PROTOCOL_VERSION, Presence, close};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::auth::Identity;
use crate::hub::{HookEvent, Hub};
use crate::stats::now_ms;
pub(crate) use flusher::start_here as start_flusher;
pub use handle::{ClientHandle, ClientInfo};
pub(crate) use outbox::Outbox;
pub use outbox::{Frame, Kick};
use reader::{Read, read};
use session::Session;
use wire::{Parser, encode_close};

/// How long closing steps (last writes, the close handshake) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a session ended, and what is left to say to the client.
pub(crate) enum End {
    /// The client sent a close frame (with this code).
    ClientClosed(Option<u16>),
    /// The socket failed or the client vanished; nothing more can be said.
    Failed,
    /// Close with this code and reason, after writing what is queued if `flush`.
    Close {
        code: u16,
        reason: Cow<'static, str>,
        flush: bool,
    },
}

impl End {
    fn close(code: u16, reason: &'static str, flush: bool) -> Self {
        End::Close {
            code,
            reason: Cow::Borrowed(reason),
            flush,
        }
    }

    fn from_kick(kick: Kick) -> Self {
        if kick == Kick::broken() {
            return End::Failed;
        }
        End::Close {
            flush: kick.code != close::SLOW_CONSUMER,
            code: kick.code,
            reason: kick.reason,
        }
    }
}

/// Runs an authenticated connection until it ends, then unregisters it.
/// `leftover` is what the client sent right behind its handshake.
///
/// A plain function that builds the client's handle and returns the
/// session's future: an `async fn`'s arguments stay in its future for its
/// whole life, and every idle connection carries that future, so the
/// identity and the address it needs only here are not among them.
pub(crate) fn serve_session(
    hub: Arc<Hub>,
    socket: Arc<TcpStream>,
    leftover: Vec<u8>,
    identity: Identity,
    remote_addr: SocketAddr,
    active: bool,
) -> impl Future<Output = ()> + Send + 'static {
    let info = ClientInfo {
        id: hub.next_client_id(),
        user: identity.user,
        remote_addr,
        connected_at: now_ms(),
        node: hub.node.clone(),
    };
    let handle = Arc::new(ClientHandle::new(
        info,
        socket.clone(),
        hub.config.max_outbound_bytes,
    ));
    // The parser starts with the leftover: it is kept for the session
    // anyway, and the bytes then ride in it.
    session::serve(
        Session::new(hub, handle, socket, Parser::with_unread(leftover)),
        active,
    )
}

/// Registers the client with the engine and greets it; `Err` says how a
/// client that could not be registered is closed.
async fn attach(hub: &Arc<Hub>, handle: &Arc<ClientHandle>, active: bool) -> Result<(), End> {
    hub.open_connections.fetch_add(1, Ordering::Relaxed);
    match hub.engine.attach(handle.clone(), active).await {
        Ok(presence) => {
            hub.stats.connections.opened.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %handle.id(), user = %handle.user(), remote_addr = %handle.info().remote_addr, "connected");
            welcome(hub, handle, presence.clone());
            hub.hook(HookEvent::Connect(handle.info().clone(), presence));
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not register client");
            Err(End::close(
                close::INTERNAL_ERROR,
                "engine unavailable",
                false,
            ))
        }
    }
}

/// Unregisters a client whose session ended.
async fn detach(hub: &Hub, handle: &Arc<ClientHandle>) {
    let presence = hub.engine.detach(handle).await;
    hub.hook(HookEvent::Disconnect(handle.info().clone(), presence));
    hub.stats.connections.closed.fetch_add(1, Ordering::Relaxed);
}

/// Closes the connection as its session ended.
async fn close(hub: &Hub, handle: &ClientHandle, socket: &TcpStream, end: End) {
    // Boxed: closing is rare, and an idle connection's task should not carry its size.
    Box::pin(finish(hub, handle.outbox(), socket, end)).await;
    hub.open_connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(client = %handle.id(), "disconnected");
}

/// Sends `welcome` ahead of anything delivered to the client since it was
/// registered, and starts writing.
fn welcome(hub: &Hub, handle: &ClientHandle, presence: Presence) {
    let config = &hub.config;
    handle
        .outbox()
        .release_with_first(Frame::from(encode_welcome(&Welcome {
            protocol: PROTOCOL_VERSION,
            client: handle.id().clone(),
            user: handle.user().clone(),
            node: hub.node.to_string(),
            heartbeat_ms: config.heartbeat_interval_ms,
            heartbeat_timeout_ms: config.heartbeat_timeout_ms,
            limits: config.wire_limits(),
            presence: Some(presence),
        })));
    hub.stats
        .messages_out
        .welcome
        .fetch_add(1, Ordering::Relaxed);
}

/// Closes a connection that was refused at the handshake.
pub(crate) async fn refuse(socket: Arc<TcpStream>, code: u16, reason: &str) {
    let outbox = Outbox::new(socket.clone(), usize::MAX);
    close_handshake(&outbox, &socket, code, reason).await;
}

async fn finish(hub: &Hub, outbox: &Outbox, socket: &TcpStream, end: End) {
    match end {
        End::Failed => {}
        End::ClientClosed(code) => {
            // Echo the client's status code, as RFC 6455 5.5.1 asks.
            let frame = Frame::raw(encode_close(code.unwrap_or(close::NORMAL), ""));
            let _ = timeout(CLOSE_GRACE, outbox.finish_with(frame)).await;
        }
        End::Close {
            code,
            reason,
            flush,
        } => {
            let counters = &hub.stats.connections;
            let counter = match code {
                close::SLOW_CONSUMER => Some(&counters.slow_consumer),
                close::HEARTBEAT_TIMEOUT => Some(&counters.heartbeat_timeout),
                close::MESSAGE_TOO_BIG => Some(&counters.message_too_big),
                close::TOO_MANY_ERRORS => Some(&counters.too_many_errors),
                _ => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            if !flush {
                // Nothing queued is worth waiting for (the client is not
                // reading, or broke the protocol): only the close frame.
                outbox.discard_queued();
            }
            close_handshake(outbox, socket, code, &reason).await;
        }
    }
}

/// Writes what is queued and a close frame, then waits (briefly) for the
/// client's close so that it, not the server, ends up in TIME_WAIT.
async fn close_handshake(outbox: &Outbox, socket: &TcpStream, code: u16, reason: &str) {
    let frame = Frame::raw(encode_close(code, reason));
    if let Ok(Ok(())) = timeout(CLOSE_GRACE, outbox.finish_with(frame)).await {
        let _ = timeout(CLOSE_GRACE, async {
            let mut parser = Parser::default();
            let mut sink = Vec::new();
            loop {
                if socket.readable().await.is_err() {
                    return;
                }
                match read(socket, &mut parser, 1 << 16, &mut sink) {
                    Ok(Read::Data)
                        if sink.iter().any(|m| matches!(m, wire::Incoming::Close(_))) =>
                    {
                        return;
                    }
                    Ok(Read::Data | Read::Nothing) => sink.clear(),
                    Ok(Read::Eof) | Err(_) => return,
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use tokio::net::TcpStream;

    use crate::auth::Identity;
    use crate::hub::Hub;

    fn future_size<Fut>(
        _: impl Fn(Arc<Hub>, Arc<TcpStream>, Vec<u8>, Identity, SocketAddr, bool) -> Fut,
    ) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection carries its task's future; this keeps it from
    /// growing unnoticed (docs/benchmarks.md, idle memory). Tokio's task
    /// cell is the future plus 112 bytes (header, scheduler, id, trailer),
    /// rounded up to 128: at 632 bytes it is 768, one of the allocator's
    /// size classes; past 656 it would be 896. (At 880 bytes, before the
    /// session's state became one struct, it was 1,024; at 1,200, 1,536.)
    #[test]
    fn an_idle_connection_task_stays_small() {
        let size = future_size(super::serve_session);
        eprintln!("connection task future: {size} bytes");
        assert!(size <= 656, "the connection future grew to {size} bytes");
    }
}
