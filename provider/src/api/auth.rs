//! Access to circuits: setup links (`POST /v2/circuits/{id}/setup-link`) and revocations
//! (`POST /v2/revocations`, unified logout).

use axum::{Json, extract::State};

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth, Params},
};
use crate::{
    error::{ApiError, ErrorResponses},
    models::{RevocationRequest, SetupLinkRequest, SetupLinkResponse, answers::Revoked},
    service::links,
    tokens::now_secs,
};

/// A fresh setup link for a circuit's owner (optionally bound to a login session and a
/// browser's state nonce).
#[utoipa::path(post, path = "/v2/circuits/{circuit_id}/setup-link", tag = "circuits",
    params(("circuit_id" = uuid::Uuid, Path)), request_body = SetupLinkRequest,
    security(("manager_token" = [])),
    responses((status = 200, body = SetupLinkResponse), ErrorResponses))]
pub(super) async fn create_link(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    Params(req): Params<SetupLinkRequest>,
) -> Result<Json<SetupLinkResponse>, ApiError> {
    let link = links::for_circuit(state.circuits(), &state.signer, id, &req).await?;
    Ok(Json(link))
}

/// Unified logout: every cookie and link of a user or of a login session stops working on
/// every worker within seconds.
#[utoipa::path(post, path = "/v2/revocations", tag = "circuits", request_body = RevocationRequest,
    security(("manager_token" = [])),
    responses((status = 200, body = Revoked), ErrorResponses))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<RevocationRequest>,
) -> Result<Json<Revoked>, ApiError> {
    let subjects = req.subjects()?;
    let at = now_secs();
    state
        .revoker
        .revoke(&subjects, at)
        .await
        .map_err(|e| ApiError::DependencyUnavailable(e.to_string()))?;
    state.metrics.revocations.inc_by(subjects.len() as u64);
    tracing::info!(count = subjects.len(), at, "Access revoked");
    Ok(Json(Revoked {
        success: true,
        revoked_at: at,
    }))
}
