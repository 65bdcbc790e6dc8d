//! Client settings and the reconnect policy.

use std::time::Duration;

/// How to reach and authenticate to a PubSub server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port` or `wss://…`; `/ws` is appended when the URL has no path.
    pub endpoint: String,
    /// Sent as `?userId=` (servers in dev auth mode trust it).
    pub user_id: Option<String>,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    /// A send that is not settled within this time fails with `request_timeout`.
    pub request_timeout: Duration,
    /// Limit for one connection attempt, TCP connect to `welcome`.
    pub connect_timeout: Duration,
    pub reconnect: ReconnectPolicy,
    /// Largest frame accepted from the server.
    pub max_message_bytes: usize,
    /// Certificates (DER) trusted for `wss://` besides the built-in Mozilla
    /// roots: a private CA, or a server's self-signed certificate.
    pub tls_roots: Vec<Vec<u8>>,
}

impl ClientConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            user_id: None,
            token: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect: ReconnectPolicy::default(),
            max_message_bytes: 16 * 1024 * 1024,
            tls_roots: Vec::new(),
        }
    }

    /// Trusts this certificate (DER) for `wss://` in addition to the built-in
    /// roots.
    #[must_use]
    pub fn tls_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.tls_roots.push(der.into());
        self
    }

    #[must_use]
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    #[must_use]
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }
}

/// Exponential backoff with full jitter: attempt `n` waits a uniformly random
/// time between 0 and `min(max_delay, initial_delay × 2ⁿ)`, so a fleet of
/// clients dropped together does not come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    pub enabled: bool,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl ReconnectPolicy {
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The upper bound of the wait before attempt `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }

    /// A random wait in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let p = ReconnectPolicy {
            enabled: true,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(4), Duration::from_secs(1));
        assert_eq!(p.ceiling(400), Duration::from_secs(1));
    }

    #[test]
    fn delay_is_jittered_within_the_ceiling() {
        let p = ReconnectPolicy::default();
        let delays: Vec<_> = (0..200).map(|_| p.delay(5)).collect();
        assert!(delays.iter().all(|d| *d <= p.ceiling(5)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 50, "full jitter spreads the waits");
    }
}
