//! `/status`, `/health`, `/health/livez`, `/health/readyz`, `/metrics`: unauthenticated
//! probes. `/health/status`, `/health/summary`, `/health/endpoints`, `/health/circuits/{id}`:
//! the Manager's view of workers and of replica health as Traefik sees it (Backend.AI's
//! versions of the last three always answered 500).

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};

use super::{
    AppState,
    extract::{IdPath, ManagerAuth},
};
use crate::{
    domain::Circuit,
    error::{ApiError, ErrorResponses},
    models::answers::{
        CircuitHealth, Connectivity, EndpointHealth, EndpointsHealth, HealthAnswer, HealthSummary,
        LiveAnswer, ReadyAnswer, RouteHealthView, StatusAnswer, WorkerHealth, WorkersHealth,
    },
    route_health::RouteHealth,
    service::liveness::stranded_reason,
};

/// This replica: its advertised address, its node id and who leads.
#[utoipa::path(get, path = "/status", tag = "probes",
    responses((status = 200, body = StatusAnswer), ErrorResponses))]
pub(super) async fn status(State(state): State<AppState>) -> Json<StatusAnswer> {
    let advertise = state
        .config
        .advertise_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", state.config.listen));
    let l = &state.leadership;
    Json(StatusAnswer {
        api_version: "v2",
        advertise_address: advertise,
        node_id: l.node().to_string(),
        leader: l.is_leader(),
        leader_id: l.leader(),
    })
}

async fn connectivity(state: &AppState) -> (bool, bool) {
    let db = state.store.ping().await.is_ok();
    let etcd = state.etcd.ping().await.is_ok();
    (db, etcd)
}

/// Whether the database and etcd answer (always `200`).
#[utoipa::path(get, path = "/health", tag = "probes",
    responses((status = 200, body = HealthAnswer), ErrorResponses))]
pub(super) async fn health(State(state): State<AppState>) -> Json<HealthAnswer> {
    let (database, etcd) = connectivity(&state).await;
    Json(HealthAnswer {
        status: if database && etcd { "ok" } else { "degraded" },
        version: env!("CARGO_PKG_VERSION"),
        component: "appproxy-coordinator",
        connectivity: Connectivity { database, etcd },
    })
}

/// The process is up.
#[utoipa::path(get, path = "/health/livez", tag = "probes",
    responses((status = 200, body = LiveAnswer), ErrorResponses))]
pub(super) async fn livez() -> Json<LiveAnswer> {
    Json(LiveAnswer { status: "ok" })
}

/// Ready for traffic: the database answers.
#[utoipa::path(get, path = "/health/readyz", tag = "probes", responses(
    (status = 200, body = ReadyAnswer),
    (status = 503, description = "The database does not answer", body = ReadyAnswer),
    ErrorResponses))]
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (database, etcd) = connectivity(&state).await;
    let code = if database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if database { "ok" } else { "unavailable" };
    (
        code,
        Json(ReadyAnswer {
            status,
            database,
            etcd,
        }),
    )
}

/// Prometheus text, for peers in `[metrics] allowed_networks` or holders of its token.
#[utoipa::path(get, path = "/metrics", tag = "probes", security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain",
         body = String),
        ErrorResponses))]
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

/// Backend.AI's worker overview.
#[utoipa::path(get, path = "/health/status", tag = "health", security(("manager_token" = [])),
    responses((status = 200, body = WorkersHealth), ErrorResponses))]
pub(super) async fn worker_status(
    State(state): State<AppState>,
    _: ManagerAuth,
) -> Result<Json<WorkersHealth>, ApiError> {
    let counts = state.store.occupied_counts().await?;
    let workers = (state.store.list_workers().await?.iter())
        .map(|w| WorkerHealth {
            authority: w.authority.clone(),
            status: w.status,
            available_slots: w.available_slots(),
            occupied_slots: counts.get(&w.id).copied().unwrap_or(0),
            ha_setup: w.nodes > 1,
        })
        .collect();
    Ok(Json(WorkersHealth {
        coordinator_version: env!("CARGO_PKG_VERSION"),
        appproxy_api_version: "v2",
        workers,
    }))
}

/// Routes of a circuit with their health.
fn routes_health(health: &RouteHealth, c: &Circuit) -> Vec<RouteHealthView> {
    c.routes
        .iter()
        .map(|r| RouteHealthView {
            route_id: r.route_id,
            session_id: r.session_id,
            kernel_host: r.kernel_host.clone(),
            kernel_port: r.kernel_port,
            traffic_ratio: r.traffic_ratio,
            health_status: health.status(c.id, r),
        })
        .collect()
}

/// Every inference endpoint with its replicas' health.
#[utoipa::path(get, path = "/health/endpoints", tag = "health", security(("manager_token" = [])),
    responses((status = 200, body = EndpointsHealth), ErrorResponses))]
pub(super) async fn endpoints(
    State(state): State<AppState>,
    _: ManagerAuth,
) -> Result<Json<EndpointsHealth>, ApiError> {
    let workers = state.store.list_workers().await?;
    let health = RouteHealth::load(&state.store).await?;
    let mut endpoints = Vec::new();
    for (e, c) in state.store.list_endpoints().await? {
        let worker = |c: &Circuit| workers.iter().find(|w| w.id == c.worker_id);
        endpoints.push(EndpointHealth {
            endpoint_id: e.id,
            health_check_enabled: e.health_check_enabled(),
            circuit_id: c.as_ref().map(|c| c.id),
            worker: (c.as_ref().and_then(worker)).map(|w| w.authority.clone()),
            problem: c.as_ref().and_then(|c| stranded_reason(c, worker(c))),
            routes: (c.as_ref().map(|c| routes_health(&health, c))).unwrap_or_default(),
        });
    }
    Ok(Json(EndpointsHealth { endpoints }))
}

/// One circuit with its worker and its replicas' health.
#[utoipa::path(get, path = "/health/circuits/{circuit_id}", tag = "health",
    params(("circuit_id" = uuid::Uuid, Path)), security(("manager_token" = [])),
    responses((status = 200, body = CircuitHealth), ErrorResponses))]
pub(super) async fn circuit(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<CircuitHealth>, ApiError> {
    let (c, w) = state.circuits().get_with_worker(id).await?;
    let health = RouteHealth::load(&state.store).await?;
    Ok(Json(CircuitHealth {
        circuit_id: c.id,
        endpoint_id: c.endpoint_id,
        app_mode: c.app_mode,
        worker: w.as_ref().map(|w| w.authority.clone()),
        worker_status: w.as_ref().map(|w| w.status),
        problem: stranded_reason(&c, w.as_ref()),
        routes: routes_health(&health, &c),
    }))
}

/// Routes of every endpoint counted by health.
#[utoipa::path(get, path = "/health/summary", tag = "health", security(("manager_token" = [])),
    responses((status = 200, body = HealthSummary), ErrorResponses))]
pub(super) async fn summary(
    State(state): State<AppState>,
    _: ManagerAuth,
) -> Result<Json<HealthSummary>, ApiError> {
    let health = RouteHealth::load(&state.store).await?;
    let (mut healthy, mut unhealthy, mut unknown) = (0, 0, 0);
    for (_, c) in state.store.list_endpoints().await? {
        for r in c.iter().flat_map(|c| routes_health(&health, c)) {
            match r.health_status {
                "healthy" => healthy += 1,
                "unhealthy" => unhealthy += 1,
                _ => unknown += 1,
            }
        }
    }
    Ok(Json(HealthSummary {
        total_routes: healthy + unhealthy + unknown,
        healthy,
        unhealthy,
        unknown,
    }))
}
