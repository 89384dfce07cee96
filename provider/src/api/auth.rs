//! Access to circuits: setup links (`POST /v2/circuits/{id}/setup-link`) and revocations
//! (`POST /v2/revocations`, unified logout).

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth, Params},
};
use crate::{
    error::ApiError,
    models::{RevocationRequest, SetupLinkRequest, SetupLinkResponse},
    service::links,
    tokens::now_secs,
};

pub(super) async fn create_link(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    Params(req): Params<SetupLinkRequest>,
) -> Result<Json<SetupLinkResponse>, ApiError> {
    let link = links::for_circuit(state.circuits(), &state.signer, id, &req).await?;
    Ok(Json(link))
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<RevocationRequest>,
) -> Result<Json<Value>, ApiError> {
    let subjects = req.subjects()?;
    let at = now_secs();
    state
        .revoker
        .revoke(&subjects, at)
        .await
        .map_err(|e| ApiError::DependencyUnavailable(e.to_string()))?;
    state.metrics.revocations.inc_by(subjects.len() as u64);
    tracing::info!(count = subjects.len(), at, "Access revoked");
    Ok(Json(json!({ "success": true, "revoked_at": at })))
}
