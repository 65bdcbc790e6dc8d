//! Topics over real sockets: join, publish, leave, policy, limits.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use pubsub_client::protocol::Via;
use pubsub_client::{ErrorCode, Status};
use pubsub_server::{HandlerError, ServerConfig, Topic, TopicPatterns, handler_fn};
use serde_json::json;

#[tokio::test]
async fn publish_reaches_every_member_but_the_sender_unless_echo() {
    let server = TestServer::start(|b| b).await;
    let a1 = server.client("A").await;
    let a2 = server.client("A").await;
    let b = server.client("B").await;
    let outsider = server.client("C").await;
    assert_eq!(a1.join("product:1234").await.unwrap(), 1);
    assert_eq!(a2.join("product:1234").await.unwrap(), 2);
    assert_eq!(b.join("product:1234").await.unwrap(), 3);
    assert_eq!(
        b.join("product:1234").await.unwrap(),
        3,
        "joining twice is harmless"
    );
    let mut rx: Vec<_> = [&a1, &a2, &b, &outsider]
        .iter()
        .map(|c| inbox(c, "PRICE"))
        .collect();

    assert_eq!(
        a1.publish("product:1234", &json!({"type": "PRICE", "v": 1}), false)
            .await
            .unwrap(),
        2
    );
    for r in &mut rx[1..3] {
        let m = recv(r).await;
        assert_eq!(m.via, Some(Via::Topic));
        assert_eq!(m.action["v"], 1);
        assert_eq!(m.from.as_ref().unwrap().user.as_str(), "A");
        assert_eq!(m.from.unwrap().client, a1.client_id().unwrap());
    }
    assert_silent(&mut rx[0]).await;
    assert_silent(&mut rx[3]).await;

    // echo includes the sender; publishing does not require membership.
    assert_eq!(
        a1.publish("product:1234", &json!({"type": "PRICE", "v": 2}), true)
            .await
            .unwrap(),
        3
    );
    assert_eq!(recv(&mut rx[0]).await.action["v"], 2);
    assert_eq!(
        outsider
            .publish("product:1234", &json!({"type": "PRICE", "v": 3}), false)
            .await
            .unwrap(),
        3
    );

    assert!(a2.leave("product:1234").await.unwrap());
    assert!(!a2.leave("product:1234").await.unwrap());
    assert_eq!(
        b.publish("product:1234", &json!({"type": "PRICE", "v": 4}), false)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn topic_messages_carry_the_topic_and_reach_subscribe_like_any_action() {
    let server = TestServer::start(|b| b).await;
    let member = server.client("m").await;
    member.join("room:42").await.unwrap();
    let mut by_type = inbox(&member, "TYPING");
    let publisher = server.client("p").await;
    publisher
        .publish("room:42", &json!({"type": "TYPING", "who": "p"}), false)
        .await
        .unwrap();
    let m = recv(&mut by_type).await;
    assert_eq!(m.action, json!({"type": "TYPING", "who": "p"}));
    assert_eq!(m.via, Some(Via::Topic));
}

#[tokio::test]
async fn a_retried_publish_is_delivered_once() {
    let server = TestServer::start(|b| b).await;
    let member = server.client("m").await;
    member.join("t").await.unwrap();
    let mut rx = inbox(&member, "*");
    let mut raw = Raw::connect(&server.url, "p").await;
    let frame = json!({"kind": "publish", "id": "pub-1", "topic": "t", "action": {"type": "X"}});
    raw.send_json(frame.clone()).await;
    let first = raw.next().await;
    raw.send_json(frame).await;
    assert_eq!(raw.next().await, first);
    assert_eq!(first["result"]["delivered"], 1);
    recv(&mut rx).await;
    assert_silent(&mut rx).await;
}

#[tokio::test]
async fn the_policy_decides_who_joins_and_publishes() {
    let policy = TopicPatterns {
        join: vec!["public:*".into(), "user:{user}:*".into()],
        publish: vec!["user:{user}:*".into()],
    };
    let server = TestServer::start(move |b| b.topic_policy(policy)).await;
    let alice = server.client("alice").await;
    alice.join("public:news").await.unwrap();
    alice.join("user:alice:inbox").await.unwrap();
    let e = alice.join("user:bob:inbox").await.unwrap_err();
    assert_eq!(
        (e.code, e.name.as_str(), e.retryable),
        (1100, "forbidden", false)
    );
    let e = alice
        .publish("public:news", &json!({"type": "X"}), false)
        .await
        .unwrap_err();
    assert_eq!(e.code, 1100);
    assert_eq!(
        alice
            .publish("user:alice:inbox", &json!({"type": "X"}), true)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        alice.topics(),
        vec!["public:news".to_owned(), "user:alice:inbox".to_owned()]
    );
}

#[tokio::test]
async fn the_server_and_its_handler_publish_and_count_members() {
    let server = TestServer::start(|b| {
        b.handler(handler_fn(|ctx, action| async move {
            let topic = Topic::new(
                action.parse::<serde_json::Value>().unwrap()["topic"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
            let members = ctx
                .topic_members(&topic)
                .await
                .map_err(|e| HandlerError::new(e.to_string()))?;
            let delivered = ctx
                .publish(&topic, &json!({"type": "ANNOUNCE", "members": members}))
                .await
                .map_err(|e| HandlerError::new(e.to_string()))?;
            Ok(json!({"members": members, "delivered": delivered}))
        }))
    })
    .await;
    let m1 = server.client("m1").await;
    let m2 = server.client("m2").await;
    m1.join("news").await.unwrap();
    m2.join("news").await.unwrap();
    let mut rx = inbox(&m2, "ANNOUNCE");
    let result = m1
        .send_to_server(&json!({"type": "COUNT", "topic": "news"}))
        .await
        .unwrap();
    assert_eq!(result, json!({"members": 2, "delivered": 2}));
    let m = recv(&mut rx).await;
    assert_eq!(m.via, Some(Via::Topic));
    assert!(m.from.is_none());

    let handle = server.running.handle();
    let news = Topic::new("news").unwrap();
    assert_eq!(
        handle
            .publish(&news, &json!({"type": "ANNOUNCE", "members": 0}))
            .await
            .unwrap(),
        2
    );
    assert_eq!(handle.topic_members(&news).await.unwrap(), 2);
    assert_eq!(
        handle
            .send_to_all(&json!({"type": "EVERYONE"}))
            .await
            .unwrap(),
        2
    );

    let stats = stats(&server).await;
    assert_eq!(stats["topics"]["topics"], 1);
    assert_eq!(stats["topics"]["members"], 2);
    assert_eq!(stats["topics"]["publishes"], 2);
    assert_eq!(stats["topics"]["deliveries"], 4);
}

#[tokio::test]
async fn names_and_counts_are_limited() {
    let config = ServerConfig {
        max_topics: 2,
        ..test_config()
    };
    let server = TestServer::start_with(config, |b| b).await;
    let c = server.client("c").await;
    let e = c.join("has space").await.unwrap_err();
    assert_eq!(
        e.error_code(),
        Some(ErrorCode::InvalidTopic),
        "checked locally"
    );
    let mut raw = Raw::connect(&server.url, "r").await;
    raw.send_json(json!({"kind": "join", "id": "j", "topic": "x".repeat(201)}))
        .await;
    assert_eq!(raw.next().await["code"], 1300);

    c.join("one").await.unwrap();
    c.join("two").await.unwrap();
    let e = c.join("three").await.unwrap_err();
    assert_eq!((e.code, e.name.as_str()), (1301, "too_many_topics"));
    c.leave("one").await.unwrap();
    c.join("three").await.unwrap();
}

#[tokio::test]
async fn empty_topics_cost_nothing_and_members_leave_when_they_disconnect() {
    let server = TestServer::start(|b| b).await;
    let c = server.client("c").await;
    c.join("ephemeral").await.unwrap();
    assert_eq!(stats(&server).await["topics"]["topics"], 1);
    c.close();
    let handle = server.running.handle();
    eventually(|| handle.stats().topics.topics == 0).await;
    assert_eq!(handle.stats().topics.members, 0);
}

#[tokio::test]
async fn the_rust_client_rejoins_its_topics_after_reconnecting() {
    let server = TestServer::start(|b| b).await;
    let addr = server.running.local_addr().to_string();
    let member = server.client("m").await;
    member.join("room:1").await.unwrap();
    let mut rx = inbox(&member, "HELLO");
    assert!(server.running.shutdown().await.clean);
    member.wait_for_status(Status::Connecting).await;

    let server = TestServer::start_on(&addr, test_config(), |b| b).await;
    tokio::time::timeout(WAIT, member.wait_for_status(Status::Online))
        .await
        .unwrap();
    let handle = server.running.handle();
    eventually(|| handle.stats().topics.members == 1).await;
    let publisher = server.client("p").await;
    assert_eq!(
        publisher
            .publish("room:1", &json!({"type": "HELLO"}), false)
            .await
            .unwrap(),
        1
    );
    recv(&mut rx).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}
