//! Request extractors: caller authentication, parameters (JSON body, or the query string when
//! there is no body, as Backend.AI does), and uuid path segments. Every rejection is an
//! `ApiError` with the Backend.AI body.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{HeaderMap, StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::AppState;
use crate::error::ApiError;

/// Caller presented the manager token.
pub(crate) struct ManagerAuth;

/// Who called a worker route: the manager (may do all a worker may), the holder of the
/// legacy shared worker token (any worker), or one worker by its own credential. A worker may
/// not act as the manager, nor as another worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerAuth {
    Manager,
    LegacyShared,
    Worker { authority: String },
}

impl WorkerAuth {
    /// Whether the caller may act for the worker `authority` (register, heartbeat,
    /// deregister, report, read its circuits).
    pub(crate) fn may_act_for(&self, authority: &str) -> Result<(), ApiError> {
        match self {
            WorkerAuth::Worker { authority: mine } if mine != authority => {
                Err(ApiError::Forbidden(format!(
                    "this credential belongs to worker {mine:?}, not {authority:?}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The one authority the caller is bound to (`None`: any).
    pub(crate) fn authority(&self) -> Option<&str> {
        match self {
            WorkerAuth::Worker { authority } => Some(authority),
            _ => None,
        }
    }
}

/// The secret a request presents: `X-BackendAI-Token: <s>|Bearer <s>|BackendAI <s>`, or
/// `Authorization: Bearer <s>|BackendAI <s>`.
pub(super) fn presented(headers: &HeaderMap) -> Option<&str> {
    let raw = headers
        .get("x-backendai-token")
        .or_else(|| headers.get(axum::http::header::AUTHORIZATION))?
        .to_str()
        .ok()?
        .trim();
    for scheme in ["Bearer ", "BackendAI "] {
        if let Some(rest) = raw.strip_prefix(scheme) {
            return Some(rest.trim());
        }
    }
    if headers.contains_key("x-backendai-token") {
        Some(raw)
    } else {
        None
    }
}

/// Constant-time equality of two secrets (`auth::same_secret`).
pub(crate) fn same(a: &str, b: &str) -> bool {
    appproxy_common::auth::same_secret(a.as_bytes(), b.as_bytes())
}

/// Whether the request carries the manager token (for routes where it is optional).
pub(crate) fn manager_presented(headers: &HeaderMap, state: &AppState) -> bool {
    presented(headers).is_some_and(|t| same(t, &state.config.secrets.manager_token))
}

impl FromRequestParts<AppState> for ManagerAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if manager_presented(&parts.headers, state) {
            Ok(ManagerAuth)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

impl FromRequestParts<AppState> for WorkerAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let s = &state.config.secrets;
        let Some(t) = presented(&parts.headers) else {
            return Err(ApiError::Unauthorized);
        };
        if same(t, &s.manager_token) {
            return Ok(WorkerAuth::Manager);
        }
        if s.legacy_shared_worker_token
            .as_deref()
            .is_some_and(|l| same(t, l))
        {
            return Ok(WorkerAuth::LegacyShared);
        }
        let authority = super::credentials::verify(state, t).await?;
        Ok(WorkerAuth::Worker { authority })
    }
}

/// The request body within the configured limit (413 beyond it).
async fn body_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::InvalidParams(e.body_text())
        }
    })
}

/// Parameters from the JSON body, or from the query string when the body is empty.
pub(crate) struct Params<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Params<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let query = req.uri().query().unwrap_or("").to_string();
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return serde_urlencoded::from_str(&query)
                .map(Params)
                .map_err(|e| ApiError::InvalidParams(e.to_string()));
        }
        serde_json::from_slice(&bytes)
            .map(Params)
            .map_err(|e| ApiError::InvalidParams(e.to_string()))
    }
}

/// A JSON body (never the query string).
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidParams(e.to_string()))
    }
}

/// Query parameters only.
pub(crate) struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or(""))
            .map(QueryParams)
            .map_err(|e| ApiError::InvalidParams(e.to_string()))
    }
}

/// A single uuid path segment; anything else is a 400, never a lookup.
pub(crate) struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidParams(e.body_text()))?;
        Uuid::parse_str(&raw)
            .map(IdPath)
            .map_err(|_| ApiError::InvalidParams(format!("{raw:?} is not a UUID")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms() {
        let mut h = HeaderMap::new();
        h.insert("x-backendai-token", "s3cret".parse().unwrap());
        assert_eq!(presented(&h), Some("s3cret"));
        h.insert("x-backendai-token", "Bearer s3cret".parse().unwrap());
        assert_eq!(presented(&h), Some("s3cret"));
        h.insert("x-backendai-token", "BackendAI s3cret".parse().unwrap());
        assert_eq!(presented(&h), Some("s3cret"));
        let mut a = HeaderMap::new();
        a.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert_eq!(presented(&a), Some("s3cret"));
        a.insert("authorization", "Basic s3cret".parse().unwrap());
        assert_eq!(presented(&a), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
