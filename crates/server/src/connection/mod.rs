//! The connection loop: one task per WebSocket that reads frames, hands
//! requests to the hub, writes queued frames in batches, keeps the heartbeat
//! and enforces per-connection limits. Nothing else touches the socket.

mod budget;
mod handle;
mod outbox;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use pubsub_protocol::client_frame::truncate;
use pubsub_protocol::server_frame::{PING_FRAME, Welcome, encode_pong, encode_welcome};
use pubsub_protocol::{
    ClientFrame, ErrorCode, MessageId, PROTOCOL_VERSION, Presence, Sender, close,
    decode_client_frame,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::Identity;
use crate::hub::{Answer, HookEvent, Hub};
use crate::stats::now_ms;
use budget::{TokenBucket, allow};
pub use handle::{ClientHandle, ClientInfo};
pub(crate) use outbox::Outbox;
use outbox::Ready;
pub use outbox::{Frame, Kick};

/// How long closing steps (last writes, the close handshake) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Longest close reason RFC 6455 allows in a close frame.
const MAX_CLOSE_REASON: usize = 123;

/// How a session ended, and what is left to say to the client.
enum End {
    /// The client sent a close frame or the stream ended.
    ClientClosed,
    /// The socket failed; nothing more can be written.
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
        End::Close {
            flush: kick.code != close::SLOW_CONSUMER,
            code: kick.code,
            reason: kick.reason,
        }
    }

    fn from_ws_error(error: WsError) -> Self {
        match error {
            WsError::Capacity(_) => End::close(
                close::MESSAGE_TOO_BIG,
                "message larger than maxMessageBytes",
                true,
            ),
            WsError::Utf8(_) => End::close(
                close::INVALID_PAYLOAD,
                "text frame is not valid UTF-8",
                true,
            ),
            WsError::Protocol(_) => {
                End::close(close::PROTOCOL_ERROR, "WebSocket protocol violation", false)
            }
            _ => End::Failed,
        }
    }
}

/// Runs an authenticated connection until it ends, then unregisters it.
pub(crate) async fn serve_session<S>(
    hub: Arc<Hub>,
    mut ws: WebSocketStream<S>,
    identity: Identity,
    remote_addr: SocketAddr,
    active: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let info = ClientInfo {
        id: hub.next_client_id(),
        user: identity.user,
        remote_addr,
        connected_at: now_ms(),
        node: hub.node.clone(),
    };
    let handle = Arc::new(ClientHandle::new(info, hub.config.max_outbound_bytes));
    hub.open_connections.fetch_add(1, Ordering::Relaxed);
    let end = match hub.engine.attach(handle.clone(), active).await {
        Ok(presence) => {
            hub.stats.connections.opened.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %handle.id(), user = %handle.user(), %remote_addr, "connected");
            welcome(&hub, &handle, presence.clone());
            hub.hook(HookEvent::Connect(handle.info().clone(), presence));
            let end = run(&hub, &handle, &mut ws).await;
            let presence = hub.engine.detach(&handle).await;
            hub.hook(HookEvent::Disconnect(handle.info().clone(), presence));
            hub.stats.connections.closed.fetch_add(1, Ordering::Relaxed);
            end
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not register client");
            End::close(close::INTERNAL_ERROR, "engine unavailable", false)
        }
    };
    finish(&hub, &mut ws, handle.outbox(), end).await;
    hub.open_connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(client = %handle.id(), "disconnected");
}

/// Sends a close frame to a connection that was refused at the handshake.
pub(crate) async fn refuse<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send_close(ws, code, reason).await;
}

/// Queues `welcome` ahead of anything delivered to the client since it was
/// registered, so it is always the first frame.
fn welcome(hub: &Hub, handle: &ClientHandle, presence: Presence) {
    let config = &hub.config;
    handle
        .outbox()
        .push_front(Frame::from(encode_welcome(&Welcome {
            protocol: PROTOCOL_VERSION,
            client: handle.id().clone(),
            user: handle.user().clone(),
            node: hub.node.clone(),
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

async fn run<S>(hub: &Arc<Hub>, handle: &Arc<ClientHandle>, ws: &mut WebSocketStream<S>) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &hub.config;
    let outbox = handle.outbox();
    let sender = Sender {
        user: handle.user().clone(),
        client: handle.id().clone(),
    };

    let mut batch = VecDeque::new();
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Frame>> = FuturesUnordered::new();
    let mut limits = Limits {
        requests: TokenBucket::new(config.max_requests_per_sec, 1.0),
        invalid: TokenBucket::new(config.max_invalid_frames_per_min, 60.0),
    };

    let interval = config.heartbeat_interval();
    let silence_limit = interval + config.heartbeat_timeout();
    let mut last_inbound = Instant::now();
    let mut next_ping = last_inbound + interval;
    let heartbeat = sleep_until(next_ping);
    tokio::pin!(heartbeat);

    // Polled in place rather than re-created each turn, so waiting on the
    // shared shutdown token costs one registration per connection.
    let shutdown = hub.shutdown.clone().cancelled_owned();
    tokio::pin!(shutdown);
    let mut drain_deadline: Option<Pin<Box<Sleep>>> = None;

    loop {
        let draining = drain_deadline.is_some();
        let can_read = !draining && in_flight.len() < config.max_in_flight_per_connection;
        tokio::select! {
            biased;
            ready = outbox.ready(&mut batch) => match ready {
                Ready::Frames => {
                    if let Err(end) = write_batch(ws, &mut batch, outbox, config.write_timeout()).await {
                        return end;
                    }
                }
                Ready::Kicked(kick) => return End::from_kick(kick),
            },
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                outbox.push(answer);
            }
            () = &mut shutdown, if !draining => {
                drain_deadline = Some(Box::pin(tokio::time::sleep(config.shutdown_timeout())));
            }
            message = ws.next(), if can_read => {
                last_inbound = Instant::now();
                let end = match message {
                    None | Some(Ok(Message::Close(_))) => Some(End::ClientClosed),
                    Some(Ok(Message::Text(text))) => {
                        on_text(hub, handle, &sender, &mut limits, &mut in_flight, &text).await
                    }
                    Some(Ok(Message::Binary(_))) => on_invalid(
                        hub,
                        outbox,
                        &mut limits,
                        None,
                        ErrorCode::MalformedFrame,
                        "binary frames are not part of pubsub.v1.json",
                    ),
                    // Pings are answered by tungstenite; any frame proves liveness.
                    Some(Ok(_)) => None,
                    Some(Err(e)) => Some(End::from_ws_error(e)),
                };
                if let Some(end) = end {
                    return end;
                }
            }
            () = &mut heartbeat => {
                let now = Instant::now();
                if now.duration_since(last_inbound) >= silence_limit {
                    return End::close(
                        close::HEARTBEAT_TIMEOUT,
                        "nothing received within the heartbeat bound",
                        false,
                    );
                }
                if now >= next_ping {
                    outbox.push(Frame::from(PING_FRAME));
                    hub.stats.messages_out.ping.fetch_add(1, Ordering::Relaxed);
                    next_ping = now + interval;
                }
                heartbeat.as_mut().reset(next_ping.min(last_inbound + silence_limit));
            }
            () = async {
                match drain_deadline.as_mut() {
                    Some(deadline) => deadline.as_mut().await,
                    None => std::future::pending().await,
                }
            }, if draining => {
                return End::close(close::SERVICE_RESTART, "server shutting down", true);
            }
        }
        if drain_deadline.is_some() && in_flight.is_empty() {
            return End::close(close::SERVICE_RESTART, "server shutting down", true);
        }
    }
}

struct Limits {
    requests: Option<TokenBucket>,
    invalid: Option<TokenBucket>,
}

async fn on_text(
    hub: &Arc<Hub>,
    handle: &Arc<ClientHandle>,
    sender: &Sender,
    limits: &mut Limits,
    in_flight: &mut FuturesUnordered<BoxFuture<'static, Frame>>,
    text: &str,
) -> Option<End> {
    let outbox = handle.outbox();
    let frame = match decode_client_frame(text, &hub.decode_limits) {
        Ok(frame) => frame,
        Err(e) => return on_invalid(hub, outbox, limits, e.id.as_ref(), e.code, &e.message),
    };
    match frame {
        ClientFrame::Activity { id, active } => {
            if !allow(&mut limits.requests) {
                if let Some(id) = id {
                    outbox.push(hub.error_frame(
                        Some(&id),
                        ErrorCode::RateLimited,
                        "too many requests per second on this connection",
                    ));
                }
                return None;
            }
            if let Some(answer) = hub.activity(handle, id.as_ref(), active).await {
                outbox.push(answer);
            }
        }
        ClientFrame::Pong => {
            hub.stats.messages_in.pong.fetch_add(1, Ordering::Relaxed);
        }
        ClientFrame::Ping { id } => {
            hub.stats.messages_in.ping.fetch_add(1, Ordering::Relaxed);
            hub.stats.messages_out.pong.fetch_add(1, Ordering::Relaxed);
            outbox.push(Frame::from(encode_pong(id.as_ref())));
        }
        ClientFrame::Request(request) => {
            if !allow(&mut limits.requests) {
                outbox.push(hub.error_frame(
                    Some(request.id()),
                    ErrorCode::RateLimited,
                    "too many requests per second on this connection",
                ));
                return None;
            }
            match hub.handle_request(handle, sender, request).await {
                Answer::Now(frame) => {
                    outbox.push(frame);
                }
                Answer::Later(answer) => in_flight.push(answer),
            }
        }
    }
    None
}

/// Answers an invalid frame with an error and closes the connection once the
/// client has spent its budget of invalid frames.
fn on_invalid(
    hub: &Hub,
    outbox: &Outbox,
    limits: &mut Limits,
    id: Option<&MessageId>,
    code: ErrorCode,
    message: &str,
) -> Option<End> {
    hub.stats
        .messages_in
        .invalid
        .fetch_add(1, Ordering::Relaxed);
    outbox.push(hub.error_frame(id, code, message));
    if allow(&mut limits.invalid) {
        None
    } else {
        Some(End::close(
            close::TOO_MANY_ERRORS,
            "too many invalid frames",
            true,
        ))
    }
}

/// Writes a batch with one flush. A write that blocks past `write_timeout`,
/// or a kick while blocked, ends the session.
async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    batch: &mut VecDeque<Frame>,
    outbox: &Outbox,
    write_timeout: Duration,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write = async {
        while let Some(frame) = batch.pop_front() {
            ws.feed(Message::Text(frame.into_utf8())).await?;
        }
        ws.flush().await
    };
    tokio::select! {
        result = timeout(write_timeout, write) => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Failed),
            Err(_) => Err(End::close(
                close::SLOW_CONSUMER,
                "writes blocked longer than the write timeout",
                false,
            )),
        },
        kick = outbox.wait_kicked() => Err(End::from_kick(kick)),
    }
}

async fn finish<S>(hub: &Hub, ws: &mut WebSocketStream<S>, outbox: &Outbox, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match end {
        End::Failed => {}
        End::ClientClosed => {
            let _ = timeout(CLOSE_GRACE, ws.close(None)).await;
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
            if flush {
                let mut rest = VecDeque::new();
                outbox.take(&mut rest);
                let write = async {
                    for frame in rest {
                        ws.feed(Message::Text(frame.into_utf8())).await?;
                    }
                    ws.flush().await
                };
                let _ = timeout(CLOSE_GRACE, write).await;
            }
            send_close(ws, code, &reason).await;
        }
    }
}

async fn send_close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: code.into(),
        reason: truncate(reason, MAX_CLOSE_REASON).to_owned().into(),
    };
    if let Ok(Ok(())) = timeout(CLOSE_GRACE, ws.send(Message::Close(Some(frame)))).await {
        // Let the client answer the close so it, not the server, ends up in TIME_WAIT.
        let _ = timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}
