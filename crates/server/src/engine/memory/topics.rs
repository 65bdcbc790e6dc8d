//! Topic memberships. Each topic holds its members as a shared snapshot, so
//! a publish copies one `Arc` under the shard lock and writes to thousands of
//! members with no lock held; an index makes joins and leaves O(1) (a leave
//! copies the member list only while a publish is still using the old one).

use std::sync::Arc;

use ahash::{HashMap, HashMapExt, RandomState};
use dashmap::DashMap;
use pubsub_protocol::{ClientId, Topic};

use crate::connection::ClientHandle;

/// Members delivered to between yields, so a publish to a huge topic does
/// not monopolise its worker thread.
const CHUNK: usize = 1024;

#[derive(Default)]
struct Members {
    list: Arc<Vec<Arc<ClientHandle>>>,
    index: HashMap<ClientId, usize>,
}

pub(super) struct TopicTable {
    topics: DashMap<Topic, Members, RandomState>,
}

impl Default for TopicTable {
    fn default() -> Self {
        Self {
            topics: DashMap::with_hasher(RandomState::new()),
        }
    }
}

impl TopicTable {
    /// Adds `client` (once) and returns the member count.
    pub(super) fn add(&self, topic: &Topic, client: &Arc<ClientHandle>) -> usize {
        let mut members = self.topics.entry(topic.clone()).or_insert_with(|| Members {
            list: Arc::default(),
            index: HashMap::new(),
        });
        if !members.index.contains_key(client.id()) {
            let at = members.list.len();
            Arc::make_mut(&mut members.list).push(client.clone());
            members.index.insert(client.id().clone(), at);
        }
        members.list.len()
    }

    /// Removes `client`; a topic left empty is dropped, so it costs nothing.
    pub(super) fn remove(&self, topic: &Topic, client: &ClientId) {
        if let Some(mut members) = self.topics.get_mut(topic)
            && let Some(at) = members.index.remove(client)
        {
            let list = Arc::make_mut(&mut members.list);
            list.swap_remove(at);
            if let Some(moved) = list.get(at) {
                let moved = moved.id().clone();
                members.index.insert(moved, at);
            }
        }
        self.topics
            .remove_if(topic, |_, members| members.list.is_empty());
    }

    /// The current members, to deliver to without holding the table's lock.
    pub(super) fn snapshot(&self, topic: &Topic) -> Option<Arc<Vec<Arc<ClientHandle>>>> {
        self.topics.get(topic).map(|m| Arc::clone(&m.list))
    }

    pub(super) fn members(&self, topic: &Topic) -> usize {
        self.topics.get(topic).map_or(0, |m| m.list.len())
    }

    /// (topics, memberships)
    pub(super) fn sizes(&self) -> (usize, usize) {
        self.topics
            .iter()
            .fold((0, 0), |(t, m), entry| (t + 1, m + entry.list.len()))
    }
}

/// Delivers `deliver` to every member, yielding between chunks.
pub(super) async fn deliver_all(
    members: &[Arc<ClientHandle>],
    mut deliver: impl FnMut(&Arc<ClientHandle>) -> bool,
) -> usize {
    let mut delivered = 0;
    for (i, chunk) in members.chunks(CHUNK).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        delivered += chunk.iter().filter(|m| deliver(m)).count();
    }
    delivered
}
