//! `Store`: every SQL statement the provider runs.

use std::{collections::BTreeSet, str::FromStr, time::Duration};

use sqlx::{
    AnyPool, Row,
    any::{AnyPoolOptions, AnyRow},
};
use uuid::Uuid;

use super::StoreError;
use crate::domain::{
    AppMode, Balancing, Circuit, ConfToken, Endpoint, Frontend, FrontendMode, HealthCheck,
    Protocol, Route, Worker, WorkerStatus, lowest_free_port, subdomain_candidate,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many times a create re-runs allocation after losing a unique-index race.
const ALLOC_ATTEMPTS: usize = 32;

/// Handle to the SQL database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(super) pool: AnyPool,
}

/// What a worker reports when it registers (`PUT /api/worker`).
#[derive(Debug, Clone)]
pub struct WorkerRegistration {
    pub authority: String,
    pub frontend_mode: FrontendMode,
    pub protocol: Protocol,
    pub hostname: String,
    pub tls_listen: bool,
    pub tls_advertised: bool,
    pub api_port: u16,
    pub port_range: Option<(u16, u16)>,
    pub wildcard_domain: Option<String>,
    pub wildcard_traffic_port: Option<u16>,
    pub filtered_apps_only: bool,
    pub traefik_last_used_marker_path: Option<String>,
    pub accepted_traffics: Vec<AppMode>,
    pub app_filters: serde_json::Value,
    pub authgate_url: Option<String>,
}

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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const WORKER_COLS: &str = "id, authority, frontend_mode, protocol, hostname, tls_listen, \
    tls_advertised, api_port, port_range_lo, port_range_hi, wildcard_domain, \
    wildcard_traffic_port, filtered_apps_only, traefik_last_used_marker_path, \
    accepted_traffics, app_filters, authgate_url, nodes, status, last_heartbeat, created_at, \
    updated_at";

const CIRCUIT_COLS: &str = "id, worker_id, app, protocol, app_mode, frontend_mode, port, \
    subdomain, envs, arguments, open_to_public, allowed_client_ips, user_id, endpoint_id, \
    runtime_variant, idle_timeout, generation, created_at, updated_at, auth_plugin, \
    auth_plugin_config, allowed_origins";

const ROUTE_COLS: &str = "circuit_id, idx, route_id, session_id, session_name, kernel_host, \
    kernel_port, protocol, traffic_ratio";

fn q(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

impl Store {
    /// Connect, tune SQLite, and apply the embedded migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::raw_sql(
                            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000; \
                             PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL; \
                             PRAGMA cache_size=-512;",
                        )
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(sqlx::Error::Migrate(Box::new(e))))?;
        Ok(Store { pool })
    }

    /// Cheap liveness probe for `/health/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // === workers ===

    /// Insert or update a worker by authority; a re-registration revives it.
    pub async fn upsert_worker(&self, r: &WorkerRegistration) -> Result<Worker, StoreError> {
        let now = now_ms();
        let traffics = join_modes(&r.accepted_traffics);
        let filters = r.app_filters.to_string();
        let (lo, hi) = split_range(r.port_range);
        let existing = self.worker_by_authority(&r.authority).await?;
        let id = existing.as_ref().map(|w| w.id).unwrap_or_else(Uuid::new_v4);
        let sql = if existing.is_some() {
            "UPDATE workers SET frontend_mode=$2, protocol=$3, hostname=$4, tls_listen=$5, \
             tls_advertised=$6, api_port=$7, port_range_lo=$8, port_range_hi=$9, \
             wildcard_domain=$10, wildcard_traffic_port=$11, filtered_apps_only=$12, \
             traefik_last_used_marker_path=$13, accepted_traffics=$14, app_filters=$15, \
             authgate_url=$16, nodes=nodes+1, status='ALIVE', last_heartbeat=$17, updated_at=$17 \
             WHERE id=$1"
        } else {
            "INSERT INTO workers (id, frontend_mode, protocol, hostname, tls_listen, \
             tls_advertised, api_port, port_range_lo, port_range_hi, wildcard_domain, \
             wildcard_traffic_port, filtered_apps_only, traefik_last_used_marker_path, \
             accepted_traffics, app_filters, authgate_url, last_heartbeat, created_at, \
             updated_at, authority, nodes, status) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$17,$17,$18,1,'ALIVE')"
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
            .bind(now);
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
    }

    pub async fn get_worker(&self, id: Uuid) -> Result<Option<Worker>, StoreError> {
        let row = sqlx::query(q(format!("SELECT {WORKER_COLS} FROM workers WHERE id=$1")))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| worker_from_row(&r)).transpose()
    }

    pub async fn worker_by_authority(&self, authority: &str) -> Result<Option<Worker>, StoreError> {
        let row = sqlx::query(q(format!(
            "SELECT {WORKER_COLS} FROM workers WHERE authority=$1"
        )))
        .bind(authority.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| worker_from_row(&r)).transpose()
    }

    pub async fn list_workers(&self) -> Result<Vec<Worker>, StoreError> {
        let rows = sqlx::query(q(format!(
            "SELECT {WORKER_COLS} FROM workers ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(worker_from_row).collect()
    }

    /// Record a heartbeat; `None` when the worker is unknown.
    pub async fn heartbeat_worker(&self, id: Uuid) -> Result<Option<Worker>, StoreError> {
        self.update_worker(
            id,
            "UPDATE workers SET last_heartbeat=$2, updated_at=$2, status='ALIVE' WHERE id=$1",
        )
        .await
    }

    /// Deregister one node of a worker; the worker becomes LOST when none remain.
    pub async fn deregister_worker(&self, id: Uuid) -> Result<Option<Worker>, StoreError> {
        self.update_worker(
            id,
            "UPDATE workers SET nodes = CASE WHEN nodes > 0 THEN nodes - 1 ELSE 0 END, \
             status = CASE WHEN nodes <= 1 THEN 'LOST' ELSE status END, updated_at=$2 WHERE id=$1",
        )
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
    }

    // === circuits ===

    /// Create a circuit with its routes, allocating the lowest free port (port workers) or a
    /// free subdomain (wildcard workers).
    pub async fn create_circuit(
        &self,
        c: &NewCircuit,
        worker: &Worker,
    ) -> Result<Circuit, StoreError> {
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
                Err(StoreError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
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
            Frontend::Subdomain(s) => (None, Some(s.clone())),
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
        tx.commit().await?;
        self.get_circuit(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("circuit vanished".into()))
    }

    pub async fn get_circuit(&self, id: Uuid) -> Result<Option<Circuit>, StoreError> {
        let mut v = self
            .load_circuits(
                q(format!("SELECT {CIRCUIT_COLS} FROM circuits WHERE id=$1")),
                Some(id.to_string()),
            )
            .await?;
        Ok(v.pop())
    }

    /// Every circuit of a worker, oldest first.
    pub async fn circuits_of_worker(&self, worker_id: Uuid) -> Result<Vec<Circuit>, StoreError> {
        self.load_circuits(
            q(format!(
                "SELECT {CIRCUIT_COLS} FROM circuits WHERE worker_id=$1 ORDER BY created_at, id"
            )),
            Some(worker_id.to_string()),
        )
        .await
    }

    /// The circuits with these ids that exist (any order).
    pub async fn circuits_by_ids(&self, ids: &[Uuid]) -> Result<Vec<Circuit>, StoreError> {
        let head = format!("SELECT {CIRCUIT_COLS} FROM circuits WHERE id");
        let rows = self.select_in(&head, ids).await?;
        self.attach_routes(rows).await
    }

    /// Rows of `head IN (ids…)`, in chunks of 500 to stay under parameter limits.
    async fn select_in(&self, head: &str, ids: &[Uuid]) -> Result<Vec<AnyRow>, StoreError> {
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
        // One optional filter per column; NULL parameters match everything.
        let rows = sqlx::query(q(format!(
            "SELECT {CIRCUIT_COLS} FROM circuits c WHERE \
             ($1 IS NULL OR c.worker_id = $1) AND ($2 IS NULL OR c.user_id = $2) AND \
             ($3 IS NULL OR EXISTS (SELECT 1 FROM routes r WHERE r.circuit_id = c.id AND r.session_id = $3)) \
             ORDER BY c.created_at, c.id"
        )))
        .bind(f.worker_id.map(|u| u.to_string()))
        .bind(f.user_id.map(|u| u.to_string()))
        .bind(f.session_id.map(|u| u.to_string()))
        .fetch_all(&self.pool)
        .await?;
        self.attach_routes(rows).await
    }

    async fn load_circuits(
        &self,
        sql: sqlx::AssertSqlSafe<String>,
        param: Option<String>,
    ) -> Result<Vec<Circuit>, StoreError> {
        let rows = sqlx::query(sql).bind(param).fetch_all(&self.pool).await?;
        self.attach_routes(rows).await
    }

    async fn attach_routes(&self, rows: Vec<AnyRow>) -> Result<Vec<Circuit>, StoreError> {
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
                    });
                }
            }
        }
        Ok(circuits)
    }

    /// Delete circuits by id; returns those that existed.
    pub async fn delete_circuits(&self, ids: &[Uuid]) -> Result<Vec<Circuit>, StoreError> {
        let mut deleted = Vec::new();
        for id in ids {
            let Some(c) = self.get_circuit(*id).await? else {
                continue;
            };
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM routes WHERE circuit_id=$1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query("DELETE FROM circuits WHERE id=$1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            if done.rows_affected() > 0 {
                deleted.push(c);
            }
        }
        Ok(deleted)
    }

    /// Delete every circuit that routes to a session.
    pub async fn delete_session(&self, session_id: Uuid) -> Result<Vec<Circuit>, StoreError> {
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
    }
}

impl Store {
    // === /v2/conf tokens ===

    pub async fn insert_token(&self, t: &ConfToken) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, login_session_token, kernel_host, kernel_port, session_id, \
             user_uuid, group_id, access_key, domain_name, created_at, expires_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
        )
        .bind(t.id.to_string())
        .bind(t.login_session_token.clone())
        .bind(t.kernel_host.clone())
        .bind(i64::from(t.kernel_port))
        .bind(t.session_id.to_string())
        .bind(t.user_uuid.to_string())
        .bind(t.group_id.to_string())
        .bind(t.access_key.clone())
        .bind(t.domain_name.clone())
        .bind(t.created_at_ms)
        .bind(t.expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A token that has not expired.
    pub async fn get_token(&self, id: Uuid) -> Result<Option<ConfToken>, StoreError> {
        let row = sqlx::query(
            "SELECT id, login_session_token, kernel_host, kernel_port, session_id, user_uuid, \
             group_id, access_key, domain_name, created_at, expires_at FROM tokens \
             WHERE id=$1 AND expires_at > $2",
        )
        .bind(id.to_string())
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConfToken {
                id: parse(&r, "id")?,
                login_session_token: get(&r, "login_session_token")?,
                kernel_host: get(&r, "kernel_host")?,
                kernel_port: opt_u16(&r, "kernel_port")?.unwrap_or(0),
                session_id: parse(&r, "session_id")?,
                user_uuid: parse(&r, "user_uuid")?,
                group_id: parse(&r, "group_id")?,
                access_key: get(&r, "access_key")?,
                domain_name: get(&r, "domain_name")?,
                created_at_ms: get(&r, "created_at")?,
                expires_at_ms: get(&r, "expires_at")?,
            })
        })
        .transpose()
    }

    /// Delete expired tokens; returns how many.
    pub async fn gc_tokens(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM tokens WHERE expires_at <= $1")
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Point a session's routes of a circuit at a (possibly new) kernel address.
    pub async fn refresh_session_route(
        &self,
        circuit_id: Uuid,
        session_id: Uuid,
        kernel_host: &str,
        kernel_port: u16,
    ) -> Result<Option<Circuit>, StoreError> {
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
        sqlx::query("UPDATE circuits SET updated_at=$1 WHERE id=$2")
            .bind(now_ms())
            .bind(circuit_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_circuit(circuit_id).await
    }
}

impl Store {
    // === inference endpoints ===

    async fn endpoints_by_ids(&self, ids: &[Uuid]) -> Result<Vec<Endpoint>, StoreError> {
        self.select_in(
            "SELECT id, health_check_config, sticky FROM endpoints WHERE id",
            ids,
        )
        .await?
        .iter()
        .map(endpoint_from_row)
        .collect()
    }

    pub async fn get_endpoint(&self, id: Uuid) -> Result<Option<Endpoint>, StoreError> {
        Ok(self.endpoints_by_ids(&[id]).await?.pop())
    }

    /// Insert or update an endpoint row (health check; sticky when given).
    pub async fn upsert_endpoint(
        &self,
        id: Uuid,
        health_check: Option<&HealthCheck>,
        sticky: Option<bool>,
    ) -> Result<Endpoint, StoreError> {
        let now = now_ms();
        let hc = health_check.map(|h| serde_json::to_string(h).unwrap_or_default());
        let enabled = i64::from(health_check.is_some_and(|h| h.enable));
        let updated = sqlx::query(
            "UPDATE endpoints SET health_check_enabled=$1, health_check_config=$2, \
             sticky=COALESCE($3, sticky), updated_at=$4 WHERE id=$5",
        )
        .bind(enabled)
        .bind(hc.clone())
        .bind(sticky.map(i64::from))
        .bind(now)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            let inserted = sqlx::query(
                "INSERT INTO endpoints (id, health_check_enabled, health_check_config, sticky, \
                 created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$5)",
            )
            .bind(id.to_string())
            .bind(enabled)
            .bind(hc)
            .bind(i64::from(sticky.unwrap_or(false)))
            .bind(now)
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(_) => {}
                // A concurrent upsert inserted first: ours becomes an update.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Box::pin(self.upsert_endpoint(id, health_check, sticky)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.get_endpoint(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("endpoint vanished".into()))
    }

    /// The circuit of an endpoint, if one was created.
    pub async fn circuit_of_endpoint(
        &self,
        endpoint_id: Uuid,
    ) -> Result<Option<Circuit>, StoreError> {
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
    }

    /// Every endpoint with its circuit (if any).
    pub async fn list_endpoints(&self) -> Result<Vec<(Endpoint, Option<Circuit>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, health_check_config, sticky FROM endpoints ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let e = endpoint_from_row(r)?;
            let c = self.circuit_of_endpoint(e.id).await?;
            out.push((e, c));
        }
        Ok(out)
    }

    /// Delete an endpoint and its circuits; returns the circuits removed (`None`: no such
    /// endpoint and no circuit).
    pub async fn delete_endpoint(&self, id: Uuid) -> Result<Option<Vec<Circuit>>, StoreError> {
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
    }

    /// Set or clear a circuit's auth plugin (a changed plugin is a new generation: cookies
    /// and tokens stay valid, the forwardAuth address changes).
    pub async fn set_auth_plugin(
        &self,
        circuit_id: Uuid,
        plugin: Option<&crate::domain::AuthPlugin>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE circuits SET auth_plugin=$1, auth_plugin_config=$2, updated_at=$3 WHERE id=$4",
        )
        .bind(plugin.map(|p| p.name.clone()))
        .bind(plugin.map(|p| p.config.to_string()))
        .bind(now_ms())
        .bind(circuit_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // === routes of a circuit ===

    /// Replace every route of a circuit in one transaction (declarative sync).
    pub async fn replace_routes(
        &self,
        circuit_id: Uuid,
        routes: &[Route],
    ) -> Result<(), StoreError> {
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
    }

    /// Add routes not yet present (by `route_id`); returns (added, already present).
    pub async fn register_routes(
        &self,
        circuit_id: Uuid,
        routes: &[Route],
    ) -> Result<(Vec<Uuid>, Vec<Uuid>), StoreError> {
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
    }

    /// Remove routes by id; returns (removed, already absent).
    pub async fn unregister_routes(
        &self,
        circuit_id: Uuid,
        ids: &[Uuid],
    ) -> Result<(Vec<Uuid>, Vec<Uuid>), StoreError> {
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
    }
}

async fn insert_route(
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

async fn touch(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    circuit_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE circuits SET updated_at=$1 WHERE id=$2")
        .bind(now_ms())
        .bind(circuit_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn endpoint_from_row(row: &AnyRow) -> Result<Endpoint, StoreError> {
    let hc: Option<String> = get(row, "health_check_config")?;
    Ok(Endpoint {
        id: parse(row, "id")?,
        health_check: hc
            .map(|t| serde_json::from_str(&t).map_err(|e| corrupt("health_check_config", e)))
            .transpose()?,
        sticky: flag(row, "sticky")?,
    })
}

fn split_range(r: Option<(u16, u16)>) -> (Option<i64>, Option<i64>) {
    match r {
        Some((lo, hi)) => (Some(i64::from(lo)), Some(i64::from(hi))),
        None => (None, None),
    }
}

fn join_modes(modes: &[AppMode]) -> String {
    modes
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get::<T, _>(col).map_err(|e| corrupt(col, e))
}

fn flag(row: &AnyRow, col: &str) -> Result<bool, StoreError> {
    Ok(get::<i64>(row, col)? != 0)
}

fn parse<T: FromStr>(row: &AnyRow, col: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    let s: String = get(row, col)?;
    s.parse::<T>().map_err(|e| corrupt(col, e))
}

fn opt_uuid(row: &AnyRow, col: &str) -> Result<Option<Uuid>, StoreError> {
    let s: Option<String> = get(row, col)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|e| corrupt(col, e)))
        .transpose()
}

fn opt_u16(row: &AnyRow, col: &str) -> Result<Option<u16>, StoreError> {
    let v: Option<i64> = get(row, col)?;
    v.map(|v| u16::try_from(v).map_err(|e| corrupt(col, e)))
        .transpose()
}

fn worker_from_row(row: &AnyRow) -> Result<Worker, StoreError> {
    let lo = opt_u16(row, "port_range_lo")?;
    let hi = opt_u16(row, "port_range_hi")?;
    let traffics: String = get(row, "accepted_traffics")?;
    let filters: String = get(row, "app_filters")?;
    Ok(Worker {
        id: parse(row, "id")?,
        authority: get(row, "authority")?,
        frontend_mode: parse(row, "frontend_mode")?,
        protocol: parse(row, "protocol")?,
        hostname: get(row, "hostname")?,
        tls_listen: flag(row, "tls_listen")?,
        tls_advertised: flag(row, "tls_advertised")?,
        api_port: opt_u16(row, "api_port")?.unwrap_or(0),
        port_range: lo.zip(hi),
        wildcard_domain: get(row, "wildcard_domain")?,
        wildcard_traffic_port: opt_u16(row, "wildcard_traffic_port")?,
        filtered_apps_only: flag(row, "filtered_apps_only")?,
        traefik_last_used_marker_path: get(row, "traefik_last_used_marker_path")?,
        accepted_traffics: traffics
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|e| corrupt("accepted_traffics", e)))
            .collect::<Result<_, _>>()?,
        app_filters: serde_json::from_str(&filters).map_err(|e| corrupt("app_filters", e))?,
        authgate_url: get(row, "authgate_url")?,
        nodes: get(row, "nodes")?,
        status: parse::<WorkerStatus>(row, "status")?,
        last_heartbeat_ms: get(row, "last_heartbeat")?,
        created_at_ms: get(row, "created_at")?,
        updated_at_ms: get(row, "updated_at")?,
    })
}

fn circuit_from_row(row: &AnyRow) -> Result<Circuit, StoreError> {
    let port = opt_u16(row, "port")?;
    let subdomain: Option<String> = get(row, "subdomain")?;
    let frontend = match (port, subdomain) {
        (Some(p), _) => Frontend::Port(p),
        (None, Some(s)) => Frontend::Subdomain(s),
        (None, None) => {
            return Err(corrupt(
                "frontend",
                "circuit has neither port nor subdomain",
            ));
        }
    };
    let envs: String = get(row, "envs")?;
    let ips: String = get(row, "allowed_client_ips")?;
    let ips: Vec<String> =
        serde_json::from_str(&ips).map_err(|e| corrupt("allowed_client_ips", e))?;
    let idle: Option<i64> = get(row, "idle_timeout")?;
    Ok(Circuit {
        id: parse(row, "id")?,
        app: get(row, "app")?,
        protocol: parse(row, "protocol")?,
        app_mode: parse(row, "app_mode")?,
        worker_id: parse(row, "worker_id")?,
        frontend,
        envs: serde_json::from_str(&envs).map_err(|e| corrupt("envs", e))?,
        arguments: get(row, "arguments")?,
        open_to_public: flag(row, "open_to_public")?,
        allowed_client_ips: ips
            .iter()
            .map(|s| s.parse().map_err(|e| corrupt("allowed_client_ips", e)))
            .collect::<Result<_, _>>()?,
        user_id: opt_uuid(row, "user_id")?,
        endpoint_id: opt_uuid(row, "endpoint_id")?,
        runtime_variant: get(row, "runtime_variant")?,
        routes: Vec::new(),
        idle_timeout: idle.map(|t| t.max(0) as u64),
        generation: get(row, "generation")?,
        created_at_ms: get(row, "created_at")?,
        updated_at_ms: get(row, "updated_at")?,
        balancing: None,
        auth_plugin: plugin_from_row(row)?,
        allowed_origins: match get::<Option<String>>(row, "allowed_origins")? {
            Some(s) => serde_json::from_str(&s).map_err(|e| corrupt("allowed_origins", e))?,
            None => Vec::new(),
        },
    })
}

fn plugin_from_row(row: &AnyRow) -> Result<Option<crate::domain::AuthPlugin>, StoreError> {
    let name: Option<String> = get(row, "auth_plugin")?;
    let config: Option<String> = get(row, "auth_plugin_config")?;
    name.map(|name| {
        Ok(crate::domain::AuthPlugin {
            name,
            config: serde_json::from_str(config.as_deref().unwrap_or("{}"))
                .map_err(|e| corrupt("auth_plugin_config", e))?,
        })
    })
    .transpose()
}

fn route_from_row(row: &AnyRow) -> Result<(Uuid, i64, Route), StoreError> {
    Ok((
        parse(row, "circuit_id")?,
        get(row, "idx")?,
        Route {
            route_id: opt_uuid(row, "route_id")?,
            session_id: parse(row, "session_id")?,
            session_name: get(row, "session_name")?,
            kernel_host: get(row, "kernel_host")?,
            kernel_port: opt_u16(row, "kernel_port")?.unwrap_or(0),
            protocol: parse(row, "protocol")?,
            traffic_ratio: get(row, "traffic_ratio")?,
        },
    ))
}
