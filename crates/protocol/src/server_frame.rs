//! Frames the server sends to a client: encoding (server side, from borrowed
//! parts so fan-out encodes once) and decoding (client side, owned).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::action::ActionRef;
use crate::codes::ErrorCode;
use crate::ids::{ClientId, MessageId, Topic, UserId};
use crate::presence::Presence;

/// Names of the server frame kinds.
pub mod kind {
    pub const WELCOME: &str = "welcome";
    pub const MESSAGE: &str = "message";
    pub const ACK: &str = "ack";
    pub const ERROR: &str = "error";
    pub const EVENT: &str = "event";
    pub const PING: &str = "ping";
    pub const PONG: &str = "pong";
}

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Limits the server enforces, announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest message (frame payload, after reassembly) the server accepts.
    pub max_message_bytes: usize,
    /// Most distinct users in one `sendToUser`.
    pub max_recipients: usize,
    /// Longest user id or message id, in bytes.
    pub max_id_bytes: usize,
    /// Requests per second per connection before `rate_limited` (0 = unlimited).
    pub max_requests_per_sec: u32,
    /// Most distinct users in one `presence`, `watch` or `unwatch`.
    #[serde(default = "default_max_users_per_request")]
    pub max_users_per_request: usize,
}

fn default_max_users_per_request() -> usize {
    crate::limits::DEFAULT_MAX_USERS_PER_REQUEST
}

/// First frame on every accepted connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    pub protocol: u32,
    /// This connection's client id.
    pub client: ClientId,
    /// The authenticated user.
    pub user: UserId,
    /// The server node's id (useful in logs; clusters have several).
    pub node: String,
    /// The server sends `ping` at this interval; answer each with `pong`.
    pub heartbeat_ms: u64,
    /// Silence from the client for `heartbeatMs + heartbeatTimeoutMs` closes the connection.
    pub heartbeat_timeout_ms: u64,
    pub limits: Limits,
    /// The user's presence, this connection included (servers that track presence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
}

/// Who sent a delivered message. Stamped by the server; clients cannot forge it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sender {
    pub user: UserId,
    pub client: ClientId,
}

/// How a delivered message reached this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Via {
    /// Another tab of the same user called `broadcast`.
    Broadcast,
    /// Someone called `sendToUser` naming this client's user.
    User,
    /// The server (a handler or the embedding application) sent it.
    Server,
    /// Someone published it to a topic this client joined.
    Topic,
    /// A kind added by a newer server; clients deliver it like any other.
    #[serde(other)]
    Other,
}

impl Via {
    /// The name on the wire (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Broadcast => "broadcast",
            Via::User => "user",
            Via::Server => "server",
            Via::Topic => "topic",
            Via::Other => "other",
        }
    }
}

// ---------------------------------------------------------------- encoding

/// The `message` frame as a struct: the reference the hand-written encoder
/// below is tested against.
#[cfg(test)]
#[derive(Serialize)]
struct MessageOut<'a> {
    kind: &'static str,
    id: &'a MessageId,
    via: Via,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a Sender>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a Topic>,
    action: &'a RawValue,
}

/// Encodes a delivered action. The action bytes are copied verbatim.
pub fn encode_message(
    id: &MessageId,
    via: Via,
    from: Option<&Sender>,
    action: &ActionRef<'_>,
) -> String {
    encode_topic_message(id, via, from, None, action)
}

/// Encodes a delivered action that may name the topic it was published to.
pub fn encode_topic_message(
    id: &MessageId,
    via: Via,
    from: Option<&Sender>,
    topic: Option<&Topic>,
    action: &ActionRef<'_>,
) -> String {
    to_string_with(|out| write_topic_message(out, id, via, from, topic, action))
}

/// [`encode_topic_message`] appended to `out` (for a server that frames
/// from a reused buffer instead of an intermediate `String`). Written by
/// hand, field by field in serde's order, because every delivered message
/// and every ack goes through here: the result is byte for byte what serde
/// makes of the same fields (tested), at a fraction of the cost.
pub fn write_topic_message(
    out: &mut Vec<u8>,
    id: &MessageId,
    via: Via,
    from: Option<&Sender>,
    topic: Option<&Topic>,
    action: &ActionRef<'_>,
) {
    out.extend_from_slice(br#"{"kind":""#);
    out.extend_from_slice(kind::MESSAGE.as_bytes());
    out.extend_from_slice(br#"","id":"#);
    write_str(out, id.as_str());
    out.extend_from_slice(br#","via":""#);
    out.extend_from_slice(via.as_str().as_bytes());
    out.push(b'"');
    if let Some(from) = from {
        out.extend_from_slice(br#","from":{"user":"#);
        write_str(out, from.user.as_str());
        out.extend_from_slice(br#","client":"#);
        write_str(out, from.client.as_str());
        out.push(b'}');
    }
    if let Some(topic) = topic {
        out.extend_from_slice(br#","topic":"#);
        write_str(out, topic.as_str());
    }
    out.extend_from_slice(br#","action":"#);
    out.extend_from_slice(action.json().as_bytes());
    out.push(b'}');
}

/// Appends `s` as a JSON string: copied as it is when nothing in it needs
/// escaping (ids and names almost never do), otherwise through serde_json,
/// which escapes `"`, `\` and control characters and nothing else.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if crate::scan::first_escape(s.as_bytes()).is_none() {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        write_json(out, &s);
    }
}

/// Encodes a system event; `event` must serialise to an object whose `type`
/// starts with `@pubsub/`.
pub fn encode_event<T: Serialize + ?Sized>(event: &T) -> String {
    #[derive(Serialize)]
    struct EventOut<'a, T: ?Sized> {
        kind: &'static str,
        action: &'a T,
    }
    to_json(&EventOut {
        kind: kind::EVENT,
        action: event,
    })
}

#[cfg(test)]
#[derive(Serialize)]
struct AckOut<'a, T: ?Sized> {
    kind: &'static str,
    id: &'a MessageId,
    result: &'a T,
}

/// Encodes a successful settlement of request `id` with `result` (any
/// serialisable value, a `RawValue` included).
pub fn encode_ack<T: Serialize + ?Sized>(id: &MessageId, result: &T) -> String {
    to_string_with(|out| write_ack(out, id, result))
}

/// [`encode_ack`] appended to `out`; by hand, like [`write_topic_message`].
pub fn write_ack<T: Serialize + ?Sized>(out: &mut Vec<u8>, id: &MessageId, result: &T) {
    write_ack_with(out, id, |out| write_json(out, result));
}

/// [`write_ack`] with a result that is already JSON text, copied verbatim.
/// `result` must be one valid JSON value (the server passes a handler's
/// reply, valid by construction); nothing here checks it again.
pub fn write_ack_json(out: &mut Vec<u8>, id: &MessageId, result: &str) {
    write_ack_with(out, id, |out| out.extend_from_slice(result.as_bytes()));
}

fn write_ack_with(out: &mut Vec<u8>, id: &MessageId, result: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(br#"{"kind":""#);
    out.extend_from_slice(kind::ACK.as_bytes());
    out.extend_from_slice(br#"","id":"#);
    write_str(out, id.as_str());
    out.extend_from_slice(br#","result":"#);
    result(out);
    out.push(b'}');
}

/// The parts of an `error` frame.
#[derive(Debug, Clone, Copy)]
pub struct ErrorParts<'a> {
    pub id: Option<&'a MessageId>,
    pub code: ErrorCode,
    pub message: &'a str,
    pub retryable: bool,
    pub data: Option<&'a RawValue>,
}

impl<'a> ErrorParts<'a> {
    /// An error whose retryability is the code's default.
    pub fn new(id: Option<&'a MessageId>, code: ErrorCode, message: &'a str) -> Self {
        Self {
            id,
            code,
            message,
            retryable: code.retryable(),
            data: None,
        }
    }
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a MessageId>,
    code: u16,
    name: &'static str,
    message: &'a str,
    retryable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

pub fn encode_error(parts: ErrorParts<'_>) -> String {
    to_string_with(|out| write_error(out, parts))
}

/// [`encode_error`] appended to `out`.
pub fn write_error(out: &mut Vec<u8>, parts: ErrorParts<'_>) {
    write_json(
        out,
        &ErrorOut {
            kind: kind::ERROR,
            id: parts.id,
            code: parts.code.code(),
            name: parts.code.name(),
            message: parts.message,
            retryable: parts.retryable,
            data: parts.data,
        },
    );
}

pub fn encode_welcome(welcome: &Welcome) -> String {
    #[derive(Serialize)]
    struct WelcomeOut<'a> {
        kind: &'static str,
        #[serde(flatten)]
        welcome: &'a Welcome,
    }
    to_json(&WelcomeOut {
        kind: kind::WELCOME,
        welcome,
    })
}

/// The server's heartbeat.
pub const PING_FRAME: &str = r#"{"kind":"ping"}"#;

/// The answer to a client-initiated `ping`.
pub fn encode_pong(id: Option<&MessageId>) -> String {
    #[derive(Serialize)]
    struct PongOut<'a> {
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a MessageId>,
    }
    to_json(&PongOut {
        kind: kind::PONG,
        id,
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Every frame type above is made of strings, numbers and RawValues, whose
    // serialisation into a String cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Cannot fail, for the reason given in `to_json`.
    let _ = serde_json::to_writer(out, value);
}

fn to_string_with(write: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::with_capacity(128);
    write(&mut out);
    String::from_utf8(out).unwrap_or_default()
}

// ---------------------------------------------------------------- decoding

/// A delivered action, as a client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The sender's message id.
    pub id: MessageId,
    pub via: Via,
    /// Absent when the server itself sent the action.
    #[serde(default)]
    pub from: Option<Sender>,
    /// With `via: topic`, the topic it was published to.
    #[serde(default)]
    pub topic: Option<Topic>,
    pub action: Value,
}

/// A system event (`action.type` starts with `@pubsub/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    pub action: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckFrame {
    pub id: MessageId,
    pub result: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(default)]
    pub id: Option<MessageId>,
    /// Kept as a number so codes added by newer servers still decode.
    pub code: u16,
    pub name: String,
    pub message: String,
    pub retryable: bool,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PongFrame {
    #[serde(default)]
    pub id: Option<MessageId>,
}

/// Any frame the server sends. Unknown kinds decode as `Unknown` and must be
/// ignored, so newer servers can add frames without breaking old clients.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ServerFrame {
    Welcome(Welcome),
    Message(Delivery),
    Ack(AckFrame),
    Error(ErrorFrame),
    Event(EventFrame),
    Ping,
    Pong(PongFrame),
    #[serde(other)]
    Unknown,
}

/// Decodes one text frame from the server (client side).
pub fn decode_server_frame(text: &str) -> Result<ServerFrame, serde_json::Error> {
    serde_json::from_str(text)
}

/// Re-encodes a decoded frame with the server's encoders. Used by the codec
/// tests and by tools that relay frames.
pub fn encode_server_frame(frame: &ServerFrame) -> Option<String> {
    let raw = |v: &Value| serde_json::value::to_raw_value(v).ok();
    Some(match frame {
        ServerFrame::Welcome(w) => encode_welcome(w),
        ServerFrame::Message(d) => encode_topic_message(
            &d.id,
            d.via,
            d.from.as_ref(),
            d.topic.as_ref(),
            &crate::Action::from_raw(raw(&d.action)?, true)
                .ok()?
                .as_ref(),
        ),
        ServerFrame::Event(e) => encode_event(&e.action),
        ServerFrame::Ack(a) => encode_ack(&a.id, &raw(&a.result)?),
        ServerFrame::Error(e) => {
            let data = match &e.data {
                Some(d) => Some(raw(d)?),
                None => None,
            };
            let mut parts =
                ErrorParts::new(e.id.as_ref(), ErrorCode::from_code(e.code)?, &e.message);
            parts.retryable = e.retryable;
            parts.data = data.as_deref();
            encode_error(parts)
        }
        ServerFrame::Ping => PING_FRAME.to_owned(),
        ServerFrame::Pong(p) => encode_pong(p.id.as_ref()),
        ServerFrame::Unknown => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_keeps_action_bytes() {
        let raw = RawValue::from_string(r#"{"type":"X","n":1.50}"#.into()).unwrap();
        let action = ActionRef::parse(&raw, false).unwrap();
        let text = encode_message(
            &MessageId::new("m").unwrap(),
            Via::Broadcast,
            Some(&Sender {
                user: UserId::new("a").unwrap(),
                client: ClientId::new("c1").unwrap(),
            }),
            &action,
        );
        assert!(text.contains(r#""action":{"type":"X","n":1.50}"#), "{text}");
        match decode_server_frame(&text).unwrap() {
            ServerFrame::Message(d) => assert_eq!(d.from.unwrap().user.as_str(), "a"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_kinds_and_vias_decode() {
        assert_eq!(
            decode_server_frame(r#"{"kind":"fromTheFuture","x":1}"#).unwrap(),
            ServerFrame::Unknown
        );
        let f = decode_server_frame(
            r#"{"kind":"message","id":"m","via":"warp","action":{"type":"X"}}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ServerFrame::Message(Delivery {
                via: Via::Other,
                ..
            })
        ));
    }

    #[test]
    fn hand_written_frames_are_what_serde_writes() {
        let ids = [
            "m-1",
            "with \"quotes\"",
            "back\\slash",
            "ünïcode ✓",
            "tab\there",
            "ctl\u{1}",
        ];
        let raw =
            RawValue::from_string(r#"{"type":"T","n":[1,{"a":"\u00e9"}]}"#.to_owned()).unwrap();
        let vias = [
            Via::Broadcast,
            Via::User,
            Via::Server,
            Via::Topic,
            Via::Other,
        ];
        for text in ids {
            // Ids refuse control characters; strings in general are still escaped right.
            let mut out = Vec::new();
            write_str(&mut out, text);
            assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
            let Ok(id) = MessageId::new(text) else {
                continue;
            };
            let sender = Sender {
                user: UserId::new(text).unwrap(),
                client: crate::ClientId::new("c\"1").unwrap(),
            };
            let topic = Topic::new("room-1").unwrap();
            for via in vias {
                assert_eq!(
                    serde_json::to_string(&via).unwrap(),
                    format!("\"{}\"", via.as_str())
                );
                for from in [None, Some(&sender)] {
                    for topic in [None, Some(&topic)] {
                        let expected = to_json(&MessageOut {
                            kind: kind::MESSAGE,
                            id: &id,
                            via,
                            from,
                            topic,
                            action: &raw,
                        });
                        let action = ActionRef::parse(&raw, false).unwrap();
                        assert_eq!(
                            encode_topic_message(&id, via, from, topic, &action),
                            expected
                        );
                    }
                }
            }
            let result = serde_json::json!({"delivered": 3, "s": text});
            let expected = to_json(&AckOut {
                kind: kind::ACK,
                id: &id,
                result: &result,
            });
            assert_eq!(encode_ack(&id, &result), expected);
            let expected = to_json(&AckOut {
                kind: kind::ACK,
                id: &id,
                result: &*raw,
            });
            assert_eq!(encode_ack(&id, &*raw), expected);
            let mut out = Vec::new();
            write_ack_json(&mut out, &id, raw.get());
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
