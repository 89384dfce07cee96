//! The provider's durable state, in SQL (SQLite by default, PostgreSQL for HA) through one
//! code path (`sqlx::Any`).
//!
//! What is durable: workers (by unique `authority`), circuits with their routes (own table),
//! inference endpoints, `/v2/conf` tokens and per-worker credentials (hashed). Everything in etcd is a projection of these
//! tables. Uniqueness of a port or subdomain per worker is enforced by unique indexes, never
//! by locks: allocation picks the lowest free slot and retries when a concurrent insert won.

mod credentials;
mod sql;

pub use credentials::WorkerCredential;
pub use sql::{CircuitFilter, NewCircuit, NewRoute, Store, WorkerRegistration, now_ms};

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
    /// A route id appears twice in one circuit.
    #[error("duplicate route id {0}")]
    DuplicateRoute(uuid::Uuid),
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
