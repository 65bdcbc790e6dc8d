//! The background task that owns the socket: connects, keeps the session
//! (heartbeat answers, watchdog), settles pending requests, dispatches
//! deliveries to subscribers, and reconnects with backoff unless the server
//! said "stop".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use parking_lot::Mutex;
use pubsub_protocol::client_frame::PONG_FRAME;
use pubsub_protocol::{
    CloseAdvice, ErrorCode, ErrorFrame, MessageId, SUBPROTOCOL_JSON_V1, ServerFrame, Welcome,
    close_advice, decode_server_frame,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, http::Request};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use crate::config::ClientConfig;
use crate::error::ConnectError;
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
    pub(crate) registry: SharedRegistry,
    /// Callers waiting per message id (several when a request is retried
    /// while its first attempt is still pending; all get the same outcome).
    pub(crate) pending: Mutex<HashMap<MessageId, Vec<oneshot::Sender<Settled>>>>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) session: Mutex<Option<Welcome>>,
    pub(crate) last_close: Mutex<Option<(u16, String)>>,
}

impl Shared {
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

    fn set_status(&self, status: Status) {
        let previous = self.status.send_replace(status);
        if previous != status {
            dispatch(
                &self.registry,
                &Incoming {
                    action: json!({
                        "type": STATUS_CHANGE,
                        "status": status,
                        "previousStatus": previous,
                    }),
                    id: None,
                    via: None,
                    from: None,
                },
            );
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
                if let Some(tx) = first_outcome.take() {
                    let _ = tx.send(Ok(()));
                }
                *shared.session.lock() = Some(welcome.clone());
                shared.set_status(Status::Online);
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
        let (mut ws, _response) = connect_async_with_config(request, Some(config), true)
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
    shared: &Shared,
    mut ws: Socket,
    welcome: &Welcome,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> SessionEnd {
    // The server pings every heartbeat_ms; silence beyond heartbeat_ms +
    // heartbeat_timeout_ms means it (or the path to it) is gone.
    let silence_limit = Duration::from_millis(welcome.heartbeat_ms + welcome.heartbeat_timeout_ms);
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
