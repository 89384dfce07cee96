//! Circuits: Backend.AI's `/api/circuit*` and our `/v2/circuits`, `/v2/sessions` extensions.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth, Params, QueryParams, WorkerAuth},
};
use crate::{
    error::ApiError,
    models::{
        BulkDeleteRequest, CircuitList, CircuitResponse, CreateCircuitRequest,
        CreateCircuitResponse, ListCircuitsQuery, circuit_response, create_response,
        validate_create,
    },
    service::{NewInteractive, circuits::Listing, links},
    tokens::SetupRequest,
};

fn success() -> Json<Value> {
    Json(json!({ "success": true }))
}

pub(super) async fn get_one(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<CircuitResponse>, ApiError> {
    let c = state.circuits().visible_to(caller.authority(), id).await?;
    Ok(Json(circuit_response(&c, None)))
}

/// Backend.AI's `GET /api/circuit/{id}/statistics`: the circuit plus `requests`,
/// `last_access` (epoch ms) and `ttl` (seconds until the idle reaper may take it; `null` for
/// inference circuits).
pub(super) async fn statistics(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    let idle = state.config.reaper.default_idle_timeout_seconds;
    let s = state
        .circuits()
        .statistics(caller.authority(), id, idle)
        .await?;
    let mut v = serde_json::to_value(circuit_response(&s.circuit, s.worker.as_ref()))
        .map_err(|e| ApiError::InvalidParams(e.to_string()))?;
    v["requests"] = json!(s.requests);
    v["last_access"] = json!(s.last_access_ms);
    v["ttl"] = json!(s.ttl);
    Ok(Json(v))
}

pub(super) async fn delete_one(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    state.circuits().remove_one(caller.authority(), id).await?;
    Ok(success())
}

pub(super) async fn delete_bulk(
    State(state): State<AppState>,
    caller: WorkerAuth,
    Params(req): Params<BulkDeleteRequest>,
) -> Result<Json<Value>, ApiError> {
    let ids = &req.circuit_ids.0;
    state.circuits().remove(caller.authority(), ids).await?;
    Ok(success())
}

pub(super) async fn get_v2(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<CircuitResponse>, ApiError> {
    let (c, w) = state.circuits().get_with_worker(id).await?;
    Ok(Json(circuit_response(&c, w.as_ref())))
}

pub(super) async fn delete_v2(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    state.circuits().remove_one(None, id).await?;
    Ok(success())
}

pub(super) async fn delete_session(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(session_id): IdPath,
) -> Result<Json<Value>, ApiError> {
    let ids = state.circuits().end_session(session_id).await?;
    Ok(Json(json!({ "success": true, "deleted_circuit_ids": ids })))
}

pub(super) async fn list(
    State(state): State<AppState>,
    _: ManagerAuth,
    QueryParams(q): QueryParams<ListCircuitsQuery>,
) -> Result<Json<CircuitList<CircuitResponse>>, ApiError> {
    let listing = Listing {
        session_id: q.session_id,
        user_id: q.user_id,
        worker: q.worker,
    };
    let found = state.circuits().list(&listing).await?;
    let circuits = found
        .iter()
        .map(|(c, w)| circuit_response(c, w.as_ref()))
        .collect();
    Ok(Json(CircuitList { circuits }))
}

pub(super) async fn create(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<CreateCircuitRequest>,
) -> Result<(StatusCode, Json<CreateCircuitResponse>), ApiError> {
    let valid = validate_create(&req, state.config.limits.max_routes_per_circuit)?;
    let (token, redirect) = (req.login_session_token.clone(), req.redirect.clone());
    let (c, worker) = state
        .circuits()
        .create_interactive(NewInteractive::from_request(req, valid))
        .await?;
    let ask = SetupRequest {
        user_id: c.user_id,
        login_session_token: token.as_deref(),
        redirect: redirect.as_deref(),
        state: None,
    };
    let link = links::setup_link(&state.signer, &c, &worker, &ask)?;
    let resp = create_response(&c, &worker, link);
    Ok((StatusCode::CREATED, Json(resp)))
}
