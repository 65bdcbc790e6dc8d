//! Rust client for PubSub.
//!
//! - [`Client`] (client.rs): `broadcast`, `send_to_user`, `send_to_server`,
//!   `subscribe`, `status`; every send settles exactly once.
//! - driver.rs: the background task owning the socket — heartbeat answers,
//!   a watchdog on server silence, reconnect with backoff.
//! - [`config`]: endpoint, credentials, timeouts, [`ReconnectPolicy`].
//! - presence.rs: activity, presence queries, watches (re-established after reconnects).
//! - topics.rs: join, leave, publish (joins re-established after reconnects).
//! - [`subscriptions`]: callbacks by action type.
//! - [`error`]: [`SendError`] (code, retryable, the request to retry) and [`ConnectError`].
//! - tls.rs: `wss://` with rustls (feature `tls`, on by default).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pubsub_client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::new("ws://127.0.0.1:4001").user("alice")).await?;
//! client.subscribe("CHAT", |m| println!("{}", m.action));
//! let ack = client.send_to_user(&serde_json::json!({"type": "CHAT", "text": "hi"}), ["bob"]).await?;
//! println!("bob online: {:?}", ack.get("bob"));
//! # Ok(()) }
//! ```

mod client;
pub mod config;
mod driver;
pub mod error;
mod presence;
mod request;
pub mod status;
pub mod subscriptions;
#[cfg(feature = "tls")]
mod tls;
mod topics;

pub use client::{BroadcastAck, Client, IntoRecipients, RecipientResult, SendToUserAck};
pub use config::{ClientConfig, ReconnectPolicy};
pub use driver::STATUS_CHANGE;
pub use error::{ConnectError, SendError};
pub use pubsub_protocol as protocol;
pub use pubsub_protocol::{
    ClientId, ErrorCode, MessageId, Presence, RequestKind, Topic, UserId, UserStatus,
};
pub use request::PreparedRequest;
pub use status::Status;
pub use subscriptions::{ANY_TYPE, Incoming, Subscription};
