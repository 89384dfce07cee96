//! Revocations (unified logout) in Redis: one hash authgates resync from, one channel they
//! follow. A revocation is acknowledged only after Redis took it.

use std::time::Duration;

use appproxy_common::{auth::redis_keys, redis_conn};

/// How long recording a revocation may wait for Redis before the API answers an error.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one pruning script may run (it walks the whole revocation hash).
const PRUNE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whom to revoke.
#[derive(Debug, Clone)]
pub enum Subject {
    User(String),
    /// Already hashed with `login_session_hash`.
    LoginSession(String),
}

#[derive(Clone)]
pub struct Revoker {
    client: Option<redis::Client>,
    namespace: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("no Redis configured ([redis] url)")]
    NotConfigured,
    #[error("Redis unreachable: {0}")]
    Redis(String),
}

impl Revoker {
    pub fn new(client: Option<redis::Client>, namespace: &str) -> Revoker {
        Revoker {
            client,
            namespace: namespace.into(),
        }
    }

    /// Delete revocations made before `cutoff` (epoch seconds), atomically (a script, so a
    /// revocation renewed meanwhile is never lost). Returns how many were deleted.
    pub async fn prune(&self, cutoff: i64) -> Result<u64, RevokeError> {
        const PRUNE: &str = "local all = redis.call('HGETALL', KEYS[1]) local n = 0 \
            for i = 1, #all, 2 do \
              if (tonumber(all[i + 1]) or 0) < tonumber(ARGV[1]) then \
                redis.call('HDEL', KEYS[1], all[i]) n = n + 1 end end return n";
        let client = self.client.as_ref().ok_or(RevokeError::NotConfigured)?;
        let work = async {
            let mut con = redis_conn::multiplexed(client, PRUNE_TIMEOUT).await?;
            redis::cmd("EVAL")
                .arg(PRUNE)
                .arg(1)
                .arg(redis_keys::revocations(&self.namespace))
                .arg(cutoff)
                .query_async::<u64>(&mut con)
                .await
        };
        match tokio::time::timeout(PRUNE_TIMEOUT, work).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(RevokeError::Redis(e.to_string())),
            Err(_) => Err(RevokeError::Redis(format!(
                "timed out after {PRUNE_TIMEOUT:?}"
            ))),
        }
    }

    /// Whether Redis is configured (revocations and pruning need it).
    pub fn configured(&self) -> bool {
        self.client.is_some()
    }

    /// Record the revocations at `at` (epoch seconds) and announce them, atomically.
    pub async fn revoke(&self, subjects: &[Subject], at: i64) -> Result<(), RevokeError> {
        let client = self.client.as_ref().ok_or(RevokeError::NotConfigured)?;
        let work = async {
            let mut con = redis_conn::multiplexed(client, REVOKE_TIMEOUT).await?;
            let key = redis_keys::revocations(&self.namespace);
            let chan = redis_keys::revocations_channel(&self.namespace);
            let mut pipe = redis::pipe();
            pipe.atomic();
            for s in subjects {
                let field = match s {
                    Subject::User(u) => redis_keys::user_field(u),
                    Subject::LoginSession(h) => redis_keys::login_field(h),
                };
                pipe.hset(&key, &field, at)
                    .ignore()
                    .publish(&chan, format!("{field}={at}"))
                    .ignore();
            }
            pipe.query_async::<()>(&mut con).await
        };
        match tokio::time::timeout(REVOKE_TIMEOUT, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RevokeError::Redis(e.to_string())),
            Err(_) => Err(RevokeError::Redis(format!(
                "timed out after {REVOKE_TIMEOUT:?}"
            ))),
        }
    }
}

/// Prune revocations older than `retention` every `interval` (first at start) until `shutdown`.
pub async fn pruner(
    revoker: Revoker,
    retention: Duration,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use appproxy_common::shutdown::{First, every};
    every(interval, First::Now, shutdown, || async {
        let now = crate::tokens::now_secs();
        match revoker.prune(now - retention.as_secs() as i64).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "Expired revocations pruned"),
            Err(e) => tracing::warn!(error = %e, "Revocation pruning failed; retrying later"),
        }
    })
    .await;
}
