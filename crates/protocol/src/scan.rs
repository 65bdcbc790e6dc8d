//! Byte-level JSON scanning: whitespace and strings, for the frame's
//! top-level members (client_frame.rs), the validating walk (validate.rs)
//! and the frame writers (server_frame.rs).

use crate::ids::MAX_ID_BYTES;

/// The index of the first byte at or after `i` that is not JSON whitespace.
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// Whether a byte stands for itself inside a JSON string: not a quote, a
/// backslash or a control character (which is all serde_json escapes).
pub(crate) fn needs_no_escape(c: u8) -> bool {
    c >= 0x20 && c != b'"' && c != b'\\'
}

/// Whether a byte stands for itself inside a JSON string and is printable
/// ASCII (0x20 to 0x7e, neither `"` nor `\`): what a plain id is made of.
pub(crate) fn plain_ascii(c: u8) -> bool {
    needs_no_escape(c) && c < 0x7f
}

/// The index of the first byte of `b` that does not stand for itself in a
/// JSON string (see [`needs_no_escape`]). Eight bytes at a time: ids, kinds
/// and types are scanned in every frame, and a byte loop spent more
/// instructions on them than any other part of decoding a request.
pub(crate) fn first_escape(b: &[u8]) -> Option<usize> {
    first_stop::<true, false>(b)
}

/// The index of the first byte of `b` that is not [`plain_ascii`]: the
/// same walk as [`first_escape`], which also stops at DEL and at every byte
/// of a multi-byte character, so that an id it runs through needs no other
/// check for control characters.
pub(crate) fn first_not_plain_ascii(b: &[u8]) -> Option<usize> {
    first_stop::<true, true>(b)
}

/// Whether every byte of `b` is printable ASCII (0x20 to 0x7e), quotes and
/// backslashes included: the ids' control-character check.
pub(crate) fn printable_ascii(b: &[u8]) -> bool {
    first_stop::<false, true>(b).is_none()
}

/// The first byte below 0x20, or equal to `"` or `\` (`QUOTES`), or from
/// 0x7f up (`NON_ASCII`).
fn first_stop<const QUOTES: bool, const NON_ASCII: bool>(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // The high bit of each byte that stops the walk. A borrow (from a
        // byte below 0x20 or equal to a quote or backslash) or a carry
        // (from a byte of 0xff) can also set it in the byte above one that
        // stops, never below: the lowest bit set is the first stop.
        let mut found = x.wrapping_sub(ONES * 0x20) & !x;
        if QUOTES {
            let quote = x ^ (ONES * u64::from(b'"'));
            let backslash = x ^ (ONES * u64::from(b'\\'));
            found |=
                (quote.wrapping_sub(ONES) & !quote) | (backslash.wrapping_sub(ONES) & !backslash);
        }
        if NON_ASCII {
            // A byte from 0x80 by its own high bit, DEL by adding one.
            found |= x | x.wrapping_add(ONES);
        }
        found &= HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let stops = |c: u8| match (QUOTES, NON_ASCII) {
        (true, false) => !needs_no_escape(c),
        (true, true) => !plain_ascii(c),
        (false, _) => c < 0x20 || (NON_ASCII && c >= 0x7f),
    };
    chunks
        .remainder()
        .iter()
        .position(|&c| stops(c))
        .map(|i| at + i)
}

/// The JSON string at the start of `rest`, quotes included, if it has
/// nothing to unescape and no control characters (so it is certainly valid).
pub(crate) fn plain_json_string(rest: &str) -> Option<&str> {
    let b = rest.as_bytes();
    if *b.first()? != b'"' {
        return None;
    }
    let end = 1 + first_escape(b.get(1..)?)?;
    (b[end] == b'"').then(|| &rest[..=end])
}

/// The JSON string at the start of `rest`, quotes included, if it is a
/// plain id: 1 to [`MAX_ID_BYTES`] bytes of printable ASCII with nothing to
/// unescape. Such an id is valid as it stands (`ids::validate` accepts
/// it), so one walk checks both the string and the id.
pub(crate) fn plain_id_string(rest: &str) -> Option<&str> {
    let b = rest.as_bytes();
    if *b.first()? != b'"' {
        return None;
    }
    let end = 1 + first_not_plain_ascii(b.get(1..)?)?;
    (b[end] == b'"' && (2..=MAX_ID_BYTES + 1).contains(&end)).then(|| &rest[..=end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytewise(b: &[u8]) -> Option<usize> {
        b.iter().position(|&c| !needs_no_escape(c))
    }

    fn bytewise_ascii(b: &[u8]) -> Option<usize> {
        b.iter().position(|&c| !plain_ascii(c))
    }

    /// The word scans against their byte loops.
    fn check(v: &[u8]) {
        assert_eq!(first_escape(v), bytewise(v), "{v:?}");
        assert_eq!(first_not_plain_ascii(v), bytewise_ascii(v), "{v:?}");
        let printable = v.iter().all(|c| (0x20..0x7f).contains(c));
        assert_eq!(printable_ascii(v), printable, "{v:?}");
    }

    #[test]
    fn the_word_scan_finds_what_the_byte_scan_finds() {
        // Every interesting byte at every position of strings up to 40
        // bytes, behind bytes that are fine (ASCII and UTF-8 alike), and
        // several matches in one word (a borrow must not hide the first).
        let fine: &[u8] = b"a Z~\x7f";
        let fine_utf8 = "é€😀".as_bytes();
        let special = [b'"', b'\\', 0x00, 0x1f, b'\n', 0x7f, 0x80, 0xff, 0xc3];
        for len in 0..40 {
            for at in 0..=len {
                for &c in &special {
                    let mut v: Vec<u8> = (0..len).map(|i| fine[i % fine.len()]).collect();
                    if at < len {
                        v[at] = c;
                    }
                    check(&v);
                    if at + 1 < len {
                        v[at + 1] = 0x00;
                        check(&v);
                    }
                }
            }
            let v: Vec<u8> = fine_utf8.iter().cycle().take(len).copied().collect();
            check(&v);
        }
        // Pseudo-random bytes, biased towards the ones that matter.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 33) as usize;
            let v: Vec<u8> = (0..len)
                .map(|i| {
                    let r = (seed >> (i % 56)) as u8;
                    match r % 7 {
                        0 => special[usize::from(r) % special.len()],
                        1 => 0x80 | r,
                        2 => 0x20 + r % 3,
                        _ => b'a' + r % 26,
                    }
                })
                .collect();
            check(&v);
        }
    }

    #[test]
    fn plain_ids_are_what_ids_validate_accepts_among_plain_strings() {
        let max = "x".repeat(MAX_ID_BYTES);
        let long = "x".repeat(MAX_ID_BYTES + 1);
        for inner in [
            "a", "c12-345", "~ !#", &max, &long, "", "é", "a\u{7f}", "a\\n", "a\u{85}",
        ] {
            let quoted = format!("\"{inner}\"");
            let rest = format!("{quoted},\"x\":1}}");
            let expected = plain_json_string(&rest).is_some()
                && crate::ids::validate(inner).is_ok()
                && inner.is_ascii();
            assert_eq!(
                plain_id_string(&rest),
                expected.then_some(quoted.as_str()),
                "{inner:?}"
            );
        }
    }
}
