//! Worker liveness: workers whose heartbeat stopped become `LOST` (they get no new circuits and
//! no reuse, as placement and launch only pick `ALIVE` workers); their inference circuits move
//! to an `ALIVE` worker that can keep the URL (same wildcard domain, or same host with the port
//! in its range), as a new generation. Interactive circuits stay: their URL is the worker's.
//! Nothing is deleted, so a worker that heartbeats again serves what it still holds.

use std::time::Duration;

use super::Workers;
use crate::{
    domain::{AppMode, Circuit, Protocol, Worker, WorkerStatus},
    placement::{match_existing, serves},
    store::{StoreError, now_ms},
};

/// The sweep is the workers service's background work.
impl Workers<'_> {
    /// Mark `LOST` the workers silent for longer than `timeout`, then move their inference
    /// circuits where their URLs can live on.
    pub async fn sweep(&self, timeout: Duration) -> Result<(), StoreError> {
        let cutoff = now_ms() - timeout.as_millis() as i64;
        for w in self.store.mark_lost(cutoff).await? {
            let silent_s = (now_ms() - w.last_heartbeat_ms) / 1000;
            tracing::warn!(authority = %w.authority, silent_s, "Worker lost: no heartbeat");
            self.metrics.workers_lost.inc();
            self.relocate(&w).await?;
        }
        Ok(())
    }

    /// Export how many workers are in each status (and registered at all).
    pub async fn count_by_status(&self) -> Result<(), StoreError> {
        let workers = self.store.list_workers().await?;
        for status in [
            WorkerStatus::Alive,
            WorkerStatus::Lost,
            WorkerStatus::Terminated,
        ] {
            let n = workers.iter().filter(|w| w.status == status).count();
            self.metrics
                .workers_by_status
                .with_label_values(&[status.as_str()])
                .set(n as i64);
        }
        self.metrics.workers.set(workers.len() as i64);
        Ok(())
    }

    /// Move the lost worker's inference circuits to workers that can keep their URLs.
    async fn relocate(&self, lost: &Worker) -> Result<(), StoreError> {
        let circuits = self.store.circuits_of_worker(lost.id).await?;
        let alive: Vec<Worker> = (self.store.list_workers().await?.into_iter())
            .filter(|w| {
                w.id != lost.id
                    && w.status == WorkerStatus::Alive
                    && !w.draining
                    && serves(w, Protocol::Http)
            })
            .collect();
        let interactive = circuits
            .iter()
            .filter(|c| c.app_mode == AppMode::Interactive);
        let staying = interactive.count();
        if staying > 0 {
            tracing::warn!(authority = %lost.authority, circuits = staying, "Interactive circuits stay on the lost worker (their URL is the worker's)");
        }
        for c in circuits.iter().filter(|c| c.app_mode == AppMode::Inference) {
            self.move_one(c, lost, &alive).await?;
        }
        Ok(())
    }

    async fn move_one(
        &self,
        c: &Circuit,
        lost: &Worker,
        alive: &[Worker],
    ) -> Result<(), StoreError> {
        let url = c.url(lost);
        let Some((to, _, _)) = match_existing(alive, &url) else {
            tracing::warn!(circuit = %c.id, %url, "No ALIVE worker can keep this endpoint's URL; it stays on the lost worker");
            return Ok(());
        };
        match self.store.move_circuit(c.id, to).await {
            Ok(Some(moved)) => {
                self.reconciler.nudge_circuit(lost.id, c.id);
                self.reconciler.nudge_circuit(to.id, c.id);
                self.metrics.circuits_moved.inc();
                tracing::info!(circuit = %c.id, from = %lost.authority, to = %to.authority, generation = moved.generation, %url, "Endpoint moved off a lost worker");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(StoreError::SlotTaken(why)) => {
                tracing::warn!(circuit = %c.id, %url, why, "Endpoint stays on the lost worker");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Why an endpoint's circuit is not served, if its worker is not `ALIVE`: for
/// `/health/endpoints`.
pub fn stranded_reason(c: &Circuit, worker: Option<&Worker>) -> Option<String> {
    match worker {
        None => Some("its worker is gone".into()),
        Some(w) if w.status != WorkerStatus::Alive => Some(format!(
            "worker {:?} is {} and no ALIVE worker can keep the URL {} (same wildcard domain, \
             same host and port in path mode, or same host with the port in range)",
            w.authority,
            w.status,
            c.url(w)
        )),
        Some(_) => None,
    }
}
