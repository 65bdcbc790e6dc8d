//! Byte-level JSON scanning for the fast path that finds an action's `type`
//! (action.rs) and the frame's top-level members (client_frame.rs). None of
//! it validates values; its callers scan text serde already validated, or
//! check the little they accept themselves and have serde validate the rest,
//! and step aside (`None`) for serde whenever anything is unusual.

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

/// The JSON string at the start of `rest`, quotes included, if it has
/// nothing to unescape and no control characters (so it is certainly valid).
pub(crate) fn plain_json_string(rest: &str) -> Option<&str> {
    let b = rest.as_bytes();
    if *b.first()? != b'"' {
        return None;
    }
    let end = 1 + b.get(1..)?.iter().position(|&c| !needs_no_escape(c))?;
    (b[end] == b'"').then(|| &rest[..=end])
}

/// The index just after the value starting at `i`, found by following
/// strings and brackets only. For valid JSON that is the value's end (for a
/// number or literal, the next `,`, `}` or `]`, so trailing whitespace is
/// included); for anything else it is some index, or `None`.
pub(crate) fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *b.get(i)? {
            b'"' => {
                i += 1;
                loop {
                    match *b.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            b',' if depth == 0 => return Some(i),
            _ => i += 1,
        }
    }
}
