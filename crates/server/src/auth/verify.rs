//! The `verify_client` hook: the embedding application's last word on a
//! connection, after authentication (the original's `verifyClient`).

use std::future::Future;

use async_trait::async_trait;
use pubsub_protocol::close;

use super::{Handshake, Identity};

/// A refusal, sent to the client as the close reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Close code; 4403 unless the hook says otherwise.
    pub code: u16,
    pub reason: String,
}

impl Rejection {
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            code: close::FORBIDDEN,
            reason: reason.into(),
        }
    }
}

#[async_trait]
pub trait VerifyClient: Send + Sync + 'static {
    async fn verify(&self, handshake: &Handshake, identity: &Identity) -> Result<(), Rejection>;
}

struct VerifyFn<F>(F);

#[async_trait]
impl<F, Fut> VerifyClient for VerifyFn<F>
where
    F: Fn(Handshake, Identity) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Rejection>> + Send + 'static,
{
    async fn verify(&self, handshake: &Handshake, identity: &Identity) -> Result<(), Rejection> {
        (self.0)(handshake.clone(), identity.clone()).await
    }
}

/// Wraps an async closure as a [`VerifyClient`].
pub fn verify_fn<F, Fut>(f: F) -> impl VerifyClient
where
    F: Fn(Handshake, Identity) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Rejection>> + Send + 'static,
{
    VerifyFn(f)
}
