//! `/setup`: why a setup is refused (one table of statuses, codes and messages), the pure
//! origin and browser checks, and the I/O around them: counting a setup token's uses in Redis
//! (fail closed) and waiting until the co-located Traefik serves the circuit's router at the
//! token's generation.

use std::time::Duration;

use appproxy_common::{auth::redis_keys, names, redis_conn};
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio::sync::OnceCell;
use uuid::Uuid;

/// Why a setup (`/_appproxy/setup`, `/setup`) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupRefusal {
    /// Not a GET (axum also routes HEAD to GET handlers).
    BadMethod,
    /// No `token` parameter, or more than one.
    MissingToken,
    /// The token does not verify (forged, expired, another key, another type).
    InvalidLink,
    /// The revocation set was never loaded: fail closed.
    NotReady,
    /// The link's user or login session was revoked after it was minted.
    Revoked,
    /// The link is used on another origin than the one it was minted for.
    WrongOrigin,
    /// The link is bound to a state nonce this browser does not hold.
    StateMismatch,
    /// Traefik does not serve the circuit at the link's generation yet.
    NotLoaded,
    /// The link's uses are spent.
    UsedUp,
    /// Uses cannot be counted (Redis down): fail closed.
    RedisDown,
    /// The target of the redirect cannot be a `Location`.
    BadRedirect,
    /// Too many setups from this client address: retry after this many seconds.
    RateLimited(u64),
}

impl SetupRefusal {
    /// Status, error code and message: the one table.
    pub fn parts(self) -> (u16, &'static str, &'static str) {
        use SetupRefusal::*;
        match self {
            BadMethod => (405, "E00003", "Method not allowed."),
            MissingToken => (400, "E20001", "Missing or repeated token parameter."),
            InvalidLink => (401, "E20008", "This app link is invalid or has expired."),
            NotReady => (503, "E10001", "Auth service is starting; retry shortly."),
            Revoked => (
                401,
                "E20005",
                "Access to this app was revoked (logged out).",
            ),
            WrongOrigin => (400, "E20001", "This app link belongs to another address."),
            StateMismatch => (
                403,
                "E20010",
                "This app link was started in another browser.",
            ),
            NotLoaded => (503, "E10001", "The app is not reachable yet; retry."),
            UsedUp => (
                401,
                "E20008",
                "This app link was already used; open the app again.",
            ),
            RedisDown => (503, "E10001", "Auth storage unavailable; retry."),
            BadRedirect => (400, "E20001", "Bad redirect target."),
            RateLimited(_) => (
                429,
                "E10002",
                "Too many app links opened from this address; retry shortly.",
            ),
        }
    }

    /// Metric label (`setups_total{result}`).
    pub fn label(self) -> &'static str {
        use SetupRefusal::*;
        match self {
            BadMethod => "bad_method",
            MissingToken | InvalidLink | BadRedirect => "bad_token",
            NotReady => "not_ready",
            Revoked => "revoked",
            WrongOrigin => "wrong_origin",
            StateMismatch => "state_mismatch",
            NotLoaded => "not_loaded",
            UsedUp => "used_up",
            RedisDown => "redis_down",
            RateLimited(_) => "rate_limited",
        }
    }

    pub fn error(self) -> crate::error::GateError {
        let (status, code, msg) = self.parts();
        let e = crate::error::GateError::new(status, code, msg);
        match self {
            SetupRefusal::RateLimited(secs) => e.with_retry_after(secs),
            _ => e,
        }
    }
}

/// Host (and port, without the scheme's default) of an origin or a Host header, lowercase.
fn authority(scheme_https: bool, hostport: &str) -> String {
    let h = hostport.trim().trim_end_matches('.').to_ascii_lowercase();
    let default = if scheme_https { ":443" } else { ":80" };
    h.strip_suffix(default).map(str::to_string).unwrap_or(h)
}

/// Name of the state-nonce cookie (`__Host-` under TLS).
pub const STATE_COOKIE: &str = "appproxy_state";

/// Whether a setup link may set its cookie here: the request reached the link's own origin
/// (scheme by `X-Forwarded-Proto`, host and port by `Host`), and a link bound to a state
/// nonce comes from the browser holding it. Pure.
pub fn check_origin(
    origin: &str,
    state: Option<&str>,
    host: &str,
    proto: &str,
    jar: &crate::cookie::Jar,
) -> Result<(), SetupRefusal> {
    let https = origin.starts_with("https://");
    let origin_auth = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
    let proto_ok = proto == if https { "https" } else { "http" };
    if !proto_ok || authority(https, host) != authority(https, origin_auth) {
        return Err(SetupRefusal::WrongOrigin);
    }
    if let Some(want) = state
        && !jar
            .values(STATE_COOKIE)
            .iter()
            .any(|v| appproxy_common::auth::state_hash(v) == want)
    {
        return Err(SetupRefusal::StateMismatch);
    }
    Ok(())
}

/// Path mode: the link runs only under its circuit's prefix, which the worker's Traefik strips
/// and names in `X-Forwarded-Prefix` (replacing any the client sent). Links of other modes
/// carry no prefix and ignore the header.
pub fn check_prefix(path: Option<&str>, forwarded_prefix: &str) -> Result<(), SetupRefusal> {
    match path {
        Some(p) if p != forwarded_prefix => Err(SetupRefusal::WrongOrigin),
        _ => Ok(()),
    }
}

/// `Set-Cookie` of the state nonce (`__Host-` and `Secure` under TLS).
pub fn state_cookie(https: bool, value: &str, max_age: i64) -> String {
    let (prefix, secure) = if https {
        ("__Host-", "; Secure")
    } else {
        ("", "")
    };
    format!(
        "{prefix}{STATE_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SetupIoError {
    #[error("Redis unreachable: {0}")]
    Redis(String),
    #[error("Traefik has not loaded the circuit yet")]
    NotLoaded,
}

/// How long counting a link's use may wait for Redis before the setup is refused (503).
pub const USE_COUNT_TIMEOUT: Duration = Duration::from_secs(2);

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
                .get_or_try_init(|| redis_conn::manager(&self.client, USE_COUNT_TIMEOUT))
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
        match tokio::time::timeout(USE_COUNT_TIMEOUT, work).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::Jar;

    #[test]
    fn the_origin_check_compares_scheme_host_and_port() {
        let none = Jar::default();
        let ok = |origin, host, proto| check_origin(origin, None, host, proto, &none);
        assert_eq!(ok("http://a.test:8080", "a.test:8080", "http"), Ok(()));
        assert_eq!(
            ok("https://a.test", "A.Test:443", "https"),
            Ok(()),
            "default port, case"
        );
        assert_eq!(
            ok("http://a.test", "a.test.", "http"),
            Ok(()),
            "trailing dot"
        );
        for (origin, host, proto) in [
            ("http://a.test:8080", "a.test:8081", "http"),
            ("http://a.test", "b.test", "http"),
            ("https://a.test", "a.test", "http"),
            ("http://a.test", "a.test", "https"),
            ("http://a.test", "a.test", ""),
        ] {
            assert_eq!(
                ok(origin, host, proto),
                Err(SetupRefusal::WrongOrigin),
                "{origin} {host} {proto}"
            );
        }
    }

    #[test]
    fn a_state_bound_link_needs_the_browsers_nonce() {
        let want = appproxy_common::auth::state_hash("nonce-1");
        let check = |cookie: &str| {
            let jar = Jar::parse(&[cookie]).unwrap();
            check_origin("http://a.test", Some(&want), "a.test", "http", &jar)
        };
        assert_eq!(check("appproxy_state=nonce-1"), Ok(()));
        assert_eq!(
            check("appproxy_state=other; x=y"),
            Err(SetupRefusal::StateMismatch)
        );
        assert_eq!(check("x=nonce-1"), Err(SetupRefusal::StateMismatch));
    }

    #[test]
    fn every_refusal_has_a_distinct_message_and_an_error_status() {
        use SetupRefusal::*;
        let all = [
            BadMethod,
            MissingToken,
            InvalidLink,
            NotReady,
            Revoked,
            WrongOrigin,
            StateMismatch,
            NotLoaded,
            UsedUp,
            RedisDown,
            BadRedirect,
            RateLimited(7),
        ];
        let messages: std::collections::BTreeSet<_> = all.iter().map(|r| r.parts().2).collect();
        assert_eq!(messages.len(), all.len());
        assert!(
            all.iter()
                .all(|r| r.parts().0 >= 400 && r.error().status.as_u16() == r.parts().0)
        );
    }
}
