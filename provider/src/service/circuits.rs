//! Circuits: place, create, find (with ownership), remove, end a session's circuits.
//!
//! Every change to SQL is followed by a nudge of the reconciler for the circuit's worker
//! (handlers never touch etcd) and counted in the metrics.

use serde_json::Value;
use uuid::Uuid;

use crate::{
    activity::ActivityStore,
    domain::{AppMode, AuthPlugin, Circuit, FrontendMode, Protocol, Route, Worker},
    error::ApiError,
    etcd::Quorum,
    metrics::Metrics,
    models::{CreateCircuitRequest, ValidCreate},
    placement::{self, Ask},
    reconcile::Reconciler,
    store::{CircuitFilter, NewCircuit, Store, StoreError},
};

/// The circuits service: borrowed handles, cheap to build per request.
#[derive(Clone, Copy)]
pub struct Circuits<'a> {
    pub store: &'a Store,
    pub reconciler: &'a Reconciler,
    pub metrics: &'a Metrics,
    /// Activity keys in Redis (cleared with their circuits).
    pub activity: &'a ActivityStore,
    /// Whether etcd can take writes (creates are refused while not).
    pub quorum: &'a Quorum,
}

/// An interactive circuit to create (from `POST /v2/circuits` or `/v2/proxy/auth`).
pub struct NewInteractive {
    pub app: String,
    pub protocol: Protocol,
    /// The worker's authority; placement chooses when `None`.
    pub worker: Option<String>,
    pub user_id: Uuid,
    pub open_to_public: bool,
    pub allowed_client_ips: Vec<ipnet::IpNet>,
    pub port: Option<u16>,
    pub subdomain: Option<String>,
    pub envs: serde_json::Map<String, Value>,
    pub arguments: Option<String>,
    pub idle_timeout: Option<u64>,
    pub routes: Vec<Route>,
    /// Properties worker app filters match (`session.user_uuid`, …).
    pub props: Vec<(String, String)>,
    pub auth_plugin: Option<AuthPlugin>,
    pub allowed_origins: Vec<String>,
}

impl NewInteractive {
    /// A circuit from a validated `POST /v2/circuits` request.
    pub fn from_request(req: CreateCircuitRequest, valid: ValidCreate) -> NewInteractive {
        NewInteractive {
            props: vec![("session.user_uuid".into(), req.user_id.to_string())],
            app: req.app,
            protocol: req.protocol,
            worker: req.worker,
            user_id: req.user_id,
            open_to_public: req.open_to_public,
            allowed_client_ips: valid.allowed_client_ips,
            port: req.port,
            subdomain: req.subdomain,
            envs: req.envs.unwrap_or_default(),
            arguments: req.arguments,
            idle_timeout: req.idle_timeout,
            routes: valid.routes,
            auth_plugin: req.auth_plugin,
            allowed_origins: valid.allowed_origins,
        }
    }
}

/// Which circuits `GET /v2/circuits` lists.
#[derive(Debug, Default)]
pub struct Listing {
    pub session_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    /// A worker authority.
    pub worker: Option<String>,
}

impl<'a> Circuits<'a> {
    /// The circuit `id`, or 404.
    pub async fn get(&self, id: Uuid) -> Result<Circuit, ApiError> {
        self.store
            .get_circuit(id)
            .await?
            .ok_or(ApiError::NotFound("circuit"))
    }

    /// The circuit `id` with its worker (the worker may be gone).
    pub async fn get_with_worker(&self, id: Uuid) -> Result<(Circuit, Option<Worker>), ApiError> {
        let c = self.get(id).await?;
        let w = self.store.get_worker(c.worker_id).await?;
        Ok((c, w))
    }

    /// The circuit `id` if `caller` (a worker authority; `None`: the manager) may see it.
    pub async fn visible_to(&self, caller: Option<&str>, id: Uuid) -> Result<Circuit, ApiError> {
        let c = self.get(id).await?;
        self.check_owner(caller, std::slice::from_ref(&c)).await?;
        Ok(c)
    }

    /// `403` unless every one of `circuits` is on the caller's worker: a worker credential
    /// reads and deletes only its own worker's circuits (the manager, any).
    pub async fn check_owner(
        &self,
        caller: Option<&str>,
        circuits: &[Circuit],
    ) -> Result<(), ApiError> {
        let Some(authority) = caller else {
            return Ok(());
        };
        let mine = self
            .store
            .worker_by_authority(authority)
            .await?
            .map(|w| w.id);
        match circuits.iter().find(|c| Some(c.worker_id) != mine) {
            Some(c) => Err(ApiError::Forbidden(format!(
                "circuit {} is not on worker {authority:?}",
                c.id
            ))),
            None => Ok(()),
        }
    }

    /// Circuits matching `q`, each with its worker.
    /// What a listing reads: its SQL filter and the workers (for the circuits' URLs); `None`
    /// when it names a worker that does not exist (nothing to list).
    pub async fn list_scope(
        &self,
        q: &Listing,
    ) -> Result<Option<(CircuitFilter, Vec<Worker>)>, ApiError> {
        let worker_id = match &q.worker {
            Some(a) => match self.store.worker_by_authority(a).await? {
                Some(w) => Some(w.id),
                None => return Ok(None),
            },
            None => None,
        };
        let filter = CircuitFilter {
            session_id: q.session_id,
            user_id: q.user_id,
            worker_id,
        };
        Ok(Some((filter, self.store.list_workers().await?)))
    }

    /// One page of a listing ([`Circuits::list_scope`]): at most `limit` circuits after
    /// `after`.
    pub async fn list_page(
        &self,
        filter: &CircuitFilter,
        after: Option<&Circuit>,
        limit: i64,
    ) -> Result<Vec<Circuit>, ApiError> {
        Ok(self.store.list_circuits_page(filter, after, limit).await?)
    }

    /// The worker for a new circuit: the named one (if it can take it) or the best ranked
    /// ([`placement::rank_workers`]).
    pub async fn pick_worker(&self, named: Option<&str>, ask: Ask<'_>) -> Result<Worker, ApiError> {
        let unavailable = |m: &str| ApiError::WorkerNotAvailable(m.to_string());
        if let Some(a) = named {
            let w = self
                .store
                .worker_by_authority(a)
                .await?
                .ok_or_else(|| unavailable("no such worker"))?;
            return match placement::refuse_named(&w, ask.protocol) {
                Some(why) => Err(unavailable(why)),
                None => Ok(w),
            };
        }
        let counts = self.store.occupied_counts().await?;
        let workers = self.store.list_workers().await?;
        placement::rank_workers(&workers, &counts, ask)
            .cloned()
            .ok_or_else(|| unavailable("no worker with a free slot serves this protocol"))
    }

    /// Place and store an interactive circuit.
    pub async fn create_interactive(
        &self,
        n: NewInteractive,
    ) -> Result<(Circuit, Worker), ApiError> {
        let ask = Ask {
            protocol: n.protocol,
            mode: AppMode::Interactive,
            props: &n.props,
        };
        self.publishable()?;
        let worker = self.pick_worker(n.worker.as_deref(), ask).await?;
        if n.port.is_some() && worker.frontend_mode != FrontendMode::Port {
            return Err(ApiError::InvalidParams(
                "port given but the worker uses subdomains".into(),
            ));
        }
        let new = NewCircuit {
            app: n.app,
            protocol: n.protocol,
            app_mode: AppMode::Interactive,
            worker_id: worker.id,
            preferred_port: n.port,
            preferred_subdomain: n.subdomain,
            envs: Value::Object(n.envs),
            arguments: n.arguments,
            open_to_public: n.open_to_public,
            allowed_client_ips: n.allowed_client_ips,
            user_id: Some(n.user_id),
            endpoint_id: None,
            runtime_variant: None,
            routes: n.routes,
            idle_timeout: n.idle_timeout,
            auth_plugin: n.auth_plugin,
            allowed_origins: n.allowed_origins,
        };
        let c = self.insert(&new, &worker).await?;
        Ok((c, worker))
    }

    /// A new circuit can be published: refuse (503) while etcd has no quorum, instead of
    /// acknowledging a circuit that cannot go live.
    pub fn publishable(&self) -> Result<(), ApiError> {
        if self.quorum.ok() {
            Ok(())
        } else {
            Err(ApiError::DependencyUnavailable(
                "etcd has no quorum: new circuits cannot be published now".into(),
            ))
        }
    }

    /// Insert a circuit (allocating its slot), count it and nudge the reconciler. Store
    /// errors come back as they are: a caller may handle `EndpointTaken`.
    pub async fn insert(&self, new: &NewCircuit, worker: &Worker) -> Result<Circuit, StoreError> {
        let c = self.store.create_circuit(new, worker).await?;
        self.metrics.circuits_created.inc();
        self.reconciler.nudge_circuit(worker.id, c.id);
        tracing::info!(circuit = %c.id, worker = %worker.authority, endpoint = ?c.endpoint_id, "Circuit created");
        Ok(c)
    }

    /// A changed circuit (routes, plugin, balancing): publish it now.
    pub fn changed(&self, c: &Circuit) {
        self.reconciler.nudge_circuit(c.worker_id, c.id);
    }

    /// Delete circuits by id (those `caller` may delete; `None`: the manager); returns those
    /// that existed.
    pub async fn remove(
        &self,
        caller: Option<&str>,
        ids: &[Uuid],
    ) -> Result<Vec<Circuit>, ApiError> {
        if caller.is_some() {
            let circuits = self.store.circuits_by_ids(ids).await?;
            self.check_owner(caller, &circuits).await?;
        }
        let gone = self.store.delete_circuits(ids).await?;
        self.settle(&gone);
        let ids: Vec<Uuid> = gone.iter().map(|c| c.id).collect();
        self.forget_activity(&ids).await;
        Ok(gone)
    }

    /// Remove an ended session's activity key (best effort: it expires on its own after 2
    /// days; the session is gone either way).
    async fn forget_session(&self, session_id: Uuid) {
        if self.activity.configured()
            && let Err(e) = self.activity.clear_session(session_id).await
        {
            tracing::warn!(error = %e, session = %session_id, "Could not clear activity keys");
        }
    }

    /// Remove the activity keys of circuits that are gone (best effort: they expire on their
    /// own after 2 days).
    pub async fn forget_activity(&self, ids: &[Uuid]) {
        if ids.is_empty() || !self.activity.configured() {
            return;
        }
        if let Err(e) = self.activity.clear_circuits(ids).await {
            tracing::warn!(error = %e, "Could not clear activity keys");
        }
    }

    /// Delete one circuit, or 404.
    pub async fn remove_one(&self, caller: Option<&str>, id: Uuid) -> Result<(), ApiError> {
        self.visible_to(caller, id).await?;
        if self.remove(None, &[id]).await?.is_empty() {
            return Err(ApiError::NotFound("circuit"));
        }
        Ok(())
    }

    /// After circuits left SQL (the store listed them as ended in their workers' maps):
    /// nudge the reconciler for every worker they lived on.
    pub fn settle(&self, gone: &[Circuit]) {
        for c in gone {
            tracing::info!(circuit = %c.id, worker = %c.worker_id, app = %c.app, "Circuit removed");
            self.reconciler.nudge_circuit(c.worker_id, c.id);
        }
        self.metrics.circuits_deleted.inc_by(gone.len() as u64);
    }

    /// Delete every circuit that routes to a session and its activity keys; returns the ids.
    pub async fn end_session(&self, session_id: Uuid) -> Result<Vec<Uuid>, ApiError> {
        let gone = self.store.delete_session(session_id).await?;
        self.settle(&gone);
        let ids: Vec<Uuid> = gone.iter().map(|c| c.id).collect();
        self.forget_activity(&ids).await;
        self.forget_session(session_id).await;
        Ok(ids)
    }

    /// A Backend.AI session ended (its event): remove the *interactive* circuits that route to
    /// it, with their activity keys. Inference circuits stay: the Manager changes an endpoint's
    /// replicas over HTTP, and one replica's session ending must not take the endpoint down.
    pub async fn end_interactive_session(&self, session_id: Uuid) -> Result<Vec<Uuid>, ApiError> {
        let filter = CircuitFilter {
            session_id: Some(session_id),
            ..Default::default()
        };
        let ids: Vec<Uuid> = (self.store.list_circuits(&filter).await?.into_iter())
            .filter(|c| c.app_mode == AppMode::Interactive)
            .map(|c| c.id)
            .collect();
        let gone = self.remove(None, &ids).await?;
        self.forget_session(session_id).await;
        Ok(gone.iter().map(|c| c.id).collect())
    }

    /// Backend.AI's circuit statistics: requests, last access (epoch ms) and the seconds until
    /// the idle reaper may take it (`None` for inference circuits).
    pub async fn statistics(
        &self,
        caller: Option<&str>,
        id: Uuid,
        default_idle_timeout: u64,
    ) -> Result<Statistics, ApiError> {
        let circuit = self.visible_to(caller, id).await?;
        let worker = self.store.get_worker(circuit.worker_id).await?;
        let stats = (self.activity)
            .stats(&[circuit.id])
            .await
            .map_err(|e| ApiError::DependencyUnavailable(format!("activity store: {e}")))?
            .pop()
            .unwrap_or_default();
        let ttl = crate::activity::remaining_secs(
            &circuit,
            &stats,
            default_idle_timeout,
            crate::store::now_ms(),
        )
        .map(|r| r.max(0));
        Ok(Statistics {
            circuit,
            worker,
            requests: stats.requests,
            last_access_ms: stats.last_access_ms,
            ttl,
        })
    }
}

/// A circuit with its activity.
pub struct Statistics {
    pub circuit: Circuit,
    pub worker: Option<Worker>,
    pub requests: i64,
    pub last_access_ms: Option<i64>,
    pub ttl: Option<i64>,
}
