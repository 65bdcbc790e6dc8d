//! Identifiers that cross the wire: user ids, client ids and message ids.
//!
//! All three are cheap to clone because the server copies them into routing
//! tables, idempotency records and every delivered frame. User and client
//! ids are `Arc<str>`: they live as long as connections, which hold several
//! copies each. A message id lives for one request and is copied a few
//! times on its way; short ones (up to 23 bytes, which is what clients
//! send) are stored inline (`SmolStr`), so a request allocates nothing for
//! its id and copying it touches no shared reference count.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;

use crate::scan::printable_ascii;

/// Longest user id or message id accepted, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_BYTES} bytes")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must be a string or an integer")]
    WrongType,
}

pub(crate) fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong);
    }
    // Most ids are printable ASCII: check bytes eight at a time (every
    // request's id used to be checked here, and a byte loop cost more than
    // the rest of making the id), and decode only the rest (C1 controls,
    // U+0080–U+009F, are multi-byte in UTF-8).
    if !printable_ascii(s.as_bytes()) && s.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($repr:ty), accepts_integers = $ints:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($repr);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(value: impl AsRef<str>) -> Result<Self, IdError> {
                let value = value.as_ref();
                validate(value)?;
                Ok(Self(<$repr>::from(value)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer
                    .deserialize_any(IdVisitor::<$repr>::new($ints))
                    .map(Self)
            }
        }
    };
}

id_type!(
    /// A user's id. The original package accepted strings and numbers; numbers
    /// are carried as their decimal string, so `44` and `"44"` are the same user.
    UserId(Arc<str>),
    accepts_integers = true
);

id_type!(
    /// A connection's id, assigned by the server and unique across a cluster.
    ClientId(Arc<str>),
    accepts_integers = false
);

id_type!(
    /// A request's id, chosen by the client. It correlates acknowledgements,
    /// responses and errors, and is the idempotency key for retries.
    MessageId(SmolStr),
    accepts_integers = false
);

impl MessageId {
    /// An id whose text the frame's scan found plain
    /// ([`crate::scan::plain_id_string`]), which [`validate`] accepts.
    pub(crate) fn from_plain(id: &str) -> Self {
        debug_assert!(validate(id).is_ok(), "{id:?}");
        Self(SmolStr::from(id))
    }
}

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 200;

/// A topic name: 1–200 bytes of `A–Z a–z 0–9 _ - : . / @ =`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic names must be 1 to {MAX_TOPIC_BYTES} bytes")]
    Length,
    #[error("topic names may only use A-Z a-z 0-9 _ - : . / @ =")]
    Charset,
}

impl Topic {
    pub fn new(name: impl AsRef<str>) -> Result<Self, TopicError> {
        let name = name.as_ref();
        if name.is_empty() || name.len() > MAX_TOPIC_BYTES {
            return Err(TopicError::Length);
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:./@=".contains(&b))
        {
            return Err(TopicError::Charset);
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Topic::new(&*name).map_err(de::Error::custom)
    }
}

impl UserId {
    /// The user id for an integer, as the original package allowed.
    pub fn from_integer(value: i64) -> Self {
        Self(Arc::from(value.to_string()))
    }
}

/// Reads an id into its representation (`Arc<str>` or `SmolStr`).
struct IdVisitor<T> {
    integers: bool,
    repr: PhantomData<T>,
}

impl<T: for<'a> From<&'a str>> IdVisitor<T> {
    fn new(integers: bool) -> Self {
        Self {
            integers,
            repr: PhantomData,
        }
    }

    fn checked<E: de::Error>(value: &str) -> Result<T, E> {
        validate(value).map_err(E::custom)?;
        Ok(T::from(value))
    }
}

impl<T: for<'a> From<&'a str>> Visitor<'_> for IdVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.integers {
            f.write_str("a string or an integer id")
        } else {
            f.write_str("a string id")
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Self::checked(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        if !self.integers {
            return Err(E::custom(IdError::WrongType));
        }
        Ok(T::from(v.to_string().as_str()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        if !self.integers {
            return Err(E::custom(IdError::WrongType));
        }
        Ok(T::from(v.to_string().as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_check_for_printable_ascii_agrees_with_a_byte_loop() {
        let bytewise = |b: &[u8]| b.iter().all(|c| (0x20..0x7f).contains(c));
        let fine = b"a Z~-_:.0";
        for len in 0..30 {
            for at in 0..=len {
                for bad in [0x00, 0x1f, 0x7f, 0x80, 0xc3, 0xff, 0x20, 0x7e] {
                    let mut v: Vec<u8> = (0..len).map(|i| fine[i % fine.len()]).collect();
                    if at < len {
                        v[at] = bad;
                    }
                    assert_eq!(printable_ascii(&v), bytewise(&v), "{v:?}");
                    if at + 1 < len {
                        v[at + 1] = 0xff;
                        assert_eq!(printable_ascii(&v), bytewise(&v), "{v:?}");
                    }
                }
            }
        }
    }

    /// Message ids short enough to be stored inline and long ones on the
    /// heap read, compare and hash alike, however they were made.
    #[test]
    fn message_ids_of_every_length_read_and_compare_alike() {
        use std::collections::HashSet;
        let mut seen = HashSet::new();
        for len in [1, 22, 23, 24, 64, MAX_ID_BYTES] {
            let text = "m".repeat(len - 1) + "x";
            let made = MessageId::new(&text).unwrap();
            let read: MessageId = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(made, read);
            assert_eq!(made.as_str(), text);
            assert_eq!(made.clone().as_str().len(), len);
            assert_eq!(serde_json::to_string(&read).unwrap(), format!("\"{text}\""));
            assert!(seen.insert(made.clone()));
            assert!(
                seen.contains(text.as_str()),
                "Borrow<str> must hash as the id does"
            );
        }
        assert_eq!(
            MessageId::new("m".repeat(MAX_ID_BYTES + 1)),
            Err(IdError::TooLong)
        );
        assert!(serde_json::from_str::<MessageId>("7").is_err());
    }

    #[test]
    fn topic_names_follow_the_charset() {
        assert!(Topic::new("product:1234").is_ok());
        assert!(Topic::new("a/b.c@d=e_f-g").is_ok());
        assert_eq!(Topic::new(""), Err(TopicError::Length));
        assert_eq!(Topic::new("x".repeat(201)), Err(TopicError::Length));
        assert_eq!(Topic::new("room 1"), Err(TopicError::Charset));
        assert_eq!(Topic::new("café"), Err(TopicError::Charset));
    }

    #[test]
    fn integers_become_decimal_user_ids() {
        let id: UserId = serde_json::from_str("44").unwrap();
        assert_eq!(id.as_str(), "44");
        assert_eq!(id, UserId::new("44").unwrap());
    }

    #[test]
    fn message_ids_must_be_strings() {
        assert!(serde_json::from_str::<MessageId>("7").is_err());
        assert!(serde_json::from_str::<MessageId>("\"m-7\"").is_ok());
    }

    #[test]
    fn refuses_empty_long_and_control_characters() {
        assert_eq!(UserId::new(""), Err(IdError::Empty));
        assert_eq!(
            UserId::new("a".repeat(MAX_ID_BYTES + 1)),
            Err(IdError::TooLong)
        );
        assert_eq!(UserId::new("a\nb"), Err(IdError::ControlCharacter));
        // DEL and the C1 controls too, not only the ASCII ones below 0x20.
        for bad in ["a\u{7f}", "a\u{85}b", "\u{9f}"] {
            assert_eq!(UserId::new(bad), Err(IdError::ControlCharacter), "{bad:?}");
        }
        assert!(UserId::new("é ü \u{a0} 猫").is_ok());
        assert!(UserId::new("a".repeat(MAX_ID_BYTES)).is_ok());
        assert!(serde_json::from_str::<UserId>("1.5").is_err());
    }
}
