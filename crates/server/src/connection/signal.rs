//! The outbox's "something to do" signal to its connection task: a flag
//! and the task's waker.
//!
//! Only the connection's own task waits on it, so it needs neither
//! `Notify`'s list of waiters nor its per-waiter state: the session loop
//! checks it on every turn (twice per request at one request in flight),
//! and there a `Notified` cost about 80 instructions a poll against a load
//! and a waker registration here. Raises while the flag is up coalesce,
//! as `Notify`'s stored permit does.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Raises the flag and wakes the waiting task, if any.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready (lowering the flag) once the flag is up; otherwise registers
    /// the task to be woken when it goes up.
    pub(crate) fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A raise between the check and the registration woke no one.
        if self.take() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once the flag is up, lowering it.
    pub(crate) async fn raised(&self) {
        poll_fn(|cx| self.poll_raised(cx)).await;
    }

    /// Lowers the flag if it is up, without registering the task: for a
    /// poll that may end ready on another source, and so need no wake-up.
    pub(crate) fn take(&self) -> bool {
        // A load first: the flag is down on almost every check, and a
        // swap would write the line every time.
        self.raised.load(Ordering::Relaxed) && self.raised.swap(false, Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_raise_before_the_wait_is_kept_and_raises_coalesce() {
        let signal = Signal::default();
        signal.raise();
        signal.raise();
        tokio::time::timeout(Duration::from_secs(1), signal.raised())
            .await
            .expect("the raise before the wait is seen");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            signal.poll_raised(&mut cx).is_pending(),
            "two raises before one wait are one"
        );
    }

    #[tokio::test]
    async fn a_raise_from_another_task_wakes_the_waiting_one() {
        let signal = Arc::new(Signal::default());
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.raised().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "nothing raised yet");
        signal.raise();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the raise wakes the waiting task")
            .expect("the task ends");
    }
}
