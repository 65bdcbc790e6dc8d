//! Test harness: a real server on 127.0.0.1:0, real clients over real sockets.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pubsub_client::{Client, ClientConfig, Incoming, ReconnectPolicy};
use pubsub_server::{DevAuth, RunningServer, Server, ServerBuilder, ServerConfig};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

/// Config with short timers, suitable for tests.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        handler_timeout_ms: 2_000,
        shutdown_timeout_ms: 3_000,
        ..ServerConfig::default()
    }
}

pub struct TestServer {
    pub running: RunningServer,
    pub url: String,
}

impl TestServer {
    pub async fn start(build: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Self {
        Self::start_with(test_config(), build).await
    }

    pub async fn start_with(
        config: ServerConfig,
        build: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Self {
        Self::start_on("127.0.0.1:0", config, build).await
    }

    pub async fn start_on(
        addr: &str,
        config: ServerConfig,
        build: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Self {
        let builder = Server::builder()
            .config(config)
            .authenticator(DevAuth)
            .node_id("test");
        let server = build(builder).build().unwrap();
        let running = server.bind(addr).await.unwrap();
        let url = format!("ws://{}", running.local_addr());
        Self { running, url }
    }

    /// A server on `workers` threads, each with its own runtime and
    /// listener, as `pubsub serve` runs one per core.
    pub async fn start_threads(workers: usize) -> Self {
        let server = Server::builder()
            .config(test_config())
            .authenticator(DevAuth)
            .build()
            .unwrap();
        let running = server
            .bind_threads("127.0.0.1:0".parse().unwrap(), workers)
            .await
            .unwrap();
        let url = format!("ws://{}", running.local_addr());
        Self { running, url }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.running.local_addr(), path)
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::connect(client_config(&self.url, user))
            .await
            .unwrap()
    }
}

pub fn client_config(url: &str, user: &str) -> ClientConfig {
    ClientConfig::new(url)
        .user(user)
        .request_timeout(Duration::from_secs(5))
        .reconnect(ReconnectPolicy {
            enabled: true,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
        })
}

/// Collects everything a client receives of one type (or `*`).
pub fn inbox(client: &Client, ty: &str) -> UnboundedReceiver<Incoming> {
    let (subscription, rx) = client.subscribe_channel(ty);
    // Keep the subscription for the client's lifetime.
    std::mem::forget(subscription);
    rx
}

pub async fn recv(rx: &mut UnboundedReceiver<Incoming>) -> Incoming {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("subscription closed")
}

/// Asserts nothing arrives within a short quiet period.
pub async fn assert_silent(rx: &mut UnboundedReceiver<Incoming>) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        panic!("unexpected message {m:?}");
    }
}

pub type RawWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket, for sending what a well-behaved client never would.
pub struct Raw {
    pub ws: RawWs,
    pub welcome: Value,
}

impl Raw {
    pub async fn connect(url: &str, user: &str) -> Self {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}/ws?userId={user}"))
            .await
            .unwrap();
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["kind"], "welcome", "{welcome}");
        Self { ws, welcome }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(&value.to_string()).await;
    }

    /// Next frame that is not a heartbeat ping.
    pub async fn next(&mut self) -> Value {
        next_json(&mut self.ws).await
    }

    /// The same frame as [`Raw::next`], as the text that arrived.
    pub async fn next_text(&mut self) -> String {
        next_text(&mut self.ws).await
    }

    pub async fn expect_close(&mut self) -> (u16, String) {
        expect_close(&mut self.ws).await
    }
}

pub async fn next_json(ws: &mut RawWs) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// The next text frame that is not a heartbeat ping, exactly as it arrived.
pub async fn next_text(ws: &mut RawWs) -> String {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("socket error");
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["kind"] != "ping" {
                    return text.to_string();
                }
            }
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until a close frame and returns its code and reason.
pub async fn expect_close(ws: &mut RawWs) -> (u16, String) {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a close");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => return (u16::from(CloseCode::Status), String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before close: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

pub async fn stats(server: &TestServer) -> Value {
    serde_json::to_value(server.running.handle().stats()).unwrap()
}

/// Polls `check` until it holds or the wait runs out.
pub async fn eventually(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
