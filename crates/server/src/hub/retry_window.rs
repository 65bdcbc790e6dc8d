//! The retry window: a request's outcome, remembered per (user, message id)
//! so that a retry with the same id is answered from memory instead of being
//! delivered or handled a second time.
//!
//! Rules (docs/protocol.md, "Retries"):
//! - a successful ack and a non-retryable error are remembered for the window;
//! - a retryable error is forgotten at once, so the retry really runs again;
//! - a retry that arrives while the first attempt still runs waits for its outcome;
//! - each user's memory is capped in bytes, and so is the node's; past a
//!   cap the oldest outcomes go first (and with the node's cap reached and
//!   nothing of their own to give up, a user's new outcomes are not kept).
//!
//! Every request passes through here, and at a steady rate every request
//! also pushes the oldest outcome out, so the layout is chosen for the CPU
//! cache rather than for convenience: a user's outcomes are copied, id and
//! frame together, onto the end of one byte buffer in the order they
//! finished, with a fixed-size record each and an index from the id's hash
//! to the record. Remembering allocates nothing once the buffer has grown,
//! and forgetting touches only the oldest record and its index slot: no
//! per-outcome allocation to free, no id to rehash, no reference count to
//! drop. Forgotten bytes at the buffer's front are cut off in one move once
//! they are a third of it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ahash::RandomState;
use bytes::Bytes;
use dashmap::DashMap;
use hashbrown::HashTable;
use pubsub_protocol::{MessageId, UserId};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connection::Frame;

/// Per-outcome memory besides its id and frame bytes (the record, its index
/// slot, the buffer's forgotten front), counted against the byte budgets so
/// they are close to what outcomes really cost.
const ENTRY_OVERHEAD: usize = 64;

/// One remembered outcome; its id and frame bytes are in the user's buffer.
struct Remembered {
    /// When it was recorded; the window is counted from here.
    at: Instant,
    /// The id's hash, so forgetting needs neither the id nor a rehash.
    hash: u64,
    /// Where the id starts in the user's byte stream (the frame follows it).
    start: u64,
    id_len: u16,
    frame_len: u32,
}

impl Remembered {
    fn len(&self) -> usize {
        usize::from(self.id_len) + self.frame_len as usize
    }
}

/// A request whose first attempt is still running.
struct Running {
    hash: u64,
    id: MessageId,
    /// Retries waiting for the first attempt's outcome.
    waiters: Vec<oneshot::Sender<Frame>>,
}

#[derive(Default)]
struct UserWindow {
    running: HashTable<Running>,
    /// Outcomes in the order they were recorded, oldest first.
    remembered: VecDeque<Remembered>,
    /// Sequence number of `remembered[0]`; the index holds sequence numbers.
    first_seq: u64,
    /// Id hash → sequence number of the outcome in `remembered`.
    index: HashTable<u64>,
    /// The remembered ids and frames back to back, oldest first, after
    /// `forgotten` bytes of outcomes already forgotten.
    buffer: Vec<u8>,
    forgotten: usize,
    /// Position of `buffer[0]` in the user's byte stream.
    buffer_start: u64,
}

/// The hash of each index entry, for the index to rehash when it grows or
/// shrinks.
fn hash_of(remembered: &VecDeque<Remembered>, first_seq: u64) -> impl Fn(&u64) -> u64 + '_ {
    move |&seq| {
        remembered
            .get((seq - first_seq) as usize)
            .map_or(0, |r| r.hash)
    }
}

impl UserWindow {
    /// Budgeted bytes of the remembered outcomes.
    fn bytes(&self) -> usize {
        self.buffer.len() - self.forgotten + self.remembered.len() * ENTRY_OVERHEAD
    }

    fn record(&self, seq: u64) -> Option<&Remembered> {
        let at = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.remembered.get(at)
    }

    /// The outcome remembered for `id`, as its sequence number.
    fn find(&self, hash: u64, id: &str) -> Option<u64> {
        self.index
            .find(hash, |&seq| {
                self.record(seq).is_some_and(|r| {
                    usize::from(r.id_len) == id.len()
                        && self.stored(r.start, id.len()) == Some(id.as_bytes())
                })
            })
            .copied()
    }

    fn stored(&self, start: u64, len: usize) -> Option<&[u8]> {
        let from = usize::try_from(start.checked_sub(self.buffer_start)?).ok()?;
        self.buffer.get(from..from.checked_add(len)?)
    }

    /// A copy of a remembered outcome's frame (replays are rare).
    fn frame(&self, seq: u64) -> Option<Frame> {
        let r = self.record(seq)?;
        let frame = self.stored(r.start + u64::from(r.id_len), r.frame_len as usize)?;
        Some(Frame::raw(Bytes::copy_from_slice(frame)))
    }

    fn remember(&mut self, now: Instant, hash: u64, id: &MessageId, frame: &Frame) {
        let seq = self.first_seq + self.remembered.len() as u64;
        let start = self.buffer_start + self.buffer.len() as u64;
        self.buffer.extend_from_slice(id.as_str().as_bytes());
        self.buffer.extend_from_slice(frame.bytes());
        self.remembered.push_back(Remembered {
            at: now,
            hash,
            start,
            // Ids are at most MAX_ID_BYTES (128) and frames at most the
            // message limit, far below these bounds.
            id_len: id.as_str().len() as u16,
            frame_len: frame.len() as u32,
        });
        self.index
            .insert_unique(hash, seq, hash_of(&self.remembered, self.first_seq));
    }

    /// Forgets the oldest remembered outcome; returns the bytes freed.
    fn forget_oldest(&mut self) -> usize {
        let Some(oldest) = self.remembered.pop_front() else {
            return 0;
        };
        let seq = self.first_seq;
        self.first_seq += 1;
        if let Ok(slot) = self.index.find_entry(oldest.hash, |&s| s == seq) {
            slot.remove();
        }
        // Outcomes leave in the order they came, so the oldest one's bytes
        // are the first still in the buffer.
        self.forgotten += oldest.len();
        if self.forgotten * 3 >= self.buffer.len() {
            self.cut_forgotten();
        }
        oldest.len() + ENTRY_OVERHEAD
    }

    /// Forgets outcomes older than the window; returns the bytes freed.
    fn expire(&mut self, now: Instant, window: Duration) -> usize {
        let mut freed = 0;
        while self
            .remembered
            .front()
            .is_some_and(|r| now.duration_since(r.at) >= window)
        {
            freed += self.forget_oldest();
        }
        freed
    }

    fn is_empty(&self) -> bool {
        self.running.is_empty() && self.remembered.is_empty()
    }

    fn cut_forgotten(&mut self) {
        self.buffer.drain(..self.forgotten);
        self.buffer_start += self.forgotten as u64;
        self.forgotten = 0;
    }

    /// Gives back memory a burst left behind once the user is quieter.
    fn shrink(&mut self) {
        self.cut_forgotten();
        if self.buffer.capacity() > 4 * self.buffer.len().max(1024) {
            self.buffer.shrink_to(2 * self.buffer.len());
            self.remembered.shrink_to(2 * self.remembered.len());
            self.index
                .shrink_to_fit(hash_of(&self.remembered, self.first_seq));
        }
    }
}

/// How ids are hashed: randomly keyed in the server, so a client cannot pick
/// ids that collide; constant in tests, to prove colliding ids are told apart.
enum IdHasher {
    Keyed(RandomState),
    #[cfg(test)]
    Constant,
}

impl IdHasher {
    fn hash(&self, id: &MessageId) -> u64 {
        match self {
            IdHasher::Keyed(state) => state.hash_one(id.as_str()),
            #[cfg(test)]
            IdHasher::Constant => 7,
        }
    }
}

struct Inner {
    users: DashMap<UserId, UserWindow, RandomState>,
    hasher: IdHasher,
    window: Duration,
    max_bytes_per_user: usize,
    max_bytes_total: usize,
    /// Bytes remembered across all users.
    total_bytes: AtomicUsize,
}

/// Shared handle to the retry window.
#[derive(Clone)]
pub(crate) struct RetryWindow(Arc<Inner>);

/// What `begin` decided about a request.
pub(crate) enum Begin {
    /// First time seen: process it and settle the ticket.
    New(Ticket),
    /// Already answered: send this frame again.
    Replay(Frame),
    /// The first attempt is still running: its outcome arrives here (or the
    /// sender is dropped if that attempt was abandoned).
    Wait(oneshot::Receiver<Frame>),
}

impl RetryWindow {
    pub(crate) fn new(window: Duration, max_bytes_per_user: usize, max_bytes_total: usize) -> Self {
        Self::with_hasher(
            IdHasher::Keyed(RandomState::new()),
            window,
            max_bytes_per_user,
            max_bytes_total,
        )
    }

    fn with_hasher(
        hasher: IdHasher,
        window: Duration,
        max_bytes_per_user: usize,
        max_bytes_total: usize,
    ) -> Self {
        Self(Arc::new(Inner {
            users: DashMap::with_hasher(RandomState::new()),
            hasher,
            window,
            max_bytes_per_user,
            max_bytes_total,
            total_bytes: AtomicUsize::new(0),
        }))
    }

    fn freed(&self, bytes: usize) {
        if bytes > 0 {
            self.0.total_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    pub(crate) fn begin(&self, user: &UserId, id: &MessageId) -> Begin {
        let now = Instant::now();
        let hash = self.0.hasher.hash(id);
        let mut w = match self.0.users.get_mut(user) {
            Some(w) => w,
            None => self.0.users.entry(user.clone()).or_default(),
        };
        let freed = w.expire(now, self.0.window);
        self.freed(freed);
        if let Some(frame) = w.find(hash, id.as_str()).and_then(|seq| w.frame(seq)) {
            return Begin::Replay(frame);
        }
        if let Some(running) = w.running.find_mut(hash, |r| r.id == *id) {
            let (tx, rx) = oneshot::channel();
            running.waiters.push(tx);
            return Begin::Wait(rx);
        }
        w.running.insert_unique(
            hash,
            Running {
                hash,
                id: id.clone(),
                waiters: Vec::new(),
            },
            |r| r.hash,
        );
        Begin::New(Ticket {
            window: self.clone(),
            user: user.clone(),
            id: id.clone(),
            hash,
            settled: false,
        })
    }

    fn settle(&self, ticket: &Ticket, outcome: Option<(&Frame, bool)>) {
        let (user, id, hash) = (&ticket.user, &ticket.id, ticket.hash);
        let Some(mut w) = self.0.users.get_mut(user) else {
            return;
        };
        let waiters = match w.running.find_entry(hash, |r| r.id == *id) {
            Ok(running) => running.remove().0.waiters,
            Err(_) => Vec::new(),
        };
        let mut freed = 0;
        if let Some((frame, remember)) = outcome {
            for waiter in waiters {
                let _ = waiter.send(frame.clone());
            }
            let cost = id.as_str().len() + frame.len() + ENTRY_OVERHEAD;
            let total = self.0.total_bytes.load(Ordering::Relaxed);
            // At the node's cap, make room from this user's own oldest.
            while remember
                && total + cost > self.0.max_bytes_total + freed
                && !w.remembered.is_empty()
            {
                freed += w.forget_oldest();
            }
            if remember && total + cost <= self.0.max_bytes_total + freed {
                w.remember(Instant::now(), hash, id, frame);
                self.0.total_bytes.fetch_add(cost, Ordering::Relaxed);
                while w.bytes() > self.0.max_bytes_per_user {
                    freed += w.forget_oldest();
                }
            }
        }
        self.freed(freed);
        let empty = w.is_empty();
        drop(w);
        if empty {
            self.0.users.remove_if(user, |_, w| w.is_empty());
        }
    }

    /// Drops expired outcomes of users who have gone quiet. Run periodically.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let window = self.0.window;
        let mut freed = 0;
        self.0.users.retain(|_, w| {
            freed += w.expire(now, window);
            w.shrink();
            !w.is_empty()
        });
        self.freed(freed);
    }

    /// Users with something remembered (for tests and stats).
    #[cfg(test)]
    fn users(&self) -> usize {
        self.0.users.len()
    }

    #[cfg(test)]
    fn total_bytes(&self) -> usize {
        self.0.total_bytes.load(Ordering::Relaxed)
    }
}

/// The right to settle one request. Dropping it unsettled forgets the request
/// (waiters see their channel close), so an abandoned attempt can be retried.
pub(crate) struct Ticket {
    window: RetryWindow,
    user: UserId,
    id: MessageId,
    hash: u64,
    settled: bool,
}

impl Ticket {
    /// Records the outcome. `remember` is false for retryable failures.
    pub(crate) fn settle(mut self, frame: &Frame, remember: bool) {
        self.settled = true;
        self.window.settle(&self, Some((frame, remember)));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            self.window.settle(self, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a request the window has not seen and settles it with `frame`.
    fn settle_new(w: &RetryWindow, user: &UserId, id: &MessageId, frame: &Frame, remember: bool) {
        let Begin::New(t) = w.begin(user, id) else {
            panic!("{id:?} is new")
        };
        t.settle(frame, remember);
    }

    fn ids(u: &str, m: &str) -> (UserId, MessageId) {
        (UserId::new(u).unwrap(), MessageId::new(m).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_outcomes_replay_until_the_window_ends() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        settle_new(&w, &u, &m, &Frame::from("ack"), true);
        assert!(matches!(w.begin(&u, &m), Begin::Replay(f) if f.as_str() == "ack"));
        tokio::time::advance(Duration::from_secs(121)).await;
        assert!(matches!(w.begin(&u, &m), Begin::New(_)));
    }

    #[tokio::test]
    async fn retryable_outcomes_are_forgotten() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        settle_new(&w, &u, &m, &Frame::from("timeout"), false);
        assert!(matches!(w.begin(&u, &m), Begin::New(_)));
    }

    #[tokio::test]
    async fn a_retry_in_flight_waits_for_the_first_outcome() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        let Begin::New(t) = w.begin(&u, &m) else {
            panic!()
        };
        let Begin::Wait(rx) = w.begin(&u, &m) else {
            panic!()
        };
        t.settle(&Frame::from("resp"), true);
        assert_eq!(rx.await.unwrap().as_str(), "resp");
    }

    #[tokio::test]
    async fn abandoned_attempts_release_waiters_and_the_id() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        let Begin::New(t) = w.begin(&u, &m) else {
            panic!()
        };
        let Begin::Wait(rx) = w.begin(&u, &m) else {
            panic!()
        };
        drop(t);
        assert!(rx.await.is_err());
        assert!(matches!(w.begin(&u, &m), Begin::New(_)));
    }

    #[tokio::test]
    async fn byte_budget_forgets_the_oldest_and_empty_users_are_dropped() {
        let w = RetryWindow::new(Duration::from_secs(120), 3 * (ENTRY_OVERHEAD + 10), 1 << 30);
        let u = UserId::new("u").unwrap();
        for i in 0..10 {
            let m = MessageId::new(format!("m{i}")).unwrap();
            settle_new(&w, &u, &m, &Frame::from("12345678"), true);
        }
        // m0 was pushed out by later outcomes; m9 is still remembered.
        assert!(matches!(
            w.begin(&u, &MessageId::new("m9").unwrap()),
            Begin::Replay(_)
        ));
        let Begin::New(t) = w.begin(&u, &MessageId::new("m0").unwrap()) else {
            panic!()
        };
        drop(t);
        let (v, m) = ids("v", "x");
        settle_new(&w, &v, &m, &Frame::from("e"), false);
        assert_eq!(w.users(), 1, "user v remembers nothing and is dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn the_node_cap_bounds_all_users_together() {
        let cost = ENTRY_OVERHEAD + 2 + 8; // id "mN", frame "12345678" (2-byte header + 8)
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 4 * cost + cost / 2);
        for user in ["a", "b", "c"] {
            let u = UserId::new(user).unwrap();
            for i in 0..2 {
                let m = MessageId::new(format!("m{i}")).unwrap();
                settle_new(&w, &u, &m, &Frame::from("12345678"), true);
            }
        }
        assert!(
            w.total_bytes() <= 4 * cost + cost / 2,
            "{}",
            w.total_bytes()
        );
        // c made room from its own oldest; a's and b's outcomes are intact.
        assert!(matches!(
            w.begin(&UserId::new("a").unwrap(), &MessageId::new("m1").unwrap()),
            Begin::Replay(_)
        ));
        tokio::time::advance(Duration::from_secs(121)).await;
        w.sweep();
        assert_eq!(w.total_bytes(), 0, "expiry gives the bytes back");
    }

    #[tokio::test]
    async fn ids_with_the_same_hash_are_told_apart() {
        let w = RetryWindow::with_hasher(
            IdHasher::Constant,
            Duration::from_secs(120),
            1 << 20,
            1 << 30,
        );
        let u = UserId::new("u").unwrap();
        // Same length, same hash: only the bytes in the buffer differ.
        for (m, frame) in [("m1", "one"), ("m2", "two"), ("m3", "three")] {
            settle_new(
                &w,
                &u,
                &MessageId::new(m).unwrap(),
                &Frame::from(frame),
                true,
            );
        }
        for (m, frame) in [("m1", "one"), ("m2", "two"), ("m3", "three")] {
            assert!(
                matches!(w.begin(&u, &MessageId::new(m).unwrap()), Begin::Replay(f) if f.as_str() == frame),
                "{m}"
            );
        }
        // Running requests with colliding hashes are told apart as well.
        let Begin::New(_a) = w.begin(&u, &MessageId::new("r1").unwrap()) else {
            panic!()
        };
        assert!(matches!(
            w.begin(&u, &MessageId::new("r2").unwrap()),
            Begin::New(_)
        ));
    }

    #[tokio::test]
    async fn outcomes_replay_intact_while_older_ones_are_pushed_out() {
        // Room for about 20 outcomes: thousands go through, so the buffer's
        // start moves far past where it began and its front is cut many times.
        let w = RetryWindow::new(
            Duration::from_secs(120),
            20 * (ENTRY_OVERHEAD + 30),
            1 << 30,
        );
        let u = UserId::new("u").unwrap();
        let frame_of = |i: usize| format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(i % 13));
        for i in 0..5_000 {
            let m = MessageId::new(format!("id-{i}")).unwrap();
            settle_new(&w, &u, &m, &Frame::from(frame_of(i)), true);
            if i >= 10 {
                // A recent one replays byte for byte; a long-gone one is new.
                let recent = MessageId::new(format!("id-{}", i - 5)).unwrap();
                let Begin::Replay(f) = w.begin(&u, &recent) else {
                    panic!("id-{} is remembered", i - 5)
                };
                assert_eq!(f, Frame::from(frame_of(i - 5)));
                if i >= 100 {
                    let gone = MessageId::new(format!("id-{}", i - 100)).unwrap();
                    let Begin::New(t) = w.begin(&u, &gone) else {
                        panic!("id-{} is forgotten", i - 100)
                    };
                    // Abandoned: it must not take a place in the window.
                    drop(t);
                }
            }
        }
        assert!(w.total_bytes() <= 20 * (ENTRY_OVERHEAD + 30));
        let remembered = w.0.users.get(&u).map(|w| w.remembered.len());
        assert!(
            remembered.is_some_and(|n| (10..=20).contains(&n)),
            "{remembered:?} outcomes in {} bytes",
            w.total_bytes()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_user_gives_back_the_memory_of_a_burst() {
        let w = RetryWindow::new(Duration::from_secs(10), 1 << 20, 1 << 30);
        let u = UserId::new("u").unwrap();
        for i in 0..2_000 {
            let m = MessageId::new(format!("burst-{i}")).unwrap();
            settle_new(&w, &u, &m, &Frame::from("a remembered outcome"), true);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        settle_new(
            &w,
            &u,
            &MessageId::new("later").unwrap(),
            &Frame::from("a remembered outcome"),
            true,
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        w.sweep();
        let users = w.0.users.get(&u).expect("`later` is still remembered");
        assert_eq!(users.remembered.len(), 1);
        assert!(
            users.buffer.capacity() <= 4096,
            "the buffer keeps {} bytes of capacity for one outcome",
            users.buffer.capacity()
        );
    }
}
