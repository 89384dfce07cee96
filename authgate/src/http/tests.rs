//! In-process HTTP tests (`oneshot`, no listener, no Redis or Traefik: the refusals under test
//! all happen before either is reached): the setup refusal matrix with its metric labels, the
//! API-port hand-off, malformed ForwardAuth addresses, HTML or JSON by `Accept`, and the
//! ingest secret. The e2e suite keeps one representative case of each through real Traefik.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

use super::{Gate, app, ingest_app};
use crate::{
    activity::Activity,
    config::Config,
    decision::tests::{PROVIDER_PUBLIC, b64, eddsa, hs256, keys, setup_claims, synced},
    metrics::Metrics,
    revocation::Revocations,
    setup::UseCounter,
};

fn gate(revoked: Arc<Revocations>) -> Arc<Gate> {
    // The setup rate limit off: the refusals under test come before Redis is reached.
    gate_with(
        revoked,
        "[rate_limit]\nsetup_per_address = { requests = 0 }\n",
    )
}

/// A gate whose config ends with `extra`; its Redis (port 9) never answers.
fn gate_with(revoked: Arc<Revocations>, extra: &str) -> Arc<Gate> {
    let cfg: Config = toml::from_str(&format!(
        "[worker]\nauthority = \"w\"\nfrontend_mode = \"port\"\nhostname = \"127.0.0.1\"\n\
         port_range = [1, 2]\n[provider]\nurl = \"http://127.0.0.1:9\"\nworker_token = \"t\"\n\
         [keys]\nprovider_public_key_file = \"/nonexistent\"\ncookie_secret = \"x\"\n\
         [redis]\nurl = \"redis://127.0.0.1:9\"\n\
         [traefik]\napi_url = \"http://127.0.0.1:9\"\nrouter_wait_ms = 50\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\nsecret = \"ingest-secret\"\n{extra}",
    ))
    .expect("test config");
    let redis = redis::Client::open(cfg.redis.url.as_str()).unwrap();
    appproxy_common::tls::install_provider(); // run() does this before any client is built
    Arc::new(Gate {
        activity: Activity::new(),
        plugins: None,
        uses: Arc::new(UseCounter::new(redis.clone(), &cfg.namespace)),
        limiter: Arc::new(appproxy_common::ratelimit::Limiter::new(
            redis,
            &cfg.namespace,
        )),
        cfg: Arc::new(cfg),
        keys: keys(),
        revoked,
        metrics: Metrics::new(),
        traefik: reqwest::Client::new(),
        fast_path: None,
    })
}

async fn get(
    router: axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).map_or_else(
        |_| body.to_string(),
        |v| v["error_code"].as_str().unwrap_or("").to_string(),
    )
}

fn setups(g: &Gate, label: &str) -> u64 {
    g.metrics.setups.with_label_values(&[label]).get()
}

const ORIGIN_HOST: &str = "127.0.0.1:1";

#[tokio::test]
async fn setup_refusals_have_one_status_code_and_label_each() {
    let g = gate(synced());
    let c = Uuid::new_v4();
    let good = setup_claims(c, 1);
    let valid = eddsa(&good);
    let mut expired = good.clone();
    expired["exp"] = json!(1);
    expired["iat"] = json!(0);
    expired["nbf"] = json!(0);
    let mut tampered: Vec<String> = valid.split('.').map(str::to_string).collect();
    let mut evil = good.clone();
    evil["sub"] = json!("mallory");
    tampered[1] = b64(evil.to_string().as_bytes());
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(good.to_string().as_bytes())
    );
    let mut stated = good.clone();
    stated["state"] = json!("a".repeat(64));
    // (method, query, headers, status, code, metric label)
    type Case<'a> = (
        &'a str,
        String,
        &'a [(&'a str, &'a str)],
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        // axum routes HEAD to GET handlers; setup refuses it (other methods never get there).
        (
            "HEAD",
            format!("token={valid}"),
            &[],
            405,
            "E00003",
            "bad_method",
        ),
        ("GET", String::new(), &[], 400, "E20001", "bad_token"),
        (
            "GET",
            format!("token={valid}&token={valid}"),
            &[],
            400,
            "E20001",
            "bad_token",
        ),
        (
            "GET",
            "token=garbage".into(),
            &[],
            401,
            "E20008",
            "bad_token",
        ),
        (
            "GET",
            format!("token={none}"),
            &[],
            401,
            "E20008",
            "bad_token",
        ),
        (
            "GET",
            format!("token={}", hs256(&good, PROVIDER_PUBLIC.as_bytes())),
            &[],
            401,
            "E20008",
            "bad_token",
        ),
        (
            "GET",
            format!("token={}", tampered.join(".")),
            &[],
            401,
            "E20008",
            "bad_token",
        ),
        (
            "GET",
            format!("token={}", eddsa(&expired)),
            &[],
            401,
            "E20008",
            "bad_token",
        ),
        (
            "GET",
            format!("token={valid}"),
            &[("host", "127.0.0.1:2"), ("x-forwarded-proto", "http")],
            400,
            "E20001",
            "wrong_origin",
        ),
        (
            "GET",
            format!("token={valid}"),
            &[("host", ORIGIN_HOST), ("x-forwarded-proto", "https")],
            400,
            "E20001",
            "wrong_origin",
        ),
        (
            "GET",
            format!("token={}", eddsa(&stated)),
            &[("host", ORIGIN_HOST), ("x-forwarded-proto", "http")],
            403,
            "E20010",
            "state_mismatch",
        ),
        // Every check passed; Traefik (not running here) never serves the router in time.
        (
            "GET",
            format!("token={valid}"),
            &[("host", ORIGIN_HOST), ("x-forwarded-proto", "http")],
            503,
            "E10001",
            "not_loaded",
        ),
    ];
    for (method, query, headers, status, code, label) in cases {
        let before = setups(&g, label);
        let mut h = vec![("accept", "application/json")];
        h.extend_from_slice(headers);
        let uri = format!("/_appproxy/setup?{query}");
        let (s, _, body) = get(app(g.clone()), method, &uri, &h).await;
        assert_eq!(s.as_u16(), status, "{method} {query} {headers:?}: {body}");
        if method != "HEAD" {
            assert_eq!(code_of(&body), code, "{method} {query}");
        }
        assert_eq!(setups(&g, label), before + 1, "label {label} counted");
    }
}

#[tokio::test]
async fn setup_fails_closed_when_its_rate_limit_cannot_be_counted() {
    // The default limit is on and this gate's Redis never answers: every setup, on the
    // origin and on the API port, valid link or not, is a 503 with `Retry-After`.
    let g = gate_with(synced(), "");
    let token = eddsa(&setup_claims(Uuid::new_v4(), 1));
    let h = [
        ("host", ORIGIN_HOST),
        ("x-forwarded-proto", "http"),
        ("accept", "application/json"),
    ];
    for path in ["/_appproxy/setup", "/setup"] {
        let (s, headers, body) =
            get(app(g.clone()), "GET", &format!("{path}?token={token}"), &h).await;
        assert_eq!(
            (s.as_u16(), code_of(&body).as_str()),
            (503, "E10001"),
            "{path}"
        );
        assert_eq!(headers["retry-after"], "1");
    }
    assert_eq!(setups(&g, "redis_down"), 2);
}

#[tokio::test]
async fn setup_fails_closed_before_revocations_load_and_for_revoked_users() {
    let c = Uuid::new_v4();
    let token = eddsa(&setup_claims(c, 1));
    let uri = format!("/_appproxy/setup?token={token}");
    let h = [
        ("host", ORIGIN_HOST),
        ("x-forwarded-proto", "http"),
        ("accept", "application/json"),
    ];
    let (s, _, body) = get(app(gate(Revocations::new())), "GET", &uri, &h).await;
    assert_eq!((s.as_u16(), code_of(&body).as_str()), (503, "E10001"));
    let revoked = synced();
    assert!(revoked.apply_event(&format!("u:alice={}", i64::MAX / 2)));
    let (s, _, body) = get(app(gate(revoked)), "GET", &uri, &h).await;
    assert_eq!((s.as_u16(), code_of(&body).as_str()), (401, "E20005"));
}

#[tokio::test]
async fn the_api_port_setup_forwards_to_the_apps_origin_or_hands_off_tcp() {
    let g = gate(synced());
    let c = Uuid::new_v4();
    let token = eddsa(&setup_claims(c, 1));
    let (s, h, _) = get(app(g.clone()), "GET", &format!("/setup?token={token}"), &[]).await;
    assert_eq!(s, StatusCode::FOUND);
    assert_eq!(
        h["location"],
        format!("http://{ORIGIN_HOST}/_appproxy/setup?token={token}")
    );
    assert_eq!(h["cache-control"], "no-store");
    let mut tcp = setup_claims(c, 1);
    tcp["origin"] = json!("tcp://127.0.0.1:30001");
    tcp["redirect"] = json!("");
    let tcp_token = eddsa(&tcp);
    let (s, _, body) = get(
        app(g.clone()),
        "GET",
        &format!("/setup?token={tcp_token}"),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    let url = v["redirect"].as_str().unwrap();
    assert!(
        url.starts_with("http://localhost:45678/start?directTCP=true"),
        "{url}"
    );
    assert!(
        url.contains("gateway=tcp%3A%2F%2F127.0.0.1%3A30001"),
        "{url}"
    );
    assert_eq!(setups(&g, "tcp_handoff"), 1);
}

#[tokio::test]
async fn forward_auth_refuses_malformed_addresses_and_answers_browsers_in_html() {
    let g = gate(synced());
    let c = Uuid::new_v4();
    for uri in [
        format!("/auth/{c}"),
        format!("/auth/{c}?g=x&m=interactive"),
        format!("/auth/{c}?g=1&m=other"),
        format!("/auth/{c}?g=1&g=2&m=interactive"),
        "/auth/not-a-uuid?g=1&m=interactive".to_string(),
    ] {
        let (s, _, body) = get(
            app(g.clone()),
            "GET",
            &uri,
            &[("accept", "application/json")],
        )
        .await;
        assert_eq!(
            (s.as_u16(), code_of(&body).as_str()),
            (400, "E20001"),
            "{uri}"
        );
    }
    let forwarded = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-host", ORIGIN_HOST),
        ("x-forwarded-uri", "/"),
        ("x-forwarded-proto", "http"),
    ];
    let uri = format!("/auth/{c}?g=1&m=interactive");
    let mut h = forwarded.to_vec();
    h.push(("accept", "text/html"));
    let (s, headers, body) = get(app(g.clone()), "GET", &uri, &h).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        body.contains("This browser has no valid access to this app."),
        "{body}"
    );
    let mut h = forwarded.to_vec();
    h.push(("accept", "application/json"));
    let (_, _, body) = get(app(g.clone()), "GET", &uri, &h).await;
    assert_eq!(code_of(&body), "E20004");
    assert_eq!(
        g.metrics
            .decisions
            .with_label_values(&["deny", "no_cookie"])
            .get(),
        2
    );
    assert_eq!(
        g.metrics
            .decisions
            .with_label_values(&["deny", "bad_address"])
            .get(),
        5
    );
}

#[tokio::test]
async fn ingest_wants_its_secret_and_an_otlp_body() {
    let g = gate(synced());
    let post = |secret: Option<&'static str>, body: &'static [u8]| {
        let mut req = Request::builder().method("POST").uri("/v1/logs");
        if let Some(s) = secret {
            req = req.header(crate::config::INGEST_SECRET_HEADER, s);
        }
        ingest_app(g.clone()).oneshot(req.body(Body::from(body)).unwrap())
    };
    for secret in [None, Some(""), Some("ingest-secre"), Some("ingest-secret!")] {
        let resp = post(secret, b"").await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{secret:?}");
    }
    let resp = post(Some("ingest-secret"), b"\xff\xff not protobuf")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = post(Some("ingest-secret"), b"").await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "an empty export is a valid one"
    );
    let (s, _, _) = get(app(g.clone()), "POST", "/v1/logs", &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "not on the public listener");
}
