//! A registered connection's task: its state ([`Session`]) and its loop,
//! which reads and dispatches frames, answers in-flight handler calls,
//! writes what the socket did not take at once, keeps the heartbeat, and
//! drains on shutdown, between registering the client and closing the
//! connection (both in `mod.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use pubsub_protocol::server_frame::{PING_FRAME, encode_pong};
use pubsub_protocol::{
    ClientFrame, ErrorCode, MessageId, Received, Request, Sender, close, decode_client_frame,
};
use tokio::net::TcpStream;
use tokio::task::coop::unconstrained;
use tokio::time::{Instant, Sleep, sleep_until, timeout};

use super::budget::{Rate, TokenBucket};
use super::reader::{Read, ReadError, read_in_place};
use super::wire::{Incoming, Message, Parser, WireError, encode_pong as ws_pong};
use super::{ClientHandle, End, Frame, Outbox};
use crate::config::ServerConfig;
use crate::hub::{Answer, Caller, Hub};

/// `requests` first: every request takes from it, while `invalid` is
/// read only for frames that break the protocol.
#[repr(C)]
struct Limits {
    requests: TokenBucket,
    invalid: TokenBucket,
}

impl Limits {
    fn new(config: &ServerConfig) -> Self {
        Self {
            requests: TokenBucket::full(request_rate(config)),
            invalid: TokenBucket::full(invalid_frame_rate(config)),
        }
    }
}

fn request_rate(config: &ServerConfig) -> Rate {
    Rate::new(config.max_requests_per_sec, 1.0)
}

fn invalid_frame_rate(config: &ServerConfig) -> Rate {
    Rate::new(config.max_invalid_frames_per_min, 60.0)
}

/// Handler calls still running. Created with the first one: most
/// connections never make one, and an empty `FuturesUnordered` already
/// holds two allocations that every idle connection would carry. Boxed,
/// so that the session's state, which every turn reads, keeps one word
/// for it.
#[derive(Default)]
struct InFlight(Option<Box<FuturesUnordered<BoxFuture<'static, Frame>>>>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |calls| calls.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, call: BoxFuture<'static, Frame>) {
        self.0
            .get_or_insert_with(|| Box::new(FuturesUnordered::new()))
            .push(call);
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        match &mut self.0 {
            Some(calls) if !calls.is_empty() => calls.poll_next_unpin(cx),
            _ => Poll::Ready(None),
        }
    }
}

/// The task of a registered connection, from its attach to its close.
///
/// One `async` block around the session's state, with the loop written in
/// it rather than in a future of its own: a block's captures are the first
/// bytes of its future, so the state every turn reads starts the task's
/// future at a cache line (tokio's task header takes the line before), and
/// no nested future's own state is one more line to fetch per turn.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would copy the session into its future a second time"
)]
pub(super) fn serve(
    mut session: Session,
    active: bool,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        if let Err(refused) = super::attach(&session.hub, &session.handle, active).await {
            super::close(&session.hub, &session.handle, &session.socket, refused).await;
            return;
        }
        let end = 'session: {
            // The interval and the silence limit are read from the config where
            // they are needed rather than kept: what lives across the loop's
            // awaits is in every connection's task, idle or not.
            session.next_ping =
                session.caller.received_at + session.hub.config.heartbeat_interval();
            session.heartbeat_at = session.next_ping;
            let heartbeat = sleep_until(session.next_ping);
            tokio::pin!(heartbeat);

            // Waiting on the shared shutdown token: registered once per
            // connection, by polling it here. The registration holds this
            // task's waker (a task's waker does not change), so each turn only
            // reads the hub's shutdown flag, one atomic load; polling the
            // future again, or the token's `is_cancelled`, would take the
            // token's lock on every turn. (A token already cancelled is seen
            // through the flag, which is set first.)
            let shutdown = session.hub.shutdown_started_owned();
            tokio::pin!(shutdown);
            std::future::poll_fn(|cx| {
                let _ = shutdown.as_mut().poll(cx);
                Poll::Ready(())
            })
            .await;

            // Frames the client sent right behind its handshake: answered on
            // the loop's first turn.
            if session.parser.has_unread()
                && let Err(e) = session.parser.feed(
                    &[],
                    session.hub.config.max_message_bytes,
                    &mut session.incoming,
                )
            {
                break 'session End::from_wire(e);
            }

            loop {
                if !session.incoming.is_empty() {
                    // The frames below may wait, and the timer fire meanwhile.
                    session.just_read = false;
                    // Several frames in one read are answered in one write: the
                    // outbox is corked from the first frame that has more bytes
                    // behind it until they have all been answered.
                    let _corked = (session.incoming.len() > 1 && !session.corked)
                        .then(|| session.handle.outbox().cork());
                    // Borrowed, not drained: a frame waited on below stays where
                    // it is instead of in this task's state, which every
                    // connection carries.
                    for message in &session.incoming {
                        let deferred = match on_message(
                            &session.hub,
                            &session.handle,
                            &mut session.caller,
                            &mut session.limits,
                            &mut session.in_flight,
                            message.as_message(),
                        ) {
                            Ok(None) => continue,
                            Ok(Some(end)) => break 'session end,
                            Err(deferred) => deferred,
                        };
                        Box::pin(on_deferred(
                            &session.hub,
                            &session.handle,
                            &mut session.caller,
                            &mut session.in_flight,
                            deferred,
                        ))
                        .await;
                    }
                    session.incoming.clear();
                }
                session.uncork();
                // One poll function for every source, rather than `select!`,
                // whose branches' futures would be rebuilt in the task's state
                // on every turn. The timer is handed on by the place that
                // holds it, so that a turn which need not look at it does not
                // load the reference kept there (a line of its own).
                let wake = std::future::poll_fn(|cx| session.poll_wake(&mut heartbeat, cx)).await;
                match wake {
                    Wake::Write => {
                        let write_timeout = session.hub.config.write_timeout();
                        if let Err(end) = Box::pin(write_out(session.outbox(), write_timeout)).await
                        {
                            break 'session end;
                        }
                    }
                    Wake::Answer(answer) => {
                        session.outbox().push(answer);
                    }
                    Wake::ShutdownStarted => {
                        // No more pings or silence checks: the heartbeat timer
                        // now bounds the drain.
                        session.draining = true;
                        let deadline = Instant::now() + session.hub.config.shutdown_timeout();
                        session.set_heartbeat(heartbeat.as_mut(), deadline);
                    }
                    Wake::Readable(ready) => {
                        if ready.is_err() {
                            break 'session End::Failed;
                        }
                        if let Some(end) = session.read() {
                            break 'session end;
                        }
                    }
                    Wake::Heartbeat if session.draining => {
                        break 'session End::drained();
                    }
                    Wake::Heartbeat => {
                        if let Some(end) = session.on_heartbeat(heartbeat.as_mut()) {
                            break 'session end;
                        }
                    }
                }
                if session.draining && session.in_flight.is_empty() {
                    break 'session End::drained();
                }
            }
        };
        // Ended in the middle of a read's frames: nothing held back, the
        // close frame is about to be written.
        session.uncork();
        super::detach(&session.hub, &session.handle).await;
        super::close(&session.hub, &session.handle, &session.socket, end).await;
    }
}

/// What the session's loop reads and writes on every turn, and what it
/// keeps between turns. One struct, laid out in this order (`repr(C)`), at
/// the start of the task's future (see [`serve`]), rather than an `async`
/// body's locals, which the compiler spreads over its future as it likes:
/// with thousands of connections every line of a connection's task has
/// left the cache by its next request, so each line a turn touches is a
/// miss. The fields every turn reads fill the first three lines; the
/// invalid-frame budget and the next ping's time, which a turn rarely
/// reads, come after them. The hub, the handle and the socket are owned
/// here, not borrowed from elsewhere in the future: a reference to them
/// would be one more line to fetch.
#[repr(C)]
pub(super) struct Session {
    hub: Arc<Hub>,
    handle: Arc<ClientHandle>,
    socket: Arc<TcpStream>,
    parser: Parser,
    in_flight: InFlight,
    caller: Caller,
    /// Frames read that wait their turn behind one that had to wait.
    incoming: Vec<Incoming>,
    /// When the heartbeat timer is set to fire.
    heartbeat_at: Instant,
    /// Whether the outbox is corked while the frames of one read are
    /// answered (several answers, one write).
    corked: bool,
    /// Whether the heartbeat timer has been polled since it was last set,
    /// which registered this task's waker with it (a task's waker does not
    /// change): until the timer fires, polling it again on every turn (two
    /// a request) would only cost its checks, and the lines of the task
    /// they read.
    heartbeat_armed: bool,
    /// Whether the last read's time (`caller.received_at`) was read from
    /// the clock in this poll of the task, with no wait since: then it says
    /// the timer has not fired yet when it is before `heartbeat_at`,
    /// without a look at the timer.
    just_read: bool,
    /// Set once the server started shutting down: the heartbeat timer then
    /// says when to give up waiting for the handler calls still running.
    draining: bool,
    limits: Limits,
    next_ping: Instant,
}

/// What woke the session's loop, in the order it looks.
enum Wake {
    /// The outbox has bytes the socket did not take at once.
    Write,
    /// A handler call that was still running answered.
    Answer(Frame),
    ShutdownStarted,
    Readable(std::io::Result<()>),
    /// The heartbeat timer fired; while draining, the drain's deadline.
    Heartbeat,
}

impl Session {
    /// The state of a registered connection's session; [`serve`] runs it.
    pub(super) fn new(
        hub: Arc<Hub>,
        handle: Arc<ClientHandle>,
        socket: Arc<TcpStream>,
        parser: Parser,
    ) -> Self {
        let caller = Caller::new(Sender {
            user: handle.user().clone(),
            client: handle.id().clone(),
        });
        let limits = Limits::new(&hub.config);
        Session {
            hub,
            handle,
            socket,
            parser,
            in_flight: InFlight::default(),
            caller,
            incoming: Vec::new(),
            corked: false,
            heartbeat_at: Instant::now(),
            heartbeat_armed: false,
            just_read: false,
            draining: false,
            limits,
            next_ping: Instant::now(),
        }
    }

    fn outbox(&self) -> &Outbox {
        self.handle.outbox()
    }

    /// Ends the cork of a read's frames, writing what it held back.
    fn uncork(&mut self) {
        if self.corked {
            self.corked = false;
            self.outbox().uncork();
        }
    }

    /// The heartbeat timer fired: closes a client silent past the bound,
    /// pings one whose ping is due, and sets the timer again.
    fn on_heartbeat(&mut self, heartbeat: Pin<&mut Sleep>) -> Option<End> {
        let config = &self.hub.config;
        let now = Instant::now();
        let silence_limit = silence_limit(config);
        if now.duration_since(self.caller.received_at) >= silence_limit {
            return Some(End::close(
                close::HEARTBEAT_TIMEOUT,
                "nothing received within the heartbeat bound",
                false,
            ));
        }
        if now >= self.next_ping {
            self.outbox().push(Frame::from(PING_FRAME));
            self.hub
                .stats
                .messages_out
                .ping
                .fetch_add(1, Ordering::Relaxed);
            self.next_ping = now + config.heartbeat_interval();
        }
        let next = self.next_ping.min(self.caller.received_at + silence_limit);
        self.set_heartbeat(heartbeat, next);
        None
    }

    fn set_heartbeat(&mut self, heartbeat: Pin<&mut Sleep>, at: Instant) {
        heartbeat.reset(at);
        self.heartbeat_at = at;
        self.heartbeat_armed = false;
    }

    /// Looks at what can wake the loop, in order (writes first, so that a
    /// client that reads slowly is not fed faster than it reads), and
    /// says which is ready; each source not ready holds this task's waker.
    fn poll_wake(&mut self, heartbeat: &mut Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<Wake> {
        let just_read = std::mem::take(&mut self.just_read);
        // Only looked at here: the task registers with the outbox's signal
        // last, once nothing else is ready. A turn that ends on the socket
        // (every request's) would otherwise register it for nothing, which
        // costs two atomic read-modify-writes.
        if self.outbox().signalled() {
            return Poll::Ready(Wake::Write);
        }
        if let Poll::Ready(Some(answer)) = self.in_flight.poll_next(cx) {
            return Poll::Ready(Wake::Answer(answer));
        }
        let draining = self.draining;
        if !draining && self.hub.is_shutting_down() {
            return Poll::Ready(Wake::ShutdownStarted);
        }
        // The socket comes before the heartbeat, except when the timer was
        // just set (it registers this task on its first poll) or a read
        // has found the clock past its deadline: a client that keeps the
        // socket readable would otherwise never let the loop see its timer
        // fire, nor be pinged.
        if (!self.heartbeat_armed || self.caller.received_at >= self.heartbeat_at)
            && self.poll_heartbeat(heartbeat, cx).is_ready()
        {
            return Poll::Ready(Wake::Heartbeat);
        }
        // The socket's own reader slot, rather than `readable()`, which
        // links and unlinks a waiter in a list on every turn.
        if !draining
            && self.in_flight.len() < self.hub.config.max_in_flight_per_connection
            && let Poll::Ready(ready) = self.socket.poll_read_ready(cx)
        {
            return Poll::Ready(Wake::Readable(ready));
        }
        // A timer fires at its deadline or later, never earlier: read from
        // the clock before it in this poll of the task, the timer cannot
        // have fired before that read; and should it fire since, it wakes
        // this task, whose next poll looks at it. Decided on the session's
        // own fields, before anything of the timer is read.
        let cannot_have_fired =
            self.heartbeat_armed && just_read && self.caller.received_at < self.heartbeat_at;
        if !cannot_have_fired && self.poll_heartbeat(heartbeat, cx).is_ready() {
            return Poll::Ready(Wake::Heartbeat);
        }
        // A signal raised since the look above is seen here, and one raised
        // after this registers wakes the task.
        if self.outbox().poll_wait(cx).is_ready() {
            return Poll::Ready(Wake::Write);
        }
        Poll::Pending
    }

    /// Whether the heartbeat timer fired.
    fn poll_heartbeat(
        &mut self,
        heartbeat: &mut Pin<&mut Sleep>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.heartbeat_armed && !heartbeat.is_elapsed() {
            return Poll::Pending;
        }
        // Polled outside the task's coop budget. Under a client's flood of
        // frames the socket is found not ready once reads have spent the
        // budget, and a timer polled within it then never returns ready
        // (its pings stopped: `a_client_that_floods_still_gets_its_pings`),
        // nor, set anew, registers this task while `heartbeat_armed` says
        // it did.
        let fired = std::pin::pin!(unconstrained(heartbeat.as_mut())).poll(cx);
        self.heartbeat_armed = fired.is_pending();
        fired
    }

    /// Reads what the socket has and handles it. Frames are handled where
    /// they were read, in the thread's read buffer, until one has to wait
    /// (on the engine or on presence): that one and those behind it are
    /// copied to `incoming` and handled, in order, at the top of the loop.
    /// Returns how the session ends, if it does.
    fn read(&mut self) -> Option<End> {
        let Session {
            hub,
            handle,
            socket,
            parser,
            incoming,
            in_flight,
            caller,
            just_read,
            corked,
            limits,
            ..
        } = self;
        let outbox = handle.outbox();
        let max_message_bytes = hub.config.max_message_bytes;
        let mut end = None;
        // The clock is read once per read, before its first frame is
        // handled: that time is the requests' in the retry window too.
        let mut stamped = false;
        let read = read_in_place(socket, parser, max_message_bytes, |message, more| {
            if !stamped {
                caller.received_at = Instant::now();
                stamped = true;
            }
            if more && !*corked {
                outbox.hold();
                *corked = true;
            }
            if end.is_some() {
                return;
            }
            if !incoming.is_empty() || !answered_at_once(&message) {
                incoming.push(message.to_incoming());
                return;
            }
            match on_message(hub, handle, caller, limits, in_flight, message) {
                Ok(None) => {}
                Ok(Some(ended)) => end = Some(ended),
                // Not reached (see `answered_at_once`); were it, the
                // frame would be handled again from a copy, its
                // request counted twice against the rate limit.
                Err(_) => incoming.push(message.to_incoming()),
            }
        });
        if end.is_some() {
            return end;
        }
        match read {
            Ok(Read::Data) => {
                if !stamped {
                    caller.received_at = Instant::now();
                }
                *just_read = true;
                None
            }
            Ok(Read::Nothing) => None,
            Ok(Read::Eof) => Some(End::Failed),
            Err(ReadError::Io(e)) => {
                tracing::debug!(client = %handle.id(), error = %e, "read failed");
                Some(End::Failed)
            }
            Err(ReadError::Wire(e)) => Some(End::from_wire(e)),
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
            if !limits.requests.take(request_rate(&hub.config)) {
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
            if !limits.requests.take(request_rate(&hub.config)) {
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
    if limits.invalid.take(invalid_frame_rate(&hub.config)) {
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
    /// Closes a connection drained for a shutdown: the client reconnects.
    fn drained() -> Self {
        End::close(close::SERVICE_RESTART, "server shutting down", true)
    }

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
