//! Circuits: Backend.AI's `/api/circuit*` and our `/v2/circuits`, `/v2/sessions` extensions.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth, Params, QueryParams, WorkerAuth},
    models::{
        BulkDeleteRequest, CircuitList, CircuitResponse, CreateCircuitRequest,
        CreateCircuitResponse, FrontendResponse, ListCircuitsQuery,
    },
};
use crate::{
    domain::{
        AppMode, Circuit, FrontendMode, Protocol, Route, Worker, WorkerStatus, parse_client_ips,
        validate_host,
    },
    error::ApiError,
    store::{CircuitFilter, NewCircuit, StoreError},
};

async fn circuit_or_404(state: &AppState, id: Uuid) -> Result<Circuit, ApiError> {
    state
        .store
        .get_circuit(id)
        .await?
        .ok_or(ApiError::NotFound("circuit"))
}

/// `403` unless every one of `circuits` is on the caller's worker: a worker credential reads
/// and deletes only its own worker's circuits (the manager and the legacy token, any).
async fn check_owner(
    state: &AppState,
    caller: &WorkerAuth,
    circuits: &[Circuit],
) -> Result<(), ApiError> {
    let Some(authority) = caller.authority() else {
        return Ok(());
    };
    let mine = state
        .store
        .worker_by_authority(authority)
        .await?
        .map(|w| w.id);
    match circuits.iter().find(|c| Some(c.worker_id) != mine) {
        Some(c) => Err(ApiError::Forbidden(format!(
            "circuit {} is not on worker {authority:?}",
            c.id
        ))),
        None => Ok(()),
    }
}

/// The circuit `id`, if the caller may see it.
async fn own_circuit(state: &AppState, caller: &WorkerAuth, id: Uuid) -> Result<Circuit, ApiError> {
    let c = circuit_or_404(state, id).await?;
    check_owner(state, caller, std::slice::from_ref(&c)).await?;
    Ok(c)
}

/// Delete circuits by id, then settle.
async fn remove(state: &AppState, ids: &[Uuid]) -> Result<Vec<Circuit>, ApiError> {
    let gone = state.store.delete_circuits(ids).await?;
    settle(state, &gone);
    Ok(gone)
}

/// After circuits left SQL: nudge the reconciler for every worker they lived on.
fn settle(state: &AppState, gone: &[Circuit]) {
    for c in gone {
        state.reconciler.nudge_circuit(c.worker_id, c.id);
    }
    state.metrics.circuits_deleted.inc_by(gone.len() as u64);
}

/// Delete one circuit: `{"success": true}`, or 404.
async fn remove_one(state: &AppState, id: Uuid) -> Result<Json<Value>, ApiError> {
    if remove(state, &[id]).await?.is_empty() {
        return Err(ApiError::NotFound("circuit"));
    }
    Ok(Json(json!({ "success": true })))
}

pub(super) async fn get_one(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<CircuitResponse>, ApiError> {
    let c = own_circuit(&state, &caller, id).await?;
    Ok(Json(CircuitResponse::new(&c, None)))
}

/// Backend.AI's `GET /api/circuit/{id}/statistics`: the circuit plus `requests`,
/// `last_access` (epoch ms) and `ttl` (seconds until the idle reaper may take it; `null` for
/// inference circuits).
pub(super) async fn statistics(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    let c = own_circuit(&state, &caller, id).await?;
    let w = state.store.get_worker(c.worker_id).await?;
    let stats = state
        .activity
        .stats(&[c.id])
        .await
        .map_err(|e| ApiError::DependencyUnavailable(format!("activity store: {e}")))?
        .pop()
        .unwrap_or_default();
    let ttl = crate::activity::remaining_secs(
        &c,
        &stats,
        state.config.reaper.default_idle_timeout_seconds,
        crate::store::now_ms(),
    )
    .map(|r| r.max(0));
    let mut v = serde_json::to_value(CircuitResponse::new(&c, w.as_ref()))
        .map_err(|e| ApiError::InvalidParams(e.to_string()))?;
    v["requests"] = json!(stats.requests);
    v["last_access"] = json!(stats.last_access_ms);
    v["ttl"] = json!(ttl);
    Ok(Json(v))
}

pub(super) async fn delete_one(
    State(state): State<AppState>,
    caller: WorkerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    own_circuit(&state, &caller, id).await?;
    remove_one(&state, id).await
}

pub(super) async fn delete_bulk(
    State(state): State<AppState>,
    caller: WorkerAuth,
    Params(req): Params<BulkDeleteRequest>,
) -> Result<Json<Value>, ApiError> {
    if caller.authority().is_some() {
        let circuits = state.store.circuits_by_ids(&req.circuit_ids.0).await?;
        check_owner(&state, &caller, &circuits).await?;
    }
    remove(&state, &req.circuit_ids.0).await?;
    Ok(Json(json!({ "success": true })))
}

pub(super) async fn get_v2(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<CircuitResponse>, ApiError> {
    let c = circuit_or_404(&state, id).await?;
    let w = state.store.get_worker(c.worker_id).await?;
    Ok(Json(CircuitResponse::new(&c, w.as_ref())))
}

pub(super) async fn delete_v2(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    remove_one(&state, id).await
}

pub(super) async fn delete_session(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(session_id): IdPath,
) -> Result<Json<Value>, ApiError> {
    let gone = state.store.delete_session(session_id).await?;
    settle(&state, &gone);
    if state.activity.configured() {
        let ids: Vec<Uuid> = gone.iter().map(|c| c.id).collect();
        let cleared = async {
            state.activity.clear_session(session_id).await?;
            state.activity.clear_circuits(&ids).await
        };
        if let Err(e) = cleared.await {
            // The keys expire on their own (2 days); the session is gone either way.
            tracing::warn!(error = %e, session = %session_id, "Could not clear activity keys");
        }
    }
    let ids: Vec<Uuid> = gone.iter().map(|c| c.id).collect();
    Ok(Json(json!({ "success": true, "deleted_circuit_ids": ids })))
}

pub(super) async fn list(
    State(state): State<AppState>,
    _: ManagerAuth,
    QueryParams(q): QueryParams<ListCircuitsQuery>,
) -> Result<Json<CircuitList<CircuitResponse>>, ApiError> {
    let worker_id = match &q.worker {
        Some(a) => match state.store.worker_by_authority(a).await? {
            Some(w) => Some(w.id),
            None => return Ok(Json(CircuitList { circuits: vec![] })),
        },
        None => None,
    };
    let filter = CircuitFilter {
        session_id: q.session_id,
        user_id: q.user_id,
        worker_id,
    };
    let circuits = state.store.list_circuits(&filter).await?;
    let workers = state.store.list_workers().await?;
    let list: Vec<CircuitResponse> = circuits
        .iter()
        .map(|c| CircuitResponse::new(c, workers.iter().find(|w| w.id == c.worker_id)))
        .collect();
    drop(circuits);
    Ok(Json(CircuitList { circuits: list }))
}

/// Whether a worker can carry a circuit of this protocol.
fn serves(w: &Worker, protocol: Protocol) -> bool {
    if protocol == Protocol::Tcp {
        w.protocol == Protocol::Tcp
    } else {
        w.protocol != Protocol::Tcp
    }
}

/// Whether a worker's app filters admit a request with these properties: a worker with
/// `filtered_apps_only` takes only matching requests; others take anything.
fn filter_match(w: &Worker, props: &[(String, String)]) -> bool {
    let filters = w.app_filters.as_array().cloned().unwrap_or_default();
    filters.iter().any(|f| {
        props
            .iter()
            .any(|(k, v)| f["key"].as_str() == Some(k) && f["value"].as_str() == Some(v))
    })
}

/// Pick a worker (Backend.AI §3.2, fixed): the named one, or among ALIVE workers that serve
/// the protocol and accept the traffic type and whose app filters admit the request —
/// workers whose filters match first, then wildcard workers (least loaded), then port
/// workers with the most free ports.
pub(super) async fn pick_worker(
    state: &AppState,
    authority: Option<&str>,
    protocol: Protocol,
    mode: AppMode,
    props: &[(String, String)],
) -> Result<Worker, ApiError> {
    let unavailable = |m: &str| ApiError::WorkerNotAvailable(m.to_string());
    if let Some(a) = authority {
        let w = state
            .store
            .worker_by_authority(a)
            .await?
            .ok_or_else(|| unavailable("no such worker"))?;
        if w.status != WorkerStatus::Alive || !serves(&w, protocol) {
            return Err(unavailable(
                "worker is not alive or does not serve this protocol",
            ));
        }
        return Ok(w);
    }
    let counts = state.store.occupied_counts().await?;
    let candidates = state.store.list_workers().await?.into_iter().filter(|w| {
        w.status == WorkerStatus::Alive
            && serves(w, protocol)
            && w.accepted_traffics.contains(&mode)
            && (!w.filtered_apps_only || filter_match(w, props))
    });
    let best = candidates
        .filter_map(|w| {
            let used = counts.get(&w.id).copied().unwrap_or(0);
            let dedicated = i64::from(filter_match(&w, props));
            match w.frontend_mode {
                FrontendMode::Wildcard => Some(((dedicated, 1, -used), w)),
                FrontendMode::Port => {
                    let free = w.available_slots() - used;
                    (free > 0).then_some(((dedicated, 0, free), w))
                }
            }
        })
        .max_by_key(|(k, _)| *k);
    best.map(|(_, w)| w)
        .ok_or_else(|| unavailable("no worker with a free slot serves this protocol"))
}

/// An interactive circuit to create (from `POST /v2/circuits` or `/v2/proxy/auth`).
pub(super) struct NewInteractive {
    pub app: String,
    pub protocol: Protocol,
    pub worker: Option<String>,
    pub user_id: Uuid,
    pub open_to_public: bool,
    pub allowed_client_ips: Vec<ipnet::IpNet>,
    pub port: Option<u16>,
    pub subdomain: Option<String>,
    pub envs: serde_json::Map<String, Value>,
    pub arguments: Option<String>,
    pub idle_timeout: Option<u64>,
    pub routes: Vec<Route>,
    /// Properties worker app filters match (`session.user_uuid`, …).
    pub props: Vec<(String, String)>,
    pub auth_plugin: Option<crate::domain::AuthPlugin>,
    pub allowed_origins: Vec<String>,
}

/// Place and store an interactive circuit, then nudge the reconciler.
pub(super) async fn create_interactive(
    state: &AppState,
    n: NewInteractive,
) -> Result<(Circuit, Worker), ApiError> {
    let worker = pick_worker(
        state,
        n.worker.as_deref(),
        n.protocol,
        AppMode::Interactive,
        &n.props,
    )
    .await?;
    if n.port.is_some() && worker.frontend_mode != FrontendMode::Port {
        return Err(ApiError::InvalidParams(
            "port given but the worker uses subdomains".into(),
        ));
    }
    let new = NewCircuit {
        app: n.app,
        protocol: n.protocol,
        app_mode: AppMode::Interactive,
        worker_id: worker.id,
        preferred_port: n.port,
        preferred_subdomain: n.subdomain,
        envs: Value::Object(n.envs),
        arguments: n.arguments,
        open_to_public: n.open_to_public,
        allowed_client_ips: n.allowed_client_ips,
        user_id: Some(n.user_id),
        endpoint_id: None,
        runtime_variant: None,
        routes: n.routes,
        idle_timeout: n.idle_timeout,
        auth_plugin: n.auth_plugin,
        allowed_origins: n.allowed_origins,
    };
    let c = store_circuit(state, &new, &worker).await?;
    Ok((c, worker))
}

/// Insert a circuit (allocating its slot), count it and nudge the reconciler.
pub(super) async fn store_circuit(
    state: &AppState,
    new: &NewCircuit,
    worker: &Worker,
) -> Result<Circuit, ApiError> {
    let c = state
        .store
        .create_circuit(new, worker)
        .await
        .map_err(store_to_api)?;
    state.metrics.circuits_created.inc();
    state.reconciler.nudge_circuit(worker.id, c.id);
    tracing::info!(circuit = %c.id, worker = %worker.authority, endpoint = ?c.endpoint_id, "Circuit created");
    Ok(c)
}

/// Allocation failures in Backend.AI's terms.
pub(super) fn store_to_api(e: StoreError) -> ApiError {
    match e {
        StoreError::NoFreeSlot => ApiError::WorkerNotAvailable("no free port on the worker".into()),
        StoreError::SlotTaken(m) => ApiError::PortNotAvailable(m),
        StoreError::DuplicateRoute(id) => {
            ApiError::InvalidParams(format!("route_id {id} appears twice"))
        }
        other => other.into(),
    }
}

pub(super) fn validate_create(
    req: &CreateCircuitRequest,
    max_routes: usize,
) -> Result<Vec<Route>, ApiError> {
    let bad = |m: String| Err(ApiError::InvalidParams(m));
    if req.app.is_empty() || req.app.len() > 255 || req.app.chars().any(char::is_control) {
        return bad("app must be 1-255 printable characters".into());
    }
    if req.routes.is_empty() || req.routes.len() > max_routes {
        return bad(format!("routes must hold 1-{max_routes} entries"));
    }
    if let Some(a) = &req.arguments
        && a.len() > 1000
    {
        return bad("arguments must be at most 1000 characters".into());
    }
    if let Some(0) = req.port {
        return bad("port must be 1-65535".into());
    }
    let mut routes = Vec::new();
    for r in &req.routes {
        validate_host(&r.kernel_host).map_err(ApiError::InvalidParams)?;
        if r.kernel_port == 0 {
            return bad("kernel_port must be 1-65535".into());
        }
        if !(r.traffic_ratio.is_finite() && r.traffic_ratio >= 0.0) {
            return bad("traffic_ratio must be a finite number >= 0".into());
        }
        let protocol = r.protocol.unwrap_or(req.protocol);
        if protocol.is_http() != req.protocol.is_http() {
            return Err(ApiError::UnsupportedProtocol(
                "routes must match the circuit protocol".into(),
            ));
        }
        routes.push(Route {
            route_id: r.route_id,
            session_id: r.session_id,
            session_name: r.session_name.clone(),
            kernel_host: r.kernel_host.clone(),
            kernel_port: r.kernel_port,
            protocol,
            traffic_ratio: r.traffic_ratio,
        });
    }
    Ok(routes)
}

pub(super) async fn create(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<CreateCircuitRequest>,
) -> Result<(StatusCode, Json<CreateCircuitResponse>), ApiError> {
    let routes = validate_create(&req, state.config.limits.max_routes_per_circuit)?;
    if let Some(p) = &req.auth_plugin {
        p.validate().map_err(ApiError::InvalidParams)?;
    }
    let ips = match &req.allowed_client_ips {
        Some(l) => parse_client_ips(&l.0).map_err(ApiError::InvalidParams)?,
        None => Vec::new(),
    };
    let origins =
        crate::domain::normalize_origins(&req.allowed_origins).map_err(ApiError::InvalidParams)?;
    let (c, worker) = create_interactive(
        &state,
        NewInteractive {
            app: req.app,
            protocol: req.protocol,
            worker: req.worker,
            user_id: req.user_id,
            open_to_public: req.open_to_public,
            allowed_client_ips: ips,
            port: req.port,
            subdomain: req.subdomain,
            envs: req.envs.unwrap_or_default(),
            arguments: req.arguments,
            idle_timeout: req.idle_timeout,
            routes,
            props: vec![("session.user_uuid".into(), req.user_id.to_string())],
            auth_plugin: req.auth_plugin.clone(),
            allowed_origins: origins,
        },
    )
    .await?;
    let link = super::auth::setup_link(
        &state,
        &c,
        &worker,
        &crate::tokens::SetupRequest {
            user_id: c.user_id,
            login_session_token: req.login_session_token.as_deref(),
            redirect: req.redirect.as_deref(),
            state: None,
        },
    )?;
    let resp = CreateCircuitResponse {
        id: c.id,
        url: c.url(&worker),
        setup_url: link.as_ref().map(|l| l.setup_url.clone()),
        setup_url_expires_at: link.as_ref().map(|l| l.expires_at),
        frontend: FrontendResponse {
            mode: worker.frontend_mode,
            port: c.port(),
            subdomain: c.subdomain().map(str::to_string),
        },
        worker: worker.authority.clone(),
        circuit: CircuitResponse::new(&c, Some(&worker)),
    };
    Ok((StatusCode::CREATED, Json(resp)))
}
