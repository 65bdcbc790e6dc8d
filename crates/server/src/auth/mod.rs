//! Who is connecting: the handshake as the server saw it, the authenticator
//! that turns it into an identity, and the `verify_client` hook that may still
//! refuse it.
//!
//! Authentication is a trait so production modes (tokens) plug in without
//! touching the connection loop; [`DevAuth`] is the original package's
//! "trust the `userId` in the query string", which must be chosen explicitly.

mod dev;
mod verify;

use std::collections::HashMap;
use std::net::SocketAddr;

use async_trait::async_trait;
use http::HeaderMap;
use pubsub_protocol::{UserId, close};

pub use dev::{DEV_AUTH_WARNING, DevAuth};
pub use verify::{Rejection, VerifyClient, verify_fn};

/// The upgrade request of a connecting client.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// `userId` from the query string, as the original package passed it.
    pub claimed_user: Option<String>,
    /// `token` from the query string, or the bearer token of `Authorization`.
    pub token: Option<String>,
    pub origin: Option<String>,
    pub remote_addr: SocketAddr,
    pub headers: HeaderMap,
    /// All query parameters.
    pub query: HashMap<String, String>,
}

/// The authenticated identity of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
}

/// Why authentication failed. Each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The handshake lacks what this mode needs (close 4400).
    #[error("{0}")]
    BadRequest(String),
    /// The credentials were refused (close 4401).
    #[error("{0}")]
    Unauthorized(String),
}

impl AuthError {
    pub fn close_code(&self) -> u16 {
        match self {
            AuthError::BadRequest(_) => close::BAD_REQUEST,
            AuthError::Unauthorized(_) => close::UNAUTHORIZED,
        }
    }
}

/// Turns a handshake into an identity.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, handshake: &Handshake) -> Result<Identity, AuthError>;

    /// A short name for logs and `/stats` (for example `"dev"`).
    fn mode(&self) -> &'static str;
}
