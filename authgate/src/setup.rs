//! The I/O around `/setup`: counting a setup token's uses in Redis (fail closed) and waiting
//! until the co-located Traefik serves the circuit's router at the token's generation.

use std::time::Duration;

use appproxy_common::{auth::redis_keys, names};
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio::sync::OnceCell;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum SetupIoError {
    #[error("Redis unreachable: {0}")]
    Redis(String),
    #[error("Traefik has not loaded the circuit yet")]
    NotLoaded,
}

/// Redis access for use counting: connects on first use, reconnects by itself afterwards.
pub struct UseCounter {
    client: redis::Client,
    con: OnceCell<ConnectionManager>,
    namespace: String,
}

impl UseCounter {
    pub fn new(client: redis::Client, namespace: &str) -> UseCounter {
        UseCounter {
            client,
            con: OnceCell::new(),
            namespace: namespace.into(),
        }
    }

    /// Count one use of `jti` (kept until `ttl` seconds from now); returns the count so far.
    pub async fn count(&self, jti: &str, ttl: i64) -> Result<i64, SetupIoError> {
        let work = async {
            let con = self
                .con
                .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
                .await?;
            let mut con = con.clone();
            let key = redis_keys::setup_uses(&self.namespace, jti);
            let (n,): (i64,) = redis::pipe()
                .atomic()
                .incr(&key, 1)
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl.max(1))
                .arg("NX")
                .ignore()
                .query_async(&mut con)
                .await?;
            Ok::<i64, redis::RedisError>(n)
        };
        match tokio::time::timeout(Duration::from_secs(2), work).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(SetupIoError::Redis(e.to_string())),
            Err(_) => Err(SetupIoError::Redis("timed out".into())),
        }
    }
}

/// Whether Traefik serves circuit `id` at `generation`: its router is enabled and, when it has
/// our forwardAuth middleware, that middleware carries this generation.
async fn loaded(http: &reqwest::Client, api: &str, id: Uuid, generation: i64) -> bool {
    let get = |path: String| async move {
        let resp = http.get(format!("{api}{path}")).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json::<Value>().await.ok()
    };
    let router = names::circuit_object(id);
    let Some(r) = get(format!("/api/http/routers/{router}@etcd")).await else {
        return false;
    };
    if r["status"] != "enabled" {
        return false;
    }
    let mw = names::auth_middleware(id);
    let uses_auth = r["middlewares"]
        .as_array()
        .is_some_and(|l| l.iter().any(|m| m.as_str() == Some(&format!("{mw}@etcd"))));
    if !uses_auth {
        return true;
    }
    let Some(m) = get(format!("/api/http/middlewares/{mw}@etcd")).await else {
        return false;
    };
    m["forwardAuth"]["address"]
        .as_str()
        .is_some_and(|a| a.contains(&format!("g={generation}&")))
}

/// Whether Traefik serves the worker's shared `/_appproxy/` router.
pub async fn setup_router_loaded(http: &reqwest::Client, api: &str) -> bool {
    let url = format!(
        "{}/api/http/routers/{}@etcd",
        api.trim_end_matches('/'),
        names::SETUP
    );
    match http.get(url).send().await {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .is_ok_and(|v| v["status"] == "enabled"),
        _ => false,
    }
}

/// Poll Traefik's API until the circuit is served, for at most `wait`.
pub async fn wait_loaded(
    http: &reqwest::Client,
    api: &str,
    id: Uuid,
    generation: i64,
    wait: Duration,
) -> Result<(), SetupIoError> {
    let api = api.trim_end_matches('/');
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if loaded(http, api, id, generation).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SetupIoError::NotLoaded);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
