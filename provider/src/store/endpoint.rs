//! Inference endpoints: balancing settings (health check, sticky, strategy) and the endpoint's one
//! circuit.

use uuid::Uuid;

use super::{
    Store, StoreError, now_ms, q,
    row::{CIRCUIT_COLS, endpoint_from_row},
};
use crate::domain::{Circuit, Endpoint, HealthCheck, Limit, LoadBalancing};

impl Store {
    pub(super) async fn endpoints_by_ids(&self, ids: &[Uuid]) -> Result<Vec<Endpoint>, StoreError> {
        self.select_in(
            "SELECT id, health_check_config, sticky, load_balancing, rate_limit_requests, \
             rate_limit_window_seconds FROM endpoints WHERE id",
            ids,
        )
        .await?
        .iter()
        .map(endpoint_from_row)
        .collect()
    }

    pub async fn get_endpoint(&self, id: Uuid) -> Result<Option<Endpoint>, StoreError> {
        self.measured("get_endpoint", async move {
            Ok(self.endpoints_by_ids(&[id]).await?.pop())
        })
        .await
    }

    /// Insert or update an endpoint row (health check; sticky and the balancing strategy when
    /// given, else kept).
    pub async fn upsert_endpoint(
        &self,
        id: Uuid,
        health_check: Option<&HealthCheck>,
        sticky: Option<bool>,
        load_balancing: Option<LoadBalancing>,
        rate_limit: Option<Limit>,
    ) -> Result<Endpoint, StoreError> {
        self.measured("upsert_endpoint", async move {
            let now = now_ms();
            let hc = health_check.map(|h| serde_json::to_string(h).unwrap_or_default());
            let enabled = i64::from(health_check.is_some_and(|h| h.enable));
            let updated = sqlx::query(
                "UPDATE endpoints SET health_check_enabled=$1, health_check_config=$2, \
                 sticky=COALESCE($3, sticky), load_balancing=COALESCE($4, load_balancing), \
                 rate_limit_requests=COALESCE($5, rate_limit_requests), \
                 rate_limit_window_seconds=COALESCE($6, rate_limit_window_seconds), \
                 updated_at=$7 WHERE id=$8",
            )
            .bind(enabled)
            .bind(hc.clone())
            .bind(sticky.map(i64::from))
            .bind(load_balancing.map(LoadBalancing::as_str))
            .bind(rate_limit.map(|l| l.requests as i64))
            .bind(rate_limit.map(|l| l.window_seconds as i64))
            .bind(now)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
            if updated.rows_affected() == 0 {
                let inserted = sqlx::query(
                    "INSERT INTO endpoints (id, health_check_enabled, health_check_config, sticky, \
                     load_balancing, rate_limit_requests, rate_limit_window_seconds, created_at, \
                     updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$8)",
                )
                .bind(id.to_string())
                .bind(enabled)
                .bind(hc)
                .bind(i64::from(sticky.unwrap_or(false)))
                .bind(load_balancing.unwrap_or_default().as_str())
                .bind(rate_limit.unwrap_or(Limit::OFF).requests as i64)
                .bind(rate_limit.unwrap_or(Limit::OFF).window_seconds as i64)
                .bind(now)
                .execute(&self.pool)
                .await;
                match inserted {
                    Ok(_) => {}
                    // A concurrent upsert inserted first: ours becomes an update.
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        return Box::pin(self.upsert_endpoint(
                            id,
                            health_check,
                            sticky,
                            load_balancing,
                            rate_limit,
                        ))
                        .await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.get_endpoint(id)
                .await?
                .ok_or_else(|| StoreError::Corrupt("endpoint vanished".into()))
        })
        .await
    }

    /// The circuit of an endpoint, if one was created.
    pub async fn circuit_of_endpoint(
        &self,
        endpoint_id: Uuid,
    ) -> Result<Option<Circuit>, StoreError> {
        self.measured("circuit_of_endpoint", async move {
            let mut v = self
                .load_circuits(
                    q(format!(
                        "SELECT {CIRCUIT_COLS} FROM circuits WHERE endpoint_id=$1 ORDER BY created_at"
                    )),
                    Some(endpoint_id.to_string()),
                )
                .await?;
            Ok(if v.is_empty() {
                None
            } else {
                Some(v.remove(0))
            })
        })
        .await
    }

    /// Every endpoint with its circuit (if any).
    pub async fn list_endpoints(&self) -> Result<Vec<(Endpoint, Option<Circuit>)>, StoreError> {
        self.measured("list_endpoints", async move {
            let rows = sqlx::query(
                "SELECT id, health_check_config, sticky, load_balancing, rate_limit_requests, \
                 rate_limit_window_seconds FROM endpoints ORDER BY created_at, id",
            )
            .fetch_all(&self.pool)
            .await?;
            // Every endpoint circuit in one query (routes and balancing attached in batches),
            // joined here: no query per endpoint.
            let rows_c = sqlx::query(q(format!(
                "SELECT {CIRCUIT_COLS} FROM circuits WHERE endpoint_id IS NOT NULL"
            )))
            .fetch_all(&self.pool)
            .await?;
            let mut circuits: std::collections::HashMap<Uuid, Circuit> = self
                .attach_routes(rows_c)
                .await?
                .into_iter()
                .filter_map(|c| Some((c.endpoint_id?, c)))
                .collect();
            rows.iter()
                .map(|r| {
                    let e = endpoint_from_row(r)?;
                    let c = circuits.remove(&e.id);
                    Ok((e, c))
                })
                .collect()
        })
        .await
    }

    /// Delete an endpoint and its circuits; returns the circuits removed (`None`: no such
    /// endpoint and no circuit).
    pub async fn delete_endpoint(&self, id: Uuid) -> Result<Option<Vec<Circuit>>, StoreError> {
        self.measured("delete_endpoint", async move {
            let ids: Vec<Uuid> = self
                .load_circuits(
                    q(format!(
                        "SELECT {CIRCUIT_COLS} FROM circuits WHERE endpoint_id=$1"
                    )),
                    Some(id.to_string()),
                )
                .await?
                .into_iter()
                .map(|c| c.id)
                .collect();
            let gone = self.delete_circuits(&ids).await?;
            let done = sqlx::query("DELETE FROM endpoints WHERE id=$1")
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
            Ok((done.rows_affected() > 0 || !gone.is_empty()).then_some(gone))
        })
        .await
    }

    /// Set or clear a circuit's auth plugin (a changed plugin is a new generation: cookies
    /// and tokens stay valid, the forwardAuth address changes).
    pub async fn set_auth_plugin(
        &self,
        circuit_id: Uuid,
        plugin: Option<&crate::domain::AuthPlugin>,
    ) -> Result<(), StoreError> {
        self.measured("set_auth_plugin", async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "UPDATE circuits SET auth_plugin=$1, auth_plugin_config=$2, updated_at=$3 WHERE id=$4",
            )
            .bind(plugin.map(|p| p.name.clone()))
            .bind(plugin.map(|p| p.config.to_string()))
            .bind(now_ms())
            .bind(circuit_id.to_string())
            .execute(&mut *tx)
            .await?;
            super::map::bump_for_circuit(&mut tx, circuit_id).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
