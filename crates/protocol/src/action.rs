//! Actions: the application's messages, `{"type": "...", ...any fields}`.
//!
//! The server never re-serialises an action: it checks the head (`type`) and
//! forwards the client's bytes verbatim, so fan-out costs one encode per frame.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::validate::{self, TypeMember};

/// Action types starting with this prefix are system events sent by the server.
/// Clients may not send actions with such a type.
pub const RESERVED_PREFIX: &str = "@pubsub/";

/// Longest accepted action `type`, in bytes.
pub const MAX_TYPE_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("action must be a JSON object")]
    NotAnObject,
    #[error("action must have a non-empty string `type` of at most {MAX_TYPE_BYTES} bytes")]
    BadType,
    #[error("action type must not start with the reserved prefix `{RESERVED_PREFIX}`")]
    Reserved,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
}

/// A validated action borrowed from the frame it arrived in.
#[derive(Debug, Clone)]
pub struct ActionRef<'a> {
    ty: Cow<'a, str>,
    /// Valid JSON (an object), as the client sent it.
    json: &'a str,
}

impl<'a> ActionRef<'a> {
    /// Checks that `raw` is an object with a usable `type`. `allow_reserved`
    /// is for the server's own system events.
    pub fn parse(raw: &'a RawValue, allow_reserved: bool) -> Result<Self, ActionError> {
        let text = raw.get();
        let ty = validate::value(text).map_or(TypeMember::Unknown, |v| v.ty);
        Self::checked(text, ty, allow_reserved)
    }

    /// An action whose JSON is known to be valid, with what the validating
    /// walk found of its `type`; serde reads the `type` whenever the walk
    /// could not, so both ways give the same answer.
    pub(crate) fn checked(
        json: &'a str,
        ty: TypeMember<'a>,
        allow_reserved: bool,
    ) -> Result<Self, ActionError> {
        // serde accepts a JSON array for a struct, so check the shape first.
        if !json.starts_with('{') {
            return Err(ActionError::NotAnObject);
        }
        let ty = match ty {
            TypeMember::Plain(ty) => Cow::Borrowed(ty),
            TypeMember::Absent => return Err(ActionError::BadType),
            TypeMember::Unknown => {
                let head: Head<'a> =
                    serde_json::from_str(json).map_err(|_| ActionError::NotAnObject)?;
                head.ty.ok_or(ActionError::BadType)?
            }
        };
        if ty.is_empty() || ty.len() > MAX_TYPE_BYTES {
            return Err(ActionError::BadType);
        }
        if !allow_reserved && ty.starts_with(RESERVED_PREFIX) {
            return Err(ActionError::Reserved);
        }
        Ok(Self { ty, json })
    }

    pub fn action_type(&self) -> &str {
        &self.ty
    }

    /// The action exactly as the client sent it (valid JSON).
    pub fn json(&self) -> &'a str {
        self.json
    }

    pub fn to_owned(&self) -> Action {
        Action {
            ty: TypeText::of(&self.ty, self.json),
            json: self.json.into(),
        }
    }
}

/// Where an owned action keeps its `type`: as a span of its JSON when the
/// JSON spells it plainly (the usual case, one allocation fewer per
/// action), or unescaped on its own.
#[derive(Debug, Clone)]
enum TypeText {
    Span { start: usize, len: usize },
    Unescaped(Box<str>),
}

impl TypeText {
    fn of(ty: &str, json: &str) -> Self {
        let start = (ty.as_ptr() as usize).wrapping_sub(json.as_ptr() as usize);
        match json.get(start..start.wrapping_add(ty.len())) {
            // The same bytes at the same place: `ty` is a slice of `json`.
            Some(span) if span.as_ptr() == ty.as_ptr() => Self::Span {
                start,
                len: ty.len(),
            },
            _ => Self::Unescaped(ty.into()),
        }
    }

    fn get<'a>(&'a self, json: &'a str) -> &'a str {
        match self {
            Self::Span { start, len } => json.get(*start..start + len).unwrap_or_default(),
            Self::Unescaped(ty) => ty,
        }
    }
}

/// A validated action that owns its JSON.
#[derive(Debug, Clone)]
pub struct Action {
    ty: TypeText,
    /// Valid JSON (an object).
    json: Box<str>,
}

impl Action {
    /// Builds an action from any serialisable value (it must serialise to an
    /// object with a string `type`).
    pub fn from_serialize<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, ActionError> {
        let raw = serde_json::value::to_raw_value(value).map_err(|_| ActionError::NotAnObject)?;
        Self::from_raw(raw, true)
    }

    /// Validates an owned raw JSON value.
    pub fn from_raw(raw: Box<RawValue>, allow_reserved: bool) -> Result<Self, ActionError> {
        // A span's offsets hold across the conversion below: it keeps the
        // same bytes.
        let ty = TypeText::of(
            ActionRef::parse(&raw, allow_reserved)?.action_type(),
            raw.get(),
        );
        Ok(Self {
            ty,
            json: raw.into(),
        })
    }

    pub fn action_type(&self) -> &str {
        self.ty.get(&self.json)
    }

    /// The action's JSON, as it was sent (valid JSON).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The action's JSON, without a copy.
    pub fn into_json(self) -> String {
        self.json.into_string()
    }

    /// Deserialises the whole action into `T`.
    pub fn parse<'de, T: Deserialize<'de>>(&'de self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.json)
    }

    pub fn to_value(&self) -> serde_json::Value {
        // The JSON is valid by construction, so this cannot fail.
        serde_json::from_str(&self.json).unwrap_or(serde_json::Value::Null)
    }

    pub fn as_ref(&self) -> ActionRef<'_> {
        ActionRef {
            ty: Cow::Borrowed(self.action_type()),
            json: &self.json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    /// The `type` the validating walk found by itself, if it did.
    fn plain_type(text: &str) -> Option<&str> {
        match validate::value(text)?.ty {
            TypeMember::Plain(ty) => Some(ty),
            TypeMember::Absent | TypeMember::Unknown => None,
        }
    }

    /// The fast `type` scan either agrees with serde or steps aside.
    #[test]
    fn the_type_scan_agrees_with_serde() {
        let cases = [
            (r#"{"type":"CHAT","text":"hi","n":[1,2]}"#, Some("CHAT")),
            (r#"{ "n" : 1 , "type" : "T" }"#, Some("T")),
            (r#"{"a":{"type":"inner"},"type":"outer"}"#, Some("outer")),
            (
                r#"{"a":["}","{",{"b":"]"}],"type":"x","z":null}"#,
                Some("x"),
            ),
            (
                r#"{"a":"quote \" and \\ backslash }","type":"q"}"#,
                Some("q"),
            ),
            (r#"{"a":true,"b":-1.5e3,"type":"num"}"#, Some("num")),
            (r#"{"type":"é ünï"}"#, Some("é ünï")),
            (r#"{"type":"a\"b"}"#, None),
            (r#"{"typ\u0065":"escaped key"}"#, None),
            (r#"{"type":"a","type":"b"}"#, None),
            (r#"{"type":1}"#, None),
            (r#"{"text":"no type"}"#, None),
            (r#"{}"#, None),
        ];
        for (text, fast) in cases {
            assert_eq!(plain_type(text), fast, "{text}");
            let serde: Result<Head<'_>, _> = serde_json::from_str(text);
            if let Some(ty) = fast {
                assert_eq!(serde.unwrap().ty.as_deref(), Some(ty), "{text}");
            }
            // And the whole parse gives what serde alone would.
            let r = raw(text);
            let parsed = ActionRef::parse(&r, false).map(|a| a.action_type().to_owned());
            let by_serde = match serde_json::from_str::<Head<'_>>(text) {
                Err(_) => Err(ActionError::NotAnObject),
                Ok(Head { ty: None }) => Err(ActionError::BadType),
                Ok(Head { ty: Some(t) }) if t.is_empty() => Err(ActionError::BadType),
                Ok(Head { ty: Some(t) }) => Ok(t.into_owned()),
            };
            assert_eq!(parsed, by_serde, "{text}");
        }
    }

    /// Random objects, serialised compactly and pretty, with `type` placed
    /// anywhere among nested values full of braces, quotes and escapes.
    #[test]
    fn the_type_scan_agrees_with_serde_on_random_objects() {
        use serde_json::{Map, Value, json};
        let mut next = crate::test_rng::below(0x9E37_79B9_7F4A_7C15_u64);
        let strings = [
            "", "}", "{", "]", "\"", "\\", "a,b", "type", "é", "\u{1}", ":",
        ];
        fn value(next: &mut dyn FnMut(u64) -> u64, strings: &[&str], depth: u32) -> Value {
            match next(if depth > 3 { 4 } else { 6 }) {
                0 => Value::Null,
                1 => json!(next(1000) as f64 / 7.0),
                2 => json!(next(2) == 0),
                3 => json!(strings[next(strings.len() as u64) as usize]),
                4 => Value::Array(
                    (0..next(4))
                        .map(|_| value(next, strings, depth + 1))
                        .collect(),
                ),
                _ => {
                    let mut m = Map::new();
                    for _ in 0..next(4) {
                        let k = strings[next(strings.len() as u64) as usize].to_owned();
                        m.insert(k, value(next, strings, depth + 1));
                    }
                    Value::Object(m)
                }
            }
        }
        let mut answered = 0;
        for _ in 0..3000 {
            let mut m = Map::new();
            for _ in 0..next(5) {
                let k = strings[next(strings.len() as u64) as usize].to_owned();
                m.insert(k, value(&mut next, &strings, 0));
            }
            match next(4) {
                0 => {}
                1 => {
                    m.insert("type".into(), value(&mut next, &strings, 2));
                }
                _ => {
                    let ty = ["CHAT", "a b", "é", "x:y"][next(4) as usize];
                    m.insert("type".into(), json!(ty));
                }
            }
            let obj = Value::Object(m);
            for text in [obj.to_string(), serde_json::to_string_pretty(&obj).unwrap()] {
                let serde = serde_json::from_str::<Head<'_>>(&text)
                    .ok()
                    .and_then(|h| h.ty.map(Cow::into_owned));
                if let Some(fast) = plain_type(&text) {
                    answered += 1;
                    assert_eq!(Some(fast.to_owned()), serde, "{text}");
                }
                if validate::value(&text).unwrap().ty == TypeMember::Absent {
                    assert_eq!(serde, None, "{text}");
                }
            }
        }
        assert!(answered > 1000, "the scan answered only {answered} times");
    }

    #[test]
    fn accepts_objects_with_type() {
        let r = raw(r#"{"type":"CHAT","text":"hi","n":[1,2]}"#);
        let a = ActionRef::parse(&r, false).unwrap();
        assert_eq!(a.action_type(), "CHAT");
        assert_eq!(a.json(), r.get());
    }

    #[test]
    fn refuses_bad_shapes() {
        for bad in [
            r#"[1]"#,
            r#""x""#,
            r#"{"type":1}"#,
            r#"{"t":"x"}"#,
            r#"{"type":""}"#,
        ] {
            assert!(ActionRef::parse(&raw(bad), false).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_prefix_only_for_the_server() {
        let r = raw(r#"{"type":"@pubsub/STATUS_CHANGE"}"#);
        assert_eq!(
            ActionRef::parse(&r, false).unwrap_err(),
            ActionError::Reserved
        );
        assert!(ActionRef::parse(&r, true).is_ok());
    }

    #[test]
    fn escaped_type_is_decoded() {
        let r = raw(r#"{"type":"A\u0042"}"#);
        assert_eq!(ActionRef::parse(&r, false).unwrap().action_type(), "AB");
    }

    #[test]
    fn an_owned_action_keeps_a_plainly_spelled_type_as_a_span_of_its_json() {
        let cases = [
            (r#"{"n":1,"type":"CHAT","m":"CHAT"}"#, "CHAT", true),
            (r#"{ "type" : "é ü" }"#, "é ü", true),
            (r#"{"type":"a\"b"}"#, "a\"b", false),
            (r#"{"type":"\u0041"}"#, "A", false),
        ];
        for (text, ty, span) in cases {
            let from_ref = ActionRef::parse(&raw(text), false).unwrap().to_owned();
            let from_raw = Action::from_raw(raw(text), false).unwrap();
            for action in [from_ref, from_raw] {
                assert_eq!(action.action_type(), ty, "{text}");
                assert_eq!(matches!(action.ty, TypeText::Span { .. }), span, "{text}");
                assert_eq!(action.clone().action_type(), ty, "{text}");
                assert_eq!(action.as_ref().action_type(), ty, "{text}");
                assert_eq!(action.json(), text);
            }
        }
    }
}
