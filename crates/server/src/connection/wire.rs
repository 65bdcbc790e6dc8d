//! RFC 6455 framing, server side.
//!
//! Written here rather than taken from tungstenite because the server's two
//! hot paths need what a per-connection codec cannot give: a frame to many
//! recipients is framed **once** (server frames are unmasked, so the bytes are
//! identical for everyone) and written straight to each socket, and an idle
//! connection holds no read buffer (reads go through a per-thread scratch
//! buffer; only an incomplete frame is kept per connection).
//!
//! Supported: text, binary, continuation, ping, pong, close; masking required
//! from clients; no extensions (RSV bits must be 0); messages bounded by
//! `max_message_bytes` before they are buffered.

use bytes::{BufMut, Bytes, BytesMut};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Largest control-frame payload (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A complete message or control frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client's close: its status code (if any) and reason.
    Close(Option<u16>),
}

/// A complete message or control frame, borrowed from the bytes it was
/// read from: what the connection answers at once needs no copy of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    Close(Option<u16>),
}

impl Message<'_> {
    /// A copy to keep past the bytes it was read from.
    pub(crate) fn to_incoming(self) -> Incoming {
        match self {
            Message::Text(text) => Incoming::Text(text.to_owned()),
            Message::Binary(data) => Incoming::Binary(data.to_vec()),
            Message::Ping(payload) => Incoming::Ping(payload.to_vec()),
            Message::Pong => Incoming::Pong,
            Message::Close(code) => Incoming::Close(code),
        }
    }
}

impl Incoming {
    pub(crate) fn as_message(&self) -> Message<'_> {
        match self {
            Incoming::Text(text) => Message::Text(text),
            Incoming::Binary(data) => Message::Binary(data),
            Incoming::Ping(payload) => Message::Ping(payload),
            Incoming::Pong => Message::Pong,
            Incoming::Close(code) => Message::Close(*code),
        }
    }
}

/// Why the client's bytes cannot be read further; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("WebSocket protocol violation: {0}")]
    Protocol(&'static str),
    #[error("message larger than the limit")]
    TooBig,
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

/// The longest server frame header: opcode, length marker, 64-bit length.
pub(crate) const MAX_HEADER: usize = 10;

/// The header of a final, unmasked frame with a payload this long, and how
/// many of the bytes it uses.
pub(crate) fn frame_header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut header = [0u8; MAX_HEADER];
    header[0] = 0x80 | opcode;
    let used = if len < 126 {
        header[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        header[1] = 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, used)
}

/// [`frame_header`] for a text frame.
pub(crate) fn text_header(len: usize) -> ([u8; MAX_HEADER], usize) {
    frame_header(OP_TEXT, len)
}

/// Frames one server message: header plus payload in one buffer.
pub(crate) fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let (header, used) = frame_header(opcode, payload.len());
    // Exactly the frame's size: `freeze` then hands the buffer to `Bytes`
    // as it is, where spare capacity would cost another allocation.
    let mut buf = BytesMut::with_capacity(used + payload.len());
    buf.put_slice(&header[..used]);
    buf.put_slice(payload);
    buf.freeze()
}

pub(crate) fn encode_text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

pub(crate) fn encode_pong(payload: &[u8]) -> Bytes {
    encode(OP_PONG, payload)
}

/// A close frame with `code` and a reason cut to what fits a control frame.
pub(crate) fn encode_close(code: u16, reason: &str) -> Bytes {
    let reason = pubsub_protocol::client_frame::truncate(reason, MAX_CONTROL_PAYLOAD - 2);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(OP_CLOSE, &payload)
}

/// The payload of a frame this module encoded (for replaying and tests).
pub(crate) fn payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header..).unwrap_or(&[])
}

/// Turns the client's byte stream into messages. Keeps only an incomplete
/// frame and an unfinished fragmented message between reads.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// Bytes of a frame that has not fully arrived.
    partial: Vec<u8>,
    /// The opcode and payload so far of a fragmented message. Boxed: few
    /// clients fragment, and the parser lives in every connection's task.
    fragments: Option<Box<(u8, Vec<u8>)>>,
}

impl Parser {
    /// A parser that starts with `bytes` received but not parsed yet (what
    /// a client sent right behind its handshake); [`Parser::feed`] with no
    /// data parses them.
    pub(crate) fn with_unread(bytes: Vec<u8>) -> Self {
        Self {
            partial: bytes,
            fragments: None,
        }
    }

    /// Whether bytes received are kept unparsed: an incomplete frame, or
    /// what [`Parser::with_unread`] started with.
    pub(crate) fn has_unread(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Parses `data` (appended to anything kept from before) into `out`, as
    /// owned messages.
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        max_message: usize,
        out: &mut Vec<Incoming>,
    ) -> Result<(), WireError> {
        let mut data = data.to_vec();
        self.feed_in_place(&mut data, max_message, &mut |message, _| {
            out.push(message.to_incoming());
        })
    }

    /// Parses `data` (appended to anything kept from before), unmasking
    /// each complete frame where it lies, and hands each message to
    /// `on_message` borrowed from there, with whether more bytes follow it
    /// in this read. Keeps only an incomplete frame (still masked).
    pub(crate) fn feed_in_place(
        &mut self,
        data: &mut [u8],
        max_message: usize,
        on_message: &mut impl FnMut(Message<'_>, bool),
    ) -> Result<(), WireError> {
        if self.partial.is_empty() {
            let used = self.parse(data, max_message, on_message)?;
            self.partial.extend_from_slice(&data[used..]);
        } else {
            let mut buffered = std::mem::take(&mut self.partial);
            buffered.extend_from_slice(data);
            let used = self.parse(&mut buffered, max_message, on_message)?;
            buffered.drain(..used);
            self.partial = buffered;
        }
        // An idle connection should not keep a large buffer from one big message.
        if self.partial.is_empty() && self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        }
        Ok(())
    }

    /// Parses complete frames from `buf`; returns how many bytes were used.
    fn parse(
        &mut self,
        buf: &mut [u8],
        max_message: usize,
        on_message: &mut impl FnMut(Message<'_>, bool),
    ) -> Result<usize, WireError> {
        let total = buf.len();
        let mut at = 0;
        while let Some((header, len)) = header(&buf[at..], max_message)? {
            let end = at + header + len;
            if end > total {
                break;
            }
            let b0 = buf[at];
            let key = [
                buf[at + header - 4],
                buf[at + header - 3],
                buf[at + header - 2],
                buf[at + header - 1],
            ];
            let body = &mut buf[at + header..end];
            unmask(body, key);
            at = end;
            self.frame(
                b0 & 0x80 != 0,
                b0 & 0x0f,
                body,
                max_message,
                at < total,
                on_message,
            )?;
        }
        Ok(at)
    }

    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        body: &[u8],
        max_message: usize,
        more: bool,
        on_message: &mut impl FnMut(Message<'_>, bool),
    ) -> Result<(), WireError> {
        match opcode {
            OP_TEXT | OP_BINARY => {
                if self.fragments.is_some() {
                    return Err(WireError::Protocol(
                        "new message before the fragmented one ended",
                    ));
                }
                if fin {
                    on_message(message(opcode, body)?, more);
                } else {
                    self.fragments = Some(Box::new((opcode, body.to_vec())));
                }
            }
            OP_CONTINUATION => {
                let Some((_, so_far)) = self.fragments.as_deref_mut() else {
                    return Err(WireError::Protocol("continuation without a message"));
                };
                if so_far.len() + body.len() > max_message {
                    return Err(WireError::TooBig);
                }
                so_far.extend_from_slice(body);
                if fin && let Some(fragmented) = self.fragments.take() {
                    let (opcode, whole) = *fragmented;
                    on_message(message(opcode, &whole)?, more);
                }
            }
            OP_PING => on_message(Message::Ping(body), more),
            OP_PONG => on_message(Message::Pong, more),
            OP_CLOSE => on_message(Message::Close(close_code(body)?), more),
            _ => return Err(WireError::Protocol("unknown opcode")),
        }
        Ok(())
    }
}

fn message(opcode: u8, body: &[u8]) -> Result<Message<'_>, WireError> {
    if opcode == OP_TEXT {
        std::str::from_utf8(body)
            .map(Message::Text)
            .map_err(|_| WireError::InvalidUtf8)
    } else {
        Ok(Message::Binary(body))
    }
}

/// The status code of a close frame, checked as RFC 6455 7.4 requires.
fn close_code(body: &[u8]) -> Result<Option<u16>, WireError> {
    match body.len() {
        0 => Ok(None),
        1 => Err(WireError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([body[0], body[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(WireError::Protocol("invalid close code"));
            }
            std::str::from_utf8(&body[2..]).map_err(|_| WireError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Reads a frame header: `(header length, payload length)`, or `None` when
/// more bytes are needed. Rejects what RFC 6455 forbids before any payload
/// is buffered.
fn header(buf: &[u8], max_message: usize) -> Result<Option<(usize, usize)>, WireError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WireError::Protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    let opcode = b0 & 0x0f;
    let control = opcode & 0x08 != 0;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(WireError::Protocol("unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(WireError::Protocol("client frames must be masked"));
    }
    let (len, length_bytes) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (
                u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                8,
            ),
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    if control && (b0 & 0x80 == 0 || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(WireError::Protocol(
            "control frames must be whole and at most 125 bytes",
        ));
    }
    if len > max_message as u64 {
        return Err(WireError::TooBig);
    }
    let header = 2 + length_bytes + 4;
    if buf.len() < header {
        return Ok(None);
    }
    Ok(Some((header, len as usize)))
}

/// XORs `body` with the repeating 4-byte `key`, eight bytes at a time: a
/// request is about a hundred bytes, and a 4-byte loop spent more
/// instructions on it than parsing its frame header.
fn unmask(body: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = body.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // Eight is a multiple of four: the tail starts at key[0] again.
    for (b, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `key`.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn parse_all(bytes: &[u8], chunk: usize) -> Result<Vec<Incoming>, WireError> {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for part in bytes.chunks(chunk.max(1)) {
            parser.feed(part, 1 << 20, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn unmasking_matches_the_bytewise_xor_at_every_length() {
        let key = [0x12, 0x9a, 0xff, 0x01];
        for len in 0..40 {
            let plain: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
            let mut body: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            unmask(&mut body, key);
            assert_eq!(body, plain, "length {len}");
        }
    }

    #[test]
    fn server_frames_use_the_shortest_length_encoding() {
        assert_eq!(&encode_text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let mid = encode_text(&[b'x'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        assert_eq!(payload(&mid).len(), 300);
        let big = encode_text(&vec![b'x'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
        assert_eq!(payload(&big).len(), 70_000);
        assert_eq!(
            &encode_close(1000, "bye")[..],
            &[0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']
        );
    }

    #[test]
    fn frames_split_anywhere_still_parse() {
        let mut stream = client_frame(true, OP_TEXT, "héllo".as_bytes(), [1, 2, 3, 4]);
        stream.extend(client_frame(true, OP_PING, b"p", [9, 9, 9, 9]));
        stream.extend(client_frame(true, OP_TEXT, &[b'a'; 70_000], [5, 6, 7, 8]));
        for chunk in [1, 3, 7, 4096, stream.len()] {
            let out = parse_all(&stream, chunk).unwrap();
            assert_eq!(out.len(), 3, "chunk {chunk}");
            assert_eq!(out[0], Incoming::Text("héllo".into()));
            assert_eq!(out[1], Incoming::Ping(b"p".to_vec()));
            assert!(matches!(&out[2], Incoming::Text(t) if t.len() == 70_000));
        }
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_between() {
        let mut stream = client_frame(false, OP_TEXT, b"ab", [1, 1, 1, 1]);
        stream.extend(client_frame(true, OP_PING, b"", [2, 2, 2, 2]));
        stream.extend(client_frame(false, OP_CONTINUATION, b"cd", [3, 3, 3, 3]));
        stream.extend(client_frame(true, OP_CONTINUATION, b"ef", [4, 4, 4, 4]));
        let out = parse_all(&stream, 5).unwrap();
        assert_eq!(
            out,
            vec![Incoming::Ping(vec![]), Incoming::Text("abcdef".into())]
        );
    }

    #[test]
    fn limits_are_enforced_before_buffering() {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        // Only the header of a 1 MiB frame: refused at once.
        let header = &client_frame(true, OP_TEXT, &vec![0; 1 << 20], [0; 4])[..14];
        assert_eq!(parser.feed(header, 1024, &mut out), Err(WireError::TooBig));
        let mut parser = Parser::default();
        let mut fragmented = client_frame(false, OP_TEXT, &[b'a'; 600], [0; 4]);
        fragmented.extend(client_frame(false, OP_CONTINUATION, &[b'a'; 600], [0; 4]));
        assert_eq!(
            parser.feed(&fragmented, 1024, &mut out),
            Err(WireError::TooBig)
        );
    }

    #[test]
    fn protocol_violations_are_refused() {
        let unmasked = [0x81, 0x02, b'h', b'i'];
        assert!(matches!(
            parse_all(&unmasked, 10),
            Err(WireError::Protocol(_))
        ));
        let mut rsv = client_frame(true, OP_TEXT, b"x", [0; 4]);
        rsv[0] |= 0x40;
        assert!(matches!(parse_all(&rsv, 10), Err(WireError::Protocol(_))));
        let unknown = client_frame(true, 0x3, b"x", [0; 4]);
        assert!(matches!(
            parse_all(&unknown, 10),
            Err(WireError::Protocol(_))
        ));
        let long_ping = client_frame(true, OP_PING, &[0; 126], [0; 4]);
        assert!(matches!(
            parse_all(&long_ping, 200),
            Err(WireError::Protocol(_))
        ));
        let stray = client_frame(true, OP_CONTINUATION, b"x", [0; 4]);
        assert!(matches!(parse_all(&stray, 10), Err(WireError::Protocol(_))));
        let bad_utf8 = client_frame(true, OP_TEXT, &[0xff, 0xfe], [0; 4]);
        assert_eq!(parse_all(&bad_utf8, 10), Err(WireError::InvalidUtf8));
        let bad_close = client_frame(true, OP_CLOSE, &[0x03, 0xed], [0; 4]); // 1005 may not be sent
        assert!(matches!(
            parse_all(&bad_close, 10),
            Err(WireError::Protocol(_))
        ));
        let close = client_frame(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k'], [0; 4]);
        assert_eq!(
            parse_all(&close, 10).unwrap(),
            vec![Incoming::Close(Some(1000))]
        );
    }

    #[test]
    fn the_partial_buffer_is_released_after_a_large_message() {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        let frame = client_frame(true, OP_TEXT, &[b'z'; 50_000], [1, 2, 3, 4]);
        parser.feed(&frame[..30_000], 1 << 20, &mut out).unwrap();
        assert!(parser.partial.capacity() >= 30_000);
        parser.feed(&frame[30_000..], 1 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(parser.partial.capacity(), 0);
    }
}
