//! Access to circuits: setup links (`POST /v2/circuits/{id}/setup-link`) and revocations
//! (`POST /v2/revocations`, unified logout).

use appproxy_common::auth::login_session_hash;
use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::{
    AppState,
    extract::{IdPath, JsonBody, ManagerAuth, Params},
    models::{RevocationRequest, SetupLinkRequest, SetupLinkResponse},
};
use crate::{
    domain::{Circuit, Protocol, Worker},
    error::ApiError,
    revoke::{RevokeError, Subject},
    tokens::{SetupRequest, now_secs},
};

/// A setup link for an HTTP circuit (TCP circuits have no cookie to set).
pub(super) fn setup_link(
    state: &AppState,
    c: &Circuit,
    w: &Worker,
    req: &SetupRequest<'_>,
) -> Result<Option<SetupLinkResponse>, ApiError> {
    if c.protocol == Protocol::Tcp {
        return Ok(None);
    }
    signed_link(state, c, w, req).map(Some)
}

/// A setup link for any circuit (TCP: the worker's `/setup` desktop hand-off).
pub(super) fn signed_link(
    state: &AppState,
    c: &Circuit,
    w: &Worker,
    req: &SetupRequest<'_>,
) -> Result<SetupLinkResponse, ApiError> {
    let link = state.signer.setup_link(c, w, req).map_err(|e| {
        tracing::error!(error = %e, "Cannot sign a setup token");
        ApiError::DependencyUnavailable("cannot sign setup tokens".into())
    })?;
    Ok(SetupLinkResponse {
        setup_url: link.url,
        expires_at: link.expires_at,
    })
}

pub(super) async fn create_link(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    Params(req): Params<SetupLinkRequest>,
) -> Result<Json<SetupLinkResponse>, ApiError> {
    let c = state
        .store
        .get_circuit(id)
        .await?
        .ok_or(ApiError::NotFound("circuit"))?;
    if let (Some(asked), Some(owner)) = (req.user_id, c.user_id)
        && asked != owner
    {
        return Err(ApiError::Forbidden(
            "the circuit belongs to another user".into(),
        ));
    }
    if let Some(s) = &req.state
        && (s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::InvalidParams(
            "state must be 64 hex characters".into(),
        ));
    }
    let w = state
        .store
        .get_worker(c.worker_id)
        .await?
        .ok_or(ApiError::NotFound("worker"))?;
    let sreq = SetupRequest {
        user_id: req.user_id,
        login_session_token: req.login_session_token.as_deref(),
        redirect: req.redirect.as_deref(),
        state: req.state.as_deref(),
    };
    setup_link(&state, &c, &w, &sreq)?
        .map(Json)
        .ok_or_else(|| ApiError::UnsupportedProtocol("TCP circuits have no setup link".into()))
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<RevocationRequest>,
) -> Result<Json<Value>, ApiError> {
    let mut subjects = Vec::new();
    if let Some(u) = req.user_id {
        subjects.push(Subject::User(u.to_string()));
    }
    if let Some(t) = &req.login_session_token {
        if t.is_empty() {
            return Err(ApiError::InvalidParams(
                "login_session_token must not be empty".into(),
            ));
        }
        subjects.push(Subject::LoginSession(login_session_hash(t)));
    }
    if subjects.is_empty() {
        return Err(ApiError::InvalidParams(
            "give user_id and/or login_session_token".into(),
        ));
    }
    let at = now_secs();
    state
        .revoker
        .revoke(&subjects, at)
        .await
        .map_err(|e| match e {
            RevokeError::NotConfigured => ApiError::DependencyUnavailable(e.to_string()),
            RevokeError::Redis(_) => ApiError::DependencyUnavailable(e.to_string()),
        })?;
    state.metrics.revocations.inc_by(subjects.len() as u64);
    tracing::info!(count = subjects.len(), at, "Access revoked");
    Ok(Json(json!({ "success": true, "revoked_at": at })))
}
