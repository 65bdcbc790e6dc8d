//! The Rust floor for bench/run: a bare tokio-tungstenite echo server.
//! Text and binary messages are sent straight back; nothing else happens.
//! `--read-buffer` sets tungstenite's per-connection read buffer (its
//! default, 128 KiB, is what makes idle connections expensive).
//! `--multi-thread` runs tokio's work-stealing runtime (one worker per CPU
//! the process may use) instead of one thread. `ECHO_FLOOR_WORK_NS=N` makes
//! it busy-wait N ns per message before answering: a floor with a chosen
//! per-message cost, to tell what follows from a server's cost alone from
//! what follows from how it orders its work (docs/benchmarks-history.md, "rpc").

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

fn main() -> std::io::Result<()> {
    let port: u16 = arg("--port").and_then(|p| p.parse().ok()).unwrap_or(9001);
    let read_buffer: usize = arg("--read-buffer")
        .and_then(|p| p.parse().ok())
        .unwrap_or(4096);
    let work = std::env::var("ECHO_FLOOR_WORK_NS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos);
    let rt = if std::env::args().any(|a| a == "--multi-thread") {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
        println!(
            "echo-floor listening on {port} (read buffer {read_buffer} B, work {} ns per message)",
            work.as_nanos()
        );
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(0)
            .max_message_size(Some(64 << 10))
            .max_frame_size(Some(64 << 10));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if !work.is_zero() {
                        let start = Instant::now();
                        while start.elapsed() < work {
                            std::hint::spin_loop();
                        }
                    }
                    let reply = match msg {
                        Message::Text(_) | Message::Binary(_) => msg,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    // Feed everything already read, flush once.
                    if ws.feed(reply).await.is_err() {
                        break;
                    }
                    if ws.flush().await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}
