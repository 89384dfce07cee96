//! Circuits: creation with slot allocation (lowest free port, or a subdomain; the unique
//! indexes decide races), lookups with their routes and balancing, deletion.

use std::collections::BTreeSet;

use sqlx::{Row, any::AnyRow};
use uuid::Uuid;

use super::{
    Store, StoreError, now_ms, q,
    route::insert_route,
    row::{CIRCUIT_COLS, ROUTE_COLS, circuit_from_row, route_from_row},
};
use crate::domain::{
    AppMode, Balancing, Circuit, Endpoint, Frontend, FrontendMode, Protocol, Route, Worker,
    lowest_free_port, path_candidate, path_prefix_of, subdomain_candidate,
};

/// How many times a create re-runs allocation after losing a unique-index race.
const ALLOC_ATTEMPTS: usize = 32;

/// A circuit to create; the store picks its frontend slot.
#[derive(Debug, Clone)]
pub struct NewCircuit {
    pub app: String,
    pub protocol: Protocol,
    pub app_mode: AppMode,
    pub worker_id: Uuid,
    pub preferred_port: Option<u16>,
    pub preferred_subdomain: Option<String>,
    pub envs: serde_json::Value,
    pub arguments: Option<String>,
    pub open_to_public: bool,
    pub allowed_client_ips: Vec<ipnet::IpNet>,
    pub user_id: Option<Uuid>,
    pub endpoint_id: Option<Uuid>,
    pub runtime_variant: Option<String>,
    pub routes: Vec<NewRoute>,
    pub idle_timeout: Option<u64>,
    pub auth_plugin: Option<crate::domain::AuthPlugin>,
    pub allowed_origins: Vec<String>,
}

pub type NewRoute = Route;

/// Filters of `GET /v2/circuits`.
#[derive(Debug, Clone, Default)]
pub struct CircuitFilter {
    pub session_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub worker_id: Option<Uuid>,
}

impl Store {
    /// Create a circuit with its routes, allocating the lowest free port (port workers) or a
    /// free subdomain (wildcard workers).
    pub async fn create_circuit(
        &self,
        c: &NewCircuit,
        worker: &Worker,
    ) -> Result<Circuit, StoreError> {
        self.measured("create_circuit", async move {
            let mut seen = BTreeSet::new();
            for r in &c.routes {
                if let Some(id) = r.route_id
                    && !seen.insert(id)
                {
                    return Err(StoreError::DuplicateRoute(id));
                }
            }
            for attempt in 0..ALLOC_ATTEMPTS {
                let frontend = self.allocate(c, worker, attempt).await?;
                match self.insert_circuit(c, worker, &frontend).await {
                    Ok(circuit) => return Ok(circuit),
                    Err(StoreError::Database(sqlx::Error::Database(e)))
                        if e.is_unique_violation() =>
                    {
                        // One circuit per endpoint (unique index): a concurrent first sync won.
                        if let Some(endpoint) = c.endpoint_id
                            && let Some(winner) = self.circuit_of_endpoint(endpoint).await?
                        {
                            return Err(StoreError::EndpointTaken(winner.id));
                        }
                        if c.preferred_port.is_some() {
                            return Err(StoreError::SlotTaken("port is already in use".into()));
                        }
                        // Lost a race for this slot: allocate again.
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(StoreError::NoFreeSlot)
        })
        .await
    }

    async fn allocate(
        &self,
        c: &NewCircuit,
        worker: &Worker,
        attempt: usize,
    ) -> Result<Frontend, StoreError> {
        match worker.frontend_mode {
            FrontendMode::Port => {
                let (lo, hi) = worker.port_range.ok_or(StoreError::NoFreeSlot)?;
                let taken: BTreeSet<u16> = sqlx::query(
                    "SELECT port FROM circuits WHERE worker_id=$1 AND port IS NOT NULL",
                )
                .bind(worker.id.to_string())
                .fetch_all(&self.pool)
                .await?
                .iter()
                .filter_map(|r| r.try_get::<i64, _>(0).ok())
                .filter_map(|p| u16::try_from(p).ok())
                .collect();
                match c.preferred_port {
                    Some(p) if !(lo..=hi).contains(&p) => Err(StoreError::SlotTaken(format!(
                        "port {p} is outside the worker's range {lo}-{hi}"
                    ))),
                    Some(p) if taken.contains(&p) => {
                        Err(StoreError::SlotTaken(format!("port {p} is already in use")))
                    }
                    Some(p) => Ok(Frontend::Port(p)),
                    None => lowest_free_port(lo, hi, &taken)
                        .map(Frontend::Port)
                        .ok_or(StoreError::NoFreeSlot),
                }
            }
            // No scan: the unique index on (worker_id, subdomain) decides, and a lost race
            // or a taken name retries with a suffixed candidate.
            FrontendMode::Wildcard => Ok(Frontend::Subdomain(subdomain_candidate(
                c.preferred_subdomain.as_deref(),
                attempt,
            ))),
            // `/<endpoint or session id>/<app>`; an endpoint's kept URL names its prefix.
            FrontendMode::Path => Ok(Frontend::Path(
                match c
                    .preferred_subdomain
                    .as_deref()
                    .filter(|_| attempt == 0)
                    .and_then(path_prefix_of)
                {
                    Some(p) => p,
                    None => {
                        let id = (c.endpoint_id)
                            .or_else(|| c.routes.first().map(|r| r.session_id))
                            .unwrap_or_else(Uuid::new_v4);
                        path_candidate(id, &c.app, attempt)
                    }
                },
            )),
        }
    }

    async fn insert_circuit(
        &self,
        c: &NewCircuit,
        worker: &Worker,
        frontend: &Frontend,
    ) -> Result<Circuit, StoreError> {
        let id = Uuid::new_v4();
        let now = now_ms();
        let (port, subdomain) = match frontend {
            Frontend::Port(p) => (Some(i64::from(*p)), None),
            Frontend::Subdomain(s) | Frontend::Path(s) => (None, Some(s.clone())),
        };
        let ips: Vec<String> = c.allowed_client_ips.iter().map(|n| n.to_string()).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO circuits (id, worker_id, app, protocol, app_mode, frontend_mode, port, \
             subdomain, envs, arguments, open_to_public, allowed_client_ips, user_id, endpoint_id, \
             runtime_variant, idle_timeout, generation, created_at, updated_at, auth_plugin, \
             auth_plugin_config, allowed_origins) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,1,$17,$17,$18,$19,$20)",
        )
        .bind(id.to_string())
        .bind(worker.id.to_string())
        .bind(c.app.clone())
        .bind(c.protocol.as_str())
        .bind(c.app_mode.as_str())
        .bind(worker.frontend_mode.as_str())
        .bind(port)
        .bind(subdomain)
        .bind(c.envs.to_string())
        .bind(c.arguments.clone())
        .bind(i64::from(c.open_to_public))
        .bind(serde_json::to_string(&ips).unwrap_or_default())
        .bind(c.user_id.map(|u| u.to_string()))
        .bind(c.endpoint_id.map(|u| u.to_string()))
        .bind(c.runtime_variant.clone())
        .bind(c.idle_timeout.map(|t| t as i64))
        .bind(now)
        .bind(c.auth_plugin.as_ref().map(|p| p.name.clone()))
        .bind(c.auth_plugin.as_ref().map(|p| p.config.to_string()))
        .bind(
            (!c.allowed_origins.is_empty())
                .then(|| serde_json::to_string(&c.allowed_origins).unwrap_or_default()),
        )
        .execute(&mut *tx)
        .await?;
        for (idx, r) in c.routes.iter().enumerate() {
            insert_route(&mut tx, id, idx as i64, r).await?;
        }
        super::map::bump(&mut tx, worker.id).await?;
        tx.commit().await?;
        self.get_circuit(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("circuit vanished".into()))
    }

    pub async fn get_circuit(&self, id: Uuid) -> Result<Option<Circuit>, StoreError> {
        self.measured("get_circuit", async move {
            let mut v = self
                .load_circuits(
                    q(format!("SELECT {CIRCUIT_COLS} FROM circuits WHERE id=$1")),
                    Some(id.to_string()),
                )
                .await?;
            Ok(v.pop())
        })
        .await
    }

    /// Every circuit of a worker, oldest first.
    pub async fn circuits_of_worker(&self, worker_id: Uuid) -> Result<Vec<Circuit>, StoreError> {
        self.measured("circuits_of_worker", async move {
            self.load_circuits(
                q(format!(
                    "SELECT {CIRCUIT_COLS} FROM circuits WHERE worker_id=$1 ORDER BY created_at, id"
                )),
                Some(worker_id.to_string()),
            )
            .await
        })
        .await
    }

    /// The circuits with these ids that exist (any order).
    pub async fn circuits_by_ids(&self, ids: &[Uuid]) -> Result<Vec<Circuit>, StoreError> {
        self.measured("circuits_by_ids", async move {
            let head = format!("SELECT {CIRCUIT_COLS} FROM circuits WHERE id");
            let rows = self.select_in(&head, ids).await?;
            self.attach_routes(rows).await
        })
        .await
    }

    /// Rows of `head IN (ids…)`, in chunks of 500 to stay under parameter limits.
    pub(super) async fn select_in(
        &self,
        head: &str,
        ids: &[Uuid],
    ) -> Result<Vec<AnyRow>, StoreError> {
        let mut rows = Vec::new();
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let mut query = sqlx::query(q(format!("{head} IN ({})", marks.join(","))));
            for id in chunk {
                query = query.bind(id.to_string());
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }

    pub async fn list_circuits(&self, f: &CircuitFilter) -> Result<Vec<Circuit>, StoreError> {
        self.list_circuits_page(f, None, i64::MAX).await
    }

    /// Circuits matching `f` in (creation time, id) order, after `after` (the last one of the
    /// previous page), at most `limit`: a listing read page by page holds one page at a time.
    pub async fn list_circuits_page(
        &self,
        f: &CircuitFilter,
        after: Option<&Circuit>,
        limit: i64,
    ) -> Result<Vec<Circuit>, StoreError> {
        self.measured("list_circuits", async move {
            // One optional filter per column; NULL parameters match everything.
            let rows = sqlx::query(q(format!(
                "SELECT {CIRCUIT_COLS} FROM circuits c WHERE \
                 ($1 IS NULL OR c.worker_id = $1) AND ($2 IS NULL OR c.user_id = $2) AND \
                 ($3 IS NULL OR EXISTS (SELECT 1 FROM routes r WHERE r.circuit_id = c.id AND r.session_id = $3)) AND \
                 ($4 IS NULL OR c.created_at > $4 OR (c.created_at = $4 AND c.id > $5)) \
                 ORDER BY c.created_at, c.id LIMIT $6"
            )))
            .bind(f.worker_id.map(|u| u.to_string()))
            .bind(f.user_id.map(|u| u.to_string()))
            .bind(f.session_id.map(|u| u.to_string()))
            .bind(after.map(|c| c.created_at_ms))
            .bind(after.map(|c| c.id.to_string()))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            self.attach_routes(rows).await
        })
        .await
    }

    pub(super) async fn load_circuits(
        &self,
        sql: sqlx::AssertSqlSafe<String>,
        param: Option<String>,
    ) -> Result<Vec<Circuit>, StoreError> {
        let rows = sqlx::query(sql).bind(param).fetch_all(&self.pool).await?;
        self.attach_routes(rows).await
    }

    pub(super) async fn attach_routes(
        &self,
        rows: Vec<AnyRow>,
    ) -> Result<Vec<Circuit>, StoreError> {
        let mut circuits: Vec<Circuit> = rows
            .iter()
            .map(circuit_from_row)
            .collect::<Result<_, _>>()?;
        if circuits.is_empty() {
            return Ok(circuits);
        }
        // Routes of all these circuits in one query, chunked to stay under parameter limits.
        let ids: Vec<Uuid> = circuits.iter().map(|c| c.id).collect();
        let mut routes: Vec<(Uuid, i64, Route)> = self
            .select_in(
                &format!("SELECT {ROUTE_COLS} FROM routes WHERE circuit_id"),
                &ids,
            )
            .await?
            .iter()
            .map(route_from_row)
            .collect::<Result<_, _>>()?;
        routes.sort_by_key(|(cid, idx, _)| (*cid, *idx));
        let mut by_circuit: std::collections::HashMap<Uuid, Vec<Route>> = Default::default();
        for (cid, _, r) in routes {
            by_circuit.entry(cid).or_default().push(r);
        }
        for c in &mut circuits {
            c.routes = by_circuit.remove(&c.id).unwrap_or_default();
        }
        // Balancing of inference circuits comes from their endpoints.
        let endpoint_ids: Vec<Uuid> = circuits.iter().filter_map(|c| c.endpoint_id).collect();
        if !endpoint_ids.is_empty() {
            let endpoints: std::collections::HashMap<Uuid, Endpoint> = self
                .endpoints_by_ids(&endpoint_ids)
                .await?
                .into_iter()
                .map(|e| (e.id, e))
                .collect();
            for c in &mut circuits {
                if let Some(e) = c.endpoint_id.and_then(|id| endpoints.get(&id)) {
                    c.balancing = Some(Balancing {
                        health_check: e.health_check.clone().filter(|h| h.enable),
                        sticky: e.sticky,
                        strategy: e.load_balancing,
                        rate_limit: e.rate_limit,
                    });
                }
            }
        }
        Ok(circuits)
    }

    /// Move a circuit to another worker at the same slot, as a new generation (used for
    /// inference circuits, whose tokens are bound to the circuit, not its generation); the
    /// old worker's map lists it as ended. `SlotTaken` when the slot is held there; `None`
    /// when the circuit is gone.
    pub async fn move_circuit(&self, id: Uuid, to: &Worker) -> Result<Option<Circuit>, StoreError> {
        self.measured("move_circuit", async move {
            let Some(before) = self.get_circuit(id).await? else {
                return Ok(None);
            };
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query(
                "UPDATE circuits SET worker_id=$1, frontend_mode=$2, generation=generation+1, \
                 updated_at=$3 WHERE id=$4",
            )
            .bind(to.id.to_string())
            .bind(to.frontend_mode.as_str())
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await;
            match done {
                Ok(d) if d.rows_affected() == 0 => return Ok(None),
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Err(StoreError::SlotTaken(format!(
                        "the slot is taken on worker {:?}",
                        to.authority
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            if before.worker_id != to.id {
                super::map::record_ended(&mut tx, before.worker_id, &before).await?;
            }
            super::map::bump(&mut tx, to.id).await?;
            tx.commit().await?;
            self.get_circuit(id).await
        })
        .await
    }

    /// Delete circuits by id; returns those that existed.
    pub async fn delete_circuits(&self, ids: &[Uuid]) -> Result<Vec<Circuit>, StoreError> {
        self.measured("delete_circuits", async move {
            let mut deleted = Vec::new();
            for id in ids {
                // A circuit moved between the read and the delete is read again (bounded).
                for _ in 0..3 {
                    let Some(c) = self.get_circuit(*id).await? else {
                        break;
                    };
                    if self.delete_one(&c).await? {
                        deleted.push(c);
                        break;
                    }
                }
            }
            Ok(deleted)
        })
        .await
    }

    /// Delete `c` if it is still on its worker, listing it as ended there; whether it was.
    async fn delete_one(&self, c: &Circuit) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM routes WHERE circuit_id=$1")
            .bind(c.id.to_string())
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM circuits WHERE id=$1 AND worker_id=$2")
            .bind(c.id.to_string())
            .bind(c.worker_id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        super::map::record_ended(&mut tx, c.worker_id, c).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Delete every circuit that routes to a session.
    pub async fn delete_session(&self, session_id: Uuid) -> Result<Vec<Circuit>, StoreError> {
        self.measured("delete_session", async move {
            let ids: Vec<Uuid> = self
                .list_circuits(&CircuitFilter {
                    session_id: Some(session_id),
                    ..Default::default()
                })
                .await?
                .into_iter()
                .map(|c| c.id)
                .collect();
            self.delete_circuits(&ids).await
        })
        .await
    }
}
