//! Frames a client sends to the server: decoding (server side) and encoding
//! (client side).
//!
//! Decoding goes field by field rather than through a tagged serde enum so
//! that (a) the action stays a borrowed `RawValue` and is never re-serialised,
//! and (b) an error can still name the request id when another field is bad,
//! which lets the client reject exactly the promise that caused it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::action::{ActionError, ActionRef};
use crate::codes::ErrorCode;
use crate::ids::{MessageId, Topic, UserId};

/// Names of the client frame kinds.
pub mod kind {
    pub const BROADCAST: &str = "broadcast";
    pub const SEND_TO_USER: &str = "sendToUser";
    pub const SEND_TO_SERVER: &str = "sendToServer";
    pub const PUBLISH: &str = "publish";
    pub const JOIN: &str = "join";
    pub const LEAVE: &str = "leave";
    pub const ACTIVITY: &str = "activity";
    pub const PRESENCE: &str = "presence";
    pub const WATCH: &str = "watch";
    pub const UNWATCH: &str = "unwatch";
    pub const PING: &str = "ping";
    pub const PONG: &str = "pong";
}

/// A decoded client frame, borrowing from the text it was decoded from.
#[derive(Debug, Clone)]
pub enum ClientFrame<'a> {
    /// A request: settles with exactly one `ack` or `error` carrying its id.
    Request(Request<'a>),
    /// This client became active (visible, in use) or idle. Acked only with an id.
    Activity { id: Option<MessageId>, active: bool },
    /// The client checks the connection; the server answers `pong` with the same id.
    Ping { id: Option<MessageId> },
    /// The client answers the server's heartbeat `ping`.
    Pong,
}

/// Requests a client can make.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// Deliver `action` to every other connected client of the sender's user.
    Broadcast {
        id: MessageId,
        action: ActionRef<'a>,
    },
    /// Deliver `action` to every client of each user in `to` (deduplicated, in order).
    SendToUser {
        id: MessageId,
        to: Vec<UserId>,
        action: ActionRef<'a>,
    },
    /// Pass `action` to the server's handler and answer with its result.
    SendToServer {
        id: MessageId,
        action: ActionRef<'a>,
    },
    /// Deliver `action` to every client joined to `topic` (the sender only if `echo`).
    Publish {
        id: MessageId,
        topic: Topic,
        action: ActionRef<'a>,
        echo: bool,
    },
    /// Join a topic.
    Join { id: MessageId, topic: Topic },
    /// Leave a topic.
    Leave { id: MessageId, topic: Topic },
    /// Answer with the presence of each user.
    Presence { id: MessageId, users: Vec<UserId> },
    /// Answer with the presence of each user and send their changes from now on.
    Watch { id: MessageId, users: Vec<UserId> },
    /// Stop sending these users' changes.
    Unwatch { id: MessageId, users: Vec<UserId> },
}

impl Request<'_> {
    pub fn id(&self) -> &MessageId {
        match self {
            Request::Broadcast { id, .. }
            | Request::SendToUser { id, .. }
            | Request::SendToServer { id, .. }
            | Request::Publish { id, .. }
            | Request::Join { id, .. }
            | Request::Leave { id, .. }
            | Request::Presence { id, .. }
            | Request::Watch { id, .. }
            | Request::Unwatch { id, .. } => id,
        }
    }

    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Broadcast { .. } => RequestKind::Broadcast,
            Request::SendToUser { .. } => RequestKind::SendToUser,
            Request::SendToServer { .. } => RequestKind::SendToServer,
            Request::Publish { .. } => RequestKind::Publish,
            Request::Join { .. } => RequestKind::Join,
            Request::Leave { .. } => RequestKind::Leave,
            Request::Presence { .. } => RequestKind::Presence,
            Request::Watch { .. } => RequestKind::Watch,
            Request::Unwatch { .. } => RequestKind::Unwatch,
        }
    }
}

impl ClientFrame<'_> {
    /// The frame's id, for frames that carry one.
    pub fn id(&self) -> Option<&MessageId> {
        match self {
            ClientFrame::Request(r) => Some(r.id()),
            ClientFrame::Ping { id } | ClientFrame::Activity { id, .. } => id.as_ref(),
            ClientFrame::Pong => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Request(r) => r.kind().as_str(),
            ClientFrame::Activity { .. } => kind::ACTIVITY,
            ClientFrame::Ping { .. } => kind::PING,
            ClientFrame::Pong => kind::PONG,
        }
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Most distinct users in `sendToUser.to`.
    pub max_recipients: usize,
    /// Most distinct users in `presence`, `watch` and `unwatch`.
    pub max_users_per_request: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_recipients: crate::limits::DEFAULT_MAX_RECIPIENTS,
            max_users_per_request: crate::limits::DEFAULT_MAX_USERS_PER_REQUEST,
        }
    }
}

/// Why a frame was refused; becomes an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The request id, when it could be read.
    pub id: Option<MessageId>,
}

impl FrameError {
    fn new(code: ErrorCode, message: impl Into<String>, id: Option<MessageId>) -> Self {
        Self {
            code,
            message: message.into(),
            id,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    action: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    users: Option<&'a RawValue>,
    #[serde(borrow)]
    echo: Option<&'a RawValue>,
    #[serde(borrow)]
    active: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(UserId),
    Many(Vec<UserId>),
}

/// The contents of a JSON string that needs no unescaping, borrowed from the
/// frame; `None` for anything else. `raw` is valid JSON, so a string without
/// a backslash holds no quote or control character to worry about.
fn plain_str(raw: &RawValue) -> Option<&str> {
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// Decodes one text frame from a client.
pub fn decode_client_frame<'a>(
    text: &'a str,
    limits: &DecodeLimits,
) -> Result<ClientFrame<'a>, FrameError> {
    // serde would accept an array for a struct; only objects are frames.
    if !text.trim_start().starts_with('{') {
        return Err(FrameError::new(
            ErrorCode::MalformedFrame,
            "a frame must be a JSON object",
            None,
        ));
    }
    let env: Envelope<'a> = serde_json::from_str(text).map_err(|e| {
        FrameError::new(
            ErrorCode::MalformedFrame,
            format!("invalid JSON: {e}"),
            None,
        )
    })?;

    // Read the id first so every later error can carry it.
    let id = match env.id {
        None => None,
        // Most ids are plain strings: validate them in place. Anything else
        // (escapes, wrong type, invalid) takes serde's path and its message.
        Some(raw) => Some(match plain_str(raw).and_then(|s| MessageId::new(s).ok()) {
            Some(id) => id,
            None => serde_json::from_str::<MessageId>(raw.get()).map_err(|e| {
                FrameError::new(
                    ErrorCode::InvalidField,
                    format!(
                        "`id` must be a non-empty string of at most {} bytes: {e}",
                        crate::ids::MAX_ID_BYTES
                    ),
                    None,
                )
            })?,
        }),
    };
    let kind: std::borrow::Cow<'a, str> = match env.kind {
        None => {
            return Err(FrameError::new(
                ErrorCode::UnknownKind,
                "missing `kind`",
                id,
            ));
        }
        Some(raw) => match plain_str(raw) {
            Some(kind) => std::borrow::Cow::Borrowed(kind),
            None => serde_json::from_str(raw.get()).map_err(|_| {
                FrameError::new(
                    ErrorCode::UnknownKind,
                    "`kind` must be a string",
                    id.clone(),
                )
            })?,
        },
    };

    let need_id = |id: Option<MessageId>| {
        id.ok_or_else(|| FrameError::new(ErrorCode::InvalidField, "missing `id`", None))
    };
    let need_action = |id: &MessageId| -> Result<ActionRef<'a>, FrameError> {
        let raw = env.action.ok_or_else(|| {
            FrameError::new(
                ErrorCode::InvalidAction,
                "missing `action`",
                Some(id.clone()),
            )
        })?;
        ActionRef::parse(raw, false).map_err(|e| {
            let code = match e {
                ActionError::Reserved => ErrorCode::ReservedType,
                ActionError::NotAnObject | ActionError::BadType => ErrorCode::InvalidAction,
            };
            FrameError::new(code, e.to_string(), Some(id.clone()))
        })
    };

    match &*kind {
        kind::BROADCAST => {
            let id = need_id(id)?;
            let action = need_action(&id)?;
            Ok(ClientFrame::Request(Request::Broadcast { id, action }))
        }
        kind::SEND_TO_USER => {
            let id = need_id(id)?;
            let to = decode_recipients(env.to, &id, limits)?;
            let action = need_action(&id)?;
            Ok(ClientFrame::Request(Request::SendToUser { id, to, action }))
        }
        kind::SEND_TO_SERVER => {
            let id = need_id(id)?;
            let action = need_action(&id)?;
            Ok(ClientFrame::Request(Request::SendToServer { id, action }))
        }
        kind::PUBLISH => {
            let id = need_id(id)?;
            let topic = decode_topic(env.topic, &id)?;
            let echo = decode_bool(env.echo, "echo", Some(&id))?.unwrap_or(false);
            let action = need_action(&id)?;
            Ok(ClientFrame::Request(Request::Publish {
                id,
                topic,
                action,
                echo,
            }))
        }
        kind::JOIN => {
            let id = need_id(id)?;
            let topic = decode_topic(env.topic, &id)?;
            Ok(ClientFrame::Request(Request::Join { id, topic }))
        }
        kind::LEAVE => {
            let id = need_id(id)?;
            let topic = decode_topic(env.topic, &id)?;
            Ok(ClientFrame::Request(Request::Leave { id, topic }))
        }
        kind::PRESENCE | kind::WATCH | kind::UNWATCH => {
            let id = need_id(id)?;
            let users = decode_users(env.users, "users", &id, limits.max_users_per_request)?;
            Ok(ClientFrame::Request(match &*kind {
                kind::PRESENCE => Request::Presence { id, users },
                kind::WATCH => Request::Watch { id, users },
                _ => Request::Unwatch { id, users },
            }))
        }
        kind::ACTIVITY => {
            let active = decode_bool(env.active, "active", id.as_ref())?.ok_or_else(|| {
                FrameError::new(ErrorCode::InvalidField, "missing `active`", id.clone())
            })?;
            Ok(ClientFrame::Activity { id, active })
        }
        kind::PING => Ok(ClientFrame::Ping { id }),
        kind::PONG => Ok(ClientFrame::Pong),
        other => Err(FrameError::new(
            ErrorCode::UnknownKind,
            format!("unknown kind `{}`", truncate(other, 64)),
            id,
        )),
    }
}

fn decode_recipients(
    raw: Option<&RawValue>,
    id: &MessageId,
    limits: &DecodeLimits,
) -> Result<Vec<UserId>, FrameError> {
    decode_users(raw, "to", id, limits.max_recipients)
}

fn decode_topic(raw: Option<&RawValue>, id: &MessageId) -> Result<Topic, FrameError> {
    let raw = raw.ok_or_else(|| {
        FrameError::new(ErrorCode::InvalidTopic, "missing `topic`", Some(id.clone()))
    })?;
    let name: std::borrow::Cow<'_, str> = serde_json::from_str(raw.get()).map_err(|_| {
        FrameError::new(
            ErrorCode::InvalidTopic,
            "`topic` must be a string",
            Some(id.clone()),
        )
    })?;
    Topic::new(&*name)
        .map_err(|e| FrameError::new(ErrorCode::InvalidTopic, e.to_string(), Some(id.clone())))
}

fn decode_bool(
    raw: Option<&RawValue>,
    field: &str,
    id: Option<&MessageId>,
) -> Result<Option<bool>, FrameError> {
    match raw {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<bool>(raw.get())
            .map(Some)
            .map_err(|_| {
                FrameError::new(
                    ErrorCode::InvalidField,
                    format!("`{field}` must be true or false"),
                    id.cloned(),
                )
            }),
    }
}

fn decode_users(
    raw: Option<&RawValue>,
    field: &str,
    id: &MessageId,
    max: usize,
) -> Result<Vec<UserId>, FrameError> {
    let invalid = |msg: String| FrameError::new(ErrorCode::InvalidField, msg, Some(id.clone()));
    let raw = raw.ok_or_else(|| invalid(format!("missing `{field}`")))?;
    let list = match serde_json::from_str::<OneOrMany>(raw.get()) {
        Ok(OneOrMany::One(user)) => vec![user],
        Ok(OneOrMany::Many(list)) => list,
        Err(_) => {
            return Err(invalid(format!(
                "`{field}` must be a user id (string or integer, 1 to {} bytes) or a list of them",
                crate::ids::MAX_ID_BYTES
            )));
        }
    };
    if list.is_empty() {
        return Err(invalid(format!("`{field}` must name at least one user")));
    }
    let mut unique: Vec<UserId> = Vec::with_capacity(list.len());
    for user in list {
        if !unique.contains(&user) {
            unique.push(user);
        }
    }
    if unique.len() > max {
        return Err(FrameError::new(
            ErrorCode::TooManyRecipients,
            format!("`{field}` names {} users; the limit is {max}", unique.len()),
            Some(id.clone()),
        ));
    }
    Ok(unique)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary (for quoting client input in errors and close reasons).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The kinds of request a client can make that settle with `ack` or `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Broadcast,
    SendToUser,
    SendToServer,
    Publish,
    Join,
    Leave,
    Presence,
    Watch,
    Unwatch,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Broadcast => kind::BROADCAST,
            RequestKind::SendToUser => kind::SEND_TO_USER,
            RequestKind::SendToServer => kind::SEND_TO_SERVER,
            RequestKind::Publish => kind::PUBLISH,
            RequestKind::Join => kind::JOIN,
            RequestKind::Leave => kind::LEAVE,
            RequestKind::Presence => kind::PRESENCE,
            RequestKind::Watch => kind::WATCH,
            RequestKind::Unwatch => kind::UNWATCH,
        }
    }

    /// Whether retries of this kind are answered from the retry window
    /// (the others are idempotent or read-only and simply run again).
    pub fn uses_retry_window(self) -> bool {
        matches!(
            self,
            RequestKind::Broadcast
                | RequestKind::SendToUser
                | RequestKind::SendToServer
                | RequestKind::Publish
        )
    }
}

/// Any client frame, for encoding (client side). Unset fields are omitted.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OutgoingFrame<'a> {
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a MessageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a [UserId]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a Topic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<&'a [UserId]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'a RawValue>,
}

impl OutgoingFrame<'_> {
    pub fn encode(&self) -> String {
        // Borrowed strings, booleans and RawValues always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Encodes a request that carries an action (client side).
pub fn encode_request(
    kind: RequestKind,
    id: &MessageId,
    to: Option<&[UserId]>,
    action: &RawValue,
) -> String {
    OutgoingFrame {
        kind: kind.as_str(),
        id: Some(id),
        to,
        action: Some(action),
        ..OutgoingFrame::default()
    }
    .encode()
}

/// The client's answer to a heartbeat `ping`.
pub const PONG_FRAME: &str = r#"{"kind":"pong"}"#;

/// A client-initiated ping.
pub fn encode_ping(id: Option<&MessageId>) -> String {
    #[derive(Serialize)]
    struct Ping<'a> {
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a MessageId>,
    }
    serde_json::to_string(&Ping {
        kind: kind::PING,
        id,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DecodeLimits {
        DecodeLimits {
            max_recipients: 3,
            max_users_per_request: 5,
        }
    }

    /// Plain strings are read in place, escaped ones through serde: both
    /// must mean the same, and invalid ids must fail the same way.
    #[test]
    fn escaped_and_plain_ids_and_kinds_decode_alike() {
        let f = decode_client_frame(
            r#"{"kind":"send\u0054oServer","id":"m\u002d1","action":{"type":"X"}}"#,
            &limits(),
        )
        .unwrap();
        assert!(
            matches!(f, ClientFrame::Request(Request::SendToServer { id, .. }) if id.as_str() == "m-1")
        );
        let long = "a".repeat(crate::ids::MAX_ID_BYTES + 1);
        for bad_id in [
            format!(r#""{long}""#),
            String::from(r#""""#),
            String::from(r#""a\u0001""#),
            String::from("7"),
        ] {
            let frame = format!(r#"{{"kind":"ping","id":{bad_id}}}"#);
            let e = decode_client_frame(&frame, &limits()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidField, "{frame}");
            assert!(
                e.message.starts_with("`id` must be"),
                "{frame}: {}",
                e.message
            );
        }
    }

    #[test]
    fn decodes_topic_and_presence_requests() {
        let f = decode_client_frame(
            r#"{"kind":"publish","id":"p","topic":"room:1","action":{"type":"X"},"echo":true}"#,
            &limits(),
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::Request(Request::Publish { echo: true, .. })
        ));
        let e = decode_client_frame(r#"{"kind":"join","id":"j","topic":"bad topic"}"#, &limits())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidTopic);
        let f =
            decode_client_frame(r#"{"kind":"watch","id":"w","users":["a",1]}"#, &limits()).unwrap();
        assert!(
            matches!(f, ClientFrame::Request(Request::Watch { users, .. }) if users.len() == 2)
        );
        let f = decode_client_frame(r#"{"kind":"activity","active":false}"#, &limits()).unwrap();
        assert!(matches!(
            f,
            ClientFrame::Activity {
                id: None,
                active: false
            }
        ));
        let e = decode_client_frame(r#"{"kind":"activity","id":"a","active":"no"}"#, &limits())
            .unwrap_err();
        assert_eq!(
            (e.code, e.id.unwrap().as_str()),
            (ErrorCode::InvalidField, "a")
        );
    }

    #[test]
    fn decodes_send_to_user_and_dedupes_recipients() {
        let f = decode_client_frame(
            r#"{"kind":"sendToUser","id":"m1","to":["b",44,"b"],"action":{"type":"X"}}"#,
            &limits(),
        )
        .unwrap();
        match f {
            ClientFrame::Request(Request::SendToUser { id, to, action }) => {
                assert_eq!(id.as_str(), "m1");
                assert_eq!(
                    to,
                    vec![UserId::new("b").unwrap(), UserId::new("44").unwrap()]
                );
                assert_eq!(action.action_type(), "X");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_carry_the_id_when_readable() {
        let e = decode_client_frame(
            r#"{"kind":"broadcast","id":"m2","action":{"type":"@pubsub/X"}}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::ReservedType);
        assert_eq!(e.id.unwrap().as_str(), "m2");

        let e = decode_client_frame(
            r#"{"kind":"sendToUser","id":"m3","to":["a","b","c","d"],"action":{"type":"X"}}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::TooManyRecipients);
    }

    #[test]
    fn sender_fields_in_the_frame_are_ignored() {
        let f = decode_client_frame(
            r#"{"kind":"broadcast","id":"m","from":{"user":"admin"},"action":{"type":"X"}}"#,
            &limits(),
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Request(Request::Broadcast { .. })));
    }

    #[test]
    fn rejects_non_objects() {
        for bad in ["[]", "1", "\"x\"", "nul", "{", ""] {
            let e = decode_client_frame(bad, &limits()).unwrap_err();
            assert_eq!(e.code, ErrorCode::MalformedFrame, "{bad}");
        }
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let id = MessageId::new("m9").unwrap();
        let to = [UserId::new("u").unwrap()];
        let raw = RawValue::from_string(r#"{"type":"T","v":1}"#.into()).unwrap();
        let text = encode_request(RequestKind::SendToUser, &id, Some(&to), &raw);
        let f = decode_client_frame(&text, &limits()).unwrap();
        assert_eq!(f.kind(), kind::SEND_TO_USER);
        assert_eq!(f.id(), Some(&id));
    }
}
