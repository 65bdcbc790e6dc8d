//! What a handler gets besides the action: the sending client and the
//! server's send and read functions (the original's handler options:
//! `client`, `user`, `users`, `sendToClient`, `broadcast`).

use std::ops::Deref;
use std::sync::Arc;

use pubsub_protocol::{MessageId, UserId};
use serde::Serialize;

use crate::connection::{ClientHandle, ClientInfo};
use crate::engine::UserDelivery;
use crate::handle::{SendError, ServerHandle};

/// Context of one `sendToServer` call. Derefs to [`ServerHandle`], so
/// `ctx.send_to_users(..)`, `ctx.users()` and the rest are available.
#[derive(Clone)]
pub struct HandlerContext {
    server: ServerHandle,
    /// The sender's handle rather than a copy of its facts: taking it is
    /// one count on a line the request has touched already.
    client: Arc<ClientHandle>,
    message_id: MessageId,
}

impl HandlerContext {
    pub(crate) fn new(
        server: ServerHandle,
        client: Arc<ClientHandle>,
        message_id: MessageId,
    ) -> Self {
        Self {
            server,
            client,
            message_id,
        }
    }

    /// The client that sent the action.
    pub fn client(&self) -> &ClientInfo {
        self.client.info()
    }

    /// The sending client's user.
    pub fn user(&self) -> &UserId {
        self.client.user()
    }

    /// The id of the request being handled.
    pub fn message_id(&self) -> &MessageId {
        &self.message_id
    }

    pub fn server(&self) -> &ServerHandle {
        &self.server
    }

    /// Sends `action` to the sending user's other clients (like the client's
    /// `broadcast`, but from the server).
    pub async fn broadcast<A: Serialize + ?Sized>(
        &self,
        action: &A,
    ) -> Result<UserDelivery, SendError> {
        self.server
            .broadcast_to_user(self.client.user(), Some(self.client.id()), action)
            .await
    }

    /// Sends `action` back to the sending client, before the reply.
    pub async fn send_to_sender<A: Serialize + ?Sized>(
        &self,
        action: &A,
    ) -> Result<bool, SendError> {
        self.server.send_to_client(self.client.id(), action).await
    }
}

impl Deref for HandlerContext {
    type Target = ServerHandle;

    fn deref(&self) -> &ServerHandle {
        &self.server
    }
}
