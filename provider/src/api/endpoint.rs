//! Inference endpoints, as Backend.AI's Manager drives them: create/sync (single and bulk,
//! stable URLs through `existing_url`), delete, declarative and delta route sync, health-check
//! configuration (published at once) and API tokens for authgate.
//!
//! Request models ignore unknown fields, as Backend.AI's pydantic models do, so a newer Manager
//! keeps working; everything we read is validated before anything is written.

use axum::{Json, extract::State};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    AppState,
    circuit::{pick_worker, store_circuit},
    extract::{IdPath, JsonBody, ManagerAuth},
};
use crate::{
    domain::{AppMode, Circuit, FrontendMode, HealthCheck, Protocol, Route, Worker, validate_host},
    error::ApiError,
    store::NewCircuit,
    tokens::now_secs,
};

/// `tags.endpoint` of an endpoint item.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EndpointTag {
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    pub runtime_variant: Option<String>,
    #[serde(default)]
    pub existing_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EndpointTags {
    #[serde(default)]
    pub session: serde_json::Map<String, Value>,
    #[serde(default)]
    pub endpoint: EndpointTag,
}

/// Backend.AI's `CreateEndpointItem` / `EndpointCreationRequestModel`, plus `sticky`.
#[derive(Debug, Deserialize)]
pub(crate) struct EndpointItem {
    #[serde(default, alias = "endpoint_id")]
    pub deployment_id: Option<Uuid>,
    pub service_name: String,
    #[serde(default)]
    pub tags: EndpointTags,
    #[serde(default)]
    pub open_to_public: bool,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub subdomain: Option<String>,
    /// appproxy extension: sticky sessions across replicas.
    #[serde(default)]
    pub sticky: Option<bool>,
    /// appproxy extension: a WebAssembly auth plugin (e.g. API keys).
    #[serde(default)]
    pub auth_plugin: Option<crate::domain::AuthPlugin>,
}

impl EndpointItem {
    pub(super) fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: &str| Err(ApiError::InvalidParams(m.into()));
        if self.service_name.is_empty() || self.service_name.len() > 255 {
            return bad("service_name must be 1-255 characters");
        }
        if let Some(h) = &self.health_check {
            h.validate().map_err(ApiError::InvalidParams)?;
        }
        if self.port == Some(0) {
            return bad("port must be 1-65535");
        }
        if let Some(p) = &self.auth_plugin {
            p.validate().map_err(ApiError::InvalidParams)?;
        }
        Ok(())
    }

    /// Properties worker app filters match (`session.*`, `endpoint.*`).
    fn props(&self, id: Uuid) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = self
            .tags
            .session
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                (format!("session.{k}"), v)
            })
            .collect();
        p.push(("endpoint.id".into(), id.to_string()));
        if let Some(r) = &self.tags.endpoint.runtime_variant {
            p.push(("endpoint.runtime_variant".into(), r.clone()));
        }
        if let Some(u) = &self.tags.endpoint.existing_url {
            p.push(("endpoint.existing_url".into(), u.clone()));
        }
        p
    }
}

/// `host`, `port` of `scheme://host[:port][/…]`.
fn url_host_port(url: &str) -> Option<(String, Option<u16>)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            Some((h.to_ascii_lowercase(), Some(p.parse().ok()?)))
        }
        _ => Some((authority.to_ascii_lowercase(), None)),
    }
}

/// The worker (and slot) an `existing_url` belongs to, so a re-created endpoint keeps its URL.
fn match_existing(workers: &[Worker], url: &str) -> Option<(Worker, Option<u16>, Option<String>)> {
    let (host, port) = url_host_port(url)?;
    for w in workers {
        if !w.accepted_traffics.contains(&AppMode::Inference) {
            continue;
        }
        match w.frontend_mode {
            FrontendMode::Wildcard => {
                let (label, rest) = host.split_once('.')?;
                if w.wildcard_domain.as_deref() == Some(&format!(".{rest}")) {
                    return Some((w.clone(), None, Some(label.to_string())));
                }
            }
            FrontendMode::Port => {
                if let (Some(p), Some((lo, hi))) = (port, w.port_range)
                    && w.hostname.eq_ignore_ascii_case(&host)
                    && (lo..=hi).contains(&p)
                {
                    return Some((w.clone(), Some(p), None));
                }
            }
        }
    }
    None
}

/// Create or sync one endpoint; returns (url, health_check_enabled).
async fn sync_one(
    state: &AppState,
    id: Uuid,
    item: &EndpointItem,
) -> Result<(String, bool), ApiError> {
    let e = state
        .store
        .upsert_endpoint(id, item.health_check.as_ref(), item.sticky)
        .await?;
    if let Some(c) = state.store.circuit_of_endpoint(id).await? {
        if c.auth_plugin != item.auth_plugin {
            state
                .store
                .set_auth_plugin(c.id, item.auth_plugin.as_ref())
                .await?;
        }
        let w = state
            .store
            .get_worker(c.worker_id)
            .await?
            .ok_or(ApiError::NotFound("worker"))?;
        // Health check / sticky may have changed: publish now, not at the next resync.
        state.reconciler.nudge_circuit(w.id, c.id);
        return Ok((c.url(&w), e.health_check_enabled()));
    }
    let workers = state.store.list_workers().await?;
    let existing = item
        .tags
        .endpoint
        .existing_url
        .as_deref()
        .and_then(|u| match_existing(&workers, u));
    let (worker, port, subdomain) = match existing {
        Some(found) => found,
        None => (
            pick_worker(
                state,
                None,
                Protocol::Http,
                AppMode::Inference,
                &item.props(id),
            )
            .await?,
            item.port,
            None,
        ),
    };
    let new = NewCircuit {
        app: item.service_name.clone(),
        protocol: Protocol::Http,
        app_mode: AppMode::Inference,
        worker_id: worker.id,
        preferred_port: port.filter(|_| worker.frontend_mode == FrontendMode::Port),
        preferred_subdomain: subdomain
            .or_else(|| item.subdomain.clone())
            .or_else(|| Some(item.service_name.clone())),
        envs: json!({}),
        arguments: None,
        open_to_public: item.open_to_public,
        allowed_client_ips: Vec::new(),
        user_id: None,
        endpoint_id: Some(id),
        runtime_variant: item.tags.endpoint.runtime_variant.clone(),
        routes: Vec::new(),
        idle_timeout: None,
        auth_plugin: item.auth_plugin.clone(),
        allowed_origins: Vec::new(),
    };
    let c = store_circuit(state, &new, &worker).await?;
    Ok((c.url(&worker), e.health_check_enabled()))
}

pub(super) async fn create_one(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    JsonBody(item): JsonBody<EndpointItem>,
) -> Result<Json<Value>, ApiError> {
    item.validate()?;
    let (url, hc) = sync_one(&state, id, &item).await?;
    Ok(Json(
        json!({ "success": true, "endpoint": url, "health_check_enabled": hc }),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct BulkCreate {
    pub endpoints: Vec<EndpointItem>,
}

pub(super) async fn create_bulk(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkCreate>,
) -> Result<Json<Value>, ApiError> {
    let mut ids = Vec::new();
    for item in &req.endpoints {
        item.validate()?;
        ids.push(
            item.deployment_id
                .or(item.tags.endpoint.id)
                .ok_or_else(|| {
                    ApiError::InvalidParams("every endpoint needs deployment_id".into())
                })?,
        );
    }
    let mut out = Vec::new();
    for (item, id) in req.endpoints.iter().zip(ids) {
        let (url, hc) = sync_one(&state, id, item).await?;
        out.push(json!({ "deployment_id": id, "url": url, "health_check_enabled": hc }));
    }
    Ok(Json(json!({ "endpoints": out })))
}

async fn remove(state: &AppState, id: Uuid) -> Result<bool, ApiError> {
    let Some(gone) = state.store.delete_endpoint(id).await? else {
        return Ok(false);
    };
    for c in &gone {
        state.reconciler.nudge_circuit(c.worker_id, c.id);
    }
    state.metrics.circuits_deleted.inc_by(gone.len() as u64);
    Ok(true)
}

pub(super) async fn delete_one(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
) -> Result<Json<Value>, ApiError> {
    if !remove(&state, id).await? {
        return Err(ApiError::NotFound("endpoint"));
    }
    Ok(Json(json!({ "success": true })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeploymentRef {
    #[serde(alias = "endpoint_id")]
    pub deployment_id: Uuid,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BulkDelete {
    pub endpoints: Vec<DeploymentRef>,
}

pub(super) async fn delete_bulk(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkDelete>,
) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for r in &req.endpoints {
        // Missing ids count as success (Backend.AI).
        remove(&state, r.deployment_id).await?;
        out.push(json!({ "deployment_id": r.deployment_id, "success": true }));
    }
    Ok(Json(json!({ "endpoints": out })))
}

/// `RouteEntry` (plus the optional `traffic_ratio` Backend.AI does not send).
#[derive(Debug, Deserialize)]
pub(crate) struct RouteEntry {
    pub session_id: Uuid,
    pub route_id: Uuid,
    #[serde(default)]
    pub session_name: Option<String>,
    #[serde(default = "localhost")]
    pub kernel_host: String,
    pub kernel_port: u16,
    #[serde(default = "one", deserialize_with = "ratio")]
    pub traffic_ratio: f64,
}

fn localhost() -> String {
    "localhost".into()
}
fn one() -> f64 {
    1.0
}
fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(1.0))
}

fn routes_of(entries: &[RouteEntry]) -> Result<Vec<Route>, String> {
    entries
        .iter()
        .map(|e| {
            validate_host(&e.kernel_host)?;
            if e.kernel_port == 0 {
                return Err("kernel_port must be 1-65535".into());
            }
            if !(e.traffic_ratio.is_finite() && e.traffic_ratio >= 0.0) {
                return Err("traffic_ratio must be a finite number >= 0".into());
            }
            Ok(Route {
                route_id: Some(e.route_id),
                session_id: e.session_id,
                session_name: e.session_name.clone(),
                kernel_host: e.kernel_host.clone(),
                kernel_port: e.kernel_port,
                protocol: Protocol::Http,
                traffic_ratio: e.traffic_ratio,
            })
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub(crate) struct RoutesItem {
    #[serde(alias = "endpoint_id")]
    pub deployment_id: Uuid,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    #[serde(default)]
    pub route_ids: Vec<Uuid>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BulkRoutes {
    pub endpoints: Vec<RoutesItem>,
}

/// What to do with one endpoint's routes.
#[derive(Clone, Copy)]
enum RouteOp {
    Replace,
    Register,
    Unregister,
}

/// Apply `op` to every entry; per-entry failures are reported, not raised (Backend.AI).
async fn route_sync(state: &AppState, req: &BulkRoutes, op: RouteOp) -> Result<Value, ApiError> {
    // Validate everything first: bad input changes nothing.
    let mut parsed = Vec::new();
    for item in &req.endpoints {
        parsed.push(routes_of(&item.routes).map_err(ApiError::InvalidParams)?);
    }
    let mut out = Vec::new();
    for (item, routes) in req.endpoints.iter().zip(parsed) {
        let id = item.deployment_id;
        let Some(c) = state.store.circuit_of_endpoint(id).await? else {
            out.push(json!({ "deployment_id": id, "success": false,
                             "error": "No circuit registered for this endpoint yet." }));
            continue;
        };
        let mut entry = json!({ "deployment_id": id, "success": true });
        let result = match op {
            RouteOp::Replace => state.store.replace_routes(c.id, &routes).await,
            RouteOp::Register => state
                .store
                .register_routes(c.id, &routes)
                .await
                .map(|(a, b)| {
                    entry["registered_route_ids"] = json!(a);
                    entry["already_registered_route_ids"] = json!(b);
                }),
            RouteOp::Unregister => state
                .store
                .unregister_routes(c.id, &item.route_ids)
                .await
                .map(|(a, b)| {
                    entry["unregistered_route_ids"] = json!(a);
                    entry["already_absent_route_ids"] = json!(b);
                }),
        };
        match result {
            Ok(()) => state.reconciler.nudge_circuit(c.worker_id, c.id),
            Err(crate::store::StoreError::DuplicateRoute(r)) => {
                entry["success"] = json!(false);
                entry["error"] = json!(format!("route_id {r} appears twice"));
            }
            Err(e) => return Err(e.into()),
        }
        out.push(entry);
    }
    Ok(json!({ "endpoints": out }))
}

pub(super) async fn routes_replace(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkRoutes>,
) -> Result<Json<Value>, ApiError> {
    route_sync(&state, &req, RouteOp::Replace).await.map(Json)
}

pub(super) async fn routes_register(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkRoutes>,
) -> Result<Json<Value>, ApiError> {
    route_sync(&state, &req, RouteOp::Register).await.map(Json)
}

pub(super) async fn routes_unregister(
    State(state): State<AppState>,
    _: ManagerAuth,
    JsonBody(req): JsonBody<BulkRoutes>,
) -> Result<Json<Value>, ApiError> {
    route_sync(&state, &req, RouteOp::Unregister)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
pub(crate) struct HealthCheckUpdate {
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

pub(super) async fn health_check(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<HealthCheckUpdate>,
) -> Result<Json<Value>, ApiError> {
    if let Some(h) = &req.health_check {
        h.validate().map_err(ApiError::InvalidParams)?;
    }
    if state.store.get_endpoint(id).await?.is_none() {
        return Err(ApiError::NotFound("endpoint"));
    }
    let e = state
        .store
        .upsert_endpoint(id, req.health_check.as_ref(), None)
        .await?;
    if let Some(c) = state.store.circuit_of_endpoint(id).await? {
        state.reconciler.nudge_circuit(c.worker_id, c.id);
    }
    Ok(Json(
        json!({ "success": true, "health_check_enabled": e.health_check_enabled() }),
    ))
}

/// `exp` as epoch seconds or an ISO 8601 date-time (UTC when it has no offset).
fn exp_any<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Num(f64),
        Text(String),
    }
    match Form::deserialize(d)? {
        Form::Num(n) => Ok(n as i64),
        Form::Text(t) => {
            use time::format_description::well_known::Rfc3339;
            let t = t.trim().replace(' ', "T");
            // The last six characters (not bytes: the text is the client's and may hold
            // multi-byte characters) may carry an offset like `+09:00`.
            let tail: String = {
                let n = t.chars().count();
                t.chars().skip(n.saturating_sub(6)).collect()
            };
            let with_tz = if t.ends_with('Z') || tail.contains(['+', '-']) {
                t
            } else {
                format!("{t}Z")
            };
            time::OffsetDateTime::parse(&with_tz, &Rfc3339)
                .map(|d| d.unix_timestamp())
                .map_err(serde::de::Error::custom)
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenRequest {
    pub user_uuid: Uuid,
    #[serde(deserialize_with = "exp_any")]
    pub exp: i64,
}

pub(super) async fn token(
    State(state): State<AppState>,
    _: ManagerAuth,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Json<Value>, ApiError> {
    if req.exp <= now_secs() {
        return Err(ApiError::InvalidParams("exp must be in the future".into()));
    }
    let c: Circuit = state
        .store
        .circuit_of_endpoint(id)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    let token = state
        .signer
        .inference_token(&c, Some(req.user_uuid.to_string()), req.exp)
        .map_err(|e| {
            tracing::error!(error = %e, "Cannot sign an inference token");
            ApiError::DependencyUnavailable("cannot sign tokens".into())
        })?;
    Ok(Json(json!({ "token": token })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_exp_in_any_text_is_an_error_not_a_panic() {
        let user = Uuid::new_v4();
        for exp in [
            "€a€",
            "€",
            "aé",
            "2026-01-01T00:00:00€",
            "🦀🦀🦀🦀🦀🦀🦀",
            "",
            " ",
        ] {
            let body = json!({ "user_uuid": user, "exp": exp }).to_string();
            assert!(
                serde_json::from_str::<TokenRequest>(&body).is_err(),
                "{exp}"
            );
        }
        let ok = json!({ "user_uuid": user, "exp": "2030-01-02 03:04:05+09:00" }).to_string();
        assert_eq!(
            serde_json::from_str::<TokenRequest>(&ok).unwrap().exp,
            1_893_521_045
        );
    }

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(
            url_host_port("http://Host.Example:10205/x"),
            Some(("host.example".into(), Some(10205)))
        );
        assert_eq!(
            url_host_port("https://svc.apps.example.com"),
            Some(("svc.apps.example.com".into(), None))
        );
        assert_eq!(url_host_port("no-scheme"), None);
    }
}
