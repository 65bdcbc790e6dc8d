//! Token buckets for per-connection request rates and invalid-frame budgets.

use tokio::time::Instant;

/// A rate: at most `capacity` tokens, refilled at `capacity / period` per
/// second. The config's, the same for every connection, so a connection's
/// bucket keeps only what it has left.
#[derive(Clone, Copy)]
pub(crate) struct Rate {
    capacity: u32,
    period_secs: f64,
}

impl Rate {
    /// A `capacity` of 0 means unlimited.
    pub(crate) fn new(capacity: u32, period_secs: f64) -> Self {
        Self {
            capacity,
            period_secs,
        }
    }
}

/// What one connection has left of a [`Rate`].
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket that starts full.
    pub(crate) fn full(rate: Rate) -> Self {
        Self {
            tokens: f64::from(rate.capacity),
            last: Instant::now(),
        }
    }

    /// Takes one token; false if none is left. An unlimited rate always
    /// gives one, and leaves the bucket unread.
    pub(crate) fn take(&mut self, rate: Rate) -> bool {
        if rate.capacity == 0 {
            return true;
        }
        let capacity = f64::from(rate.capacity);
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * capacity / rate.period_secs).min(capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn refills_over_time() {
        let rate = Rate::new(2, 1.0);
        let mut b = TokenBucket::full(rate);
        assert!(b.take(rate) && b.take(rate));
        assert!(!b.take(rate));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.take(rate));
        assert!(!b.take(rate));
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_spreads_the_refill() {
        let rate = Rate::new(60, 60.0);
        let mut b = TokenBucket::full(rate);
        assert!((0..60).all(|_| b.take(rate)));
        assert!(!b.take(rate));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(b.take(rate));
        assert!(!b.take(rate));
    }

    #[test]
    fn zero_means_unlimited() {
        let rate = Rate::new(0, 1.0);
        let mut b = TokenBucket::full(rate);
        assert!((0..10_000).all(|_| b.take(rate)));
    }
}
