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

/// A string at `i` with no escapes: the range of its contents and the index
/// after its closing quote. (It does not look for control characters.)
pub(crate) fn plain_string(b: &[u8], i: usize) -> Option<(std::ops::Range<usize>, usize)> {
    if *b.get(i)? != b'"' {
        return None;
    }
    let start = i + 1;
    let end = start
        + b.get(start..)?
            .iter()
            .position(|&c| c == b'"' || c == b'\\')?;
    (b[end] == b'"').then_some((start..end, end + 1))
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
