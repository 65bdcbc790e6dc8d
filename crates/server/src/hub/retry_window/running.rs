//! The requests of one user whose first attempts are still running, by id:
//! a retry that arrives meanwhile waits for the first attempt's outcome
//! instead of running again.
//!
//! A client waits for a request's answer before it sends most of the next
//! ones, so a user usually has one request running, or none. That one is
//! kept in the user's window itself, in lines the request touches anyway;
//! a table (an allocation of its own, a control line and a bucket line to
//! insert into and remove from, both cold when many users take turns) holds
//! only the others.

use hashbrown::HashTable;
use pubsub_protocol::MessageId;
use tokio::sync::oneshot;

use crate::connection::Frame;

/// A request whose first attempt is still running.
pub(super) struct Running {
    pub(super) hash: u64,
    pub(super) id: MessageId,
    /// Retries waiting for the first attempt's outcome.
    pub(super) waiters: Vec<oneshot::Sender<Frame>>,
}

/// `repr(C)`: the inline request first, beside the window's other fields
/// that every request reads; the table after it, read only when there are
/// others.
#[derive(Default)]
#[repr(C)]
pub(super) struct RunningRequests {
    first: Option<Running>,
    /// Boxed: most users never have a second request running, and the
    /// window's lines that every request reads should not hold its table.
    others: Option<Box<HashTable<Running>>>,
}

impl RunningRequests {
    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none() && self.others.as_ref().is_none_or(|others| others.is_empty())
    }

    /// Adds a request the caller found not running.
    pub(super) fn insert(&mut self, running: Running) {
        if self.first.is_none() {
            self.first = Some(running);
        } else {
            self.others.get_or_insert_with(Box::default).insert_unique(
                running.hash,
                running,
                |r| r.hash,
            );
        }
    }

    pub(super) fn find_mut(&mut self, hash: u64, id: &MessageId) -> Option<&mut Running> {
        match &mut self.first {
            Some(r) if r.hash == hash && r.id == *id => Some(r),
            _ => self.others.as_mut()?.find_mut(hash, |r| r.id == *id),
        }
    }

    pub(super) fn remove(&mut self, hash: u64, id: &MessageId) -> Option<Running> {
        if self
            .first
            .as_ref()
            .is_some_and(|r| r.hash == hash && r.id == *id)
        {
            return self.first.take();
        }
        self.others
            .as_mut()?
            .find_entry(hash, |r| r.id == *id)
            .ok()
            .map(|entry| entry.remove().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(hash: u64, id: &str) -> Running {
        Running {
            hash,
            id: MessageId::new(id).unwrap(),
            waiters: Vec::new(),
        }
    }

    fn id(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    #[test]
    fn requests_are_found_and_removed_by_id_wherever_they_are_kept() {
        let mut r = RunningRequests::default();
        assert!(r.is_empty());
        // Equal hashes: ids are told apart by their bytes, inline or not.
        for name in ["a", "b", "c"] {
            r.insert(running(7, name));
        }
        assert!(r.find_mut(7, &id("b")).is_some());
        assert!(r.find_mut(7, &id("d")).is_none());
        assert!(r.find_mut(8, &id("a")).is_none(), "the hash is checked too");
        // The inline one goes first; the next insert takes its place.
        assert_eq!(r.remove(7, &id("a")).map(|r| r.id), Some(id("a")));
        assert!(r.remove(7, &id("a")).is_none());
        r.insert(running(9, "d"));
        for name in ["b", "c"] {
            assert_eq!(r.remove(7, &id(name)).map(|r| r.id), Some(id(name)));
        }
        assert!(!r.is_empty());
        assert_eq!(r.remove(9, &id("d")).map(|r| r.id), Some(id("d")));
        assert!(r.is_empty());
    }

    #[test]
    fn waiters_join_the_request_they_wait_for() {
        let mut r = RunningRequests::default();
        r.insert(running(1, "x"));
        r.insert(running(2, "y"));
        for (hash, name) in [(1, "x"), (2, "y"), (2, "y")] {
            let (tx, _rx) = oneshot::channel();
            r.find_mut(hash, &id(name)).unwrap().waiters.push(tx);
        }
        assert_eq!(r.remove(1, &id("x")).unwrap().waiters.len(), 1);
        assert_eq!(r.remove(2, &id("y")).unwrap().waiters.len(), 2);
    }
}
