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

use super::{
    AppState,
    extract::{JsonBody, ManagerAuth, QueryParams, same},
};
use crate::{
    error::{ApiError, ErrorResponses},
    models::answers::{CredentialList, CredentialView, Enrolled},
    store::WorkerCredential,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
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

fn view(c: &WorkerCredential) -> CredentialView {
    CredentialView {
        id: c.id.clone(),
        authority: c.authority.clone(),
        created_at: crate::models::iso(c.created_at_ms),
        revoked_at: c.revoked_at_ms.map(crate::models::iso),
    }
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

/// Enrol a worker authority: its credential, whose secret is shown this once.
#[utoipa::path(post, path = "/v2/workers/credentials", tag = "workers", request_body = EnrolRequest,
    security(("manager_token" = [])),
    responses((status = 201, body = Enrolled), ErrorResponses))]
pub(super) async fn enrol(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<EnrolRequest>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
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
    let credential = worker_credential::format(&id, &secret);
    let view = view(&c);
    Ok((StatusCode::CREATED, Json(Enrolled { view, credential })))
}

/// Worker credentials (never their secrets), optionally of one authority.
#[utoipa::path(get, path = "/v2/workers/credentials", operation_id = "list_worker_credentials", tag = "workers",
    params(("authority" = Option<String>, Query)), security(("manager_token" = [])),
    responses((status = 200, body = CredentialList), ErrorResponses))]
pub(super) async fn list(
    State(state): State<AppState>,
    _: ManagerAuth,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<CredentialList>, ApiError> {
    let list = state
        .store
        .worker_credentials(q.authority.as_deref())
        .await?;
    Ok(Json(CredentialList {
        credentials: list.iter().map(view).collect(),
    }))
}

/// Revoke a worker credential: its next call is refused.
#[utoipa::path(delete, path = "/v2/workers/credentials/{credential_id}", operation_id = "revoke_worker_credential", tag = "workers",
    params(("credential_id" = String, Path)), security(("manager_token" = [])),
    responses((status = 200, body = CredentialView), ErrorResponses))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    _: ManagerAuth,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let c = state
        .store
        .revoke_worker_credential(&id)
        .await?
        .ok_or(ApiError::NotFound("worker credential"))?;
    tracing::info!(authority = %c.authority, id = %c.id, "Worker credential revoked");
    Ok(Json(view(&c)))
}
