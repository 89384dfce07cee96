//! Circuits: Backend.AI's `/api/circuit*` and our `/v2/circuits`, `/v2/sessions` extensions.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth, Params, QueryParams, WorkerAuth},
};
use crate::{
    error::{ApiError, ErrorResponses},
    models::{
        BulkDeleteRequest, CircuitList, CircuitResponse, CreateCircuitRequest,
        CreateCircuitResponse, ListCircuitsQuery,
        answers::{CircuitStatistics, SessionEnded, Success},
        circuit_response, create_response, validate_create,
    },
    service::{NewInteractive, circuits::Listing, links},
    tokens::SetupRequest,
};

fn success() -> Json<Success> {
    Json(Success::YES)
}

/// Backend.AI's circuit view (a worker's credential: only its own circuits).
#[utoipa::path(get, path = "/api/circuit/{circuit_id}", operation_id = "get_circuit", tag = "worker API",
    params(("circuit_id" = uuid::Uuid, Path)), security(("worker_token" = [])),
    responses((status = 200, body = CircuitResponse), ErrorResponses))]
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
#[utoipa::path(get, path = "/api/circuit/{circuit_id}/statistics", tag = "worker API",
    params(("circuit_id" = uuid::Uuid, Path)), security(("worker_token" = [])),
    responses((status = 200, body = CircuitStatistics), ErrorResponses))]
pub(super) async fn statistics(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<CircuitStatistics>, ApiError> {
    let idle = state.config.reaper.default_idle_timeout_seconds;
    let s = state
        .circuits()
        .statistics(caller.authority(), id, idle)
        .await?;
    Ok(Json(CircuitStatistics {
        circuit: circuit_response(&s.circuit, s.worker.as_ref()),
        requests: s.requests,
        last_access: s.last_access_ms,
        ttl: s.ttl,
    }))
}

/// Remove one circuit (Backend.AI's worker-side delete).
#[utoipa::path(delete, path = "/api/circuit/{circuit_id}", operation_id = "delete_circuit", tag = "worker API",
    params(("circuit_id" = uuid::Uuid, Path)), security(("worker_token" = [])),
    responses((status = 200, body = Success), ErrorResponses))]
pub(super) async fn delete_one(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Success>, ApiError> {
    state.circuits().remove_one(caller.authority(), id).await?;
    Ok(success())
}

/// Remove several circuits (`circuit_ids` in the JSON body, or in the query string).
#[utoipa::path(delete, path = "/api/circuit/_/bulk", operation_id = "delete_circuits", tag = "worker API",
    request_body = BulkDeleteRequest, security(("worker_token" = [])),
    responses((status = 200, body = Success), ErrorResponses))]
pub(super) async fn delete_bulk(
    State(state): State<AppState>,
    caller: WorkerAuth,
    Params(req): Params<BulkDeleteRequest>,
) -> Result<Json<Success>, ApiError> {
    let ids = &req.circuit_ids.0;
    state.circuits().remove(caller.authority(), ids).await?;
    Ok(success())
}

/// A circuit, with its URL.
#[utoipa::path(get, path = "/v2/circuits/{circuit_id}", tag = "circuits",
    params(("circuit_id" = uuid::Uuid, Path)), security(("manager_token" = [])),
    responses((status = 200, body = CircuitResponse), ErrorResponses))]
pub(super) async fn get_v2(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<CircuitResponse>, ApiError> {
    let (c, w) = state.circuits().get_with_worker(id).await?;
    Ok(Json(circuit_response(&c, w.as_ref())))
}

/// Remove a circuit: its route leaves Traefik, its cookies stop working, its sockets close.
#[utoipa::path(delete, path = "/v2/circuits/{circuit_id}", tag = "circuits",
    params(("circuit_id" = uuid::Uuid, Path)), security(("manager_token" = [])),
    responses((status = 200, body = Success), ErrorResponses))]
pub(super) async fn delete_v2(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Success>, ApiError> {
    state.circuits().remove_one(None, id).await?;
    Ok(success())
}

/// A compute session ended: remove every circuit that routes to it.
#[utoipa::path(delete, path = "/v2/sessions/{session_id}", tag = "circuits",
    params(("session_id" = uuid::Uuid, Path)), security(("manager_token" = [])),
    responses((status = 200, body = SessionEnded), ErrorResponses))]
pub(super) async fn delete_session(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(session_id): IdPath,
) -> Result<Json<SessionEnded>, ApiError> {
    let deleted_circuit_ids = state.circuits().end_session(session_id).await?;
    Ok(Json(SessionEnded {
        success: true,
        deleted_circuit_ids,
    }))
}

/// Circuits per page of a listing: `GET /v2/circuits` streams its answer a page at a time,
/// so listing 10k circuits holds one page in memory, not the whole list twice (rows and JSON).
const LIST_PAGE: i64 = 256;

/// Circuits, filtered by session, user or worker (streamed a page at a time).
#[utoipa::path(get, path = "/v2/circuits", operation_id = "list_circuits", tag = "circuits",
    params(("session_id" = Option<uuid::Uuid>, Query), ("user_id" = Option<uuid::Uuid>, Query),
        ("worker" = Option<String>, Query, description = "A worker's authority")),
    security(("manager_token" = [])),
    responses((status = 200, body = CircuitList<CircuitResponse>), ErrorResponses))]
pub(super) async fn list(
    State(state): State<AppState>,
    _: ManagerAuth,
    QueryParams(q): QueryParams<ListCircuitsQuery>,
) -> Result<Response, ApiError> {
    let listing = Listing {
        session_id: q.session_id,
        user_id: q.user_id,
        worker: q.worker,
    };
    let Some((filter, workers)) = state.circuits().list_scope(&listing).await? else {
        let none: CircuitList<CircuitResponse> = CircuitList {
            circuits: Vec::new(),
        };
        return Ok(Json(none).into_response());
    };
    // The first page before the status: a failing database is still a proper error.
    let first = state.circuits().list_page(&filter, None, LIST_PAGE).await?;
    let pages = ListPages {
        state,
        filter,
        workers,
        page: Some(first),
        started: false,
    };
    let body = axum::body::Body::from_stream(futures_util::stream::unfold(pages, ListPages::next));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The pages of a streamed listing: `{"circuits":[` … `]}`, a chunk per page. A database
/// failure after the first page ends the body early (the client sees a truncated answer,
/// never a wrong one).
struct ListPages {
    state: AppState,
    filter: crate::store::CircuitFilter,
    workers: Vec<crate::domain::Worker>,
    page: Option<Vec<crate::domain::Circuit>>,
    started: bool,
}

impl ListPages {
    async fn next(mut self) -> Option<(Result<Vec<u8>, std::io::Error>, ListPages)> {
        let page = self.page.take()?;
        let mut buf = Vec::with_capacity(page.len() * 512 + 16);
        if !self.started {
            buf.extend_from_slice(b"{\"circuits\":[");
        }
        for c in &page {
            if self.started {
                buf.push(b',');
            }
            self.started = true;
            let w = self.workers.iter().find(|w| w.id == c.worker_id);
            if let Err(e) = serde_json::to_writer(&mut buf, &circuit_response(c, w)) {
                return Some((Err(std::io::Error::other(e)), self));
            }
        }
        self.started = true;
        if (page.len() as i64) < LIST_PAGE {
            buf.extend_from_slice(b"]}");
            return Some((Ok(buf), self));
        }
        match (self.state.circuits())
            .list_page(&self.filter, page.last(), LIST_PAGE)
            .await
        {
            Ok(next) => self.page = Some(next),
            Err(e) => {
                tracing::warn!(error = %e, "Circuit listing ended early");
                return Some((Err(std::io::Error::other(e.to_string())), self));
            }
        }
        Some((Ok(buf), self))
    }
}

/// Create an interactive circuit: placed on a worker, served by its Traefik, with a setup
/// link that gives the owner's browser its cookie.
#[utoipa::path(post, path = "/v2/circuits", tag = "circuits", request_body = CreateCircuitRequest,
    security(("manager_token" = [])),
    responses((status = 201, body = CreateCircuitResponse), ErrorResponses))]
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
