//! The HTTP surface: the WebSocket endpoint, `GET /stats`, `GET /health`, and
//! whatever routes the embedding application mounts next to them.

mod listener;
mod stats;
mod upgrade;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::hub::Hub;

pub(crate) use listener::accept_loop;

#[cfg(test)]
pub(crate) fn accept_key_for_tests(key: &[u8]) -> String {
    upgrade::accept_key(key)
}

/// The server's own routes merged with the application's.
pub(crate) fn router(hub: Arc<Hub>, extra: Router) -> Router {
    let own = Router::new()
        .route(&hub.config.path, get(upgrade::websocket))
        .route("/stats", get(stats::stats))
        .route("/health", get(stats::health))
        .with_state(hub);
    own.merge(extra)
}
