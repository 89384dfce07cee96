//! Inference endpoints, as Backend.AI's Manager drives them: create/sync (stable URLs through
//! `existing_url`), delete, declarative and delta route sync, health-check configuration
//! (published at once) and API tokens for authgate.

use serde_json::json;
use uuid::Uuid;

use super::Circuits;
use crate::{
    domain::{AppMode, Circuit, FrontendMode, HealthCheck, Protocol, Route, Worker},
    error::ApiError,
    models::{
        answers::{RoutesOfEndpoint, RoutesSynced},
        endpoint::{BulkRoutes, EndpointItem, routes_of},
    },
    placement::{self, Ask},
    store::{NewCircuit, StoreError},
    tokens::{Signer, now_secs},
};

/// The endpoints service.
#[derive(Clone, Copy)]
pub struct Endpoints<'a> {
    pub circuits: Circuits<'a>,
    pub signer: &'a Signer,
}

/// The answer for one synced endpoint.
#[derive(Debug)]
pub struct Synced {
    pub url: String,
    pub health_check_enabled: bool,
}

/// The outcome of creating an endpoint's circuit.
enum Created {
    New(Box<(Circuit, Worker)>),
    /// Another sync created the endpoint's circuit first.
    Taken(Uuid),
}

/// What to do with one endpoint's routes.
#[derive(Clone, Copy)]
pub enum RouteOp {
    Replace,
    Register,
    Unregister,
}

impl Endpoints<'_> {
    /// Create or sync one endpoint: its settings, then its one circuit (created on the first
    /// sync; placed where `existing_url` points, if it points at a worker).
    pub async fn sync(&self, id: Uuid, item: &EndpointItem) -> Result<Synced, ApiError> {
        let store = self.circuits.store;
        let e = store
            .upsert_endpoint(
                id,
                item.health_check.as_ref(),
                item.sticky,
                item.load_balancing,
                item.rate_limit,
            )
            .await?;
        let (c, w) = match store.circuit_of_endpoint(id).await? {
            Some(c) => self.update(c, item).await?,
            None => match self.create(id, item).await? {
                Created::New(cw) => *cw,
                // A concurrent first sync created it (unique index): sync that one.
                Created::Taken(winner) => {
                    self.update(self.circuits.get(winner).await?, item).await?
                }
            },
        };
        Ok(Synced {
            url: c.url(&w),
            health_check_enabled: e.health_check_enabled(),
        })
    }

    /// Apply the item's plugin to an existing circuit and publish (health check and sticky
    /// may have changed too).
    async fn update(&self, c: Circuit, item: &EndpointItem) -> Result<(Circuit, Worker), ApiError> {
        let store = self.circuits.store;
        if c.auth_plugin != item.auth_plugin {
            store
                .set_auth_plugin(c.id, item.auth_plugin.as_ref())
                .await?;
        }
        let w = store
            .get_worker(c.worker_id)
            .await?
            .ok_or(ApiError::NotFound("worker"))?;
        self.circuits.changed(&c);
        Ok((c, w))
    }

    /// The endpoint's circuit, placed and stored (or the id of the one a concurrent sync
    /// stored first).
    async fn create(&self, id: Uuid, item: &EndpointItem) -> Result<Created, ApiError> {
        let workers = self.circuits.store.list_workers().await?;
        let existing = item
            .tags
            .endpoint
            .existing_url
            .as_deref()
            .and_then(|u| placement::match_existing(&workers, u));
        let (worker, port, subdomain) = match existing {
            Some((w, port, sub)) => (w.clone(), port, sub),
            None => {
                let props = item.props(id);
                let ask = Ask {
                    protocol: Protocol::Http,
                    mode: AppMode::Inference,
                    props: &props,
                };
                (self.circuits.pick_worker(None, ask).await?, item.port, None)
            }
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
        self.circuits.publishable()?;
        match self.circuits.insert(&new, &worker).await {
            Ok(c) => Ok(Created::New(Box::new((c, worker)))),
            Err(StoreError::EndpointTaken(winner)) => Ok(Created::Taken(winner)),
            Err(e) => Err(e.into()),
        }
    }

    /// Sync several endpoints (each needs a `deployment_id`, checked before any write).
    pub async fn sync_bulk(&self, items: &[EndpointItem]) -> Result<Vec<(Uuid, Synced)>, ApiError> {
        let mut ids = Vec::new();
        for item in items {
            item.validate()?;
            let id = item
                .deployment_id
                .or(item.tags.endpoint.id)
                .ok_or_else(|| {
                    ApiError::InvalidParams("every endpoint needs deployment_id".into())
                })?;
            ids.push(id);
        }
        let mut out = Vec::new();
        for (item, id) in items.iter().zip(ids) {
            out.push((id, self.sync(id, item).await?));
        }
        Ok(out)
    }

    /// Delete an endpoint and its circuit; `false` when neither existed.
    pub async fn remove(&self, id: Uuid) -> Result<bool, ApiError> {
        let Some(gone) = self.circuits.store.delete_endpoint(id).await? else {
            return Ok(false);
        };
        self.circuits.settle(&gone);
        Ok(true)
    }

    /// Apply `op` to every entry; per-entry failures are reported, not raised (Backend.AI).
    /// Everything is validated first: bad input changes nothing.
    pub async fn sync_routes(
        &self,
        req: &BulkRoutes,
        op: RouteOp,
    ) -> Result<RoutesSynced, ApiError> {
        let mut parsed = Vec::new();
        for item in &req.endpoints {
            parsed.push(routes_of(&item.routes).map_err(ApiError::InvalidParams)?);
        }
        let mut out = Vec::new();
        for (item, routes) in req.endpoints.iter().zip(parsed) {
            out.push(
                self.routes_of_one(item.deployment_id, &routes, &item.route_ids, op)
                    .await?,
            );
        }
        Ok(RoutesSynced { endpoints: out })
    }

    async fn routes_of_one(
        &self,
        id: Uuid,
        routes: &[Route],
        route_ids: &[Uuid],
        op: RouteOp,
    ) -> Result<RoutesOfEndpoint, ApiError> {
        let store = self.circuits.store;
        let mut entry = RoutesOfEndpoint {
            deployment_id: id,
            ..RoutesOfEndpoint::default()
        };
        let Some(c) = store.circuit_of_endpoint(id).await? else {
            entry.error = Some("No circuit registered for this endpoint yet.".into());
            return Ok(entry);
        };
        let result = match op {
            RouteOp::Replace => store.replace_routes(c.id, routes).await,
            RouteOp::Register => store.register_routes(c.id, routes).await.map(|(a, b)| {
                entry.registered_route_ids = Some(a);
                entry.already_registered_route_ids = Some(b);
            }),
            RouteOp::Unregister => store
                .unregister_routes(c.id, route_ids)
                .await
                .map(|(a, b)| {
                    entry.unregistered_route_ids = Some(a);
                    entry.already_absent_route_ids = Some(b);
                }),
        };
        match result {
            Ok(()) => {
                entry.success = true;
                self.circuits.changed(&c);
            }
            Err(StoreError::DuplicateRoute(r)) => {
                entry.error = Some(format!("route_id {r} appears twice"));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(entry)
    }

    /// Replace an existing endpoint's health check and publish it; returns whether enabled.
    pub async fn set_health_check(
        &self,
        id: Uuid,
        health_check: Option<&HealthCheck>,
    ) -> Result<bool, ApiError> {
        if let Some(h) = health_check {
            h.validate().map_err(ApiError::InvalidParams)?;
        }
        let store = self.circuits.store;
        if store.get_endpoint(id).await?.is_none() {
            return Err(ApiError::NotFound("endpoint"));
        }
        let e = store
            .upsert_endpoint(id, health_check, None, None, None)
            .await?;
        if let Some(c) = store.circuit_of_endpoint(id).await? {
            self.circuits.changed(&c);
        }
        Ok(e.health_check_enabled())
    }

    /// An inference API token for the endpoint's circuit, valid until `exp` (epoch seconds).
    pub async fn token(&self, id: Uuid, user: Uuid, exp: i64) -> Result<String, ApiError> {
        if exp <= now_secs() {
            return Err(ApiError::InvalidParams("exp must be in the future".into()));
        }
        let c = self
            .circuits
            .store
            .circuit_of_endpoint(id)
            .await?
            .ok_or(ApiError::NotFound("endpoint"))?;
        self.signer
            .inference_token(&c, Some(user.to_string()), exp)
            .map_err(|e| {
                tracing::error!(error = %e, "Cannot sign an inference token");
                ApiError::DependencyUnavailable("cannot sign tokens".into())
            })
    }
}
