//! A deliberately small WebSocket client: enough of RFC 6455 to drive a
//! server at full speed from one core without being the bottleneck.
//!
//! - Frames are encoded once ("pre-encoded") and only their fixed-width
//!   timestamp/sequence digits are patched before each send. Client frames
//!   must be masked; we use the all-zero masking key, which is a valid key
//!   (the server still runs its unmasking code), so patched frames need no
//!   re-masking.
//! - Reads go into one thread-local scratch buffer (the runtime is
//!   single-threaded), so an idle connection costs a few hundred bytes of
//!   generator memory, not a read buffer. Only a partial frame left at the end
//!   of a read is copied into the connection's own buffer.
//! - Sockets get TCP_NODELAY and SO_LINGER 0 (closing sends RST: no TIME_WAIT
//!   pile-up between runs).

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const SCRATCH_BYTES: usize = 256 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub dst: SocketAddr,
    pub src: Option<IpAddr>,
    pub path: String,
    pub subprotocol: Option<&'static str>,
    /// SO_RCVBUF for this connection (the slow consumer uses a small one).
    pub recv_buffer: Option<u32>,
}

/// Appends a masked (all-zero key) client frame.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 14);
    encode_frame(&mut v, OP_TEXT, payload);
    v
}

/// A pre-encoded frame with fixed-width decimal fields patched per send.
#[derive(Clone, Debug)]
pub struct Template {
    pub bytes: Vec<u8>,
    /// Offset of the 16-digit microsecond timestamp.
    ts_at: Option<usize>,
    /// Offset of the 10-digit sequence number.
    seq_at: Option<usize>,
    /// Offset of the 10-digit sequence number of an earlier request: the
    /// one whose ack this request reports received (PubSub's `received`).
    prev_at: Option<usize>,
    /// How many requests back that one is: with `k` in flight on a closed
    /// loop whose answers come in order, each request is sent as the ack of
    /// the one `k` before it arrives.
    pub prev_gap: u64,
}

pub const TS_MARK: &str = "{TS}";
pub const SEQ_MARK: &str = "{SEQ}";
pub const PREV_MARK: &str = "{PREV}";

impl Template {
    /// `payload` contains `{TS}` and/or `{SEQ}` placeholders.
    pub fn new(payload: &str) -> Self {
        Self::with_opcode(payload, OP_TEXT)
    }

    pub fn with_opcode(payload: &str, opcode: u8) -> Self {
        let filled = payload
            .replace(TS_MARK, "0000000000000000")
            .replace(SEQ_MARK, "1000000000")
            .replace(PREV_MARK, "0000000000");
        let mut bytes = Vec::with_capacity(filled.len() + 14);
        encode_frame(&mut bytes, opcode, filled.as_bytes());
        let header = bytes.len() - filled.len();
        // Positions in the filled payload: recompute by scanning the original
        // with the placeholder widths substituted.
        let pos = |mark: &str| -> Option<usize> {
            let i = payload.find(mark)?;
            let before = &payload[..i];
            let shift = before.matches(TS_MARK).count() as isize * (16 - TS_MARK.len() as isize)
                + before.matches(SEQ_MARK).count() as isize * (10 - SEQ_MARK.len() as isize)
                + before.matches(PREV_MARK).count() as isize * (10 - PREV_MARK.len() as isize);
            Some(header + (i as isize + shift) as usize)
        };
        Template {
            ts_at: pos(TS_MARK),
            seq_at: pos(SEQ_MARK),
            prev_at: pos(PREV_MARK),
            prev_gap: 1,
            bytes,
        }
    }

    pub fn stamp(&mut self, ts_us: u64, seq: u64) -> &[u8] {
        if let Some(at) = self.ts_at {
            write_digits(&mut self.bytes[at..at + 16], ts_us);
        }
        if let Some(at) = self.seq_at {
            write_digits(
                &mut self.bytes[at..at + 10],
                1_000_000_000 + seq % 9_000_000_000,
            );
        }
        if let Some(at) = self.prev_at {
            // Before the first acks: a number no request has (ignored).
            let prev = seq
                .checked_sub(self.prev_gap)
                .map_or(0, |p| 1_000_000_000 + p % 9_000_000_000);
            write_digits(&mut self.bytes[at..at + 10], prev);
        }
        &self.bytes
    }
}

fn write_digits(dst: &mut [u8], mut v: u64) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Opens a TCP connection and performs the WebSocket upgrade. Returns the
/// stream and any bytes that arrived after the 101 response.
pub async fn connect(ep: &Endpoint) -> io::Result<(TcpStream, Vec<u8>)> {
    let sock = TcpSocket::new_v4()?;
    if let Some(src) = ep.src {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    sock.set_zero_linger()?;
    if let Some(size) = ep.recv_buffer {
        sock.set_recv_buffer_size(size)?;
    }
    let stream = sock.connect(ep.dst).await?;
    stream.set_nodelay(true)?;
    let proto = match ep.subprotocol {
        Some(p) => format!("Sec-WebSocket-Protocol: {p}\r\n"),
        None => String::new(),
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n",
        ep.path, ep.dst
    );
    write_all(&stream, req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut tmp = [0u8; 2048];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut tmp) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during upgrade",
                ));
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                let head = String::from_utf8_lossy(&buf[..end.min(200)]).into_owned();
                return Err(io::Error::other(format!("upgrade refused: {head}")));
            }
            return Ok((stream, buf[end + 4..].to_vec()));
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("upgrade response too long"));
        }
    }
}

/// Writes all of `buf`, waiting for writability as needed.
pub async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Splits a byte stream into frames.
#[derive(Default)]
pub struct Reader {
    partial: Vec<u8>,
}

/// What a read produced.
pub enum ReadOutcome {
    /// Some bytes were processed (maybe no complete frame yet).
    Data,
    /// The peer closed (EOF, reset, or a close frame).
    Closed,
}

impl Reader {
    pub fn with_leftover(leftover: Vec<u8>) -> Self {
        Reader { partial: leftover }
    }

    pub fn has_pending(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Processes bytes already buffered (e.g. after the upgrade response).
    pub fn process_pending(&mut self, f: &mut dyn FnMut(u8, &[u8])) -> bool {
        if self.partial.is_empty() {
            return false;
        }
        let data = std::mem::take(&mut self.partial);
        let (used, closed) = parse(&data, f);
        self.partial = data[used..].to_vec();
        closed
    }

    /// Reads everything available without blocking and calls `f(opcode,
    /// payload)` for every complete frame.
    pub fn read_available(
        &mut self,
        stream: &TcpStream,
        f: &mut dyn FnMut(u8, &[u8]),
    ) -> io::Result<ReadOutcome> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut any = false;
            loop {
                match stream.try_read(&mut scratch[..]) {
                    Ok(0) => return Ok(ReadOutcome::Closed),
                    Ok(n) => {
                        any = true;
                        let closed = if self.partial.is_empty() {
                            let (used, closed) = parse(&scratch[..n], f);
                            if used < n {
                                self.partial.extend_from_slice(&scratch[used..n]);
                            }
                            closed
                        } else {
                            self.partial.extend_from_slice(&scratch[..n]);
                            let data = std::mem::take(&mut self.partial);
                            let (used, closed) = parse(&data, f);
                            if used < data.len() {
                                let mut rest = data;
                                rest.drain(..used);
                                self.partial = rest;
                                if self.partial.capacity() > 4 * self.partial.len() + 4096 {
                                    self.partial.shrink_to_fit();
                                }
                            }
                            closed
                        };
                        if closed {
                            return Ok(ReadOutcome::Closed);
                        }
                        if n < scratch.len() {
                            return Ok(ReadOutcome::Data);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let _ = any;
                        return Ok(ReadOutcome::Data);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        return Ok(ReadOutcome::Closed);
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }
}

/// Parses complete frames from `buf`; returns bytes consumed and whether a
/// close frame was seen.
fn parse(buf: &[u8], f: &mut dyn FnMut(u8, &[u8])) -> (usize, bool) {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return (pos, false);
        }
        let opcode = rest[0] & 0x0f;
        let masked = rest[1] & 0x80 != 0;
        let mut len = (rest[1] & 0x7f) as usize;
        let mut hdr = 2;
        if len == 126 {
            if rest.len() < 4 {
                return (pos, false);
            }
            len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
            hdr = 4;
        } else if len == 127 {
            if rest.len() < 10 {
                return (pos, false);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[2..10]);
            len = u64::from_be_bytes(b) as usize;
            hdr = 10;
        }
        if masked {
            hdr += 4; // servers never mask; tolerate and ignore the key
        }
        if rest.len() < hdr + len {
            return (pos, false);
        }
        let payload = &rest[hdr..hdr + len];
        pos += hdr + len;
        if opcode == OP_CLOSE {
            f(opcode, payload);
            return (pos, true);
        }
        f(opcode, payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_patches_fixed_width_fields() {
        let mut t = Template::new(r#"{"id":"a-{SEQ}","t":{TS}}"#);
        let bytes = t.stamp(1_795_630_000_123_456, 7).to_vec();
        let payload = &bytes[6..];
        assert_eq!(payload, br#"{"id":"a-1000000007","t":1795630000123456}"#);
        assert_eq!(bytes[1] & 0x7f, payload.len() as u8);
    }

    #[test]
    fn template_names_the_request_whose_ack_came_before() {
        let mut t = Template::new(r#"{"id":"a-{SEQ}","t":{TS},"received":["a-{PREV}"]}"#);
        t.prev_gap = 2;
        let payload = |t: &mut Template, seq| t.stamp(5, seq)[6..].to_vec();
        assert_eq!(
            payload(&mut t, 1),
            br#"{"id":"a-1000000001","t":0000000000000005,"received":["a-0000000000"]}"#
        );
        assert_eq!(
            payload(&mut t, 9),
            br#"{"id":"a-1000000009","t":0000000000000005,"received":["a-1000000007"]}"#
        );
    }

    #[test]
    fn parser_handles_split_frames() {
        let mut frames = Vec::new();
        for p in [&b"hello"[..], &[b'x'; 300][..]] {
            frames.push(0x81);
            if p.len() < 126 {
                frames.push(p.len() as u8);
            } else {
                frames.push(126);
                frames.extend_from_slice(&(p.len() as u16).to_be_bytes());
            }
            frames.extend_from_slice(p);
        }
        let mut seen = Vec::new();
        let (used, _) = parse(&frames[..100], &mut |_, p| seen.push(p.len()));
        assert_eq!(seen, vec![5]);
        let (used2, _) = parse(&frames[used..], &mut |_, p| seen.push(p.len()));
        assert_eq!(seen, vec![5, 300]);
        assert_eq!(used + used2, frames.len());
    }
}
