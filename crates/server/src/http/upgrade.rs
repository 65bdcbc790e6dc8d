//! The WebSocket endpoint: validates the upgrade request, authenticates and
//! verifies the client, answers 101, and starts the connection loop on the
//! server's task tracker (axum's own `WebSocketUpgrade` spawns detached tasks
//! that graceful shutdown cannot wait for).
//!
//! A refused client is still upgraded and then closed with a close code and
//! reason: browsers hide the HTTP status of a failed upgrade, but they do show
//! close codes, and those tell the client whether to reconnect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use pubsub_protocol::{SUBPROTOCOL_JSON_V1, close};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::auth::{Handshake, Identity};
use crate::connection::{refuse, serve_session};
use crate::hub::Hub;

pub(super) async fn websocket(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(remote_addr): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if !is_upgrade_request(headers) {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "this endpoint speaks WebSocket (subprotocol pubsub.v1.json); see docs/protocol.md\n",
        )
            .into_response();
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "unsupported WebSocket version; use 13\n",
        )
            .into_response();
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n").into_response();
    };
    let accept = accept_key(key.as_bytes());
    let protocol = match choose_subprotocol(headers) {
        Ok(protocol) => protocol,
        Err(()) => {
            return (
                StatusCode::BAD_REQUEST,
                "unsupported subprotocol; this server speaks pubsub.v1.json\n",
            )
                .into_response();
        }
    };
    let handshake = handshake_of(&request, remote_addr);
    // Tabs opened in the background can say so; everyone else starts active.
    let active = handshake.query.get("active").is_none_or(|v| v != "false");
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "connection cannot be upgraded\n",
        )
            .into_response();
    };

    let verdict = admit(&hub, &handshake).await;
    if verdict.is_err() {
        hub.stats
            .connections
            .rejected
            .fetch_add(1, Ordering::Relaxed);
    }

    hub.tasks.spawn(run_upgraded(
        hub.clone(),
        on_upgrade,
        verdict,
        remote_addr,
        active,
    ));

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// What the task of an upgraded connection runs until the socket is ours:
/// then the session starts as a task of its own (or the refusal runs here).
async fn run_upgraded(
    hub: Arc<Hub>,
    on_upgrade: OnUpgrade,
    verdict: Result<Identity, (u16, String)>,
    remote_addr: SocketAddr,
    active: bool,
) {
    let upgraded = match timeout(hub.config.handshake_timeout(), on_upgrade).await {
        Ok(Ok(upgraded)) => upgraded,
        _ => return,
    };
    // Our accept loop serves plain TCP streams; take the socket back from
    // hyper to run our own framing on it.
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        tracing::error!("upgraded connection is not a TCP stream");
        return;
    };
    let socket = parts.io.into_inner();
    forget_hypers_wakers(&socket);
    let socket = Arc::new(socket);
    match verdict {
        Ok(identity) => {
            // `read_buf` is a view into hyper's 8 KiB read buffer: copy the
            // (usually empty) rest out so that buffer is freed now rather
            // than held for the whole session.
            let leftover = parts.read_buf.to_vec();
            drop(parts.read_buf);
            // The session gets a task of its own and this one ends: an idle
            // connection then carries one allocation (the session's task)
            // rather than this task plus the boxed session inside it.
            let tasks = hub.tasks.clone();
            tasks.spawn(serve_session(
                hub,
                socket,
                leftover,
                identity,
                remote_addr,
                active,
            ));
        }
        Err((code, reason)) => {
            tracing::debug!(%remote_addr, code, %reason, "connection refused");
            Box::pin(refuse(socket, code, &reason)).await;
        }
    }
}

/// Authenticates and verifies within the handshake timeout. The error is the
/// close code and reason to send.
async fn admit(hub: &Hub, handshake: &Handshake) -> Result<Identity, (u16, String)> {
    if hub.is_shutting_down() {
        return Err((close::SERVICE_RESTART, "server shutting down".into()));
    }
    if hub.open_connections.load(Ordering::Relaxed) >= hub.config.max_connections {
        return Err((
            close::TRY_AGAIN_LATER,
            "server at its connection limit".into(),
        ));
    }
    let checks = async {
        let identity = hub
            .auth
            .authenticate(handshake)
            .await
            .map_err(|e| (e.close_code(), e.to_string()))?;
        if let Some(verify) = &hub.verify {
            verify
                .verify(handshake, &identity)
                .await
                .map_err(|r| (r.code, r.reason))?;
        }
        Ok(identity)
    };
    match timeout(hub.config.handshake_timeout(), checks).await {
        Ok(result) => result,
        Err(_) => Err((close::TRY_AGAIN_LATER, "authentication timed out".into())),
    }
}

fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// `Ok(None)` when the client offered no subprotocol (v1 JSON is implied),
/// `Err` when it offered only ones this server does not speak.
fn choose_subprotocol(headers: &HeaderMap) -> Result<Option<&'static str>, ()> {
    let mut offered = false;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for protocol in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            offered = true;
            if protocol == SUBPROTOCOL_JSON_V1 {
                return Ok(Some(SUBPROTOCOL_JSON_V1));
            }
        }
    }
    if offered { Err(()) } else { Ok(None) }
}

fn handshake_of(request: &Request, remote_addr: SocketAddr) -> Handshake {
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    Handshake {
        claimed_user: query.get("userId").cloned(),
        token: query.get("token").cloned().or(bearer),
        origin: headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        remote_addr,
        headers: headers.clone(),
        query,
    }
}

/// Replaces the wakers hyper's finished task left in the socket's
/// registration (it read and wrote through the poll interface) with no-op
/// ones; otherwise that finished task's memory stays allocated for the whole
/// session.
fn forget_hypers_wakers(socket: &TcpStream) {
    let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = socket.poll_read_ready(&mut noop);
    let _ = socket.poll_write_ready(&mut noop);
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub(super) fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
