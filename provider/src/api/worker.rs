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
        CircuitList, CircuitMapEntry, CircuitResponse, SlotResponse, SlotsQuery, WorkerRequest,
        WorkerResponse,
    },
};
use crate::{
    domain::{FrontendMode, Protocol, Worker, validate_host},
    error::ApiError,
    store::WorkerRegistration,
};

/// Most ports one worker may declare: each is a static Traefik entrypoint.
const MAX_PORTS_PER_WORKER: u32 = 4096;

pub(super) fn validate(r: WorkerRequest) -> Result<WorkerRegistration, ApiError> {
    let bad = |m: String| Err(ApiError::InvalidParams(m));
    crate::domain::validate_authority(&r.authority).map_err(ApiError::InvalidParams)?;
    validate_host(&r.hostname).map_err(ApiError::InvalidParams)?;
    if r.api_port == 0 {
        return bad("api_port must be 1-65535".into());
    }
    match r.frontend_mode {
        FrontendMode::Port => match r.port_range {
            Some((lo, hi)) if lo >= 1 && lo <= hi && u32::from(hi - lo) < MAX_PORTS_PER_WORKER => {}
            _ => {
                return bad(format!(
                    "port mode needs port_range [lo, hi] with 1 <= lo <= hi and at most \
                     {MAX_PORTS_PER_WORKER} ports"
                ));
            }
        },
        FrontendMode::Wildcard => {
            let ok = r.wildcard_domain.as_deref().is_some_and(|d| {
                d.starts_with('.') && validate_host(&d[1..]).is_ok() && d.len() > 1
            });
            if !ok {
                return bad(
                    "wildcard mode needs wildcard_domain like \".apps.example.com\"".into(),
                );
            }
            if r.protocol == Protocol::Tcp {
                return Err(ApiError::UnsupportedProtocol(
                    "tcp workers need port mode".into(),
                ));
            }
        }
    }
    if let Some(u) = &r.authgate_url {
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && !u.contains(char::is_whitespace)
            && !u.contains(['`', '"', '?', '#']);
        if !ok {
            return bad("authgate_url must be an http(s) URL without query".into());
        }
    }
    if let Some(p) = &r.traefik_last_used_marker_path
        && p.len() > 1024
    {
        return bad("traefik_last_used_marker_path is too long".into());
    }
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
    JsonBody(req): JsonBody<WorkerRequest>,
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
    // A worker sees itself only.
    if let Some(mine) = caller.authority() {
        workers.retain(|w| w.authority == mine);
    }
    let counts = state.store.occupied_counts().await?;
    state.metrics.workers.set(workers.len() as i64);
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
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        state.ingest.report(w.id, &v);
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
        let circuits = circuits.iter().map(CircuitMapEntry::new).collect();
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
    super::extract::JsonBody(req): super::extract::JsonBody<RouteHealthReport>,
) -> Result<Json<Value>, ApiError> {
    own_worker(&state, &caller, id).await?;
    state.route_health.report(id, req.circuits);
    Ok(Json(json!({ "success": true })))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteHealthReport {
    pub circuits: std::collections::HashMap<uuid::Uuid, std::collections::BTreeMap<String, String>>,
}
