//! `/api/worker*` and `/api/slots`: worker registration, heartbeat, deregistration, listing,
//! the circuit map authgate polls, route-health reports. The work is in `service::workers`.

use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth, QueryParams, WorkerAuth},
};
use crate::{
    error::{ApiError, ErrorResponses},
    models::{
        CircuitList, SlotsQuery, WorkerResponse, WorkerSpec,
        answers::{SlotList, Success, WorkerCircuits, WorkerList},
        circuit_response, map_entry,
    },
};
use appproxy_common::wire::{Heartbeat, RouteHealthReport, WorkerMap};

/// `POST /v2/workers/{authority}/drain {"drain": bool}` (default true): the manager drains a
/// worker (no new circuits; existing ones kept) or stops draining it.
#[utoipa::path(post, path = "/v2/workers/{authority}/drain", tag = "workers",
    params(("authority" = String, Path)), request_body = DrainRequest,
    security(("manager_token" = [])),
    responses((status = 200, body = WorkerResponse), ErrorResponses))]
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

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainRequest {
    /// `false` stops draining.
    #[serde(default = "yes")]
    #[schema(default = true)]
    drain: bool,
}

fn yes() -> bool {
    true
}

/// A worker registers (again) with its spec; answers with its slots.
#[utoipa::path(put, path = "/api/worker", tag = "worker API", request_body = WorkerSpec,
    security(("worker_token" = [])),
    responses((status = 200, body = WorkerResponse), ErrorResponses))]
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

/// The workers (a worker's own credential: only itself).
#[utoipa::path(get, path = "/api/worker", operation_id = "list_workers", tag = "worker API", security(("worker_token" = [])),
    responses((status = 200, body = WorkerList), ErrorResponses))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: WorkerAuth,
) -> Result<Json<WorkerList>, ApiError> {
    let workers = state.workers().list(caller.authority()).await?;
    Ok(Json(WorkerList { workers }))
}

/// One worker, with its slots.
#[utoipa::path(get, path = "/api/worker/{worker_id}", operation_id = "get_worker", tag = "worker API",
    params(("worker_id" = uuid::Uuid, Path)), security(("worker_token" = [])),
    responses((status = 200, body = WorkerResponse), ErrorResponses))]
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
#[utoipa::path(patch, path = "/api/worker/{worker_id}", tag = "worker API",
    params(("worker_id" = uuid::Uuid, Path)), request_body(content = Heartbeat),
    security(("worker_token" = [])),
    responses((status = 200, body = WorkerResponse), ErrorResponses))]
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

/// A worker leaves (its circuits are rescheduled or removed).
#[utoipa::path(delete, path = "/api/worker/{worker_id}", tag = "worker API",
    params(("worker_id" = uuid::Uuid, Path)), security(("worker_token" = [])),
    responses((status = 200, body = Success), ErrorResponses))]
pub(super) async fn deregister(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Success>, ApiError> {
    let workers = state.workers();
    workers.owned(caller.authority(), id).await?;
    workers.deregister(id).await?;
    Ok(Json(Success::YES))
}

/// A worker's circuits (`?view=map`: only what authgate needs, with the circuits that left
/// it in the last minute). authgate polls this every second: the answer carries an `ETag`
/// (the worker's map version from SQL, bumped by every change to its circuits whichever
/// provider made it, read before loading, so a change that races with the load yields a new
/// tag after; the view is part of the tag), and `If-None-Match` with the current one gets
/// `304` without loading.
#[utoipa::path(get, path = "/api/worker/{worker_id}/circuits", tag = "worker API",
    params(("worker_id" = uuid::Uuid, Path),
        ("view" = Option<String>, Query, description = "`map`: the slim map authgate polls"),
        ("If-None-Match" = Option<String>, Header)),
    security(("worker_token" = [])),
    responses(
        (status = 200, description = "The circuits (`view=map`: the map)",
         headers(("ETag" = String)), body = WorkerCircuits),
        (status = 304, description = "Unchanged since the `ETag` sent"),
        ErrorResponses))]
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
        (
            etag,
            Json(WorkerCircuits::Map(WorkerMap { circuits, ended })),
        )
            .into_response()
    } else {
        let circuits = (circuits.iter())
            .map(|c| circuit_response(c, Some(&w)))
            .collect();
        (etag, Json(WorkerCircuits::Full(CircuitList { circuits }))).into_response()
    })
}

/// A worker's slots (ports or subdomains), optionally only those in use or free.
#[utoipa::path(get, path = "/api/slots", tag = "worker API",
    params(("wsproxy_host" = String, Query), ("in_use" = Option<bool>, Query)),
    security(("worker_token" = [])),
    responses((status = 200, body = SlotList), ErrorResponses))]
pub(super) async fn slots(
    State(state): State<AppState>,
    caller: WorkerAuth,
    QueryParams(q): QueryParams<SlotsQuery>,
) -> Result<Json<SlotList>, ApiError> {
    caller.may_act_for(&q.wsproxy_host)?;
    let slots = state.workers().slots(&q.wsproxy_host, q.in_use).await?;
    Ok(Json(SlotList { slots }))
}

/// `PUT /api/worker/{id}/route-health` from the worker's authgate:
/// `{"circuits": {"<circuit id>": {"<server url>": "UP"|"DOWN"}}}` replaces its last report.
#[utoipa::path(put, path = "/api/worker/{worker_id}/route-health", tag = "worker API",
    params(("worker_id" = uuid::Uuid, Path)), request_body = RouteHealthReport,
    security(("worker_token" = [])),
    responses((status = 200, body = Success), ErrorResponses))]
pub(super) async fn route_health(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<RouteHealthReport>,
) -> Result<Json<Success>, ApiError> {
    state.workers().owned(caller.authority(), id).await?;
    state.store.record_route_health(id, &req.circuits).await?;
    Ok(Json(Success::YES))
}
