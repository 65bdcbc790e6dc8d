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
//! cache and for memory rather than for convenience:
//! - a user's outcomes are copied, each as one record (the lengths, the id,
//!   the frame), onto the end of one ring of bytes in the order they
//!   finished, and what expiring, forgetting and lookups need of each (its
//!   time, id hash and length) goes into a dense queue beside it
//!   ([`Entry`]): remembering allocates nothing once both have grown, and
//!   forgetting reads one entry and never the ring (no per-outcome
//!   allocation to free, no id to rehash, no reference count to drop, no
//!   cold line at the ring's far end). A ring, not a flat
//!   buffer whose forgotten front is cut off now and then: that front and
//!   the room kept for it held a third of the buffer, so a full window took
//!   1.35× its budget where the ring takes about 1× (the test
//!   `a_full_window_holds_little_more_memory_than_its_budget`). It grows by
//!   a quarter, not double, and room is made by forgetting before a record
//!   goes in, so a window at its budget does not grow past it.
//! - whether an id is remembered is asked of a Bloom filter of the ids'
//!   hashes first ([`id_filter`]: one cache line), and only when it says
//!   "maybe" (a retry, or fewer than one new id in a thousand) are the
//!   user's entries walked, and a record read only where a hash matches.
//!   A window of a few outcomes (a client that reports its acks keeps one
//!   or two) has no filter: its entries' hashes are compared directly.
//!   The filter is rebuilt from the entries as it fills, not from the ring,
//!   which would read all of it once per turnover.
//! - a hash index from id to record, which did this for every request
//!   (finding, inserting and removing in it touched four or five cold cache
//!   lines each time), is built only when a user's retries are replayed (a
//!   reconnected client resends a burst, a buggy one may resend forever),
//!   and dropped once the ring has turned over without one.
//!
//! Each user's outcomes sit behind a mutex of their own, which the node's map
//! hands out once per connection ([`UserSlot`]) and once per request (the
//! [`Ticket`]): a request then costs no map lookup to begin or to settle.
//! A user's entry leaves the map only when it holds nothing; it is marked
//! `detached` as it leaves, so a connection still holding it looks it up
//! again instead of remembering into a window no one else sees.

mod id_filter;
mod running;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ahash::RandomState;
use bytes::Bytes;
use dashmap::DashMap;
use hashbrown::HashTable;
use parking_lot::{Mutex, RawMutex, lock_api::ArcMutexGuard};
use pubsub_protocol::{MessageId, UserId};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connection::Frame;
use id_filter::IdFilter;
use running::{Running, RunningRequests};

/// Per-outcome memory besides its id and frame bytes (the record's header,
/// its entry in the queue beside the ring and its bits in the id filter, the
/// spare capacity of both), counted against the byte budgets so they are
/// close to what outcomes really cost.
const ENTRY_OVERHEAD: usize = 64;

/// Up to this many remembered outcomes a lookup compares their hashes
/// directly, without the id filter: a client that reports its acks keeps
/// one or two, and walking those costs a few compares where asking the
/// filter (and adding to it) costs some eighty instructions a time.
const FILTER_FROM: usize = 8;

/// Each remembered outcome is one record in its user's ring: this header,
/// then the id's bytes, then the frame's. Little-endian fields: the frame's
/// length, the id's length.
const HEADER: usize = 6;

#[derive(Clone, Copy)]
struct Header {
    frame_len: u32,
    id_len: u16,
}

impl Header {
    fn encode(&self) -> [u8; HEADER] {
        let mut out = [0; HEADER];
        out[0..4].copy_from_slice(&self.frame_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.id_len.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; HEADER]) -> Option<Self> {
        let field = |at: usize, len: usize| bytes.get(at..at + len);
        Some(Self {
            frame_len: u32::from_le_bytes(field(0, 4)?.try_into().ok()?),
            id_len: u16::from_le_bytes(field(4, 2)?.try_into().ok()?),
        })
    }

    /// The whole record's length in the ring.
    fn record_len(&self) -> usize {
        HEADER + usize::from(self.id_len) + self.frame_len as usize
    }
}

/// What expiring, forgetting and looking up need of a record, kept in a
/// dense queue beside the ring rather than in the record's header: a
/// request then reads the oldest outcome's time and length from an entry
/// that shares its cache line with the next two, instead of from the far
/// end of the ring, a line last touched when it was written, hundreds of
/// the user's requests before. Walks and filter rebuilds read only this
/// queue, and the ring only where a hash matches.
#[derive(Clone, Copy)]
struct Entry {
    /// The id's hash.
    hash: u64,
    /// When the outcome was recorded: nanoseconds since the window was
    /// created (the window is counted from here).
    at: u64,
    /// The record's length in the ring.
    len: u32,
    /// The id's length (in the record's header too): a lookup compares it
    /// before it reads the record, and reads no header at all.
    id_len: u16,
    /// Its client reported the ack received (`received`): no longer
    /// replayed, and its record goes as soon as the ones before it have.
    released: bool,
}

impl Entry {
    /// What the outcome counts against the budgets: its id, its frame and
    /// the overhead.
    fn cost(&self) -> usize {
        self.len as usize - HEADER + ENTRY_OVERHEAD
    }
}

/// What an outcome with an id and a frame this long counts against the budgets.
fn cost(id_len: usize, frame_len: usize) -> usize {
    id_len + frame_len + ENTRY_OVERHEAD
}

/// In the order a request reads it, so that what every request touches
/// shares as few cache lines as it can (`repr(C)` keeps this order): with
/// thousands of users, each user's lines are cold by its next request.
#[repr(C)]
struct UserWindow {
    /// Whether `ids` is in use: only once the window holds more than
    /// [`FILTER_FROM`] outcomes, and until it holds none.
    filtered: bool,
    /// Set when the window left the node's map (it was empty): a holder of
    /// the old slot must look the user up again.
    detached: bool,
    /// What the records' times count from.
    created: Instant,
    running: RunningRequests,
    /// The remembered outcomes' records back to back, oldest first.
    buffer: VecDeque<u8>,
    /// Position of `buffer[0]` (the oldest record) in the user's byte stream.
    buffer_start: u64,
    /// One entry per record, in the same order.
    entries: VecDeque<Entry>,
    /// (id hash, stream position of the outcome's record), kept only while
    /// the user's retries are being replayed: a walk of the entries per
    /// lookup is fine for the one in a thousand the filter lets through,
    /// not for a client resending a burst (or a bug resending forever).
    /// Built on a replay, dropped once the ring has turned over without one.
    /// Boxed, since it is rare: the window's lines that every request reads
    /// hold only its pointer.
    index: Option<Box<HashTable<(u64, u64)>>>,
    /// Outcomes remembered since the last replay, while `index` is kept.
    remembered_since_replay: usize,
    /// The hashes of the remembered outcomes' ids (and of some forgotten
    /// ones, until it is next rebuilt).
    ids: IdFilter,
    /// Whose outcomes these are, for taking the window out of the node's
    /// map once it is empty (kept here so a request's ticket need not hold
    /// a reference of its own).
    user: UserId,
}

type Shared = Arc<Mutex<UserWindow>>;
type Locked = ArcMutexGuard<RawMutex, UserWindow>;

/// A connection's handle on its user's window, found on its first request
/// and kept for the next ones.
#[derive(Default)]
pub(crate) struct UserSlot(Option<Shared>);

/// The ring's two contiguous parts, cut to the `len` bytes at `from`.
fn ring_range(buffer: &VecDeque<u8>, from: u64, len: usize) -> Option<(&[u8], &[u8])> {
    let from = usize::try_from(from).ok()?;
    let to = from.checked_add(len)?;
    if to > buffer.len() {
        return None;
    }
    let (a, b) = buffer.as_slices();
    Some(if to <= a.len() {
        (&a[from..to], &[][..])
    } else if from >= a.len() {
        (&b[from - a.len()..to - a.len()], &[][..])
    } else {
        (&a[from..], &b[..to - a.len()])
    })
}

/// Copies the bytes at `from` (counted from the ring's front) into `out`.
fn copy_out(buffer: &VecDeque<u8>, from: u64, out: &mut [u8]) -> Option<()> {
    let (a, b) = ring_range(buffer, from, out.len())?;
    out[..a.len()].copy_from_slice(a);
    out[a.len()..].copy_from_slice(b);
    Some(())
}

impl UserWindow {
    fn new(user: UserId) -> Self {
        Self {
            user,
            created: Instant::now(),
            running: RunningRequests::default(),
            buffer: VecDeque::new(),
            buffer_start: 0,
            entries: VecDeque::new(),
            index: None,
            remembered_since_replay: 0,
            ids: IdFilter::new(),
            filtered: false,
            detached: false,
        }
    }

    /// How many outcomes the window remembers.
    fn count(&self) -> usize {
        self.entries.len()
    }

    /// Budgeted bytes of the remembered outcomes ([`Entry::cost`] each):
    /// their records, less a header each, plus the overhead each counts.
    fn bytes(&self) -> usize {
        self.buffer.len() + self.count() * ENTRY_OVERHEAD - self.count() * HEADER
    }

    fn nanos_since_created(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.created).as_nanos()).unwrap_or(u64::MAX)
    }

    fn header(&self, pos: u64) -> Option<Header> {
        let mut header = [0; HEADER];
        copy_out(
            &self.buffer,
            pos.checked_sub(self.buffer_start)?,
            &mut header,
        )?;
        Header::decode(&header)
    }

    /// The bytes `len` long at `offset` past the start of the record at
    /// `pos`, as the ring's two parts (the second empty unless they wrap).
    fn stored(&self, pos: u64, offset: usize, len: usize) -> Option<(&[u8], &[u8])> {
        let from = pos
            .checked_sub(self.buffer_start)?
            .checked_add(offset as u64)?;
        ring_range(&self.buffer, from, len)
    }

    /// The records' stream positions and entries, oldest first.
    fn records(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        let mut pos = self.buffer_start;
        self.entries.iter().map(move |&e| {
            let at = pos;
            pos += u64::from(e.len);
            (at, e)
        })
    }

    /// Whether the record at `pos` holds `id`.
    fn holds(&self, pos: u64, id: &str) -> bool {
        self.header(pos)
            .is_some_and(|h| usize::from(h.id_len) == id.len() && self.id_bytes_are(pos, id))
    }

    /// Whether the record at `pos`, whose entry is `e`, holds `id`.
    fn entry_holds(&self, pos: u64, e: &Entry, id: &str) -> bool {
        usize::from(e.id_len) == id.len() && self.id_bytes_are(pos, id)
    }

    /// Whether the record at `pos`, whose id is as long as `id`, holds
    /// `id`'s bytes.
    fn id_bytes_are(&self, pos: u64, id: &str) -> bool {
        self.stored(pos, HEADER, id.len()).is_some_and(|(a, b)| {
            // A record seldom wraps around the ring, and comparing the
            // empty second part would still be a call into `memcmp`.
            id.as_bytes()
                .split_at_checked(a.len())
                .is_some_and(|(x, y)| a == x && ((b.is_empty() && y.is_empty()) || b == y))
        })
    }

    /// The outcome remembered for `id`, as its record's position.
    fn find(&mut self, hash: u64, id: &str) -> Option<u64> {
        if !self.may_hold(hash) {
            return None;
        }
        let pos = match self.index.as_deref() {
            Some(index) => index
                .find(hash, |&(h, pos)| h == hash && self.holds(pos, id))
                .map(|&(_, pos)| pos),
            None => self
                .records()
                .find(|&(pos, e)| e.hash == hash && !e.released && self.entry_holds(pos, &e, id))
                .map(|(pos, _)| pos),
        }?;
        // A replay: a client that reconnected resends all it had in flight,
        // so the next lookups go through an index instead of a walk each.
        if self.index.is_none() {
            let mut index = HashTable::with_capacity(self.count());
            for (pos, e) in self.records().filter(|(_, e)| !e.released) {
                index.insert_unique(e.hash, (e.hash, pos), |&(h, _)| h);
            }
            self.index = Some(Box::new(index));
        }
        self.remembered_since_replay = 0;
        Some(pos)
    }

    /// Whether an outcome with this id hash may be remembered (false:
    /// certainly not). Without the filter, the entries' walk decides.
    fn may_hold(&self, hash: u64) -> bool {
        !self.filtered || self.ids.may_contain(hash)
    }

    /// Empties the id filter and puts back the ids still remembered, sized
    /// for twice `room_for` (at least the count): at a steady count the next
    /// rebuild is as many requests away as the ring holds outcomes.
    fn rebuild_ids(&mut self, room_for: usize) {
        self.ids.reset(2 * room_for);
        for e in self.entries.iter().filter(|e| !e.released) {
            self.ids.add(e.hash);
        }
    }

    /// A copy of a remembered outcome's frame (replays are rare).
    fn frame(&self, pos: u64) -> Option<Frame> {
        let h = self.header(pos)?;
        let (a, b) = self.stored(pos, HEADER + usize::from(h.id_len), h.frame_len as usize)?;
        Some(Frame::raw(Bytes::from([a, b].concat())))
    }

    /// `began`: when the request began, in [`UserWindow::nanos_since_created`].
    fn remember(&mut self, began: u64, hash: u64, id: &MessageId, frame: &[u8]) {
        let header = Header {
            // Ids are at most MAX_ID_BYTES (128) and frames at most the
            // message limit, far below these bounds.
            frame_len: frame.len() as u32,
            id_len: id.as_str().len() as u16,
        };
        let entry = Entry {
            hash,
            at: began,
            len: header.record_len() as u32,
            id_len: header.id_len,
            released: false,
        };
        self.make_room(header.record_len());
        if self.filtered && self.ids.is_full() {
            self.rebuild_ids(self.count() + 1);
        }
        let pos = self.buffer_start + self.buffer.len() as u64;
        self.buffer.extend(&header.encode());
        self.buffer.extend(id.as_str().as_bytes());
        self.buffer.extend(frame);
        self.entries.push_back(entry);
        if self.filtered {
            self.ids.add(hash);
        } else if self.entries.len() > FILTER_FROM {
            self.filtered = true;
            self.rebuild_ids(self.count());
        }
        if let Some(index) = self.index.as_deref_mut() {
            self.remembered_since_replay += 1;
            if self.remembered_since_replay > self.entries.len() {
                self.index = None;
            } else {
                index.insert_unique(hash, (hash, pos), |&(h, _)| h);
            }
        }
    }

    /// Before appending `len` bytes to a full ring: grows it by a quarter,
    /// rather than doubling it, so that spare capacity stays a small part of
    /// what a user's outcomes take.
    fn make_room(&mut self, len: usize) {
        if self.buffer.len() + len <= self.buffer.capacity() {
            return;
        }
        let want = (self.buffer.len() + len).max(self.buffer.capacity() * 5 / 4);
        self.buffer.reserve_exact(want - self.buffer.len());
    }

    /// Forgets the oldest remembered outcome, and the released ones right
    /// behind it; returns the bytes freed. Their ids stay in the filter
    /// until the next rebuild: a lookup that the filter lets through finds
    /// no record and costs one walk.
    fn forget_oldest(&mut self) -> usize {
        let mut freed = self.forget_front();
        while self.entries.front().is_some_and(|e| e.released) {
            freed += self.forget_front();
        }
        freed
    }

    fn forget_front(&mut self) -> usize {
        let Some(oldest) = self.entries.pop_front() else {
            return 0;
        };
        if let Some(index) = self.index.as_deref_mut() {
            let pos = self.buffer_start;
            if let Ok(slot) = index.find_entry(oldest.hash, |&(_, p)| p == pos) {
                slot.remove();
            }
        }
        // Outcomes leave in the order they came, so the oldest one's record
        // is the ring's front, and records are written whole; the bound only
        // keeps a broken invariant from becoming a panic.
        let len = (oldest.len as usize).min(self.buffer.len());
        self.buffer_start += len as u64;
        if self.entries.is_empty() {
            // Both rings start over at their first byte: a client that
            // reports its acks keeps one or two records, which then stay in
            // the same few cache lines instead of walking through the
            // capacity an earlier burst left.
            self.buffer_start += (self.buffer.len() - len) as u64;
            self.entries.clear();
            self.filtered = false;
            self.buffer.clear();
        } else {
            self.buffer.drain(..len);
        }
        oldest.cost()
    }

    /// Forgets the outcome of `id`, whose ack its client reports received;
    /// returns the bytes freed. Records leave the ring only from its front,
    /// so one in the middle is marked and goes when the ones before it
    /// have; at one request in flight it is the only one.
    fn release(&mut self, hash: u64, id: &str) -> usize {
        if !self.may_hold(hash) {
            return 0;
        }
        // Newest first: a client reports the acks it has just received.
        let mut pos = self.buffer_start + self.buffer.len() as u64;
        let mut found = None;
        for (at, e) in self.entries.iter().enumerate().rev() {
            pos -= u64::from(e.len);
            if e.hash == hash && !e.released && self.entry_holds(pos, e, id) {
                found = Some((at, pos));
                break;
            }
        }
        let Some((at, pos)) = found else {
            return 0;
        };
        if let Some(entry) = self.entries.get_mut(at) {
            entry.released = true;
        }
        if let Some(index) = self.index.as_deref_mut()
            && let Ok(slot) = index.find_entry(hash, |&(_, p)| p == pos)
        {
            slot.remove();
        }
        if self.entries.front().is_some_and(|e| e.released) {
            self.forget_oldest()
        } else {
            0
        }
    }

    /// Forgets outcomes older than the window; returns the bytes freed.
    fn expire(&mut self, now: Instant, window: Duration) -> usize {
        self.expire_at(self.nanos_since_created(now), window)
    }

    /// [`UserWindow::expire`] with the time already counted from `created`.
    fn expire_at(&mut self, now: u64, window: Duration) -> usize {
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let mut freed = 0;
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_sub(e.at) >= window)
        {
            freed += self.forget_oldest();
        }
        freed
    }

    fn is_empty(&self) -> bool {
        self.running.is_empty() && self.entries.is_empty()
    }

    /// Gives back memory a burst left behind once the user is quieter.
    fn shrink(&mut self) {
        if self.buffer.capacity() > 4 * self.buffer.len().max(1024) {
            self.buffer.shrink_to(2 * self.buffer.len());
            self.entries.shrink_to(2 * self.entries.len());
            if self.filtered {
                self.rebuild_ids(self.count());
            } else {
                self.ids = IdFilter::new();
            }
            if let Some(index) = self.index.as_deref_mut() {
                index.shrink_to_fit(|&(h, _)| h);
            }
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
        self.hash_str(id.as_str())
    }

    fn hash_str(&self, id: &str) -> u64 {
        match self {
            IdHasher::Keyed(state) => state.hash_one(id),
            #[cfg(test)]
            IdHasher::Constant => 7,
        }
    }
}

struct Inner {
    users: DashMap<UserId, Shared, RandomState>,
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

    /// Locks `user`'s window, through `slot` when it already holds it.
    /// The map's lock is never taken while a window is locked.
    fn lock_user(&self, slot: &mut UserSlot, user: &UserId) -> Locked {
        if let Some(shared) = &slot.0 {
            let w = shared.lock_arc();
            if !w.detached {
                return w;
            }
        }
        let shared = match self.0.users.get(user) {
            Some(shared) => shared.clone(),
            None => self
                .0
                .users
                .entry(user.clone())
                .or_insert_with(|| Arc::new(Mutex::new(UserWindow::new(user.clone()))))
                .clone(),
        };
        let w = shared.lock_arc();
        slot.0 = Some(shared);
        w
    }

    /// Removes `user`'s entry if its window holds nothing.
    fn remove_if_empty(&self, user: &UserId) {
        self.0.users.remove_if(user, |_, shared| {
            let mut w = shared.lock();
            w.detached = w.is_empty();
            w.detached
        });
    }

    /// Begins the request `id` of `user`, read at `now`, after forgetting
    /// the outcomes of `released` (the acks its client reports received,
    /// docs/protocol.md 2.2.1).
    pub(crate) fn begin<'i>(
        &self,
        slot: &mut UserSlot,
        user: &UserId,
        id: &MessageId,
        released: impl Iterator<Item = &'i str>,
        now: Instant,
    ) -> Begin {
        let hash = self.0.hasher.hash(id);
        let mut w = self.lock_user(slot, user);
        // The request's time (its read's, not a clock read of its own) is
        // counted from the window's creation once per request: for
        // expiring here and for the outcome's time.
        let began = w.nanos_since_created(now);
        let mut freed = w.expire_at(began, self.0.window);
        for id in released {
            freed += w.release(self.0.hasher.hash_str(id), id);
        }
        if let Some(frame) = w.find(hash, id.as_str()).and_then(|seq| w.frame(seq)) {
            self.freed(freed);
            return Begin::Replay(frame);
        }
        if let Some(running) = w.running.find_mut(hash, id) {
            self.freed(freed);
            let (tx, rx) = oneshot::channel();
            running.waiters.push(tx);
            return Begin::Wait(rx);
        }
        w.running.insert(Running {
            hash,
            id: id.clone(),
            waiters: Vec::new(),
        });
        Begin::New(Ticket {
            window: self.clone(),
            user_window: Locked::mutex(&w).clone(),
            id: id.clone(),
            hash,
            began,
            // Counted when the request settles, in the one update it makes.
            freed,
            settled: false,
        })
    }

    /// Forgets the outcomes of `ids`, whose acks a client of `user` reports
    /// received (docs/protocol.md 2.2.1). A window left empty stays in the
    /// map until the sweep: the user is sending, and its next request would
    /// only put it back.
    pub(crate) fn release<'i>(
        &self,
        slot: &mut UserSlot,
        user: &UserId,
        ids: impl Iterator<Item = &'i str>,
    ) {
        if slot.0.is_none() && !self.0.users.contains_key(user) {
            return;
        }
        let mut w = self.lock_user(slot, user);
        let mut freed = 0;
        for id in ids {
            freed += w.release(self.0.hasher.hash_str(id), id);
        }
        drop(w);
        self.freed(freed);
    }

    /// Bytes remembered across all users, as the budgets count them.
    pub(crate) fn bytes(&self) -> usize {
        self.0.total_bytes.load(Ordering::Relaxed)
    }

    /// `outcome`: the answer's frame, as bytes on the wire, and whether to
    /// remember it.
    fn settle(&self, ticket: &Ticket, outcome: Option<(&[u8], bool)>) {
        let (id, hash) = (&ticket.id, ticket.hash);
        // A window with a request running is never detached.
        let mut w = ticket.user_window.lock();
        let waiters = w
            .running
            .remove(hash, id)
            .map_or_else(Vec::new, |running| running.waiters);
        let (mut freed, mut added) = (ticket.freed, 0);
        if let Some((frame, remember)) = outcome {
            if !waiters.is_empty() {
                let shared = Frame::raw(Bytes::copy_from_slice(frame));
                for waiter in waiters {
                    let _ = waiter.send(shared.clone());
                }
            }
            let cost = cost(id.as_str().len(), frame.len());
            let total = self.0.total_bytes.load(Ordering::Relaxed);
            // At the node's cap, make room from this user's own oldest.
            while remember && total + cost > self.0.max_bytes_total + freed && w.count() > 0 {
                freed += w.forget_oldest();
            }
            if remember && total + cost <= self.0.max_bytes_total + freed {
                // Room is made before the record goes in, so that at the
                // budget the ring need not grow past it to hold one more.
                while w.count() > 0 && w.bytes() + cost > self.0.max_bytes_per_user {
                    freed += w.forget_oldest();
                }
                if cost <= self.0.max_bytes_per_user {
                    // Counted from when the request began: the clock is read
                    // once per request. Expiry goes in settling order, so the
                    // outcome of a request that ran long and settled behind
                    // one that began later is kept past the window by at most
                    // how long it ran; never less.
                    w.remember(ticket.began, hash, id, frame);
                    added = cost;
                }
            }
        }
        // One locked update, not one for the freed bytes and one for the
        // added: each waits for the stores before it (the new record's).
        match added.cmp(&freed) {
            std::cmp::Ordering::Greater => {
                self.0
                    .total_bytes
                    .fetch_add(added - freed, Ordering::Relaxed);
            }
            std::cmp::Ordering::Less => self.freed(freed - added),
            std::cmp::Ordering::Equal => {}
        }
        let empty = w.is_empty().then(|| w.user.clone());
        drop(w);
        if let Some(user) = empty {
            self.remove_if_empty(&user);
        }
    }

    /// Drops expired outcomes of users who have gone quiet. Run periodically.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let window = self.0.window;
        let mut freed = 0;
        self.0.users.retain(|_, shared| {
            let mut w = shared.lock();
            freed += w.expire(now, window);
            w.shrink();
            w.detached = w.is_empty();
            !w.detached
        });
        self.freed(freed);
    }

    /// Users with something remembered (for tests and stats).
    #[cfg(test)]
    fn users(&self) -> usize {
        self.0.users.len()
    }
}

/// The right to settle one request. Dropping it unsettled forgets the request
/// (waiters see their channel close), so an abandoned attempt can be retried.
pub(crate) struct Ticket {
    window: RetryWindow,
    user_window: Shared,
    id: MessageId,
    hash: u64,
    /// When the request began: nanoseconds since its user's window was
    /// created (the ticket settles into that same window).
    began: u64,
    /// Bytes `begin` freed, not yet taken off the node's total.
    freed: usize,
    settled: bool,
}

impl Ticket {
    /// The request's id.
    pub(crate) fn id(&self) -> &MessageId {
        &self.id
    }

    /// Records the outcome. `remember` is false for retryable failures.
    pub(crate) fn settle(mut self, frame: &Frame, remember: bool) {
        self.settle_in_place(frame.bytes(), remember);
    }

    /// [`Ticket::settle`] for a holder that keeps the ticket, with the
    /// frame's bytes (a frame lent by its builder); later calls do nothing.
    pub(crate) fn settle_in_place(&mut self, frame: &[u8], remember: bool) {
        if !self.settled {
            self.settled = true;
            self.window.settle(self, Some((frame, remember)));
        }
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

    /// Begins a request as a connection making its first one would.
    fn begin(w: &RetryWindow, user: &UserId, id: &MessageId) -> Begin {
        w.begin(
            &mut UserSlot::default(),
            user,
            id,
            std::iter::empty(),
            Instant::now(),
        )
    }

    /// Runs a request the window has not seen and settles it with `frame`.
    fn settle_new(w: &RetryWindow, user: &UserId, id: &MessageId, frame: &Frame, remember: bool) {
        let Begin::New(t) = begin(w, user, id) else {
            panic!("{id:?} is new")
        };
        t.settle(frame, remember);
    }

    /// A window in which every id has the same hash, so that ids are told
    /// apart by their bytes alone.
    fn colliding(max_bytes_per_user: usize) -> RetryWindow {
        RetryWindow::with_hasher(
            IdHasher::Constant,
            Duration::from_secs(120),
            max_bytes_per_user,
            1 << 30,
        )
    }

    fn ids(u: &str, m: &str) -> (UserId, MessageId) {
        (UserId::new(u).unwrap(), MessageId::new(m).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_outcomes_replay_until_the_window_ends() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        settle_new(&w, &u, &m, &Frame::from("ack"), true);
        assert!(matches!(begin(&w, &u, &m), Begin::Replay(f) if f.as_str() == "ack"));
        tokio::time::advance(Duration::from_secs(121)).await;
        assert!(matches!(begin(&w, &u, &m), Begin::New(_)));
    }

    #[tokio::test]
    async fn a_users_connections_share_one_window() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        let (mut tab_a, mut tab_b) = (UserSlot::default(), UserSlot::default());
        let Begin::New(t) = w.begin(&mut tab_a, &u, &m, std::iter::empty(), Instant::now()) else {
            panic!()
        };
        t.settle(&Frame::from("ack"), true);
        assert!(
            matches!(w.begin(&mut tab_b, &u, &m, std::iter::empty(), Instant::now()), Begin::Replay(f) if f.as_str() == "ack")
        );
        // Both slots now hold the user's window; later outcomes show in both.
        let m2 = MessageId::new("m2").unwrap();
        let Begin::New(t) = w.begin(&mut tab_b, &u, &m2, std::iter::empty(), Instant::now()) else {
            panic!()
        };
        t.settle(&Frame::from("ack2"), true);
        assert!(
            matches!(w.begin(&mut tab_a, &u, &m2, std::iter::empty(), Instant::now()), Begin::Replay(f) if f.as_str() == "ack2")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_whose_window_left_the_map_finds_the_new_one() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let u = UserId::new("u").unwrap();
        let mut held = UserSlot::default();
        // A retryable outcome leaves the window empty: it leaves the map.
        let Begin::New(t) = w.begin(
            &mut held,
            &u,
            &MessageId::new("e").unwrap(),
            std::iter::empty(),
            Instant::now(),
        ) else {
            panic!()
        };
        t.settle(&Frame::from("retry me"), false);
        assert_eq!(w.users(), 0);
        let m1 = MessageId::new("m1").unwrap();
        settle_new(&w, &u, &m1, &Frame::from("one"), true);
        assert!(
            matches!(w.begin(&mut held, &u, &m1, std::iter::empty(), Instant::now()), Begin::Replay(f) if f.as_str() == "one"),
            "the held slot must not keep using the window that left"
        );
        // The same after expiry: the sweep takes the emptied window out.
        tokio::time::advance(Duration::from_secs(121)).await;
        w.sweep();
        assert_eq!(w.users(), 0);
        let m2 = MessageId::new("m2").unwrap();
        settle_new(&w, &u, &m2, &Frame::from("two"), true);
        assert!(
            matches!(w.begin(&mut held, &u, &m2, std::iter::empty(), Instant::now()), Begin::Replay(f) if f.as_str() == "two")
        );
        assert_eq!(w.users(), 1);
    }

    #[tokio::test]
    async fn retryable_outcomes_are_forgotten() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        settle_new(&w, &u, &m, &Frame::from("timeout"), false);
        assert!(matches!(begin(&w, &u, &m), Begin::New(_)));
    }

    #[tokio::test]
    async fn a_retry_in_flight_waits_for_the_first_outcome() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        let Begin::New(t) = begin(&w, &u, &m) else {
            panic!()
        };
        let Begin::Wait(rx) = begin(&w, &u, &m) else {
            panic!()
        };
        t.settle(&Frame::from("resp"), true);
        assert_eq!(rx.await.unwrap().as_str(), "resp");
    }

    #[tokio::test]
    async fn abandoned_attempts_release_waiters_and_the_id() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        let Begin::New(t) = begin(&w, &u, &m) else {
            panic!()
        };
        let Begin::Wait(rx) = begin(&w, &u, &m) else {
            panic!()
        };
        drop(t);
        assert!(rx.await.is_err());
        assert!(matches!(begin(&w, &u, &m), Begin::New(_)));
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
            begin(&w, &u, &MessageId::new("m9").unwrap()),
            Begin::Replay(_)
        ));
        let Begin::New(t) = begin(&w, &u, &MessageId::new("m0").unwrap()) else {
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
        assert!(w.bytes() <= 4 * cost + cost / 2, "{}", w.bytes());
        // c made room from its own oldest; a's and b's outcomes are intact.
        assert!(matches!(
            begin(
                &w,
                &UserId::new("a").unwrap(),
                &MessageId::new("m1").unwrap()
            ),
            Begin::Replay(_)
        ));
        tokio::time::advance(Duration::from_secs(121)).await;
        w.sweep();
        assert_eq!(w.bytes(), 0, "expiry gives the bytes back");
    }

    #[tokio::test]
    async fn ids_with_the_same_hash_are_told_apart() {
        let w = colliding(1 << 20);
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
                matches!(begin(&w, &u, &MessageId::new(m).unwrap()), Begin::Replay(f) if f.as_str() == frame),
                "{m}"
            );
        }
        // Running requests with colliding hashes are told apart as well.
        let Begin::New(_a) = begin(&w, &u, &MessageId::new("r1").unwrap()) else {
            panic!()
        };
        assert!(matches!(
            begin(&w, &u, &MessageId::new("r2").unwrap()),
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
                let Begin::Replay(f) = begin(&w, &u, &recent) else {
                    panic!("id-{} is remembered", i - 5)
                };
                assert_eq!(f, Frame::from(frame_of(i - 5)));
                if i >= 100 {
                    let gone = MessageId::new(format!("id-{}", i - 100)).unwrap();
                    let Begin::New(t) = begin(&w, &u, &gone) else {
                        panic!("id-{} is forgotten", i - 100)
                    };
                    // Abandoned: it must not take a place in the window.
                    drop(t);
                }
            }
        }
        assert!(w.bytes() <= 20 * (ENTRY_OVERHEAD + 30));
        let remembered = w.0.users.get(&u).map(|w| w.lock().count());
        assert!(
            remembered.is_some_and(|n| (10..=20).contains(&n)),
            "{remembered:?} outcomes in {} bytes",
            w.bytes()
        );
    }

    #[tokio::test]
    async fn forgotten_ids_stay_forgotten_when_every_id_collides() {
        // Every id has the same hash: only the records tell a forgotten id
        // from a remembered one, and forgetting must remove the right slot.
        let w = colliding(8 * (ENTRY_OVERHEAD + 12));
        let u = UserId::new("u").unwrap();
        for i in 0..500 {
            let m = MessageId::new(format!("c{i:03}")).unwrap();
            settle_new(&w, &u, &m, &Frame::from(format!("r{i:03}")), true);
        }
        let kept = w.0.users.get(&u).map_or(0, |w| w.lock().count());
        assert!((6..=8).contains(&kept), "{kept} outcomes kept");
        for i in 0..500 {
            let m = MessageId::new(format!("c{i:03}")).unwrap();
            match begin(&w, &u, &m) {
                Begin::Replay(f) => {
                    assert!(i >= 500 - kept, "c{i:03} was forgotten");
                    assert_eq!(f, Frame::from(format!("r{i:03}")));
                }
                Begin::New(_) => assert!(i < 500 - kept, "c{i:03} is remembered"),
                Begin::Wait(_) => panic!("nothing is running"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn random_traffic_matches_a_plain_model_of_the_rules() {
        // Retries often: lookups mostly go through the index.
        traffic_matches_a_plain_model(600, 300, 0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn random_traffic_with_rare_retries_matches_a_plain_model() {
        // Retries seldom: the index is dropped between them, so lookups
        // walk the records, and each replay builds the index again.
        traffic_matches_a_plain_model(895, 5, 0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn random_traffic_with_reported_acks_matches_a_plain_model() {
        // Clients report most acks: records are released in the middle of
        // the ring as well as at its front, while retries and the budget
        // go on as before.
        traffic_matches_a_plain_model(450, 150, 300).await;
        traffic_matches_a_plain_model(600, 5, 300).await;
    }

    #[tokio::test]
    async fn a_reported_ack_is_forgotten_and_its_id_runs_again() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        settle_new(&w, &u, &m, &Frame::from("ack"), true);
        assert!(w.bytes() > 0);
        w.release(&mut UserSlot::default(), &u, ["m1"].into_iter());
        assert_eq!(w.bytes(), 0);
        assert!(matches!(begin(&w, &u, &m), Begin::New(_)));
    }

    #[tokio::test]
    async fn outcomes_are_found_with_and_without_the_id_filter() {
        // A window starts without its id filter, takes it past
        // FILTER_FROM outcomes, and drops it when it is emptied; every
        // outcome it holds is replayed all along, none it let go is.
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let u = UserId::new("u").unwrap();
        let mut slot = UserSlot::default();
        let replays = |w: &RetryWindow, m: &str| {
            let id = MessageId::new(m).unwrap();
            matches!(begin(w, &u, &id), Begin::Replay(f) if f.as_str() == m)
        };
        for round in 0..3 {
            let names: Vec<String> = (0..3 * FILTER_FROM)
                .map(|i| format!("r{round}-{i}"))
                .collect();
            for (i, m) in names.iter().enumerate() {
                settle_new(
                    &w,
                    &u,
                    &MessageId::new(m).unwrap(),
                    &Frame::from(m.clone()),
                    true,
                );
                assert!(
                    names[..=i].iter().all(|m| replays(&w, m)),
                    "round {round}, {i} held"
                );
                assert!(!replays(&w, &format!("r{round}-never")));
            }
            w.release(&mut slot, &u, names.iter().map(String::as_str));
            assert_eq!(w.bytes(), 0, "round {round}: all released");
            assert!(
                names.iter().all(|m| !replays(&w, m)),
                "round {round}: none replayed"
            );
        }
    }

    #[tokio::test]
    async fn a_release_in_the_middle_waits_for_the_records_before_it() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let u = UserId::new("u").unwrap();
        for m in ["a", "b", "c"] {
            settle_new(&w, &u, &MessageId::new(m).unwrap(), &Frame::from(m), true);
        }
        let one = w.bytes() / 3;
        let mut slot = UserSlot::default();
        w.release(&mut slot, &u, ["b"].into_iter());
        // `b` is no longer replayed, but its record sits behind `a`'s.
        assert_eq!(w.bytes(), 3 * one);
        let replays = |w: &RetryWindow, m: &str| {
            let id = MessageId::new(m).unwrap();
            matches!(begin(w, &u, &id), Begin::Replay(f) if f.as_str() == m)
        };
        assert!(replays(&w, "a") && replays(&w, "c"));
        assert!(!replays(&w, "b"));
        // Releasing `a` takes `b` with it.
        w.release(&mut slot, &u, ["a"].into_iter());
        assert_eq!(w.bytes(), one);
        assert!(replays(&w, "c") && !replays(&w, "a"));
    }

    #[tokio::test]
    async fn releasing_what_is_not_remembered_changes_nothing() {
        let w = RetryWindow::new(Duration::from_secs(120), 1 << 20, 1 << 30);
        let (u, m) = ids("u", "m1");
        // A user with no window gets none.
        w.release(&mut UserSlot::default(), &u, ["m1"].into_iter());
        assert_eq!(w.users(), 0);
        // A request still running is not released: its outcome is kept.
        let Begin::New(t) = begin(&w, &u, &m) else {
            panic!()
        };
        w.release(
            &mut UserSlot::default(),
            &u,
            ["m1", "never-seen"].into_iter(),
        );
        t.settle(&Frame::from("ack"), true);
        assert!(matches!(begin(&w, &u, &m), Begin::Replay(f) if f.as_str() == "ack"));
    }

    #[tokio::test]
    async fn ids_with_the_same_hash_are_released_one_by_one() {
        let w = colliding(1 << 20);
        let u = UserId::new("u").unwrap();
        for m in ["x", "y", "z"] {
            settle_new(&w, &u, &MessageId::new(m).unwrap(), &Frame::from(m), true);
        }
        w.release(&mut UserSlot::default(), &u, ["y"].into_iter());
        for (m, kept) in [("x", true), ("y", false), ("z", true)] {
            let id = MessageId::new(m).unwrap();
            let replayed = matches!(begin(&w, &u, &id), Begin::Replay(f) if f.as_str() == m);
            assert_eq!(replayed, kept, "{m}");
        }
    }

    #[tokio::test]
    async fn a_client_reporting_every_ack_keeps_one_record_in_the_first_lines() {
        let w = RetryWindow::new(Duration::from_secs(120), 64 * 1024, 1 << 30);
        let u = UserId::new("u").unwrap();
        let mut slot = UserSlot::default();
        let frame = Frame::from("x".repeat(80));
        let mut previous: Option<String> = None;
        for i in 0..5_000 {
            if let Some(p) = &previous {
                w.release(&mut slot, &u, [p.as_str()].into_iter());
            }
            let id = format!("c1-{i}");
            let Begin::New(t) = w.begin(
                &mut slot,
                &u,
                &MessageId::new(&id).unwrap(),
                std::iter::empty(),
                Instant::now(),
            ) else {
                panic!("{id} is new")
            };
            t.settle(&frame, true);
            previous = Some(id);
        }
        assert_eq!(w.bytes(), cost("c1-4999".len(), frame.len()));
        let shared = w.0.users.get(&u).map(|s| s.clone()).unwrap();
        let window = shared.lock();
        assert_eq!(window.count(), 1);
        // The ring starts over whenever it empties: it never grew.
        assert!(
            window.buffer.capacity() < 1024,
            "{}",
            window.buffer.capacity()
        );
    }

    /// Random traffic, of which `new` in a thousand steps are new requests
    /// and `retries` in a thousand retries, `releases` in a thousand reports
    /// of acks received; the rest let time pass.
    async fn traffic_matches_a_plain_model(new: u64, retries: u64, releases: u64) {
        // The rules, kept the slow and obvious way: outcomes in a list,
        // oldest first, dropped from the front by age and by budget, each
        // costing its id, its frame as sent (WebSocket header included) and
        // the fixed overhead. A released outcome is never replayed, and
        // leaves (with its cost) once everything before it has.
        struct Kept {
            id: String,
            frame: String,
            at: Instant,
            released: bool,
        }
        struct Model {
            kept: std::collections::VecDeque<Kept>,
            bytes: usize,
        }
        fn cost(id: &str, frame: &str) -> usize {
            id.len() + Frame::from(frame.to_owned()).len() + ENTRY_OVERHEAD
        }
        impl Model {
            fn pop_front(&mut self) {
                if let Some(k) = self.kept.pop_front() {
                    self.bytes -= cost(&k.id, &k.frame);
                }
                while self.kept.front().is_some_and(|k| k.released) {
                    let k = self.kept.pop_front().unwrap();
                    self.bytes -= cost(&k.id, &k.frame);
                }
            }
            fn expire(&mut self, now: Instant, window: Duration) {
                while self
                    .kept
                    .front()
                    .is_some_and(|k| now.duration_since(k.at) >= window)
                {
                    self.pop_front();
                }
            }
            fn find(&self, id: &str) -> Option<&str> {
                self.kept
                    .iter()
                    .find(|k| k.id == id && !k.released)
                    .map(|k| k.frame.as_str())
            }
            fn release(&mut self, id: &str) {
                if let Some(k) = self.kept.iter_mut().find(|k| k.id == id && !k.released) {
                    k.released = true;
                }
                if self.kept.front().is_some_and(|k| k.released) {
                    self.pop_front();
                }
            }
        }

        let (window, budget) = (Duration::from_secs(10), 3_000);
        let w = RetryWindow::new(window, budget, 1 << 30);
        let u = UserId::new("u").unwrap();
        let mut slot = UserSlot::default();
        let mut model = Model {
            kept: Default::default(),
            bytes: 0,
        };
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut below = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut next_id = 0u64;
        let mut reported: Vec<String> = Vec::new();
        for step in 0..30_000 {
            let kind = below(1000);
            match kind {
                // A new request, remembered unless its outcome is retryable.
                _ if kind < new => {
                    let id = format!("id-{next_id}-{}", "x".repeat(below(40) as usize));
                    next_id += 1;
                    let frame = format!("{step}:{}", "f".repeat(below(300) as usize));
                    let remember = below(10) != 0;
                    let m = MessageId::new(id.clone()).unwrap();
                    let now = Instant::now();
                    model.expire(now, window);
                    // Acks reported on this request, forgotten as it begins.
                    let released = std::mem::take(&mut reported);
                    for id in &released {
                        model.release(id);
                    }
                    let Begin::New(t) = w.begin(
                        &mut slot,
                        &u,
                        &m,
                        released.iter().map(String::as_str),
                        Instant::now(),
                    ) else {
                        panic!("{id} is new")
                    };
                    t.settle(&Frame::from(frame.clone()), remember);
                    if remember {
                        let c = cost(&id, &frame);
                        while !model.kept.is_empty() && model.bytes + c > budget {
                            model.pop_front();
                        }
                        assert!(c <= budget);
                        model.bytes += c;
                        model.kept.push_back(Kept {
                            id,
                            frame,
                            at: now,
                            released: false,
                        });
                    }
                }
                // A retry of some earlier request (or of one never seen).
                _ if kind < new + retries => {
                    let n = below(next_id + 5);
                    let kept: Vec<String> = model.kept.iter().map(|k| k.id.clone()).collect();
                    let id = match kept.len() {
                        0 => format!("id-{n}-"),
                        k if n % 2 == 0 => kept[n as usize % k].clone(),
                        _ => format!("id-{n}-"),
                    };
                    model.expire(Instant::now(), window);
                    let m = MessageId::new(id.clone()).unwrap();
                    match (
                        w.begin(&mut slot, &u, &m, std::iter::empty(), Instant::now()),
                        model.find(&id),
                    ) {
                        (Begin::Replay(f), Some(expected)) => {
                            assert_eq!(f, Frame::from(expected.to_owned()), "step {step}: {id}")
                        }
                        // Abandoned at once: it must leave no trace.
                        (Begin::New(t), None) => drop(t),
                        (Begin::Replay(_), None) => {
                            panic!("step {step}: {id} replayed, but forgotten")
                        }
                        (Begin::New(_), Some(_)) => panic!("step {step}: {id} forgotten too early"),
                        (Begin::Wait(_), _) => panic!("step {step}: nothing is running"),
                    }
                }
                // The client reports acks received: mostly the newest
                // outcomes, now and then an older one, one it never had or
                // one already released.
                _ if kind < new + retries + releases => {
                    let ids: Vec<String> = (0..1 + below(3))
                        .map(|_| {
                            let n = below(12) as usize;
                            match model.kept.len().checked_sub(1 + n) {
                                Some(at) if n < 10 => model.kept[at].id.clone(),
                                _ => format!("id-{}-", below(next_id + 5)),
                            }
                        })
                        .collect();
                    // On a request of another kind now, or on the next new one.
                    if below(2) == 0 {
                        w.release(&mut slot, &u, ids.iter().map(String::as_str));
                        for id in &ids {
                            model.release(id);
                        }
                    } else {
                        reported.extend(ids);
                    }
                }
                // Time passes; now and then the periodic sweep runs.
                _ => {
                    tokio::time::advance(Duration::from_millis(below(3_000))).await;
                    if below(4) == 0 {
                        w.sweep();
                        model.expire(Instant::now(), window);
                    }
                }
            }
            assert_eq!(w.bytes(), model.bytes, "step {step}");
        }
    }

    #[tokio::test]
    async fn an_index_serves_replays_while_they_last() {
        let w = RetryWindow::new(
            Duration::from_secs(120),
            100 * (ENTRY_OVERHEAD + 20),
            1 << 30,
        );
        let u = UserId::new("u").unwrap();
        let id = |i: usize| MessageId::new(format!("m{i:04}")).unwrap();
        let has_index = || w.0.users.get(&u).unwrap().lock().index.is_some();
        let replays = |i: usize| matches!(begin(&w, &u, &id(i)), Begin::Replay(f) if f == Frame::from(format!("r{i:04}")));
        for i in 0..300 {
            settle_new(&w, &u, &id(i), &Frame::from(format!("r{i:04}")), true);
        }
        let kept = w.0.users.get(&u).unwrap().lock().count();
        assert!(!has_index(), "no replay yet: no index");
        assert!(matches!(begin(&w, &u, &id(0)), Begin::New(_)));
        assert!(!has_index(), "a lookup that finds nothing builds no index");
        assert!(replays(299));
        assert!(has_index(), "a replay builds the index");
        // While replays go on, it stays, and outcomes go in and out of it.
        for i in 300..300 + 2 * kept {
            settle_new(&w, &u, &id(i), &Frame::from(format!("r{i:04}")), true);
            assert!(has_index(), "dropped while replays went on, at m{i:04}");
            assert!(replays(i) && replays(i - kept / 2), "m{i:04}");
        }
        assert!(
            matches!(begin(&w, &u, &id(299)), Begin::New(_)),
            "m0299 was pushed out"
        );
        let indexed =
            w.0.users
                .get(&u)
                .unwrap()
                .lock()
                .index
                .as_ref()
                .map(|i| i.len());
        assert_eq!(indexed, Some(kept), "forgotten outcomes leave the index");
        // A ring's worth of outcomes with no replay: the index goes.
        let next = 300 + 2 * kept;
        for i in next..next + kept + 1 {
            settle_new(&w, &u, &id(i), &Frame::from(format!("r{i:04}")), true);
        }
        assert!(
            !has_index(),
            "no replay for a whole ring: the index is dropped"
        );
        assert!(replays(next + kept) && replays(next + 1));
        assert!(has_index());
    }

    #[tokio::test]
    async fn a_full_window_holds_little_more_memory_than_its_budget() {
        // What the budget promises an operator: the memory a user's window
        // holds, spare capacity included, stays close to it while outcomes
        // keep pushing the oldest out (a doubling buffer and a separate
        // record list held 1.7x, a flat buffer cut at its front 1.35x).
        let budget = 64 * 1024;
        let w = RetryWindow::new(Duration::from_secs(120), budget, 1 << 30);
        let u = UserId::new("u").unwrap();
        let frame = Frame::from(r#"{"kind":"ack","id":"req-000000","result":{"ok":1}}"#);
        let mut most = 0;
        for i in 0..20_000 {
            let m = MessageId::new(format!("req-{i:06}")).unwrap();
            settle_new(&w, &u, &m, &frame, true);
            let shared = w.0.users.get(&u).map(|w| w.clone()).unwrap();
            let held = {
                let window = shared.lock();
                window.buffer.capacity()
                    + window.ids.bytes()
                    + window.entries.capacity() * std::mem::size_of::<Entry>()
            };
            most = most.max(held);
        }
        assert!(
            most * 10 <= budget * 11,
            "a window with a budget of {budget} bytes held up to {most}"
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
        let shared = w.0.users.get(&u).expect("`later` is still remembered");
        let users = shared.lock();
        assert_eq!(users.count(), 1);
        assert!(
            users.buffer.capacity() <= 4096,
            "the buffer keeps {} bytes of capacity for one outcome",
            users.buffer.capacity()
        );
    }
}
