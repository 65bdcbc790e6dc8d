//! One user's presence as a state machine over their clients' connects,
//! disconnects and activity. Pure: time and versions are passed in, so every
//! engine (in-memory today, clustered later) computes transitions the same way
//! and tests can drive it without a clock.

use pubsub_protocol::{ClientId, Presence, UserId, UserStatus};

/// A connected client as presence sees it.
#[derive(Debug, Clone)]
struct Slot {
    id: ClientId,
    active: bool,
    /// Larger = more recently connected or activated; decides `activeClient`.
    recency: u64,
}

/// What one input changed. Every transition bumps the version once; all of
/// its events carry that version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) version: u64,
    /// The status before, when the status changed.
    pub(crate) status_from: Option<UserStatus>,
    /// The active client before, when it changed.
    pub(crate) active_from: Option<Option<ClientId>>,
    pub(crate) connected: Option<ClientId>,
    pub(crate) disconnected: Option<ClientId>,
    /// Set when the last client left: the grace timer to start.
    pub(crate) grace_started: Option<u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct PresenceState {
    user: UserId,
    slots: Vec<Slot>,
    status: UserStatus,
    previous_status: Option<UserStatus>,
    online_since: Option<u64>,
    last_online: Option<u64>,
    away_since: Option<u64>,
    active_client: Option<ClientId>,
    version: u64,
    recency: u64,
    /// While the last client is gone but the grace period runs: when it left
    /// and which timer generation may end it.
    grace: Option<(u64, u64)>,
    generation: u64,
}

impl PresenceState {
    pub(crate) fn new(user: UserId) -> Self {
        Self {
            user,
            slots: Vec::new(),
            status: UserStatus::Offline,
            previous_status: None,
            online_since: None,
            last_online: None,
            away_since: None,
            active_client: None,
            version: 0,
            recency: 0,
            grace: None,
            generation: 0,
        }
    }

    pub(crate) fn snapshot(&self) -> Presence {
        Presence {
            user: self.user.clone(),
            status: self.status,
            previous_status: self.previous_status,
            online_since_ts: self.online_since,
            last_online_ts: self.last_online,
            away_since_ts: self.away_since,
            active_client: self.active_client.clone(),
            clients: self.slots.len(),
            version: self.version,
        }
    }

    pub(crate) fn status(&self) -> UserStatus {
        self.status
    }

    pub(crate) fn clients(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// OFFLINE, with nothing pending: safe to forget once nobody watches.
    pub(crate) fn is_dormant(&self) -> bool {
        self.status == UserStatus::Offline && self.slots.is_empty() && self.grace.is_none()
    }

    pub(crate) fn connect(
        &mut self,
        id: ClientId,
        active: bool,
        now: u64,
        version: u64,
    ) -> Transition {
        self.recency += 1;
        self.slots.push(Slot {
            id: id.clone(),
            active,
            recency: self.recency,
        });
        // A reconnect inside the grace period cancels the pending OFFLINE.
        self.grace = None;
        let mut t = self.settle(now, None, version);
        self.version = version;
        t.connected = Some(id);
        t
    }

    /// Returns `None` if `id` was not connected.
    pub(crate) fn disconnect(
        &mut self,
        id: &ClientId,
        now: u64,
        version: u64,
    ) -> Option<Transition> {
        let index = self.slots.iter().position(|s| &s.id == id)?;
        self.slots.remove(index);
        let mut t = if self.slots.is_empty() {
            // Keep the status through the grace period; only the client
            // count and active client change now.
            self.generation += 1;
            self.grace = Some((now, self.generation));
            Transition {
                version,
                active_from: self.active_client.take().map(Some),
                grace_started: Some(self.generation),
                ..Transition::default()
            }
        } else {
            self.settle(now, None, version)
        };
        self.version = version;
        t.disconnected = Some(id.clone());
        Some(t)
    }

    /// Returns `None` if nothing changed (unknown client or same activity).
    pub(crate) fn set_active(
        &mut self,
        id: &ClientId,
        active: bool,
        now: u64,
        version: u64,
    ) -> Option<Transition> {
        let slot = self.slots.iter_mut().find(|s| &s.id == id)?;
        if slot.active == active && !active {
            return None;
        }
        slot.active = active;
        // Reporting "active" again (a focused window) makes this client the
        // most recently active one, which may move `activeClient` to it.
        if active {
            self.recency += 1;
            slot.recency = self.recency;
        }
        // Activity flags are not reported themselves: only a changed status
        // or active client is a transition.
        let t = self.settle(now, None, version);
        let changed = t.status_from.is_some() || t.active_from.is_some();
        if changed {
            self.version = version;
        }
        changed.then_some(t)
    }

    /// Ends the grace period started by `generation`. `None` if a client came
    /// back (or a later disconnect started a newer timer).
    pub(crate) fn expire_grace(
        &mut self,
        generation: u64,
        now: u64,
        version: u64,
    ) -> Option<Transition> {
        match self.grace {
            Some((left_at, g)) if g == generation && self.slots.is_empty() => {
                self.grace = None;
                let t = self.settle(now, Some(left_at), version);
                self.version = version;
                Some(t)
            }
            _ => None,
        }
    }

    fn pick_active(&self) -> Option<ClientId> {
        let best = |active_only: bool| {
            self.slots
                .iter()
                .filter(|s| !active_only || s.active)
                .max_by_key(|s| s.recency)
                .map(|s| s.id.clone())
        };
        best(true).or_else(|| best(false))
    }

    /// Recomputes status and active client. `left_at` is when the last client
    /// left, for an OFFLINE that ends a grace period. The caller bumps the
    /// version when it reports the transition.
    fn settle(&mut self, now: u64, left_at: Option<u64>, version: u64) -> Transition {
        let status = if self.slots.is_empty() {
            if self.grace.is_some() {
                self.status
            } else {
                UserStatus::Offline
            }
        } else if self.slots.iter().any(|s| s.active) {
            UserStatus::Online
        } else {
            UserStatus::Away
        };
        let mut t = Transition {
            version,
            ..Transition::default()
        };
        let active = self.pick_active();
        if active != self.active_client {
            t.active_from = Some(std::mem::replace(&mut self.active_client, active));
        }
        if status != self.status {
            let from = self.status;
            if from == UserStatus::Online {
                self.last_online = Some(left_at.unwrap_or(now));
            }
            if from == UserStatus::Offline {
                self.online_since = Some(now);
            }
            self.away_since = (status == UserStatus::Away).then_some(now);
            if status == UserStatus::Offline {
                self.online_since = None;
            }
            self.previous_status = Some(from);
            self.status = status;
            t.status_from = Some(from);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    struct Clock {
        now: u64,
        version: u64,
    }

    impl Clock {
        fn tick(&mut self) -> (u64, u64) {
            self.now += 1000;
            self.version += 1;
            (self.now, self.version)
        }
    }

    fn user() -> (PresenceState, Clock) {
        (
            PresenceState::new(UserId::new("u").unwrap()),
            Clock { now: 0, version: 0 },
        )
    }

    #[test]
    fn first_connect_goes_online() {
        let (mut p, mut c) = user();
        let (now, v) = c.tick();
        let t = p.connect(id("a"), true, now, v);
        assert_eq!(t.status_from, Some(UserStatus::Offline));
        let s = p.snapshot();
        assert_eq!(s.status, UserStatus::Online);
        assert_eq!(s.previous_status, Some(UserStatus::Offline));
        assert_eq!(s.online_since_ts, Some(now));
        assert_eq!(s.active_client, Some(id("a")));
        assert_eq!((s.clients, s.version), (1, v));
    }

    #[test]
    fn closing_one_of_two_tabs_stays_online_and_moves_the_active_client() {
        let (mut p, mut c) = user();
        let (n, v) = c.tick();
        p.connect(id("a"), true, n, v);
        let (n, v) = c.tick();
        p.connect(id("b"), true, n, v);
        assert_eq!(p.snapshot().active_client, Some(id("b")));
        let (n, v) = c.tick();
        let t = p.disconnect(&id("b"), n, v).unwrap();
        assert_eq!(t.status_from, None);
        assert_eq!(t.active_from, Some(Some(id("b"))));
        assert_eq!(p.snapshot().status, UserStatus::Online);
        assert_eq!(p.snapshot().active_client, Some(id("a")));
    }

    #[test]
    fn all_idle_is_away_and_activity_brings_it_back() {
        let (mut p, mut c) = user();
        let (n, v) = c.tick();
        p.connect(id("a"), true, n, v);
        let (n, v) = c.tick();
        p.connect(id("b"), false, n, v);
        let (away_at, v) = c.tick();
        let t = p.set_active(&id("a"), false, away_at, v).unwrap();
        assert_eq!(t.status_from, Some(UserStatus::Online));
        let s = p.snapshot();
        assert_eq!(s.status, UserStatus::Away);
        assert_eq!(s.away_since_ts, Some(away_at));
        assert_eq!(s.last_online_ts, Some(away_at));
        // b connected later, so it is the most recent of two idle clients.
        assert_eq!(s.active_client, Some(id("b")));
        let (n, v) = c.tick();
        let t = p.set_active(&id("a"), true, n, v).unwrap();
        assert_eq!(t.status_from, Some(UserStatus::Away));
        assert_eq!(t.active_from, Some(Some(id("b"))));
        let s = p.snapshot();
        assert_eq!((s.status, s.away_since_ts), (UserStatus::Online, None));
        assert_eq!(s.active_client, Some(id("a")));
        assert!(
            p.set_active(&id("a"), true, n, v + 1).is_none(),
            "already the active client: no transition"
        );
        assert!(
            p.set_active(&id("b"), false, n, v + 1).is_none(),
            "already idle: no transition"
        );
    }

    #[test]
    fn an_active_client_reporting_activity_again_claims_active_client() {
        let (mut p, mut c) = user();
        let (n, v) = c.tick();
        p.connect(id("a"), true, n, v);
        let (n, v) = c.tick();
        p.connect(id("b"), true, n, v);
        assert_eq!(p.snapshot().active_client, Some(id("b")));
        let (n, v) = c.tick();
        let t = p.set_active(&id("a"), true, n, v).unwrap();
        assert_eq!((t.status_from, t.active_from), (None, Some(Some(id("b")))));
        assert_eq!(p.snapshot().active_client, Some(id("a")));
    }

    #[test]
    fn last_tab_leaving_waits_for_the_grace_period() {
        let (mut p, mut c) = user();
        let (n, v) = c.tick();
        p.connect(id("a"), true, n, v);
        let (left_at, v) = c.tick();
        let t = p.disconnect(&id("a"), left_at, v).unwrap();
        let generation = t.grace_started.unwrap();
        assert_eq!(t.status_from, None);
        assert_eq!(
            p.snapshot().status,
            UserStatus::Online,
            "still ONLINE during grace"
        );
        assert_eq!(p.snapshot().clients, 0);
        let (n, v) = c.tick();
        let t = p.expire_grace(generation, n, v).unwrap();
        assert_eq!(t.status_from, Some(UserStatus::Online));
        let s = p.snapshot();
        assert_eq!(s.status, UserStatus::Offline);
        assert_eq!(
            s.last_online_ts,
            Some(left_at),
            "last online when the tab left, not when grace ended"
        );
        assert_eq!(s.online_since_ts, None);
        assert!(p.is_dormant());
    }

    #[test]
    fn a_reload_inside_the_grace_period_never_goes_offline() {
        let (mut p, mut c) = user();
        let (n, v) = c.tick();
        p.connect(id("a"), true, n, v);
        let (n, v) = c.tick();
        let generation = p.disconnect(&id("a"), n, v).unwrap().grace_started.unwrap();
        let (n, v) = c.tick();
        let t = p.connect(id("a2"), true, n, v);
        assert_eq!(t.status_from, None, "ONLINE throughout");
        let (n, v) = c.tick();
        assert!(
            p.expire_grace(generation, n, v).is_none(),
            "the stale timer does nothing"
        );
        assert_eq!(p.snapshot().status, UserStatus::Online);
    }

    #[test]
    fn versions_only_move_forward() {
        let (mut p, mut c) = user();
        let mut last = 0;
        for step in 0..20u32 {
            let (n, v) = c.tick();
            let name = format!("c{}", step % 3);
            let t = if step % 2 == 0 {
                Some(p.connect(id(&name), step % 4 == 0, n, v))
            } else {
                p.disconnect(&id(&name), n, v)
            };
            if t.is_some() {
                assert!(p.version() > last);
                last = p.version();
            }
        }
    }
}
