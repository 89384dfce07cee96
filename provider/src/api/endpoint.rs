//! Inference endpoints (`/v2/endpoints*`), as Backend.AI's Manager drives them; the work is
//! in `service::endpoints`.

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth},
};
use crate::{
    error::ApiError,
    models::endpoint::{
        BulkCreate, BulkDelete, BulkRoutes, EndpointItem, HealthCheckUpdate, TokenRequest,
    },
    service::endpoints::RouteOp,
};

pub(super) async fn create_one(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    JsonBody(item): JsonBody<EndpointItem>,
) -> Result<Json<Value>, ApiError> {
    item.validate()?;
    let s = state.endpoints().sync(id, &item).await?;
    Ok(Json(
        json!({ "success": true, "endpoint": s.url, "health_check_enabled": s.health_check_enabled }),
    ))
}

pub(super) async fn create_bulk(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkCreate>,
) -> Result<Json<Value>, ApiError> {
    let synced = state.endpoints().sync_bulk(&req.endpoints).await?;
    let out: Vec<Value> = synced
        .into_iter()
        .map(|(id, s)| {
            json!({ "deployment_id": id, "url": s.url, "health_check_enabled": s.health_check_enabled })
        })
        .collect();
    Ok(Json(json!({ "endpoints": out })))
}

pub(super) async fn delete_one(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    if !state.endpoints().remove(id).await? {
        return Err(ApiError::NotFound("endpoint"));
    }
    Ok(Json(json!({ "success": true })))
}

pub(super) async fn delete_bulk(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkDelete>,
) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for r in &req.endpoints {
        // Missing ids count as success (Backend.AI).
        state.endpoints().remove(r.deployment_id).await?;
        out.push(json!({ "deployment_id": r.deployment_id, "success": true }));
    }
    Ok(Json(json!({ "endpoints": out })))
}

pub(super) async fn routes_replace(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkRoutes>,
) -> Result<Json<Value>, ApiError> {
    let endpoints = state.endpoints();
    endpoints
        .sync_routes(&req, RouteOp::Replace)
        .await
        .map(Json)
}

pub(super) async fn routes_register(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkRoutes>,
) -> Result<Json<Value>, ApiError> {
    let endpoints = state.endpoints();
    endpoints
        .sync_routes(&req, RouteOp::Register)
        .await
        .map(Json)
}

pub(super) async fn routes_unregister(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkRoutes>,
) -> Result<Json<Value>, ApiError> {
    let endpoints = state.endpoints();
    endpoints
        .sync_routes(&req, RouteOp::Unregister)
        .await
        .map(Json)
}

pub(super) async fn health_check(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<HealthCheckUpdate>,
) -> Result<Json<Value>, ApiError> {
    let hc = req.health_check.as_ref();
    let enabled = state.endpoints().set_health_check(id, hc).await?;
    Ok(Json(
        json!({ "success": true, "health_check_enabled": enabled }),
    ))
}

pub(super) async fn token(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Json<Value>, ApiError> {
    let token = state.endpoints().token(id, req.user_uuid, req.exp).await?;
    Ok(Json(json!({ "token": token })))
}
