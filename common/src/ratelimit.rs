//! Rate limits shared by every replica: fixed windows counted in Redis (`INCR`, and an expiry
//! set once per window), so two providers behind one balancer, or several authgates, count
//! against one budget. The window arithmetic and the key layout are pure and unit-tested; the
//! one Redis call is bounded in time by the caller's [`Policy`]: a caller that lets the request
//! through when Redis cannot answer waits at most [`REDIS_TIMEOUT`] — and for [`BACKOFF`]
//! after a failure not at all — while a caller that refuses waits up to
//! [`FAIL_CLOSED_TIMEOUT`], so a stall it could have waited out does not refuse anybody.
//!
//! A fixed window lets up to twice the limit through around a window's edge; that is the price
//! of one round trip per request and no script.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// How long a fail-open check may wait for Redis before the request is let through.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(300);

/// How long a fail-closed check may wait for Redis before the request is refused.
pub const FAIL_CLOSED_TIMEOUT: Duration = Duration::from_secs(2);

/// What the caller does with a request whose check could not be made, which sets how long
/// the check waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Let it through: wait at most [`REDIS_TIMEOUT`], and not at all for [`BACKOFF`] after a
    /// failure (every let-through request would otherwise pay the wait on a dead Redis).
    FailOpen,
    /// Refuse it: wait up to [`FAIL_CLOSED_TIMEOUT`], back-off or not (a human's setup is rare
    /// and worth the wait; refusing it for a short stall is an outage of its own).
    FailClosed,
}

impl Policy {
    fn timeout(self) -> Duration {
        match self {
            Policy::FailOpen => REDIS_TIMEOUT,
            Policy::FailClosed => FAIL_CLOSED_TIMEOUT,
        }
    }
}

/// `requests` per `window_seconds`; `requests = 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub requests: u64,
    #[serde(default = "default_window")]
    pub window_seconds: u64,
}

fn default_window() -> u64 {
    60
}

impl Limit {
    pub const OFF: Limit = Limit {
        requests: 0,
        window_seconds: 60,
    };

    pub fn per_minute(requests: u64) -> Limit {
        Limit {
            requests,
            window_seconds: 60,
        }
    }

    pub fn is_on(&self) -> bool {
        self.requests > 0
    }

    /// The configuration error, if any (`what` names the setting).
    pub fn check(&self, what: &str) -> Result<(), String> {
        if self.is_on() && !(1..=86_400).contains(&self.window_seconds) {
            return Err(format!("{what}.window_seconds must be 1-86400"));
        }
        Ok(())
    }
}

/// The answer of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit: try again after this many seconds (the window's rest, at least 1).
    Deny {
        retry_after: u64,
    },
}

/// The window `now_ms` falls in, and the whole seconds until it ends (at least 1).
pub fn window(now_ms: u64, window_seconds: u64) -> (u64, u64) {
    let w = window_seconds.max(1) * 1000;
    let index = now_ms / w;
    let left_ms = (index + 1) * w - now_ms;
    (index, left_ms.div_ceil(1000).max(1))
}

/// The counter of `id` in `scope` for window `index`, beside the other keys of the namespace
/// (`appproxy:<ns>:…`, as `auth::redis_keys`). Ids are addresses or digests, never a
/// credential.
pub fn key(namespace: &str, scope: &str, id: &str, index: u64) -> String {
    format!("appproxy:{namespace}:ratelimit:{scope}:{id}:{index}")
}

/// A short digest that stands for a credential in a key (never the credential itself).
pub fn digest(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The verdict for the `count`-th request of a window.
pub fn verdict(count: u64, limit: &Limit, retry_after: u64) -> Verdict {
    if count > limit.requests {
        Verdict::Deny { retry_after }
    } else {
        Verdict::Allow
    }
}

/// The client's address: the peer, or, when the peer is trusted (a proxy in `trusted`), the
/// last `X-Forwarded-For` entry that is not trusted (all of them trusted: the first; none
/// parseable: the peer). An untrusted peer cannot name another client.
pub fn client_addr(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain: Vec<std::net::IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// Why a check could not be made (the caller fails open or closed).
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis failed less than {} ms ago; not asked again yet", BACKOFF.as_millis())]
    Backoff,
}

/// After a failed check, how long checks fail at once instead of each waiting on a dead or
/// hung Redis (with fail-open callers, every request would otherwise pay the timeout).
pub const BACKOFF: Duration = Duration::from_secs(1);

/// The Redis shell: one multiplexed connection, made on first use and again after a failure.
pub struct Limiter {
    client: redis::Client,
    namespace: String,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// When a failure was last logged (epoch seconds), so an outage under load logs once
    /// every 10 s instead of once per request.
    warned: std::sync::atomic::AtomicU64,
    /// Epoch ms until which checks fail at once ([`BACKOFF`] after a failure).
    down_until_ms: std::sync::atomic::AtomicU64,
}

impl Limiter {
    pub fn new(client: redis::Client, namespace: &str) -> Limiter {
        Limiter {
            client,
            namespace: namespace.into(),
            conn: tokio::sync::Mutex::new(None),
            warned: std::sync::atomic::AtomicU64::new(0),
            down_until_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a failure should be logged now (at most once every 10 s).
    pub fn should_warn(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.warned.load(Ordering::Relaxed);
        now >= last + 10
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Count one request of `id` in `scope` against `limit` (which must be on), waiting for
    /// Redis as `policy` says.
    pub async fn check(
        &self,
        scope: &str,
        id: &str,
        limit: &Limit,
        policy: Policy,
    ) -> Result<Verdict, LimitError> {
        use std::sync::atomic::Ordering;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if policy == Policy::FailOpen && now_ms < self.down_until_ms.load(Ordering::Relaxed) {
            return Err(LimitError::Backoff);
        }
        let failed = || {
            self.down_until_ms
                .store(now_ms + BACKOFF.as_millis() as u64, Ordering::Relaxed)
        };
        let (index, retry_after) = window(now_ms, limit.window_seconds);
        let key = key(&self.namespace, scope, id, index);
        let work = async {
            let mut con = self.connection().await?;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .incr(&key, 1u64)
                .cmd("EXPIRE")
                .arg(&key)
                .arg(limit.window_seconds + 1)
                .arg("NX")
                .ignore();
            let counted: Result<(u64,), _> = pipe.query_async(&mut con).await;
            if counted.is_err() {
                *self.conn.lock().await = None;
            }
            counted
        };
        match tokio::time::timeout(policy.timeout(), work).await {
            Ok(Ok((count,))) => Ok(verdict(count, limit, retry_after)),
            Ok(Err(e)) => {
                failed();
                Err(e.into())
            }
            Err(_) => {
                failed();
                // Drop the (maybe hung) connection, but never wait past the deadline for it:
                // a held slot is another check connecting afresh.
                if let Ok(mut slot) = self.conn.try_lock() {
                    *slot = None;
                }
                Err(LimitError::Timeout(policy.timeout()))
            }
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = crate::redis_conn::multiplexed(&self.client, FAIL_CLOSED_TIMEOUT).await?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_on_their_boundary_and_retry_after_is_the_rest() {
        assert_eq!(window(0, 60), (0, 60));
        assert_eq!(window(59_001, 60), (0, 1));
        assert_eq!(window(59_999, 60), (0, 1));
        assert_eq!(window(60_000, 60), (1, 60));
        assert_eq!(window(61_500, 60), (1, 59));
        // A zero window is treated as one second, never a division by zero.
        assert_eq!(window(1_500, 0), (1, 1));
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_names_it() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let t = &["10.0.0.0/8".parse().unwrap()];
        let xff = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert("x-forwarded-for", v.parse().unwrap());
            h
        };
        // An untrusted peer cannot name another client.
        assert_eq!(
            client_addr(ip("192.0.2.7"), &xff("198.51.100.1"), t),
            ip("192.0.2.7")
        );
        // Behind a trusted proxy: the last untrusted entry (a forged first entry is ignored).
        assert_eq!(
            client_addr(ip("10.0.0.2"), &xff("1.2.3.4, 198.51.100.1, 10.0.0.9"), t),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_addr(ip("10.0.0.2"), &xff("garbage"), t),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_addr(ip("10.0.0.2"), &axum::http::HeaderMap::new(), t),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn the_limit_th_request_passes_and_the_next_is_denied() {
        let l = Limit::per_minute(3);
        assert_eq!(verdict(3, &l, 7), Verdict::Allow);
        assert_eq!(verdict(4, &l, 7), Verdict::Deny { retry_after: 7 });
    }

    #[test]
    fn keys_carry_no_credential_and_limits_check_their_window() {
        let d = digest("manager-token-secret");
        assert_eq!(d.len(), 24);
        assert!(!key("ns/", "api-token", &d, 5).contains("secret"));
        assert_eq!(
            key("traefik", "addr", "127.0.0.1", 5),
            "appproxy:traefik:ratelimit:addr:127.0.0.1:5"
        );
        assert!(Limit::per_minute(1).check("x").is_ok());
        assert!(Limit::OFF.check("x").is_ok());
        let bad = Limit {
            requests: 1,
            window_seconds: 0,
        };
        assert!(bad.check("x").unwrap_err().contains("x.window_seconds"));
    }

    #[tokio::test]
    async fn after_a_failure_checks_fail_at_once_for_the_backoff() {
        // Nothing listens on port 1.
        let l = Limiter::new(redis::Client::open("redis://127.0.0.1:1").unwrap(), "t/");
        let limit = Limit::per_minute(5);
        assert!(matches!(
            l.check("s", "a", &limit, Policy::FailOpen).await,
            Err(LimitError::Redis(_) | LimitError::Timeout(_))
        ));
        let started = std::time::Instant::now();
        assert!(matches!(
            l.check("s", "a", &limit, Policy::FailOpen).await,
            Err(LimitError::Backoff)
        ));
        assert!(started.elapsed() < Duration::from_millis(50));
        // A fail-closed check asks Redis anyway (and finds it down).
        assert!(matches!(
            l.check("s", "a", &limit, Policy::FailClosed).await,
            Err(LimitError::Redis(_))
        ));
    }
}
