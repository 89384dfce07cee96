//! Workers: registration (upsert by unique authority), heartbeats, deregistration, counts.

use sqlx::Row;
use uuid::Uuid;

use super::{
    Store, StoreError, now_ms, q,
    row::{WORKER_COLS, corrupt, join_modes, split_range, worker_from_row},
};
use crate::domain::{FrontendMode, Worker, WorkerSpec};

impl Store {
    /// Insert or update a worker by authority; a re-registration revives it.
    pub async fn upsert_worker(&self, r: &WorkerSpec) -> Result<Worker, StoreError> {
        self.measured("upsert_worker", async move {
            let now = now_ms();
            let traffics = join_modes(&r.accepted_traffics);
            let filters = serde_json::to_string(&r.app_filters).unwrap_or_else(|_| "[]".into());
            // A port range means something only to a port worker.
            let (lo, hi) =
                split_range(r.port_range.filter(|_| r.frontend_mode == FrontendMode::Port));
            let existing = self.worker_by_authority(&r.authority).await?;
            let id = existing.as_ref().map(|w| w.id).unwrap_or_else(Uuid::new_v4);
            let sql = if existing.is_some() {
                "UPDATE workers SET frontend_mode=$2, protocol=$3, hostname=$4, tls_listen=$5, \
                 tls_advertised=$6, api_port=$7, port_range_lo=$8, port_range_hi=$9, \
                 wildcard_domain=$10, wildcard_traffic_port=$11, filtered_apps_only=$12, \
                 traefik_last_used_marker_path=$13, accepted_traffics=$14, app_filters=$15, \
                 authgate_url=$16, nodes=nodes+1, status='ALIVE', last_heartbeat=$17, updated_at=$17, \
                 cert_resolver=$18, cert_domains=$19, path_keep_prefix_apps=$20, fast_path=$21, \
                 fast_path_interactive=$22 WHERE id=$1"
            } else {
                "INSERT INTO workers (id, frontend_mode, protocol, hostname, tls_listen, \
                 tls_advertised, api_port, port_range_lo, port_range_hi, wildcard_domain, \
                 wildcard_traffic_port, filtered_apps_only, traefik_last_used_marker_path, \
                 accepted_traffics, app_filters, authgate_url, last_heartbeat, created_at, \
                 updated_at, cert_resolver, cert_domains, path_keep_prefix_apps, fast_path, \
                 fast_path_interactive, authority, nodes, status) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,\
                 $10,$11,$12,$13,$14,$15,$16,$17,$17,$17,$18,$19,$20,$21,$22,$23,1,'ALIVE')"
            };
            let mut query = sqlx::query(sql)
                .bind(id.to_string())
                .bind(r.frontend_mode.as_str())
                .bind(r.protocol.as_str())
                .bind(r.hostname.clone())
                .bind(i64::from(r.tls_listen))
                .bind(i64::from(r.tls_advertised))
                .bind(i64::from(r.api_port))
                .bind(lo)
                .bind(hi)
                .bind(r.wildcard_domain.clone())
                .bind(r.wildcard_traffic_port.map(i64::from))
                .bind(i64::from(r.filtered_apps_only))
                .bind(r.traefik_last_used_marker_path.clone())
                .bind(traffics)
                .bind(filters)
                .bind(r.authgate_url.clone())
                .bind(now)
                .bind(r.cert_resolver.clone())
                .bind(r.cert_domains.join(","))
                .bind(r.path_keep_prefix_apps.join(","))
                .bind(i64::from(r.fast_path))
                .bind(i64::from(r.fast_path_interactive));
            if existing.is_none() {
                query = query.bind(r.authority.clone());
            }
            match query.execute(&self.pool).await {
                Ok(_) => {}
                // Two registrations of a new authority raced; the other insert won: update it.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && existing.is_none() => {
                    return Box::pin(self.upsert_worker(r)).await;
                }
                Err(e) => return Err(e.into()),
            }
            self.get_worker(id)
                .await?
                .ok_or_else(|| StoreError::Corrupt("worker vanished".into()))
        })
        .await
    }

    pub async fn get_worker(&self, id: Uuid) -> Result<Option<Worker>, StoreError> {
        self.measured("get_worker", async move {
            let row = sqlx::query(q(format!("SELECT {WORKER_COLS} FROM workers WHERE id=$1")))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.map(|r| worker_from_row(&r)).transpose()
        })
        .await
    }

    pub async fn worker_by_authority(&self, authority: &str) -> Result<Option<Worker>, StoreError> {
        self.measured("worker_by_authority", async move {
            let row = sqlx::query(q(format!(
                "SELECT {WORKER_COLS} FROM workers WHERE authority=$1"
            )))
            .bind(authority.to_string())
            .fetch_optional(&self.pool)
            .await?;
            row.map(|r| worker_from_row(&r)).transpose()
        })
        .await
    }

    pub async fn list_workers(&self) -> Result<Vec<Worker>, StoreError> {
        self.measured("list_workers", async move {
            let rows = sqlx::query(q(format!(
                "SELECT {WORKER_COLS} FROM workers ORDER BY created_at, id"
            )))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(worker_from_row).collect()
        })
        .await
    }

    /// Record a heartbeat; `None` when the worker is unknown.
    pub async fn heartbeat_worker(&self, id: Uuid) -> Result<Option<Worker>, StoreError> {
        self.measured("heartbeat_worker", async move {
            self.update_worker(
                id,
                "UPDATE workers SET last_heartbeat=$2, updated_at=$2, status='ALIVE', \
                 nodes = CASE WHEN nodes < 1 THEN 1 ELSE nodes END WHERE id=$1",
            )
            .await
        })
        .await
    }

    /// Deregister one node of a worker; the worker becomes LOST when none remain.
    pub async fn deregister_worker(&self, id: Uuid) -> Result<Option<Worker>, StoreError> {
        self.measured("deregister_worker", async move {
            self.update_worker(
                id,
                "UPDATE workers SET nodes = CASE WHEN nodes > 0 THEN nodes - 1 ELSE 0 END, \
                 status = CASE WHEN nodes <= 1 THEN 'LOST' ELSE status END, updated_at=$2 WHERE id=$1",
            )
            .await
        })
        .await
    }

    /// Set or clear a worker's `draining` flag; the worker as it is now (`None`: no such
    /// worker).
    pub async fn set_draining(
        &self,
        id: Uuid,
        draining: bool,
    ) -> Result<Option<Worker>, StoreError> {
        self.measured("set_draining", async move {
            sqlx::query("UPDATE workers SET draining=$2, updated_at=$3 WHERE id=$1")
                .bind(id.to_string())
                .bind(i64::from(draining))
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
            let row = sqlx::query(q(format!("SELECT {WORKER_COLS} FROM workers WHERE id=$1")))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(worker_from_row).transpose()
        })
        .await
    }

    /// Mark `LOST` every `ALIVE` worker whose last heartbeat is older than `cutoff_ms`; its
    /// node count drops to 0 (a crashed process never deregisters). Returns those marked. A
    /// heartbeat that lands between the read and the update wins (the update re-checks).
    pub async fn mark_lost(&self, cutoff_ms: i64) -> Result<Vec<Worker>, StoreError> {
        self.measured("mark_lost", async move {
            let stale = sqlx::query(q(format!(
                "SELECT {WORKER_COLS} FROM workers WHERE status='ALIVE' AND last_heartbeat < $1"
            )))
            .bind(cutoff_ms)
            .fetch_all(&self.pool)
            .await?;
            let mut lost = Vec::new();
            for row in &stale {
                let w = worker_from_row(row)?;
                let done = sqlx::query(
                    "UPDATE workers SET status='LOST', nodes=0, updated_at=$2 \
                     WHERE id=$1 AND status='ALIVE' AND last_heartbeat < $3",
                )
                .bind(w.id.to_string())
                .bind(now_ms())
                .bind(cutoff_ms)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() > 0 {
                    lost.push(w);
                }
            }
            Ok(lost)
        })
        .await
    }

    /// Run `sql` (parameters: id, now) and return the updated worker; `None` when unknown.
    async fn update_worker(
        &self,
        id: Uuid,
        sql: &'static str,
    ) -> Result<Option<Worker>, StoreError> {
        let done = sqlx::query(sql)
            .bind(id.to_string())
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.get_worker(id).await
    }

    /// Number of circuits per worker.
    pub async fn occupied_counts(
        &self,
    ) -> Result<std::collections::HashMap<Uuid, i64>, StoreError> {
        self.measured("occupied_counts", async move {
            let rows = sqlx::query("SELECT worker_id, COUNT(*) FROM circuits GROUP BY worker_id")
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    let id: String = r.try_get(0).map_err(|e| corrupt("worker_id", e))?;
                    let n: i64 = r.try_get(1).map_err(|e| corrupt("count", e))?;
                    Ok((
                        Uuid::parse_str(&id).map_err(|e| corrupt("worker_id", e))?,
                        n,
                    ))
                })
                .collect()
        })
        .await
    }
}
