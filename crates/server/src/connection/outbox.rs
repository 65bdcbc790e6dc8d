//! Writing to one connection.
//!
//! A frame is written **directly** from whichever task delivers it, when
//! nothing is queued and the socket takes it (the common case: one system
//! call, no task wake-up, which is what makes fan-out and request/response
//! cheap). What the socket does not take is queued, and the connection's own
//! task writes it out when the socket becomes writable.
//!
//! The queue is bounded in bytes: a push that would overflow it marks the
//! connection a slow consumer and drops what it held, so a client that stops
//! reading costs bounded memory and never slows anyone else down.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use pubsub_protocol::close;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::signal::Signal;
use super::socket_calls;
use super::wire;

/// A complete WebSocket frame (header and payload), shared by every recipient
/// (cloning is a refcount bump).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The frame's text payload.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(wire::payload(&self.0)).unwrap_or("")
    }

    pub(crate) fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub(crate) fn raw(bytes: Bytes) -> Self {
        Frame(bytes)
    }

    /// A text frame whose payload `write` appends to an empty buffer. The
    /// frame is built in a reused per-thread buffer ([`Frame::lend_text`])
    /// and copied once into a buffer of exactly its size, instead of going
    /// through a `String` of its own.
    pub(crate) fn text_with(write: impl FnOnce(&mut Vec<u8>)) -> Self {
        Self::lend_text(write, |frame| Frame(Bytes::copy_from_slice(frame)))
    }

    /// Builds a text frame, header and payload (which `write` appends), in a
    /// reused per-thread buffer and lends it to `lend`: a frame written at
    /// once and remembered by copy (a `sendToServer` answer) needs no
    /// allocation of its own.
    pub(crate) fn lend_text<R>(
        write: impl FnOnce(&mut Vec<u8>),
        lend: impl FnOnce(&[u8]) -> R,
    ) -> R {
        thread_local! {
            static BUILDING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUILDING.with(|building| {
            // A frame built while another is lent (an error answered while
            // the first is pushed, say) gets a buffer of its own rather than
            // a borrow panic.
            let mut own = Vec::new();
            let mut lent = building.try_borrow_mut();
            let buffer: &mut Vec<u8> = match &mut lent {
                Ok(building) => building,
                Err(_) => &mut own,
            };
            // The payload goes after room for the longest header; the header
            // is written right before it once its length is known.
            buffer.clear();
            buffer.resize(wire::MAX_HEADER, 0);
            write(buffer);
            let (header, used) = wire::text_header(buffer.len() - wire::MAX_HEADER);
            let start = wire::MAX_HEADER - used;
            buffer[start..wire::MAX_HEADER].copy_from_slice(&header[..used]);
            let result = lend(&buffer[start..]);
            // One huge frame should not pin its buffer for the thread's life.
            if buffer.capacity() > 64 * 1024 {
                *buffer = Vec::new();
            }
            result
        })
    }
}

/// A frame to push: one of its own, or one lent that becomes one only if it
/// is queued.
trait Outgoing {
    fn as_bytes(&self) -> &[u8];
    fn into_frame(self) -> Frame;
}

impl Outgoing for Frame {
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn into_frame(self) -> Frame {
        self
    }
}

impl Outgoing for &[u8] {
    fn as_bytes(&self) -> &[u8] {
        self
    }

    fn into_frame(self) -> Frame {
        Frame(Bytes::copy_from_slice(self))
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Frame(wire::encode_text(text.as_bytes()))
    }
}

impl From<&'static str> for Frame {
    fn from(text: &'static str) -> Self {
        Frame(wire::encode_text(text.as_bytes()))
    }
}

/// Why a connection was told to close from outside its own task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

impl Kick {
    pub(crate) fn slow_consumer() -> Self {
        Kick {
            code: close::SLOW_CONSUMER,
            reason: Cow::Borrowed("outbound queue overflow: the client is not reading"),
        }
    }

    /// The socket failed; nothing more can be written.
    pub(crate) fn broken() -> Self {
        Kick {
            code: close::INTERNAL_ERROR,
            reason: Cow::Borrowed("socket error"),
        }
    }
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Frame>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Queued bytes not yet written.
    bytes: usize,
    /// Until `welcome` is queued nothing is written, so it is always first.
    held: bool,
    /// While the connection works through several frames from one read,
    /// what it answers is queued and written together (see `cork`).
    corked: bool,
    kicked: Option<Kick>,
}

impl Queue {
    /// Drops what is queued, except a frame already partly written: the
    /// client must still receive whole frames (and `offset` must keep
    /// pointing into the frame it was measured on).
    fn drop_unwritten(&mut self) {
        if self.offset > 0 {
            self.frames.truncate(1);
        } else {
            self.frames = VecDeque::new();
        }
        self.bytes = self.frames.front().map_or(0, |f| f.len() - self.offset);
    }

    /// Queues a frame within the byte budget. Past it the connection is
    /// kicked as a slow consumer, what is queued dropped, and false returned
    /// (the caller wakes the connection's task). A single frame larger than
    /// the budget still goes through an empty queue: the budget bounds what
    /// accumulates, not what can be sent.
    fn enqueue(&mut self, frame: Frame, max_bytes: usize) -> bool {
        let len = frame.len();
        if self.bytes + len > max_bytes && !self.frames.is_empty() {
            self.kicked = Some(Kick::slow_consumer());
            self.drop_unwritten();
            return false;
        }
        self.bytes += len;
        self.frames.push_back(frame);
        true
    }
}

/// In this order (`repr(C)`): what every request reads, the signal its
/// task polls and the queue it answers through, first.
#[repr(C)]
pub(crate) struct Outbox {
    /// Tells the connection task there is something to write or a kick.
    wake: Signal,
    queue: Mutex<Queue>,
    socket: Arc<TcpStream>,
    max_bytes: usize,
}

/// Writes held back while it lives; see [`Outbox::cork`].
pub(crate) struct Corked<'a>(&'a Outbox);

impl Drop for Corked<'_> {
    fn drop(&mut self) {
        self.0.uncork();
    }
}

/// Bytes an outbox gathers while corked, or while its deliveries wait for
/// the flusher, before it writes anyway: batching saves system calls, but
/// must not let frames pile up against the slow-consumer budget of a client
/// that reads fine.
const EAGER_WRITE_BYTES: usize = 32 * 1024;

/// Most frames handed to one vectored write.
const MAX_IOV: usize = 64;

impl Outbox {
    pub(crate) fn new(socket: Arc<TcpStream>, max_bytes: usize) -> Self {
        Self {
            socket,
            queue: Mutex::new(Queue {
                held: true,
                ..Queue::default()
            }),
            wake: Signal::default(),
            max_bytes,
        }
    }

    /// Writes or queues a frame. Returns false if the connection is closing
    /// or just overflowed (the frame was dropped).
    pub(crate) fn push(&self, frame: Frame) -> bool {
        self.push_outgoing(frame)
    }

    /// [`Outbox::push`] for a frame lent by its builder ([`Frame::lend_text`]):
    /// copied into a frame of its own only if it has to wait in the queue.
    pub(crate) fn push_lent(&self, frame: &[u8]) -> bool {
        self.push_outgoing(frame)
    }

    /// One `send` of `bytes`, as `TcpStream::try_write` would make it.
    fn try_send(&self, bytes: &[u8]) -> io::Result<usize> {
        self.socket.try_io(Interest::WRITABLE, || {
            socket_calls::send(&self.socket, bytes)
        })
    }

    fn push_outgoing(&self, frame: impl Outgoing) -> bool {
        let mut q = self.queue.lock();
        if q.kicked.is_some() {
            return false;
        }
        if q.frames.is_empty() && !q.held && !q.corked {
            // The fast path, under the lock so frames never interleave.
            let bytes = frame.as_bytes();
            let written = match self.try_send(bytes) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    q.kicked = Some(Kick::broken());
                    drop(q);
                    self.wake.raise();
                    return false;
                }
            };
            if written == bytes.len() {
                return true;
            }
            q.offset = written;
            q.bytes = bytes.len() - written;
            q.frames.push_back(frame.into_frame());
            drop(q);
            self.wake.raise();
            return true;
        }
        if !q.enqueue(frame.into_frame(), self.max_bytes) {
            drop(q);
            self.wake.raise();
            return false;
        }
        if q.corked && q.bytes >= EAGER_WRITE_BYTES {
            drop(q);
            self.write_queued();
        }
        true
    }

    /// Queues a frame, leaving the write to the caller (see flusher.rs)
    /// unless [`EAGER_WRITE_BYTES`] have gathered. Returns `None` if the
    /// connection is closing or just overflowed (the frame was dropped),
    /// otherwise whether the queue was empty — then the caller must arrange
    /// for the write.
    pub(crate) fn push_deferred(&self, frame: Frame) -> Option<bool> {
        let mut q = self.queue.lock();
        if q.kicked.is_some() {
            return None;
        }
        // A corked outbox is written by its own connection when uncorked.
        let first = q.frames.is_empty() && !q.held && !q.corked;
        if !q.enqueue(frame, self.max_bytes) {
            drop(q);
            self.wake.raise();
            return None;
        }
        if !q.held && q.bytes >= EAGER_WRITE_BYTES {
            drop(q);
            self.write_queued();
        }
        Some(first)
    }

    /// Writes what is queued as far as the socket takes it now; if the
    /// socket is full (or the connection was kicked) the connection's own
    /// task takes over.
    pub(crate) fn write_queued(&self) {
        if !matches!(self.write_some(false), Ok(true)) {
            self.wake.raise();
        }
    }

    /// Holds back writes until the guard is dropped, then writes what was
    /// queued in one system call: the answers to several requests that
    /// arrived in one read (a `sendToUser` and a `broadcast`, say) reach the
    /// socket together instead of one `send` each.
    pub(crate) fn cork(&self) -> Corked<'_> {
        self.hold();
        Corked(self)
    }

    /// Corks the outbox until [`Outbox::uncork`], for an owner that cannot
    /// keep the guard of [`Outbox::cork`] (it would borrow from itself).
    pub(crate) fn hold(&self) {
        self.queue.lock().corked = true;
    }

    /// Ends [`Outbox::hold`] (or a cork), writing what was queued meanwhile.
    pub(crate) fn uncork(&self) {
        let pending = {
            let mut q = self.queue.lock();
            q.corked = false;
            !q.frames.is_empty() && !q.held
        };
        if pending {
            self.write_queued();
        }
    }

    /// Queues `welcome` ahead of anything that raced it, and starts writing.
    pub(crate) fn release_with_first(&self, first: Frame) {
        let mut q = self.queue.lock();
        q.bytes += first.len();
        q.frames.push_front(first);
        q.held = false;
        drop(q);
        self.wake.raise();
    }

    /// Frames waiting to be written.
    #[cfg(test)]
    pub(crate) fn queued_frames(&self) -> usize {
        self.queue.lock().frames.len()
    }

    /// Starts writing, with no first frame.
    #[cfg(test)]
    pub(crate) fn release(&self) {
        self.queue.lock().held = false;
        self.wake.raise();
    }

    /// Asks the connection to close with `kick` (after what is queued,
    /// unless the kick is a slow consumer).
    pub(crate) fn kick(&self, kick: Kick) {
        let mut q = self.queue.lock();
        if q.kicked.is_none() {
            q.kicked = Some(kick);
        }
        drop(q);
        self.wake.raise();
    }

    pub(crate) fn kicked(&self) -> Option<Kick> {
        self.queue.lock().kicked.clone()
    }

    /// Resolves when there is something for the connection task to do.
    pub(crate) async fn wait(&self) {
        self.wake.raised().await;
    }

    /// Whether the outbox signalled since the last look, lowering the
    /// signal, without registering the task for the next one.
    pub(crate) fn signalled(&self) -> bool {
        self.wake.take()
    }

    /// [`Outbox::wait`] for a loop that polls it itself.
    pub(crate) fn poll_wait(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.wake.poll_raised(cx)
    }

    /// Writes what is queued until the queue is empty. Returns the kick if
    /// the connection was kicked (a slow consumer's queue is not written).
    pub(crate) async fn flush(&self) -> Result<(), Kick> {
        loop {
            match self.write_some(false)? {
                true => return Ok(()),
                false => self.socket.writable().await.map_err(|_| Kick::broken())?,
            }
        }
    }

    /// Drops what is queued, except a frame already partly written (the
    /// client must still see whole frames before the close frame).
    pub(crate) fn discard_queued(&self) {
        self.queue.lock().drop_unwritten();
    }

    /// Queues a last frame (a close frame) after everything else, past the
    /// bound and past a kick, and writes the queue out.
    pub(crate) async fn finish_with(&self, last: Frame) -> io::Result<()> {
        {
            let mut q = self.queue.lock();
            q.bytes += last.len();
            q.frames.push_back(last);
            q.held = false;
        }
        loop {
            match self.write_some(true) {
                Ok(true) => return Ok(()),
                Ok(false) => self.socket.writable().await?,
                Err(_) => return Err(io::Error::other("socket error")),
            }
        }
    }

    /// Writes as much of the queue as the socket takes; `Ok(true)` once it is
    /// empty. Unless `closing`, a kick stops it (a slow consumer before
    /// writing, any other kick once the queue is written).
    fn write_some(&self, closing: bool) -> Result<bool, Kick> {
        let mut q = self.queue.lock();
        if !closing
            && let Some(kick) = &q.kicked
            && kick.code == close::SLOW_CONSUMER
        {
            return Err(kick.clone());
        }
        while !q.frames.is_empty() {
            let offset = q.offset;
            let count = q.frames.len().min(MAX_IOV);
            // `send` for one frame and `sendmsg` for several: both skip the
            // VFS layer that `writev` goes through (`vfs_writev` and
            // `fdget_pos` were 9% of server time in a fan-out profile).
            // Writing two frames to each of 2,000 sockets, `sendmsg` took
            // ~6% less time per call than `writev`.
            let result = if count == 1 {
                self.try_send(&q.frames[0].bytes()[offset..])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                for (i, (slot, frame)) in slices.iter_mut().zip(&q.frames).enumerate() {
                    *slot = IoSlice::new(if i == 0 {
                        &frame.bytes()[offset..]
                    } else {
                        frame.bytes()
                    });
                }
                self.socket.try_io(Interest::WRITABLE, || {
                    socket_calls::send_vectored(&self.socket, &slices[..count])
                })
            };
            let written = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => {
                    q.kicked.get_or_insert_with(Kick::broken);
                    return Err(Kick::broken());
                }
            };
            q.bytes -= written;
            let mut left = written + q.offset;
            q.offset = 0;
            while let Some(front) = q.frames.front() {
                if left < front.len() {
                    q.offset = left;
                    break;
                }
                left -= front.len();
                q.frames.pop_front();
            }
        }
        match &q.kicked {
            Some(kick) if !closing => Err(kick.clone()),
            _ => Ok(true),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// The server's end of a real loopback TCP connection, and the client's.
    pub(in crate::connection) async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, client) = tokio::join!(listener.accept(), client);
        (Arc::new(accepted.unwrap().0), client.unwrap())
    }

    #[test]
    fn a_frame_built_in_the_threads_buffer_is_the_frame_encoded_from_its_payload() {
        for len in [0, 1, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let expected = wire::encode_text(&payload);
            let built = Frame::text_with(|out| out.extend_from_slice(&payload));
            assert_eq!(&built.0[..], &expected[..], "length {len}");
            // Lent, and a frame built while another is lent.
            Frame::lend_text(
                |out| out.extend_from_slice(&payload),
                |lent| {
                    assert_eq!(lent, &expected[..], "length {len}");
                    let inner = Frame::text_with(|out| out.extend_from_slice(b"inner"));
                    assert_eq!(&inner.0[..], &wire::encode_text(b"inner")[..]);
                },
            );
        }
    }

    #[tokio::test]
    async fn nothing_is_written_before_the_first_frame_and_then_in_order() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::new(server, 1 << 20);
        assert!(outbox.push(Frame::from("second")));
        outbox.release_with_first(Frame::from("first"));
        outbox.flush().await.unwrap();
        assert!(outbox.push(Frame::from("third")));
        let mut buf = vec![0u8; 2 + 5 + 2 + 6 + 2 + 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[2..7], b"first");
        assert_eq!(&buf[9..15], b"second");
        assert_eq!(&buf[17..], b"third");
    }

    #[tokio::test]
    async fn a_reader_that_stops_is_kicked_once_the_queue_overflows() {
        let (server, _client_never_reads) = pair().await;
        let outbox = Outbox::new(server, 64 * 1024);
        outbox.release_with_first(Frame::from("welcome"));
        outbox.flush().await.unwrap();
        let chunk = "x".repeat(16 * 1024);
        let mut pushed = 0;
        // The kernel buffers take megabytes; the queue takes 64 KiB more.
        while outbox.push(Frame::from(chunk.clone())) {
            pushed += 1;
            assert!(pushed < 10_000, "never overflowed");
        }
        assert_eq!(outbox.kicked().unwrap().code, close::SLOW_CONSUMER);
        assert!(
            !outbox.push(Frame::from("late")),
            "kicked outboxes refuse frames"
        );
        assert_eq!(outbox.flush().await.unwrap_err().code, close::SLOW_CONSUMER);
        {
            let q = outbox.queue.lock();
            assert!(q.frames.len() <= 1, "only a partly written frame is kept");
            let front = q.frames.front().map_or(0, |f| f.len());
            assert_eq!(
                q.bytes + q.offset,
                front,
                "offset and bytes describe the kept frame"
            );
        }
        // Closing after an overflow writes the close frame behind what is
        // left; it must not trip over the partly written frame.
        let close = Frame::raw(wire::encode_close(close::SLOW_CONSUMER, "slow"));
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            outbox.finish_with(close),
        )
        .await;
    }

    #[tokio::test]
    async fn an_overflow_keeps_a_partly_written_frame_whole() {
        let (server, _client_never_reads) = pair().await;
        let outbox = Outbox::new(server, 64 * 1024);
        outbox.release_with_first(Frame::from("welcome"));
        outbox.flush().await.unwrap();
        let chunk = "y".repeat(100_000);
        while outbox.push(Frame::from(chunk.clone())) {}
        let q = outbox.queue.lock();
        assert!(
            q.offset > 0,
            "large frames into a full socket are written partly"
        );
        assert_eq!(q.frames.len(), 1);
        assert_eq!(q.bytes, q.frames[0].len() - q.offset);
    }

    #[tokio::test]
    async fn a_corked_outbox_writes_what_it_queued_at_once_when_uncorked() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::new(server.clone(), 1 << 20);
        outbox.release_with_first(Frame::from("w"));
        outbox.flush().await.unwrap();
        let mut welcome = [0u8; 3];
        client.read_exact(&mut welcome).await.unwrap();
        {
            let _corked = outbox.cork();
            assert!(outbox.push(Frame::from("one")));
            assert_eq!(outbox.push_deferred(Frame::from("two")), Some(false));
            assert!(outbox.push(Frame::from("three")));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut probe = [0u8; 1];
            assert!(
                matches!(client.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "nothing is written while corked"
            );
        }
        assert!(outbox.queue.lock().frames.is_empty(), "written on uncork");
        let mut buf = vec![0u8; 5 + 5 + 7];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[2..5], &buf[7..10], &buf[12..]),
            (&b"one"[..], &b"two"[..], &b"three"[..])
        );
        // Uncorked, a frame goes straight out again.
        assert!(outbox.push(Frame::from("four")));
        assert!(outbox.queue.lock().frames.is_empty());
    }

    #[tokio::test]
    async fn a_corked_outbox_still_writes_once_it_holds_enough() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::new(server, 64 * 1024);
        outbox.release_with_first(Frame::from("w"));
        outbox.flush().await.unwrap();
        let chunk = "z".repeat(4 * 1024);
        let _corked = outbox.cork();
        // Far more than the 64 KiB budget, from a client that reads: it is
        // written as it goes rather than kicked as a slow consumer.
        let reader = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            let mut total = 0;
            while total < 3 + 100 * (4 + 4 * 1024) {
                total += client.read(&mut sink).await.unwrap();
            }
        });
        for _ in 0..100 {
            assert!(outbox.push(Frame::from(chunk.clone())));
            tokio::task::yield_now().await;
        }
        drop(_corked);
        outbox.flush().await.unwrap();
        assert!(outbox.kicked().is_none());
        reader.await.unwrap();
    }
}
