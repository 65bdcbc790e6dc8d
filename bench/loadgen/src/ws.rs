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
//! - A connection opened with `arrival_stamps` asks the kernel for each read's
//!   receive time (SO_TIMESTAMPNS, read with `recvmsg`) and hands it to
//!   `stats::set_arrival` while the read's frames are parsed, so deliveries
//!   are also timed to when they reached this machine's socket, without the
//!   generator's own delay in reading them.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recv, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};

use crate::stats;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const SCRATCH_BYTES: usize = 256 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
    /// Control-message space for one SCM_TIMESTAMPNS, reused by every read.
    static CMSG: RefCell<Vec<u8>> = RefCell::new(nix::cmsg_space!(TimeSpec));
}

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub dst: SocketAddr,
    pub src: Option<IpAddr>,
    pub path: String,
    pub subprotocol: Option<&'static str>,
    /// SO_RCVBUF for this connection (the slow consumer uses a small one).
    pub recv_buffer: Option<u32>,
    /// Ask the kernel for the receive time of what is read (see the module doc).
    pub arrival_stamps: bool,
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
    if ep.arrival_stamps {
        setsockopt(&sock, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
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
    /// The socket has SO_TIMESTAMPNS on: read with `recvmsg` and report the
    /// kernel's receive time.
    stamped: bool,
}

/// One read: the bytes it took and the kernel's receive time in µs (0: unknown).
type Read = io::Result<(usize, u64)>;

/// What a read produced.
pub enum ReadOutcome {
    /// Some bytes were processed (maybe no complete frame yet).
    Data,
    /// The peer closed (EOF, reset, or a close frame).
    Closed,
}

impl Reader {
    pub fn with_leftover(leftover: Vec<u8>, stamped: bool) -> Self {
        Reader {
            partial: leftover,
            stamped,
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Processes bytes already buffered (e.g. after the upgrade response).
    pub fn process_pending(&mut self, f: &mut dyn FnMut(u8, &[u8])) -> bool {
        let data = std::mem::take(&mut self.partial);
        self.feed(&data, f)
    }

    /// Parses `bytes` after what is left of an earlier read; keeps what is
    /// left of this one. Returns whether a close frame was seen.
    fn feed(&mut self, bytes: &[u8], f: &mut dyn FnMut(u8, &[u8])) -> bool {
        if self.partial.is_empty() {
            let (used, closed) = parse(bytes, f);
            if used < bytes.len() {
                self.partial.extend_from_slice(&bytes[used..]);
            }
            return closed;
        }
        self.partial.extend_from_slice(bytes);
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
    }

    /// Reads everything available from a tokio socket without blocking and
    /// calls `f(opcode, payload)` for every complete frame.
    pub fn read_available(
        &mut self,
        stream: &TcpStream,
        f: &mut dyn FnMut(u8, &[u8]),
    ) -> io::Result<ReadOutcome> {
        let stamped = self.stamped;
        self.read_with(&mut |buf| read_tokio(stream, stamped, buf), f)
    }

    /// The same from a non-blocking socket outside tokio, polled
    /// edge-triggered (receivers.rs): a short read drained it, and the next
    /// edge comes with new data.
    pub fn read_available_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        f: &mut dyn FnMut(u8, &[u8]),
    ) -> io::Result<ReadOutcome> {
        let stamped = self.stamped;
        self.read_with(&mut |buf| read_fd(fd, stamped, buf), f)
    }

    /// Reads with `read` until a short read or WouldBlock, parsing as it goes.
    fn read_with(
        &mut self,
        read: &mut dyn FnMut(&mut [u8]) -> Read,
        f: &mut dyn FnMut(u8, &[u8]),
    ) -> io::Result<ReadOutcome> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                match read(&mut scratch[..]) {
                    Ok((0, _)) => return Ok(ReadOutcome::Closed),
                    Ok((n, arrival)) => {
                        // Only this read's frames carry its stamp: the
                        // setting is per thread, shared by every connection.
                        stats::set_arrival(arrival);
                        let closed = self.feed(&scratch[..n], f);
                        stats::set_arrival(0);
                        if closed {
                            return Ok(ReadOutcome::Closed);
                        }
                        if n < scratch.len() {
                            return Ok(ReadOutcome::Data);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
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

/// One read from a tokio socket into `buf`: the bytes read and, if
/// `stamped`, the kernel's receive time of the read in µs (0: unknown).
///
/// A short read means the socket had nothing more, so it is reported to
/// tokio as WouldBlock, which clears the socket's readiness now: without
/// that, the next wait returns at once and a second system call only finds
/// the socket empty (the server's reader does the same).
fn read_tokio(stream: &TcpStream, stamped: bool, buf: &mut [u8]) -> Read {
    let capacity = buf.len();
    let mut got = None;
    let result = stream.try_io(Interest::READABLE, || {
        let read = read_fd(stream.as_fd(), stamped, buf)?;
        got = Some(read);
        if read.0 > 0 && read.0 < capacity {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (got, result) {
        (Some(read), _) => Ok(read),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => unreachable!("a successful read records what it got"),
    }
}

/// One non-blocking read from `fd`: `recvmsg` with the kernel's receive time
/// if `stamped`, else a plain `recv`.
fn read_fd(fd: BorrowedFd<'_>, stamped: bool, buf: &mut [u8]) -> Read {
    if stamped {
        CMSG.with(|cmsg| recv_stamped(fd, buf, &mut cmsg.borrow_mut()))
    } else {
        let n = recv(fd.as_raw_fd(), buf, MsgFlags::empty()).map_err(io::Error::from)?;
        Ok((n, 0))
    }
}

/// `recvmsg` into `buf`, with the kernel's receive time (SO_TIMESTAMPNS; for
/// TCP the stamp of the last segment taken) in µs, 0 if none came.
fn recv_stamped(fd: BorrowedFd<'_>, buf: &mut [u8], cmsg: &mut [u8]) -> Read {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let mut arrival = 0;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(t) = c {
            arrival = t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000;
        }
    }
    Ok((msg.bytes, arrival))
}

/// Keeps the kernel's receive timestamps on while it lives. The first socket
/// that asks for them turns them on for the whole machine a moment later (a
/// static key flipped from a work queue), and the last one to close turns
/// them off, so a test's first packets could otherwise go unstamped.
#[cfg(test)]
pub(crate) struct StampsOn {
    _stamped: std::net::TcpStream,
    _other: std::net::TcpStream,
}

#[cfg(test)]
pub(crate) fn stamps_on() -> StampsOn {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stamped = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut other, _) = listener.accept().unwrap();
    setsockopt(&stamped, sockopt::ReceiveTimestampns, &true).unwrap();
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    for _ in 0..400 {
        other.write_all(b"x").unwrap();
        let (_, arrival) = recv_stamped(stamped.as_fd(), &mut [0u8; 8], &mut cmsg).unwrap();
        if arrival != 0 {
            return StampsOn {
                _stamped: stamped,
                _other: other,
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("the kernel never started stamping received packets");
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

    /// The two ends of a loopback TCP connection; the first with SO_TIMESTAMPNS if `stamped`.
    async fn pair(stamped: bool) -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sock = TcpSocket::new_v4().unwrap();
        if stamped {
            setsockopt(&sock, sockopt::ReceiveTimestampns, &true).unwrap();
        }
        let (client, accepted) = tokio::join!(
            sock.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        (client.unwrap(), accepted.unwrap().0)
    }

    /// What one `read_available` call gets: payloads, each with the arrival
    /// time set while it was parsed.
    fn read_all(reader: &mut Reader, stream: &TcpStream) -> Vec<(Vec<u8>, u64)> {
        let mut got = Vec::new();
        reader
            .read_available(stream, &mut |_, p| got.push((p.to_vec(), stats::arrival())))
            .unwrap();
        got
    }

    #[tokio::test]
    async fn a_stamped_reader_reports_when_the_kernel_received_the_bytes() {
        let _on = stamps_on();
        let (client, server) = pair(true).await;
        let sent_at = stats::now_us();
        write_all(&server, &text_frame(b"one")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        client.readable().await.unwrap();
        let read_at = stats::now_us();
        let mut reader = Reader::with_leftover(Vec::new(), true);
        let got = read_all(&mut reader, &client);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, b"one");
        let arrival = got[0].1;
        assert!(
            (sent_at..=read_at).contains(&arrival),
            "arrival {arrival} within [{sent_at}, {read_at}]"
        );
        assert!(
            read_at - arrival >= 25_000,
            "the stamp is the arrival, not the read"
        );
        assert_eq!(stats::arrival(), 0, "the stamp does not outlive its read");

        let (plain, server) = pair(false).await;
        write_all(&server, &text_frame(b"two")).await.unwrap();
        plain.readable().await.unwrap();
        let mut reader = Reader::with_leftover(Vec::new(), false);
        assert_eq!(read_all(&mut reader, &plain), vec![(b"two".to_vec(), 0)]);
    }

    #[tokio::test]
    async fn a_short_read_leaves_the_socket_waiting_for_new_data() {
        let (client, server) = pair(false).await;
        write_all(&server, &text_frame(b"one")).await.unwrap();
        client.readable().await.unwrap();
        let mut reader = Reader::default();
        assert_eq!(read_all(&mut reader, &client).len(), 1);
        // Readiness was cleared by the short read itself: a wait now blocks
        // instead of returning at once for a read that would find nothing.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(client.poll_read_ready(&mut cx).is_pending());
        write_all(&server, &text_frame(b"two")).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), client.readable())
            .await
            .expect("new data makes the socket ready again")
            .unwrap();
        assert_eq!(read_all(&mut reader, &client)[0].0, b"two");
    }
}
