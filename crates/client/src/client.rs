//! The client handle: sends that settle exactly once, subscriptions, status.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use pubsub_protocol::client_frame::kind;
use pubsub_protocol::{
    ActionError, ActionRef, ClientId, ErrorCode, MessageId, OutgoingFrame, RequestKind, UserId,
    Welcome,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ClientConfig;
use crate::driver::{self, Command, Outbound, Settled, Shared};
use crate::error::{ConnectError, SendError};
use crate::request::PreparedRequest;
use crate::status::Status;
use crate::subscriptions::{Incoming, Registry, SharedRegistry, Subscription};

/// `result` of a `broadcast` ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastAck {
    /// How many of the user's other clients it was queued for.
    pub delivered: usize,
}

/// Per-recipient outcome of `sendToUser`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientResult {
    /// The user had at least one connected client.
    pub online: bool,
    /// How many of their clients it was queued for.
    pub clients: usize,
}

/// `result` of a `sendToUser` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendToUserAck {
    pub recipients: HashMap<String, RecipientResult>,
}

impl SendToUserAck {
    pub fn get(&self, user: &str) -> Option<&RecipientResult> {
        self.recipients.get(user)
    }
}

/// Recipients of `send_to_user`: one id or several.
pub trait IntoRecipients {
    fn into_recipients(self) -> Vec<String>;
}

impl IntoRecipients for &str {
    fn into_recipients(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}
impl IntoRecipients for String {
    fn into_recipients(self) -> Vec<String> {
        vec![self]
    }
}
impl IntoRecipients for &UserId {
    fn into_recipients(self) -> Vec<String> {
        vec![self.to_string()]
    }
}
impl IntoRecipients for i64 {
    fn into_recipients(self) -> Vec<String> {
        vec![self.to_string()]
    }
}
impl<T: ToString> IntoRecipients for Vec<T> {
    fn into_recipients(self) -> Vec<String> {
        self.iter().map(ToString::to_string).collect()
    }
}
impl<T: ToString> IntoRecipients for &[T] {
    fn into_recipients(self) -> Vec<String> {
        self.iter().map(ToString::to_string).collect()
    }
}
impl<T: ToString, const N: usize> IntoRecipients for [T; N] {
    fn into_recipients(self) -> Vec<String> {
        self.iter().map(ToString::to_string).collect()
    }
}

struct Inner {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    /// Random per client instance, so ids from different tabs of one user never collide.
    id_prefix: String,
    next_id: AtomicU64,
}

/// A PubSub client. Cheap to clone; the connection closes when the last clone
/// is dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Starts a client that connects in the background and keeps reconnecting.
    pub fn new(config: ClientConfig) -> Result<Self, ConnectError> {
        Self::start(config, None)
    }

    /// Connects and waits for the server's welcome. Fails if the first
    /// attempt fails; after that the client reconnects by itself.
    pub async fn connect(config: ClientConfig) -> Result<Self, ConnectError> {
        let (tx, rx) = oneshot::channel();
        let client = Self::start(config, Some(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => {
                client.close();
                Err(e)
            }
            Err(_) => Err(ConnectError::Closed),
        }
    }

    fn start(
        config: ClientConfig,
        first_outcome: Option<oneshot::Sender<Result<(), ConnectError>>>,
    ) -> Result<Self, ConnectError> {
        let url = endpoint_url(&config)?;
        #[cfg(feature = "tls")]
        let tls = match url.scheme() {
            "wss" => Some(crate::tls::connector(&config)?),
            _ => None,
        };
        let (status, _) = watch::channel(Status::Connecting);
        let shared = Arc::new(Shared {
            config,
            url,
            #[cfg(feature = "tls")]
            tls,
            registry: SharedRegistry::default(),
            pending: Mutex::new(HashMap::new()),
            received: Mutex::default(),
            status,
            session: Mutex::new(None),
            last_close: Mutex::new(None),
            active: AtomicBool::new(true),
            own_presence: Mutex::new(None),
            watched: Mutex::new(Default::default()),
            topics: Mutex::new(Default::default()),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(driver::run(shared.clone(), rx, first_outcome));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                commands,
                id_prefix: random_prefix(),
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// The status: CONNECTING, ONLINE or OFFLINE (the original's `getStatus`).
    pub fn status(&self) -> Status {
        *self.inner.shared.status.borrow()
    }

    /// A receiver that sees every status change (the original's `onStatusChange`).
    pub fn status_changes(&self) -> watch::Receiver<Status> {
        self.inner.shared.status.subscribe()
    }

    /// The original's `isConnected`.
    pub fn is_connected(&self) -> bool {
        self.status().is_connected()
    }

    /// The current session's welcome (client id, user, limits), if connected.
    pub fn session(&self) -> Option<Welcome> {
        self.inner.shared.session.lock().clone()
    }

    /// This connection's client id, if connected.
    pub fn client_id(&self) -> Option<ClientId> {
        self.session().map(|w| w.client)
    }

    /// The last close code and reason the server sent.
    pub fn last_close(&self) -> Option<(u16, String)> {
        self.inner.shared.last_close.lock().clone()
    }

    /// Calls `callback` for every received action (or system event) of type
    /// `ty`; `"*"` receives all. Callbacks run on the client's task: keep them short.
    pub fn subscribe(
        &self,
        ty: &str,
        callback: impl Fn(&Incoming) + Send + Sync + 'static,
    ) -> Subscription {
        Registry::add(&self.inner.shared.registry, ty, Arc::new(callback))
    }

    /// Like [`Client::subscribe`], delivering into a channel instead.
    pub fn subscribe_channel(&self, ty: &str) -> (Subscription, mpsc::UnboundedReceiver<Incoming>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let subscription = self.subscribe(ty, move |incoming| {
            let _ = tx.send(incoming.clone());
        });
        (subscription, rx)
    }

    /// Sends `action` to every other connected client of this user.
    pub async fn broadcast<A: Serialize + ?Sized>(
        &self,
        action: &A,
    ) -> Result<BroadcastAck, SendError> {
        let request = self.prepare(RequestKind::Broadcast, None, action)?;
        self.request_as(request).await
    }

    /// Sends `action` to every client of each user in `to`.
    pub async fn send_to_user<A: Serialize + ?Sized>(
        &self,
        action: &A,
        to: impl IntoRecipients,
    ) -> Result<SendToUserAck, SendError> {
        let request = self.prepare(RequestKind::SendToUser, Some(to.into_recipients()), action)?;
        self.request_as(request).await
    }

    /// Sends `action` to the server's handler; resolves with its reply.
    pub async fn send_to_server<A: Serialize + ?Sized>(
        &self,
        action: &A,
    ) -> Result<Value, SendError> {
        let request = self.prepare(RequestKind::SendToServer, None, action)?;
        self.request(request).await
    }

    /// Like [`Client::send_to_server`], deserialising the reply into `T`.
    pub async fn send_to_server_as<T: DeserializeOwned, A: Serialize + ?Sized>(
        &self,
        action: &A,
    ) -> Result<T, SendError> {
        let request = self.prepare(RequestKind::SendToServer, None, action)?;
        self.request_as(request).await
    }

    /// Sends the failed request again with the same message id: the server
    /// answers a request it already processed from its retry window. Only
    /// ids whose ack reached a caller are reported to the server as
    /// answered (`received`), so a failed request's outcome is still there.
    /// Requests without a retry identity (watch, join, …) are idempotent:
    /// call them again instead.
    pub async fn retry(&self, error: &SendError) -> Result<Value, SendError> {
        match &error.request {
            Some(request) => self.request((**request).clone()).await,
            None => Err(error.clone()),
        }
    }

    /// Builds a request with a fresh message id.
    pub fn prepare<A: Serialize + ?Sized>(
        &self,
        kind: RequestKind,
        to: Option<Vec<String>>,
        action: &A,
    ) -> Result<PreparedRequest, SendError> {
        let id = self.next_message_id();
        let (raw, invalid) = match serde_json::value::to_raw_value(action) {
            Ok(raw) => {
                let invalid = ActionRef::parse(&raw, false).err();
                (raw, invalid)
            }
            Err(_) => (null_raw(), Some(ActionError::NotAnObject)),
        };
        let mut request = PreparedRequest {
            kind,
            id,
            to: None,
            topic: None,
            echo: None,
            action: Arc::from(raw),
        };
        if let Some(e) = invalid {
            let code = match e {
                ActionError::Reserved => ErrorCode::ReservedType,
                ActionError::NotAnObject | ActionError::BadType => ErrorCode::InvalidAction,
            };
            return Err(SendError::local(code, e.to_string(), Some(request)));
        }
        if let Some(to) = to {
            request.to = Some(parse_users(to).map_err(|mut e| {
                e.request = Some(Box::new(request.clone()));
                e
            })?);
        }
        Ok(request)
    }

    /// Sends a prepared request and waits for it to settle.
    pub async fn request(&self, request: PreparedRequest) -> Result<Value, SendError> {
        let text = request.encode();
        self.roundtrip(request.id.clone(), text, Some(request), true)
            .await
    }

    /// Sends a request that needs no retry identity (watch, join, activity…)
    /// under a fresh id and waits for its answer.
    pub(crate) async fn control_request(
        &self,
        frame: OutgoingFrame<'_>,
    ) -> Result<Value, SendError> {
        let id = self.next_message_id();
        // `activity` is not a request, so it carries no `received`.
        let is_request = frame.kind != kind::ACTIVITY;
        let text = OutgoingFrame {
            id: Some(&id),
            ..frame
        }
        .encode();
        self.roundtrip(id, text, None, is_request).await
    }

    /// Sends one frame with id `id` and waits for its `ack` or `error`.
    /// `is_request`: the frame may report acks (`received`) when written.
    pub(crate) async fn roundtrip(
        &self,
        id: MessageId,
        text: String,
        request: Option<PreparedRequest>,
        is_request: bool,
    ) -> Result<Value, SendError> {
        let shared = &self.inner.shared;
        if !self.is_connected() {
            let code = if self.status() == Status::Offline {
                ErrorCode::ClientClosed
            } else {
                ErrorCode::NotConnected
            };
            return Err(SendError::local(
                code,
                "the client is not connected",
                request,
            ));
        }
        let limit = shared
            .session
            .lock()
            .as_ref()
            .map_or(usize::MAX, |w| w.limits.max_message_bytes);
        if text.len() > limit {
            // The server would close the whole connection for it.
            let message = format!(
                "the frame is {} bytes; the server accepts {limit}",
                text.len()
            );
            return Err(SendError::local(ErrorCode::MessageTooBig, message, request));
        }
        // Only messaging requests are kept in the server's retry window, so
        // only their acks are worth reporting.
        let remembered = request.as_ref().is_some_and(|r| r.kind.uses_retry_window());
        let rx = shared.register(&id, remembered);
        if self
            .inner
            .commands
            .send(Command::Send(Outbound {
                id: id.clone(),
                text,
                request: is_request,
            }))
            .is_err()
        {
            shared.settle(
                &id,
                Settled::Local(ErrorCode::ClientClosed, "the client is closed"),
            );
        }
        match tokio::time::timeout(shared.config.request_timeout, rx).await {
            Ok(Ok(Settled::Ack(value))) => Ok(value),
            Ok(Ok(Settled::Error(frame))) => Err(SendError {
                code: frame.code,
                name: frame.name,
                message: frame.message,
                retryable: frame.retryable,
                data: frame.data,
                request: request.map(Box::new),
            }),
            Ok(Ok(Settled::Local(code, message))) => Err(SendError::local(code, message, request)),
            Ok(Err(_)) => Err(SendError::local(
                ErrorCode::Disconnected,
                "the client stopped before the request settled",
                request,
            )),
            Err(_) => {
                shared.forget_abandoned(&id);
                Err(SendError::local(
                    ErrorCode::RequestTimeout,
                    "no answer within the request timeout",
                    request,
                ))
            }
        }
    }

    async fn request_as<T: DeserializeOwned>(
        &self,
        request: PreparedRequest,
    ) -> Result<T, SendError> {
        let value = self.request(request).await?;
        serde_json::from_value(value).map_err(|e| {
            // The request was acked (and reported so): sending it again
            // would run it again, so this error offers no retry.
            let mut error = SendError::local(
                ErrorCode::Internal,
                format!("unexpected result shape: {e}"),
                None,
            );
            error.retryable = false;
            error
        })
    }

    /// Closes the connection (close code 1000) and stops reconnecting.
    pub fn close(&self) {
        let _ = self.inner.commands.send(Command::Close);
    }

    /// Waits until the status is `status`.
    pub async fn wait_for_status(&self, status: Status) {
        let mut rx = self.status_changes();
        let _ = rx.wait_for(|s| *s == status).await;
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn next_message_id(&self) -> MessageId {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        MessageId::new(format!("{}-{n}", self.inner.id_prefix)).unwrap_or_else(|_| unreachable_id())
    }
}

/// Validates user ids given as strings.
pub(crate) fn parse_users(users: Vec<String>) -> Result<Vec<UserId>, SendError> {
    users
        .into_iter()
        .map(|user| {
            UserId::new(&user).map_err(|e| {
                SendError::local(
                    ErrorCode::InvalidField,
                    format!("invalid user id {user:?}: {e}"),
                    None,
                )
            })
        })
        .collect()
}

fn random_prefix() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..10)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// The prefix is ten alphanumerics and the counter a number, so ids are always valid.
fn unreachable_id() -> MessageId {
    panic!("generated message id is invalid")
}

fn null_raw() -> Box<RawValue> {
    serde_json::value::to_raw_value(&Value::Null).unwrap_or_else(|_| panic!("null serialises"))
}

fn endpoint_url(config: &ClientConfig) -> Result<url::Url, ConnectError> {
    let mut url =
        url::Url::parse(&config.endpoint).map_err(|e| ConnectError::Endpoint(e.to_string()))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" if cfg!(feature = "tls") => "wss",
        "wss" | "https" => {
            return Err(ConnectError::Endpoint(
                "wss:// needs the `tls` feature of pubsub-client, which this build leaves out"
                    .into(),
            ));
        }
        other => {
            return Err(ConnectError::Endpoint(format!(
                "unsupported scheme {other}"
            )));
        }
    };
    url.set_scheme(scheme)
        .map_err(|()| ConnectError::Endpoint("cannot use ws scheme".into()))?;
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(pubsub_protocol::DEFAULT_PATH);
    }
    if let Some(user) = &config.user_id {
        url.query_pairs_mut().append_pair("userId", user);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_gets_default_path_and_user() {
        let url = endpoint_url(&ClientConfig::new("ws://127.0.0.1:4001").user("a b")).unwrap();
        assert_eq!(url.as_str(), "ws://127.0.0.1:4001/ws?userId=a+b");
        let url = endpoint_url(&ClientConfig::new("http://h:1/custom")).unwrap();
        assert_eq!(url.as_str(), "ws://h:1/custom");
        assert!(endpoint_url(&ClientConfig::new("ftp://h")).is_err());
    }
}
