//! Conformance of wire.rs, checked by the Autobahn|Testsuite (the reference
//! WebSocket test suite). Autobahn drives an echo server, so this test runs
//! one built from the same parser, reader and outbox the server uses.
//!
//! Needs `wstest` (Python 2: `pip install autobahntestsuite`); run with
//! `WSTEST=/path/to/wstest cargo test -p pubsub-server --lib autobahn -- --ignored`.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::outbox::{Frame, Outbox};
use super::reader::{Read, read};
use super::wire::{self, Incoming, Parser};

/// Autobahn's largest messages are 16 MiB.
const MAX_MESSAGE: usize = 20 << 20;

async fn handshake(stream: &mut TcpStream) -> Option<()> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.ok()?;
        request.push(byte[0]);
    }
    let request = String::from_utf8(request).ok()?;
    let key = request.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    })?;
    let accept = crate::http::accept_key_for_tests(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await.ok()
}

async fn echo(mut stream: TcpStream) {
    if handshake(&mut stream).await.is_none() {
        return;
    }
    let socket = Arc::new(stream);
    let outbox = Outbox::new(socket.clone(), usize::MAX);
    outbox.release();
    let mut parser = Parser::default();
    let mut incoming = Vec::new();
    loop {
        tokio::select! {
            () = outbox.wait() => {
                if outbox.flush().await.is_err() {
                    return;
                }
            }
            ready = socket.readable() => {
                if ready.is_err() {
                    return;
                }
                match read(&socket, &mut parser, MAX_MESSAGE, &mut incoming) {
                    Ok(Read::Data | Read::Nothing) => {}
                    Ok(Read::Eof) => return,
                    Err(super::reader::ReadError::Wire(e)) => {
                        let code = match e {
                            wire::WireError::TooBig => 1009,
                            wire::WireError::InvalidUtf8 => 1007,
                            wire::WireError::Protocol(_) => 1002,
                        };
                        let _ = outbox.finish_with(Frame::raw(wire::encode_close(code, ""))).await;
                        return;
                    }
                    Err(_) => return,
                }
                for message in incoming.drain(..) {
                    let frame = match message {
                        Incoming::Text(text) => wire::encode_text(text.as_bytes()),
                        Incoming::Binary(data) => wire::encode(0x2, &data),
                        Incoming::Ping(payload) => wire::encode_pong(&payload),
                        Incoming::Pong => continue,
                        Incoming::Close(code) => {
                            let _ = outbox.finish_with(Frame::raw(wire::encode_close(code.unwrap_or(1000), ""))).await;
                            return;
                        }
                    };
                    outbox.push(Frame::raw(frame));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Autobahn|Testsuite (wstest); see the module docs"]
async fn autobahn_fuzzingclient_finds_no_failures() {
    let wstest = std::env::var("WSTEST").unwrap_or_else(|_| "wstest".into());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(echo(stream));
        }
    });
    let dir = std::env::temp_dir().join(format!("autobahn-{port}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let spec = serde_json::json!({
        "outdir": dir.join("reports").to_string_lossy(),
        "servers": [{"agent": "pubsub", "url": format!("ws://127.0.0.1:{port}")}],
        "cases": ["*"],
        // Compression (permessage-deflate) is not offered.
        "exclude-cases": ["12.*", "13.*"],
        "exclude-agent-cases": {}
    });
    let spec_path = dir.join("fuzzingclient.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let run = {
        let (wstest, spec_path, dir) = (wstest.clone(), spec_path.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(&wstest)
                .args(["-m", "fuzzingclient", "-s"])
                .arg(&spec_path)
                .current_dir(&dir)
                .status()
        })
    };
    let status = run
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("cannot run {wstest}: {e}"));
    assert!(status.success(), "wstest failed");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reports/index.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut failed = Vec::new();
    let mut total = 0;
    for (case, result) in index["pubsub"].as_object().into_iter().flatten() {
        total += 1;
        let behavior = result["behavior"].as_str().unwrap_or("");
        let close = result["behaviorClose"].as_str().unwrap_or("");
        let acceptable = |b: &str| matches!(b, "OK" | "NON-STRICT" | "INFORMATIONAL");
        if !acceptable(behavior) || !acceptable(close) {
            failed.push(format!("{case}: {behavior}/{close}"));
        }
    }
    eprintln!("autobahn: {total} cases, {} not OK", failed.len());
    assert!(total > 200, "only {total} cases ran");
    assert!(failed.is_empty(), "cases not OK: {failed:#?}");
}
