//! `ApiError`: the provider's only mapping from failures to HTTP statuses and Backend.AI
//! error bodies (`{type, title, error_code, msg}`, `application/problem+json`).

use crate::store::StoreError;
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// Backend.AI's error body, sent as `application/problem+json` with every error status.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `https://api.backend.ai/probs/<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    /// Backend.AI's error code, e.g. `E20001`.
    pub error_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
}

/// Any other status than those an operation lists: an error with Backend.AI's body.
#[derive(utoipa::IntoResponses)]
#[response(
    status = "default",
    description = "An error, with Backend.AI's body",
    content_type = "application/problem+json"
)]
pub struct ErrorResponses(#[allow(dead_code)] ErrorBody);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid-api-params`.
    #[error("invalid API parameters: {0}")]
    InvalidParams(String),
    /// 401 `auth-failed`.
    #[error("authorization failed")]
    Unauthorized,
    /// 401 `invalid-credentials`; the message is the title (e.g. "E20007: Session ID mismatch").
    #[error("invalid credentials: {0}")]
    InvalidCredentials(String),
    /// 403 `generic-forbidden`.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404 `object-not-found` ("E00002: No such {object}.").
    #[error("no such {0}")]
    NotFound(&'static str),
    /// 404 `url-not-found`.
    #[error("unknown URL path")]
    UrlNotFound,
    /// 405 `method-not-allowed`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409 `appproxy/port-not-available`.
    #[error("port not available: {0}")]
    PortNotAvailable(String),
    /// 409 `generic-conflict` (e.g. subdomain taken, duplicate route id).
    #[error("conflict: {0}")]
    Conflict(String),
    /// 413 `request-too-large`.
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("rate limit reached; retry after {0} s")]
    RateLimited(u64),
    /// 503 `appproxy/worker-not-available`.
    #[error("worker not available: {0}")]
    WorkerNotAvailable(String),
    /// 400 `appproxy/unsupported-protocol`.
    #[error("unsupported protocol: {0}")]
    UnsupportedProtocol(String),
    /// 503 `service-unavailable` (database down, pool exhausted).
    #[error("service unavailable")]
    Unavailable(#[source] StoreError),
    /// 503 `service-unavailable` for a dependency other than SQL (e.g. Redis); message says which.
    #[error("dependency unavailable: {0}")]
    DependencyUnavailable(String),
    /// 500 `internal-server-error`; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

struct Body {
    status: StatusCode,
    kind: &'static str,
    title: String,
    code: &'static str,
}

impl ApiError {
    /// Status, problem type, title and Backend.AI error code: the one table.
    fn body(&self) -> Body {
        use ApiError::*;
        let fixed = |status: u16, kind, title: &str, code| Body {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind,
            title: title.to_string(),
            code,
        };
        #[rustfmt::skip]
        let body = match self {
            InvalidParams(_) => fixed(400, "invalid-api-params", "Missing or invalid API parameters.", "api_parsing_invalid-parameters"),
            Unauthorized => fixed(401, "auth-failed", "Credential/signature mismatch.", "api_access_unauthorized"),
            InvalidCredentials(m) => fixed(401, "invalid-credentials", m, "api_access_unauthorized"),
            Forbidden(_) => fixed(403, "generic-forbidden", "Forbidden operation.", "api_access_forbidden"),
            NotFound(object) => fixed(404, "object-not-found", &format!("E00002: No such {object}."), "api_access_not-found"),
            UrlNotFound => fixed(404, "url-not-found", "Unknown URL path.", "api_access_not-found"),
            MethodNotAllowed => fixed(405, "method-not-allowed", "HTTP Method Not Allowed.", "api_access_not-found"),
            PortNotAvailable(_) => fixed(409, "appproxy/port-not-available", "Designated port already occupied.", "agent_setup_already-exists"),
            Conflict(_) => fixed(409, "generic-conflict", "Conflicting request.", "api_setup_already-exists"),
            RateLimited(_) => fixed(429, "rate-limit-exceeded", "You have reached your API query rate limit.", "api_access_unavailable"),
            PayloadTooLarge => fixed(413, "request-too-large", "Request body too large.", "api_parsing_invalid-parameters"),
            WorkerNotAvailable(_) => fixed(503, "appproxy/worker-not-available", "Worker not available.", "agent_access_not-found"),
            UnsupportedProtocol(_) => fixed(400, "appproxy/unsupported-protocol", "Unsupported protocol.", "agent_request_invalid-parameters"),
            // "Serivce" is Backend.AI's spelling; clients may match the title.
            Unavailable(_) => fixed(503, "service-unavailable", "Serivce unavailable.", "database_generic_unreachable"),
            DependencyUnavailable(_) => fixed(503, "service-unavailable", "Serivce unavailable.", "api_generic_unreachable"),
            Internal(_) => fixed(500, "internal-server-error", "Internal server error.", "api_generic_internal-error"),
        };
        body
    }

    /// The client-visible detail, if any (never internals).
    fn msg(&self) -> Option<String> {
        use ApiError::*;
        match self {
            InvalidParams(m)
            | Forbidden(m)
            | PortNotAvailable(m)
            | Conflict(m)
            | WorkerNotAvailable(m)
            | DependencyUnavailable(m)
            | UnsupportedProtocol(m) => Some(m.clone()),
            _ => None,
        }
    }
}

/// Store failures in Backend.AI's terms (allocation failures are the client's answer; the
/// rest is unavailability or an internal error).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoFreeSlot => {
                ApiError::WorkerNotAvailable("no free port on the worker".into())
            }
            StoreError::SlotTaken(m) => ApiError::PortNotAvailable(m),
            StoreError::DuplicateRoute(id) => {
                ApiError::InvalidParams(format!("route_id {id} appears twice"))
            }
            StoreError::EndpointTaken(id) => {
                ApiError::Conflict(format!("the endpoint already has circuit {id}"))
            }
            StoreError::Unavailable(_) => ApiError::Unavailable(e),
            other => ApiError::Internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let b = self.body();
        match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "Request failed with an internal error")
            }
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %e, "Request failed: database unavailable")
            }
            ApiError::DependencyUnavailable(m) => {
                tracing::warn!(error = %m, "Request failed: dependency unavailable")
            }
            other => tracing::debug!(error = %other, "Request rejected"),
        }
        let body = ErrorBody {
            kind: format!("https://api.backend.ai/probs/{}", b.kind),
            title: b.title,
            error_code: b.code.to_string(),
            msg: self.msg(),
        };
        let text = serde_json::to_string(&body).unwrap_or_default();
        let mut resp = (b.status, text).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp.extensions_mut()
            .insert(appproxy_common::metrics::ErrorCode(b.code));
        if let ApiError::RateLimited(secs) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
