//! `/v2/conf` tokens (launch grants): insert, read unexpired, garbage-collect.

use uuid::Uuid;

use super::{
    Store, StoreError, now_ms,
    row::{get, opt_u16, parse},
};
use crate::domain::ConfToken;

impl Store {
    pub async fn insert_token(&self, t: &ConfToken) -> Result<(), StoreError> {
        self.measured("insert_token", async move {
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
        })
        .await
    }

    /// A token that has not expired.
    pub async fn get_token(&self, id: Uuid) -> Result<Option<ConfToken>, StoreError> {
        self.measured("get_token", async move {
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
        })
        .await
    }

    /// Delete expired tokens; returns how many.
    pub async fn gc_tokens(&self) -> Result<u64, StoreError> {
        self.measured("gc_tokens", async move {
            let done = sqlx::query("DELETE FROM tokens WHERE expires_at <= $1")
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }
}
