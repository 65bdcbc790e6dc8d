//! The original's messaging model over real sockets: broadcast, sendToUser,
//! sendToServer, sender stamping, retries.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use pubsub_server::{EchoHandler, HandlerError, UserId, handler_fn};
use serde_json::json;

#[tokio::test]
async fn broadcast_reaches_the_users_other_tabs_only() {
    let server = TestServer::start(|b| b).await;
    let a1 = server.client("A").await;
    let a2 = server.client("A").await;
    let a3 = server.client("A").await;
    let b1 = server.client("B").await;
    let c1 = server.client("C").await;
    let mut inboxes: Vec<_> = [&a1, &a2, &a3, &b1, &c1]
        .iter()
        .map(|c| inbox(c, "*"))
        .collect();

    let ack = a1
        .broadcast(&json!({"type": "SHORTLIST_UPDATE", "items": [3, 7]}))
        .await
        .unwrap();
    assert_eq!(ack.delivered, 2);

    for rx in &mut inboxes[1..3] {
        let m = recv(rx).await;
        assert_eq!(
            m.action,
            json!({"type": "SHORTLIST_UPDATE", "items": [3, 7]})
        );
        assert_eq!(m.via, Some(pubsub_client::protocol::Via::Broadcast));
        let from = m.from.unwrap();
        assert_eq!(from.user.as_str(), "A");
        assert_eq!(Some(from.client), a1.client_id());
    }
    for i in [0, 3, 4] {
        assert_silent(&mut inboxes[i]).await;
    }
}

#[tokio::test]
async fn send_to_user_reaches_every_client_and_reports_each_recipient() {
    let server = TestServer::start(|b| b).await;
    let a = server.client("A").await;
    let b1 = server.client("B").await;
    let b2 = server.client("B").await;
    let c1 = server.client("C").await;
    let c2 = server.client("C").await;
    let mut rxs: Vec<_> = [&b1, &b2, &c1, &c2]
        .iter()
        .map(|c| inbox(c, "CHAT"))
        .collect();
    let mut own = inbox(&a, "*");

    let ack = a
        .send_to_user(
            &json!({"type": "CHAT", "text": "Hey dudes!"}),
            ["B", "C", "D"],
        )
        .await
        .unwrap();
    assert_eq!(ack.recipients.len(), 3);
    let b = ack.get("B").unwrap();
    assert!(b.online);
    assert_eq!(b.clients, 2);
    assert_eq!(ack.get("C").unwrap().clients, 2);
    let d = ack.get("D").unwrap();
    assert!(!d.online);
    assert_eq!(d.clients, 0);

    for rx in &mut rxs {
        let m = recv(rx).await;
        assert_eq!(m.action["text"], "Hey dudes!");
        assert_eq!(m.from.unwrap().user.as_str(), "A");
    }
    assert_silent(&mut own).await;
}

#[tokio::test]
async fn numeric_user_ids_are_the_same_users_as_their_strings() {
    let server = TestServer::start(|b| b).await;
    let sender = server.client("1").await;
    let receiver = server.client("44").await;
    let mut rx = inbox(&receiver, "X");
    let ack = sender
        .send_to_user(&json!({"type": "X"}), 44i64)
        .await
        .unwrap();
    assert_eq!(ack.get("44").unwrap().clients, 1);
    recv(&mut rx).await;
}

#[tokio::test]
async fn send_to_server_resolves_with_the_handlers_value_or_its_error() {
    let server = TestServer::start(|b| {
        b.handler(handler_fn(|ctx, action| async move {
            match action.action_type() {
                "WHO_AM_I" => Ok(json!({"user": ctx.user(), "client": ctx.client().id})),
                "ECHO" => Ok(action.to_value()),
                "NOTHING" => Ok(serde_json::Value::Null),
                "REFUSE" => {
                    Err(HandlerError::new("insufficient funds").with_data(json!({"balance": 3})))
                }
                "BUSY" => Err(HandlerError::new("try later").retryable()),
                "SLOW" => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok(json!("late"))
                }
                "PANIC" => panic!("handler bug"),
                other => Err(HandlerError::new(format!("unknown {other}"))),
            }
        }))
    })
    .await;
    let c = server.client("alice").await;

    let me = c
        .send_to_server(&json!({"type": "WHO_AM_I"}))
        .await
        .unwrap();
    assert_eq!(me["user"], "alice");
    assert_eq!(me["client"], json!(c.client_id().unwrap()));
    let echo = c
        .send_to_server(&json!({"type": "ECHO", "n": [1, 2.5]}))
        .await
        .unwrap();
    assert_eq!(echo, json!({"type": "ECHO", "n": [1, 2.5]}));
    assert_eq!(
        c.send_to_server(&json!({"type": "NOTHING"})).await.unwrap(),
        serde_json::Value::Null
    );

    let e = c
        .send_to_server(&json!({"type": "REFUSE"}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.name.as_str(), e.retryable),
        (2001, "handler_error", false)
    );
    assert_eq!(e.message, "insufficient funds");
    assert_eq!(e.data, Some(json!({"balance": 3})));
    assert_eq!(e.action(), json!({"type": "REFUSE"}));

    let e = c
        .send_to_server(&json!({"type": "BUSY"}))
        .await
        .unwrap_err();
    assert_eq!((e.code, e.retryable), (2001, true));

    let started = std::time::Instant::now();
    let e = c
        .send_to_server(&json!({"type": "SLOW"}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.name.as_str(), e.retryable),
        (2002, "handler_timeout", true)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "timeout is the server's 2 s"
    );

    let e = c
        .send_to_server(&json!({"type": "PANIC"}))
        .await
        .unwrap_err();
    assert_eq!((e.code, e.retryable), (2003, true));
    // The connection survives a handler panic.
    assert_eq!(
        c.send_to_server(&json!({"type": "NOTHING"})).await.unwrap(),
        serde_json::Value::Null
    );
}

/// The echo handler's ack carries the action byte for byte as the client
/// wrote it (spacing, number spelling, escapes), and so does its replay.
#[tokio::test]
async fn the_echo_handler_answers_with_the_actions_own_bytes() {
    let server = TestServer::start(|b| b.handler(EchoHandler)).await;
    let mut raw = Raw::connect(&server.url, "alice").await;
    let action = r#"{ "type" : "E", "n": 1.50, "s": "\u00e9\n", "deep": [[{}], -0e+1] }"#;
    let request = format!(r#"{{"kind":"sendToServer","id":"e1","action":{action}}}"#);
    let expected = format!(r#"{{"kind":"ack","id":"e1","result":{action}}}"#);
    for _ in 0..2 {
        raw.send(&request).await;
        assert_eq!(raw.next_text().await, expected);
    }
}

#[tokio::test]
async fn send_to_server_without_a_handler_answers_no_handler() {
    let server = TestServer::start(|b| b).await;
    let c = server.client("alice").await;
    let e = c
        .send_to_server(&json!({"type": "GET_STATS"}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.name.as_str(), e.retryable),
        (2000, "no_handler", false)
    );
}

#[tokio::test]
async fn the_handler_context_sends_and_reads_like_the_originals_options() {
    let server = TestServer::start(|b| {
        b.handler(handler_fn(|ctx, action| async move {
            match action.action_type() {
                "FANOUT" => {
                    let to = [UserId::new("B").unwrap(), UserId::new("Z").unwrap()];
                    let deliveries = ctx
                        .send_to_users(&to, &json!({"type": "NOTICE", "by": ctx.user()}))
                        .await
                        .map_err(|e| HandlerError::new(e.to_string()))?;
                    let tabs = ctx
                        .broadcast(&json!({"type": "SYNC"}))
                        .await
                        .map_err(|e| HandlerError::new(e.to_string()))?;
                    ctx.send_to_sender(&json!({"type": "FIRST"}))
                        .await
                        .map_err(|e| HandlerError::new(e.to_string()))?;
                    let users = ctx
                        .users()
                        .await
                        .map_err(|e| HandlerError::new(e.to_string()))?;
                    let mut names: Vec<String> = users.iter().map(|u| u.id.to_string()).collect();
                    names.sort();
                    Ok(json!({
                        "B": deliveries[0].clients,
                        "Z": deliveries[1].online,
                        "tabs": tabs.clients,
                        "users": names,
                    }))
                }
                _ => Ok(json!(null)),
            }
        }))
    })
    .await;
    let a1 = server.client("A").await;
    let a2 = server.client("A").await;
    let b = server.client("B").await;
    let mut a1_rx = inbox(&a1, "*");
    let mut a2_rx = inbox(&a2, "SYNC");
    let mut b_rx = inbox(&b, "NOTICE");

    let result = a1.send_to_server(&json!({"type": "FANOUT"})).await.unwrap();
    assert_eq!(
        result,
        json!({"B": 1, "Z": false, "tabs": 1, "users": ["A", "B"]})
    );
    let notice = recv(&mut b_rx).await;
    assert_eq!(notice.action["by"], "A");
    assert_eq!(notice.via, Some(pubsub_client::protocol::Via::Server));
    assert!(notice.from.is_none(), "server-sent actions have no sender");
    recv(&mut a2_rx).await;
    assert_eq!(recv(&mut a1_rx).await.action["type"], "FIRST");
}

#[tokio::test]
async fn forged_sender_fields_are_ignored() {
    let server = TestServer::start(|b| b).await;
    let mut mallory = Raw::connect(&server.url, "mallory").await;
    let victim = server.client("victim").await;
    let mut rx = inbox(&victim, "X");
    mallory
        .send_json(json!({
            "kind": "sendToUser", "id": "m1", "to": "victim",
            "from": {"user": "admin", "client": "test-0"},
            "via": "server",
            "action": {"type": "X"}
        }))
        .await;
    assert_eq!(mallory.next().await["kind"], "ack");
    let m = recv(&mut rx).await;
    let from = m.from.unwrap();
    assert_eq!(from.user.as_str(), "mallory");
    assert_eq!(
        from.client.as_str(),
        mallory.welcome["client"].as_str().unwrap()
    );
    assert_eq!(m.via, Some(pubsub_client::protocol::Via::User));
}

#[tokio::test]
async fn reserved_types_cannot_be_sent() {
    let server = TestServer::start(|b| b).await;
    let mut raw = Raw::connect(&server.url, "u").await;
    raw.send_json(
        json!({"kind": "broadcast", "id": "r1", "action": {"type": "@pubsub/STATUS_CHANGE"}}),
    )
    .await;
    let e = raw.next().await;
    assert_eq!(
        (e["code"].as_u64(), e["id"].as_str()),
        (Some(1004), Some("r1"))
    );

    let c = server.client("u").await;
    let e = c
        .broadcast(&json!({"type": "@pubsub/X"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, 1004);
}

#[tokio::test]
async fn a_retried_message_id_is_delivered_once_and_gets_the_original_ack() {
    let server = TestServer::start(|b| b).await;
    let mut sender = Raw::connect(&server.url, "A").await;
    let receiver = server.client("B").await;
    let mut rx = inbox(&receiver, "*");

    let frame = json!({"kind": "sendToUser", "id": "same-1", "to": "B", "action": {"type": "PAY", "amount": 5}});
    sender.send_json(frame.clone()).await;
    let first = sender.next().await;
    // A retry from another tab of the same user (after a reconnect, say).
    let mut other_tab = Raw::connect(&server.url, "A").await;
    other_tab.send_json(frame).await;
    let second = other_tab.next().await;
    assert_eq!(first, second, "the retry gets the original outcome");
    assert_eq!(first["result"]["recipients"]["B"]["clients"], 1);

    assert_eq!(recv(&mut rx).await.action["amount"], 5);
    assert_silent(&mut rx).await;
    assert_eq!(stats(&server).await["retriesReplayed"], 1);
}

/// A request's age in the retry window counts from when its frame was read,
/// not from an earlier read of the same connection: a connection quiet for
/// most of the window still gets the whole window for what it sends next.
#[tokio::test]
async fn a_request_after_a_quiet_spell_keeps_its_whole_retry_window() {
    let config = pubsub_server::ServerConfig {
        retry_window_ms: 1_500,
        ..test_config()
    };
    let server = TestServer::start_with(config, |b| b).await;
    let mut sender = Raw::connect(&server.url, "A").await;
    let receiver = server.client("B").await;
    let mut rx = inbox(&receiver, "*");
    // A first request makes the user's window, which counts its times from
    // its creation: a later request dated too early would not be clamped.
    sender
        .send_json(
            json!({"kind": "sendToUser", "id": "early-1", "to": "B", "action": {"type": "HI"}}),
        )
        .await;
    sender.next().await;
    assert_eq!(recv(&mut rx).await.action["type"], "HI");

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let frame = json!({"kind": "sendToUser", "id": "late-1", "to": "B", "action": {"type": "PAY"}});
    sender.send_json(frame.clone()).await;
    let first = sender.next().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut other_tab = Raw::connect(&server.url, "A").await;
    other_tab.send_json(frame).await;
    let second = other_tab.next().await;

    assert_eq!(first, second, "the retry gets the original outcome");
    assert_eq!(recv(&mut rx).await.action["type"], "PAY");
    assert_silent(&mut rx).await;
    assert_eq!(stats(&server).await["retriesReplayed"], 1);
}

#[tokio::test]
async fn reported_acks_are_forgotten_and_the_window_stays_empty() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(move |b| {
        b.handler(handler_fn(move |_ctx, _action| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok(json!({"call": n})) }
        }))
    })
    .await;
    let mut tab = Raw::connect(&server.url, "A").await;
    // Each request reports the ack before it, as the client libraries do.
    for i in 0..200 {
        let mut frame =
            json!({"kind": "sendToServer", "id": format!("s-{i}"), "action": {"type": "SAVE"}});
        if i > 0 {
            frame["received"] = json!([format!("s-{}", i - 1)]);
        }
        tab.send_json(frame).await;
        assert_eq!(tab.next().await["result"]["call"], i);
    }
    let held = stats(&server).await["retryWindowBytes"].as_u64().unwrap();
    assert!(
        held > 0 && held < 300,
        "only the last outcome is kept: {held} bytes"
    );
    // The last, unreported, replays; a reported one runs again.
    tab.send_json(json!({"kind": "sendToServer", "id": "s-199", "action": {"type": "SAVE"}}))
        .await;
    assert_eq!(tab.next().await["result"]["call"], 199);
    tab.send_json(json!({"kind": "sendToServer", "id": "s-5", "action": {"type": "SAVE"}}))
        .await;
    assert_eq!(tab.next().await["result"]["call"], 200);
    assert_eq!(stats(&server).await["retriesReplayed"], 1);

    // Without reports the outcomes stay for the window.
    let mut quiet = Raw::connect(&server.url, "B").await;
    for i in 0..200 {
        quiet
            .send_json(
                json!({"kind": "sendToServer", "id": format!("q-{i}"), "action": {"type": "SAVE"}}),
            )
            .await;
        quiet.next().await;
    }
    let more = stats(&server).await["retryWindowBytes"].as_u64().unwrap();
    assert!(more > held + 200 * 60, "{more} bytes");
}

#[tokio::test]
async fn a_bad_received_list_fails_its_request_and_forgets_nothing() {
    let server =
        TestServer::start(|b| b.handler(handler_fn(|_ctx, _action| async { Ok(json!(1)) }))).await;
    let mut tab = Raw::connect(&server.url, "A").await;
    tab.send_json(json!({"kind": "sendToServer", "id": "a", "action": {"type": "T"}}))
        .await;
    assert_eq!(tab.next().await["kind"], "ack");
    let too_many: Vec<String> = (0..65).map(|i| format!("x-{i}")).collect();
    for bad in [json!("a"), json!([1]), json!(too_many)] {
        tab.send_json(
            json!({"kind": "sendToServer", "id": "b", "action": {"type": "T"}, "received": bad}),
        )
        .await;
        let e = tab.next().await;
        assert_eq!(
            (e["code"].as_u64(), e["id"].as_str()),
            (Some(1002), Some("b")),
            "{e}"
        );
    }
    // `a` is still remembered: resending it replays.
    tab.send_json(json!({"kind": "sendToServer", "id": "a", "action": {"type": "T"}}))
        .await;
    assert_eq!(tab.next().await["kind"], "ack");
    assert_eq!(stats(&server).await["retriesReplayed"], 1);
}

#[tokio::test]
async fn a_reconnected_tabs_burst_of_retries_is_answered_from_memory() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(move |b| {
        b.handler(handler_fn(move |_ctx, action| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok(json!({"call": n, "action": action.to_value()})) }
        }))
    })
    .await;
    let request = |i: usize| json!({"kind": "sendToServer", "id": format!("save-{i}"), "action": {"type": "SAVE", "n": i}});
    let mut tab = Raw::connect(&server.url, "A").await;
    for i in 0..300 {
        tab.send_json(request(i)).await;
    }
    let mut answers = std::collections::HashMap::new();
    for _ in 0..300 {
        let answer = tab.next().await;
        answers.insert(answer["id"].as_str().unwrap().to_owned(), answer);
    }
    drop(tab);
    // The tab comes back and resends everything, newest first: the first
    // retry finds its outcome by walking the user's outcomes, the rest
    // through the index that replay builds.
    let mut again = Raw::connect(&server.url, "A").await;
    for i in (0..300).rev() {
        again.send_json(request(i)).await;
    }
    for _ in 0..300 {
        let answer = again.next().await;
        let id = answer["id"].as_str().unwrap().to_owned();
        assert_eq!(Some(&answer), answers.get(&id), "{id} replays its outcome");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 300, "no request ran twice");
    assert_eq!(stats(&server).await["retriesReplayed"], 300);
    // A new id after the burst still runs.
    again.send_json(request(300)).await;
    assert_eq!(again.next().await["result"]["call"], 300);
}

#[tokio::test]
async fn a_retry_while_the_handler_runs_waits_and_the_handler_runs_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(move |b| {
        b.handler(handler_fn(move |_ctx, _action| {
            let calls = counted.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(json!({"call": n}))
            }
        }))
    })
    .await;
    let c = server.client("A").await;
    let request = c
        .prepare(
            pubsub_client::RequestKind::SendToServer,
            None,
            &json!({"type": "CHARGE"}),
        )
        .unwrap();
    let (first, second) = tokio::join!(c.request(request.clone()), c.request(request));
    assert_eq!(first.unwrap(), json!({"call": 1}));
    assert_eq!(
        second.unwrap(),
        json!({"call": 1}),
        "the retry waited for the first attempt"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn retrying_a_failed_send_uses_the_same_id_and_is_not_processed_twice() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(move |b| {
        b.handler(handler_fn(move |_ctx, _action| {
            let calls = counted.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(HandlerError::new("no such order"))
            }
        }))
    })
    .await;
    let c = server.client("A").await;
    let e = c
        .send_to_server(&json!({"type": "CANCEL"}))
        .await
        .unwrap_err();
    let again = c.retry(&e).await.unwrap_err();
    assert_eq!(again.request.unwrap().id, e.request.unwrap().id);
    assert_eq!(again.message, "no such order");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "non-retryable outcomes are replayed"
    );
}

#[tokio::test]
async fn retryable_failures_run_again_on_retry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = TestServer::start(move |b| {
        b.handler(handler_fn(move |_ctx, _action| {
            let calls = counted.clone();
            async move {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(HandlerError::new("database busy").retryable()),
                    _ => Ok(json!("done")),
                }
            }
        }))
    })
    .await;
    let c = server.client("A").await;
    let e = c
        .send_to_server(&json!({"type": "SAVE"}))
        .await
        .unwrap_err();
    assert!(e.retryable);
    assert_eq!(c.retry(&e).await.unwrap(), json!("done"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn sends_from_one_sender_arrive_in_order() {
    let server = TestServer::start(|b| b).await;
    let a = server.client("A").await;
    let b = server.client("B").await;
    let mut rx = inbox(&b, "SEQ");
    // Issued concurrently; one connection writes them, and the server routes them, in order.
    let sends = (0..200).map(|i| {
        let a = a.clone();
        async move {
            a.send_to_user(&json!({"type": "SEQ", "i": i}), "B")
                .await
                .unwrap()
        }
    });
    futures_util::future::join_all(sends).await;
    for i in 0..200 {
        assert_eq!(recv(&mut rx).await.action["i"], i);
    }
}

/// A text frame as a client must send it: masked (RFC 6455 §5.3).
fn masked_text(payload: &str) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    assert!(payload.len() < 126, "short frames only");
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Upgrades to a WebSocket by hand: the upgrade request for `user`, with
/// `behind` in the same write, then the response head read byte by byte so
/// that no frame is read with it. Returns the socket at the first frame.
async fn upgrade_by_hand(server: &TestServer, user: &str, behind: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut bytes = format!(
        "GET /ws?userId={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(behind);
    let mut socket = tokio::net::TcpStream::connect(server.running.local_addr())
        .await
        .unwrap();
    socket.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(
            tokio::time::timeout(WAIT, socket.read_u8())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    socket
}

/// The client's side of a socket [`upgrade_by_hand`] returned.
async fn client_side(
    socket: tokio::net::TcpStream,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::WebSocketStream::from_raw_socket(
        tokio_tungstenite::MaybeTlsStream::Plain(socket),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}

#[tokio::test]
async fn requests_sent_in_the_same_write_as_the_handshake_are_answered() {
    let server = TestServer::start(|b| b.handler(EchoHandler)).await;
    let tab = server.client("A").await;
    let mut tab_inbox = inbox(&tab, "HI");
    // The upgrade request and three requests in one write: one answered in
    // place (sendToServer), one that waits on the engine (broadcast), and a
    // second sendToServer behind it.
    let mut frames =
        masked_text(r#"{"kind":"sendToServer","id":"s1","action":{"type":"E","n":1}}"#);
    frames.extend(masked_text(
        r#"{"kind":"broadcast","id":"b1","action":{"type":"HI"}}"#,
    ));
    frames.extend(masked_text(
        r#"{"kind":"sendToServer","id":"s2","action":{"type":"E","n":2}}"#,
    ));
    let mut ws = client_side(upgrade_by_hand(&server, "A", &frames).await).await;
    assert_eq!(next_json(&mut ws).await["kind"], "welcome");
    let mut answers = std::collections::HashMap::new();
    for _ in 0..3 {
        let frame = next_json(&mut ws).await;
        answers.insert(frame["id"].as_str().unwrap().to_owned(), frame);
    }
    assert_eq!(answers["s1"]["result"], json!({"type": "E", "n": 1}));
    assert_eq!(answers["s2"]["result"], json!({"type": "E", "n": 2}));
    assert_eq!(answers["b1"]["kind"], "ack", "{}", answers["b1"]);
    assert_eq!(recv(&mut tab_inbox).await.action["type"], "HI");
}

#[tokio::test]
async fn a_frame_split_between_the_handshake_and_the_next_write_is_answered() {
    use tokio::io::AsyncWriteExt;

    let server = TestServer::start(|b| b.handler(EchoHandler)).await;
    // A whole request and half of the next one behind the upgrade request;
    // the rest of it in a later write.
    let mut behind =
        masked_text(r#"{"kind":"sendToServer","id":"s1","action":{"type":"E","n":1}}"#);
    let second = masked_text(r#"{"kind":"sendToServer","id":"s2","action":{"type":"E","n":2}}"#);
    let (head, tail) = second.split_at(second.len() / 2);
    behind.extend_from_slice(head);
    let mut socket = upgrade_by_hand(&server, "A", &behind).await;
    socket.write_all(tail).await.unwrap();
    let mut ws = client_side(socket).await;
    assert_eq!(next_json(&mut ws).await["kind"], "welcome");
    for (id, n) in [("s1", 1), ("s2", 2)] {
        let answer = next_json(&mut ws).await;
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["result"], json!({"type": "E", "n": n}), "{answer}");
    }
}

#[tokio::test]
async fn frames_in_one_read_are_answered_in_order_whether_or_not_they_wait() {
    use tokio::io::AsyncWriteExt;

    let server = TestServer::start(|b| b.handler(EchoHandler)).await;
    let tab = server.client("A").await;
    let mut tab_inbox = inbox(&tab, "HI");
    let mut socket = upgrade_by_hand(&server, "A", &[]).await;
    // Frames answered where they are read (sendToServer), one that waits on
    // the engine (broadcast) between them, and one whose `kind` is not its
    // first member: all in one write after the handshake, so that the
    // server reads them at once, from its read buffer.
    let frames = [
        r#"{"kind":"sendToServer","id":"s1","action":{"type":"E","n":1}}"#,
        r#"{"kind":"sendToServer","id":"s2","action":{"type":"E","n":2}}"#,
        r#"{"kind":"broadcast","id":"b1","action":{"type":"HI"}}"#,
        r#"{"kind":"sendToServer","id":"s3","action":{"type":"E","n":3}}"#,
        r#"{"id":"s4","kind":"sendToServer","action":{"type":"E","n":4}}"#,
        r#"{"kind":"sendToServer","id":"s5","action":{"type":"E","n":5}}"#,
    ];
    let bytes: Vec<u8> = frames.iter().flat_map(|f| masked_text(f)).collect();
    socket.write_all(&bytes).await.unwrap();
    let mut ws = client_side(socket).await;
    assert_eq!(next_json(&mut ws).await["kind"], "welcome");
    let mut order = Vec::new();
    for _ in 0..frames.len() {
        let frame = next_json(&mut ws).await;
        assert_eq!(frame["kind"], "ack", "{frame}");
        order.push(frame["id"].as_str().unwrap().to_owned());
        if let Some(n) = frame["result"].get("n") {
            assert_eq!(frame["id"], format!("s{n}"), "{frame}");
        }
    }
    assert_eq!(order, ["s1", "s2", "b1", "s3", "s4", "s5"]);
    assert_eq!(recv(&mut tab_inbox).await.action["type"], "HI");
}
