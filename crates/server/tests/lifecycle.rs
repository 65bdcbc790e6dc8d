//! Connecting, reconnecting, shutting down, stats and extra routes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use pubsub_client::{Client, ErrorCode, Status};
use pubsub_server::axum::{Router, routing::get};
use pubsub_server::{ServerConfig, handler_fn};
use serde_json::json;

async fn http_get(url: &str) -> (u16, String) {
    // A minimal HTTP/1.1 GET over a real socket, to keep test dependencies small.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn stats_endpoint_and_application_routes() {
    let server = TestServer::start(|b| {
        b.routes(Router::new().route("/hello", get(|| async { "hi from the app" })))
    })
    .await;
    let a1 = server.client("A").await;
    let _a2 = server.client("A").await;
    let _b = server.client("B").await;
    a1.broadcast(&json!({"type": "X"})).await.unwrap();
    a1.send_to_user(&json!({"type": "X"}), ["B", "nobody"])
        .await
        .unwrap();
    let _ = a1.send_to_server(&json!({"type": "X"})).await;

    let (status, body) = http_get(&server.http("/stats")).await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["users"], 2);
    assert_eq!(stats["clients"], 3);
    assert_eq!(stats["messagesIn"]["broadcast"], 1);
    assert_eq!(stats["messagesIn"]["sendToUser"], 1);
    assert_eq!(stats["messagesIn"]["sendToServer"], 1);
    assert_eq!(
        stats["messagesOut"]["message"], 2,
        "one to A's other tab, one to B"
    );
    assert_eq!(stats["messagesOut"]["ack"], 2);
    assert_eq!(stats["errors"]["no_handler"], 1);
    assert_eq!(stats["connections"]["opened"], 3);
    assert_eq!(stats["engine"], "memory");
    assert_eq!(stats["auth"], "dev");
    assert!(stats["uptimeSeconds"].as_f64().unwrap() > 0.0);

    assert_eq!(
        http_get(&server.http("/hello")).await,
        (200, "hi from the app".into())
    );
    assert_eq!(http_get(&server.http("/health")).await.0, 200);
    // A plain GET on the WebSocket path explains itself instead of hanging.
    assert_eq!(http_get(&server.http("/ws")).await.0, 426);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_calls_answer_then_closes_with_1012() {
    let server = TestServer::start(|b| {
        b.handler(handler_fn(|_ctx, _action| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(json!("finished"))
        }))
    })
    .await;
    let addr = server.running.local_addr();
    let client = server.client("A").await;
    let mut raw = Raw::connect(&server.url, "B").await;
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.send_to_server(&json!({"type": "SLOW"})).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let report = server.running.shutdown().await;
    assert!(report.clean, "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(in_flight.await.unwrap().unwrap(), json!("finished"));
    assert_eq!(raw.expect_close().await.0, 1012);
    // The listener is gone: nobody new gets in.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // 1012 means "reconnect": the client keeps trying rather than stopping.
    assert_ne!(client.status(), Status::Offline);
}

#[tokio::test]
async fn a_handler_call_outliving_the_shutdown_timeout_is_cut_off_at_the_timeout() {
    let config = ServerConfig {
        shutdown_timeout_ms: 400,
        ..test_config()
    };
    let server = TestServer::start_with(config, |b| {
        b.handler(handler_fn(|_ctx, _action| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(json!("too late"))
        }))
    })
    .await;
    let client = server.client("A").await;
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.send_to_server(&json!({"type": "STUCK"})).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let report = server.running.shutdown().await;
    let took = started.elapsed();
    // The connection waits for its call for the shutdown timeout, then
    // closes with 1012 ("restarting"): the call fails retryably.
    assert!(report.clean, "{report:?}");
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    let e = in_flight.await.unwrap().unwrap_err();
    assert!(e.retryable, "{e:?}");
    assert_eq!(client.last_close().unwrap().0, 1012);
}

#[tokio::test]
async fn the_client_reconnects_after_a_restart_and_pending_sends_fail_retryably() {
    let config = test_config();
    let server = TestServer::start_with(config.clone(), |b| {
        b.handler(handler_fn(|_ctx, _action| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(json!(null))
        }))
    })
    .await;
    let addr = server.running.local_addr();
    let client = server.client("A").await;
    let first_id = client.client_id().unwrap();
    let mut statuses = client.status_changes();

    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.send_to_server(&json!({"type": "NEVER"})).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The application kicks the client while its request is pending.
    server
        .running
        .handle()
        .disconnect_client(&first_id, "test")
        .await
        .unwrap();
    let e = pending.await.unwrap().unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::Disconnected));
    assert!(e.retryable);
    // 1000 from the server means "stop".
    statuses.wait_for(|s| *s == Status::Offline).await.unwrap();
    assert_eq!(client.last_close().unwrap().0, 1000);
    let e = client.broadcast(&json!({"type": "X"})).await.unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::ClientClosed));
    assert!(server.running.shutdown().await.clean);

    // A client that lost its server comes back when a new one starts on the same port.
    let server = TestServer::start_on(&addr.to_string(), config.clone(), |b| b).await;
    let client = server.client("A").await;
    let before = client.client_id().unwrap();
    let report = server.running.shutdown().await;
    assert!(report.clean);
    client.wait_for_status(Status::Connecting).await;
    let e = client.broadcast(&json!({"type": "X"})).await.unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::NotConnected));
    assert!(e.retryable);

    let server = TestServer::start_on(&addr.to_string(), config, |b| b).await;
    tokio::time::timeout(WAIT, client.wait_for_status(Status::Online))
        .await
        .unwrap();
    assert_ne!(
        client.client_id().unwrap(),
        before,
        "a new connection gets a new client id"
    );
    let other = server.client("A").await;
    let mut rx = inbox(&other, "BACK");
    assert_eq!(
        client
            .broadcast(&json!({"type": "BACK"}))
            .await
            .unwrap()
            .delivered,
        1
    );
    recv(&mut rx).await;
}

#[tokio::test]
async fn a_request_with_no_answer_times_out_on_the_client() {
    let config = ServerConfig {
        handler_timeout_ms: 10_000,
        ..test_config()
    };
    let server = TestServer::start_with(config, |b| {
        b.handler(handler_fn(|_ctx, _action| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(json!(null))
        }))
    })
    .await;
    let client = Client::connect(
        client_config(&server.url, "A").request_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let e = client
        .send_to_server(&json!({"type": "SLOW"}))
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::RequestTimeout));
    assert!(e.retryable);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn status_changes_are_observable_and_subscribable() {
    let server = TestServer::start(|b| b).await;
    let client = server.client("A").await;
    assert_eq!(client.status(), Status::Online);
    assert!(client.is_connected());
    let mut events = inbox(&client, pubsub_client::STATUS_CHANGE);
    let subscription =
        client.subscribe("NEVER", |_| panic!("unsubscribed callbacks are not called"));
    subscription.unsubscribe();
    let other = server.client("A").await;
    other.broadcast(&json!({"type": "NEVER"})).await.unwrap();

    client.close();
    let event = recv(&mut events).await;
    assert_eq!(event.action["status"], "OFFLINE");
    assert_eq!(event.action["previousStatus"], "ONLINE");
    assert_eq!(client.status(), Status::Offline);
}

#[tokio::test]
async fn the_server_drops_closed_clients_from_its_tables() {
    let server = TestServer::start(|b| b).await;
    let a = server.client("A").await;
    let b = server.client("B").await;
    assert_eq!(server.running.handle().users().await.unwrap().len(), 2);
    b.close();
    let handle = server.running.handle();
    eventually(|| handle.stats().clients == 1).await;
    let ack = a.send_to_user(&json!({"type": "X"}), "B").await.unwrap();
    assert!(!ack.get("B").unwrap().online);
}

#[tokio::test]
async fn a_large_topic_served_by_two_threads_gets_every_publication_in_order() {
    let server = TestServer::start_threads(2).await;
    let url = &server.url;
    // More members than a flusher writes per turn: each publication is a
    // sweep that the thread it arrives on shares with the other one.
    let mut members = Vec::new();
    for i in 0..300 {
        let member = Client::connect(client_config(url, &format!("m{i}")))
            .await
            .unwrap();
        member.join("big").await.unwrap();
        members.push(member);
    }
    let mut inboxes: Vec<_> = members.iter().map(|m| inbox(m, "N")).collect();
    let publisher = Client::connect(client_config(url, "publisher"))
        .await
        .unwrap();
    let publications = 20;
    for n in 0..publications {
        // Acknowledged before its sweep is written: the sweeps overlap.
        publisher
            .publish("big", &json!({"type": "N", "n": n}), false)
            .await
            .unwrap();
    }
    for rx in &mut inboxes {
        for n in 0..publications {
            assert_eq!(recv(rx).await.action["n"], n);
        }
    }
    let report = server.running.shutdown().await;
    assert!(report.clean, "{report:?}");
}

#[tokio::test]
async fn thread_per_core_serving_reaches_every_connection_and_shuts_down() {
    let server = TestServer::start_threads(3).await;
    let url = &server.url;
    // Enough connections that the kernel spreads them over all three threads.
    let mut clients = Vec::new();
    for i in 0..30 {
        clients.push(
            Client::connect(client_config(url, &format!("u{}", i % 10)))
                .await
                .unwrap(),
        );
    }
    let mut inboxes: Vec<_> = clients.iter().map(|c| inbox(c, "HELLO")).collect();
    let sender = Client::connect(client_config(url, "sender")).await.unwrap();
    let to: Vec<String> = (0..10).map(|u| format!("u{u}")).collect();
    let ack = sender
        .send_to_user(&json!({"type": "HELLO"}), to)
        .await
        .unwrap();
    assert_eq!(
        ack.recipients.values().map(|r| r.clients).sum::<usize>(),
        30
    );
    for rx in &mut inboxes {
        recv(rx).await;
    }
    // Presence across threads: u0's three tabs live on different threads.
    let p = sender.presence(["u0"]).await.unwrap();
    assert_eq!(p["u0"].clients, 3);

    let report = server.running.shutdown().await;
    assert!(report.clean, "{report:?}");
    for c in &clients {
        c.wait_for_status(Status::Connecting).await;
    }
}
