//! How each server under test is spoken to: URL, handshake, keepalives and
//! the pre-encoded frames of every workload.
//!
//! Every message carries `"t":<16-digit µs timestamp>`; the receive path only
//! looks for that (stats::scan_deliveries), whatever the framing around it.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::pusher;
use crate::stats;
use crate::ws::{
    self, Endpoint, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, ReadOutcome, Reader, Template,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// This repository's server (`pubsub serve --auth dev --handler echo`).
    Pubsub,
    /// bench/peers/node/ws-server.js (node `ws`).
    Ws,
    /// bench/peers/node/socketio-server.js (socket.io, engine.io v4 over WebSocket).
    Socketio,
    /// nats-server's WebSocket listener (NATS protocol in WebSocket frames).
    Nats,
    /// bench/peers/centrifuge (Centrifuge 0.15, JSON protocol).
    Centrifuge,
    /// sockudo (Pusher protocol 7): private channels, client events.
    Sockudo,
    /// The bare tokio-tungstenite echo server (`echo-floor`).
    Echo,
}

/// What a connection subscribes to while it is being set up.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Topic / room / subject / channel for fan-out.
    pub topic: Option<String>,
    /// Subscribe to the user's own channel (NATS subject, Centrifuge channel).
    pub user_channel: bool,
    /// NATS: subscribe to a private subject and publish to it (rpc echo).
    pub rpc_subject: Option<String>,
    /// NATS: deliver a connection's own publications back to it.
    pub echo: bool,
    /// PubSub: `watch` these users.
    pub watch: Vec<String>,
    /// The connection's user (for per-user subjects and channels).
    pub user: String,
}

/// A set-up connection.
pub struct Session {
    pub stream: TcpStream,
    pub reader: Reader,
    pub target: Target,
    replies: Vec<u8>,
    pub closed: bool,
}

/// A client's `pusher:ping`; sockudo answers it with `pusher:pong` (rpc
/// `--rpc-kind ping`).
pub const SOCKUDO_PING: &str = r#"{"event":"pusher:ping","data":{}}"#;

/// `{"event":"pusher:pong","data":{}}` in a masked text frame (zero key).
const SOCKUDO_PONG: &[u8] = b"\x81\xa1\0\0\0\0{\"event\":\"pusher:pong\",\"data\":{}}";

fn nats_frame(payload: &str) -> Vec<u8> {
    let mut v = Vec::new();
    ws::encode_frame(&mut v, OP_BINARY, payload.as_bytes());
    v
}

impl Target {
    pub fn path(self, user: &str) -> String {
        match self {
            Target::Pubsub => format!("/ws?userId={user}"),
            Target::Ws | Target::Echo => format!("/?user={user}"),
            Target::Socketio => format!("/socket.io/?EIO=4&transport=websocket&user={user}"),
            Target::Nats => "/".to_owned(),
            Target::Centrifuge => format!("/connection/websocket?user={user}"),
            Target::Sockudo => format!(
                "/app/{}?protocol=7&client=pubsub-bench&version=1.0&user={user}",
                pusher::APP_KEY
            ),
        }
    }

    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Target::Pubsub => Some("pubsub.v1.json"),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Pubsub => "pubsub",
            Target::Ws => "ws",
            Target::Socketio => "socketio",
            Target::Nats => "nats",
            Target::Centrifuge => "centrifuge",
            Target::Sockudo => "sockudo",
            Target::Echo => "echo",
        }
    }

    /// A frame from the server that needs an application-level answer.
    fn keepalive_reply(self, payload: &[u8]) -> Option<&'static [u8]> {
        match self {
            Target::Pubsub if payload == br#"{"kind":"ping"}"# => {
                Some(b"\x81\x8f\0\0\0\0{\"kind\":\"pong\"}")
            }
            Target::Socketio if payload == b"2" => Some(b"\x81\x81\0\0\0\x003"),
            // Deliveries are longer than 40 bytes: one length test for them.
            Target::Sockudo if payload.len() < 40 && contains(payload, b"\"pusher:ping\"") => {
                Some(SOCKUDO_PONG)
            }
            Target::Nats
                if payload.starts_with(b"PING\r\n")
                    || memchr::memmem::find(payload, b"\nPING\r\n").is_some() =>
            {
                Some(b"\x82\x86\0\0\0\0PONG\r\n")
            }
            _ => None,
        }
    }

    // ---------------------------------------------------------------- rpc

    /// `channel`: sockudo only, the private channel the connection shares
    /// with its pair (see work.rs, rpc).
    pub fn rpc_template(self, tag: &str, channel: &str) -> Template {
        match self {
            // As the client libraries do, each request reports the ack
            // received before it (`received`), so the server need not keep
            // that outcome for the retry window.
            Target::Pubsub => Template::new(&format!(
                r#"{{"kind":"sendToServer","id":"{tag}-{{SEQ}}","action":{{"type":"e","t":{{TS}}}},"received":["{tag}-{{PREV}}"]}}"#
            )),
            Target::Ws => Template::new(r#"{"op":"e","type":"e","t":{TS}}"#),
            Target::Socketio => Template::new(r#"42["e",{"type":"e","t":{TS}}]"#),
            Target::Nats => {
                let body = r#"{"type":"e","t":{TS}}"#;
                let len = body.len() - 4 + 16;
                Template::with_opcode(&format!("PUB e.{tag} {len}\r\n{body}\r\n"), OP_BINARY)
            }
            Target::Centrifuge => {
                Template::new(r#"{"id":{SEQ},"method":9,"params":{"data":{"type":"e","t":{TS}}}}"#)
            }
            Target::Sockudo => Template::new(&format!(
                r#"{{"event":"client-e","channel":"{channel}","data":{{"type":"e","t":{{TS}}}}}}"#
            )),
            Target::Echo => Template::new(r#"{"type":"e","t":{TS}}"#),
        }
    }

    // ------------------------------------------------------------ fan-out

    /// One publication to `topic`, padded with `pad` bytes of payload.
    /// `broadcast`: PubSub's `broadcast` to the other tabs of the same user.
    pub fn publish_template(self, tag: &str, topic: &str, pad: usize, broadcast: bool) -> Template {
        let padding = if pad > 0 {
            format!(r#","p":"{}""#, "x".repeat(pad))
        } else {
            String::new()
        };
        let action = format!(r#"{{"type":"f","t":{{TS}}{padding}}}"#);
        match self {
            // Each reports the previous publication's ack (`received`).
            Target::Pubsub if broadcast => Template::new(&format!(
                r#"{{"kind":"broadcast","id":"{tag}-{{SEQ}}","action":{action},"received":["{tag}-{{PREV}}"]}}"#
            )),
            Target::Pubsub => Template::new(&format!(
                r#"{{"kind":"publish","id":"{tag}-{{SEQ}}","topic":"{topic}","action":{action},"received":["{tag}-{{PREV}}"]}}"#
            )),
            Target::Ws | Target::Echo => {
                Template::new(&format!(r#"{{"op":"p","topic":"{topic}","d":{action}}}"#))
            }
            Target::Socketio => {
                Template::new(&format!(r#"42["p",{{"topic":"{topic}","d":{action}}}]"#))
            }
            Target::Nats => {
                let len = action.len() - 4 + 16; // {TS} becomes 16 digits
                Template::with_opcode(&format!("PUB {topic} {len}\r\n{action}\r\n"), OP_BINARY)
            }
            Target::Centrifuge => Template::new(&format!(
                r#"{{"id":{{SEQ}},"method":3,"params":{{"channel":"{topic}","data":{action}}}}}"#
            )),
            // A client event: `topic` is a private channel the publisher is
            // subscribed to; sockudo relays `data` as the JSON object it got.
            Target::Sockudo => Template::new(&format!(
                r#"{{"event":"client-f","channel":"{topic}","data":{action}}}"#
            )),
        }
    }

    // ------------------------------------------------------------------ dm

    /// Deliveries one dm send causes with `tabs` tabs per user.
    pub fn dm_deliveries(self, tabs: u64, single_request: bool) -> u64 {
        match self {
            // sendToUser naming both users reaches the sending tab too.
            Target::Pubsub if single_request => 2 * tabs,
            // Centrifuge cannot exclude the sending connection.
            Target::Centrifuge => 2 * tabs,
            _ => 2 * tabs - 1,
        }
    }

    /// Appends the frames of one dm from user `me` to user `to`.
    #[allow(clippy::too_many_arguments)]
    pub fn dm_frames(
        self,
        out: &mut Vec<u8>,
        tag: &str,
        seq: u64,
        me: &str,
        to: &str,
        ts: u64,
        single: bool,
    ) {
        let action = format!(r#"{{"type":"d","t":{ts:016}}}"#);
        // As the client libraries do, the first frame reports the acks of
        // the previous send (sent a period ago, long acked at these rates).
        let previous = seq.checked_sub(1);
        match self {
            Target::Pubsub if single => {
                let received = previous
                    .map(|p| format!(r#","received":["{tag}-{p}"]"#))
                    .unwrap_or_default();
                let p = format!(
                    r#"{{"kind":"sendToUser","id":"{tag}-{seq}","to":["{to}","{me}"],"action":{action}{received}}}"#
                );
                ws::encode_frame(out, OP_TEXT, p.as_bytes());
            }
            Target::Pubsub => {
                let received = previous
                    .map(|p| format!(r#","received":["{tag}-{p}","{tag}-{p}b"]"#))
                    .unwrap_or_default();
                let p = format!(
                    r#"{{"kind":"sendToUser","id":"{tag}-{seq}","to":"{to}","action":{action}{received}}}"#
                );
                ws::encode_frame(out, OP_TEXT, p.as_bytes());
                let p = format!(r#"{{"kind":"broadcast","id":"{tag}-{seq}b","action":{action}}}"#);
                ws::encode_frame(out, OP_TEXT, p.as_bytes());
            }
            Target::Ws | Target::Echo => {
                let p = format!(r#"{{"op":"u","to":"{to}","d":{action}}}"#);
                ws::encode_frame(out, OP_TEXT, p.as_bytes());
            }
            Target::Socketio => {
                let p = format!(r#"42["u",{{"to":"{to}","d":{action}}}]"#);
                ws::encode_frame(out, OP_TEXT, p.as_bytes());
            }
            Target::Nats => {
                let n = action.len();
                let p = format!("PUB u.{to} {n}\r\n{action}\r\nPUB u.{me} {n}\r\n{action}\r\n");
                ws::encode_frame(out, OP_BINARY, p.as_bytes());
            }
            Target::Centrifuge => {
                let p = format!(
                    r#"{{"id":{},"method":9,"params":{{"data":{{"to":"{to}","d":{action}}}}}}}"#,
                    1_000_000_000 + seq % 9_000_000_000
                );
                ws::encode_frame(out, OP_TEXT, p.as_bytes());
            }
            // work.rs refuses dm for sockudo before any connection is made.
            Target::Sockudo => unreachable!("no dm mapping for sockudo"),
        }
    }
}

/// Picks the destination and source addresses for connection `index` of
/// generator process `proc_index`: destinations rotate over 127.0.0.1..=hosts
/// (the servers listen on 0.0.0.0), each process binds its own source
/// address, so no (source, destination, port) runs out of ephemeral ports.
pub fn endpoint(
    target: Target,
    port: u16,
    hosts: u8,
    proc_index: usize,
    index: usize,
    user: &str,
) -> Endpoint {
    let dst = Ipv4Addr::new(127, 0, 0, 1 + (index % hosts.max(1) as usize) as u8);
    let src = Ipv4Addr::new(
        127,
        0,
        1 + (proc_index / 200) as u8,
        10 + (proc_index % 200) as u8,
    );
    Endpoint {
        dst: SocketAddr::new(IpAddr::V4(dst), port),
        src: Some(IpAddr::V4(src)),
        path: target.path(user),
        subprotocol: target.subprotocol(),
        recv_buffer: None,
        arrival_stamps: false,
    }
}

enum Step {
    Continue,
    Done,
    Fail(String),
}

impl Step {
    /// Done once a frame holds `done`; failed if it holds any of `fail`.
    fn when_found(p: &[u8], done: &[u8], fail: &[&[u8]]) -> Step {
        if contains(p, done) {
            Step::Done
        } else if fail.iter().any(|f| contains(p, f)) {
            Step::Fail(short(p))
        } else {
            Step::Continue
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

fn short(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[..payload.len().min(300)]).into_owned()
}

impl Session {
    /// Waits until the socket may have data. Through the socket's own reader
    /// slot rather than `TcpStream::readable()`, which links and unlinks a
    /// waiter in the socket's list on every call: this is called once per
    /// loop turn of every connection.
    pub fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(move |cx| self.stream.poll_read_ready(cx))
    }

    /// Connects, completes the target's own handshake and subscriptions.
    pub async fn open(
        target: Target,
        ep: &Endpoint,
        setup: &Setup,
        timeout: Duration,
    ) -> io::Result<Session> {
        tokio::time::timeout(timeout, Self::open_inner(target, ep, setup))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection set-up timed out"))?
    }

    async fn open_inner(target: Target, ep: &Endpoint, setup: &Setup) -> io::Result<Session> {
        let (stream, leftover) = ws::connect(ep).await?;
        let mut s = Session {
            stream,
            reader: Reader::with_leftover(leftover, ep.arrival_stamps),
            target,
            replies: Vec::new(),
            closed: false,
        };
        match target {
            Target::Pubsub => {
                s.expect(|p| {
                    if contains(p, br#""kind":"welcome""#) {
                        Step::Done
                    } else {
                        Step::Continue
                    }
                })
                .await?;
                if let Some(topic) = &setup.topic {
                    let join = format!(r#"{{"kind":"join","id":"join-1","topic":"{topic}"}}"#);
                    s.send(&ws::text_frame(join.as_bytes())).await?;
                    s.expect_ack("join-1").await?;
                }
                if !setup.watch.is_empty() {
                    let users: Vec<String> =
                        setup.watch.iter().map(|u| format!("\"{u}\"")).collect();
                    let watch = format!(
                        r#"{{"kind":"watch","id":"watch-1","users":[{}]}}"#,
                        users.join(",")
                    );
                    s.send(&ws::text_frame(watch.as_bytes())).await?;
                    s.expect_ack("watch-1").await?;
                }
            }
            Target::Ws | Target::Echo => {
                if let Some(topic) = &setup.topic {
                    let join = format!(r#"{{"op":"j","topic":"{topic}"}}"#);
                    s.send(&ws::text_frame(join.as_bytes())).await?;
                    s.expect(|p| {
                        if p == br#"{"op":"ok"}"# {
                            Step::Done
                        } else {
                            Step::Continue
                        }
                    })
                    .await?;
                }
            }
            Target::Socketio => {
                s.expect(|p| {
                    if p.first() == Some(&b'0') {
                        Step::Done
                    } else {
                        Step::Continue
                    }
                })
                .await?;
                s.send(&ws::text_frame(b"40")).await?;
                s.expect(|p| {
                    if p.starts_with(b"40") {
                        Step::Done
                    } else if p.starts_with(b"44") {
                        Step::Fail(short(p))
                    } else {
                        Step::Continue
                    }
                })
                .await?;
                if let Some(topic) = &setup.topic {
                    let join = format!(r#"42["j","{topic}"]"#);
                    s.send(&ws::text_frame(join.as_bytes())).await?;
                    s.expect(|p| {
                        if p == br#"42["ok"]"# {
                            Step::Done
                        } else {
                            Step::Continue
                        }
                    })
                    .await?;
                }
            }
            Target::Nats => {
                s.expect(|p| {
                    if p.starts_with(b"INFO") {
                        Step::Done
                    } else {
                        Step::Continue
                    }
                })
                .await?;
                let mut cmds = format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":{},\"protocol\":1,\"headers\":false,\"name\":\"bench\"}}\r\n",
                    setup.echo
                );
                let mut sid = 1;
                for subject in [&setup.topic, &setup.rpc_subject].into_iter().flatten() {
                    cmds.push_str(&format!("SUB {subject} {sid}\r\n"));
                    sid += 1;
                }
                if setup.user_channel {
                    // The user is the last path segment we were given.
                    cmds.push_str(&format!("SUB u.{} {sid}\r\n", setup.user));
                }
                cmds.push_str("PING\r\n");
                s.send(&nats_frame(&cmds)).await?;
                s.expect(|p| Step::when_found(p, b"PONG\r\n", &[b"-ERR"]))
                    .await?;
            }
            Target::Centrifuge => {
                s.send(&ws::text_frame(br#"{"id":1,"params":{}}"#)).await?;
                s.expect_centrifuge(1).await?;
                let mut channels = Vec::new();
                if let Some(topic) = &setup.topic {
                    channels.push(topic.clone());
                }
                if setup.user_channel {
                    channels.push(format!("u_{}", setup.user));
                }
                for (id, ch) in (2..).zip(channels) {
                    let sub = format!(r#"{{"id":{id},"method":1,"params":{{"channel":"{ch}"}}}}"#);
                    s.send(&ws::text_frame(sub.as_bytes())).await?;
                    s.expect_centrifuge(id).await?;
                }
            }
            Target::Sockudo => {
                let mut socket_id = None;
                s.expect(|p| {
                    let step =
                        Step::when_found(p, b"pusher:connection_established", &[b"pusher:error"]);
                    if matches!(step, Step::Done) {
                        socket_id = pusher::socket_id(p);
                    }
                    step
                })
                .await?;
                let socket_id = socket_id.ok_or_else(|| io::Error::other("no socket_id"))?;
                if let Some(ch) = &setup.topic {
                    let auth = if ch.starts_with("private-") {
                        format!(r#","auth":"{}""#, pusher::channel_auth(&socket_id, ch))
                    } else {
                        String::new()
                    };
                    let sub = format!(
                        r#"{{"event":"pusher:subscribe","data":{{"channel":"{ch}"{auth}}}}}"#
                    );
                    s.send(&ws::text_frame(sub.as_bytes())).await?;
                    s.expect(|p| {
                        Step::when_found(
                            p,
                            b"pusher_internal:subscription_succeeded",
                            &[b"pusher:error", b"subscription_error"],
                        )
                    })
                    .await?;
                }
            }
        }
        Ok(s)
    }

    async fn expect_ack(&mut self, id: &str) -> io::Result<()> {
        let ack = format!(r#""kind":"ack","id":"{id}""#);
        let err = format!(r#""kind":"error","id":"{id}""#);
        self.expect(|p| Step::when_found(p, ack.as_bytes(), &[err.as_bytes()]))
            .await
    }

    async fn expect_centrifuge(&mut self, id: u32) -> io::Result<()> {
        let tag = format!(r#"{{"id":{id},"#);
        self.expect(|p| {
            // Replies may be batched, one JSON per line.
            for line in p.split(|&b| b == b'\n') {
                if line.starts_with(tag.as_bytes()) {
                    return if contains(line, b"\"error\"") {
                        Step::Fail(short(line))
                    } else {
                        Step::Done
                    };
                }
            }
            Step::Continue
        })
        .await
    }

    /// Reads until `pred` says done, answering keepalives meanwhile.
    async fn expect(&mut self, mut pred: impl FnMut(&[u8]) -> Step) -> io::Result<()> {
        let outcome: std::cell::RefCell<Option<Result<(), String>>> = Default::default();
        loop {
            let mut on = |payload: &[u8]| {
                let mut o = outcome.borrow_mut();
                if o.is_none() {
                    match pred(payload) {
                        Step::Continue => {}
                        Step::Done => *o = Some(Ok(())),
                        Step::Fail(m) => *o = Some(Err(m)),
                    }
                }
            };
            if self.reader.has_pending() {
                self.process_pending(&mut on);
            }
            if outcome.borrow().is_none() && !self.closed {
                self.readable().await?;
                self.read(&mut on)?;
            }
            self.flush_replies().await?;
            let taken = outcome.borrow_mut().take();
            match taken {
                Some(Ok(())) => return Ok(()),
                Some(Err(m)) => return Err(io::Error::other(format!("refused: {m}"))),
                None if self.closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "closed during set-up",
                    ));
                }
                None => {}
            }
        }
    }

    /// The socket, reader state, target, unwritten keep-alive answers and
    /// closed flag, for the receive-only loop (receivers.rs), which reads the
    /// socket outside tokio's reactor.
    pub fn into_parts(self) -> (TcpStream, Reader, Target, Vec<u8>, bool) {
        (
            self.stream,
            self.reader,
            self.target,
            self.replies,
            self.closed,
        )
    }

    fn process_pending(&mut self, on_data: &mut dyn FnMut(&[u8])) {
        stats::reading(self.stream.as_raw_fd() as u32);
        let target = self.target;
        let replies = &mut self.replies;
        let closed = self
            .reader
            .process_pending(&mut |op, p| handle_frame(target, replies, op, p, on_data));
        if closed {
            self.closed = true;
        }
    }

    /// Reads what is available (call after `stream.readable()`); data
    /// messages go to `on_data`. Sets `closed` when the peer went away.
    pub fn read(&mut self, on_data: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        stats::reading(self.stream.as_raw_fd() as u32);
        let target = self.target;
        let replies = &mut self.replies;
        let stream = &self.stream;
        match self.reader.read_available(stream, &mut |op, p| {
            handle_frame(target, replies, op, p, on_data)
        })? {
            ReadOutcome::Data => {}
            ReadOutcome::Closed => self.closed = true,
        }
        Ok(())
    }

    /// Reads and counts deliveries (the common receive path).
    pub fn read_deliveries(&mut self) -> io::Result<usize> {
        let mut found = 0;
        let mut on = |p: &[u8]| {
            found += stats::scan_deliveries(p, stats::now_us());
        };
        if self.reader.has_pending() {
            self.process_pending(&mut on);
        }
        self.read(&mut on)?;
        Ok(found)
    }

    /// Reads and counts sockudo's `pusher:pong` answers, which carry no
    /// timestamp: each is timed from the oldest send in `stamps` (answers
    /// come back in order on one connection).
    pub fn read_pongs(&mut self, stamps: &mut VecDeque<u64>) -> io::Result<usize> {
        let mut found = 0;
        let mut on = |p: &[u8]| {
            if p.starts_with(br#"{"event":"pusher:pong""#)
                && let Some(ts) = stamps.pop_front()
            {
                found += 1;
                if stats::in_window(ts) {
                    stats::record_latency(stats::now_us().saturating_sub(ts), false);
                }
            }
        };
        if self.reader.has_pending() {
            self.process_pending(&mut on);
        }
        self.read(&mut on)?;
        Ok(found)
    }

    pub fn has_replies(&self) -> bool {
        !self.replies.is_empty()
    }

    pub async fn flush_replies(&mut self) -> io::Result<()> {
        if !self.replies.is_empty() {
            let out = std::mem::take(&mut self.replies);
            ws::write_all(&self.stream, &out).await?;
        }
        Ok(())
    }

    pub async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        ws::write_all(&self.stream, bytes).await
    }

    /// Sends a close frame and waits (briefly) for the server to close.
    pub async fn close(mut self, wait: Duration) {
        let _ = self.send(b"\x88\x82\0\0\0\0\x03\xe8").await;
        let _ = tokio::time::timeout(wait, async {
            while !self.closed {
                if self.readable().await.is_err() {
                    break;
                }
                if self.read(&mut |_| {}).is_err() {
                    break;
                }
            }
        })
        .await;
    }
}

pub(crate) fn handle_frame(
    target: Target,
    replies: &mut Vec<u8>,
    op: u8,
    payload: &[u8],
    on_data: &mut dyn FnMut(&[u8]),
) {
    match op {
        ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONT => {
            if let Some(reply) = target.keepalive_reply(payload) {
                replies.extend_from_slice(reply);
                if target != Target::Nats {
                    return;
                }
            }
            on_data(payload);
        }
        OP_PING => ws::encode_frame(replies, OP_PONG, payload),
        OP_CLOSE | OP_PONG => {}
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockudo_pong_is_a_masked_text_frame() {
        let mut v = Vec::new();
        ws::encode_frame(&mut v, OP_TEXT, br#"{"event":"pusher:pong","data":{}}"#);
        assert_eq!(v, SOCKUDO_PONG);
        assert_eq!(
            Target::Sockudo.keepalive_reply(br#"{"event":"pusher:ping"}"#),
            Some(SOCKUDO_PONG)
        );
        assert_eq!(
            Target::Sockudo.keepalive_reply(
                br#"{"event":"client-f","channel":"private-bench","data":{"type":"f","t":1795631617235123}}"#
            ),
            None
        );
    }
}
