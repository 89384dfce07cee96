//! Setup links: the short-lived, signed link that gives a browser a circuit's cookie
//! (`POST /v2/circuits/{id}/setup-link`, the launch flow, `POST /v2/circuits`).

use uuid::Uuid;

use super::Circuits;
use crate::{
    domain::{Circuit, Protocol, Worker},
    error::ApiError,
    models::{SetupLinkRequest, SetupLinkResponse},
    tokens::{SetupRequest, Signer},
};

/// A setup link for an HTTP circuit (TCP circuits have no cookie to set).
pub fn setup_link(
    signer: &Signer,
    c: &Circuit,
    w: &Worker,
    req: &SetupRequest<'_>,
) -> Result<Option<SetupLinkResponse>, ApiError> {
    if c.protocol == Protocol::Tcp {
        return Ok(None);
    }
    signed_link(signer, c, w, req).map(Some)
}

/// A setup link for any circuit (TCP: the worker's `/setup` desktop hand-off).
pub fn signed_link(
    signer: &Signer,
    c: &Circuit,
    w: &Worker,
    req: &SetupRequest<'_>,
) -> Result<SetupLinkResponse, ApiError> {
    let link = signer.setup_link(c, w, req).map_err(|e| {
        tracing::error!(error = %e, "Cannot sign a setup token");
        ApiError::DependencyUnavailable("cannot sign setup tokens".into())
    })?;
    Ok(SetupLinkResponse {
        setup_url: link.url,
        expires_at: link.expires_at,
    })
}

/// `POST /v2/circuits/{id}/setup-link`: a link for the circuit's owner (when `user_id` is
/// given it must be the owner), bound to a login session and a browser state nonce if given.
pub async fn for_circuit(
    circuits: Circuits<'_>,
    signer: &Signer,
    id: Uuid,
    req: &SetupLinkRequest,
) -> Result<SetupLinkResponse, ApiError> {
    let (c, w) = circuits.get_with_worker(id).await?;
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
    let w = w.ok_or(ApiError::NotFound("worker"))?;
    let sreq = SetupRequest {
        user_id: req.user_id,
        login_session_token: req.login_session_token.as_deref(),
        redirect: req.redirect.as_deref(),
        state: req.state.as_deref(),
    };
    setup_link(signer, &c, &w, &sreq)?
        .ok_or_else(|| ApiError::UnsupportedProtocol("TCP circuits have no setup link".into()))
}
