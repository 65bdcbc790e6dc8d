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

use std::collections::{VecDeque, hash_map};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ahash::{HashMap, HashMapExt, RandomState};
use dashmap::DashMap;
use pubsub_protocol::{MessageId, UserId};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connection::Frame;

/// Per-entry memory besides the id and the frame (map slot, order slot,
/// allocation headers), counted against a user's byte budget so the budget
/// is close to what the entries really cost.
const ENTRY_OVERHEAD: usize = 160;

enum Entry {
    Pending(Vec<oneshot::Sender<Frame>>),
    Done(Frame),
}

struct UserWindow {
    entries: HashMap<MessageId, Entry>,
    /// Completed entries, oldest first, with the time they completed.
    order: VecDeque<(Instant, MessageId, usize)>,
    bytes: usize,
}

impl Default for UserWindow {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl UserWindow {
    /// Forgets the oldest completed outcome; returns the bytes freed.
    fn forget_oldest(&mut self) -> usize {
        let Some((_, id, cost)) = self.order.pop_front() else {
            return 0;
        };
        self.bytes -= cost;
        if let hash_map::Entry::Occupied(entry) = self.entries.entry(id)
            && matches!(entry.get(), Entry::Done(_))
        {
            entry.remove();
        }
        cost
    }

    /// Forgets outcomes older than the window; returns the bytes freed.
    fn expire(&mut self, now: Instant, window: Duration) -> usize {
        let mut freed = 0;
        while self
            .order
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) >= window)
        {
            freed += self.forget_oldest();
        }
        freed
    }
}

struct Inner {
    users: DashMap<UserId, UserWindow, RandomState>,
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
        Self(Arc::new(Inner {
            users: DashMap::with_hasher(RandomState::new()),
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
        let mut w = self.0.users.entry(user.clone()).or_default();
        let freed = w.expire(now, self.0.window);
        self.freed(freed);
        match w.entries.entry(id.clone()) {
            hash_map::Entry::Occupied(entry) => match entry.into_mut() {
                Entry::Done(frame) => Begin::Replay(frame.clone()),
                Entry::Pending(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Begin::Wait(rx)
                }
            },
            hash_map::Entry::Vacant(slot) => {
                slot.insert(Entry::Pending(Vec::new()));
                Begin::New(Ticket {
                    window: self.clone(),
                    user: user.clone(),
                    id: id.clone(),
                    settled: false,
                })
            }
        }
    }

    fn settle(&self, user: &UserId, id: &MessageId, outcome: Option<(&Frame, bool)>) {
        let now = Instant::now();
        let Some(mut w) = self.0.users.get_mut(user) else {
            return;
        };
        let waiters = match w.entries.get_mut(id) {
            Some(Entry::Pending(waiters)) => std::mem::take(waiters),
            Some(Entry::Done(_)) => return,
            None => Vec::new(),
        };
        let mut freed = 0;
        match outcome {
            Some((frame, remember)) => {
                for waiter in waiters {
                    let _ = waiter.send(frame.clone());
                }
                let cost = id.as_str().len() + frame.len() + ENTRY_OVERHEAD;
                let total = self.0.total_bytes.load(Ordering::Relaxed);
                // At the node's cap, make room from this user's own oldest.
                while remember
                    && total + cost > self.0.max_bytes_total + freed
                    && !w.order.is_empty()
                {
                    freed += w.forget_oldest();
                }
                if remember && total + cost <= self.0.max_bytes_total + freed {
                    w.entries.insert(id.clone(), Entry::Done(frame.clone()));
                    w.order.push_back((now, id.clone(), cost));
                    w.bytes += cost;
                    self.0.total_bytes.fetch_add(cost, Ordering::Relaxed);
                    while w.bytes > self.0.max_bytes_per_user {
                        freed += w.forget_oldest();
                    }
                } else {
                    w.entries.remove(id);
                }
            }
            None => {
                w.entries.remove(id);
            }
        }
        self.freed(freed);
        let empty = w.entries.is_empty();
        drop(w);
        if empty {
            self.0.users.remove_if(user, |_, w| w.entries.is_empty());
        }
    }

    /// Drops expired outcomes of users who have gone quiet. Run periodically.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let window = self.0.window;
        let mut freed = 0;
        self.0.users.retain(|_, w| {
            freed += w.expire(now, window);
            !w.entries.is_empty()
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
    settled: bool,
}

impl Ticket {
    /// Records the outcome. `remember` is false for retryable failures.
    pub(crate) fn settle(mut self, frame: &Frame, remember: bool) {
        self.settled = true;
        self.window
            .settle(&self.user, &self.id, Some((frame, remember)));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            self.window.settle(&self.user, &self.id, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(u: &str, m: &str) -> (UserId, MessageId) {
        (UserId::new(u).unwrap(), MessageId::new(m).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_outcomes_replay_until_the_window_ends() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        let Begin::New(t) = w.begin(&u, &m) else {
            panic!()
        };
        t.settle(&Frame::from("ack"), true);
        assert!(matches!(w.begin(&u, &m), Begin::Replay(f) if f.as_str() == "ack"));
        tokio::time::advance(Duration::from_secs(121)).await;
        assert!(matches!(w.begin(&u, &m), Begin::New(_)));
    }

    #[tokio::test]
    async fn retryable_outcomes_are_forgotten() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        let Begin::New(t) = w.begin(&u, &m) else {
            panic!()
        };
        t.settle(&Frame::from("timeout"), false);
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
            let Begin::New(t) = w.begin(&u, &m) else {
                panic!()
            };
            t.settle(&Frame::from("12345678"), true);
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
        let Begin::New(t) = w.begin(&v, &m) else {
            panic!()
        };
        t.settle(&Frame::from("e"), false);
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
                let Begin::New(t) = w.begin(&u, &m) else {
                    panic!()
                };
                t.settle(&Frame::from("12345678"), true);
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
}
