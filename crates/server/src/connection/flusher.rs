//! Write-behind for large fan-outs.
//!
//! A publish to thousands of members only queues the frame in each member's
//! outbox and lists the member here; one flusher task per thread then writes
//! each listed outbox out — everything it holds, in one vectored write —
//! a batch at a time, yielding between batches. The publisher's own task and
//! the flusher take turns, so under a burst the publisher keeps reading and
//! queueing while the flusher falls behind just enough for several frames to
//! share each system call (here and at the receiver). No member task is woken
//! unless its socket is full.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::ClientHandle;

/// Outboxes written per turn before yielding to other tasks.
const BATCH: usize = 64;

struct Flusher {
    dirty: Mutex<VecDeque<Arc<ClientHandle>>>,
    wake: Notify,
    /// False once the task is gone (its runtime shut down); a new one is then
    /// started on the next use of this thread.
    alive: AtomicBool,
}

thread_local! {
    static FLUSHER: RefCell<Option<Arc<Flusher>>> = const { RefCell::new(None) };
}

/// Lists `client`, whose outbox just went from empty to holding frames, for
/// the current thread's flusher.
pub(crate) fn schedule(client: &Arc<ClientHandle>) {
    let Some(flusher) = current() else {
        // Outside a runtime there is no task to hand the write to.
        client.outbox().write_queued();
        return;
    };
    let first = {
        let mut dirty = flusher.dirty.lock();
        dirty.push_back(client.clone());
        dirty.len() == 1
    };
    if first {
        flusher.wake.notify_one();
    }
}

fn current() -> Option<Arc<Flusher>> {
    FLUSHER.with(|slot| {
        let mut slot = slot.borrow_mut();
        if let Some(flusher) = slot.as_ref()
            && flusher.alive.load(Ordering::Acquire)
        {
            return Some(flusher.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let flusher = Arc::new(Flusher {
            dirty: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            alive: AtomicBool::new(true),
        });
        runtime.spawn(run(flusher.clone()));
        *slot = Some(flusher.clone());
        Some(flusher)
    })
}

struct Alive(Arc<Flusher>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        // Whatever is still listed is written now rather than stranded.
        let left: Vec<_> = self.0.dirty.lock().drain(..).collect();
        for client in left {
            client.outbox().write_queued();
        }
    }
}

async fn run(flusher: Arc<Flusher>) {
    let alive = Alive(flusher);
    let flusher = &alive.0;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        flusher.wake.notified().await;
        loop {
            {
                let mut dirty = flusher.dirty.lock();
                let n = dirty.len().min(BATCH);
                batch.extend(dirty.drain(..n));
            }
            if batch.is_empty() {
                break;
            }
            for client in batch.drain(..) {
                client.outbox().write_queued();
            }
            tokio::task::yield_now().await;
        }
    }
}
