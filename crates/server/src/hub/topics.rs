//! Topic membership requests: `join` and `leave` (`publish` is messaging).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pubsub_protocol::{ErrorCode, MessageId, Topic};
use serde::Serialize;

use super::Hub;
use crate::connection::{ClientHandle, Frame};
use crate::engine::JoinOutcome;

impl Hub {
    pub(super) async fn join(
        &self,
        client: &Arc<ClientHandle>,
        id: &MessageId,
        topic: &Topic,
    ) -> Frame {
        #[derive(Serialize)]
        struct Ack<'a> {
            topic: &'a Topic,
            members: usize,
        }
        if !self.topic_policy.may_join(client.info(), topic).await {
            return self.error_frame(
                Some(id),
                ErrorCode::Forbidden,
                &format!("not allowed to join {topic}"),
            );
        }
        match self
            .engine
            .join(client, topic, self.config.max_topics)
            .await
        {
            Ok(JoinOutcome::Joined { members }) => self.ack_frame(id, &Ack { topic, members }),
            Ok(JoinOutcome::TooMany { limit }) => self.error_frame(
                Some(id),
                ErrorCode::TooManyTopics,
                &format!("a connection may join at most {limit} topics"),
            ),
            Err(e) => self.error_frame(Some(id), ErrorCode::Internal, &e.to_string()),
        }
    }

    pub(super) async fn leave(
        &self,
        client: &ClientHandle,
        id: &MessageId,
        topic: &Topic,
    ) -> Frame {
        #[derive(Serialize)]
        struct Ack<'a> {
            topic: &'a Topic,
            left: bool,
        }
        match self.engine.leave(client, topic).await {
            Ok(left) => self.ack_frame(id, &Ack { topic, left }),
            Err(e) => self.error_frame(Some(id), ErrorCode::Internal, &e.to_string()),
        }
    }

    pub(crate) fn count_topic_publish(&self, delivered: usize) {
        self.stats.topics.publishes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .topics
            .deliveries
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.count_deliveries(delivered);
    }
}
