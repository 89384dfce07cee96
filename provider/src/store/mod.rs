//! The provider's durable state, in SQL (SQLite by default, PostgreSQL for HA) through one
//! code path (`sqlx::Any`).
//!
//! What is durable: workers (by unique `authority`), circuits with their routes (own table),
//! inference endpoints, `/v2/conf` tokens and per-worker credentials (hashed). Everything in etcd is a projection of these
//! tables. Uniqueness of a port or subdomain per worker is enforced by unique indexes, never
//! by locks: allocation picks the lowest free slot and retries when a concurrent insert won.

mod circuit;
mod conf_token;
mod credentials;
mod endpoint;
mod map;
mod route;
mod row;
#[cfg(test)]
mod tests;
mod worker;

use std::time::Duration;

use sqlx::{AnyPool, any::AnyPoolOptions};

pub use circuit::{CircuitFilter, NewCircuit, NewRoute};
pub use credentials::WorkerCredential;
pub use map::{ENDED_LISTED_MS, IngestReport};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Handle to the SQL database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(super) pool: AnyPool,
    db: DbMetrics,
    /// For SQLite: an exclusive lock on `<file>.provider.lock`, held while this store lives.
    _single_node: Option<std::sync::Arc<std::fs::File>>,
}

/// The file of a `sqlite:` URL (`None` for in-memory databases and other schemes).
pub fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory"))
        .then(|| path.to_string())
}

/// SQLite is single-node: take an exclusive lock next to the file, or refuse to start.
fn lock_single_node(url: &str) -> Result<Option<std::sync::Arc<std::fs::File>>, StoreError> {
    let Some(path) = sqlite_path(url) else {
        return Ok(None);
    };
    let lock_path = format!("{path}.provider.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::InUse(format!("cannot open {lock_path}: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(std::sync::Arc::new(file))),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(format!(
            "another provider already uses the SQLite database {path} (SQLite is single-node; \
             run several providers on PostgreSQL)"
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::InUse(format!("cannot lock {lock_path}: {e}")))
        }
    }
}

/// Query timing for the provider's `/metrics`: `db_seconds{op}` and `db_errors_total{op,kind}`,
/// `op` being the `Store` method. Registered by [`crate::metrics::Metrics::register_db`].
#[derive(Clone)]
pub struct DbMetrics {
    pub seconds: prometheus::HistogramVec,
    pub errors: prometheus::IntCounterVec,
}

impl DbMetrics {
    fn new() -> DbMetrics {
        let seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("db_seconds", "SQL time per store operation.").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
                ],
            ),
            &["op"],
        )
        .expect("metric");
        let errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new("db_errors_total", "Failed store operations by kind."),
            &["op", "kind"],
        )
        .expect("metric");
        DbMetrics { seconds, errors }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn q(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

impl Store {
    /// Connect, tune SQLite, and apply the embedded migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let single_node = lock_single_node(url)?;
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            // With the database down, a request answers 503 after this long, not a client
            // timeout later; a burst on a healthy database queues for far less.
            .acquire_timeout(Duration::from_secs(3))
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
        Ok(Store {
            pool,
            db: DbMetrics::new(),
            _single_node: single_node,
        })
    }

    /// The query timing collectors (to register with the provider's metrics).
    pub fn db_metrics(&self) -> &DbMetrics {
        &self.db
    }

    /// Run one store operation, timed into `db_seconds{op}` (failures also counted by kind).
    pub(super) async fn measured<T>(
        &self,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = work.await;
        self.db
            .seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.db.errors.with_label_values(&[op, e.kind()]).inc();
        }
        result
    }

    /// `NOTIFY channel, payload` (PostgreSQL only), outside any transaction.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel.to_string())
            .bind(payload.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Cheap liveness probe for `/health/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Store failures, classified for the API edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the pool is exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database failure.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A row that does not decode into the domain (corruption or a bug).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// No free port or subdomain, after bounded retries.
    #[error("no free slot on worker")]
    NoFreeSlot,
    /// The requested port or subdomain is taken or outside the worker's range.
    #[error("requested slot not available: {0}")]
    SlotTaken(String),
    /// The endpoint already has its circuit (a concurrent first sync won): its id.
    #[error("endpoint already has circuit {0}")]
    EndpointTaken(uuid::Uuid),
    /// Another provider process holds this SQLite database (SQLite is single-node).
    #[error("{0}")]
    InUse(String),
    /// A route id appears twice in one circuit.
    #[error("duplicate route id {0}")]
    DuplicateRoute(uuid::Uuid),
}

impl StoreError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Database(_) => "database",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::NoFreeSlot => "no_free_slot",
            StoreError::SlotTaken(_) => "slot_taken",
            StoreError::EndpointTaken(_) => "endpoint_taken",
            StoreError::InUse(_) => "in_use",
            StoreError::DuplicateRoute(_) => "duplicate_route",
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e),
            other => StoreError::Database(other),
        }
    }
}
