//! `/api/worker*` and `/api/slots`: worker registration, heartbeat, deregistration, listing,
//! the circuit map authgate polls, route-health reports. The work is in `service::workers`.

use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth, QueryParams, WorkerAuth},
};
use crate::{
    error::ApiError,
    models::{CircuitList, SlotsQuery, WorkerResponse, WorkerSpec, circuit_response, map_entry},
};
use appproxy_common::wire::{Heartbeat, RouteHealthReport, WorkerMap};

/// `POST /v2/workers/{authority}/drain {"drain": bool}` (default true): the manager drains a
/// worker (no new circuits; existing ones kept) or stops draining it.
pub(super) async fn drain(
    State(state): State<AppState>,
    _: ManagerAuth,
    axum::extract::Path(authority): axum::extract::Path<String>,
    JsonBody(req): JsonBody<DrainRequest>,
) -> Result<Json<WorkerResponse>, ApiError> {
    let workers = state.workers();
    let w = workers.drain(&authority, req.drain).await?;
    Ok(Json(workers.describe(&w, false).await?))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainRequest {
    #[serde(default = "yes")]
    drain: bool,
}

fn yes() -> bool {
    true
}

pub(super) async fn register(
    State(state): State<AppState>,
    caller: WorkerAuth,
    JsonBody(spec): JsonBody<WorkerSpec>,
) -> Result<Json<WorkerResponse>, ApiError> {
    caller.may_act_for(&spec.authority)?;
    let workers = state.workers();
    let w = workers.register(&spec).await?;
    Ok(Json(workers.describe(&w, true).await?))
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: WorkerAuth,
) -> Result<Json<Value>, ApiError> {
    let list = state.workers().list(caller.authority()).await?;
    Ok(Json(json!({ "workers": list })))
}

pub(super) async fn get_one(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<WorkerResponse>, ApiError> {
    let workers = state.workers();
    let w = workers.owned(caller.authority(), id).await?;
    Ok(Json(workers.describe(&w, true).await?))
}

/// Heartbeat. The body is optional; authgate puts its ingest health there (`{"ingest":
/// {redis_ok, last_flush_ms, lag_seconds}}`), which gates the idle reaper.
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
    body: axum::body::Bytes,
) -> Result<Json<WorkerResponse>, ApiError> {
    let workers = state.workers();
    let before = workers.owned(caller.authority(), id).await?;
    let w = workers.heartbeat(&before).await?;
    if let Ok(Heartbeat {
        ingest: Some(i), ..
    }) = serde_json::from_slice::<Heartbeat>(&body)
    {
        (state.store)
            .record_ingest(w.id, i.redis_ok, i.last_flush_ms)
            .await?;
    }
    Ok(Json(workers.describe(&w, false).await?))
}

pub(super) async fn deregister(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    let workers = state.workers();
    workers.owned(caller.authority(), id).await?;
    workers.deregister(id).await?;
    Ok(Json(json!({ "success": true })))
}

/// A worker's circuits (`?view=map`: only what authgate needs, with the circuits that left
/// it in the last minute). authgate polls this every second: the answer carries an `ETag`
/// (the worker's map version from SQL, bumped by every change to its circuits whichever
/// provider made it, read before loading, so a change that races with the load yields a new
/// tag after; the view is part of the tag), and `If-None-Match` with the current one gets
/// `304` without loading.
pub(super) async fn circuits(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let slim = query.as_deref() == Some("view=map");
    let w = state.workers().owned(caller.authority(), id).await?;
    let version = state.store.map_version(w.id).await?.unwrap_or(0);
    let version = format!("\"v{version}{}\"", if slim { "-m" } else { "" });
    let etag = [(header::ETAG, version.clone())];
    if headers.get(header::IF_NONE_MATCH).map(|v| v.as_bytes()) == Some(version.as_bytes()) {
        return Ok((StatusCode::NOT_MODIFIED, etag).into_response());
    }
    let circuits = state.store.circuits_of_worker(w.id).await?;
    Ok(if slim {
        let circuits = circuits.iter().map(map_entry).collect();
        let since = crate::store::now_ms() - crate::store::ENDED_LISTED_MS;
        let ended = state.store.ended_since(w.id, since).await?;
        (etag, Json(WorkerMap { circuits, ended })).into_response()
    } else {
        let circuits = (circuits.iter())
            .map(|c| circuit_response(c, Some(&w)))
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
    let slots = state.workers().slots(&q.wsproxy_host, q.in_use).await?;
    Ok(Json(json!({ "slots": slots })))
}

/// `PUT /api/worker/{id}/route-health` from the worker's authgate:
/// `{"circuits": {"<circuit id>": {"<server url>": "UP"|"DOWN"}}}` replaces its last report.
pub(super) async fn route_health(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<RouteHealthReport>,
) -> Result<Json<Value>, ApiError> {
    state.workers().owned(caller.authority(), id).await?;
    state.store.record_route_health(id, &req.circuits).await?;
    Ok(Json(json!({ "success": true })))
}
