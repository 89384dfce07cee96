//! Routes of a circuit: declarative replacement (one transaction), delta register and
//! unregister by route id, a session's kernel address refresh.

use std::collections::BTreeSet;

use sqlx::Row;
use uuid::Uuid;

use super::{Store, StoreError, now_ms, q, row::ROUTE_COLS};
use crate::domain::{Circuit, Route};

impl Store {
    /// Replace every route of a circuit in one transaction (declarative sync).
    pub async fn replace_routes(
        &self,
        circuit_id: Uuid,
        routes: &[Route],
    ) -> Result<(), StoreError> {
        self.measured("replace_routes", async move {
            let mut seen = BTreeSet::new();
            for r in routes {
                if let Some(id) = r.route_id
                    && !seen.insert(id)
                {
                    return Err(StoreError::DuplicateRoute(id));
                }
            }
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM routes WHERE circuit_id=$1")
                .bind(circuit_id.to_string())
                .execute(&mut *tx)
                .await?;
            for (idx, r) in routes.iter().enumerate() {
                insert_route(&mut tx, circuit_id, idx as i64, r).await?;
            }
            touch(&mut tx, circuit_id).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Add routes not yet present (by `route_id`); returns (added, already present).
    pub async fn register_routes(
        &self,
        circuit_id: Uuid,
        routes: &[Route],
    ) -> Result<(Vec<Uuid>, Vec<Uuid>), StoreError> {
        self.measured("register_routes", async move {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query("SELECT route_id, idx FROM routes WHERE circuit_id=$1")
                .bind(circuit_id.to_string())
                .fetch_all(&mut *tx)
                .await?;
            let mut present: BTreeSet<String> = BTreeSet::new();
            let mut next = 0i64;
            for r in &rows {
                if let Ok(Some(id)) = r.try_get::<Option<String>, _>(0) {
                    present.insert(id);
                }
                next = next.max(r.try_get::<i64, _>(1).unwrap_or(0) + 1);
            }
            let (mut added, mut already) = (Vec::new(), Vec::new());
            for r in routes {
                let Some(id) = r.route_id else { continue };
                if !present.insert(id.to_string()) {
                    already.push(id);
                    continue;
                }
                insert_route(&mut tx, circuit_id, next, r).await?;
                next += 1;
                added.push(id);
            }
            if !added.is_empty() {
                touch(&mut tx, circuit_id).await?;
            }
            tx.commit().await?;
            Ok((added, already))
        })
        .await
    }

    /// Remove routes by id; returns (removed, already absent).
    pub async fn unregister_routes(
        &self,
        circuit_id: Uuid,
        ids: &[Uuid],
    ) -> Result<(Vec<Uuid>, Vec<Uuid>), StoreError> {
        self.measured("unregister_routes", async move {
            let mut tx = self.pool.begin().await?;
            let (mut removed, mut absent) = (Vec::new(), Vec::new());
            for id in ids {
                let done = sqlx::query("DELETE FROM routes WHERE circuit_id=$1 AND route_id=$2")
                    .bind(circuit_id.to_string())
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() > 0 {
                    removed.push(*id);
                } else {
                    absent.push(*id);
                }
            }
            if !removed.is_empty() {
                touch(&mut tx, circuit_id).await?;
            }
            tx.commit().await?;
            Ok((removed, absent))
        })
        .await
    }

    /// Every session an interactive circuit routes to.
    pub async fn interactive_session_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        self.measured("interactive_session_ids", async move {
            let rows = sqlx::query(
                "SELECT DISTINCT r.session_id FROM routes r JOIN circuits c ON c.id = r.circuit_id \
                 WHERE c.app_mode = 'interactive'",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let s: String = r
                        .try_get(0)
                        .map_err(|e| super::row::corrupt("session_id", e))?;
                    Uuid::parse_str(&s).map_err(|e| super::row::corrupt("session_id", e))
                })
                .collect()
        })
        .await
    }

    /// Point a session's routes of a circuit at a (possibly new) kernel address.
    pub async fn refresh_session_route(
        &self,
        circuit_id: Uuid,
        session_id: Uuid,
        kernel_host: &str,
        kernel_port: u16,
    ) -> Result<Option<Circuit>, StoreError> {
        self.measured("refresh_session_route", async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "UPDATE routes SET kernel_host=$1, kernel_port=$2 WHERE circuit_id=$3 AND session_id=$4",
            )
            .bind(kernel_host.to_string())
            .bind(i64::from(kernel_port))
            .bind(circuit_id.to_string())
            .bind(session_id.to_string())
            .execute(&mut *tx)
            .await?;
            touch(&mut tx, circuit_id).await?;
            tx.commit().await?;
            self.get_circuit(circuit_id).await
        })
        .await
    }
}

pub(super) async fn insert_route(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    circuit_id: Uuid,
    idx: i64,
    r: &Route,
) -> Result<(), StoreError> {
    sqlx::query(q(format!(
        "INSERT INTO routes ({ROUTE_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
    )))
    .bind(circuit_id.to_string())
    .bind(idx)
    .bind(r.route_id.map(|u| u.to_string()))
    .bind(r.session_id.to_string())
    .bind(r.session_name.clone())
    .bind(r.kernel_host.clone())
    .bind(i64::from(r.kernel_port))
    .bind(r.protocol.as_str())
    .bind(r.traffic_ratio)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A circuit's routes changed: its `updated_at` and its worker's map version move.
pub(super) async fn touch(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    circuit_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE circuits SET updated_at=$1 WHERE id=$2")
        .bind(now_ms())
        .bind(circuit_id.to_string())
        .execute(&mut **tx)
        .await?;
    super::map::bump_for_circuit(tx, circuit_id).await
}
