//! Actions: the application's messages, `{"type": "...", ...any fields}`.
//!
//! The server never re-serialises an action: it checks the head (`type`) and
//! forwards the client's bytes verbatim, so fan-out costs one encode per frame.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

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
    raw: &'a RawValue,
}

impl<'a> ActionRef<'a> {
    /// Checks that `raw` is an object with a usable `type`. `allow_reserved`
    /// is for the server's own system events.
    pub fn parse(raw: &'a RawValue, allow_reserved: bool) -> Result<Self, ActionError> {
        let text = raw.get();
        // serde accepts a JSON array for a struct, so check the shape first.
        if !text.starts_with('{') {
            return Err(ActionError::NotAnObject);
        }
        let head: Head<'a> = serde_json::from_str(text).map_err(|_| ActionError::NotAnObject)?;
        let ty = head.ty.ok_or(ActionError::BadType)?;
        if ty.is_empty() || ty.len() > MAX_TYPE_BYTES {
            return Err(ActionError::BadType);
        }
        if !allow_reserved && ty.starts_with(RESERVED_PREFIX) {
            return Err(ActionError::Reserved);
        }
        Ok(Self { ty, raw })
    }

    pub fn action_type(&self) -> &str {
        &self.ty
    }

    /// The action exactly as the client sent it.
    pub fn raw(&self) -> &'a RawValue {
        self.raw
    }

    pub fn to_owned(&self) -> Action {
        Action {
            ty: self.ty.clone().into_owned().into_boxed_str(),
            raw: self.raw.to_owned(),
        }
    }
}

/// A validated action that owns its JSON.
#[derive(Debug, Clone)]
pub struct Action {
    ty: Box<str>,
    raw: Box<RawValue>,
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
        let ty = ActionRef::parse(&raw, allow_reserved)?
            .action_type()
            .to_owned()
            .into_boxed_str();
        Ok(Self { ty, raw })
    }

    pub fn action_type(&self) -> &str {
        &self.ty
    }

    pub fn raw(&self) -> &RawValue {
        &self.raw
    }

    /// Deserialises the whole action into `T`.
    pub fn parse<'de, T: Deserialize<'de>>(&'de self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.raw.get())
    }

    pub fn to_value(&self) -> serde_json::Value {
        // A RawValue is valid JSON by construction, so this cannot fail.
        serde_json::from_str(self.raw.get()).unwrap_or(serde_json::Value::Null)
    }

    pub fn as_ref(&self) -> ActionRef<'_> {
        ActionRef {
            ty: Cow::Borrowed(&self.ty),
            raw: &self.raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn accepts_objects_with_type() {
        let r = raw(r#"{"type":"CHAT","text":"hi","n":[1,2]}"#);
        let a = ActionRef::parse(&r, false).unwrap();
        assert_eq!(a.action_type(), "CHAT");
        assert_eq!(a.raw().get(), r.get());
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
}
