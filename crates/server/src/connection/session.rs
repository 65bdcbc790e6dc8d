//! The loop of one connection: read and dispatch frames, answer in-flight
//! handler calls, write what the socket did not take at once, keep the
//! heartbeat, and drain on shutdown. Returns how the session ended.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use pubsub_protocol::server_frame::{PING_FRAME, encode_pong};
use pubsub_protocol::{
    ClientFrame, ErrorCode, MessageId, Received, Request, Sender, close, decode_client_frame,
};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep_until, timeout};

use super::budget::{TokenBucket, allow};
use super::outbox::Corked;
use super::reader::{Read, ReadError, read_in_place};
use super::wire::{Message, Parser, WireError, encode_pong as ws_pong};
use super::{ClientHandle, End, Frame, Outbox};
use crate::config::ServerConfig;
use crate::hub::{Answer, Caller, Hub};

struct Limits {
    requests: Option<TokenBucket>,
    invalid: Option<TokenBucket>,
}

/// Handler calls still running. Created with the first one: most
/// connections never make one, and an empty `FuturesUnordered` already
/// holds two allocations that every idle connection would carry.
#[derive(Default)]
struct InFlight(Option<FuturesUnordered<BoxFuture<'static, Frame>>>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, call: BoxFuture<'static, Frame>) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(call);
    }

    async fn next(&mut self) -> Option<Frame> {
        match &mut self.0 {
            Some(calls) => calls.next().await,
            None => None,
        }
    }
}

pub(super) async fn run(
    hub: &Arc<Hub>,
    handle: &Arc<ClientHandle>,
    socket: &TcpStream,
    parser: &mut Parser,
) -> End {
    let config = &hub.config;
    let outbox = handle.outbox();
    let mut caller = Caller::new(Sender {
        user: handle.user().clone(),
        client: handle.id().clone(),
    });
    let mut incoming = Vec::new();
    let mut in_flight = InFlight::default();
    let mut limits = Limits {
        requests: TokenBucket::new(config.max_requests_per_sec, 1.0),
        invalid: TokenBucket::new(config.max_invalid_frames_per_min, 60.0),
    };

    // The interval and the silence limit are read from the config where
    // they are needed rather than kept: what lives across the loop's
    // awaits is in every connection's task, idle or not.
    let mut last_inbound = Instant::now();
    let mut next_ping = last_inbound + config.heartbeat_interval();
    let heartbeat = sleep_until(next_ping);
    tokio::pin!(heartbeat);
    // Whether the heartbeat timer has been polled since it was last set,
    // which registered this task's waker with it (a task's waker does not
    // change): until the timer fires, polling it again on every turn (two a
    // request) only costs its checks. `is_elapsed` is one atomic load.
    let mut heartbeat_armed = false;

    // Waiting on the shared shutdown token: registered once per connection,
    // by polling it here. The registration holds this task's waker (a task's
    // waker does not change), so the loop below only reads the hub's
    // shutdown flag, one atomic load; polling the future again, or the
    // token's `is_cancelled`, would take the token's lock on every turn.
    // (A token already cancelled is seen through the flag, which is set
    // first.)
    let shutdown = hub.shutdown_started_owned();
    tokio::pin!(shutdown);
    std::future::poll_fn(|cx| {
        let _ = shutdown.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
    let mut drain_deadline: Option<Pin<Box<Sleep>>> = None;

    // Frames the client sent right behind its handshake: answered on the
    // loop's first turn.
    if parser.has_unread()
        && let Err(e) = parser.feed(&[], config.max_message_bytes, &mut incoming)
    {
        return End::from_wire(e);
    }

    // Several frames in one read are answered in one write: the outbox is
    // corked from the first frame that has more bytes behind it until they
    // have all been answered.
    let mut corked: Option<Corked<'_>> = None;
    loop {
        if !incoming.is_empty() {
            let _corked = (incoming.len() > 1 && corked.is_none()).then(|| outbox.cork());
            // Borrowed, not drained: a frame waited on below stays where
            // it is instead of in this task's state, which every
            // connection carries.
            for message in &incoming {
                let deferred = match on_message(
                    hub,
                    handle,
                    &mut caller,
                    &mut limits,
                    &mut in_flight,
                    message.as_message(),
                ) {
                    Ok(None) => continue,
                    Ok(Some(end)) => return end,
                    Err(deferred) => deferred,
                };
                Box::pin(on_deferred(
                    hub,
                    handle,
                    &mut caller,
                    &mut in_flight,
                    deferred,
                ))
                .await;
            }
            incoming.clear();
        }
        corked = None;
        let draining = drain_deadline.is_some();
        let can_read = !draining && in_flight.len() < config.max_in_flight_per_connection;
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| outbox.poll_wait(cx)) => {
                if let Err(end) = Box::pin(write_out(outbox, config.write_timeout())).await {
                    return end;
                }
            }
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                outbox.push(answer);
            }
            () = std::future::poll_fn(|_| if hub.is_shutting_down() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }), if !draining => {
                drain_deadline = Some(Box::pin(tokio::time::sleep(config.shutdown_timeout())));
            }
            // The socket's own reader slot, rather than `readable()`, which
            // links and unlinks a waiter in a list on every turn.
            ready = std::future::poll_fn(|cx| socket.poll_read_ready(cx)), if can_read => {
                if ready.is_err() {
                    return End::Failed;
                }
                // Frames are handled where they were read, in the thread's
                // read buffer, until one has to wait (on the engine or on
                // presence): that one and those behind it are copied to
                // `incoming` and handled, in order, at the top of the loop.
                let mut end = None;
                let read = read_in_place(socket, parser, config.max_message_bytes, |message, more| {
                    if more && corked.is_none() {
                        corked = Some(outbox.cork());
                    }
                    if end.is_some() {
                        return;
                    }
                    if !incoming.is_empty() || !answered_at_once(&message) {
                        incoming.push(message.to_incoming());
                        return;
                    }
                    match on_message(hub, handle, &mut caller, &mut limits, &mut in_flight, message) {
                        Ok(None) => {}
                        Ok(Some(ended)) => end = Some(ended),
                        // Not reached (see `answered_at_once`); were it, the
                        // frame would be handled again from a copy, its
                        // request counted twice against the rate limit.
                        Err(_) => incoming.push(message.to_incoming()),
                    }
                });
                if let Some(end) = end {
                    return end;
                }
                match read {
                    Ok(Read::Data) => last_inbound = Instant::now(),
                    Ok(Read::Nothing) => continue,
                    Ok(Read::Eof) => return End::Failed,
                    Err(ReadError::Io(e)) => {
                        tracing::debug!(client = %handle.id(), error = %e, "read failed");
                        return End::Failed;
                    }
                    Err(ReadError::Wire(e)) => return End::from_wire(e),
                }
            }
            () = std::future::poll_fn(|cx| {
                if heartbeat_armed && !heartbeat.is_elapsed() {
                    return Poll::Pending;
                }
                let fired = heartbeat.as_mut().poll(cx);
                heartbeat_armed = fired.is_pending();
                fired
            }) => {
                let now = Instant::now();
                let silence_limit = silence_limit(config);
                if now.duration_since(last_inbound) >= silence_limit {
                    return End::close(close::HEARTBEAT_TIMEOUT, "nothing received within the heartbeat bound", false);
                }
                if now >= next_ping {
                    outbox.push(Frame::from(PING_FRAME));
                    hub.stats.messages_out.ping.fetch_add(1, Ordering::Relaxed);
                    next_ping = now + config.heartbeat_interval();
                }
                heartbeat.as_mut().reset(next_ping.min(last_inbound + silence_limit));
                heartbeat_armed = false;
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

/// How long a client may stay silent: a ping's interval and its timeout.
fn silence_limit(config: &ServerConfig) -> std::time::Duration {
    config.heartbeat_interval() + config.heartbeat_timeout()
}

/// Writes what the socket did not take at once. A write blocked past
/// `write_timeout`, or a kick meanwhile, ends the session.
async fn write_out(outbox: &Outbox, write_timeout: std::time::Duration) -> Result<(), End> {
    tokio::select! {
        result = timeout(write_timeout, outbox.flush()) => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(kick)) => Err(End::from_kick(kick)),
            Err(_) => Err(End::close(
                close::SLOW_CONSUMER,
                "writes blocked longer than the write timeout",
                false,
            )),
        },
        // A slow-consumer kick must not wait for the timeout.
        () = async {
            loop {
                outbox.wait().await;
                if outbox.kicked().is_some() {
                    return;
                }
            }
        } => Err(outbox.kicked().map_or(End::Failed, End::from_kick)),
    }
}

/// A frame that has to wait on the engine or on presence before it is
/// answered: decoded, and past the rate limit.
enum Deferred<'m> {
    Request(Request<'m>, Received<'m>),
    Activity { id: Option<MessageId>, active: bool },
}

/// Handles one frame as far as it can without waiting: everything but the
/// requests that need the engine (and activity, which updates presence),
/// which come back to be awaited in [`on_deferred`]. Plain code rather than
/// an `async fn`, so the frames sent most often (`sendToServer`, pings)
/// cost no boxed future; `Ok` carries how the session ends, if it does.
fn on_message<'m>(
    hub: &Arc<Hub>,
    handle: &Arc<ClientHandle>,
    caller: &mut Caller,
    limits: &mut Limits,
    in_flight: &mut InFlight,
    message: Message<'m>,
) -> Result<Option<End>, Deferred<'m>> {
    let outbox = handle.outbox();
    let text = match message {
        Message::Text(text) => text,
        Message::Binary(_) => {
            return Ok(on_invalid(
                hub,
                outbox,
                limits,
                None,
                ErrorCode::MalformedFrame,
                "binary frames are not part of pubsub.v1.json",
            ));
        }
        Message::Ping(payload) => {
            outbox.push(Frame::raw(ws_pong(payload)));
            return Ok(None);
        }
        Message::Pong => return Ok(None),
        Message::Close(code) => return Ok(Some(End::ClientClosed(code))),
    };
    let frame = match decode_client_frame(text, &hub.decode_limits) {
        Ok(frame) => frame,
        Err(e) => {
            return Ok(on_invalid(
                hub,
                outbox,
                limits,
                e.id.as_ref(),
                e.code,
                &e.message,
            ));
        }
    };
    match frame {
        ClientFrame::Activity { id, active } => {
            if !allow(&mut limits.requests) {
                if let Some(id) = id {
                    outbox.push(rate_limited(hub, &id));
                }
                return Ok(None);
            }
            return Err(Deferred::Activity { id, active });
        }
        ClientFrame::Pong => {
            hub.stats.messages_in.pong.fetch_add(1, Ordering::Relaxed);
        }
        ClientFrame::Ping { id } => {
            hub.stats.messages_in.ping.fetch_add(1, Ordering::Relaxed);
            hub.stats.messages_out.pong.fetch_add(1, Ordering::Relaxed);
            outbox.push(Frame::from(encode_pong(id.as_ref())));
        }
        ClientFrame::Request(request, received) => {
            if !allow(&mut limits.requests) {
                outbox.push(rate_limited(hub, request.id()));
                return Ok(None);
            }
            match hub.answer_now(handle, caller, request, &received) {
                Ok(answer) => send_answer(hub, outbox, in_flight, answer),
                Err(request) => return Err(Deferred::Request(request, received)),
            }
        }
    }
    Ok(None)
}

/// Whether [`on_message`] answers a message without waiting, judged before
/// it is decoded, so that one which waits is never decoded twice (in the
/// read buffer, then again from its copy): every frame but a text frame,
/// and `sendToServer` as the clients write it, `kind` first. Any other
/// frame is copied and handled at the top of the session's loop.
fn answered_at_once(message: &Message<'_>) -> bool {
    match message {
        Message::Text(text) => text.starts_with(r#"{"kind":"sendToServer","#),
        _ => true,
    }
}

/// The rest of a frame [`on_message`] could not finish.
async fn on_deferred(
    hub: &Arc<Hub>,
    handle: &Arc<ClientHandle>,
    caller: &mut Caller,
    in_flight: &mut InFlight,
    deferred: Deferred<'_>,
) {
    let outbox = handle.outbox();
    match deferred {
        Deferred::Activity { id, active } => {
            if let Some(answer) = hub.activity(handle, id.as_ref(), active).await {
                outbox.push(answer);
            }
        }
        Deferred::Request(request, received) => {
            let answer = hub.handle_request(handle, caller, request, &received).await;
            send_answer(hub, outbox, in_flight, answer);
        }
    }
}

/// Sends an answer that is ready; one that is not waits in `in_flight`.
fn send_answer(hub: &Arc<Hub>, outbox: &Outbox, in_flight: &mut InFlight, answer: Answer) {
    // A frame the outbox refuses is dropped with it: the connection is
    // closing or was just closed as a slow consumer.
    match answer {
        Answer::Now(frame) => {
            outbox.push(frame);
        }
        Answer::Call(mut call) => {
            // Most handlers answer on their first poll. One that does not
            // goes to `in_flight`, which polls it again, with this task's
            // waker, before the task next sleeps: the no-op waker here is
            // never the one a wake-up is owed to.
            let mut cx = Context::from_waker(Waker::noop());
            if call
                .poll_answer(hub, &mut cx, |frame| outbox.push_lent(frame))
                .is_pending()
            {
                in_flight.push(call.into_waiting(hub.clone()));
            }
        }
        // A retry waiting for its first attempt, which is still running.
        Answer::Later(answer) => in_flight.push(answer),
    }
}

fn rate_limited(hub: &Hub, id: &MessageId) -> Frame {
    hub.error_frame(
        Some(id),
        ErrorCode::RateLimited,
        "too many requests per second on this connection",
    )
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

impl End {
    pub(super) fn from_wire(error: WireError) -> Self {
        match error {
            WireError::TooBig => End::close(
                close::MESSAGE_TOO_BIG,
                "message larger than maxMessageBytes",
                true,
            ),
            WireError::InvalidUtf8 => End::close(
                close::INVALID_PAYLOAD,
                "text frame is not valid UTF-8",
                true,
            ),
            WireError::Protocol(_) => {
                End::close(close::PROTOCOL_ERROR, "WebSocket protocol violation", false)
            }
        }
    }
}
