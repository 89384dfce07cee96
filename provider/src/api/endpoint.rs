//! Inference endpoints (`/v2/endpoints*`), as Backend.AI's Manager drives them; the work is
//! in `service::endpoints`.

use axum::{Json, extract::State};

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth},
};
use crate::{
    error::{ApiError, ErrorResponses},
    models::{
        answers::{
            EndpointDeleted, EndpointSynced, EndpointUrl, EndpointsDeleted, EndpointsSynced,
            HealthCheckSet, RoutesSynced, Success, TokenAnswer,
        },
        endpoint::{
            BulkCreate, BulkDelete, BulkRoutes, EndpointItem, HealthCheckUpdate, TokenRequest,
        },
    },
    service::endpoints::RouteOp,
};

/// Create or update an inference endpoint (its URL stays stable across syncs).
#[utoipa::path(post, path = "/v2/endpoints/{endpoint_id}", tag = "endpoints",
    params(("endpoint_id" = uuid::Uuid, Path)), request_body = EndpointItem,
    security(("manager_token" = [])),
    responses((status = 200, body = EndpointSynced), ErrorResponses))]
pub(super) async fn create_one(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    JsonBody(item): JsonBody<EndpointItem>,
) -> Result<Json<EndpointSynced>, ApiError> {
    item.validate()?;
    let s = state.endpoints().sync(id, &item).await?;
    Ok(Json(EndpointSynced {
        success: true,
        endpoint: s.url,
        health_check_enabled: s.health_check_enabled,
    }))
}

/// Create or update several endpoints.
#[utoipa::path(post, path = "/v2/endpoints/bulk", tag = "endpoints", request_body = BulkCreate,
    security(("manager_token" = [])),
    responses((status = 200, body = EndpointsSynced), ErrorResponses))]
pub(super) async fn create_bulk(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkCreate>,
) -> Result<Json<EndpointsSynced>, ApiError> {
    let synced = state.endpoints().sync_bulk(&req.endpoints).await?;
    let endpoints = (synced.into_iter())
        .map(|(deployment_id, s)| EndpointUrl {
            deployment_id,
            url: s.url,
            health_check_enabled: s.health_check_enabled,
        })
        .collect();
    Ok(Json(EndpointsSynced { endpoints }))
}

/// Remove an endpoint and its circuit.
#[utoipa::path(delete, path = "/v2/endpoints/{endpoint_id}", operation_id = "delete_endpoint", tag = "endpoints",
    params(("endpoint_id" = uuid::Uuid, Path)), security(("manager_token" = [])),
    responses((status = 200, body = Success), ErrorResponses))]
pub(super) async fn delete_one(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Success>, ApiError> {
    if !state.endpoints().remove(id).await? {
        return Err(ApiError::NotFound("endpoint"));
    }
    Ok(Json(Success::YES))
}

/// Remove several endpoints (missing ones count as removed, as in Backend.AI).
#[utoipa::path(delete, path = "/v2/endpoints/bulk", operation_id = "delete_endpoints", tag = "endpoints", request_body = BulkDelete,
    security(("manager_token" = [])),
    responses((status = 200, body = EndpointsDeleted), ErrorResponses))]
pub(super) async fn delete_bulk(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkDelete>,
) -> Result<Json<EndpointsDeleted>, ApiError> {
    let mut endpoints = Vec::new();
    for r in &req.endpoints {
        // Missing ids count as success (Backend.AI).
        state.endpoints().remove(r.deployment_id).await?;
        endpoints.push(EndpointDeleted {
            deployment_id: r.deployment_id,
            success: true,
        });
    }
    Ok(Json(EndpointsDeleted { endpoints }))
}

/// Replace the replicas of several endpoints (declarative).
#[utoipa::path(post, path = "/v2/endpoints/bulk/routes", tag = "endpoints", request_body = BulkRoutes,
    security(("manager_token" = [])),
    responses((status = 200, body = RoutesSynced), ErrorResponses))]
pub(super) async fn routes_replace(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkRoutes>,
) -> Result<Json<RoutesSynced>, ApiError> {
    let endpoints = state.endpoints();
    endpoints
        .sync_routes(&req, RouteOp::Replace)
        .await
        .map(Json)
}

/// Add replicas to several endpoints.
#[utoipa::path(post, path = "/v2/endpoints/bulk/routes/register", tag = "endpoints", request_body = BulkRoutes,
    security(("manager_token" = [])),
    responses((status = 200, body = RoutesSynced), ErrorResponses))]
pub(super) async fn routes_register(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkRoutes>,
) -> Result<Json<RoutesSynced>, ApiError> {
    let endpoints = state.endpoints();
    endpoints
        .sync_routes(&req, RouteOp::Register)
        .await
        .map(Json)
}

/// Remove replicas (by `route_ids`) from several endpoints.
#[utoipa::path(post, path = "/v2/endpoints/bulk/routes/unregister", tag = "endpoints", request_body = BulkRoutes,
    security(("manager_token" = [])),
    responses((status = 200, body = RoutesSynced), ErrorResponses))]
pub(super) async fn routes_unregister(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkRoutes>,
) -> Result<Json<RoutesSynced>, ApiError> {
    let endpoints = state.endpoints();
    endpoints
        .sync_routes(&req, RouteOp::Unregister)
        .await
        .map(Json)
}

/// Set (or with `null`, remove) an endpoint's health check.
#[utoipa::path(put, path = "/v2/endpoints/{endpoint_id}/health-check", tag = "endpoints",
    params(("endpoint_id" = uuid::Uuid, Path)), request_body = HealthCheckUpdate,
    security(("manager_token" = [])),
    responses((status = 200, body = HealthCheckSet), ErrorResponses))]
pub(super) async fn health_check(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<HealthCheckUpdate>,
) -> Result<Json<HealthCheckSet>, ApiError> {
    let hc = req.health_check.as_ref();
    let health_check_enabled = state.endpoints().set_health_check(id, hc).await?;
    Ok(Json(HealthCheckSet {
        success: true,
        health_check_enabled,
    }))
}

/// An API token for a private endpoint (a bearer token its callers send).
#[utoipa::path(post, path = "/v2/endpoints/{endpoint_id}/token", tag = "endpoints",
    params(("endpoint_id" = uuid::Uuid, Path)), request_body = TokenRequest,
    security(("manager_token" = [])),
    responses((status = 200, body = TokenAnswer), ErrorResponses))]
pub(super) async fn token(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Json<TokenAnswer>, ApiError> {
    let token = state.endpoints().token(id, req.user_uuid, req.exp).await?;
    Ok(Json(TokenAnswer { token }))
}
