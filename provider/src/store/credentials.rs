//! Per-worker credentials: issued bound to one authority, stored as SHA-256 of the secret,
//! revoked (never deleted, so a listing shows the history) by id.

use sqlx::any::AnyRow;

use super::{Store, StoreError, now_ms, row::get};

/// One credential, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerCredential {
    pub id: String,
    pub authority: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

fn from_row(row: &AnyRow) -> Result<(WorkerCredential, String), StoreError> {
    Ok((
        WorkerCredential {
            id: get(row, "id")?,
            authority: get(row, "authority")?,
            created_at_ms: get(row, "created_at")?,
            revoked_at_ms: get(row, "revoked_at")?,
        },
        get(row, "secret_hash")?,
    ))
}

const COLS: &str = "id, authority, secret_hash, created_at, revoked_at";

impl Store {
    /// Record a new credential for `authority`.
    pub async fn insert_worker_credential(
        &self,
        id: &str,
        authority: &str,
        secret_hash: &str,
    ) -> Result<WorkerCredential, StoreError> {
        self.measured("insert_worker_credential", async move {
            let now = now_ms();
            sqlx::query(
                "INSERT INTO worker_credentials (id, authority, secret_hash, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id.to_string())
            .bind(authority.to_string())
            .bind(secret_hash.to_string())
            .bind(now)
            .execute(&self.pool)
            .await?;
            Ok(WorkerCredential {
                id: id.into(),
                authority: authority.into(),
                created_at_ms: now,
                revoked_at_ms: None,
            })
        })
        .await
    }

    /// A credential and its secret hash, by id.
    pub async fn worker_credential(
        &self,
        id: &str,
    ) -> Result<Option<(WorkerCredential, String)>, StoreError> {
        self.measured("worker_credential", async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM worker_credentials WHERE id=$1"
            )))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
            row.map(|r| from_row(&r)).transpose()
        })
        .await
    }

    /// Credentials of one authority (or all), oldest first.
    pub async fn worker_credentials(
        &self,
        authority: Option<&str>,
    ) -> Result<Vec<WorkerCredential>, StoreError> {
        self.measured("worker_credentials", async move {
            let rows = match authority {
                Some(a) => {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {COLS} FROM worker_credentials WHERE authority=$1 \
                         ORDER BY created_at, id"
                    )))
                    .bind(a.to_string())
                    .fetch_all(&self.pool)
                    .await?
                }
                None => {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {COLS} FROM worker_credentials ORDER BY created_at, id"
                    )))
                    .fetch_all(&self.pool)
                    .await?
                }
            };
            rows.iter().map(|r| from_row(r).map(|(c, _)| c)).collect()
        })
        .await
    }

    /// Revoke a credential; `None` when there is no such credential. Revoking twice keeps the
    /// first time.
    pub async fn revoke_worker_credential(
        &self,
        id: &str,
    ) -> Result<Option<WorkerCredential>, StoreError> {
        self.measured("revoke_worker_credential", async move {
            sqlx::query(
                "UPDATE worker_credentials SET revoked_at=$1 WHERE id=$2 AND revoked_at IS NULL",
            )
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
            Ok(self.worker_credential(id).await?.map(|(c, _)| c))
        })
        .await
    }
}
