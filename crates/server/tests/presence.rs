//! Presence over real sockets: a user's status from all of their tabs.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use parking_lot::Mutex;
use pubsub_client::{Client, Incoming, Status};
use pubsub_server::{
    ClientInfo, Presence, PresenceHooks, SeeOnlySelf, ServerConfig, StatusChange, UserId,
    UserStatus,
};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const GRACE_MS: u64 = 300;

fn config() -> ServerConfig {
    ServerConfig {
        presence_grace_ms: GRACE_MS,
        ..test_config()
    }
}

async fn start() -> TestServer {
    TestServer::start_with(config(), |b| b).await
}

fn presence(event: &Incoming) -> Presence {
    serde_json::from_value(event.action.clone()).unwrap()
}

async fn next_event(rx: &mut UnboundedReceiver<Incoming>) -> Value {
    recv(rx).await.action
}

async fn server_presence(server: &TestServer, user: &str) -> Presence {
    let users = [UserId::new(user).unwrap()];
    server
        .running
        .handle()
        .presence(&users)
        .await
        .unwrap()
        .remove(0)
}

#[tokio::test]
async fn welcome_carries_the_users_presence() {
    let server = start().await;
    let a = server.client("alice").await;
    let p = a.user_presence().unwrap();
    assert_eq!((p.status, p.clients), (UserStatus::Online, 1));
    assert_eq!(p.previous_status, Some(UserStatus::Offline));
    assert_eq!(p.active_client, a.client_id());
    assert!(p.online_since_ts.is_some());
    assert_eq!(a.status(), Status::Online);
}

#[tokio::test]
async fn closing_one_of_two_tabs_keeps_the_user_online_and_moves_the_active_client() {
    let server = start().await;
    let tab1 = server.client("alice").await;
    let mut events = inbox(&tab1, "*");
    let tab2 = server.client("alice").await;
    let tab2_id = tab2.client_id().unwrap();

    let connected = next_event(&mut events).await;
    assert_eq!(connected["type"], "@pubsub/CLIENT_CONNECTED");
    assert_eq!(
        (connected["client"].as_str(), connected["clients"].as_u64()),
        (Some(tab2_id.as_str()), Some(2))
    );
    let moved = next_event(&mut events).await;
    assert_eq!(moved["type"], "@pubsub/ACTIVE_CLIENT_CHANGE");
    assert_eq!(moved["activeClient"], json!(tab2_id));

    tab2.close();
    let gone = next_event(&mut events).await;
    assert_eq!(gone["type"], "@pubsub/CLIENT_DISCONNECTED");
    assert_eq!(gone["clients"], 1);
    let back = next_event(&mut events).await;
    assert_eq!(back["type"], "@pubsub/ACTIVE_CLIENT_CHANGE");
    assert_eq!(back["activeClient"], json!(tab1.client_id().unwrap()));
    assert_eq!(back["previousActiveClient"], json!(tab2_id));
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 200)).await;
    assert_silent(&mut events).await;
    let p = server_presence(&server, "alice").await;
    assert_eq!((p.status, p.clients), (UserStatus::Online, 1));
}

#[tokio::test]
async fn all_tabs_idle_is_away_and_one_active_tab_is_online_again() {
    let server = start().await;
    let tab1 = server.client("alice").await;
    let tab2 = server.client("alice").await;
    let watcher = server.client("bob").await;
    let mut watched = inbox(&watcher, "@pubsub/PRESENCE_CHANGE");
    watcher.watch(["alice"]).await.unwrap();

    tab1.set_active(false).await.unwrap();
    assert_eq!(
        server_presence(&server, "alice").await.status,
        UserStatus::Online,
        "tab2 is still active"
    );
    let before = pubsub_server::stats::StatsSnapshot::clone(&server.running.handle().stats());
    let p = tab2.set_active(false).await.unwrap();
    assert_eq!(p.status, UserStatus::Away);
    assert!(p.away_since_ts.is_some());
    assert_eq!(p.last_online_ts, p.away_since_ts);
    assert!(before.presence.users_by_status["ONLINE"] >= 1);

    let change = presence(&recv(&mut watched).await);
    assert_eq!(
        (change.status, change.previous_status),
        (UserStatus::Away, Some(UserStatus::Online))
    );
    tab1.wait_for_status(Status::Away).await;
    assert_eq!(tab2.status(), Status::Away);

    let p = tab1.set_active(true).await.unwrap();
    assert_eq!(p.status, UserStatus::Online);
    assert_eq!(p.away_since_ts, None);
    assert_eq!(p.active_client, tab1.client_id());
    let change = presence(&recv(&mut watched).await);
    assert_eq!(change.status, UserStatus::Online);
    tab2.wait_for_status(Status::Online).await;
}

#[tokio::test]
async fn a_reload_inside_the_grace_period_shows_no_offline_anywhere() {
    let server = start().await;
    let watcher = server.client("bob").await;
    let mut watched = inbox(&watcher, "@pubsub/PRESENCE_CHANGE");
    let tab = server.client("alice").await;
    watcher.watch(["alice"]).await.unwrap();

    tab.close();
    tokio::time::sleep(Duration::from_millis(GRACE_MS / 3)).await;
    let reloaded = server.client("alice").await;
    assert_eq!(reloaded.user_presence().unwrap().status, UserStatus::Online);
    tokio::time::sleep(Duration::from_millis(GRACE_MS * 2)).await;
    assert_silent(&mut watched).await;
    assert_eq!(
        server_presence(&server, "alice").await.status,
        UserStatus::Online
    );
}

#[tokio::test]
async fn the_last_tab_closing_goes_offline_after_the_grace_period() {
    let server = start().await;
    let watcher = server.client("bob").await;
    let mut watched = inbox(&watcher, "@pubsub/PRESENCE_CHANGE");
    let tab = server.client("alice").await;
    watcher.watch(["alice"]).await.unwrap();

    let closed_at = Instant::now();
    tab.close();
    let change = presence(&recv(&mut watched).await);
    let waited = closed_at.elapsed();
    assert_eq!(
        (change.status, change.previous_status),
        (UserStatus::Offline, Some(UserStatus::Online))
    );
    assert!(waited >= Duration::from_millis(GRACE_MS), "{waited:?}");
    assert!(
        waited < Duration::from_millis(GRACE_MS + 1000),
        "{waited:?}"
    );
    let last_online = change.last_online_ts.unwrap();
    let offline_at = pubsub_server_now_ms();
    assert!(
        offline_at - last_online >= GRACE_MS - 50,
        "lastOnlineTs is when the tab left"
    );
    assert_eq!(
        (change.clients, change.online_since_ts, change.active_client),
        (0, None, None)
    );
    assert_eq!(
        watcher.presence_of("alice").unwrap().status,
        UserStatus::Offline
    );
}

fn pubsub_server_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_killed_connection_goes_offline_within_the_heartbeat_bound() {
    let config = ServerConfig {
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: 100,
        presence_grace_ms: 200,
        ..test_config()
    };
    let server = TestServer::start_with(config, |b| b).await;
    let watcher = server.client("bob").await;
    let mut watched = inbox(&watcher, "@pubsub/PRESENCE_CHANGE");
    // A raw socket that stops answering, as a killed browser would: no close
    // frame, no pongs. (The Rust client would answer pings from its task.)
    // It is silent from the moment it connects, and the server's silence
    // clock starts when its session does, so the bound is measured from
    // just before connecting: an instant taken later (after the watch
    // below) would sit inside the bound and let the lower check fail.
    let killed_at = Instant::now();
    let mut ghost = Raw::connect(&server.url, "ghost").await;
    watcher.watch(["ghost"]).await.unwrap();
    let _reader = tokio::spawn(async move { while ghost.ws.next().await.is_some() {} });

    let change = presence(&recv(&mut watched).await);
    assert_eq!(change.status, UserStatus::Offline);
    let elapsed = killed_at.elapsed();
    // Documented bound: heartbeatMs + heartbeatTimeoutMs + grace = 400 ms.
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1200), "{elapsed:?}");
}

#[tokio::test]
async fn a_watcher_sees_every_transition_in_order_with_increasing_versions() {
    let server = start().await;
    let watcher = server.client("bob").await;
    let mut watched = inbox(&watcher, "@pubsub/PRESENCE_CHANGE");
    let initial = watcher.watch(["alice"]).await.unwrap();
    assert_eq!(initial["alice"].status, UserStatus::Offline);

    let tab1 = server.client("alice").await; // OFFLINE -> ONLINE
    let tab2 = server.client("alice").await; // no status change
    tab1.set_active(false).await.unwrap(); // no status change (tab2 active)
    tab2.set_active(false).await.unwrap(); // ONLINE -> AWAY
    tab2.set_active(true).await.unwrap(); // AWAY -> ONLINE
    tab1.close(); // no status change
    tab2.set_active(false).await.unwrap(); // ONLINE -> AWAY
    tab2.close(); // AWAY ... -> OFFLINE after grace

    let expected = [
        (UserStatus::Online, UserStatus::Offline),
        (UserStatus::Away, UserStatus::Online),
        (UserStatus::Online, UserStatus::Away),
        (UserStatus::Away, UserStatus::Online),
        (UserStatus::Offline, UserStatus::Away),
    ];
    let mut last_version = initial["alice"].version;
    for (status, previous) in expected {
        let p = presence(&recv(&mut watched).await);
        assert_eq!((p.status, p.previous_status), (status, Some(previous)));
        assert!(p.version > last_version, "versions strictly increase");
        last_version = p.version;
    }
    tokio::time::sleep(Duration::from_millis(GRACE_MS)).await;
    assert_silent(&mut watched).await;
}

#[tokio::test]
async fn presence_of_unknown_users_is_offline_with_version_zero() {
    let server = start().await;
    let c = server.client("bob").await;
    let _alice = server.client("alice").await;
    let answer = c.presence(["nobody", "alice"]).await.unwrap();
    let nobody = &answer["nobody"];
    assert_eq!(
        (nobody.status, nobody.version, nobody.clients),
        (UserStatus::Offline, 0, 0)
    );
    assert_eq!(nobody.previous_status, None);
    assert_eq!(answer["alice"].status, UserStatus::Online);
}

#[tokio::test]
async fn watching_is_bounded_and_policy_controlled() {
    let config = ServerConfig {
        max_watched_users: 3,
        ..config()
    };
    let server = TestServer::start_with(config.clone(), |b| b).await;
    let c = server.client("bob").await;
    c.watch(["a", "b"]).await.unwrap();
    let e = c.watch(["c", "d"]).await.unwrap_err();
    assert_eq!(
        (e.code, e.name.as_str(), e.retryable),
        (1200, "too_many_watches", false)
    );
    c.watch(["a", "c"]).await.unwrap();
    assert_eq!(c.unwatch(["a"]).await.unwrap(), 2);

    let private = TestServer::start_with(config, |b| b.presence_policy(SeeOnlySelf)).await;
    let c = private.client("bob").await;
    let e = c.watch(["alice"]).await.unwrap_err();
    assert_eq!((e.code, e.name.as_str()), (1100, "forbidden"));
    let e = c.presence(["alice"]).await.unwrap_err();
    assert_eq!(e.code, 1100);
    assert_eq!(
        c.presence(["bob"]).await.unwrap()["bob"].status,
        UserStatus::Online
    );
}

#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl PresenceHooks for Recorder {
    async fn on_connect(&self, client: &ClientInfo, presence: &Presence) {
        self.log
            .lock()
            .push(format!("connect {} {}", client.user, presence.clients));
    }
    async fn on_disconnect(&self, client: &ClientInfo, presence: &Presence) {
        self.log
            .lock()
            .push(format!("disconnect {} {}", client.user, presence.clients));
    }
    async fn on_status_change(&self, change: &StatusChange) {
        self.log.lock().push(format!(
            "status {} {}->{}",
            change.new.user,
            change.old.status.as_str(),
            change.new.status.as_str()
        ));
    }
}

#[tokio::test]
async fn hooks_see_connects_disconnects_and_status_changes() {
    let recorder = Arc::new(Recorder::default());
    let hooks = recorder.clone();
    let server = TestServer::start_with(config(), move |b| b.presence_hooks(hooks)).await;
    let tab = server.client("alice").await;
    tab.set_active(false).await.unwrap();
    tab.close();
    eventually(|| recorder.log.lock().len() >= 5).await;
    let log = recorder.log.lock().clone();
    let expected = [
        "status alice OFFLINE->ONLINE",
        "connect alice 1",
        "status alice ONLINE->AWAY",
        "disconnect alice 0",
        "status alice AWAY->OFFLINE",
    ];
    // Status changes and connection events come from two sources; each
    // source's order is guaranteed, so compare them separately.
    let of = |prefixes: &[&str], list: &[String]| -> Vec<String> {
        list.iter()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .cloned()
            .collect()
    };
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(of(&["status"], &log), of(&["status"], &expected));
    assert_eq!(
        of(&["connect", "disconnect"], &log),
        of(&["connect", "disconnect"], &expected)
    );
}

#[tokio::test]
async fn stats_report_presence() {
    let server = start().await;
    let _a1 = server.client("alice").await;
    let _a2 = server.client("alice").await;
    let b = server.client("bob").await;
    b.set_active(false).await.unwrap();
    let stats = stats(&server).await;
    assert_eq!(stats["presence"]["usersByStatus"]["ONLINE"], 1);
    assert_eq!(stats["presence"]["usersByStatus"]["AWAY"], 1);
    assert_eq!(stats["presence"]["clientsPerUser"]["2"], 1);
    assert_eq!(stats["presence"]["clientsPerUser"]["1"], 1);
    assert!(stats["presence"]["eventsSent"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn the_rust_client_rewatches_after_reconnecting() {
    let server = start().await;
    let addr = server.running.local_addr().to_string();
    let watcher = server.client("bob").await;
    let mut watched = inbox(&watcher, "@pubsub/PRESENCE_CHANGE");
    watcher.watch(["alice"]).await.unwrap();
    watcher.set_active(false).await.unwrap();
    assert!(server.running.shutdown().await.clean);
    watcher.wait_for_status(Status::Connecting).await;

    let server = TestServer::start_on(&addr, config(), |b| b).await;
    tokio::time::timeout(WAIT, watcher.wait_for_status(Status::Away))
        .await
        .expect("reconnects, still idle");
    // The watch is back: alice coming online reaches the watcher.
    let handle = server.running.handle();
    eventually(|| handle.stats().messages_in.watch >= 1).await;
    let _alice = server.client("alice").await;
    let p = presence(&recv(&mut watched).await);
    assert_eq!((p.user.as_str(), p.status), ("alice", UserStatus::Online));
    assert_eq!(
        watcher.presence_of("alice").unwrap().status,
        UserStatus::Online
    );
}

/// 1,000 users × 3 tabs connecting, going idle and disconnecting at random;
/// afterwards every user's status, active client and client count must equal
/// a simple model of the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_churn_matches_a_model() {
    const USERS: usize = 1000;
    let server = start().await;
    let mut rng = fastrand::Rng::with_seed(7);

    struct Tab {
        client: Client,
        active: bool,
        recency: u64,
    }
    struct ModelUser {
        tabs: Vec<Tab>,
        recency: u64,
    }
    let mut users: Vec<ModelUser> = (0..USERS)
        .map(|_| ModelUser {
            tabs: Vec::new(),
            recency: 0,
        })
        .collect();

    // Connect three tabs per user.
    for (u, user) in users.iter_mut().enumerate() {
        for _ in 0..3 {
            let client = server.client(&format!("u{u}")).await;
            user.recency += 1;
            user.tabs.push(Tab {
                client,
                active: true,
                recency: user.recency,
            });
        }
    }
    // Random activity changes and disconnects.
    for _ in 0..3000 {
        let user = &mut users[rng.usize(..USERS)];
        if user.tabs.is_empty() {
            continue;
        }
        let t = rng.usize(..user.tabs.len());
        match rng.u8(..10) {
            0..=5 => {
                let active = rng.bool();
                user.tabs[t].client.set_active(active).await.unwrap();
                // Reporting "active" (again or anew) makes a tab the most
                // recently active one.
                if active {
                    user.recency += 1;
                    user.tabs[t].recency = user.recency;
                }
                user.tabs[t].active = active;
            }
            _ => {
                let tab = user.tabs.remove(t);
                tab.client.close();
            }
        }
    }
    let expected_clients: usize = users.iter().map(|u| u.tabs.len()).sum();
    let handle = server.running.handle();
    eventually(|| handle.stats().clients == expected_clients).await;
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 300)).await;

    let ids: Vec<UserId> = (0..USERS)
        .map(|u| UserId::new(format!("u{u}")).unwrap())
        .collect();
    let actual: HashMap<UserId, Presence> = handle
        .presence(&ids)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.user.clone(), p))
        .collect();
    for (u, user) in users.iter().enumerate() {
        let p = &actual[&ids[u]];
        let status = if user.tabs.is_empty() {
            UserStatus::Offline
        } else if user.tabs.iter().any(|t| t.active) {
            UserStatus::Online
        } else {
            UserStatus::Away
        };
        let active_client = user
            .tabs
            .iter()
            .filter(|t| t.active)
            .max_by_key(|t| t.recency)
            .or_else(|| user.tabs.iter().max_by_key(|t| t.recency))
            .and_then(|t| t.client.client_id());
        assert_eq!(p.status, status, "user u{u}");
        assert_eq!(p.clients, user.tabs.len(), "user u{u}");
        assert_eq!(p.active_client, active_client, "user u{u}");
    }
}
