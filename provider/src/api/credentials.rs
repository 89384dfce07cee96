//! Per-worker credentials: `POST /v2/workers/credentials` (enrol an authority, returns the
//! secret once), `GET /v2/workers/credentials[?authority=]`, `DELETE
//! /v2/workers/credentials/{id}` (revoke), all for the manager; and [`verify`], which turns a
//! presented credential into the authority it is bound to.

use appproxy_common::auth::worker_credential;
use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState,
    extract::{JsonBody, ManagerAuth, QueryParams, same},
};
use crate::{error::ApiError, store::WorkerCredential};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrolRequest {
    pub authority: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    pub authority: Option<String>,
}

fn view(c: &WorkerCredential) -> Value {
    json!({
        "id": c.id,
        "authority": c.authority,
        "created_at": crate::models::iso(c.created_at_ms),
        "revoked_at": c.revoked_at_ms.map(crate::models::iso),
    })
}

/// The authority a presented credential is bound to; 401 for anything else (unknown,
/// malformed, revoked, wrong secret: one answer, no hint which).
pub(crate) async fn verify(state: &AppState, presented: &str) -> Result<String, ApiError> {
    let (id, secret) = worker_credential::parse(presented).ok_or(ApiError::Unauthorized)?;
    let (cred, hash) = state
        .store
        .worker_credential(id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if cred.revoked_at_ms.is_some() || !same(&worker_credential::hash(secret), &hash) {
        return Err(ApiError::Unauthorized);
    }
    Ok(cred.authority)
}

pub(super) async fn enrol(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<EnrolRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    crate::domain::validate_authority(&req.authority).map_err(ApiError::InvalidParams)?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let c = state
        .store
        .insert_worker_credential(&id, &req.authority, &worker_credential::hash(&secret))
        .await?;
    tracing::info!(authority = %c.authority, id = %c.id, "Worker credential issued");
    let mut v = view(&c);
    v["credential"] = json!(worker_credential::format(&id, &secret));
    Ok((StatusCode::CREATED, Json(v)))
}

pub(super) async fn list(
    State(state): State<AppState>,
    _: ManagerAuth,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let list = state
        .store
        .worker_credentials(q.authority.as_deref())
        .await?;
    Ok(Json(
        json!({ "credentials": list.iter().map(view).collect::<Vec<_>>() }),
    ))
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    _: ManagerAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = state
        .store
        .revoke_worker_credential(&id)
        .await?
        .ok_or(ApiError::NotFound("worker credential"))?;
    tracing::info!(authority = %c.authority, id = %c.id, "Worker credential revoked");
    Ok(Json(view(&c)))
}
