//! Activity as authgates record it in Redis (`circuit.<id>.last_access`, `.requests`,
//! `session.<id>.last_access`), whether a worker's ingest is fresh enough to trust, and the idle
//! reaper's pass (`reap_once`, run by `background`) that finds interactive circuits (HTTP and
//! TCP) idle beyond their timeout.
//!
//! The reaper fails safe: no pass while Redis is unreachable, and no circuit of a worker whose
//! ingest is stale (no heartbeat with a recent successful flush) is ever touched, since "no
//! activity recorded" then means "unknown", not "idle".

use std::time::Duration;

use appproxy_common::redis_conn;
use redis::AsyncCommands;
use uuid::Uuid;

use crate::{
    domain::{AppMode, Circuit, WorkerStatus},
    store::{IngestReport, Store, now_ms},
};

/// How long reading activity (connect, then one `MGET` of every circuit asked) may take.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a worker's activity data can be trusted at `now`, from its last ingest report
/// (kept in SQL: heartbeats reach any provider, the leader reaps): a report within
/// `max_lag_ms`, Redis reachable from authgate, and a flush within `max_lag_ms`.
pub fn ingest_fresh(report: Option<&IngestReport>, now: i64, max_lag_ms: i64) -> bool {
    report.is_some_and(|i| {
        i.redis_ok && now - i.reported_ms <= max_lag_ms && now - i.last_flush_ms <= max_lag_ms
    })
}

/// Reads and clears activity keys.
#[derive(Clone)]
pub struct ActivityStore {
    client: Option<redis::Client>,
}

/// Requests and last access of one circuit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub requests: i64,
    /// Epoch ms, if any access was recorded.
    pub last_access_ms: Option<i64>,
}

/// `circuit.<id>.last_access`, `circuit.<id>.requests` for each id, in that order.
fn circuit_keys(ids: &[Uuid]) -> Vec<String> {
    ids.iter()
        .flat_map(|id| {
            [
                format!("circuit.{id}.last_access"),
                format!("circuit.{id}.requests"),
            ]
        })
        .collect()
}

fn parse_secs(v: Option<String>) -> Option<i64> {
    v.and_then(|s| s.trim().parse::<f64>().ok())
        .map(|s| (s * 1000.0) as i64)
}

impl ActivityStore {
    pub fn new(client: Option<redis::Client>) -> ActivityStore {
        ActivityStore { client }
    }

    pub fn configured(&self) -> bool {
        self.client.is_some()
    }

    async fn con(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let c = self.client.as_ref().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no [redis] url configured"))
        })?;
        match tokio::time::timeout(READ_TIMEOUT, redis_conn::multiplexed(c, READ_TIMEOUT)).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis connect timed out",
            ))),
        }
    }

    /// Stats of many circuits in one round trip.
    pub async fn stats(&self, ids: &[Uuid]) -> redis::RedisResult<Vec<Stats>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con().await?;
        let keys = circuit_keys(ids);
        let work = async {
            let vals: Vec<Option<String>> = con.mget(&keys).await?;
            Ok::<_, redis::RedisError>(
                vals.chunks(2)
                    .map(|p| Stats {
                        last_access_ms: parse_secs(p[0].clone()),
                        requests: p[1].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0),
                    })
                    .collect(),
            )
        };
        match tokio::time::timeout(READ_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis timed out",
            ))),
        }
    }

    /// Forget a terminated session's activity.
    pub async fn clear_session(&self, session: Uuid) -> redis::RedisResult<()> {
        let mut con = self.con().await?;
        let _: i64 = con.del(format!("session.{session}.last_access")).await?;
        Ok(())
    }

    /// Forget deleted circuits' activity.
    pub async fn clear_circuits(&self, ids: &[Uuid]) -> redis::RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut con = self.con().await?;
        let _: i64 = con.del(circuit_keys(ids)).await?;
        Ok(())
    }
}

/// Reaper settings.
#[derive(Debug, Clone, Copy)]
pub struct ReaperSettings {
    pub interval: Duration,
    pub default_idle_timeout_secs: u64,
    pub max_ingest_lag_ms: i64,
}

/// Seconds a circuit has left before it counts as idle (negative: overdue). `None` for
/// circuits the reaper never touches (inference).
pub fn remaining_secs(c: &Circuit, s: &Stats, default_timeout: u64, now: i64) -> Option<i64> {
    if c.app_mode != AppMode::Interactive {
        return None;
    }
    let timeout = c.idle_timeout.unwrap_or(default_timeout) as i64;
    let last = s.last_access_ms.unwrap_or(0).max(c.created_at_ms);
    Some(timeout - (now - last) / 1000)
}

/// One pass; returns the circuits removed. Any Redis error aborts the pass before deleting.
pub async fn reap_once(
    store: &Store,
    activity: &ActivityStore,
    s: &ReaperSettings,
) -> anyhow::Result<Vec<Circuit>> {
    let mut idle = Vec::new();
    let ingest = store.ingest_reports().await?;
    for w in store.list_workers().await? {
        let now = now_ms();
        let fresh = ingest_fresh(ingest.get(&w.id), now, s.max_ingest_lag_ms);
        if w.status != WorkerStatus::Alive || !fresh {
            continue;
        }
        let circuits: Vec<Circuit> = store
            .circuits_of_worker(w.id)
            .await?
            .into_iter()
            .filter(|c| c.app_mode == AppMode::Interactive)
            .collect();
        let ids: Vec<Uuid> = circuits.iter().map(|c| c.id).collect();
        let stats = activity.stats(&ids).await?;
        for (c, st) in circuits.iter().zip(&stats) {
            if remaining_secs(c, st, s.default_idle_timeout_secs, now).is_some_and(|r| r < 0) {
                idle.push(c.id);
            }
        }
    }
    Ok(store.delete_circuits(&idle).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Frontend, Protocol};

    fn circuit(mode: AppMode, idle: Option<u64>, created_ms: i64) -> Circuit {
        Circuit {
            id: Uuid::nil(),
            app: "a".into(),
            protocol: Protocol::Http,
            app_mode: mode,
            worker_id: Uuid::nil(),
            frontend: Frontend::Port(1),
            envs: serde_json::json!({}),
            arguments: None,
            open_to_public: false,
            allowed_client_ips: Vec::new(),
            user_id: None,
            endpoint_id: None,
            runtime_variant: None,
            routes: Vec::new(),
            idle_timeout: idle,
            generation: 1,
            created_at_ms: created_ms,
            updated_at_ms: created_ms,
            balancing: None,
            auth_plugin: None,
            allowed_origins: Vec::new(),
        }
    }

    #[test]
    fn remaining_time_uses_last_access_or_creation_and_skips_inference() {
        let now = 100_000;
        let seen = |ms| Stats {
            requests: 1,
            last_access_ms: Some(ms),
        };
        let c = circuit(AppMode::Interactive, Some(60), 0);
        assert_eq!(remaining_secs(&c, &seen(90_000), 3600, now), Some(50));
        assert_eq!(remaining_secs(&c, &Stats::default(), 3600, now), Some(-40));
        let young = circuit(AppMode::Interactive, None, 99_000);
        assert_eq!(
            remaining_secs(&young, &Stats::default(), 3600, now),
            Some(3599)
        );
        let inference = circuit(AppMode::Inference, Some(1), 0);
        assert_eq!(remaining_secs(&inference, &Stats::default(), 1, now), None);
    }

    #[test]
    fn ingest_is_fresh_only_with_recent_successful_flushes() {
        let now = now_ms();
        let report = |redis_ok: bool, last_flush_ms: i64| IngestReport {
            reported_ms: now,
            redis_ok,
            last_flush_ms,
        };
        assert!(!ingest_fresh(None, now, 30_000), "never reported");
        assert!(ingest_fresh(Some(&report(true, now)), now, 30_000));
        assert!(
            !ingest_fresh(Some(&report(false, now)), now, 30_000),
            "Redis down at the worker"
        );
        assert!(
            !ingest_fresh(Some(&report(true, 1)), now, 30_000),
            "flushes stalled"
        );
        let old = IngestReport {
            reported_ms: now - 31_000,
            ..report(true, now)
        };
        assert!(!ingest_fresh(Some(&old), now, 30_000), "no recent report");
    }
}
