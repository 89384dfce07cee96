//! Backend.AI's launch flow, as the Manager and WebUI call it: `POST /v2/conf` →
//! `GET /v2/proxy/{token}/{session_id}/add` → `GET /v2/proxy/auth`; the work is in
//! `service::launch`.
//!
//! The redirect form of `/v2/proxy/auth` is a non-cacheable `302` (Backend.AI: `308`); `envs`
//! is accepted as JSON text. CORS headers (`*`, no credentials) come from the router's
//! common layer.

use axum::{
    Json,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use super::{
    AppState,
    extract::{JsonBody, QueryParams, manager_presented},
};
use crate::{
    error::{ApiError, ErrorResponses},
    models::{
        answers::{ProxyAdded, ProxyAuthorized, TokenAnswer},
        launch::{ConfRequest, ProxyQuery, wire_protocol},
    },
    service::launch::auth_url,
};

/// The launch flow's first step: a one-use grant for a session's app (the WebUI calls it; the
/// manager token, when sent, vouches for the user).
#[utoipa::path(post, path = "/v2/conf", tag = "launch", request_body = ConfRequest,
    security((), ("manager_token" = [])),
    responses((status = 200, body = TokenAnswer), ErrorResponses))]
pub(super) async fn conf(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ConfRequest>,
) -> Result<Json<TokenAnswer>, ApiError> {
    let manager = manager_presented(&headers, &state);
    let token = state.launch().grant(req, manager).await?;
    Ok(Json(TokenAnswer {
        token: token.to_string(),
    }))
}

/// The second step: where the browser goes to open the app.
#[utoipa::path(get, path = "/v2/proxy/{token}/{session_id}/add", tag = "launch",
    params(("token" = uuid::Uuid, Path, description = "The grant of `/v2/conf`"),
        ("session_id" = uuid::Uuid, Path), ProxyQuery),
    responses((status = 200, body = ProxyAdded), ErrorResponses))]
pub(super) async fn add(
    State(state): State<AppState>,
    Path((token, session_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    QueryParams(q): QueryParams<ProxyQuery>,
) -> Result<Json<ProxyAdded>, ApiError> {
    let bad = |what: &str| ApiError::InvalidParams(format!("{what} must be a UUID"));
    let token = Uuid::parse_str(&token).map_err(|_| bad("token"))?;
    let session_id = Uuid::parse_str(&session_id).map_err(|_| bad("session_id"))?;
    wire_protocol(&q.protocol)?;
    let base = (state.config.advertise_base_url.clone())
        .unwrap_or_else(|| format!("http://{}", state.config.listen));
    let url = auth_url(&base, token, session_id, raw.as_deref().unwrap_or(""));
    Ok(Json(ProxyAdded { code: 200, url }))
}

/// The last step: the circuit (created or reused) and its setup link, as a `302` to it or,
/// asked for JSON, as the link.
#[utoipa::path(get, path = "/v2/proxy/auth", tag = "launch", params(ProxyQuery),
    responses(
        (status = 200, description = "`Accept: application/json`", body = ProxyAuthorized),
        (status = 302, description = "To the setup link", headers(("Location" = String))),
        ErrorResponses))]
pub(super) async fn auth(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<ProxyQuery>,
) -> Result<Response, ApiError> {
    let launched = state.launch().open(&q).await?;
    if wants_json(&headers) {
        let body = ProxyAuthorized {
            redirect_url: launched.setup_url,
            reuse: launched.reuse,
        };
        return Ok(Json(body).into_response());
    }
    let location = HeaderValue::from_str(&launched.setup_url)
        .map_err(|_| ApiError::InvalidParams("bad URL".into()))?;
    let headers = [
        (header::LOCATION, location),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    Ok((StatusCode::FOUND, headers).into_response())
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .any(|p| p.trim().starts_with("application/json"))
        })
}
