//! The single-node engine: routing tables in process memory.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use pubsub_protocol::{ClientId, UserId};

use super::{Counts, Engine, EngineError, UserDelivery, UserInfo};
use crate::connection::{ClientHandle, ClientInfo, Frame};

/// Users and clients of this node, sharded by `DashMap`. Delivery holds a
/// shard's read lock only while queueing into outboxes (never across an
/// await, never while writing to a socket).
#[derive(Default)]
pub struct MemoryEngine {
    users: DashMap<UserId, Vec<Arc<ClientHandle>>>,
    clients: DashMap<ClientId, Arc<ClientHandle>>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn user_info(&self, user: &UserId, clients: &[Arc<ClientHandle>]) -> UserInfo {
        UserInfo {
            id: user.clone(),
            clients: clients.iter().map(|c| c.info().clone()).collect(),
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn attach(&self, client: Arc<ClientHandle>) -> Result<(), EngineError> {
        self.clients.insert(client.id().clone(), client.clone());
        self.users
            .entry(client.user().clone())
            .or_default()
            .push(client);
        Ok(())
    }

    async fn detach(&self, client: &ClientHandle) {
        self.clients.remove(client.id());
        // remove_if keeps the check and the removal under one shard lock, so
        // a concurrent attach for the same user cannot be lost.
        if let Some(mut list) = self.users.get_mut(client.user()) {
            list.retain(|c| c.id() != client.id());
        }
        self.users
            .remove_if(client.user(), |_, list| list.is_empty());
    }

    async fn send_to_client(&self, client: &ClientId, frame: &Frame) -> Result<bool, EngineError> {
        Ok(self.clients.get(client).is_some_and(|c| c.deliver(frame)))
    }

    async fn send_to_user(
        &self,
        user: &UserId,
        except: Option<&ClientId>,
        frame: &Frame,
    ) -> Result<UserDelivery, EngineError> {
        let Some(list) = self.users.get(user) else {
            return Ok(UserDelivery {
                online: false,
                clients: 0,
            });
        };
        let clients = list
            .iter()
            .filter(|c| Some(c.id()) != except)
            .filter(|c| c.deliver(frame))
            .count();
        Ok(UserDelivery {
            online: !list.is_empty(),
            clients,
        })
    }

    async fn send_to_all(&self, frame: &Frame) -> Result<usize, EngineError> {
        Ok(self.clients.iter().filter(|c| c.deliver(frame)).count())
    }

    async fn disconnect_client(
        &self,
        client: &ClientId,
        code: u16,
        reason: String,
    ) -> Result<bool, EngineError> {
        Ok(match self.clients.get(client) {
            Some(c) => {
                c.disconnect(code, reason);
                true
            }
            None => false,
        })
    }

    async fn user(&self, user: &UserId) -> Result<Option<UserInfo>, EngineError> {
        Ok(self.users.get(user).map(|list| self.user_info(user, &list)))
    }

    async fn users(&self) -> Result<Vec<UserInfo>, EngineError> {
        Ok(self
            .users
            .iter()
            .map(|entry| self.user_info(entry.key(), entry.value()))
            .collect())
    }

    async fn client(&self, client: &ClientId) -> Result<Option<ClientInfo>, EngineError> {
        Ok(self.clients.get(client).map(|c| c.info().clone()))
    }

    fn counts(&self) -> Counts {
        Counts {
            users: self.users.len(),
            clients: self.clients.len(),
        }
    }
}
