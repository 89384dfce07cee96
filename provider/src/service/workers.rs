//! Workers: registration (the one `WorkerSpec::validate`), heartbeats, deregistration,
//! descriptions with load and slots. A worker credential acts only for its own authority (the
//! caller's authority is checked by the handler's extractor; ids are checked here).

use uuid::Uuid;

use crate::{
    domain::{Circuit, FrontendMode, Worker, WorkerSpec, WorkerStatus},
    error::ApiError,
    metrics::Metrics,
    models::{IngestResponse, SlotResponse, WorkerResponse},
    reconcile::Reconciler,
    store::{Store, now_ms},
};
use appproxy_common::wire::SpecError;

/// The workers service.
#[derive(Clone, Copy)]
pub struct Workers<'a> {
    pub store: &'a Store,
    pub reconciler: &'a Reconciler,
    pub metrics: &'a Metrics,
}

impl Workers<'_> {
    /// Register (or re-register: one more node) a worker after the one spec check.
    pub async fn register(&self, spec: &WorkerSpec) -> Result<Worker, ApiError> {
        spec.validate().map_err(|e| match e {
            SpecError::Invalid(m) => ApiError::InvalidParams(m),
            SpecError::UnsupportedProtocol(m) => ApiError::UnsupportedProtocol(m),
        })?;
        let w = self.store.upsert_worker(spec).await?;
        tracing::info!(authority = %w.authority, id = %w.id, "Worker registered");
        self.reconciler.nudge(w.id);
        Ok(w)
    }

    /// The worker `id` if `caller` (an authority; `None`: any) may act for it: 404 before
    /// 403 (ids are not secrets, but a missing worker is the better answer for a stale id).
    pub async fn owned(&self, caller: Option<&str>, id: Uuid) -> Result<Worker, ApiError> {
        let w = self
            .store
            .get_worker(id)
            .await?
            .ok_or(ApiError::NotFound("worker"))?;
        match caller {
            Some(mine) if mine != w.authority => Err(ApiError::Forbidden(format!(
                "this credential belongs to worker {mine:?}, not {:?}",
                w.authority
            ))),
            _ => Ok(w),
        }
    }

    /// A heartbeat of worker `before` (as it was): a `LOST` worker is `ALIVE` again and its
    /// circuits are projected afresh (a full pass: nothing was deleted, but its prefix may have
    /// been touched while it was away).
    pub async fn heartbeat(&self, before: &Worker) -> Result<Worker, ApiError> {
        let w = self
            .store
            .heartbeat_worker(before.id)
            .await?
            .ok_or(ApiError::NotFound("worker"))?;
        if before.status != WorkerStatus::Alive {
            tracing::info!(authority = %w.authority, was = %before.status, "Worker is back");
            self.reconciler.nudge(w.id);
        }
        Ok(w)
    }

    /// One node of worker `id` leaves; the worker is LOST when none remain.
    pub async fn deregister(&self, id: Uuid) -> Result<Worker, ApiError> {
        let w = self
            .store
            .deregister_worker(id)
            .await?
            .ok_or(ApiError::NotFound("worker"))?;
        tracing::info!(authority = %w.authority, nodes = w.nodes, status = %w.status, "Worker deregistered");
        Ok(w)
    }

    /// A worker as the API shows it, with its load (and its slots when asked).
    pub async fn describe(&self, w: &Worker, with_slots: bool) -> Result<WorkerResponse, ApiError> {
        let circuits = self.store.circuits_of_worker(w.id).await?;
        let mut resp = WorkerResponse::new(
            w,
            circuits.len() as i64,
            self.reconciler.root_key(&w.authority),
        );
        if with_slots {
            resp.slots = Some(slots_of(w, &circuits, None));
        }
        let reports = self.store.ingest_reports().await?;
        resp.ingest = (reports.get(&w.id)).map(|r| IngestResponse::new(r, now_ms()));
        Ok(resp)
    }

    /// Every worker the caller may see (a worker credential: itself only), with its load.
    pub async fn list(&self, caller: Option<&str>) -> Result<Vec<WorkerResponse>, ApiError> {
        let mut workers = self.store.list_workers().await?;
        self.metrics.workers.set(workers.len() as i64);
        if let Some(mine) = caller {
            workers.retain(|w| w.authority == mine);
        }
        let counts = self.store.occupied_counts().await?;
        let reports = self.store.ingest_reports().await?;
        let now = now_ms();
        Ok(workers
            .iter()
            .map(|w| {
                let used = counts.get(&w.id).copied().unwrap_or(0);
                let mut r = WorkerResponse::new(w, used, self.reconciler.root_key(&w.authority));
                r.ingest = (reports.get(&w.id)).map(|i| IngestResponse::new(i, now));
                r
            })
            .collect())
    }

    /// Drain the worker `authority` (no new circuits; existing ones kept) or stop draining it.
    pub async fn drain(&self, authority: &str, on: bool) -> Result<Worker, ApiError> {
        let w = self
            .store
            .worker_by_authority(authority)
            .await?
            .ok_or(ApiError::NotFound("worker"))?;
        let w = (self.store.set_draining(w.id, on).await?).ok_or(ApiError::NotFound("worker"))?;
        if on {
            tracing::info!(authority = %w.authority, "Worker draining: no new circuits");
        } else {
            tracing::info!(authority = %w.authority, "Worker no longer draining");
        }
        Ok(w)
    }

    /// The slots of the worker `authority` (`in_use` filters).
    pub async fn slots(
        &self,
        authority: &str,
        in_use: Option<bool>,
    ) -> Result<Vec<SlotResponse>, ApiError> {
        let w = self
            .store
            .worker_by_authority(authority)
            .await?
            .ok_or(ApiError::NotFound("worker"))?;
        let circuits = self.store.circuits_of_worker(w.id).await?;
        Ok(slots_of(&w, &circuits, in_use))
    }
}

/// A worker's slots: every port of a port worker (free or not), or the subdomains in use.
pub fn slots_of(w: &Worker, circuits: &[Circuit], in_use: Option<bool>) -> Vec<SlotResponse> {
    let mut slots = Vec::new();
    match (w.frontend_mode, w.port_range) {
        (FrontendMode::Port, Some((lo, hi))) => {
            for port in lo..=hi {
                let c = circuits.iter().find(|c| c.port() == Some(port));
                slots.push(SlotResponse {
                    frontend_mode: FrontendMode::Port,
                    in_use: c.is_some(),
                    port: Some(port),
                    subdomain: None,
                    circuit_id: c.map(|c| c.id),
                });
            }
        }
        (mode, _) => {
            for c in circuits {
                slots.push(SlotResponse {
                    frontend_mode: mode,
                    in_use: true,
                    port: None,
                    // Path mode: the prefix is the slot.
                    subdomain: c.subdomain().or(c.path_prefix()).map(str::to_string),
                    circuit_id: Some(c.id),
                });
            }
        }
    }
    if let Some(flag) = in_use {
        slots.retain(|s| s.in_use == flag);
    }
    slots
}
