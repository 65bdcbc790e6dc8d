//! Token buckets for per-connection request rates and invalid-frame budgets.

use tokio::time::Instant;

/// A token bucket holding at most `capacity` tokens, refilled at
/// `capacity / period` per second.
pub(crate) struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `None` when `capacity` is 0, meaning unlimited.
    pub(crate) fn new(capacity: u32, period_secs: f64) -> Option<Self> {
        (capacity > 0).then(|| Self {
            capacity: f64::from(capacity),
            per_sec: f64::from(capacity) / period_secs,
            tokens: f64::from(capacity),
            last: Instant::now(),
        })
    }

    /// Takes one token; false if none is left.
    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Takes from an optional bucket: no bucket means no limit.
pub(crate) fn allow(bucket: &mut Option<TokenBucket>) -> bool {
    bucket.as_mut().is_none_or(TokenBucket::take)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn refills_over_time() {
        let mut b = TokenBucket::new(2, 1.0).unwrap();
        assert!(b.take() && b.take());
        assert!(!b.take());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.take());
        assert!(!b.take());
    }

    #[test]
    fn zero_means_unlimited() {
        let mut none = TokenBucket::new(0, 1.0);
        assert!((0..10_000).all(|_| allow(&mut none)));
    }
}
