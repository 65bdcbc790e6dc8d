//! `received`: the ids of earlier requests whose acks a client reports
//! having received (docs/protocol.md 2.2.1), so that the server can forget
//! their outcomes instead of keeping them for the whole retry window.
//!
//! It rides on request frames, most of which carry one or two ids, so the
//! usual list (plain strings) is checked in the frame's one scan
//! ([`plain_list`]), stays borrowed text of the frame and is walked again
//! where it is used: no allocation per request. Anything else (escaped
//! ids) goes through serde once.

use crate::client_frame::FrameError;
use crate::codes::ErrorCode;
use crate::ids::{self, MessageId};
use crate::scan::{first_escape, plain_id_string, plain_json_string, skip_ws};

/// Most ids one frame may report.
pub const MAX_RECEIVED: usize = 64;

/// The ids a request frame reports as acked: empty unless it had `received`.
#[derive(Debug, Clone, Default)]
pub struct Received<'a>(Ids<'a>);

#[derive(Debug, Clone, Default)]
enum Ids<'a> {
    #[default]
    None,
    /// The one id of a plain list, as the list's check found it: most
    /// requests report one ack, and this spares walking the list again
    /// for it.
    One(&'a str),
    /// A JSON array of at most [`MAX_RECEIVED`] strings, each a valid id with
    /// nothing to unescape (checked when decoded).
    Plain(&'a str),
    Owned(Vec<MessageId>),
}

/// The JSON text of a frame's `received` member, and what the frame's scan
/// found of it if it is a short list of plain ids ([`plain_list`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReceivedText<'a> {
    pub(crate) json: &'a str,
    pub(crate) plain: Option<PlainIds<'a>>,
}

/// How many ids a plain list holds, and the one when it holds one (as most
/// requests' lists do: the ack before).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PlainIds<'a> {
    Empty,
    One(&'a str),
    Several,
}

/// A list as clients send it ([`plain_list`]).
pub(crate) struct PlainList<'a> {
    /// Its text, brackets included.
    pub(crate) text: &'a str,
    pub(crate) ids: PlainIds<'a>,
}

/// The list at the start of `rest` if it is what clients send: at most
/// [`MAX_RECEIVED`] strings, each a valid id with nothing to unescape.
/// `None` for anything else, which serde then decides.
pub(crate) fn plain_list(rest: &str) -> Option<PlainList<'_>> {
    let b = rest.as_bytes();
    if *b.first()? != b'[' {
        return None;
    }
    let mut i = skip_ws(b, 1);
    if *b.get(i)? == b']' {
        return Some(PlainList {
            text: &rest[..=i],
            ids: PlainIds::Empty,
        });
    }
    let mut several = false;
    for _ in 0..MAX_RECEIVED {
        let at = rest.get(i..)?;
        let quoted = match plain_id_string(at) {
            Some(quoted) => quoted,
            None => {
                let quoted = plain_json_string(at)?;
                ids::validate(&quoted[1..quoted.len() - 1]).ok()?;
                quoted
            }
        };
        i = skip_ws(b, i + quoted.len());
        match *b.get(i)? {
            b',' => {
                several = true;
                i = skip_ws(b, i + 1);
            }
            b']' => {
                return Some(PlainList {
                    text: &rest[..=i],
                    ids: if several {
                        PlainIds::Several
                    } else {
                        PlainIds::One(&quoted[1..quoted.len() - 1])
                    },
                });
            }
            _ => return None,
        }
    }
    None
}

impl<'a> Received<'a> {
    /// Reads `received` (`None` when absent) of the request `id`.
    pub(crate) fn decode(
        raw: Option<ReceivedText<'a>>,
        id: &MessageId,
    ) -> Result<Self, FrameError> {
        let Some(ReceivedText { json: raw, plain }) = raw else {
            return Ok(Self::default());
        };
        // serde's path found the text, not the list: look at it here.
        if let Some(plain) = plain.or_else(|| plain_list(raw).map(|list| list.ids)) {
            return Ok(Self(match plain {
                PlainIds::Empty => Ids::None,
                PlainIds::One(id) => Ids::One(id),
                PlainIds::Several => Ids::Plain(raw),
            }));
        }
        match serde_json::from_str::<Vec<MessageId>>(raw) {
            Ok(ids) if ids.len() <= MAX_RECEIVED => Ok(Self(if ids.is_empty() {
                Ids::None
            } else {
                Ids::Owned(ids)
            })),
            _ => Err(FrameError::new(
                ErrorCode::InvalidField,
                format!(
                    "`received` must be a list of at most {MAX_RECEIVED} request ids (strings of 1 to {} bytes)",
                    crate::ids::MAX_ID_BYTES
                ),
                Some(id.clone()),
            )),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self.0, Ids::None)
    }

    /// The reported ids, in the order the client listed them.
    pub fn iter(&self) -> ReceivedIds<'_> {
        ReceivedIds(match &self.0 {
            Ids::None => IdsLeft::Plain(""),
            Ids::One(id) => IdsLeft::One(Some(id)),
            Ids::Plain(raw) => IdsLeft::Plain(raw),
            Ids::Owned(ids) => IdsLeft::Owned(ids.iter()),
        })
    }
}

/// The ids of a [`Received`], in order. Walked once per request that
/// reports acks: splitting the list on quotes (`split`, `step_by`, `chain`)
/// cost ~500 instructions for one id, more than finding and dropping its
/// record, so it walks the bytes itself.
#[derive(Debug, Clone)]
pub struct ReceivedIds<'r>(IdsLeft<'r>);

#[derive(Debug, Clone)]
enum IdsLeft<'r> {
    One(Option<&'r str>),
    /// The rest of a plain list, from just past the last id yielded.
    Plain(&'r str),
    Owned(std::slice::Iter<'r, MessageId>),
}

impl<'r> Iterator for ReceivedIds<'r> {
    type Item = &'r str;

    fn next(&mut self) -> Option<&'r str> {
        match &mut self.0 {
            IdsLeft::One(id) => id.take(),
            IdsLeft::Owned(ids) => ids.next().map(MessageId::as_str),
            IdsLeft::Plain(rest) => {
                // A plain list was checked when decoded: between its ids
                // stand only brackets, commas and whitespace, and its
                // strings hold no quote, no backslash and no control
                // character, so the first byte `first_escape` stops at
                // past an opening quote is the closing one.
                let open = rest.bytes().position(|c| c == b'"')? + 1;
                let len = first_escape(rest.as_bytes().get(open..)?)?;
                let id = rest.get(open..open + len)?;
                *rest = rest.get(open + len + 1..).unwrap_or("");
                Some(id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &str) -> Result<Vec<String>, FrameError> {
        let id = MessageId::new("r").unwrap();
        let plain = plain_list(raw)
            .filter(|list| list.text.len() == raw.len())
            .map(|list| list.ids);
        let text = ReceivedText { json: raw, plain };
        Received::decode(Some(text), &id).map(|r| r.iter().map(str::to_owned).collect())
    }

    #[test]
    fn plain_and_escaped_lists_yield_their_ids_in_order() {
        assert_eq!(decoded(r#"["a-1","b-2"]"#).unwrap(), ["a-1", "b-2"]);
        assert_eq!(decoded(r#"["a-1"]"#).unwrap(), ["a-1"]);
        assert_eq!(decoded(r#"[ "a-1"]"#).unwrap(), ["a-1"]);
        assert_eq!(decoded(r#"["a\u002d1"]"#).unwrap(), ["a-1"]);
        assert_eq!(decoded(r#"[ "a-1" , "b-2" ]"#).unwrap(), ["a-1", "b-2"]);
        assert_eq!(decoded(r#"["a\u002d1","b"]"#).unwrap(), ["a-1", "b"]);
        assert!(decoded("[]").unwrap().is_empty());
        assert!(decoded("[ ]").unwrap().is_empty());
        let id = MessageId::new("r").unwrap();
        assert!(Received::decode(None, &id).unwrap().is_empty());
    }

    #[test]
    fn plain_lists_yield_what_serde_reads_from_them() {
        // Ids of every length up to the limit, of bytes that need no escape
        // (ASCII, UTF-8 and the punctuation around ids), in lists with
        // whitespace anywhere JSON allows it.
        let chars = [
            'a', 'Z', '0', '-', ',', '[', ']', ' ', ':', '{', 'é', '€', '😀', '~',
        ];
        let spaces = ["", " ", "\t", "\n ", "\r\n"];
        let mut next = crate::test_rng::below(0x2f6b_3c1d_9a4e_7781_u64);
        let mut plain = 0;
        for _ in 0..3_000 {
            let mut list = String::from("[");
            let count = next(6) as usize;
            for n in 0..count {
                if n > 0 {
                    list.push_str(spaces[next(5) as usize]);
                    list.push(',');
                }
                list.push_str(spaces[next(5) as usize]);
                list.push('"');
                let long = next(8) == 0;
                let len = 1 + next(if long { 128 } else { 16 }) as usize;
                let mut id = String::new();
                while id.len() < len {
                    let c = chars[next(chars.len() as u64) as usize];
                    if id.len() + c.len_utf8() > crate::ids::MAX_ID_BYTES {
                        break;
                    }
                    id.push(c);
                }
                list.push_str(&id);
                list.push('"');
            }
            list.push_str(spaces[next(5) as usize]);
            list.push(']');
            let expected: Vec<String> = serde_json::from_str(&list).unwrap();
            plain += usize::from(plain_list(&list).is_some());
            assert_eq!(decoded(&list).unwrap(), expected, "{list}");
        }
        // The lists above are what the fast path is for: it must take them.
        assert_eq!(plain, 3_000);
    }

    #[test]
    fn anything_but_a_short_list_of_ids_is_an_invalid_field() {
        let ids = |n: usize| {
            let list: Vec<String> = (0..n).map(|i| format!("\"id-{i}\"")).collect();
            format!("[{}]", list.join(","))
        };
        assert_eq!(decoded(&ids(MAX_RECEIVED)).unwrap().len(), MAX_RECEIVED);
        for bad in [
            ids(MAX_RECEIVED + 1),
            r#""a-1""#.to_owned(),
            "[1]".to_owned(),
            r#"[""]"#.to_owned(),
            format!(r#"["{}"]"#, "x".repeat(crate::ids::MAX_ID_BYTES + 1)),
            r#"["a",{}]"#.to_owned(),
            r#"{"a":1}"#.to_owned(),
            r#"["a\u0001"]"#.to_owned(),
        ] {
            let e = decoded(&bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidField, "{bad}");
            assert_eq!(e.id.as_ref().map(MessageId::as_str), Some("r"), "{bad}");
        }
    }
}
