//! authgate's HTTP surface, one file per route family:
//! - `forward_auth`: `GET /auth/{circuit}?g=&m=` — ForwardAuth, and `plugin`, its plugin
//!   stage;
//! - `setup`: `GET /_appproxy/setup?token=` on every app origin (through the setup router) and
//!   Backend.AI's `GET /setup?token=` on the API port;
//! - `login`: `GET /_appproxy/login?circuit=&next=` — a launch bound to this browser;
//! - `closed`: `/_appproxy/closed` — the page for addresses no circuit serves (any more);
//! - `admin`: `/health`, `/plugins`, `/metrics` — on the API port only;
//! - `ingest`: `POST /v1/logs` — Traefik's access-log export, on the ingest listener only.
//!
//! Every refusal is a `GateError` (one status mapping, HTML for browsers, JSON for clients).

mod admin;
mod closed;
mod forward_auth;
mod ingest;
mod login;
mod plugin;
mod setup;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    config::Config, error::GateError, metrics::Metrics, revocation::Revocations, setup::UseCounter,
    token::Keys,
};

/// Everything the handlers share; handed to axum as `Arc<Gate>`, so a request costs one
/// reference count, not a clone of the keys.
pub struct Gate {
    pub activity: Arc<crate::activity::Activity>,
    pub plugins: Option<Arc<crate::plugin::Runner>>,
    pub cfg: Arc<Config>,
    pub keys: Keys,
    pub revoked: Arc<Revocations>,
    pub uses: Arc<UseCounter>,
    /// Setup's rate limit per client address (shared through Redis).
    pub limiter: Arc<appproxy_common::ratelimit::Limiter>,
    pub metrics: Metrics,
    pub traefik: reqwest::Client,
    /// The fast path's state directory (a circuit's key is written there before its first
    /// cookie is minted).
    pub fast_path: Option<Arc<crate::fastpath::FastPath>>,
}

/// The ForwardAuth/setup API (Traefik and, through `/_appproxy/`, browsers reach it).
pub fn app(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/auth/{circuit}", get(forward_auth::auth))
        .route("/_appproxy/setup", get(setup::on_origin))
        .route("/_appproxy/login", get(login::login))
        .route(
            appproxy_common::names::CLOSED_PATH,
            axum::routing::any(closed::closed),
        )
        .route("/setup", get(setup::on_api_port))
        .route("/health", get(admin::health))
        .route("/plugins", get(admin::plugins))
        .route("/metrics", get(admin::metrics))
        .fallback(|| async { GateError::new(404, "E00002", "Not found.") })
        .method_not_allowed_fallback(|| async {
            GateError::new(405, "E00003", "Method not allowed.")
        })
        .layer(axum::middleware::from_fn_with_state(gate.clone(), measured))
        .with_state(gate)
}

/// Every answer into the per-route request metrics (the route pattern, never the path) and,
/// inside the request's span (request id, method, matched route), one log line
/// (`appproxy_common::requests`). ForwardAuth (one call per proxied request) gets neither span
/// nor line unless debug logging is on: a formatted line each cost a third of its throughput.
async fn measured(
    axum::extract::State(g): axum::extract::State<Arc<Gate>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use appproxy_common::requests::{X_REQUEST_ID, log_request, request_id};
    let started = std::time::Instant::now();
    let method = req.method().clone();
    // A clone of the matched path shares its pattern (no allocation per request).
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let pattern = route.as_ref().map_or("unmatched", |p| p.as_str());
    let forward_auth = pattern == "/auth/{circuit}";
    if forward_auth && !tracing::enabled!(tracing::Level::DEBUG) {
        let resp = next.run(req).await;
        observe(&g, pattern, &method, &resp, started);
        return resp;
    }
    let span = if forward_auth {
        tracing::debug_span!("request", request_id = tracing::field::Empty, %method, route = pattern)
    } else {
        tracing::info_span!("request", request_id = tracing::field::Empty, %method, route = pattern)
    };
    let id = request_id(req.headers());
    span.record("request_id", id.as_str());
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let (status, code, secs) = observe(&g, pattern, &method, &resp, started);
    span.in_scope(|| log_request(pattern, status, code, secs));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

/// One answer into the per-route request metrics; its status, error code and seconds.
fn observe(
    g: &Gate,
    pattern: &str,
    method: &axum::http::Method,
    resp: &Response,
    started: std::time::Instant,
) -> (u16, Option<&'static str>, f64) {
    let code = resp
        .extensions()
        .get::<appproxy_common::metrics::ErrorCode>()
        .map(|c| c.0);
    let (status, secs) = (resp.status().as_u16(), started.elapsed().as_secs_f64());
    let matched = if pattern == "unmatched" { "" } else { pattern };
    g.metrics
        .routes
        .observe(matched, method.as_str(), status, code, secs);
    (status, code, secs)
}

/// The worker API for users and the Manager on the `[tls]` listener: setup on the API port
/// (the TCP hand-off and the redirect to an app's origin) and health; never `/auth`,
/// `/metrics` or the app-origin routes, which belong to the loopback ForwardAuth listener.
pub fn public_app(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/setup", get(setup::on_api_port))
        .route("/health", get(admin::health))
        .fallback(|| async { GateError::new(404, "E00002", "Not found.") })
        .method_not_allowed_fallback(|| async {
            GateError::new(405, "E00003", "Method not allowed.")
        })
        .layer(axum::middleware::from_fn_with_state(gate.clone(), measured))
        .with_state(gate)
}

/// The access-log receiver, on its own loopback listener: `POST /v1/logs` with the secret.
pub fn ingest_app(gate: Arc<Gate>) -> Router {
    Router::new()
        .route(
            "/v1/logs",
            axum::routing::post(ingest::ingest_logs).layer(axum::extract::DefaultBodyLimit::max(
                crate::ingest::MAX_EXPORT_BYTES,
            )),
        )
        .fallback(|| async { GateError::new(404, "E00002", "Not found.") })
        .with_state(gate)
}

/// Epoch seconds (authgate's one clock is `activity::now_ms`).
fn now() -> i64 {
    crate::activity::now_ms() / 1000
}

/// The first value of a header as UTF-8, or `""`.
fn first<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Query parameters, refusing repeated names (a second `token=` must not pick the winner).
fn query(raw: Option<&str>) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (k, v) in serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or("")).ok()? {
        if out.insert(k, v).is_some() {
            return None;
        }
    }
    Some(out)
}

/// A `302` that is never cached and never leaks the current URL as `Referer`.
fn redirect(location: &str) -> Result<Response, GateError> {
    let v = HeaderValue::from_str(location)
        .map_err(|_| GateError::new(400, "E20001", "Bad redirect target."))?;
    let mut resp = StatusCode::FOUND.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, v);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(resp)
}
