//! The HTTP API: Backend.AI's coordinator routes plus our `/v2/circuits` extensions.
//!
//! Handlers stay short: authenticate (extractor), parse (extractor), call one service
//! (`crate::service`), map the answer. Every failure is an `ApiError`. Each request runs in a
//! span with its matched route (never the raw path, which may hold a grant id) and a request
//! id (`x-request-id`, taken when the caller sends a sane one, else minted, and echoed on the
//! response), and ends with one log line (`appproxy_common::requests`).

mod auth;
mod circuit;
mod cors;
mod credentials;
mod endpoint;
mod extract;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod openapi;
mod proxy;
mod ratelimit;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderValue, header},
    middleware::{self, Next},
    response::Response,
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    config::Config,
    error::ApiError,
    metrics::Metrics,
    reconcile::Reconciler,
    service::{Circuits, Endpoints, Launch, Workers},
    store::Store,
};

/// Everything a handler needs, behind one `Arc`: axum clones the state for every connection
/// and every extractor; cloning the parts themselves (etcd gRPC clients, a dozen metric
/// handles) was about half of the provider's CPU in a burst of 1,000 creates.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What `AppState` shares.
pub struct Shared {
    pub store: Store,
    pub reconciler: Arc<Reconciler>,
    pub metrics: Metrics,
    pub config: Arc<Config>,
    pub etcd: crate::etcd::Kv,
    pub signer: crate::tokens::Signer,
    pub revoker: crate::revoke::Revoker,
    pub activity: crate::activity::ActivityStore,
    /// This replica's view of the leader election.
    pub leadership: crate::leader::Leadership,
    /// Whether etcd can take writes now.
    pub quorum: crate::etcd::Quorum,
    /// The API's rate limits (`None` without Redis).
    pub limiter: Option<appproxy_common::ratelimit::Limiter>,
}

impl Shared {
    /// The circuits service over this state's handles.
    pub fn circuits(&self) -> Circuits<'_> {
        Circuits {
            store: &self.store,
            reconciler: &self.reconciler,
            metrics: &self.metrics,
            activity: &self.activity,
            quorum: &self.quorum,
        }
    }

    /// The workers service.
    pub fn workers(&self) -> Workers<'_> {
        Workers {
            store: &self.store,
            reconciler: &self.reconciler,
            metrics: &self.metrics,
        }
    }

    /// The inference endpoints service.
    pub fn endpoints(&self) -> Endpoints<'_> {
        Endpoints {
            circuits: self.circuits(),
            signer: &self.signer,
        }
    }

    /// The launch-flow service.
    pub fn launch(&self) -> Launch<'_> {
        Launch {
            circuits: self.circuits(),
            signer: &self.signer,
            conf: &self.config.conf,
        }
    }
}

/// The provider's router.
pub fn app(state: AppState) -> Router<()> {
    let limit = state.config.limits.max_body_bytes;
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::UrlNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        // One semaphore for every route (a per-route limit would multiply it).
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            state.config.limits.max_concurrent_requests,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            common_headers,
        ))
        .with_state(state)
}

/// The OpenAPI document of every route [`app`] serves (`GET /openapi.json`).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(routes().split_for_parts().1).unwrap_or_default();
    openapi::serde_semantics(&mut doc);
    openapi::describe_answers(&mut doc);
    doc
}

/// Every route with its description: the one list the router and the document come from.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::Doc::openapi())
        .merge(health_routes())
        .merge(worker_routes())
        .merge(manager_routes())
        .merge(launch_routes())
}

/// Probes, metrics, this API's document and Backend.AI's `/health/*` views.
fn health_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::status))
        .routes(routes!(health::health))
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::document))
        .routes(routes!(health::worker_status))
        .routes(routes!(health::summary))
        .routes(routes!(health::endpoints))
        .routes(routes!(health::circuit))
}

/// What workers (authgate) call: registration, heartbeats, their circuits, reports.
fn worker_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(worker::route_health))
        .routes(routes!(worker::register, worker::list))
        .routes(routes!(
            worker::get_one,
            worker::heartbeat,
            worker::deregister
        ))
        .routes(routes!(worker::circuits))
        .routes(routes!(worker::slots))
        .routes(routes!(circuit::delete_bulk))
        .routes(routes!(circuit::get_one, circuit::delete_one))
        .routes(routes!(circuit::statistics))
}

/// What the manager calls: circuits, links, revocations, credentials, sessions, endpoints.
fn manager_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(circuit::list, circuit::create))
        .routes(routes!(circuit::get_v2, circuit::delete_v2))
        .routes(routes!(auth::create_link))
        .routes(routes!(auth::revoke))
        .routes(routes!(credentials::enrol, credentials::list))
        .routes(routes!(credentials::revoke))
        .routes(routes!(worker::drain))
        .routes(routes!(circuit::delete_session))
        .routes(routes!(endpoint::create_bulk, endpoint::delete_bulk))
        .routes(routes!(endpoint::routes_replace))
        .routes(routes!(endpoint::routes_register))
        .routes(routes!(endpoint::routes_unregister))
        .routes(routes!(endpoint::create_one, endpoint::delete_one))
        .routes(routes!(endpoint::health_check))
        .routes(routes!(endpoint::token))
}

/// Backend.AI's launch flow (the WebUI and the Manager).
fn launch_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(proxy::conf))
        .routes(routes!(proxy::add))
        .routes(routes!(proxy::auth))
}

/// `Server: BackendAI`, CORS per route group (`cors`: preflights answered here), rate limits
/// (`ratelimit`), a request span and a request id on every response.
async fn common_headers(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let id = appproxy_common::requests::request_id(req.headers());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let origins = match cors::group(&route) {
        cors::Group::Launch => &state.config.cors.launch_origins,
        cors::Group::Api => &state.config.cors.api_origins,
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let allow = cors::allowed_origin(origins, origin);
    let preflight = cors::is_preflight(req.method(), req.headers());
    let span =
        tracing::info_span!("request", request_id = %id, method = %req.method(), route = %route);
    let mut resp = if preflight {
        match &allow {
            Some(a) => {
                let mut r =
                    axum::response::IntoResponse::into_response(axum::http::StatusCode::NO_CONTENT);
                cors::preflight_headers(cors::group(&route), a, r.headers_mut());
                r
            }
            None => axum::response::IntoResponse::into_response(ApiError::Forbidden(
                "this origin may not call this route".into(),
            )),
        }
    } else {
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<appproxy_common::tls::PeerAddr>>()
            .map(|c| c.0.0);
        match ratelimit::admit(&state, &route, req.headers(), peer).await {
            Ok(()) => tracing::Instrument::instrument(next.run(req), span.clone()).await,
            Err(e) => span.in_scope(|| axum::response::IntoResponse::into_response(e)),
        }
    };
    let status = resp.status().as_u16();
    state
        .metrics
        .http_requests
        .with_label_values(&[status_class(status)])
        .inc();
    let code = resp
        .extensions()
        .get::<appproxy_common::metrics::ErrorCode>()
        .map(|c| c.0);
    let matched = if route == "unmatched" { "" } else { &route };
    let secs = started.elapsed().as_secs_f64();
    state
        .metrics
        .routes
        .observe(matched, method.as_str(), status, code, secs);
    span.in_scope(|| appproxy_common::requests::log_request(&route, status, code, secs));
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("BackendAI"));
    if let Some(a) = &allow
        && !h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        cors::set_origin(a, h);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(appproxy_common::requests::X_REQUEST_ID, v);
    }
    resp
}

/// The `http_requests_total{class}` label.
fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
