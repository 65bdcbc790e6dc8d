//! PubSub server library: embed a PubSub node in a Rust service, or run it
//! with the `pubsub` binary.
//!
//! Where things live:
//! - [`server`]: `Server::builder()` … `.bind()` — building, running, graceful shutdown.
//! - `http/`: the HTTP surface — the accept loop, the WebSocket upgrade (auth,
//!   `verify_client`), `GET /stats`, `GET /health`, application routes.
//! - `connection/`: the connection loop (one task per socket), its bounded
//!   outbound queue and its rate budgets.
//! - `hub/`: state shared by all connections and the processing of requests
//!   into deliveries and answers, including the retry window.
//! - [`engine`]: routing tables behind the [`Engine`] trait; [`MemoryEngine`]
//!   for a single node. Cluster engines implement the same trait.
//! - [`presence`]: the per-user presence state machine, its events, the
//!   policy and application hooks.
//! - [`topics`]: the topic policy (memberships live in the engine).
//! - [`auth`]: handshake, authenticators ([`DevAuth`]) and the `verify_client` hook.
//! - [`handler`] and [`context`]: the `sendToServer` handler and what it can do.
//! - [`handle`]: [`ServerHandle`], server-side sends, read views, stats, shutdown.
//! - [`config`]: limits and timeouts. [`stats`]: counters.

pub mod auth;
pub mod config;
mod connection;
pub mod context;
pub mod engine;
pub mod handle;
pub mod handler;
mod http;
mod hub;
pub mod presence;
pub mod server;
pub mod stats;
pub mod topics;

pub use auth::{
    AuthError, Authenticator, DEV_AUTH_WARNING, DevAuth, Handshake, Identity, Rejection,
    VerifyClient, verify_fn,
};
pub use config::{ConfigError, ServerConfig};
pub use connection::{ClientHandle, ClientInfo, Frame, Kick};
pub use context::HandlerContext;
pub use engine::{
    Counts, Engine, EngineError, EngineSettings, JoinOutcome, MemoryEngine, UserDelivery, UserInfo,
    WatchOutcome,
};
pub use handle::{SendError, ServerHandle};
pub use handler::{EchoHandler, Handler, HandlerError, HandlerResult, Reply, handler_fn, reply};
pub use presence::{PresenceHooks, PresencePolicy, SeeEveryone, SeeOnlySelf, StatusChange};
pub use pubsub_protocol as protocol;
pub use pubsub_protocol::{Action, ClientId, MessageId, Presence, Topic, UserId, UserStatus};
pub use server::{BuildError, RunningServer, Server, ServerBuilder, ShutdownReport, StartError};
pub use stats::StatsSnapshot;
pub use topics::{OpenTopics, TopicPatterns, TopicPolicy};

/// Re-exported so applications can mount routes without depending on axum directly.
pub use axum;
