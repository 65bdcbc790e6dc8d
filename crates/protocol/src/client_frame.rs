//! Frames a client sends to the server: decoding (server side) and encoding
//! (client side).
//!
//! Decoding goes field by field rather than through a tagged serde enum so
//! that (a) the action stays borrowed text of the frame, validated (by
//! `validate`) but never re-serialised, and (b) an error can still name the
//! request id when another field is bad, which lets the client reject
//! exactly the promise that caused it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::action::{ActionError, ActionRef};
use crate::codes::ErrorCode;
use crate::ids::{MessageId, Topic, UserId};
use crate::received::{self, Received, ReceivedText};
use crate::scan::{plain_id_string, plain_json_string, skip_ws};
use crate::validate::{self, TypeMember};

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
    /// With it, the ids of earlier requests whose acks the client reports
    /// as received (`received`, usually empty).
    Request(Request<'a>, Received<'a>),
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
            ClientFrame::Request(r, _) => Some(r.id()),
            ClientFrame::Ping { id } | ClientFrame::Activity { id, .. } => id.as_ref(),
            ClientFrame::Pong => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Request(r, _) => r.kind().as_str(),
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
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>, id: Option<MessageId>) -> Self {
        Self {
            code,
            message: message.into(),
            id,
        }
    }
}

/// A frame's top-level members: each the JSON text of its value, and for the
/// action also what the validating walk found of its `type`.
#[derive(Debug, Default)]
struct Envelope<'a> {
    kind: Option<&'a str>,
    id: Option<&'a str>,
    to: Option<&'a str>,
    action: Option<ActionText<'a>>,
    topic: Option<&'a str>,
    users: Option<&'a str>,
    echo: Option<&'a str>,
    active: Option<&'a str>,
    received: Option<ReceivedText<'a>>,
    /// Set by [`Envelope::scan`]: `kind`, `id` and `topic` are strings with
    /// nothing to unescape, so their contents are the text inside the quotes.
    plain_strings: bool,
    /// Set by [`Envelope::scan`]: `id` is a plain id
    /// ([`plain_id_string`]), valid as it stands.
    plain_id: bool,
}

impl<'a> Envelope<'a> {
    /// The contents of a string member that needs no unescaping; `None` for
    /// anything else (serde's case).
    fn plain(&self, raw: &'a str) -> Option<&'a str> {
        if self.plain_strings {
            raw.get(1..raw.len().saturating_sub(1))
        } else {
            plain_str(raw)
        }
    }

    /// One pass for frames of the usual shape, serde for everything else
    /// (and for every error message).
    fn decode(text: &'a str) -> Result<Self, serde_json::Error> {
        match Self::scan(text) {
            Some(envelope) => Ok(envelope),
            None => Self::decode_with_serde(text),
        }
    }

    fn decode_with_serde(text: &'a str) -> Result<Self, serde_json::Error> {
        let env: SerdeEnvelope<'a> = serde_json::from_str(text)?;
        Ok(Envelope {
            kind: env.kind.map(RawValue::get),
            id: env.id.map(RawValue::get),
            to: env.to.map(RawValue::get),
            // The unusual path: serde validated the action, and reads its
            // `type` too.
            action: env.action.map(|raw| ActionText {
                json: raw.get(),
                ty: TypeMember::Unknown,
            }),
            topic: env.topic.map(RawValue::get),
            users: env.users.map(RawValue::get),
            echo: env.echo.map(RawValue::get),
            active: env.active.map(RawValue::get),
            received: env.received.map(|raw| ReceivedText {
                json: raw.get(),
                plain: None,
            }),
            plain_strings: false,
            plain_id: false,
        })
    }

    /// The members of a frame that is one JSON object whose keys need no
    /// unescaping and appear once each; `None` for anything else, and then
    /// serde decides. Whatever this accepts is valid JSON that serde decodes
    /// to the same members (tested against serde on fixed and random
    /// frames): the glue between members is checked here; `kind`, `id` and
    /// `topic` must be strings with nothing to unescape, `echo` and `active`
    /// literals, and every other value (the action above all) is validated
    /// by the walk in `validate`, which accepts what serde accepts.
    fn scan(text: &'a str) -> Option<Self> {
        let b = text.as_bytes();
        let mut i = skip_ws(b, 0);
        if *b.get(i)? != b'{' {
            return None;
        }
        i = skip_ws(b, i + 1);
        let mut env = Envelope {
            plain_strings: true,
            ..Envelope::default()
        };
        if *b.get(i)? == b'}' {
            i += 1;
        } else {
            loop {
                let at_key = text.get(i..)?;
                let (member, key_len) = match known_key(at_key) {
                    Some((member, len)) => (Some(member), len),
                    // Not a name frames use (those were all tried): a
                    // member to ignore, once its key and value are valid.
                    None => (None, plain_json_string(at_key)?.len()),
                };
                i = skip_ws(b, i + key_len);
                if *b.get(i)? != b':' {
                    return None;
                }
                i = skip_ws(b, i + 1);
                let rest = text.get(i..)?;
                let len = match member {
                    Some(Member::Kind) => fill(
                        &mut env.kind,
                        known_kind(rest).or_else(|| plain_json_string(rest))?,
                    )?,
                    Some(Member::Id) => match plain_id_string(rest) {
                        Some(id) => {
                            env.plain_id = true;
                            fill(&mut env.id, id)?
                        }
                        None => fill(&mut env.id, plain_json_string(rest)?)?,
                    },
                    Some(Member::Topic) => fill(&mut env.topic, plain_json_string(rest)?)?,
                    Some(Member::Echo) => fill(&mut env.echo, json_bool(rest)?)?,
                    Some(Member::Active) => fill(&mut env.active, json_bool(rest)?)?,
                    Some(Member::Action) => fill(&mut env.action, action_value(rest)?)?,
                    Some(Member::To) => fill(&mut env.to, not_null(one_value(rest)?)?)?,
                    Some(Member::Users) => fill(&mut env.users, not_null(one_value(rest)?)?)?,
                    Some(Member::Received) => fill(&mut env.received, received_value(rest)?)?,
                    None => one_value(rest)?.len(),
                };
                i = skip_ws(b, i + len);
                match *b.get(i)? {
                    b',' => i = skip_ws(b, i + 1),
                    b'}' => {
                        i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        (skip_ws(b, i) == b.len()).then_some(env)
    }
}

/// The members a frame's envelope has.
#[derive(Clone, Copy)]
enum Member {
    Kind,
    Id,
    Action,
    Active,
    Received,
    Topic,
    To,
    Echo,
    Users,
}

/// The member whose quoted name starts `rest`, and that name's length
/// (quotes included). The closing quote ends the key, so a match is that
/// name exactly: a few compared bytes instead of a string scan per key.
/// Inlined into the scan: as a call, four a request, its frame cost about
/// what its compares do (callgrind: 40 fewer instructions per rpc round
/// trip inlined).
#[inline(always)]
fn known_key(rest: &str) -> Option<(Member, usize)> {
    // Literal names, each compared where it is written: through a table,
    // the comparisons became calls to `bcmp` that cost what the scan did.
    let b = rest.as_bytes();
    let name =
        |quoted: &[u8], member: Member| b.starts_with(quoted).then_some((member, quoted.len()));
    match b.get(1)? {
        b'k' => name(b"\"kind\"", Member::Kind),
        b'i' => name(b"\"id\"", Member::Id),
        b'a' => name(b"\"action\"", Member::Action).or_else(|| name(b"\"active\"", Member::Active)),
        b'r' => name(b"\"received\"", Member::Received),
        b't' => name(b"\"topic\"", Member::Topic).or_else(|| name(b"\"to\"", Member::To)),
        b'e' => name(b"\"echo\"", Member::Echo),
        b'u' => name(b"\"users\"", Member::Users),
        _ => None,
    }
}

/// The quoted name of a kind at the start of `rest`, if it is one of the
/// kinds clients send: compared where it is written, as [`known_key`]
/// does, instead of scanned as a string of unknown length.
fn known_kind(rest: &str) -> Option<&str> {
    let b = rest.as_bytes();
    let name = |quoted: &'static str| b.starts_with(quoted.as_bytes()).then_some(quoted);
    let quoted = match b.get(1)? {
        b's' => name("\"sendToServer\"").or_else(|| name("\"sendToUser\"")),
        b'b' => name("\"broadcast\""),
        b'p' => name("\"publish\"")
            .or_else(|| name("\"presence\""))
            .or_else(|| name("\"ping\""))
            .or_else(|| name("\"pong\"")),
        b'a' => name("\"activity\""),
        b'j' => name("\"join\""),
        b'l' => name("\"leave\""),
        b'w' => name("\"watch\""),
        b'u' => name("\"unwatch\""),
        _ => None,
    }?;
    rest.get(..quoted.len())
}

/// The text of a member's value, as it is stored.
trait ValueText {
    fn text_len(&self) -> usize;
}

impl ValueText for &str {
    fn text_len(&self) -> usize {
        self.len()
    }
}

impl ValueText for ReceivedText<'_> {
    fn text_len(&self) -> usize {
        self.json.len()
    }
}

impl ValueText for ActionText<'_> {
    fn text_len(&self) -> usize {
        self.json.len()
    }
}

/// The action's JSON text, valid, and what the walk found of its `type`.
#[derive(Debug, Clone, Copy)]
struct ActionText<'a> {
    json: &'a str,
    ty: TypeMember<'a>,
}

/// Stores a member's value and returns the length of its text; `None` if
/// the member came before (serde calls that an error, and gets to say so).
fn fill<T: ValueText>(slot: &mut Option<T>, value: T) -> Option<usize> {
    if slot.is_some() {
        return None;
    }
    let len = value.text_len();
    *slot = Some(value);
    Some(len)
}

/// `true` or `false` at the start of `rest` (followed by a delimiter, which
/// the caller checks).
fn json_bool(rest: &str) -> Option<&str> {
    ["true", "false"]
        .into_iter()
        .find(|literal| rest.starts_with(literal))
        .map(|literal| &rest[..literal.len()])
}

/// The text of the one valid JSON value at the start of `rest`.
fn one_value(rest: &str) -> Option<&str> {
    validate::value(rest).map(|valid| &rest[..valid.len])
}

/// The action at the start of `rest`, validated and its `type` found in one walk.
fn action_value(rest: &str) -> Option<ActionText<'_>> {
    validate::value(rest).map(|valid| ActionText {
        json: &rest[..valid.len],
        ty: valid.ty,
    })
}

/// `received` at the start of `rest`: the list clients send is checked here
/// in full, anything else only as JSON (and by serde later).
fn received_value(rest: &str) -> Option<ReceivedText<'_>> {
    Some(match received::plain_list(rest) {
        Some(list) => ReceivedText {
            json: list.text,
            plain: Some(list.ids),
        },
        None => ReceivedText {
            json: not_null(one_value(rest)?)?,
            plain: None,
        },
    })
}

/// For `to` and `users`, `null` means absent: serde's case.
fn not_null(value: &str) -> Option<&str> {
    (value != "null").then_some(value)
}

#[derive(Deserialize)]
struct SerdeEnvelope<'a> {
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
    #[serde(borrow)]
    received: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(UserId),
    Many(Vec<UserId>),
}

/// The contents of a JSON string that needs no unescaping, borrowed from the
/// frame; `None` for anything else. `raw` is valid JSON, so a string without
/// a backslash holds no quote or control character to worry about (a
/// cheaper test than `plain_json_string`, which cannot assume validity).
/// A byte loop, not `contains`: ids and kinds are a few bytes long, and
/// `memchr` costs more to set up than such a loop takes.
fn plain_str(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    inner.bytes().all(|b| b != b'\\').then_some(inner)
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
    let env = Envelope::decode(text).map_err(|e| {
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
        Some(raw) if env.plain_id => Some(MessageId::from_plain(&raw[1..raw.len() - 1])),
        Some(raw) => Some(match env.plain(raw).and_then(|s| MessageId::new(s).ok()) {
            Some(id) => id,
            None => serde_json::from_str::<MessageId>(raw).map_err(|e| {
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
        Some(raw) => match env.plain(raw) {
            Some(kind) => std::borrow::Cow::Borrowed(kind),
            None => serde_json::from_str(raw).map_err(|_| {
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
        let action = env.action.ok_or_else(|| {
            FrameError::new(
                ErrorCode::InvalidAction,
                "missing `action`",
                Some(id.clone()),
            )
        })?;
        ActionRef::checked(action.json, action.ty, false).map_err(|e| {
            let code = match e {
                ActionError::Reserved => ErrorCode::ReservedType,
                ActionError::NotAnObject | ActionError::BadType => ErrorCode::InvalidAction,
            };
            FrameError::new(code, e.to_string(), Some(id.clone()))
        })
    };

    let request = match &*kind {
        kind::BROADCAST => {
            let id = need_id(id)?;
            let action = need_action(&id)?;
            Request::Broadcast { id, action }
        }
        kind::SEND_TO_USER => {
            let id = need_id(id)?;
            let to = decode_recipients(env.to, &id, limits)?;
            let action = need_action(&id)?;
            Request::SendToUser { id, to, action }
        }
        kind::SEND_TO_SERVER => {
            let id = need_id(id)?;
            let action = need_action(&id)?;
            Request::SendToServer { id, action }
        }
        kind::PUBLISH => {
            let id = need_id(id)?;
            let topic = decode_topic(env.topic, &id)?;
            let echo = decode_bool(env.echo, "echo", Some(&id))?.unwrap_or(false);
            let action = need_action(&id)?;
            Request::Publish {
                id,
                topic,
                action,
                echo,
            }
        }
        kind::JOIN => {
            let id = need_id(id)?;
            let topic = decode_topic(env.topic, &id)?;
            Request::Join { id, topic }
        }
        kind::LEAVE => {
            let id = need_id(id)?;
            let topic = decode_topic(env.topic, &id)?;
            Request::Leave { id, topic }
        }
        kind::PRESENCE | kind::WATCH | kind::UNWATCH => {
            let id = need_id(id)?;
            let users = decode_users(env.users, "users", &id, limits.max_users_per_request)?;
            match &*kind {
                kind::PRESENCE => Request::Presence { id, users },
                kind::WATCH => Request::Watch { id, users },
                _ => Request::Unwatch { id, users },
            }
        }
        kind::ACTIVITY => {
            let active = decode_bool(env.active, "active", id.as_ref())?.ok_or_else(|| {
                FrameError::new(ErrorCode::InvalidField, "missing `active`", id.clone())
            })?;
            return Ok(ClientFrame::Activity { id, active });
        }
        kind::PING => return Ok(ClientFrame::Ping { id }),
        kind::PONG => return Ok(ClientFrame::Pong),
        other => {
            return Err(FrameError::new(
                ErrorCode::UnknownKind,
                format!("unknown kind `{}`", truncate(other, 64)),
                id,
            ));
        }
    };
    let received = Received::decode(env.received, request.id())?;
    Ok(ClientFrame::Request(request, received))
}

fn decode_recipients(
    raw: Option<&str>,
    id: &MessageId,
    limits: &DecodeLimits,
) -> Result<Vec<UserId>, FrameError> {
    decode_users(raw, "to", id, limits.max_recipients)
}

fn decode_topic(raw: Option<&str>, id: &MessageId) -> Result<Topic, FrameError> {
    let raw = raw.ok_or_else(|| {
        FrameError::new(ErrorCode::InvalidTopic, "missing `topic`", Some(id.clone()))
    })?;
    let name: std::borrow::Cow<'_, str> = serde_json::from_str(raw).map_err(|_| {
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
    raw: Option<&str>,
    field: &str,
    id: Option<&MessageId>,
) -> Result<Option<bool>, FrameError> {
    match raw {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<bool>(raw).map(Some).map_err(|_| {
            FrameError::new(
                ErrorCode::InvalidField,
                format!("`{field}` must be true or false"),
                id.cloned(),
            )
        }),
    }
}

fn decode_users(
    raw: Option<&str>,
    field: &str,
    id: &MessageId,
    max: usize,
) -> Result<Vec<UserId>, FrameError> {
    let invalid = |msg: String| FrameError::new(ErrorCode::InvalidField, msg, Some(id.clone()));
    let raw = raw.ok_or_else(|| invalid(format!("missing `{field}`")))?;
    let list = match serde_json::from_str::<OneOrMany>(raw) {
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
    /// Ids of earlier requests whose acks arrived (docs/protocol.md 2.2.1);
    /// omitted when empty.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub received: &'a [MessageId],
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

    #[test]
    fn every_kind_is_known_by_its_quoted_name_and_only_by_it() {
        for name in [
            kind::BROADCAST,
            kind::SEND_TO_USER,
            kind::SEND_TO_SERVER,
            kind::PUBLISH,
            kind::JOIN,
            kind::LEAVE,
            kind::ACTIVITY,
            kind::PRESENCE,
            kind::WATCH,
            kind::UNWATCH,
            kind::PING,
            kind::PONG,
        ] {
            let quoted = format!("\"{name}\"");
            assert_eq!(
                known_kind(&format!("{quoted},\"id\":1")),
                Some(quoted.as_str())
            );
            // Cut short or run on, it is some other string.
            assert_eq!(known_kind(&format!("\"{name}x\"")), None, "{name}");
            assert_eq!(known_kind(&quoted[..quoted.len() - 2]), None, "{name}");
        }
        assert_eq!(known_kind("\"send\\u0054oServer\""), None);
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
            matches!(f, ClientFrame::Request(Request::SendToServer { id, .. }, _) if id.as_str() == "m-1")
        );
        let longest = "a".repeat(crate::ids::MAX_ID_BYTES);
        let frame = format!(r#"{{"kind":"ping","id":"{longest}"}}"#);
        let f = decode_client_frame(&frame, &limits());
        assert!(matches!(f, Ok(ClientFrame::Ping { id: Some(id) }) if id.as_str() == longest));
        let long = "a".repeat(crate::ids::MAX_ID_BYTES + 1);
        for bad_id in [
            format!(r#""{long}""#),
            String::from(r#""""#),
            String::from(r#""a\u0001""#),
            String::from("7"),
            // Control characters JSON does not make one escape: DEL and C1.
            String::from("\"a\u{7f}\""),
            String::from("\"a\u{85}\""),
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
            ClientFrame::Request(Request::Publish { echo: true, .. }, _)
        ));
        let e = decode_client_frame(r#"{"kind":"join","id":"j","topic":"bad topic"}"#, &limits())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidTopic);
        let f =
            decode_client_frame(r#"{"kind":"watch","id":"w","users":["a",1]}"#, &limits()).unwrap();
        assert!(
            matches!(f, ClientFrame::Request(Request::Watch { users, .. }, _) if users.len() == 2)
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
            ClientFrame::Request(Request::SendToUser { id, to, action }, _) => {
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
        assert!(matches!(
            f,
            ClientFrame::Request(Request::Broadcast { .. }, _)
        ));
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

    fn members<'a>(e: &Envelope<'a>) -> [Option<&'a str>; 8] {
        [
            e.kind,
            e.id,
            e.to,
            e.action.map(|a| a.json),
            e.topic,
            e.users,
            e.echo,
            e.active,
        ]
    }

    /// The one-pass envelope scan either agrees with serde or steps aside.
    fn scan_agrees_with_serde(text: &str) -> bool {
        let serde = Envelope::decode_with_serde(text);
        let Some(fast) = Envelope::scan(text) else {
            return false;
        };
        let slow =
            serde.unwrap_or_else(|e| panic!("scan accepted what serde refuses ({e}): {text:?}"));
        assert_eq!(members(&fast), members(&slow), "{text:?}");
        true
    }

    #[test]
    fn the_envelope_scan_takes_usual_frames_and_agrees_with_serde() {
        let usual = [
            r#"{"kind":"sendToServer","id":"c1-7","action":{"type":"e","t":1764114000000}}"#,
            r#"{"kind":"sendToUser","id":"m-1","to":["bob","44",44],"action":{"type":"CHAT","text":"hi \"you\" \\ \u00e9"}}"#,
            r#"{"kind":"sendToUser","id":"m-2","to":"bob","action":{"type":"T"}}"#,
            r#"{"kind":"publish","id":"p","topic":"room-1","action":{"type":"T","a":[1,{"b":null}]},"echo":true}"#,
            r#"{"kind":"activity","active":false}"#,
            r#"{"kind":"ping"}"#,
            r#"{"kind":"watch","id":"w","users":["a","b"]}"#,
            " \t\n{ \"kind\" : \"broadcast\" , \"id\" : \"b\" , \"action\" : { \"type\" : \"T\" } , \"extra\" : [ 1 , 2.5e-3 , -0 ] } \r\n",
            r#"{"kind":"broadcast","id":"b","action":{"type":"T"},"unknown":{"nested":[[[]]]},"n":null}"#,
            r#"{}"#,
            // Keys that begin like the envelope's names are other members.
            r#"{"kinds":"x","kind":"ping","i":1,"idx":2,"act":3,"actions":4,"t":5,"top":6,"toe":7,"e":8,"user":9,"receive":10}"#,
            r#"{"k":"","kind":"ping"}"#,
        ];
        for text in usual {
            assert!(
                scan_agrees_with_serde(text),
                "the scan should take {text:?}"
            );
        }
        // Unusual or invalid: the scan steps aside (serde decides, and names the error).
        let unusual = [
            r#"{"kin\u0064":"ping"}"#,
            r#"{"kind":"ping","kind":"pong"}"#,
            r#"{"kind":"p\u0069ng"}"#,
            r#"{"kind":null}"#,
            r#"{"id":"a","id":null,"kind":"ping"}"#,
            r#"{"kind":"ping","echo":1}"#,
            r#"{"kind":"ping",}"#,
            r#"{"kind":"ping"} x"#,
            r#"{"kind":"ping"}{}"#,
            r#"{"kind" "ping"}"#,
            r#"{"kind":"ping","x":01}"#,
            r#"{"kind":"ping","x":1.}"#,
            r#"{"kind":"ping","x":tru}"#,
            r#"{"kind":"ping","x":"bad \x escape"}"#,
            "{\"kind\":\"ping\",\"x\":\"control \u{1} char\"}",
            "{\"kind\":\"ping\",\"x\u{1}\":1}",
            r#"{"kind":"ping","x":[1,2}"#,
            r#"{"kind":"ping","x":{"a":1]}"#,
            r#"{"kind":"ping","x":"unterminated}"#,
            "\u{a0}{\"kind\":\"ping\"}",
            r#"["kind","ping"]"#,
            r#"{"kind":"ping""#,
            r#"{"kind":"ping","users\u0020":1}"#,
        ];
        for text in unusual {
            assert!(
                !scan_agrees_with_serde(text),
                "the scan should leave {text:?} to serde"
            );
        }
        // Values serde does not deserialize may nest as deep as they like:
        // the scan walks 64 levels and leaves deeper ones to serde.
        let nested = |depth: usize| {
            format!(
                r#"{{"kind":"ping","x":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert!(scan_agrees_with_serde(&nested(64)));
        let deep = nested(300);
        assert!(!scan_agrees_with_serde(&deep));
        assert!(Envelope::decode(&deep).is_ok());
        assert!(matches!(
            decode_client_frame(&deep, &limits()),
            Ok(ClientFrame::Ping { id: None })
        ));
    }

    /// Thousands of frames mangled at random: whenever the scan accepts one,
    /// serde accepts it too and reads the same members.
    #[test]
    fn the_envelope_scan_agrees_with_serde_on_mangled_frames() {
        let seeds = [
            r#"{"kind":"sendToUser","id":"m-1","to":["bob",44],"action":{"type":"CHAT","t":[1.5,-2e3,true,null],"s":"\"q\" \\ \u00e9"},"echo":false}"#,
            r#"{ "kind" : "publish" , "id" : "p" , "topic" : "t" , "action" : { "type" : "T" } , "x" : { } }"#,
        ];
        let alphabet: &[u8] = b"{}[]\",:\\ \t\n0123456789-+.eEtrufalsn\x01kindaco";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            // xorshift64*: repeatable, no dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        };
        let (mut taken, mut total) = (0, 0);
        for seed in seeds {
            for _ in 0..6_000 {
                let mut bytes = seed.as_bytes().to_vec();
                for _ in 0..1 + next(3) {
                    let at = next(bytes.len());
                    let c = alphabet[next(alphabet.len())];
                    match next(3) {
                        0 => bytes[at] = c,
                        1 => bytes.insert(at, c),
                        _ => {
                            bytes.remove(at);
                        }
                    }
                }
                let Ok(text) = String::from_utf8(bytes) else {
                    continue;
                };
                total += 1;
                if scan_agrees_with_serde(&text) {
                    taken += 1;
                }
            }
        }
        // Both sides of the comparison were exercised.
        assert!(
            taken > 500 && taken < total,
            "{taken} of {total} taken by the scan"
        );
    }

    #[test]
    fn received_rides_on_requests_through_the_scan_and_through_serde() {
        let received = |text: &str| match decode_client_frame(text, &limits()) {
            Ok(ClientFrame::Request(_, r)) => r.iter().map(str::to_owned).collect::<Vec<_>>(),
            other => panic!("{text}: {other:?}"),
        };
        let scanned =
            r#"{"kind":"sendToServer","id":"m-3","action":{"type":"t"},"received":["m-1","m-2"]}"#;
        assert!(
            Envelope::scan(scanned).is_some_and(|e| e.received.is_some_and(|r| r.plain.is_some()))
        );
        assert_eq!(received(scanned), ["m-1", "m-2"]);
        // An escaped key sends the whole frame to serde.
        let via_serde = r#"{"kind":"sendToServer","id":"m-3","action":{"type":"t"},"\u0072eceived":["m-1","m\u002d2"]}"#;
        assert!(Envelope::scan(via_serde).is_none());
        assert_eq!(received(via_serde), ["m-1", "m-2"]);
        for absent in [
            r#"{"kind":"join","id":"j","topic":"t"}"#,
            r#"{"kind":"join","id":"j","topic":"t","received":null}"#,
            r#"{"kind":"join","id":"j","topic":"t","received":[]}"#,
        ] {
            assert!(received(absent).is_empty(), "{absent}");
        }
        // Not a request: ignored, even when it would be invalid.
        assert!(matches!(
            decode_client_frame(r#"{"kind":"ping","received":[1]}"#, &limits()),
            Ok(ClientFrame::Ping { .. })
        ));
        let bad = decode_client_frame(
            r#"{"kind":"publish","id":"p","topic":"t","action":{"type":"t"},"received":["ok",7]}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(
            (bad.code, bad.id.as_ref().map(MessageId::as_str)),
            (ErrorCode::InvalidField, Some("p"))
        );
    }
}
