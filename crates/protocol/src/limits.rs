//! Default limits. The server's configuration can change each of them; the
//! values in force are announced to every client in `welcome`.

/// Largest accepted message, after reassembly of fragments.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most distinct users in one `sendToUser`.
pub const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// Requests per second per connection (token bucket, burst of the same size).
pub const DEFAULT_MAX_REQUESTS_PER_SEC: u32 = 1000;
/// Server heartbeat interval.
pub const DEFAULT_HEARTBEAT_MS: u64 = 25_000;
/// Extra silence tolerated after a missed heartbeat before closing.
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: u64 = 10_000;
/// Most distinct users in one `presence`, `watch` or `unwatch`.
pub const DEFAULT_MAX_USERS_PER_REQUEST: usize = 1000;
/// Most users one connection may watch.
pub const DEFAULT_MAX_WATCHED_USERS: usize = 1000;
/// Most topics one connection may join.
pub const DEFAULT_MAX_TOPICS: usize = 100;
/// Time a user keeps their status after their last client disconnects.
pub const DEFAULT_PRESENCE_GRACE_MS: u64 = 5_000;
