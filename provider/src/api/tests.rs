//! In-process API tests: the router over a real SQLite store, driven with `oneshot` (no
//! listener, no etcd server: the etcd client connects lazily and the reconciler is never run,
//! so nudges only mark work). The bad-input and forged-credential matrices live here and take
//! milliseconds; the e2e suite keeps one representative case of each through real Traefik.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

use super::{AppState, Shared, app};
use crate::{
    activity::ActivityStore,
    config::Config,
    etcd::{Kv, Quorum},
    leader::Leadership,
    metrics::Metrics,
    reconcile::Reconciler,
    revoke::Revoker,
    store::Store,
    tokens::Signer,
};

/// Test-only Ed25519 key (the same one authgate's decision tests verify with).
const SIGNING_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIMA8pPHmQ0ZLTLehI3SKiyo1xt8fHEKkIgHYm3F7G9MW
-----END PRIVATE KEY-----
";
const MANAGER: &str = "manager-token-for-api-tests";

struct Api {
    router: axum::Router,
    state: AppState,
    dir: std::path::PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn api() -> Api {
    api_with("", None).await
}

/// An API with `extra` appended to its config and rate limits counted in the Redis at
/// `redis_url`.
async fn api_with(extra: &str, redis_url: Option<&str>) -> Api {
    let dir = std::env::temp_dir().join(format!("appproxy-api-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("signing.pem");
    std::fs::write(&key, SIGNING_KEY).unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.join("db").display());
    let config: Config = toml::from_str(&format!(
        "[secrets]\nmanager_token = \"{MANAGER}\"\nsigning_key_file = \"{}\"\n\
         [database]\nurl = \"{db}\"\n[etcd]\nendpoints = [\"http://127.0.0.1:9\"]\n{extra}",
        key.display()
    ))
    .expect("test config");
    let store = Store::connect(&db, 4).await.unwrap();
    let kv = Kv::connect(&config.etcd).await.expect("lazy etcd client");
    let metrics = Metrics::new();
    let reconciler = Reconciler::new(
        store.clone(),
        kv.clone(),
        config.etcd.namespace.clone(),
        &crate::config::ReconcileConfig {
            min_interval_ms: 10,
            ..config.reconcile.clone()
        },
        metrics.clone(),
    );
    let state = AppState::new(Shared {
        signer: Signer::from_file(&key.display().to_string(), 60).unwrap(),
        revoker: Revoker::new(None, &config.etcd.namespace),
        activity: ActivityStore::new(None),
        store,
        reconciler,
        metrics,
        config: Arc::new(config),
        etcd: kv,
        leadership: Leadership::new("test".into()).1,
        quorum: Quorum::default(),
        limiter: redis_url.map(|u| {
            appproxy_common::ratelimit::Limiter::new(redis::Client::open(u).unwrap(), "t/")
        }),
    });
    Api {
        router: app(state.clone()),
        state,
        dir,
    }
}

impl Api {
    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("x-backendai-token", t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, v, parts.headers)
    }

    async fn manager(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        let (s, v, _) = self
            .call(Some(MANAGER), method, path, body.as_deref(), &[])
            .await;
        (s, v)
    }

    /// Register a port worker with `ports` ports (as the manager may).
    async fn port_worker(&self, authority: &str, ports: u16) -> Value {
        let spec = json!({
            "authority": authority, "frontend_mode": "port", "protocol": "http",
            "hostname": "127.0.0.1", "api_port": 10201,
            "port_range": [30000, 30000 + ports - 1],
        });
        let (s, v) = self.manager(Method::PUT, "/api/worker", Some(spec)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    async fn circuit_count(&self) -> usize {
        self.state
            .store
            .list_circuits(&Default::default())
            .await
            .unwrap()
            .len()
    }
}

fn create_body(worker: &str) -> Value {
    json!({
        "app": "jupyter", "user_id": Uuid::new_v4(), "worker": worker,
        "routes": [{ "session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1", "kernel_port": 8888 }],
    })
}

#[tokio::test]
async fn bad_input_is_a_backendai_error_and_changes_nothing() {
    let api = api().await;
    api.port_worker("w1", 4).await;
    let route = |extra: Value| {
        let mut r = json!({ "session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1", "kernel_port": 8888 });
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let base = create_body("w1");
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(&str, String, StatusCode)> = vec![
        ("not JSON", "{".into(), StatusCode::BAD_REQUEST),
        (
            "unknown field",
            with("evil", json!(1)).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty app",
            with("app", json!("")).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "control char app",
            with("app", json!("a\nb")).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "no routes",
            with("routes", json!([])).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad host",
            with("routes", json!([route(json!({"kernel_host": "a b"}))])).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "port 0",
            with("routes", json!([route(json!({"kernel_port": 0}))])).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "port 70000",
            with("routes", json!([route(json!({"kernel_port": 70000}))])).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "NaN-ish ratio",
            with("routes", json!([route(json!({"traffic_ratio": -1.0}))])).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad CIDR",
            with("allowed_client_ips", json!("10.0.0.0/99")).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad origin",
            with("allowed_origins", json!(["javascript:alert(1)"])).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "tcp route on http circuit",
            with("routes", json!([route(json!({"protocol": "tcp"}))])).to_string(),
            StatusCode::from_u16(400).unwrap(),
        ),
        (
            "bad protocol",
            with("protocol", json!("gopher")).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "no such worker",
            with("worker", json!("nope")).to_string(),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "oversized body",
            format!("{{\"app\": \"{}\"}}", "x".repeat(2 << 20)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (case, body, want) in cases {
        let (s, v, _) = api
            .call(
                Some(MANAGER),
                Method::POST,
                "/v2/circuits",
                Some(&body),
                &[],
            )
            .await;
        assert_eq!(s, want, "{case}: {v}");
        assert!(
            v["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("https://api.backend.ai/probs/")),
            "{case}: {v}"
        );
        assert!(v["error_code"].is_string(), "{case}: {v}");
    }
    for path in ["/v2/circuits/not-a-uuid", "/api/circuit/1234"] {
        let (s, v) = api.manager(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
    }
    let (s, _) = api.manager(Method::GET, "/no/such/route", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.manager(Method::PATCH, "/v2/circuits", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(api.circuit_count().await, 0, "bad input changed nothing");
}

#[tokio::test]
async fn forged_and_foreign_credentials_are_refused() {
    let api = api().await;
    api.port_worker("w1", 4).await;
    api.port_worker("w2", 4).await;
    let (s, v) = api
        .manager(
            Method::POST,
            "/v2/workers/credentials",
            Some(json!({"authority": "w1"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cred = v["credential"].as_str().unwrap().to_string();
    let last = if cred.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &cred[..cred.len() - 1]);
    let w2 = api
        .state
        .store
        .worker_by_authority("w2")
        .await
        .unwrap()
        .unwrap()
        .id;
    for t in [
        None,
        Some(""),
        Some("manager-token-for-api-test"),
        Some(forged.as_str()),
        Some("apw1.x.y"),
        Some(cred.as_str()),
    ] {
        let (s, _, _) = api.call(t, Method::GET, "/v2/circuits", None, &[]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "manager route with {t:?}");
    }
    for t in [None, Some(forged.as_str()), Some("apw1.x.y")] {
        let (s, _, _) = api
            .call(t, Method::GET, &format!("/api/worker/{w2}"), None, &[])
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "worker route with {t:?}");
    }
    // A real credential of w1 acts for w1 only.
    let (s, _, _) = api
        .call(
            Some(&cred),
            Method::GET,
            &format!("/api/worker/{w2}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = api
        .call(
            Some(&cred),
            Method::PATCH,
            &format!("/api/worker/{w2}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let spec = json!({ "authority": "w2", "frontend_mode": "port", "protocol": "http",
                       "hostname": "127.0.0.1", "api_port": 10201, "port_range": [30000, 30003],
                       "authgate_url": "http://127.0.0.1:1" });
    let (s, _, _) = api
        .call(
            Some(&cred),
            Method::PUT,
            "/api/worker",
            Some(&spec.to_string()),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let w2_now = api
        .state
        .store
        .worker_by_authority("w2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w2_now.authgate_url, None, "w2 unchanged");
}

/// A full port range is Backend.AI's `503 worker-not-available`; a taken preferred port is
/// `409 port-not-available` (one error mapping, at the edge).
#[tokio::test]
async fn allocation_failures_map_to_backendai_errors() {
    let api = api().await;
    api.port_worker("w1", 2).await;
    for _ in 0..2 {
        let (s, v) = api
            .manager(Method::POST, "/v2/circuits", Some(create_body("w1")))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = api
        .manager(Method::POST, "/v2/circuits", Some(create_body("w1")))
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(
        v["type"],
        "https://api.backend.ai/probs/appproxy/worker-not-available"
    );
    let (_, list) = api.manager(Method::GET, "/v2/circuits", None).await;
    let first = list["circuits"][0]["id"].as_str().unwrap().to_string();
    let port = list["circuits"][0]["port"].as_u64().unwrap();
    let (s, _) = api
        .manager(Method::DELETE, &format!("/v2/circuits/{first}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut taken = create_body("w1");
    taken["port"] = json!(if port == 30000 { 30001 } else { 30000 });
    let (s, v) = api.manager(Method::POST, "/v2/circuits", Some(taken)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        v["type"],
        "https://api.backend.ai/probs/appproxy/port-not-available"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let api = api().await;
    let (_, _, h) = api
        .call(
            None,
            Method::GET,
            "/status",
            None,
            &[("x-request-id", "abc-123.X_y")],
        )
        .await;
    assert_eq!(h["x-request-id"], "abc-123.X_y", "a sane id is taken");
    for evil in ["has space", "<script>", "a\tb", &"x".repeat(65)] {
        let (_, _, h) = api
            .call(
                None,
                Method::GET,
                "/status",
                None,
                &[("x-request-id", evil)],
            )
            .await;
        let id = h["x-request-id"].to_str().unwrap();
        assert_ne!(id, evil);
        assert_eq!(id.len(), 32, "minted: {id}");
    }
    let (_, _, h) = api.call(None, Method::GET, "/status", None, &[]).await;
    assert_eq!(h["x-request-id"].len(), 32);
    assert_eq!(h["server"], "BackendAI");
}

/// A `Write` into a shared buffer, for capturing log output.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Grant ids are credentials: the request span records the matched route template and the
/// request id, never the raw path.
#[tokio::test]
async fn the_request_span_names_the_route_not_the_path() {
    let api = api().await;
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::NEW)
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    // A global subscriber interested in every callsite (it records nothing): without one, a
    // parallel test's thread can cache "nobody wants this" for the request span's callsite
    // while no scoped subscriber exists, and this test's subscriber never sees the span (seen
    // once in a full run even with the interest cache rebuilt).
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let grant = Uuid::new_v4();
    let path = format!(
        "/v2/proxy/{grant}/{}/add?app=x&protocol=http",
        Uuid::new_v4()
    );
    api.call(None, Method::GET, &path, None, &[("x-request-id", "req-1")])
        .await;
    let logged = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("route=/v2/proxy/{token}/{session_id}/add"),
        "{logged}"
    );
    assert!(logged.contains("id=req-1"), "{logged}");
    assert!(
        !logged.contains(&grant.to_string()),
        "grant id logged: {logged}"
    );
}

/// CORS per route group: the launch routes answer any origin (preflight 204), the management
/// API none by default (its preflight is refused, its answers carry no CORS header).
#[tokio::test]
async fn preflights_are_answered_per_route_group() {
    let api = api().await;
    let webui = ("origin", "https://webui.example.com");
    let (s, _, h) = api
        .call(
            None,
            Method::OPTIONS,
            "/v2/proxy/auth?token=x",
            None,
            &[webui, ("access-control-request-method", "GET")],
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-backendai-token")
    );
    let (s, _, h) = api
        .call(
            None,
            Method::OPTIONS,
            "/v2/circuits",
            None,
            &[webui, ("access-control-request-method", "POST")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(h.get("access-control-allow-origin").is_none());
    let (s, _, h) = api
        .call(Some(MANAGER), Method::GET, "/v2/circuits", None, &[webui])
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");
    // OPTIONS without a preflight's headers is not a preflight: still 405.
    let (s, _, _) = api
        .call(None, Method::OPTIONS, "/v2/circuits", None, &[])
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_dead_redis_lets_api_requests_through_and_counts_them() {
    // Nothing listens on port 1: every check fails at once and the request goes through.
    let api = api_with(
        "[rate_limit]\napi_per_token = { requests = 1 }\n",
        Some("redis://127.0.0.1:1"),
    )
    .await;
    for _ in 0..3 {
        let (s, _) = api.manager(Method::GET, "/v2/circuits", None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let unchecked = api
        .state
        .metrics
        .rate_limit_unavailable
        .with_label_values(&["api-token"])
        .get();
    assert_eq!(unchecked, 3);
}

#[tokio::test]
async fn listings_stream_page_by_page_and_stay_whole() {
    let api = api().await;
    let spec = json!({
        "authority": "wide", "frontend_mode": "wildcard", "protocol": "http",
        "hostname": "apps.example.com", "api_port": 10201,
        "wildcard_domain": ".apps.example.com",
    });
    let (s, v) = api.manager(Method::PUT, "/api/worker", Some(spec)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // More than two pages (256 each), so the stream joins three chunks.
    let n = 2 * 256 + 7;
    let mut ids = Vec::new();
    for _ in 0..n {
        let (s, v) = api
            .manager(Method::POST, "/v2/circuits", Some(create_body("wide")))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let (s, v, h) = api
        .call(Some(MANAGER), Method::GET, "/v2/circuits", None, &[])
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/json");
    let listed: Vec<String> = v["circuits"]
        .as_array()
        .expect("a whole JSON document")
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ids, "every circuit once, in creation order");
    assert!(
        v["circuits"][0]["url"]
            .as_str()
            .unwrap()
            .ends_with(".apps.example.com")
    );
    // An unknown worker lists nothing; a filter still applies across pages.
    let (_, v, _) = api
        .call(
            Some(MANAGER),
            Method::GET,
            "/v2/circuits?worker=nope",
            None,
            &[],
        )
        .await;
    assert_eq!(v, json!({"circuits": []}));
    let (_, v, _) = api
        .call(
            Some(MANAGER),
            Method::GET,
            "/v2/circuits?worker=wide",
            None,
            &[],
        )
        .await;
    assert_eq!(v["circuits"].as_array().unwrap().len(), n);
}

/// Every operation of the OpenAPI document reaches its handler (the router's fallbacks answer
/// nothing the document names), with or without a token, whatever the body.
#[tokio::test]
async fn every_operation_of_the_document_is_served() {
    let api = api().await;
    let doc = super::document();
    let mut n = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete: Vec<String> = (path.split('/'))
            .map(|s| match s.starts_with('{') {
                true => Uuid::new_v4().to_string(),
                false => s.to_string(),
            })
            .collect();
        let concrete = concrete.join("/");
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for (token, body) in [
                (None, None),
                (None, Some("{}")),
                (Some(MANAGER), Some("{}")),
            ] {
                let (status, v, _) = api.call(token, m.clone(), &concrete, body, &[]).await;
                let kind = v["type"].as_str().unwrap_or("");
                assert!(
                    !kind.ends_with("/url-not-found") && !kind.ends_with("/method-not-allowed"),
                    "{method} {path} ({concrete}) is not served: {status} {v}"
                );
                n += 1;
            }
        }
    }
    assert!(n >= 90, "{n}");
}
