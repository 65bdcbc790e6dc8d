//! The accept loop. Written out (rather than `axum::serve`) to get what a
//! server needs and `axum::serve` does not offer: a bound on the time to send
//! the request head (slowloris), TCP_NODELAY, the peer address on every
//! request, and every connection on the server's task tracker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

use crate::hub::Hub;

/// Pause after an accept error such as running out of file descriptors, so
/// the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub(crate) async fn accept_loop(listener: TcpListener, router: Router, hub: Arc<Hub>) {
    loop {
        let accepted = tokio::select! {
            () = hub.shutdown_started() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote_addr)) => {
                let router = router.clone();
                let conn_hub = hub.clone();
                hub.tasks
                    .spawn(serve_http(stream, remote_addr, router, conn_hub));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

async fn serve_http(stream: TcpStream, remote_addr: SocketAddr, router: Router, hub: Arc<Hub>) {
    // Small frames (acks, pings) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote_addr));
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(hub.config.handshake_timeout())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%remote_addr, error = %e, "http connection ended with an error");
            }
        }
        () = hub.shutdown_started() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
