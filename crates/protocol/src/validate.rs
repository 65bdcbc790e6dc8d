//! Strict validation of one JSON value, in the same pass that finds an
//! action's `type`.
//!
//! Every request carries an action, and the server forwards its bytes
//! verbatim, so they must be checked. serde_json's `RawValue` did that in
//! one walk and a second walk found the `type`; this does both at once, and
//! accepts exactly what serde_json's `RawValue` accepts (tested against it
//! on fixed and random inputs), except that it steps aside (`None`) for
//! values nested deeper than [`MAX_DEPTH`], which its callers then hand to
//! serde. The input is a `&str`, so UTF-8 is already checked.

use crate::scan::{first_escape, skip_ws};

/// Deepest nesting checked here; deeper values go to serde, which has no
/// limit for a `RawValue` either, so the bit stack below can stay one word.
pub(crate) const MAX_DEPTH: u32 = 64;

/// What the walk saw of the top-level `type` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeMember<'a> {
    /// One `type` member whose value is a string with nothing to unescape:
    /// its contents.
    Plain(&'a str),
    /// The value is an object with no `type` key (and no escaped keys, one of
    /// which could have been `type`).
    Absent,
    /// Anything else (not an object, an escaped key, a `type` that is
    /// escaped, repeated or not a string): serde decides.
    Unknown,
}

/// A valid JSON value at the start of some text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Valid<'a> {
    /// Its length in bytes (no trailing whitespace).
    pub len: usize,
    pub ty: TypeMember<'a>,
}

enum Expect {
    /// A value starts at the cursor.
    Value,
    /// A value ended just before the cursor.
    After,
}

/// Validates the JSON value that starts `text` (no leading whitespace) and
/// reports where it ends; what follows is the caller's to check. `None` when
/// it is not valid JSON, or deeper than [`MAX_DEPTH`].
pub(crate) fn value(text: &str) -> Option<Valid<'_>> {
    let b = text.as_bytes();
    let mut ty = if b.first() == Some(&b'{') {
        TypeMember::Absent
    } else {
        TypeMember::Unknown
    };
    // Bit 0 is the innermost open container: 1 for an object, 0 for an array.
    let mut objects: u64 = 0;
    let mut depth: u32 = 0;
    let mut i = 0;
    let mut expect = Expect::Value;
    loop {
        match expect {
            Expect::Value => {
                match *b.get(i)? {
                    b'"' => i = string_end(b, i)?.0,
                    open @ (b'{' | b'[') => {
                        if depth == MAX_DEPTH {
                            return None;
                        }
                        let object = open == b'{';
                        objects = (objects << 1) | u64::from(object);
                        depth += 1;
                        i = skip_ws(b, i + 1);
                        let close = if object { b'}' } else { b']' };
                        if *b.get(i)? == close {
                            objects >>= 1;
                            depth -= 1;
                            i += 1;
                        } else if object {
                            (i, expect) = member(text, i, depth == 1, &mut ty)?;
                            continue;
                        } else {
                            continue;
                        }
                    }
                    b't' => i = literal(b, i, b"true")?,
                    b'f' => i = literal(b, i, b"false")?,
                    b'n' => i = literal(b, i, b"null")?,
                    b'-' | b'0'..=b'9' => i = number_end(b, i)?,
                    _ => return None,
                }
                expect = Expect::After;
            }
            Expect::After => {
                if depth == 0 {
                    return Some(Valid { len: i, ty });
                }
                i = skip_ws(b, i);
                let object = objects & 1 == 1;
                match *b.get(i)? {
                    b',' => {
                        i = skip_ws(b, i + 1);
                        if object {
                            (i, expect) = member(text, i, depth == 1, &mut ty)?;
                        } else {
                            expect = Expect::Value;
                        }
                    }
                    b'}' if object => {
                        objects >>= 1;
                        depth -= 1;
                        i += 1;
                    }
                    b']' if !object => {
                        objects >>= 1;
                        depth -= 1;
                        i += 1;
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// An object member's key and colon at `i`, and, for the top-level `type`,
/// its value too; returns the cursor and what comes next. Inlined into the
/// walk for the same reason as [`string_end`] (41 fewer instructions per
/// rpc round trip).
#[inline(always)]
fn member<'a>(
    text: &'a str,
    i: usize,
    top_level: bool,
    ty: &mut TypeMember<'a>,
) -> Option<(usize, Expect)> {
    let b = text.as_bytes();
    if *b.get(i)? != b'"' {
        return None;
    }
    let (key_end, key_escaped) = string_end(b, i)?;
    let is_type = top_level && !key_escaped && &b[i..key_end] == b"\"type\"";
    if top_level && key_escaped {
        *ty = TypeMember::Unknown;
    }
    let mut j = skip_ws(b, key_end);
    if *b.get(j)? != b':' {
        return None;
    }
    j = skip_ws(b, j + 1);
    if !is_type {
        return Some((j, Expect::Value));
    }
    if *b.get(j)? != b'"' {
        *ty = TypeMember::Unknown;
        return Some((j, Expect::Value));
    }
    let (end, escaped) = string_end(b, j)?;
    *ty = match *ty {
        TypeMember::Absent if !escaped => TypeMember::Plain(&text[j + 1..end - 1]),
        _ => TypeMember::Unknown,
    };
    Some((end, Expect::After))
}

/// The index just past the string starting at `i` (a `"`), and whether it
/// has escapes; `None` for a bad escape, a control character or no end.
/// Inlined: it runs for every key and string value, most a few bytes long,
/// and as a call its saved registers cost about what its body does
/// (callgrind: 81 fewer instructions per rpc round trip inlined).
#[inline(always)]
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j += first_escape(b.get(j..)?)?;
        match b[j] {
            b'"' => return Some((j + 1, escaped)),
            b'\\' => {
                escaped = true;
                match *b.get(j + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                    b'u' => {
                        let hex = b.get(j + 2..j + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        j += 6;
                    }
                    _ => return None,
                }
            }
            // A control character, which JSON strings must escape.
            _ => return None,
        }
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..)?.starts_with(word).then_some(i + word.len())
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, as serde_json
/// reads it: a leading zero followed by a digit is an error, not the end.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], i: usize| {
        i + b.get(i..).map_or(0, |rest| {
            rest.iter().take_while(|c| c.is_ascii_digit()).count()
        })
    };
    if b[i] == b'-' {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => {
            i += 1;
            if b.get(i).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        }
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// What serde_json's `RawValue` makes of the value at the start of
    /// `text`: its length, or `None` if invalid.
    fn serde_len(text: &str) -> Option<usize> {
        serde_json::Deserializer::from_str(text)
            .into_iter::<&RawValue>()
            .next()?
            .ok()
            .map(|raw| raw.get().len())
    }

    /// Checks `text` against serde; whether it was valid.
    fn check(text: &str) -> bool {
        // Callers skip whitespace before a value; serde does it itself.
        let text = text.trim_start_matches([' ', '\t', '\n', '\r']);
        let ours = value(text).map(|v| v.len);
        let deep = text.bytes().filter(|c| matches!(c, b'[' | b'{')).count() > MAX_DEPTH as usize;
        if ours.is_none() && deep {
            return false; // stepping aside is allowed only here
        }
        // serde's stream reader refuses a number or literal run into other
        // bytes ("1x"); the envelope checks what follows, so compare on the
        // value alone.
        let serde = serde_len(text).or_else(|| ours.and_then(|n| serde_len(&text[..n])));
        assert_eq!(ours, serde, "{text:?}");
        ours.is_some()
    }

    #[test]
    fn accepts_and_refuses_what_serde_does() {
        let cases = [
            r#"{"type":"CHAT","text":"hi","n":[1,2]}"#,
            r#"{ "a" : [ 1 , { } , [ ] , "x" ] , "b" : null }"#,
            "[]",
            "{}",
            "[[[]]]",
            r#""\u00e9\n\t\"\\\/\b\f\r""#,
            r#""\u00G0""#,
            r#""\x""#,
            "\"ctl\u{1}\"",
            "\"unterminated",
            "0",
            "-0",
            "01",
            "-",
            "1.",
            "1.5",
            "1e",
            "1e+",
            "1E-7",
            "-12.5e10",
            ".5",
            "+1",
            "true",
            "tru",
            "nul",
            "false",
            "[1,]",
            "[,1]",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{1:2}"#,
            r#"{"a":}"#,
            "[1 2]",
            "[1}",
            r#"{"a":1]"#,
            "",
            " 1",
            "é",
        ];
        let valid = cases.into_iter().filter(|text| check(text)).count();
        assert_eq!(valid, 14);
    }

    #[test]
    fn nesting_up_to_the_limit_is_checked_here() {
        let n = MAX_DEPTH as usize;
        let ok = format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(value(&ok).map(|v| v.len), Some(ok.len()));
        let deeper = format!("{}{}", "[".repeat(n + 1), "]".repeat(n + 1));
        assert_eq!(value(&deeper), None);
        assert!(serde_len(&deeper).is_some(), "serde takes it from here");
        // Objects and arrays alternating all the way down, with members after
        // each close: every level must remember which kind it is.
        let mut mixed = String::new();
        for level in 0..n {
            mixed.push_str(if level % 2 == 0 { r#"{"a":"# } else { "[1," });
        }
        mixed.push_str("null");
        for level in (0..n).rev() {
            mixed.push_str(if level % 2 == 0 { r#","b":2}"# } else { "]" });
        }
        assert_eq!(value(&mixed).map(|v| v.len), Some(mixed.len()));
        assert_eq!(serde_len(&mixed), Some(mixed.len()));
        let swapped = mixed.replacen('}', "]", 1);
        assert_eq!(value(&swapped), None);
        assert_eq!(serde_len(&swapped), None);
    }

    /// Random JSON, serialised compactly and pretty, then cut and mutated
    /// byte by byte: whatever comes out, the walk and serde agree.
    #[test]
    fn agrees_with_serde_on_random_and_mutated_json() {
        use serde_json::{Map, Value, json};
        let mut next = crate::test_rng::below(0x853c_49e6_748f_ea9b_u64);
        fn value(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> Value {
            let strings = ["", "a", "é", "\"", "\\", "\u{1}", "}", "]", "type", "😀"];
            match next(if depth > 4 { 5 } else { 7 }) {
                0 => Value::Null,
                1 => json!(next(2) == 0),
                2 => json!(next(100_000) as i64 - 50_000),
                3 => json!(next(1000) as f64 / 7.0 * 1e-3),
                4 => json!(strings[next(strings.len() as u64) as usize]),
                5 => Value::Array((0..next(4)).map(|_| value(next, depth + 1)).collect()),
                _ => {
                    let mut m = Map::new();
                    for _ in 0..next(4) {
                        let k = strings[next(strings.len() as u64) as usize].to_owned();
                        m.insert(k, value(next, depth + 1));
                    }
                    Value::Object(m)
                }
            }
        }
        let noise = b"{}[],:\"\\ 0-.eE+tfnu\x01a9";
        let mut valid = 0;
        let (mut mutated, mut refused) = (0, 0);
        for _ in 0..4000 {
            let v = value(&mut next, 0);
            for text in [v.to_string(), serde_json::to_string_pretty(&v).unwrap()] {
                assert_eq!(value_len(&text), Some(text.len()), "{text}");
                valid += 1;
                // Cut short, and with one byte replaced, inserted or removed.
                let mut bytes = text.clone().into_bytes();
                let at = next(bytes.len() as u64 + 1) as usize;
                let mut check_bytes = |bytes: &[u8]| {
                    if let Ok(text) = std::str::from_utf8(bytes) {
                        mutated += 1;
                        refused += usize::from(!check(text));
                    }
                };
                check_bytes(&bytes[..at]);
                if !bytes.is_empty() {
                    let at = next(bytes.len() as u64) as usize;
                    let byte = noise[next(noise.len() as u64) as usize];
                    match next(3) {
                        0 => bytes[at] = byte,
                        1 => bytes.insert(at, byte),
                        _ => {
                            bytes.remove(at);
                        }
                    }
                    check_bytes(&bytes);
                }
            }
        }
        assert_eq!(valid, 8000);
        // Both verdicts must be well represented for the comparison to mean anything.
        assert!(
            refused > mutated / 4 && refused < mutated * 3 / 4,
            "{refused} of {mutated}"
        );

        fn value_len(text: &str) -> Option<usize> {
            super::value(text).map(|v| v.len)
        }
    }

    #[test]
    fn the_top_level_type_is_found_in_the_same_walk() {
        let cases = [
            (
                r#"{"type":"CHAT","text":"hi","n":[1,2]}"#,
                TypeMember::Plain("CHAT"),
            ),
            (r#"{ "n" : 1 , "type" : "T" }"#, TypeMember::Plain("T")),
            (
                r#"{"a":{"type":"inner"},"type":"outer"}"#,
                TypeMember::Plain("outer"),
            ),
            (r#"{"a":{"type":"inner"}}"#, TypeMember::Absent),
            (r#"{"type":"é ünï"}"#, TypeMember::Plain("é ünï")),
            (r#"{"type":"a\"b"}"#, TypeMember::Unknown),
            (r#"{"typ\u0065":"escaped key"}"#, TypeMember::Unknown),
            (
                r#"{"x\n":1,"type":"after an escaped key"}"#,
                TypeMember::Unknown,
            ),
            (r#"{"type":"a","type":"b"}"#, TypeMember::Unknown),
            (r#"{"type":1}"#, TypeMember::Unknown),
            (r#"{"type":{"type":"x"}}"#, TypeMember::Unknown),
            (r#"{"text":"no type"}"#, TypeMember::Absent),
            ("{}", TypeMember::Absent),
            (r#"["type","x"]"#, TypeMember::Unknown),
        ];
        for (text, ty) in cases {
            assert_eq!(
                value(text),
                Some(Valid {
                    len: text.len(),
                    ty
                }),
                "{text}"
            );
        }
    }
}
