//! Topic memberships. Each topic holds its members as a shared snapshot, so
//! a publish copies one `Arc` under the shard lock and queues to thousands of
//! members with no lock held; a join copies the member list only while a
//! publish is using the old snapshot.

use std::sync::Arc;

use dashmap::DashMap;
use pubsub_protocol::{ClientId, Topic};

use crate::connection::{ClientHandle, Frame};

#[derive(Default)]
pub(super) struct TopicTable {
    topics: DashMap<Topic, Arc<Vec<Arc<ClientHandle>>>>,
}

impl TopicTable {
    /// Adds `client`, which the caller knows is not yet a member, and
    /// returns the member count.
    pub(super) fn add(&self, topic: &Topic, client: &Arc<ClientHandle>) -> usize {
        let mut members = self.topics.entry(topic.clone()).or_default();
        Arc::make_mut(&mut members).push(client.clone());
        members.len()
    }

    /// Removes `client`; a topic left empty is dropped, so it costs nothing.
    pub(super) fn remove(&self, topic: &Topic, client: &ClientId) {
        if let Some(mut members) = self.topics.get_mut(topic) {
            if members.iter().any(|m| m.id() == client) {
                Arc::make_mut(&mut members).retain(|m| m.id() != client);
            }
        }
        self.topics
            .remove_if(topic, |_, members| members.is_empty());
    }

    pub(super) fn deliver(&self, topic: &Topic, except: Option<&ClientId>, frame: &Frame) -> usize {
        let Some(members) = self.topics.get(topic).map(|m| Arc::clone(&m)) else {
            return 0;
        };
        members
            .iter()
            .filter(|m| Some(m.id()) != except)
            .filter(|m| m.deliver(frame))
            .count()
    }

    pub(super) fn members(&self, topic: &Topic) -> usize {
        self.topics.get(topic).map_or(0, |m| m.len())
    }

    /// (topics, memberships)
    pub(super) fn sizes(&self) -> (usize, usize) {
        self.topics
            .iter()
            .fold((0, 0), |(t, m), entry| (t + 1, m + entry.len()))
    }
}
