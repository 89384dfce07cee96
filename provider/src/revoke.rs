//! Revocations (unified logout) in Redis: one hash authgates resync from, one channel they
//! follow. A revocation is acknowledged only after Redis took it.

use std::time::Duration;

use appproxy_common::auth::redis_keys;

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
    pub fn new(url: Option<&str>, namespace: &str) -> Result<Revoker, redis::RedisError> {
        let client = url.map(redis::Client::open).transpose()?;
        Ok(Revoker {
            client,
            namespace: namespace.into(),
        })
    }

    /// Record the revocations at `at` (epoch seconds) and announce them, atomically.
    pub async fn revoke(&self, subjects: &[Subject], at: i64) -> Result<(), RevokeError> {
        let client = self.client.as_ref().ok_or(RevokeError::NotConfigured)?;
        let work = async {
            let mut con = client.get_multiplexed_async_connection().await?;
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
        match tokio::time::timeout(Duration::from_secs(3), work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RevokeError::Redis(e.to_string())),
            Err(_) => Err(RevokeError::Redis("timed out after 3 s".into())),
        }
    }
}
