//! The PubSub wire protocol, version 1 (docs/protocol.md is the specification).
//!
//! - [`ids`]: user, client and message ids.
//! - [`action`]: the application payload (`{"type": …}`), validated but never re-serialised.
//! - [`client_frame`]: frames from clients — decoded by the server, encoded by clients.
//! - [`server_frame`]: frames from the server — encoded by the server, decoded by clients.
//! - [`received`]: the acked ids a request reports, so the server can forget their outcomes.
//! - [`codes`]: numbered error codes and WebSocket close codes with their advice.
//! - [`presence`]: the presence model and system event types.
//! - [`limits`]: default limits.
//! - `scan` (private): byte-level JSON scanning behind the decoders' fast
//!   paths, each of which steps aside for serde on anything unusual.
//! - `validate` (private): strict validation of one JSON value (an action
//!   above all) that finds the action's `type` in the same walk.

pub mod action;
pub mod client_frame;
pub mod codes;
pub mod ids;
pub mod limits;
pub mod presence;
pub mod received;
mod scan;
pub mod server_frame;
#[cfg(test)]
mod test_rng;
mod validate;

pub use action::{Action, ActionError, ActionRef, RESERVED_PREFIX};
pub use client_frame::{
    ClientFrame, DecodeLimits, FrameError, OutgoingFrame, Request, RequestKind, decode_client_frame,
};
pub use codes::{CloseAdvice, ErrorCode, close, close_advice};
pub use ids::{ClientId, IdError, MessageId, Topic, TopicError, UserId};
pub use presence::{Presence, UserStatus, events};
pub use received::{MAX_RECEIVED, Received};
pub use server_frame::{
    Delivery, ErrorFrame, EventFrame, Limits, PROTOCOL_VERSION, Sender, ServerFrame, Via, Welcome,
    decode_server_frame,
};

/// The WebSocket subprotocol for version 1 with JSON text frames.
pub const SUBPROTOCOL_JSON_V1: &str = "pubsub.v1.json";

/// Default path of the WebSocket endpoint.
pub const DEFAULT_PATH: &str = "/ws";
