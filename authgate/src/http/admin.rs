//! `/health`, `/plugins`, `/metrics`: on the API port only (through Traefik they are 404).

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use std::sync::Arc;

use super::Gate;

/// Ready when the revocation set is loaded and (HTTP workers) the local Traefik serves the
/// shared setup router — before that, setup links of this worker would get Traefik's 404.
pub(super) async fn health(State(g): State<Arc<Gate>>) -> Response {
    let synced = g.revoked.synced();
    let setup_router = if g.cfg.worker.protocol == appproxy_common::wire::Protocol::Tcp {
        true
    } else {
        crate::setup::setup_router_loaded(&g.traefik, &g.cfg.traefik.api_url).await
    };
    // The fast path decides from the state file: ready once it carries the loaded set.
    let fast_path = g.fast_path.as_ref().map(|fp| fp.synced_written());
    let ready = synced && setup_router && fast_path != Some(false);
    let body = json!({
        "status": if ready { "ok" } else { "starting" },
        "revocations_synced": synced,
        "fast_path_state_written": fast_path,
        "redis_connected": g.revoked.connected(),
        "revocations": g.revoked.len(),
        "traefik_setup_router": setup_router,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Loaded plugins (and whether each is disabled) and refused files with reasons.
pub(super) async fn plugins(State(g): State<Arc<Gate>>) -> Response {
    let Some(r) = &g.plugins else {
        return axum::Json(json!({ "enabled": false })).into_response();
    };
    let (loaded, rejected) = r.host.status();
    let loaded: Vec<Value> = loaded
        .into_iter()
        .map(|(name, disabled)| json!({ "name": name, "disabled": disabled }))
        .collect();
    axum::Json(json!({ "enabled": true, "loaded": loaded, "rejected": rejected })).into_response()
}

/// Prometheus text, for peers in `[metrics] allowed_networks` (default loopback) or holders
/// of its token.
pub(super) async fn metrics(
    State(g): State<Arc<Gate>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<appproxy_common::tls::PeerAddr>>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let peer = peer.map(|p| p.0.0.0.ip());
    if !g.cfg.metrics.allows(peer, &headers) {
        let msg = "Metrics are readable from [metrics] allowed_networks or with its token.";
        return crate::error::GateError::new(403, "E00004", msg)
            .for_client(&headers)
            .into_response();
    }
    g.metrics.revocations.set(g.revoked.len() as i64);
    g.metrics.activity_flushed.set(
        g.activity
            .last_flush_ok_ms
            .load(std::sync::atomic::Ordering::Acquire)
            / 1000,
    );
    g.metrics
        .revocations_connected
        .set(i64::from(g.revoked.connected()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        g.metrics.render(),
    )
        .into_response()
}
