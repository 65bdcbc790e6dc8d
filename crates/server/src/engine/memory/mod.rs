//! The single-node engine: routing tables, presence and topics in process
//! memory.
//!
//! Locking rules (DashMap shards are plain locks):
//! - never hold a guard across an await (no method here awaits while holding one);
//! - never hold guards on two entries at once: `watch`, `detach` and `join`
//!   take them one after another;
//! - a user's presence transition and the queueing of its events happen under
//!   that user's entry guard, which is what orders every user's events.

mod topics;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use pubsub_protocol::{ClientId, Presence, Topic, UserId, UserStatus};
use tokio::sync::broadcast;

use super::{
    Counts, Engine, EngineError, EngineSettings, JoinOutcome, UserDelivery, UserInfo, WatchOutcome,
};
use crate::connection::{ClientHandle, ClientInfo, Frame};
use crate::presence::StatusChange;
use crate::presence::events::TransitionEvents;
use crate::presence::state::{PresenceState, Transition};
use crate::stats::now_ms;
use topics::TopicTable;

/// How often remembered OFFLINE users are checked for forgetting.
const SWEEP_PERIOD: Duration = Duration::from_secs(60);

struct UserEntry {
    clients: Vec<Arc<ClientHandle>>,
    presence: PresenceState,
    /// Connections watching this user.
    watchers: Vec<Arc<ClientHandle>>,
    /// When the user became OFFLINE with nothing pending.
    dormant_since: Option<Instant>,
}

impl UserEntry {
    fn new(user: UserId) -> Self {
        Self {
            clients: Vec::new(),
            presence: PresenceState::new(user),
            watchers: Vec::new(),
            dormant_since: None,
        }
    }

    fn info(&self) -> UserInfo {
        let presence = self.presence.snapshot();
        UserInfo {
            id: presence.user.clone(),
            clients: self.clients.iter().map(|c| c.info().clone()).collect(),
            presence,
        }
    }
}

/// Per-connection state the engine needs to clean up after it.
struct ClientEntry {
    handle: Arc<ClientHandle>,
    topics: HashSet<Topic>,
    watching: HashSet<UserId>,
}

struct Inner {
    users: DashMap<UserId, UserEntry>,
    clients: DashMap<ClientId, ClientEntry>,
    topics: TopicTable,
    connected_users: AtomicUsize,
    /// One counter for every user's versions: strictly increasing per user,
    /// and (starting from the clock) across restarts and forgotten users.
    versions: AtomicU64,
    presence_events: AtomicU64,
    settings: OnceLock<EngineSettings>,
    status_changes: broadcast::Sender<StatusChange>,
}

/// Users, clients, presence and topics of this node.
pub struct MemoryEngine {
    inner: Arc<Inner>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    pub fn new() -> Self {
        let (status_changes, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                users: DashMap::new(),
                clients: DashMap::new(),
                topics: TopicTable::default(),
                connected_users: AtomicUsize::new(0),
                versions: AtomicU64::new(now_ms().saturating_mul(1000)),
                presence_events: AtomicU64::new(0),
                settings: OnceLock::new(),
                status_changes,
            }),
        }
    }
}

impl Inner {
    fn settings(&self) -> EngineSettings {
        self.settings.get().copied().unwrap_or_default()
    }

    fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Queues a transition's events. Runs under the user's entry guard.
    fn announce(&self, entry: &mut UserEntry, t: &Transition, before: Option<Presence>) {
        let after = entry.presence.snapshot();
        let events = TransitionEvents::encode(t, &after);
        let mut sent = 0u64;
        for frame in &events.own {
            for client in &entry.clients {
                if Some(client.id()) != events.skip.as_ref() && client.deliver(frame) {
                    sent += 1;
                }
            }
        }
        if let Some(frame) = &events.watchers {
            entry.watchers.retain(|w| !w.is_closed());
            for watcher in &entry.watchers {
                if watcher.deliver(frame) {
                    sent += 1;
                }
            }
        }
        self.presence_events.fetch_add(sent, Ordering::Relaxed);
        if let (Some(old), Some(_)) = (before, t.status_from) {
            let _ = self.status_changes.send(StatusChange { old, new: after });
        }
    }

    /// The snapshot before a transition, only when someone listens for changes.
    fn before(&self, entry: &UserEntry) -> Option<Presence> {
        (self.status_changes.receiver_count() > 0).then(|| entry.presence.snapshot())
    }

    fn start_grace(self: &Arc<Self>, user: UserId, generation: u64) {
        let inner: Weak<Inner> = Arc::downgrade(self);
        let grace = self.settings().presence_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(inner) = inner.upgrade() {
                inner.end_grace(&user, generation);
            }
        });
    }

    fn end_grace(&self, user: &UserId, generation: u64) {
        let Some(mut entry) = self.users.get_mut(user) else {
            return;
        };
        let before = self.before(&entry);
        if let Some(t) = entry
            .presence
            .expire_grace(generation, now_ms(), self.next_version())
        {
            self.announce(&mut entry, &t, before);
            if entry.presence.is_dormant() {
                entry.dormant_since = Some(Instant::now());
            }
        }
    }

    /// Forgets OFFLINE users nobody watches once the retention has passed.
    fn sweep(&self) {
        let retention = self.settings().presence_retention;
        self.users.retain(|_, e| {
            !(e.watchers.is_empty()
                && e.dormant_since
                    .is_some_and(|since| since.elapsed() >= retention))
        });
    }

    fn remove_watcher(&self, user: &UserId, watcher: &ClientId) {
        if let Some(mut entry) = self.users.get_mut(user) {
            entry.watchers.retain(|w| w.id() != watcher);
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn start(&self, settings: EngineSettings) -> Result<(), EngineError> {
        let _ = self.inner.settings.set(settings);
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_PERIOD);
            loop {
                tick.tick().await;
                match inner.upgrade() {
                    Some(inner) => inner.sweep(),
                    None => return,
                }
            }
        });
        Ok(())
    }

    fn status_changes(&self) -> broadcast::Receiver<StatusChange> {
        self.inner.status_changes.subscribe()
    }

    async fn attach(
        &self,
        client: Arc<ClientHandle>,
        active: bool,
    ) -> Result<Presence, EngineError> {
        let inner = &self.inner;
        inner.clients.insert(
            client.id().clone(),
            ClientEntry {
                handle: client.clone(),
                topics: HashSet::new(),
                watching: HashSet::new(),
            },
        );
        let mut entry = inner
            .users
            .entry(client.user().clone())
            .or_insert_with(|| UserEntry::new(client.user().clone()));
        if entry.clients.is_empty() {
            inner.connected_users.fetch_add(1, Ordering::Relaxed);
        }
        entry.clients.push(client.clone());
        entry.dormant_since = None;
        let before = inner.before(&entry);
        let t = entry
            .presence
            .connect(client.id().clone(), active, now_ms(), inner.next_version());
        inner.announce(&mut entry, &t, before);
        Ok(entry.presence.snapshot())
    }

    async fn detach(&self, client: &Arc<ClientHandle>) -> Presence {
        let inner = &self.inner;
        // Refuse frames from here on, so a concurrent watch or join that
        // still adds this client cannot keep a dead connection's queue alive.
        client.close();
        if let Some((_, state)) = inner.clients.remove(client.id()) {
            for topic in &state.topics {
                inner.topics.remove(topic, client.id());
            }
            for user in &state.watching {
                inner.remove_watcher(user, client.id());
            }
        }
        let Some(mut entry) = inner.users.get_mut(client.user()) else {
            return Presence::unknown(client.user().clone());
        };
        entry.clients.retain(|c| c.id() != client.id());
        if entry.clients.is_empty() {
            inner.connected_users.fetch_sub(1, Ordering::Relaxed);
        }
        let before = inner.before(&entry);
        if let Some(t) = entry
            .presence
            .disconnect(client.id(), now_ms(), inner.next_version())
        {
            inner.announce(&mut entry, &t, before);
            if let Some(generation) = t.grace_started {
                inner.start_grace(client.user().clone(), generation);
            }
        }
        entry.presence.snapshot()
    }

    async fn send_to_client(&self, client: &ClientId, frame: &Frame) -> Result<bool, EngineError> {
        Ok(self
            .inner
            .clients
            .get(client)
            .is_some_and(|c| c.handle.deliver(frame)))
    }

    async fn send_to_user(
        &self,
        user: &UserId,
        except: Option<&ClientId>,
        frame: &Frame,
    ) -> Result<UserDelivery, EngineError> {
        let Some(entry) = self.inner.users.get(user) else {
            return Ok(UserDelivery {
                online: false,
                clients: 0,
            });
        };
        let clients = entry
            .clients
            .iter()
            .filter(|c| Some(c.id()) != except)
            .filter(|c| c.deliver(frame))
            .count();
        Ok(UserDelivery {
            online: !entry.clients.is_empty(),
            clients,
        })
    }

    async fn send_to_all(&self, frame: &Frame) -> Result<usize, EngineError> {
        Ok(self
            .inner
            .clients
            .iter()
            .filter(|c| c.handle.deliver(frame))
            .count())
    }

    async fn disconnect_client(
        &self,
        client: &ClientId,
        code: u16,
        reason: String,
    ) -> Result<bool, EngineError> {
        Ok(match self.inner.clients.get(client) {
            Some(c) => {
                c.handle.disconnect(code, reason);
                true
            }
            None => false,
        })
    }

    async fn set_activity(
        &self,
        client: &ClientHandle,
        active: bool,
    ) -> Result<Presence, EngineError> {
        let inner = &self.inner;
        let Some(mut entry) = inner.users.get_mut(client.user()) else {
            return Ok(Presence::unknown(client.user().clone()));
        };
        let before = inner.before(&entry);
        if let Some(t) =
            entry
                .presence
                .set_active(client.id(), active, now_ms(), inner.next_version())
        {
            inner.announce(&mut entry, &t, before);
        }
        Ok(entry.presence.snapshot())
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>, EngineError> {
        Ok(users
            .iter()
            .map(|u| match self.inner.users.get(u) {
                Some(entry) => entry.presence.snapshot(),
                None => Presence::unknown(u.clone()),
            })
            .collect())
    }

    async fn watch(
        &self,
        watcher: &Arc<ClientHandle>,
        users: &[UserId],
        limit: usize,
    ) -> Result<WatchOutcome, EngineError> {
        let inner = &self.inner;
        {
            let Some(mut state) = inner.clients.get_mut(watcher.id()) else {
                return Ok(WatchOutcome::Watching(Vec::new()));
            };
            let new = users
                .iter()
                .filter(|u| !state.watching.contains(*u))
                .count();
            if state.watching.len() + new > limit {
                return Ok(WatchOutcome::TooMany { limit });
            }
            state.watching.extend(users.iter().cloned());
        }
        let mut snapshots = Vec::with_capacity(users.len());
        for user in users {
            let mut entry = inner
                .users
                .entry(user.clone())
                .or_insert_with(|| UserEntry::new(user.clone()));
            if !entry.watchers.iter().any(|w| w.id() == watcher.id()) {
                entry.watchers.push(watcher.clone());
            }
            snapshots.push(entry.presence.snapshot());
        }
        if watcher.is_closed() {
            // Detached while we were adding: take the additions back.
            for user in users {
                inner.remove_watcher(user, watcher.id());
            }
        }
        Ok(WatchOutcome::Watching(snapshots))
    }

    async fn unwatch(
        &self,
        watcher: &ClientHandle,
        users: &[UserId],
    ) -> Result<usize, EngineError> {
        let inner = &self.inner;
        let left = match inner.clients.get_mut(watcher.id()) {
            Some(mut state) => {
                for user in users {
                    state.watching.remove(user);
                }
                state.watching.len()
            }
            None => 0,
        };
        for user in users {
            inner.remove_watcher(user, watcher.id());
        }
        Ok(left)
    }

    async fn join(
        &self,
        client: &Arc<ClientHandle>,
        topic: &Topic,
        limit: usize,
    ) -> Result<JoinOutcome, EngineError> {
        let inner = &self.inner;
        {
            let Some(mut state) = inner.clients.get_mut(client.id()) else {
                return Ok(JoinOutcome::Joined { members: 0 });
            };
            if state.topics.contains(topic) {
                drop(state);
                return Ok(JoinOutcome::Joined {
                    members: inner.topics.members(topic),
                });
            }
            if state.topics.len() >= limit {
                return Ok(JoinOutcome::TooMany { limit });
            }
            state.topics.insert(topic.clone());
        }
        let members = inner.topics.add(topic, client);
        if client.is_closed() {
            inner.topics.remove(topic, client.id());
        }
        Ok(JoinOutcome::Joined { members })
    }

    async fn leave(&self, client: &ClientHandle, topic: &Topic) -> Result<bool, EngineError> {
        let was_member = self
            .inner
            .clients
            .get_mut(client.id())
            .is_some_and(|mut state| state.topics.remove(topic));
        if was_member {
            self.inner.topics.remove(topic, client.id());
        }
        Ok(was_member)
    }

    async fn publish(
        &self,
        topic: &Topic,
        except: Option<&ClientId>,
        frame: &Frame,
    ) -> Result<usize, EngineError> {
        let Some(members) = self.inner.topics.snapshot(topic) else {
            return Ok(0);
        };
        Ok(topics::deliver_all(&members, |m| Some(m.id()) != except && m.deliver(frame)).await)
    }

    async fn topic_members(&self, topic: &Topic) -> Result<usize, EngineError> {
        Ok(self.inner.topics.members(topic))
    }

    async fn user(&self, user: &UserId) -> Result<Option<UserInfo>, EngineError> {
        Ok(self.inner.users.get(user).map(|e| e.info()))
    }

    async fn users(&self) -> Result<Vec<UserInfo>, EngineError> {
        Ok(self
            .inner
            .users
            .iter()
            .filter(|e| !e.presence.is_dormant())
            .map(|e| e.info())
            .collect())
    }

    async fn client(&self, client: &ClientId) -> Result<Option<ClientInfo>, EngineError> {
        Ok(self
            .inner
            .clients
            .get(client)
            .map(|c| c.handle.info().clone()))
    }

    fn counts(&self) -> Counts {
        let inner = &self.inner;
        let mut by_status: BTreeMap<String, usize> =
            [UserStatus::Online, UserStatus::Away, UserStatus::Offline]
                .iter()
                .map(|s| (s.as_str().to_owned(), 0))
                .collect();
        let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
        for entry in inner.users.iter() {
            *by_status
                .entry(entry.presence.status().as_str().to_owned())
                .or_default() += 1;
            let bucket = match entry.presence.clients() {
                0 => continue,
                n @ 1..=3 => n.to_string(),
                4..=5 => "4-5".to_owned(),
                6..=10 => "6-10".to_owned(),
                _ => "11+".to_owned(),
            };
            *per_user.entry(bucket).or_default() += 1;
        }
        let (topics, topic_members) = inner.topics.sizes();
        Counts {
            users: inner.connected_users.load(Ordering::Relaxed),
            clients: inner.clients.len(),
            users_by_status: by_status,
            clients_per_user: per_user,
            presence_events: inner.presence_events.load(Ordering::Relaxed),
            topics,
            topic_members,
        }
    }
}
