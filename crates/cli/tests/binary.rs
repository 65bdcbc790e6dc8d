//! The `pubsub` binary as a user runs it: `serve`, `listen`, `send`, and a
//! topic with 10,000 members (the server runs in its own process, so the
//! test's 10,000 client sockets and the server's fit their open-file limits).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pubsub_client::{Client, ClientConfig};
use serde_json::{Value, json};

struct Served {
    child: Child,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pubsub"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--log",
            "warn",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "pubsub listening on ws://127.0.0.1:PORT/ws (stats: …)"
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    Served { child, port }
}

#[test]
fn serve_refuses_to_start_without_an_auth_mode() {
    let output = Command::new(env!("CARGO_BIN_EXE_pubsub"))
        .args(["serve", "--port", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--auth dev"), "{stderr}");
}

#[test]
fn listen_and_send_from_two_terminals() {
    let server = serve(&["--auth", "dev", "--handler", "echo"]);
    let url = format!("ws://127.0.0.1:{}", server.port);
    let mut listener = Command::new(env!("CARGO_BIN_EXE_pubsub"))
        .args(["listen", "--url", &url, "--user", "alice"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the listener is connected (it says so on stderr).
    let mut stderr = BufReader::new(listener.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("connected as user alice"), "{line}");

    let send = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_pubsub"))
            .args(["send", "--url", &url])
            .args(args)
            .output()
            .unwrap();
        if !output.status.success() {
            eprintln!(
                "send {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
    };
    let (ok, out) = send(&[
        "--user",
        "bob",
        "--to",
        "alice,dave",
        r#"{"type":"CHAT","text":"hi"}"#,
    ]);
    assert!(ok);
    let ack: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        ack["recipients"]["alice"],
        json!({"online": true, "clients": 1})
    );
    assert_eq!(
        ack["recipients"]["dave"],
        json!({"online": false, "clients": 0})
    );
    let (ok, out) = send(&["--user", "bob", "--server", r#"{"type":"PING","n":1}"#]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"type": "PING", "n": 1})
    );
    let (ok, _) = send(&["--user", "bob", "--to", "alice", r#"{"type":"@pubsub/X"}"#]);
    assert!(!ok, "a refused send exits non-zero");

    let mut stdout = BufReader::new(listener.stdout.take().unwrap());
    let mut received = String::new();
    stdout.read_line(&mut received).unwrap();
    let message: Value = serde_json::from_str(&received).unwrap();
    assert_eq!(message["action"], json!({"type": "CHAT", "text": "hi"}));
    assert_eq!(message["from"]["user"], "bob");
    assert_eq!(message["via"], "user");
    listener.kill().unwrap();
    let _ = listener.wait();
}

/// `pubsub send` over `wss://` through a TLS-terminating proxy (socat, as
/// nginx would be in production) whose certificate only `--ca-cert` trusts.
#[test]
fn send_over_wss_trusts_a_private_certificate_given_with_ca_cert() {
    let served = serve(&["--auth", "dev", "--handler", "echo"]);
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, private) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&private, key.signing_key.serialize_pem()).unwrap();
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            cert.display(),
            private.display()
        ))
        .arg(format!("TCP:127.0.0.1:{}", served.port))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat is installed (.ci/run installs it)");
    let proxy = Served {
        child: proxy,
        port: tls_port,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "socat did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("wss://localhost:{}", proxy.port);
    let send = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pubsub"))
            .args(["send", "--url", &url, "--user", "tls", "--server"])
            .args(extra)
            .arg(r#"{"type":"OVER_TLS"}"#)
            .output()
            .unwrap()
    };

    let trusted = send(&["--ca-cert", cert.to_str().unwrap()]);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let reply: Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(reply, json!({"type": "OVER_TLS"}));

    let untrusted = send(&[]);
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
}

/// 10,000 members in one topic receive every message exactly once, in
/// publish order per publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_topic_members_get_every_message_once_in_order() {
    const MEMBERS: usize = 10_000;
    const PUBLISHERS: usize = 2;
    const MESSAGES: usize = 20;
    let server = serve(&["--auth", "dev"]);
    let url = format!("ws://127.0.0.1:{}", server.port);

    // Per member: (publisher, sequence) in arrival order.
    type Arrivals = Mutex<Vec<(u64, u64)>>;
    let received: Arc<Vec<Arrivals>> =
        Arc::new((0..MEMBERS).map(|_| Mutex::new(Vec::new())).collect());
    let mut members = Vec::with_capacity(MEMBERS);
    let mut connecting = Vec::new();
    for m in 0..MEMBERS {
        let url = url.clone();
        let received = received.clone();
        connecting.push(tokio::spawn(async move {
            let config = ClientConfig::new(&url)
                .user(format!("member{m}"))
                .request_timeout(Duration::from_secs(60));
            let client = Client::connect(config).await.unwrap();
            client.subscribe("TICK", move |incoming| {
                let a = &incoming.action;
                received[m]
                    .lock()
                    .push((a["publisher"].as_u64().unwrap(), a["seq"].as_u64().unwrap()));
            });
            client.join("big").await.unwrap();
            client
        }));
        if connecting.len() == 200 {
            for c in connecting.drain(..) {
                members.push(c.await.unwrap());
            }
        }
    }
    for c in connecting {
        members.push(c.await.unwrap());
    }

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let client = Client::connect(ClientConfig::new(&url).user(format!("publisher{p}")))
            .await
            .unwrap();
        publishers.push(tokio::spawn(async move {
            for seq in 0..MESSAGES {
                let delivered = client
                    .publish(
                        "big",
                        &json!({"type": "TICK", "publisher": p, "seq": seq}),
                        false,
                    )
                    .await
                    .unwrap();
                assert_eq!(delivered, MEMBERS);
            }
            client
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = received
            .iter()
            .all(|r| r.lock().len() >= PUBLISHERS * MESSAGES);
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every member got every message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (m, r) in received.iter().enumerate() {
        let r = r.lock();
        assert_eq!(r.len(), PUBLISHERS * MESSAGES, "member {m}: duplicates");
        let mut next: HashMap<u64, u64> = HashMap::new();
        for (publisher, seq) in r.iter() {
            let expected = next.entry(*publisher).or_insert(0);
            assert_eq!(
                seq, expected,
                "member {m}: publisher {publisher} out of order"
            );
            *expected += 1;
        }
    }
    drop(members);
}

#[tokio::test]
async fn topic_rules_and_presence_visibility_come_from_the_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pubsub.toml");
    std::fs::write(
        &file,
        "auth = \"dev\"\npresence_visibility = \"self\"\n[topics]\njoin = [\"public:*\", \"user:{user}\"]\npublish = []\n",
    )
    .unwrap();
    let server = serve(&["--config", file.to_str().unwrap()]);
    let url = format!("ws://127.0.0.1:{}", server.port);
    let client = Client::connect(ClientConfig::new(&url).user("alice"))
        .await
        .unwrap();
    client.join("public:news").await.unwrap();
    client.join("user:alice").await.unwrap();
    assert_eq!(client.join("user:bob").await.unwrap_err().code, 1100);
    assert_eq!(
        client
            .publish("public:news", &json!({"type": "X"}), false)
            .await
            .unwrap_err()
            .code,
        1100
    );
    assert_eq!(client.watch(["bob"]).await.unwrap_err().code, 1100);
    assert!(client.watch(["alice"]).await.is_ok());
}
