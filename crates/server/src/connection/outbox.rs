//! The bounded queue of frames waiting to be written to one connection.
//!
//! Senders never wait: a push either queues (cost: a refcount bump, the frame
//! bytes are shared) or, when the queue already holds `max_bytes`, marks the
//! connection a slow consumer and drops what it held, so one client that stops
//! reading costs bounded memory and never slows anyone else down.

use std::borrow::Cow;
use std::collections::VecDeque;

use parking_lot::Mutex;
use pubsub_protocol::close;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// An encoded text frame, shared by every recipient (cloning is a refcount bump).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Utf8Bytes);

impl Frame {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub(crate) fn into_utf8(self) -> Utf8Bytes {
        self.0
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Frame(Utf8Bytes::from(text))
    }
}

impl From<&'static str> for Frame {
    fn from(text: &'static str) -> Self {
        Frame(Utf8Bytes::from_static(text))
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
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Frame>,
    bytes: usize,
    kicked: Option<Kick>,
}

pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    wake: Notify,
    max_bytes: usize,
}

/// What the connection task finds when it waits on its outbox.
pub(crate) enum Ready {
    /// Frames were moved into the caller's buffer.
    Frames,
    Kicked(Kick),
}

impl Outbox {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            max_bytes,
        }
    }

    /// Queues a frame. Returns false if the connection is closing or just
    /// overflowed (the frame was not queued).
    pub(crate) fn push(&self, frame: Frame) -> bool {
        let mut q = self.queue.lock();
        if q.kicked.is_some() {
            return false;
        }
        let len = frame.len();
        // A single frame larger than the budget still goes through an empty
        // queue; the budget bounds what accumulates, not what can be sent.
        if q.bytes + len > self.max_bytes && !q.frames.is_empty() {
            q.kicked = Some(Kick::slow_consumer());
            q.frames = VecDeque::new();
            q.bytes = 0;
            drop(q);
            self.wake.notify_one();
            return false;
        }
        q.bytes += len;
        q.frames.push_back(frame);
        let first = q.frames.len() == 1;
        drop(q);
        // The consumer drains everything per wake-up, so only the transition
        // from empty needs a notification.
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// Queues a frame ahead of everything else (the `welcome`, which must be
    /// first even if deliveries raced it into the queue).
    pub(crate) fn push_front(&self, frame: Frame) {
        let mut q = self.queue.lock();
        q.bytes += frame.len();
        q.frames.push_front(frame);
        drop(q);
        self.wake.notify_one();
    }

    /// Asks the connection to close with `kick`. Queued frames are still
    /// written before the close frame unless the kick is a slow consumer.
    pub(crate) fn kick(&self, kick: Kick) {
        let mut q = self.queue.lock();
        if q.kicked.is_none() {
            q.kicked = Some(kick);
        }
        drop(q);
        self.wake.notify_one();
    }

    pub(crate) fn kicked(&self) -> Option<Kick> {
        self.queue.lock().kicked.clone()
    }

    /// Waits until frames are queued (and moves them into `into`) or the
    /// connection is kicked. Cancel-safe: nothing is lost if dropped.
    pub(crate) async fn ready(&self, into: &mut VecDeque<Frame>) -> Ready {
        loop {
            {
                let mut q = self.queue.lock();
                if !q.frames.is_empty() {
                    std::mem::swap(&mut q.frames, into);
                    q.bytes = 0;
                    return Ready::Frames;
                }
                if let Some(kick) = &q.kicked {
                    return Ready::Kicked(kick.clone());
                }
            }
            self.wake.notified().await;
        }
    }

    /// Resolves once the connection has been kicked.
    pub(crate) async fn wait_kicked(&self) -> Kick {
        loop {
            if let Some(kick) = self.kicked() {
                return kick;
            }
            self.wake.notified().await;
        }
    }

    /// Moves whatever is queued into `into` without waiting.
    pub(crate) fn take(&self, into: &mut VecDeque<Frame>) {
        let mut q = self.queue.lock();
        into.extend(q.frames.drain(..));
        q.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_kicks_and_frees_the_queue() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(Frame::from("123456")));
        assert!(
            !outbox.push(Frame::from("123456")),
            "second frame exceeds 10 bytes"
        );
        assert!(
            !outbox.push(Frame::from("1")),
            "kicked outboxes refuse frames"
        );
        let mut buf = VecDeque::new();
        match outbox.ready(&mut buf).await {
            Ready::Kicked(k) => assert_eq!(k.code, close::SLOW_CONSUMER),
            Ready::Frames => panic!("queue should have been dropped"),
        }
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn a_large_frame_passes_an_empty_queue() {
        let outbox = Outbox::new(4);
        assert!(outbox.push(Frame::from("0123456789")));
        let mut buf = VecDeque::new();
        assert!(matches!(outbox.ready(&mut buf).await, Ready::Frames));
        assert_eq!(buf.len(), 1);
        assert!(outbox.push(Frame::from("0123456789")));
    }
}
