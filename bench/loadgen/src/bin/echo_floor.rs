//! The Rust floor for bench/run: a bare tokio-tungstenite echo server.
//! Text and binary messages are sent straight back; nothing else happens.
//! `--read-buffer` sets tungstenite's per-connection read buffer (its
//! default, 128 KiB, is what makes idle connections expensive).

use std::net::SocketAddr;

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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
        println!("echo-floor listening on {port} (read buffer {read_buffer} B)");
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
