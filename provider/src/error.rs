//! `ApiError`: the provider's only mapping from failures to HTTP statuses and Backend.AI
//! error bodies (`{type, title, error_code, msg}`, `application/problem+json`).

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::store::StoreError;

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
    fn body(&self) -> Body {
        use ApiError::*;
        let (status, kind, title, code): (StatusCode, &str, String, &str) = match self {
            InvalidParams(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-api-params",
                "Missing or invalid API parameters.".into(),
                "api_parsing_invalid-parameters",
            ),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "auth-failed",
                "Credential/signature mismatch.".into(),
                "api_access_unauthorized",
            ),
            InvalidCredentials(m) => (
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                m.clone(),
                "api_access_unauthorized",
            ),
            Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "generic-forbidden",
                "Forbidden operation.".into(),
                "api_access_forbidden",
            ),
            NotFound(object) => (
                StatusCode::NOT_FOUND,
                "object-not-found",
                format!("E00002: No such {object}."),
                "api_access_not-found",
            ),
            UrlNotFound => (
                StatusCode::NOT_FOUND,
                "url-not-found",
                "Unknown URL path.".into(),
                "api_access_not-found",
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "HTTP Method Not Allowed.".into(),
                "api_access_not-found",
            ),
            PortNotAvailable(_) => (
                StatusCode::CONFLICT,
                "appproxy/port-not-available",
                "Designated port already occupied.".into(),
                "agent_setup_already-exists",
            ),
            Conflict(_) => (
                StatusCode::CONFLICT,
                "generic-conflict",
                "Conflicting request.".into(),
                "api_setup_already-exists",
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request-too-large",
                "Request body too large.".into(),
                "api_parsing_invalid-parameters",
            ),
            WorkerNotAvailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "appproxy/worker-not-available",
                "Worker not available.".into(),
                "agent_access_not-found",
            ),
            UnsupportedProtocol(_) => (
                StatusCode::BAD_REQUEST,
                "appproxy/unsupported-protocol",
                "Unsupported protocol.".into(),
                "agent_request_invalid-parameters",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service-unavailable",
                "Serivce unavailable.".into(),
                "database_generic_unreachable",
            ),
            DependencyUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service-unavailable",
                "Serivce unavailable.".into(),
                "api_generic_unreachable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal-server-error",
                "Internal server error.".into(),
                "api_generic_internal-error",
            ),
        };
        Body {
            status,
            kind,
            title,
            code,
        }
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
        let mut body = json!({
            "type": format!("https://api.backend.ai/probs/{}", b.kind),
            "title": b.title,
            "error_code": b.code,
        });
        if let Some(msg) = self.msg() {
            body["msg"] = msg.into();
        }
        let mut resp = (b.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}
