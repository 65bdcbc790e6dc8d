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
use crate::ids::{MessageId, UserId};

/// Names of the client frame kinds.
pub mod kind {
    pub const BROADCAST: &str = "broadcast";
    pub const SEND_TO_USER: &str = "sendToUser";
    pub const SEND_TO_SERVER: &str = "sendToServer";
    pub const PING: &str = "ping";
    pub const PONG: &str = "pong";
}

/// A decoded client frame, borrowing from the text it was decoded from.
#[derive(Debug, Clone)]
pub enum ClientFrame<'a> {
    /// A request: settles with exactly one `ack` or `error` carrying its id.
    Request(Request<'a>),
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
}

impl Request<'_> {
    pub fn id(&self) -> &MessageId {
        match self {
            Request::Broadcast { id, .. }
            | Request::SendToUser { id, .. }
            | Request::SendToServer { id, .. } => id,
        }
    }

    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Broadcast { .. } => RequestKind::Broadcast,
            Request::SendToUser { .. } => RequestKind::SendToUser,
            Request::SendToServer { .. } => RequestKind::SendToServer,
        }
    }
}

impl ClientFrame<'_> {
    /// The frame's id, for frames that carry one.
    pub fn id(&self) -> Option<&MessageId> {
        match self {
            ClientFrame::Request(r) => Some(r.id()),
            ClientFrame::Ping { id } => id.as_ref(),
            ClientFrame::Pong => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Request(r) => r.kind().as_str(),
            ClientFrame::Ping { .. } => kind::PING,
            ClientFrame::Pong => kind::PONG,
        }
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_recipients: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_recipients: crate::limits::DEFAULT_MAX_RECIPIENTS,
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
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(UserId),
    Many(Vec<UserId>),
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
        Some(raw) => Some(serde_json::from_str::<MessageId>(raw.get()).map_err(|e| {
            FrameError::new(
                ErrorCode::InvalidField,
                format!(
                    "`id` must be a non-empty string of at most {} bytes: {e}",
                    crate::ids::MAX_ID_BYTES
                ),
                None,
            )
        })?),
    };
    let kind: std::borrow::Cow<'a, str> = match env.kind {
        None => {
            return Err(FrameError::new(
                ErrorCode::UnknownKind,
                "missing `kind`",
                id,
            ));
        }
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| {
            FrameError::new(
                ErrorCode::UnknownKind,
                "`kind` must be a string",
                id.clone(),
            )
        })?,
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
    let invalid = |msg: String| FrameError::new(ErrorCode::InvalidField, msg, Some(id.clone()));
    let raw = raw.ok_or_else(|| invalid("missing `to`".into()))?;
    let list = match serde_json::from_str::<OneOrMany>(raw.get()) {
        Ok(OneOrMany::One(user)) => vec![user],
        Ok(OneOrMany::Many(list)) => list,
        Err(_) => {
            return Err(invalid(format!(
                "`to` must be a user id (string or integer, 1 to {} bytes) or a list of them",
                crate::ids::MAX_ID_BYTES
            )));
        }
    };
    if list.is_empty() {
        return Err(invalid("`to` must name at least one user".into()));
    }
    let mut unique: Vec<UserId> = Vec::with_capacity(list.len());
    for user in list {
        if !unique.contains(&user) {
            unique.push(user);
        }
    }
    if unique.len() > limits.max_recipients {
        return Err(FrameError::new(
            ErrorCode::TooManyRecipients,
            format!(
                "`to` names {} users; the limit is {}",
                unique.len(),
                limits.max_recipients
            ),
            Some(id.clone()),
        ));
    }
    Ok(unique)
}

fn truncate(s: &str, max: usize) -> &str {
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
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Broadcast => kind::BROADCAST,
            RequestKind::SendToUser => kind::SEND_TO_USER,
            RequestKind::SendToServer => kind::SEND_TO_SERVER,
        }
    }
}

#[derive(Serialize)]
struct OutgoingRequest<'a> {
    kind: &'static str,
    id: &'a MessageId,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a [UserId]>,
    action: &'a RawValue,
}

/// Encodes a request frame (client side).
pub fn encode_request(
    kind: RequestKind,
    id: &MessageId,
    to: Option<&[UserId]>,
    action: &RawValue,
) -> String {
    let frame = OutgoingRequest {
        kind: kind.as_str(),
        id,
        to,
        action,
    };
    // Serialising borrowed strings and a RawValue cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
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
        DecodeLimits { max_recipients: 3 }
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
