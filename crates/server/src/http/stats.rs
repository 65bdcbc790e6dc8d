//! `GET /stats` (the original's stats endpoint) and `GET /health`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::hub::Hub;
use crate::stats::StatsSnapshot;

pub(super) async fn stats(State(hub): State<Arc<Hub>>) -> Json<StatsSnapshot> {
    Json(hub.stats_snapshot())
}

/// 200 while accepting connections, 503 once shutdown has begun (so load
/// balancers stop routing new clients here).
pub(super) async fn health(State(hub): State<Arc<Hub>>) -> (StatusCode, &'static str) {
    if hub.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}
