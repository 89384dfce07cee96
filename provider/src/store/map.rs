//! What a worker's authgate polls, kept in SQL so that every provider answers alike: the
//! circuit map's version (bumped in the transaction of every change to the worker's circuits
//! or routes) and the circuits that recently left the worker. Also the per-worker reports
//! that heartbeats carry (ingest health, replica health), which any provider may receive and
//! the leader acts on.

use std::collections::{BTreeMap, HashMap};

use appproxy_common::wire::EndedCircuit;
use uuid::Uuid;

use super::{
    Store, StoreError, now_ms,
    row::{corrupt, get, parse},
};
use crate::domain::Circuit;

/// How long a circuit that left a worker stays listed in its map (many of authgate's polls).
pub const ENDED_LISTED_MS: i64 = 60_000;

pub(super) type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// A worker's map changed: bump its version (inside the change's transaction).
pub(super) async fn bump(tx: &mut Tx<'_>, worker_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("UPDATE workers SET map_version = map_version + 1 WHERE id=$1")
        .bind(worker_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The map of the worker that holds `circuit_id` changed.
pub(super) async fn bump_for_circuit(tx: &mut Tx<'_>, circuit_id: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE workers SET map_version = map_version + 1 \
         WHERE id = (SELECT worker_id FROM circuits WHERE id=$1)",
    )
    .bind(circuit_id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `c` left `worker_id`: list it as ended there and bump the worker's version.
pub(super) async fn record_ended(
    tx: &mut Tx<'_>,
    worker_id: Uuid,
    c: &Circuit,
) -> Result<(), StoreError> {
    let ended = serde_json::to_string(&c.ended()).unwrap_or_default();
    sqlx::query(
        "INSERT INTO ended_circuits (worker_id, circuit_id, ended, ended_at) VALUES ($1,$2,$3,$4)",
    )
    .bind(worker_id.to_string())
    .bind(c.id.to_string())
    .bind(ended)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    bump(tx, worker_id).await
}

/// The last ingest report of a worker (from its heartbeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestReport {
    pub reported_ms: i64,
    pub redis_ok: bool,
    pub last_flush_ms: i64,
}

impl Store {
    /// The version of a worker's circuit map; `None` for an unknown worker.
    pub async fn map_version(&self, worker_id: Uuid) -> Result<Option<i64>, StoreError> {
        self.measured("map_version", async move {
            let row = sqlx::query("SELECT map_version FROM workers WHERE id=$1")
                .bind(worker_id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.map(|r| get::<i64>(&r, "map_version")).transpose()
        })
        .await
    }

    /// Circuits that left `worker_id` at or after `since_ms`, oldest first, each once.
    pub async fn ended_since(
        &self,
        worker_id: Uuid,
        since_ms: i64,
    ) -> Result<Vec<EndedCircuit>, StoreError> {
        self.measured("ended_since", async move {
            let rows = sqlx::query(
                "SELECT ended FROM ended_circuits WHERE worker_id=$1 AND ended_at >= $2 \
                 ORDER BY ended_at",
            )
            .bind(worker_id.to_string())
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?;
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for r in &rows {
                let text: String = get(r, "ended")?;
                let e: EndedCircuit =
                    serde_json::from_str(&text).map_err(|e| corrupt("ended", e))?;
                if seen.insert(e.id) {
                    out.push(e);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Forget ended circuits listed before `before_ms`; returns how many.
    pub async fn gc_ended(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.measured("gc_ended", async move {
            let done = sqlx::query("DELETE FROM ended_circuits WHERE ended_at < $1")
                .bind(before_ms)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    /// Record the ingest health a worker's heartbeat carried.
    pub async fn record_ingest(
        &self,
        worker_id: Uuid,
        redis_ok: bool,
        last_flush_ms: i64,
    ) -> Result<(), StoreError> {
        self.measured("record_ingest", async move {
            sqlx::query(
                "UPDATE workers SET ingest_reported_at=$2, ingest_redis_ok=$3, \
                 ingest_last_flush=$4 WHERE id=$1",
            )
            .bind(worker_id.to_string())
            .bind(now_ms())
            .bind(i64::from(redis_ok))
            .bind(last_flush_ms)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// The last ingest report of every worker that sent one.
    pub async fn ingest_reports(&self) -> Result<HashMap<Uuid, IngestReport>, StoreError> {
        self.measured("ingest_reports", async move {
            let rows = sqlx::query(
                "SELECT id, ingest_reported_at, ingest_redis_ok, ingest_last_flush FROM workers \
                 WHERE ingest_reported_at IS NOT NULL",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let ms = |col| Ok::<_, StoreError>(get::<Option<i64>>(r, col)?.unwrap_or(0));
                    let report = IngestReport {
                        reported_ms: ms("ingest_reported_at")?,
                        redis_ok: ms("ingest_redis_ok")? != 0,
                        last_flush_ms: ms("ingest_last_flush")?,
                    };
                    Ok((parse(r, "id")?, report))
                })
                .collect()
        })
        .await
    }

    /// Replace a worker's replica-health report.
    pub async fn record_route_health(
        &self,
        worker_id: Uuid,
        circuits: &HashMap<Uuid, BTreeMap<String, String>>,
    ) -> Result<(), StoreError> {
        self.measured("record_route_health", async move {
            let report = serde_json::to_string(circuits).unwrap_or_else(|_| "{}".into());
            let (id, now) = (worker_id.to_string(), now_ms());
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM route_health WHERE worker_id=$1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO route_health (worker_id, report, reported_at) VALUES ($1,$2,$3)",
            )
            .bind(id)
            .bind(report)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Every worker's last replica-health report reported at or after `since_ms`:
    /// (worker, circuit → server URL → status).
    pub async fn route_health_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(Uuid, HashMap<Uuid, BTreeMap<String, String>>)>, StoreError> {
        self.measured("route_health_since", async move {
            let rows =
                sqlx::query("SELECT worker_id, report FROM route_health WHERE reported_at >= $1")
                    .bind(since_ms)
                    .fetch_all(&self.pool)
                    .await?;
            rows.iter()
                .map(|r| {
                    let text: String = get(r, "report")?;
                    let report = serde_json::from_str(&text).map_err(|e| corrupt("report", e))?;
                    Ok((parse(r, "worker_id")?, report))
                })
                .collect()
        })
        .await
    }
}
