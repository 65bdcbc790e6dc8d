//! Presence requests: `activity`, `presence`, `watch`, `unwatch`.

use std::collections::BTreeMap;
use std::sync::Arc;

use pubsub_protocol::{ErrorCode, MessageId, Presence, UserId};
use serde::Serialize;

use super::Hub;
use crate::connection::{ClientHandle, Frame};
use crate::engine::WatchOutcome;

/// `result` of `presence` and `watch` acks.
#[derive(Serialize)]
struct UsersPresence {
    users: BTreeMap<UserId, Presence>,
}

impl Hub {
    /// A client became active or idle. Answers only when the frame had an id.
    pub(crate) async fn activity(
        &self,
        client: &ClientHandle,
        id: Option<&MessageId>,
        active: bool,
    ) -> Option<Frame> {
        self.stats
            .messages_in
            .activity
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = self.engine.set_activity(client, active).await;
        let id = id?;
        Some(match result {
            Ok(presence) => {
                #[derive(Serialize)]
                struct Ack {
                    presence: Presence,
                }
                self.ack_frame(id, &Ack { presence })
            }
            Err(e) => self.error_frame(Some(id), ErrorCode::Internal, &e.to_string()),
        })
    }

    /// The first user `client` may not see, if any.
    async fn hidden<'a>(&self, client: &ClientHandle, users: &'a [UserId]) -> Option<&'a UserId> {
        for user in users {
            if !self.presence_policy.can_see(client.info(), user).await {
                return Some(user);
            }
        }
        None
    }

    pub(super) async fn query_presence(
        &self,
        client: &ClientHandle,
        id: &MessageId,
        users: &[UserId],
    ) -> Frame {
        if let Some(user) = self.hidden(client, users).await {
            return self.error_frame(
                Some(id),
                ErrorCode::Forbidden,
                &format!("not allowed to see {user}"),
            );
        }
        match self.engine.presence(users).await {
            Ok(list) => self.ack_frame(id, &users_presence(list)),
            Err(e) => self.error_frame(Some(id), ErrorCode::Internal, &e.to_string()),
        }
    }

    pub(super) async fn watch(
        &self,
        client: &Arc<ClientHandle>,
        id: &MessageId,
        users: &[UserId],
    ) -> Frame {
        if let Some(user) = self.hidden(client, users).await {
            return self.error_frame(
                Some(id),
                ErrorCode::Forbidden,
                &format!("not allowed to watch {user}"),
            );
        }
        match self
            .engine
            .watch(client, users, self.config.max_watched_users)
            .await
        {
            Ok(WatchOutcome::Watching(list)) => self.ack_frame(id, &users_presence(list)),
            Ok(WatchOutcome::TooMany { limit }) => self.error_frame(
                Some(id),
                ErrorCode::TooManyWatches,
                &format!("a connection may watch at most {limit} users"),
            ),
            Err(e) => self.error_frame(Some(id), ErrorCode::Internal, &e.to_string()),
        }
    }

    pub(super) async fn unwatch(
        &self,
        client: &ClientHandle,
        id: &MessageId,
        users: &[UserId],
    ) -> Frame {
        #[derive(Serialize)]
        struct Ack {
            watching: usize,
        }
        match self.engine.unwatch(client, users).await {
            Ok(watching) => self.ack_frame(id, &Ack { watching }),
            Err(e) => self.error_frame(Some(id), ErrorCode::Internal, &e.to_string()),
        }
    }
}

fn users_presence(list: Vec<Presence>) -> UsersPresence {
    UsersPresence {
        users: list.into_iter().map(|p| (p.user.clone(), p)).collect(),
    }
}
