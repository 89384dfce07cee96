//! `/status`, `/health*`, `/metrics`: unauthenticated probes.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::{Value, json};

use super::AppState;

pub(super) async fn status(State(state): State<AppState>) -> Json<Value> {
    let advertise = state
        .config
        .advertise_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", state.config.listen));
    Json(json!({ "api_version": "v2", "advertise_address": advertise }))
}

async fn connectivity(state: &AppState) -> (bool, bool) {
    let db = state.store.ping().await.is_ok();
    let etcd = state.etcd.ping().await.is_ok();
    (db, etcd)
}

pub(super) async fn health(State(state): State<AppState>) -> Json<Value> {
    let (db, etcd) = connectivity(&state).await;
    Json(json!({
        "status": if db && etcd { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "component": "appproxy-coordinator",
        "connectivity": { "database": db, "etcd": etcd },
    }))
}

pub(super) async fn livez() -> impl IntoResponse {
    (StatusCode::OK, Json(json!({ "status": "ok" })))
}

pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (db, etcd) = connectivity(&state).await;
    let code = if db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(
            json!({ "status": if db { "ok" } else { "unavailable" }, "database": db, "etcd": etcd }),
        ),
    )
}

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
