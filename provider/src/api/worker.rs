//! `/api/worker*` and `/api/slots`: worker registration, heartbeat, deregistration, listing.

use axum::{
    Json,
    extract::{RawQuery, State},
};
use serde_json::{Value, json};

use super::{
    AppState,
    extract::{IdPath, JsonBody, QueryParams, WorkerAuth},
    models::{
        CircuitList, CircuitResponse, SlotResponse, SlotsQuery, WorkerResponse, WorkerSpec,
        map_entry,
    },
};
use appproxy_common::wire::{Heartbeat, RouteHealthReport, SpecError};

use crate::{
    domain::{FrontendMode, Worker},
    error::ApiError,
    store::WorkerRegistration,
};

pub(super) fn validate(r: WorkerSpec) -> Result<WorkerRegistration, ApiError> {
    r.validate().map_err(|e| match e {
        SpecError::Invalid(m) => ApiError::InvalidParams(m),
        SpecError::UnsupportedProtocol(m) => ApiError::UnsupportedProtocol(m),
    })?;
    Ok(WorkerRegistration {
        authority: r.authority,
        frontend_mode: r.frontend_mode,
        protocol: r.protocol,
        hostname: r.hostname,
        tls_listen: r.tls_listen,
        tls_advertised: r.tls_advertised,
        api_port: r.api_port,
        port_range: if r.frontend_mode == FrontendMode::Port {
            r.port_range
        } else {
            None
        },
        wildcard_domain: r.wildcard_domain,
        wildcard_traffic_port: r.wildcard_traffic_port,
        filtered_apps_only: r.filtered_apps_only,
        traefik_last_used_marker_path: r.traefik_last_used_marker_path,
        accepted_traffics: r.accepted_traffics,
        app_filters: serde_json::to_value(r.app_filters).unwrap_or(Value::Array(vec![])),
        authgate_url: r.authgate_url,
    })
}

async fn respond(
    state: &AppState,
    w: &Worker,
    with_slots: bool,
) -> Result<Json<WorkerResponse>, ApiError> {
    let circuits = state.store.circuits_of_worker(w.id).await?;
    let mut resp = WorkerResponse::new(
        w,
        circuits.len() as i64,
        state.reconciler.root_key(&w.authority),
    );
    if with_slots {
        resp.slots = Some(slots_of(w, &circuits, None));
    }
    Ok(Json(resp))
}

fn slots_of(
    w: &Worker,
    circuits: &[crate::domain::Circuit],
    in_use: Option<bool>,
) -> Vec<SlotResponse> {
    let mut slots = Vec::new();
    match (w.frontend_mode, w.port_range) {
        (FrontendMode::Port, Some((lo, hi))) => {
            for port in lo..=hi {
                let c = circuits.iter().find(|c| c.port() == Some(port));
                slots.push(SlotResponse {
                    frontend_mode: FrontendMode::Port,
                    in_use: c.is_some(),
                    port: Some(port),
                    subdomain: None,
                    circuit_id: c.map(|c| c.id),
                });
            }
        }
        _ => {
            for c in circuits {
                slots.push(SlotResponse {
                    frontend_mode: FrontendMode::Wildcard,
                    in_use: true,
                    port: None,
                    subdomain: c.subdomain().map(str::to_string),
                    circuit_id: Some(c.id),
                });
            }
        }
    }
    if let Some(flag) = in_use {
        slots.retain(|s| s.in_use == flag);
    }
    slots
}

async fn worker_or_404(state: &AppState, id: uuid::Uuid) -> Result<Worker, ApiError> {
    state
        .store
        .get_worker(id)
        .await?
        .ok_or(ApiError::NotFound("worker"))
}

/// The worker `id`, if the caller may act for it (404 before 403: ids are not secrets, but
/// a missing worker is the better answer for a stale id).
async fn own_worker(
    state: &AppState,
    caller: &WorkerAuth,
    id: uuid::Uuid,
) -> Result<Worker, ApiError> {
    let w = worker_or_404(state, id).await?;
    caller.may_act_for(&w.authority)?;
    Ok(w)
}

pub(super) async fn register(
    State(state): State<AppState>,
    caller: WorkerAuth,
    JsonBody(req): JsonBody<WorkerSpec>,
) -> Result<Json<WorkerResponse>, ApiError> {
    caller.may_act_for(&req.authority)?;
    let reg = validate(req)?;
    let w = state.store.upsert_worker(&reg).await?;
    tracing::info!(authority = %w.authority, id = %w.id, "Worker registered");
    state.reconciler.nudge(w.id);
    respond(&state, &w, true).await
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: WorkerAuth,
) -> Result<Json<Value>, ApiError> {
    let mut workers = state.store.list_workers().await?;
    state.metrics.workers.set(workers.len() as i64);
    // A worker sees itself only.
    if let Some(mine) = caller.authority() {
        workers.retain(|w| w.authority == mine);
    }
    let counts = state.store.occupied_counts().await?;
    let list: Vec<WorkerResponse> = workers
        .iter()
        .map(|w| {
            WorkerResponse::new(
                w,
                counts.get(&w.id).copied().unwrap_or(0),
                state.reconciler.root_key(&w.authority),
            )
        })
        .collect();
    Ok(Json(json!({ "workers": list })))
}

pub(super) async fn get_one(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<WorkerResponse>, ApiError> {
    let w = own_worker(&state, &caller, id).await?;
    respond(&state, &w, true).await
}

/// Heartbeat. The body is optional; authgate puts its ingest health there (`{"ingest":
/// {redis_ok, last_flush_ms, lag_seconds}}`), which gates the idle reaper.
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
    body: axum::body::Bytes,
) -> Result<Json<WorkerResponse>, ApiError> {
    own_worker(&state, &caller, id).await?;
    let w = state
        .store
        .heartbeat_worker(id)
        .await?
        .ok_or(ApiError::NotFound("worker"))?;
    if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&body) {
        state.ingest.report(w.id, &hb);
    }
    respond(&state, &w, false).await
}

pub(super) async fn deregister(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    own_worker(&state, &caller, id).await?;
    let w = state
        .store
        .deregister_worker(id)
        .await?
        .ok_or(ApiError::NotFound("worker"))?;
    tracing::info!(authority = %w.authority, nodes = w.nodes, status = %w.status, "Worker deregistered");
    Ok(Json(json!({ "success": true })))
}

/// A worker's circuits (`?view=map`: only what authgate needs). authgate polls this every
/// few seconds: the answer carries an `ETag` (the reconciler's change counter for the worker),
/// and `If-None-Match` with the current one gets `304` without loading the circuits.
pub(super) async fn circuits(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::{http::header, response::IntoResponse};
    let slim = query.as_deref() == Some("view=map");
    // Read before loading: a change that races with the load bumps it after. The view is
    // part of the tag.
    let version = format!(
        "\"{}{}\"",
        state.reconciler.map_version(id),
        if slim { "-m" } else { "" }
    );
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == version.as_bytes());
    let w = own_worker(&state, &caller, id).await?;
    if unchanged {
        return Ok((
            axum::http::StatusCode::NOT_MODIFIED,
            [(header::ETAG, version)],
        )
            .into_response());
    }
    let circuits = state.store.circuits_of_worker(w.id).await?;
    let etag = [(header::ETAG, version)];
    Ok(if slim {
        let circuits = circuits.iter().map(map_entry).collect();
        (etag, Json(CircuitList { circuits })).into_response()
    } else {
        let circuits = circuits
            .iter()
            .map(|c| CircuitResponse::new(c, Some(&w)))
            .collect();
        (etag, Json(CircuitList { circuits })).into_response()
    })
}

pub(super) async fn slots(
    State(state): State<AppState>,
    caller: WorkerAuth,
    QueryParams(q): QueryParams<SlotsQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.may_act_for(&q.wsproxy_host)?;
    let w = state
        .store
        .worker_by_authority(&q.wsproxy_host)
        .await?
        .ok_or(ApiError::NotFound("worker"))?;
    let circuits = state.store.circuits_of_worker(w.id).await?;
    Ok(Json(json!({ "slots": slots_of(&w, &circuits, q.in_use) })))
}

/// `PUT /api/worker/{id}/route-health` from the worker's authgate:
/// `{"circuits": {"<circuit id>": {"<server url>": "UP"|"DOWN"}}}` replaces its last report.
pub(super) async fn route_health(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<RouteHealthReport>,
) -> Result<Json<Value>, ApiError> {
    own_worker(&state, &caller, id).await?;
    state.route_health.report(id, req.circuits);
    Ok(Json(json!({ "success": true })))
}
