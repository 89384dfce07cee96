//! `/status`, `/health`, `/health/livez`, `/health/readyz`, `/metrics`: unauthenticated
//! probes. `/health/status`, `/health/summary`, `/health/endpoints`, `/health/circuits/{id}`:
//! the Manager's view of workers and of replica health as Traefik sees it (Backend.AI's
//! versions of the last three always answered 500).

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::{Value, json};

use super::{
    AppState,
    extract::{IdPath, ManagerAuth},
};
use crate::{
    domain::Circuit, error::ApiError, route_health::RouteHealth, service::liveness::stranded_reason,
};

pub(super) async fn status(State(state): State<AppState>) -> Json<Value> {
    let advertise = state
        .config
        .advertise_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", state.config.listen));
    let l = &state.leadership;
    Json(json!({
        "api_version": "v2",
        "advertise_address": advertise,
        "node_id": l.node(),
        "leader": l.is_leader(),
        "leader_id": l.leader(),
    }))
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

/// Prometheus text, for peers in `[metrics] allowed_networks` or holders of its token.
pub(super) async fn metrics(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<appproxy_common::tls::PeerAddr>>>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let peer = peer.map(|p| p.0.0.0.ip());
    if !state.config.metrics.allows(peer, &headers) {
        return Err(ApiError::Forbidden(
            "metrics are readable from [metrics] allowed_networks or with its token".into(),
        ));
    }
    Ok((
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    ))
}

pub(super) async fn worker_status(
    State(state): State<AppState>,
    _: ManagerAuth,
) -> Result<Json<Value>, ApiError> {
    let counts = state.store.occupied_counts().await?;
    let workers: Vec<Value> = state
        .store
        .list_workers()
        .await?
        .iter()
        .map(|w| {
            json!({
                "authority": w.authority,
                "status": w.status.as_str(),
                "available_slots": w.available_slots(),
                "occupied_slots": counts.get(&w.id).copied().unwrap_or(0),
                "ha_setup": w.nodes > 1,
            })
        })
        .collect();
    Ok(Json(json!({
        "coordinator_version": env!("CARGO_PKG_VERSION"),
        "appproxy_api_version": "v2",
        "workers": workers,
    })))
}

/// Routes of a circuit with their health.
fn routes_health(health: &RouteHealth, c: &Circuit) -> Vec<Value> {
    c.routes
        .iter()
        .map(|r| {
            json!({
                "route_id": r.route_id,
                "session_id": r.session_id,
                "kernel_host": r.kernel_host,
                "kernel_port": r.kernel_port,
                "traffic_ratio": r.traffic_ratio,
                "health_status": health.status(c.id, r),
            })
        })
        .collect()
}

pub(super) async fn endpoints(
    State(state): State<AppState>,
    _: ManagerAuth,
) -> Result<Json<Value>, ApiError> {
    let workers = state.store.list_workers().await?;
    let health = RouteHealth::load(&state.store).await?;
    let mut out = Vec::new();
    for (e, c) in state.store.list_endpoints().await? {
        let worker = |c: &Circuit| workers.iter().find(|w| w.id == c.worker_id);
        out.push(json!({
            "endpoint_id": e.id,
            "health_check_enabled": e.health_check_enabled(),
            "circuit_id": c.as_ref().map(|c| c.id),
            "worker": c.as_ref().and_then(worker).map(|w| &w.authority),
            "problem": c.as_ref().and_then(|c| stranded_reason(c, worker(c))),
            "routes": c.as_ref().map(|c| routes_health(&health, c)).unwrap_or_default(),
        }));
    }
    Ok(Json(json!({ "endpoints": out })))
}

pub(super) async fn circuit(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    let (c, w) = state.circuits().get_with_worker(id).await?;
    let health = RouteHealth::load(&state.store).await?;
    Ok(Json(json!({
        "circuit_id": c.id,
        "endpoint_id": c.endpoint_id,
        "app_mode": c.app_mode.as_str(),
        "worker": w.as_ref().map(|w| &w.authority),
        "worker_status": w.as_ref().map(|w| w.status.as_str()),
        "problem": stranded_reason(&c, w.as_ref()),
        "routes": routes_health(&health, &c),
    })))
}

pub(super) async fn summary(
    State(state): State<AppState>,
    _: ManagerAuth,
) -> Result<Json<Value>, ApiError> {
    let health = RouteHealth::load(&state.store).await?;
    let (mut healthy, mut unhealthy, mut unknown) = (0, 0, 0);
    for (_, c) in state.store.list_endpoints().await? {
        for r in c.iter().flat_map(|c| routes_health(&health, c)) {
            match r["health_status"].as_str() {
                Some("healthy") => healthy += 1,
                Some("unhealthy") => unhealthy += 1,
                _ => unknown += 1,
            }
        }
    }
    Ok(Json(json!({
        "total_routes": healthy + unhealthy + unknown,
        "healthy": healthy, "unhealthy": unhealthy, "unknown": unknown,
    })))
}
