//! `received` (docs/protocol.md 2.2.1) end to end, against the real server
//! on 127.0.0.1:0: an id the client reports is forgotten by the server, so
//! resending it runs the request again, while an id it must not report
//! (an error, an ack nobody took) still replays its outcome.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pubsub_client::{
    Client, ClientConfig, ErrorCode, PreparedRequest, ReconnectPolicy, RequestKind, Status,
};
use pubsub_server::{
    DevAuth, HandlerError, RunningServer, Server, ServerConfig, UserId, handler_fn,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

/// How many times the handler ran, by action type.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<String, usize>>>);

impl Calls {
    fn of(&self, ty: &str) -> usize {
        self.0.lock().unwrap().get(ty).copied().unwrap_or(0)
    }

    /// Counts a call; returns how many there were of `ty` before it.
    fn count(&self, ty: &str) -> usize {
        let mut calls = self.0.lock().unwrap();
        let n = calls.entry(ty.to_owned()).or_default();
        *n += 1;
        *n - 1
    }
}

struct TestServer {
    running: RunningServer,
    url: String,
    calls: Calls,
}

/// A server whose handler answers `{"call": n}`, n counting per action type
/// from 0; `REFUSE` fails for good and `SLOW` takes half a second.
async fn start() -> TestServer {
    let calls = Calls::default();
    let counted = calls.clone();
    let config = ServerConfig {
        handler_timeout_ms: 2_000,
        shutdown_timeout_ms: 3_000,
        // The bursts below are not what is under test.
        max_requests_per_sec: 0,
        ..ServerConfig::default()
    };
    let server = Server::builder()
        .config(config)
        .authenticator(DevAuth)
        .node_id("test")
        .handler(handler_fn(move |_ctx, action| {
            let ty = action.action_type().to_owned();
            let n = counted.count(&ty);
            async move {
                match ty.as_str() {
                    "REFUSE" => Err(HandlerError::new("refused")),
                    "SLOW" => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Ok(json!({"call": n}))
                    }
                    _ => Ok(json!({"call": n})),
                }
            }
        }))
        .build()
        .unwrap();
    let running = server.bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", running.local_addr());
    TestServer {
        running,
        url,
        calls,
    }
}

fn config(url: &str, user: &str) -> ClientConfig {
    ClientConfig::new(url)
        .user(user)
        .request_timeout(WAIT)
        .reconnect(ReconnectPolicy {
            enabled: true,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
        })
}

async fn connect(config: ClientConfig) -> Client {
    tokio::time::timeout(WAIT, Client::connect(config))
        .await
        .unwrap()
        .unwrap()
}

fn prepare(client: &Client, ty: &str) -> PreparedRequest {
    client
        .prepare(RequestKind::SendToServer, None, &json!({"type": ty}))
        .unwrap()
}

/// Sends `request` (again, if it was sent before) and returns the `call` it got.
async fn call(client: &Client, request: &PreparedRequest) -> u64 {
    let result: Value = client.request(request.clone()).await.unwrap();
    result["call"].as_u64().unwrap()
}

#[tokio::test]
async fn an_acked_request_is_reported_by_the_next_one_so_a_resend_runs_again() {
    let server = start().await;
    let client = connect(config(&server.url, "alice")).await;
    let a = prepare(&client, "A");
    let b = prepare(&client, "B");
    assert_eq!(call(&client, &a).await, 0);
    // B reports A's ack: the server forgets A's outcome.
    assert_eq!(call(&client, &b).await, 0);
    assert_eq!(
        call(&client, &a).await,
        1,
        "A was reported, so it ran again"
    );
    assert_eq!((server.calls.of("A"), server.calls.of("B")), (2, 1));
}

#[tokio::test]
async fn an_error_is_never_reported_so_its_retry_replays() {
    let server = start().await;
    let client = connect(config(&server.url, "alice")).await;
    let e = client
        .send_to_server(&json!({"type": "REFUSE"}))
        .await
        .unwrap_err();
    assert!(!e.retryable);
    client
        .send_to_server(&json!({"type": "OTHER"}))
        .await
        .unwrap();
    let again = client.retry(&e).await.unwrap_err();
    assert_eq!((again.code, again.message), (e.code, e.message));
    assert_eq!(
        server.calls.of("REFUSE"),
        1,
        "the retry was answered from memory"
    );
}

#[tokio::test]
async fn an_ack_arriving_after_its_caller_timed_out_is_not_reported() {
    let server = start().await;
    let client =
        connect(config(&server.url, "alice").request_timeout(Duration::from_millis(150))).await;
    let e = client
        .send_to_server(&json!({"type": "SLOW"}))
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::RequestTimeout));
    // The late ack arrives; then a request that would carry it if it were queued.
    tokio::time::sleep(Duration::from_millis(700)).await;
    client
        .send_to_server(&json!({"type": "OTHER"}))
        .await
        .unwrap();
    assert_eq!(client.retry(&e).await.unwrap(), json!({"call": 0}));
    assert_eq!(
        server.calls.of("SLOW"),
        1,
        "the retry was not processed again"
    );
}

/// One request of `kind` that is not a messaging request.
async fn control(client: &Client, kind: &str) {
    match kind {
        "join" => drop(client.join("room").await.unwrap()),
        "leave" => drop(client.leave("room").await.unwrap()),
        "watch" => drop(client.watch("bob").await.unwrap()),
        "presence" => drop(client.presence("bob").await.unwrap()),
        "unwatch" => drop(client.unwatch("bob").await.unwrap()),
        other => unreachable!("{other}"),
    }
}

#[tokio::test]
async fn every_request_kind_reports_acks_but_activity_does_not() {
    let server = start().await;
    let client = connect(config(&server.url, "alice")).await;
    for kind in ["join", "leave", "watch", "presence", "unwatch"] {
        let a = prepare(&client, "A");
        let first = call(&client, &a).await;
        // Not requests: had they taken A's report, the server would have
        // ignored it there and A would replay below.
        client.set_active(false).await.unwrap();
        client.set_active(true).await.unwrap();
        control(&client, kind).await;
        assert_eq!(call(&client, &a).await, first + 1, "{kind} reported A");
    }
}

#[tokio::test]
async fn more_acks_than_one_frame_holds_go_out_on_the_next_requests() {
    let server = start().await;
    let client = connect(config(&server.url, "alice")).await;
    let burst: Vec<PreparedRequest> = (0..150).map(|_| prepare(&client, "BURST")).collect();
    let sends = burst.iter().map(|r| client.request(r.clone()));
    for result in futures_util::future::join_all(sends).await {
        result.unwrap();
    }
    // More than 64 ids in one frame would fail these with invalid_field.
    for _ in 0..3 {
        client
            .send_to_server(&json!({"type": "NEXT"}))
            .await
            .unwrap();
    }
    let sends = burst.iter().map(|r| call(&client, r));
    let calls = futures_util::future::join_all(sends).await;
    assert!(
        calls.iter().all(|&n| n >= 150),
        "every id was reported: {calls:?}"
    );
    assert_eq!(server.calls.of("BURST"), 300);
}

#[tokio::test]
async fn acks_queued_when_the_connection_drops_are_reported_on_the_next() {
    let server = start().await;
    let mut cfg = config(&server.url, "alice");
    // A frame from the server larger than this breaks the connection.
    cfg.max_message_bytes = 4096;
    let client = connect(cfg).await;
    let mut statuses = client.status_changes();
    let a = prepare(&client, "A");
    assert_eq!(call(&client, &a).await, 0);

    let big = json!({"type": "BIG", "pad": "x".repeat(8192)});
    server
        .running
        .handle()
        .send_to_user(&UserId::new("alice").unwrap(), &big)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, statuses.wait_for(|s| *s == Status::Connecting))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, statuses.wait_for(|s| s.is_connected()))
        .await
        .unwrap()
        .unwrap();

    // The first request on the new connection reports A.
    client
        .send_to_server(&json!({"type": "OTHER"}))
        .await
        .unwrap();
    assert_eq!(
        call(&client, &a).await,
        1,
        "A was reported after the reconnect"
    );
}
