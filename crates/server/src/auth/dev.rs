//! Dev mode: the user id is whatever the client claims in `?userId=`.

use async_trait::async_trait;
use pubsub_protocol::UserId;

use super::{AuthError, Authenticator, Handshake, Identity};

/// Trusts the `userId` query parameter. Anyone can claim any user id: for
/// development and for migrating from the original package only.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevAuth;

/// Printed when dev auth is switched on.
pub const DEV_AUTH_WARNING: &str = "auth mode `dev`: the user id is taken from the query string; \
     anyone can connect as any user. Never expose this server to untrusted clients.";

#[async_trait]
impl Authenticator for DevAuth {
    async fn authenticate(&self, handshake: &Handshake) -> Result<Identity, AuthError> {
        let claimed = handshake
            .claimed_user
            .as_deref()
            .ok_or_else(|| AuthError::BadRequest("missing `userId` query parameter".into()))?;
        let user = UserId::new(claimed)
            .map_err(|e| AuthError::BadRequest(format!("invalid `userId`: {e}")))?;
        Ok(Identity { user })
    }

    fn mode(&self) -> &'static str {
        "dev"
    }
}
