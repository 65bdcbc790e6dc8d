//! The background task that owns the socket: connects, keeps the session
//! (heartbeat answers, watchdog), settles pending requests, dispatches
//! deliveries to subscribers, and reconnects with backoff unless the server
//! said "stop".

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use parking_lot::Mutex;
use pubsub_protocol::client_frame::PONG_FRAME;
use pubsub_protocol::{
    CloseAdvice, ErrorCode, ErrorFrame, MessageId, OutgoingFrame, Presence, SUBPROTOCOL_JSON_V1,
    ServerFrame, Topic, Welcome, close_advice, decode_server_frame, events,
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

pub(crate) enum Command {
    Send { id: MessageId, text: String },
    Close,
}

/// State shared between the client handles and the driver.
pub(crate) struct Shared {
    pub(crate) config: ClientConfig,
    pub(crate) url: url::Url,
    /// How `wss://` connections are encrypted; `None` for `ws://`.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<tokio_tungstenite::Connector>,
    pub(crate) registry: SharedRegistry,
    /// Callers waiting per message id (several when a request is retried
    /// while its first attempt is still pending; all get the same outcome).
    pub(crate) pending: Mutex<HashMap<MessageId, Vec<oneshot::Sender<Settled>>>>,
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
    /// Registers a caller waiting for the answer to `id`.
    pub(crate) fn register(&self, id: &MessageId) -> oneshot::Receiver<Settled> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().entry(id.clone()).or_default().push(tx);
        rx
    }

    pub(crate) fn settle(&self, id: &MessageId, settled: Settled) {
        let waiters = self.pending.lock().remove(id).unwrap_or_default();
        for tx in waiters {
            let _ = tx.send(settled.clone());
        }
    }

    /// Forgets waiters that gave up (timed out), so the map cannot grow.
    pub(crate) fn forget_abandoned(&self, id: &MessageId) {
        let mut pending = self.pending.lock();
        if let Some(waiters) = pending.get_mut(id) {
            waiters.retain(|tx| !tx.is_closed());
            if waiters.is_empty() {
                pending.remove(id);
            }
        }
    }

    fn fail_all(&self, code: ErrorCode, message: &'static str) {
        let pending = std::mem::take(&mut *self.pending.lock());
        for tx in pending.into_values().flatten() {
            let _ = tx.send(Settled::Local(code, message));
        }
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
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut first_outcome: Option<oneshot::Sender<Result<(), ConnectError>>>,
) {
    let policy = shared.config.reconnect;
    let mut attempt: u32 = 0;
    loop {
        shared.set_status(Status::Connecting);
        let connecting = connect_once(&shared);
        tokio::pin!(connecting);
        let result = loop {
            tokio::select! {
                result = &mut connecting => break Some(result),
                command = commands.recv() => match command {
                    None | Some(Command::Close) => break None,
                    Some(Command::Send { id, .. }) => {
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
                let end = session(&shared, ws, &welcome, &mut commands).await;
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
                    Some(Command::Send { id, .. }) => {
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
    if resubscribe(shared, &mut ws).await.is_err() {
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
                Some(Command::Send { id, text }) => {
                    // Batch whatever else is already queued into one flush.
                    let mut batch = vec![(id, text)];
                    while batch.len() < 64 {
                        match commands.try_recv() {
                            Ok(Command::Send { id, text }) => batch.push((id, text)),
                            Ok(Command::Close) => {
                                let _ = ws.close(None).await;
                                return SessionEnd::ClosedByClient;
                            }
                            Err(_) => break,
                        }
                    }
                    if let Err(end) = write_batch(shared, &mut ws, batch).await {
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

async fn write_batch(
    shared: &Shared,
    ws: &mut Socket,
    batch: Vec<(MessageId, String)>,
) -> Result<(), SessionEnd> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut result = Ok(());
    for (id, text) in batch {
        ids.push(id);
        if result.is_ok() {
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
/// anything else is sent. Their answers are applied as they arrive.
async fn resubscribe(shared: &Arc<Shared>, ws: &mut Socket) -> Result<(), ()> {
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
        let rx = shared.register(&id);
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
        let rx = shared.register(&id);
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
    for frame in frames {
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
