//! The background task that owns the socket: connects, keeps the session
//! (heartbeat answers, watchdog), settles pending requests, dispatches
//! deliveries to subscribers, and reconnects with backoff unless the server
//! said "stop".

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use parking_lot::Mutex;
use pubsub_protocol::client_frame::PONG_FRAME;
use pubsub_protocol::{
    CloseAdvice, ErrorCode, ErrorFrame, MAX_RECEIVED, MessageId, OutgoingFrame, Presence,
    SUBPROTOCOL_JSON_V1, ServerFrame, Topic, Welcome, close_advice, decode_server_frame, events,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, http::Request};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::ClientConfig;
use crate::error::ConnectError;
use crate::presence::PresenceBook;
use crate::status::Status;
use crate::subscriptions::{Incoming, SharedRegistry, dispatch};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// System event emitted locally whenever `status()` changes.
pub const STATUS_CHANGE: &str = "@pubsub/STATUS_CHANGE";

/// How a request settled.
#[derive(Clone)]
pub(crate) enum Settled {
    Ack(Value),
    Error(ErrorFrame),
    Local(ErrorCode, &'static str),
}

/// A frame for the driver to write.
pub(crate) struct Outbound {
    pub(crate) id: MessageId,
    pub(crate) text: String,
    /// A request frame, which may report acks (`received`); `activity` may not.
    pub(crate) request: bool,
}

pub(crate) enum Command {
    Send(Outbound),
    Close,
}

/// Most acked ids kept for reporting. The server's retry window holds a few
/// hundred outcomes per user, so older ones have gone from it anyway; the
/// bound keeps a client that gets acks but stops sending from growing it.
const MAX_QUEUED_RECEIVED: usize = 1024;

/// What `received` adds to a request frame before its ids: the frame's
/// closing brace gives way to this, the ids, and `]}`.
const RECEIVED_MEMBER: &str = r#","received":["#;

/// The callers waiting for the answer to one message id.
#[derive(Default)]
pub(crate) struct Waiting {
    /// Several when a request is retried while an earlier attempt is still
    /// out; all get the first answer.
    callers: Vec<oneshot::Sender<Settled>>,
    /// Frames with this id sent (or queued to be) and not answered yet.
    /// While one is out the server must still know the id, or it would
    /// process that frame again instead of replaying the outcome: the id
    /// is reported only once this is back to 0.
    unanswered: usize,
    /// An ack reached a caller. One that gave up (timed out) never learnt
    /// of it and may retry, so an ack nobody took is not reported.
    acked: bool,
    /// The server keeps the outcome (messaging requests): only those are
    /// worth reporting.
    remembered: bool,
}

/// State shared between the client handles and the driver.
pub(crate) struct Shared {
    pub(crate) config: ClientConfig,
    pub(crate) url: url::Url,
    /// How `wss://` connections are encrypted; `None` for `ws://`.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<tokio_tungstenite::Connector>,
    pub(crate) registry: SharedRegistry,
    /// Requests waiting for their answers, by message id.
    pub(crate) pending: Mutex<HashMap<MessageId, Waiting>>,
    /// Acked ids the server has not been told of yet (docs/protocol.md
    /// 2.2.1), oldest first. Kept across reconnects: the retry window is the
    /// user's, not the connection's.
    pub(crate) received: Mutex<VecDeque<MessageId>>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) session: Mutex<Option<Welcome>>,
    pub(crate) last_close: Mutex<Option<(u16, String)>>,
    /// Whether this client reports itself active (sent again on reconnect).
    pub(crate) active: AtomicBool,
    /// The user's presence as last reported by the server.
    pub(crate) own_presence: Mutex<Option<Presence>>,
    pub(crate) watched: Mutex<PresenceBook>,
    pub(crate) topics: Mutex<BTreeSet<Topic>>,
}

impl Shared {
    /// Registers a caller waiting for the answer to `id`, whose frame is
    /// about to be queued; `remembered` if the server keeps its outcome.
    pub(crate) fn register(&self, id: &MessageId, remembered: bool) -> oneshot::Receiver<Settled> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock();
        let waiting = pending.entry(id.clone()).or_default();
        waiting.callers.push(tx);
        waiting.unanswered += 1;
        waiting.remembered |= remembered;
        rx
    }

    /// Settles one frame with id `id`: its answer arrived, or it will never
    /// be sent. Every caller still waiting gets `settled`.
    pub(crate) fn settle(&self, id: &MessageId, settled: Settled) {
        let report = {
            let mut pending = self.pending.lock();
            let Some(waiting) = pending.get_mut(id) else {
                return;
            };
            waiting.unanswered = waiting.unanswered.saturating_sub(1);
            let ack = matches!(settled, Settled::Ack(_));
            for tx in waiting.callers.drain(..) {
                if tx.send(settled.clone()).is_ok() && ack {
                    waiting.acked = true;
                }
            }
            if waiting.unanswered > 0 {
                return;
            }
            let report = waiting.acked && waiting.remembered;
            pending.remove(id);
            report
        };
        if report {
            let mut queue = self.received.lock();
            if queue.len() >= MAX_QUEUED_RECEIVED {
                queue.pop_front();
            }
            queue.push_back(id.clone());
        }
    }

    /// Forgets waiters that gave up (timed out), so the map cannot grow. The
    /// entry itself stays while its frame is unanswered: a retry must not
    /// get the id reported before the server has answered every attempt.
    pub(crate) fn forget_abandoned(&self, id: &MessageId) {
        let mut pending = self.pending.lock();
        if let Some(waiting) = pending.get_mut(id) {
            waiting.callers.retain(|tx| !tx.is_closed());
            if waiting.callers.is_empty() && waiting.unanswered == 0 {
                pending.remove(id);
            }
        }
    }

    /// Fails every waiting caller. Acks that reached a caller but still had
    /// an attempt unanswered are never reported: best effort, the server
    /// forgets them at the end of its window.
    fn fail_all(&self, code: ErrorCode, message: &'static str) {
        let pending = std::mem::take(&mut *self.pending.lock());
        for tx in pending.into_values().flat_map(|waiting| waiting.callers) {
            let _ = tx.send(Settled::Local(code, message));
        }
    }

    /// Reports the oldest queued acks on `frame`, a request as
    /// [`OutgoingFrame::encode`] writes it without `received`: at most
    /// [`MAX_RECEIVED`], and only as many as keep it within `limit` bytes
    /// (the server closes the connection on a larger frame). The rest wait
    /// for the next requests.
    pub(crate) fn attach_received(&self, frame: &mut String, limit: usize) {
        if !frame.ends_with('}') {
            return;
        }
        let room = limit.saturating_sub(frame.len() + RECEIVED_MEMBER.len() + 1);
        let mut list = String::new();
        {
            let mut queue = self.received.lock();
            let mut count = 0;
            while count < MAX_RECEIVED {
                let Some(id) = queue.front() else { break };
                // Ids may hold quotes or backslashes: serde escapes them.
                let Ok(quoted) = serde_json::to_string(id) else {
                    queue.pop_front();
                    continue;
                };
                let separator = usize::from(count > 0);
                if list.len() + separator + quoted.len() > room {
                    break;
                }
                if count > 0 {
                    list.push(',');
                }
                list.push_str(&quoted);
                queue.pop_front();
                count += 1;
            }
        }
        if list.is_empty() {
            return;
        }
        frame.pop();
        frame.push_str(RECEIVED_MEMBER);
        frame.push_str(&list);
        frame.push_str("]}");
    }

    /// Sets the reported status and, if it changed, emits the one
    /// `@pubsub/STATUS_CHANGE` subscribers see for it (with the user's
    /// presence when connected).
    fn set_status(&self, status: Status) {
        let previous = self.status.send_replace(status);
        if previous != status {
            let mut event = json!({
                "type": STATUS_CHANGE,
                "status": status,
                "previousStatus": previous,
            });
            if status.is_connected()
                && let Some(presence) = self.own_presence.lock().as_ref()
            {
                event["presence"] = json!(presence);
            }
            dispatch(
                &self.registry,
                &Incoming {
                    action: event,
                    id: None,
                    via: None,
                    from: None,
                },
            );
        }
    }

    /// Takes the user's presence from the server if it is newer.
    fn own_presence_changed(&self, presence: Presence) {
        {
            let mut own = self.own_presence.lock();
            if own
                .as_ref()
                .is_some_and(|held| held.version >= presence.version)
            {
                return;
            }
            *own = Some(presence);
        }
        let connected = self.status.borrow().is_connected();
        if connected {
            // Computed first: set_status locks own_presence itself.
            let status = Status::of_connected(self.own_presence.lock().as_ref());
            self.set_status(status);
        }
    }
}

/// Why one connection attempt failed.
enum AttemptError {
    Refused { code: u16, reason: String },
    Transport(String),
    Timeout,
}

impl From<AttemptError> for ConnectError {
    fn from(e: AttemptError) -> Self {
        match e {
            AttemptError::Refused { code, reason } => ConnectError::Refused { code, reason },
            AttemptError::Transport(e) => ConnectError::Transport(e),
            AttemptError::Timeout => ConnectError::Timeout,
        }
    }
}

enum SessionEnd {
    /// The application closed the client.
    ClosedByClient,
    /// The server closed with a code.
    Closed { code: u16, reason: String },
    /// The connection dropped or went silent.
    Lost,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    first_outcome: Option<oneshot::Sender<Result<(), ConnectError>>>,
) {
    drive(&shared, commands, first_outcome).await;
    // Nothing is written any more; reporting is best effort, so what is
    // still queued is dropped.
    shared.received.lock().clear();
}

async fn drive(
    shared: &Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut first_outcome: Option<oneshot::Sender<Result<(), ConnectError>>>,
) {
    let policy = shared.config.reconnect;
    let mut attempt: u32 = 0;
    loop {
        shared.set_status(Status::Connecting);
        let connecting = connect_once(shared);
        tokio::pin!(connecting);
        let result = loop {
            tokio::select! {
                result = &mut connecting => break Some(result),
                command = commands.recv() => match command {
                    None | Some(Command::Close) => break None,
                    Some(Command::Send(Outbound { id, .. })) => {
                        shared.settle(&id, Settled::Local(ErrorCode::NotConnected, "not connected"));
                    }
                },
            }
        };
        let Some(result) = result else {
            shared.set_status(Status::Offline);
            return;
        };

        let stop = match result {
            Ok((ws, welcome)) => {
                attempt = 0;
                *shared.session.lock() = Some(welcome.clone());
                *shared.own_presence.lock() = welcome.presence.clone();
                shared.set_status(Status::of_connected(welcome.presence.as_ref()));
                // Only now is the client usable: `connect` returns after this.
                if let Some(tx) = first_outcome.take() {
                    let _ = tx.send(Ok(()));
                }
                let end = session(shared, ws, &welcome, &mut commands).await;
                *shared.session.lock() = None;
                shared.fail_all(
                    ErrorCode::Disconnected,
                    "the connection closed before the request settled",
                );
                match end {
                    SessionEnd::ClosedByClient => true,
                    SessionEnd::Closed { code, reason } => {
                        tracing::info!(code, %reason, "server closed the connection");
                        *shared.last_close.lock() = Some((code, reason));
                        close_advice(code) == CloseAdvice::Stop
                    }
                    SessionEnd::Lost => false,
                }
            }
            Err(e) => {
                let stop = match &e {
                    AttemptError::Refused { code, reason } => {
                        *shared.last_close.lock() = Some((*code, reason.clone()));
                        close_advice(*code) == CloseAdvice::Stop
                    }
                    AttemptError::Transport(message) => {
                        tracing::debug!(error = %message, "connection attempt failed");
                        false
                    }
                    AttemptError::Timeout => false,
                };
                if let Some(tx) = first_outcome.take() {
                    let _ = tx.send(Err(e.into()));
                }
                stop
            }
        };
        if stop || !policy.enabled {
            shared.set_status(Status::Offline);
            return;
        }

        // Wait before the next attempt, failing sends made meanwhile.
        shared.set_status(Status::Connecting);
        let wait = sleep(policy.delay(attempt));
        attempt = attempt.saturating_add(1);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                command = commands.recv() => match command {
                    None | Some(Command::Close) => {
                        shared.set_status(Status::Offline);
                        return;
                    }
                    Some(Command::Send(Outbound { id, .. })) => {
                        shared.settle(&id, Settled::Local(ErrorCode::NotConnected, "not connected"));
                    }
                },
            }
        }
    }
}

fn handshake_request(shared: &Shared) -> Result<Request<()>, String> {
    let mut request = shared
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if !shared.active.load(Ordering::Relaxed) {
        let mut url = shared.url.clone();
        url.query_pairs_mut().append_pair("active", "false");
        request = url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
    }
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL_JSON_V1),
    );
    if let Some(token) = &shared.config.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
        headers.insert("Authorization", value);
    }
    Ok(request)
}

async fn connect_once(shared: &Shared) -> Result<(Socket, Welcome), AttemptError> {
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(shared.config.max_message_bytes))
        .max_frame_size(Some(shared.config.max_message_bytes));
    let attempt = async {
        let request = handshake_request(shared).map_err(AttemptError::Transport)?;
        #[cfg(feature = "tls")]
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            shared.tls.clone(),
        );
        #[cfg(not(feature = "tls"))]
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let (mut ws, _response) = connecting
            .await
            .map_err(|e| AttemptError::Transport(e.to_string()))?;
        // The first frame is `welcome`, or a close frame saying why not.
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match decode_server_frame(&text) {
                    Ok(ServerFrame::Welcome(welcome)) => return Ok((ws, welcome)),
                    Ok(_) | Err(_) => {
                        return Err(AttemptError::Transport(format!(
                            "expected welcome, got {}",
                            text.chars().take(80).collect::<String>()
                        )));
                    }
                },
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = close_parts(frame);
                    return Err(AttemptError::Refused { code, reason });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(AttemptError::Transport(e.to_string())),
                None => return Err(AttemptError::Transport("connection closed".into())),
            }
        }
    };
    timeout(shared.config.connect_timeout, attempt)
        .await
        .unwrap_or(Err(AttemptError::Timeout))
}

fn close_parts(frame: Option<CloseFrame>) -> (u16, String) {
    match frame {
        Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
        // 1005: no status code was present.
        None => (1005, String::new()),
    }
}

async fn session(
    shared: &Arc<Shared>,
    mut ws: Socket,
    welcome: &Welcome,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> SessionEnd {
    // The server pings every heartbeat_ms; silence beyond heartbeat_ms +
    // heartbeat_timeout_ms means it (or the path to it) is gone.
    let silence_limit = Duration::from_millis(welcome.heartbeat_ms + welcome.heartbeat_timeout_ms);
    let frame_limit = welcome.limits.max_message_bytes;
    if resubscribe(shared, &mut ws, frame_limit).await.is_err() {
        return SessionEnd::Lost;
    }
    let mut last_inbound = Instant::now();
    let watchdog = sleep(silence_limit);
    tokio::pin!(watchdog);

    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None | Some(Command::Close) => {
                    let frame = CloseFrame { code: 1000.into(), reason: "client closed".into() };
                    let _ = timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
                    return SessionEnd::ClosedByClient;
                }
                Some(Command::Send(outbound)) => {
                    // Batch whatever else is already queued into one flush.
                    let mut batch = vec![outbound];
                    while batch.len() < 64 {
                        match commands.try_recv() {
                            Ok(Command::Send(outbound)) => batch.push(outbound),
                            Ok(Command::Close) => {
                                let _ = ws.close(None).await;
                                return SessionEnd::ClosedByClient;
                            }
                            Err(_) => break,
                        }
                    }
                    if let Err(end) = write_batch(shared, &mut ws, batch, frame_limit).await {
                        return end;
                    }
                }
            },
            message = ws.next() => {
                last_inbound = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        if on_text(shared, &text) && ws.send(Message::text(PONG_FRAME)).await.is_err() {
                            return SessionEnd::Lost;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = close_parts(frame);
                        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                        return SessionEnd::Closed { code, reason };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "connection lost");
                        return SessionEnd::Lost;
                    }
                    None => return SessionEnd::Lost,
                }
            }
            () = &mut watchdog => {
                if last_inbound.elapsed() >= silence_limit {
                    tracing::info!("no frame from the server within the heartbeat bound; reconnecting");
                    return SessionEnd::Lost;
                }
                watchdog.as_mut().reset(last_inbound + silence_limit);
            }
        }
    }
}

/// Writes `batch`, reporting queued acks on its requests as they go out
/// (never over `limit`, the server's largest frame). Ids taken for a write
/// that fails are lost with the connection: reporting is best effort.
async fn write_batch(
    shared: &Shared,
    ws: &mut Socket,
    batch: Vec<Outbound>,
    limit: usize,
) -> Result<(), SessionEnd> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut result = Ok(());
    for Outbound {
        id,
        mut text,
        request,
    } in batch
    {
        ids.push(id);
        if result.is_ok() {
            if request {
                shared.attach_received(&mut text, limit);
            }
            result = ws.feed(Message::text(text)).await;
        }
    }
    if result.is_ok() {
        result = ws.flush().await;
    }
    match result {
        Ok(()) => Ok(()),
        Err(_) => {
            for id in &ids {
                shared.settle(
                    id,
                    Settled::Local(
                        ErrorCode::Disconnected,
                        "the connection failed while sending",
                    ),
                );
            }
            Err(SessionEnd::Lost)
        }
    }
}

/// Re-establishes watches and topic memberships on a new connection, before
/// anything else is sent. Their answers are applied as they arrive. Being
/// requests, they also report the acks still queued from before.
async fn resubscribe(shared: &Arc<Shared>, ws: &mut Socket, limit: usize) -> Result<(), ()> {
    let watched = {
        let mut book = shared.watched.lock();
        book.reset();
        book.users()
    };
    let topics: Vec<Topic> = shared.topics.lock().iter().cloned().collect();
    if watched.is_empty() && topics.is_empty() {
        return Ok(());
    }
    let mut frames = Vec::new();
    for chunk in watched.chunks(pubsub_protocol::limits::DEFAULT_MAX_USERS_PER_REQUEST) {
        let id = internal_id();
        let rx = shared.register(&id, false);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Ok(Settled::Ack(result)) = rx.await {
                shared.watched.lock().offer_all(&result);
            }
        });
        frames.push(
            OutgoingFrame {
                kind: "watch",
                id: Some(&id),
                users: Some(chunk),
                ..OutgoingFrame::default()
            }
            .encode(),
        );
    }
    for topic in topics {
        let id = internal_id();
        let rx = shared.register(&id, false);
        let shared = shared.clone();
        let name = topic.clone();
        tokio::spawn(async move {
            if let Ok(Settled::Error(e)) = rx.await
                && !e.retryable
            {
                tracing::warn!(topic = %name, code = e.code, "could not re-join topic; forgetting it");
                shared.topics.lock().remove(&name);
            }
        });
        frames.push(
            OutgoingFrame {
                kind: "join",
                id: Some(&id),
                topic: Some(&topic),
                ..OutgoingFrame::default()
            }
            .encode(),
        );
    }
    for mut frame in frames {
        shared.attach_received(&mut frame, limit);
        ws.feed(Message::text(frame)).await.map_err(|_| ())?;
    }
    ws.flush().await.map_err(|_| ())
}

/// Ids for the client's own bookkeeping requests.
fn internal_id() -> MessageId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    MessageId::new(format!("internal-{:08x}-{n}", fastrand::u32(..)))
        .unwrap_or_else(|_| unreachable!("internal ids are short ASCII"))
}

/// Handles one frame from the server. Returns true if it was a heartbeat
/// `ping` that needs a `pong`.
fn on_text(shared: &Shared, text: &str) -> bool {
    match decode_server_frame(text) {
        Ok(ServerFrame::Message(delivery)) => {
            dispatch(
                &shared.registry,
                &Incoming {
                    action: delivery.action,
                    id: Some(delivery.id),
                    via: Some(delivery.via),
                    from: delivery.from,
                },
            );
            false
        }
        Ok(ServerFrame::Ack(ack)) => {
            shared.settle(&ack.id, Settled::Ack(ack.result));
            false
        }
        Ok(ServerFrame::Error(error)) => {
            match error.id.clone() {
                Some(id) => shared.settle(&id, Settled::Error(error)),
                None => tracing::warn!(code = error.code, message = %error.message, "server error"),
            }
            false
        }
        Ok(ServerFrame::Event(event)) => {
            let ty = event
                .action
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("");
            if ty == STATUS_CHANGE {
                // Re-emitted by set_status as this client's own status change.
                if let Ok(presence) = serde_json::from_value::<Presence>(event.action) {
                    shared.own_presence_changed(presence);
                }
                return false;
            }
            if ty == events::PRESENCE_CHANGE
                && let Ok(presence) = serde_json::from_value::<Presence>(event.action.clone())
                && !shared.watched.lock().offer(presence)
            {
                // Not newer than what we hold (or no longer watched): drop it.
                return false;
            }
            dispatch(
                &shared.registry,
                &Incoming {
                    action: event.action,
                    id: None,
                    via: None,
                    from: None,
                },
            );
            false
        }
        Ok(ServerFrame::Ping) => true,
        Ok(ServerFrame::Pong(_) | ServerFrame::Welcome(_) | ServerFrame::Unknown) => false,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable frame from the server");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pubsub_protocol::{ClientFrame, DecodeLimits, UserId, decode_client_frame};
    use serde_json::value::RawValue;

    fn shared() -> Shared {
        let config = ClientConfig::new("ws://127.0.0.1:1");
        Shared {
            url: url::Url::parse(&config.endpoint).unwrap(),
            config,
            #[cfg(feature = "tls")]
            tls: None,
            registry: SharedRegistry::default(),
            pending: Mutex::default(),
            received: Mutex::default(),
            status: watch::channel(Status::Connecting).0,
            session: Mutex::new(None),
            last_close: Mutex::new(None),
            active: AtomicBool::new(true),
            own_presence: Mutex::new(None),
            watched: Mutex::default(),
            topics: Mutex::default(),
        }
    }

    fn id(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    fn ack() -> Settled {
        Settled::Ack(json!({"delivered": 1}))
    }

    fn error(retryable: bool) -> Settled {
        Settled::Error(ErrorFrame {
            id: None,
            code: 2001,
            name: "handler_error".into(),
            message: "no".into(),
            retryable,
            data: None,
        })
    }

    /// A request frame as the client encodes it, then as it goes out.
    fn written(shared: &Shared, limit: usize) -> String {
        let mut frame = request_frame(&[]);
        shared.attach_received(&mut frame, limit);
        frame
    }

    fn request_frame(received: &[MessageId]) -> String {
        let action = RawValue::from_string(r#"{"type":"T"}"#.into()).unwrap();
        OutgoingFrame {
            kind: "sendToServer",
            id: Some(&id("next")),
            action: Some(&action),
            received,
            ..OutgoingFrame::default()
        }
        .encode()
    }

    /// The ids a written frame reports, as the server decodes them.
    fn reported(frame: &str) -> Vec<String> {
        let limits = DecodeLimits {
            max_recipients: 100,
            max_users_per_request: 100,
        };
        match decode_client_frame(frame, &limits) {
            Ok(ClientFrame::Request(request, received)) => {
                assert_eq!(request.id().as_str(), "next", "{frame}");
                received.iter().map(str::to_owned).collect()
            }
            other => panic!("{frame}: {other:?}"),
        }
    }

    /// Sends one frame with `id` and answers it with `settled`.
    fn answered(shared: &Shared, id: &MessageId, remembered: bool, settled: Settled) -> Settled {
        let mut rx = shared.register(id, remembered);
        shared.settle(id, settled);
        rx.try_recv().expect("the caller got the answer")
    }

    #[test]
    fn an_acked_request_is_reported_on_the_next_request_and_only_once() {
        let shared = shared();
        assert!(matches!(
            answered(&shared, &id("a-1"), true, ack()),
            Settled::Ack(_)
        ));
        let frame = written(&shared, usize::MAX);
        // Exactly what OutgoingFrame writes when given the list itself.
        assert_eq!(frame, request_frame(&[id("a-1")]));
        assert_eq!(reported(&frame), ["a-1"]);
        assert_eq!(written(&shared, usize::MAX), request_frame(&[]));
    }

    #[test]
    fn errors_control_requests_and_acks_nobody_took_are_not_reported() {
        let shared = shared();
        answered(&shared, &id("refused"), true, error(false));
        answered(&shared, &id("busy"), true, error(true));
        answered(&shared, &id("join"), false, ack());
        // The caller timed out: it holds an error it may retry.
        let rx = shared.register(&id("late"), true);
        drop(rx);
        shared.forget_abandoned(&id("late"));
        shared.settle(&id("late"), ack());
        assert_eq!(written(&shared, usize::MAX), request_frame(&[]));

        // A retry of the failed one that is acked is reported.
        answered(&shared, &id("busy"), true, ack());
        assert_eq!(reported(&written(&shared, usize::MAX)), ["busy"]);
    }

    #[test]
    fn an_id_is_reported_only_after_every_attempt_is_answered() {
        let shared = shared();
        let a = id("a");
        // Sent twice before the first answer: both callers get it, but the
        // second frame must still find the outcome on the server.
        let mut first = shared.register(&a, true);
        let mut second = shared.register(&a, true);
        shared.settle(&a, ack());
        assert!(matches!(first.try_recv(), Ok(Settled::Ack(_))));
        assert!(matches!(second.try_recv(), Ok(Settled::Ack(_))));
        assert!(reported(&written(&shared, usize::MAX)).is_empty());
        shared.settle(&a, ack());
        assert_eq!(reported(&written(&shared, usize::MAX)), ["a"]);

        // Timed out, then retried: the first attempt's late ack reaches the
        // retry, and the id waits for the retry's own answer.
        let b = id("b");
        drop(shared.register(&b, true));
        shared.forget_abandoned(&b);
        let mut retry = shared.register(&b, true);
        shared.settle(&b, ack());
        assert!(matches!(retry.try_recv(), Ok(Settled::Ack(_))));
        assert!(reported(&written(&shared, usize::MAX)).is_empty());
        shared.settle(&b, ack());
        assert_eq!(reported(&written(&shared, usize::MAX)), ["b"]);
    }

    #[test]
    fn at_most_max_received_per_frame_oldest_first_the_rest_on_the_next() {
        let shared = shared();
        let ids: Vec<String> = (0..100).map(|i| format!("m-{i}")).collect();
        for i in &ids {
            answered(&shared, &id(i), true, ack());
        }
        assert_eq!(reported(&written(&shared, usize::MAX)), ids[..MAX_RECEIVED]);
        assert_eq!(reported(&written(&shared, usize::MAX)), ids[MAX_RECEIVED..]);
        assert!(reported(&written(&shared, usize::MAX)).is_empty());
    }

    #[test]
    fn reports_keep_the_frame_within_the_servers_limit() {
        let shared = shared();
        for i in ["x-1", "x-2", "x-3"] {
            answered(&shared, &id(i), true, ack());
        }
        let bare = request_frame(&[]).len();
        // No room: the frame goes as it is and the ids wait.
        assert_eq!(written(&shared, bare), request_frame(&[]));
        let two = request_frame(&[id("x-1"), id("x-2")]);
        let frame = written(&shared, two.len() + 5);
        assert_eq!(frame, two);
        assert_eq!(reported(&written(&shared, usize::MAX)), ["x-3"]);
    }

    #[test]
    fn ids_are_escaped_and_frames_of_every_request_kind_match_the_encoder() {
        let shared = shared();
        let odd = id(r#"q"u\o/te é"#);
        answered(&shared, &odd, true, ack());
        let topic = Topic::new("room").unwrap();
        let users = [UserId::new("bob").unwrap()];
        let join = |received| {
            OutgoingFrame {
                kind: "join",
                id: Some(&id("next")),
                topic: Some(&topic),
                received,
                ..OutgoingFrame::default()
            }
            .encode()
        };
        let mut frame = join(&[]);
        shared.attach_received(&mut frame, usize::MAX);
        assert_eq!(frame, join(std::slice::from_ref(&odd)));
        assert_eq!(reported(&frame), [odd.as_str()]);

        answered(&shared, &id("w"), true, ack());
        let watch = |received| {
            OutgoingFrame {
                kind: "watch",
                id: Some(&id("next")),
                users: Some(&users),
                received,
                ..OutgoingFrame::default()
            }
            .encode()
        };
        let mut frame = watch(&[]);
        shared.attach_received(&mut frame, usize::MAX);
        assert_eq!(frame, watch(&[id("w")]));
    }

    #[test]
    fn queued_ids_outlive_a_lost_connection_but_unfinished_ones_do_not() {
        let shared = shared();
        answered(&shared, &id("done"), true, ack());
        let a = id("twice");
        let _first = shared.register(&a, true);
        let _second = shared.register(&a, true);
        shared.settle(&a, ack());
        shared.fail_all(ErrorCode::Disconnected, "lost");
        // The second attempt's answer never comes: `twice` is not reported.
        shared.settle(&a, ack());
        assert_eq!(reported(&written(&shared, usize::MAX)), ["done"]);
        assert!(shared.pending.lock().is_empty());
    }

    #[test]
    fn the_queue_is_bounded_and_drops_the_oldest() {
        let shared = shared();
        for i in 0..MAX_QUEUED_RECEIVED + 10 {
            answered(&shared, &id(&format!("m-{i}")), true, ack());
        }
        let queue = shared.received.lock();
        assert_eq!(queue.len(), MAX_QUEUED_RECEIVED);
        assert_eq!(queue.front().map(MessageId::as_str), Some("m-10"));
    }
}
