//! authgate end to end, through a real Traefik, with an echo backend that records every
//! request it receives: the launch flow, cookies, WebSockets, the checklist of
//! `security-and-reliability.md` §6A (A1–A12) and B2, revocation, fail-closed behaviour, and
//! the worker role (register, heartbeat, deregister).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use e2e::{Db, GatedWorker, Stack, WorkerSpec, backends::HttpEcho, eventually, patience};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use redis::AsyncCommands;
use reqwest::{Method, header::HeaderMap};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// One gated port-mode worker, an echo backend, a client that never follows redirects.
struct Env {
    stack: Stack,
    worker: GatedWorker,
    echo: HttpEcho,
    http: reqwest::Client,
}

async fn env_with(spec: WorkerSpec) -> Env {
    let stack = Stack::start(Db::Sqlite).await;
    let worker = stack.start_gated_worker(spec).await;
    let echo = HttpEcho::start("app").await;
    let http = e2e::no_redirect_client();
    Env {
        stack,
        worker,
        echo,
        http,
    }
}

async fn env() -> Env {
    env_with(WorkerSpec::ports("gw-1", 4)).await
}

/// A launched circuit.
struct Launch {
    id: Uuid,
    url: String,
    setup_url: String,
    user: Uuid,
    generation: i64,
}

impl Env {
    async fn launch_with(&self, user: Uuid, extra: Value) -> Launch {
        let mut extra = extra;
        if extra.get("app").is_none() {
            extra["app"] = json!("jupyter");
        }
        let v = self
            .stack
            .create_circuit(
                &self.worker.spec.authority,
                user,
                Uuid::new_v4(),
                self.echo.port,
                &extra,
            )
            .await;
        let l = Launch {
            id: v["id"].as_str().unwrap().parse().unwrap(),
            url: v["url"].as_str().unwrap().to_string(),
            setup_url: v["setup_url"].as_str().expect("setup_url").to_string(),
            user,
            generation: v["circuit"]["generation"].as_i64().expect("generation"),
        };
        self.wait_router(l.id).await;
        l
    }

    async fn launch(&self) -> Launch {
        self.launch_with(Uuid::new_v4(), json!({})).await
    }

    /// A fresh setup link for `l`'s user.
    async fn launch_link(&self, l: &Launch) -> String {
        let (s, v) = self
            .stack
            .manager(
                Method::POST,
                &format!("/v2/circuits/{}/setup-link", l.id),
                Some(&json!({"user_id": l.user})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["setup_url"].as_str().unwrap().to_string()
    }

    /// Wait until Traefik serves the circuit's router.
    async fn wait_router(&self, id: Uuid) {
        let url = format!(
            "http://127.0.0.1:{}/api/http/routers/ap-{id}@etcd",
            self.worker.traefik.api_port
        );
        eventually("router loaded", patience(), || async {
            let r = self.http.get(&url).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    /// GET with headers; status, headers, body.
    async fn get(&self, url: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, String) {
        e2e::http_get(&self.http, url, headers).await
    }

    /// Run the setup link; returns the `name=value` of the cookie it set.
    async fn cookie(&self, l: &Launch) -> String {
        let (status, h, body) = self.get(&l.setup_url, &[]).await;
        assert_eq!(status, 302, "setup: {body}\n{}", self.worker.authgate_log());
        e2e::cookie_pair(&e2e::session_set_cookie(&h))
    }

    /// Every request the echo backend saw must be free of our credentials.
    fn assert_backend_clean(&self, secrets: &[&str]) {
        for r in self.echo.requests() {
            assert!(!r.uri.contains("token="), "token in backend URI: {}", r.uri);
            for (k, v) in &r.headers {
                assert!(
                    !v.contains("appproxy_"),
                    "our cookie reached the app: {k}: {v}"
                );
                for s in secrets {
                    assert!(!v.contains(s), "credential reached the app in {k}: {v}");
                }
            }
        }
    }
}

fn token_of(setup_url: &str) -> String {
    setup_url.split_once("token=").unwrap().1.to_string()
}

fn origin_of(url: &str) -> &str {
    url.trim_end_matches('/')
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Sign arbitrary claims with the stack's provider key (to forge edge cases).
fn provider_sign(stack: &Stack, claims: &Value) -> String {
    let pem = std::fs::read(&stack.signing_key.0).unwrap();
    let key = EncodingKey::from_ed_pem(&pem).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap()
}

fn setup_claims(l: &Launch) -> Value {
    let t = now();
    let generation = l.generation;
    json!({"typ": "ap-setup", "iss": "appproxy-provider", "sub": l.user.to_string(),
           "aud": format!("{}.{generation}", l.id), "cid": l.id, "generation": generation,
           "origin": origin_of(&l.url), "redirect": "/", "ls": "", "iat": t, "nbf": t,
           "exp": t + 60, "jti": Uuid::new_v4().simple().to_string()})
}

/// Raw WebSocket handshake plus one masked text frame; returns the status line and the
/// echoed payload (if the upgrade succeeded).
async fn websocket(port: u16, cookie: Option<&str>) -> (String, Option<String>) {
    websocket_with(port, cookie, &[]).await
}

/// [`websocket`] with extra request headers (`Origin`, …).
async fn websocket_with(
    port: u16,
    cookie: Option<&str>,
    extra: &[(&str, &str)],
) -> (String, Option<String>) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    headers.extend_from_slice(extra);
    e2e::websocket_echo(&mut s, &format!("127.0.0.1:{port}"), &headers).await
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_flow_sets_cookie_passes_websocket_and_leaks_no_credential() {
    let e = env().await;
    let l = e
        .launch_with(
            Uuid::new_v4(),
            json!({"login_session_token": "webui-session-1", "redirect": "/lab?x=1"}),
        )
        .await;
    // No credential: 401 (HTML for browsers, JSON for API clients), never a redirect.
    let (s, h, body) = e.get(&l.url, &[("accept", "text/html")]).await;
    assert_eq!(s, 401, "{body}");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(body.contains("open the app again"), "{body}");
    assert!(h.get("location").is_none());
    let (s, h, body) = e.get(&l.url, &[("accept", "application/json")]).await;
    assert_eq!(s, 401);
    assert!(h["content-type"].to_str().unwrap().contains("json"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error_code"], "E20004", "{v}");
    assert_eq!(e.echo.count(), 0);

    // Setup: 302 to the relative landing path, cookie with the right attributes.
    let (s, h, _) = e.get(&l.setup_url, &[]).await;
    assert_eq!(s, 302, "{}", e.worker.authgate_log());
    assert_eq!(h["location"], "/lab?x=1");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let sc = e2e::session_set_cookie(&h);
    let name = format!("appproxy_{}", l.id.simple());
    assert!(sc.starts_with(&format!("{name}=")), "{sc}");
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age="] {
        assert!(sc.contains(attr), "{attr} missing: {sc}");
    }
    assert!(!sc.to_ascii_lowercase().contains("domain"), "{sc}");
    let cookie = e2e::cookie_pair(&sc);
    let value = cookie.split_once('=').unwrap().1.to_string();

    // The app: our cookie removed, the user's own cookies kept.
    let landing = format!("{}/lab?x=1", origin_of(&l.url));
    let (s, _, body) = e
        .get(
            &landing,
            &[
                ("cookie", &format!("{cookie}; theme=dark")),
                ("referer", &l.setup_url),
            ],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("path=/lab?x=1"), "{body}");
    let seen = e.echo.requests();
    let last = seen.last().unwrap();
    let cookies: Vec<&String> = last
        .headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(cookies, vec!["theme=dark"]);
    // Only our cookie: the app sees no Cookie header at all.
    let (s, _, _) = e.get(&landing, &[("cookie", &cookie)]).await;
    assert_eq!(s, 200);
    assert!(
        !e.echo
            .requests()
            .last()
            .unwrap()
            .headers
            .iter()
            .any(|(k, _)| k == "cookie")
    );

    // WebSocket: upgrade with the cookie passes and echoes; without it is refused.
    let port = port_of(&l.url);
    let (status, echoed) = websocket(port, Some(&cookie)).await;
    assert!(status.contains("101"), "{status}");
    assert_eq!(echoed.as_deref(), Some("hi over ws"));
    let before = e.echo.count();
    let (status, _) = websocket(port, None).await;
    assert!(status.contains("401"), "{status}");
    assert_eq!(e.echo.count(), before, "refused upgrade reached the app");

    // Backend.AI's /setup on the API port sends the browser to the app's own origin.
    let token = token_of(&l.setup_url);
    let (s, h, _) = e
        .get(&format!("{}/setup?token={token}", e.worker.base()), &[])
        .await;
    assert_eq!(s, 302);
    assert_eq!(h["location"].to_str().unwrap(), l.setup_url);

    e.assert_backend_clean(&[&value, &token, "webui-session-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_a2_a4_forged_expired_and_reused_setup_tokens() {
    let mut spec = WorkerSpec::ports("gw-a4", 4);
    spec.setup_max_uses = 1;
    let e = env_with(spec).await;
    let l = e.launch().await;
    let other = e.launch().await;
    let origin = origin_of(&l.url);
    let setup = |t: &str| format!("{origin}/_appproxy/setup?token={t}");

    // A1/A2: forged, tampered, expired, wrong circuit, wrong kind.
    let good = setup_claims(&l);
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 600);
    expired["iat"] = json!(now() - 700);
    expired["nbf"] = json!(now() - 700);
    let mut future = good.clone();
    future["nbf"] = json!(now() + 600);
    let mut wrong_gen = good.clone();
    wrong_gen["generation"] = json!(l.generation + 7);
    let mut as_cookie = good.clone();
    as_cookie["typ"] = json!("ap-session");
    let mut str_exp = good.clone();
    str_exp["exp"] = json!("99999999999");
    let pub_pem = std::fs::read(&e.stack.signing_key.1).unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(&pub_pem),
    )
    .unwrap();
    let (other_priv, _) = e2e::ed25519_pair(e.stack.dir.path());
    let foreign = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &good,
        &EncodingKey::from_ed_pem(&std::fs::read(other_priv).unwrap()).unwrap(),
    )
    .unwrap();
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(good.to_string().as_bytes())
    );
    let valid = provider_sign(&e.stack, &good);
    let tampered = {
        let mut p: Vec<String> = valid.split('.').map(str::to_string).collect();
        let mut evil = good.clone();
        evil["sub"] = json!("mallory");
        p[1] = b64(evil.to_string().as_bytes());
        p.join(".")
    };
    let forged = [
        ("alg none", none),
        ("HS256 with the public key", confused),
        ("other Ed25519 key", foreign),
        ("tampered payload", tampered),
        ("expired", provider_sign(&e.stack, &expired)),
        ("nbf in the future", provider_sign(&e.stack, &future)),
        (
            "aud/generation mismatch",
            provider_sign(&e.stack, &wrong_gen),
        ),
        ("cookie typ", provider_sign(&e.stack, &as_cookie)),
        ("exp as string", provider_sign(&e.stack, &str_exp)),
        ("garbage", "not.a.jwt".to_string()),
    ];
    for (what, t) in &forged {
        let (s, h, _) = e.get(&setup(t), &[]).await;
        assert!(s == 401 || s == 400, "{what}: {s}");
        assert!(h.get("set-cookie").is_none(), "{what} set a cookie");
    }
    // A token for another circuit, on this circuit's origin: refused.
    let (s, h, _) = e.get(&setup(&token_of(&other.setup_url)), &[]).await;
    assert_eq!(s, 400);
    assert!(h.get("set-cookie").is_none());
    // Repeated token parameter: refused.
    let (s, _, _) = e.get(&format!("{}&token=x", l.setup_url), &[]).await;
    assert_eq!(s, 400);

    // A4: one use allowed; 50 concurrent uses of a fresh link → exactly one cookie.
    let fresh = provider_sign(&e.stack, &setup_claims(&l));
    let url = setup(&fresh);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (http, url) = (e.http.clone(), url.clone());
            tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap().unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 302).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 49, "{codes:?}");
    // Sequential reuse of the provider's own link: first works, second refused.
    let (s1, _, _) = e.get(&l.setup_url, &[]).await;
    let (s2, h2, _) = e.get(&l.setup_url, &[]).await;
    assert_eq!((s1, s2), (302, 401));
    assert!(h2.get("set-cookie").is_none());
    assert_eq!(e.echo.count(), 0, "no setup request reaches the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_a11_cookie_opens_only_its_own_circuit_and_dies_with_it() {
    let e = env().await;
    let alice = Uuid::new_v4();
    let a = e.launch_with(alice, json!({})).await;
    let b = e.launch_with(Uuid::new_v4(), json!({})).await;
    assert_ne!(a.url, b.url);
    let ca = e.cookie(&a).await;
    let cb = e.cookie(&b).await;
    assert_eq!(e.get(&a.url, &[("cookie", &ca)]).await.0, 200);
    // Port mode shares cookies across ports: A's cookie on B's port is not enough …
    assert_eq!(e.get(&b.url, &[("cookie", &ca)]).await.0, 401);
    // … nor is A's value under B's cookie name (bound to A's circuit and generation).
    let a_value = ca.split_once('=').unwrap().1;
    let renamed = format!("appproxy_{}={a_value}", b.id.simple());
    assert_eq!(e.get(&b.url, &[("cookie", &renamed)]).await.0, 401);
    // Both cookies together open both, each with its own.
    let both = format!("{ca}; {cb}");
    assert_eq!(e.get(&a.url, &[("cookie", &both)]).await.0, 200);
    assert_eq!(e.get(&b.url, &[("cookie", &both)]).await.0, 200);

    // A11: delete A → its cookie stops working within 5 s (the route is gone).
    let (s, _) = e
        .stack
        .manager(Method::DELETE, &format!("/v2/circuits/{}", a.id), None)
        .await;
    assert_eq!(s, 200);
    let t0 = Instant::now();
    eventually(
        "deleted circuit refuses its cookie",
        Duration::from_secs(5),
        || async { (e.get(&a.url, &[("cookie", &ca)]).await.0 != 200).then_some(()) },
    )
    .await;
    let revoke_ms = t0.elapsed().as_millis();
    let served = e.echo.count();
    // A3: a new circuit of another user takes A's port; A's cookie opens nothing there.
    let c = e.launch_with(Uuid::new_v4(), json!({})).await;
    assert_eq!(c.url, a.url, "lowest free port is reused");
    for cookie in [ca.clone(), format!("appproxy_{}={a_value}", c.id.simple())] {
        assert_eq!(
            e.get(&c.url, &[("cookie", &cookie)]).await.0,
            401,
            "{cookie}"
        );
    }
    assert_eq!(e.echo.count(), served, "no refused request reached the app");
    println!("delete → cookie refused in {revoke_ms} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_login_session_and_user_within_5s_survives_authgate_restart() {
    let mut e = env().await;
    let alice = Uuid::new_v4();
    let l1 = e
        .launch_with(alice, json!({"login_session_token": "alice-laptop"}))
        .await;
    let l2 = e
        .launch_with(alice, json!({"login_session_token": "alice-desktop"}))
        .await;
    let bob = e.launch().await;
    let (c1, c2, cb) = (
        e.cookie(&l1).await,
        e.cookie(&l2).await,
        e.cookie(&bob).await,
    );
    for (l, c) in [(&l1, &c1), (&l2, &c2), (&bob, &cb)] {
        assert_eq!(e.get(&l.url, &[("cookie", c)]).await.0, 200);
    }
    // Unified logout of one login session.
    let (s, v) = e
        .stack
        .manager(
            Method::POST,
            "/v2/revocations",
            Some(&json!({"login_session_token": "alice-laptop"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let t0 = Instant::now();
    eventually("login session revoked", Duration::from_secs(5), || async {
        (e2e::try_http_get(&e.http, &l1.url, &[("cookie", &c1)])
            .await
            .map(|a| a.0)
            == Some(401))
        .then_some(())
    })
    .await;
    println!(
        "login-session revocation effective in {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(
        e.get(&l2.url, &[("cookie", &c2)]).await.0,
        200,
        "other session unaffected"
    );
    // Revoke the user: every cookie of alice dies; bob is untouched.
    let (s, _) = e
        .stack
        .manager(
            Method::POST,
            "/v2/revocations",
            Some(&json!({"user_id": alice})),
        )
        .await;
    assert_eq!(s, 200);
    eventually("user revoked", Duration::from_secs(5), || async {
        (e2e::try_http_get(&e.http, &l2.url, &[("cookie", &c2)])
            .await
            .map(|a| a.0)
            == Some(401))
        .then_some(())
    })
    .await;
    assert_eq!(e.get(&bob.url, &[("cookie", &cb)]).await.0, 200);
    let (s, _, v) = e
        .get(&l2.url, &[("cookie", &c2), ("accept", "application/json")])
        .await;
    assert_eq!(s, 401, "{v}");

    // A restarted authgate loads the revocations again: still refused.
    e.worker.kill_authgate();
    e.worker.start_authgate();
    e.worker.wait_ready(&e.stack.http).await;
    assert_eq!(e.get(&l1.url, &[("cookie", &c1)]).await.0, 401);
    assert_eq!(e.get(&l2.url, &[("cookie", &c2)]).await.0, 401);
    assert_eq!(e.get(&bob.url, &[("cookie", &cb)]).await.0, 200);
    // A new launch after the revocation works again (credentials issued later).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, v) = e
        .stack
        .manager(
            Method::POST,
            &format!("/v2/circuits/{}/setup-link", l2.id),
            Some(&json!({"user_id": alice})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let relaunch = Launch {
        setup_url: v["setup_url"].as_str().unwrap().into(),
        ..l2
    };
    let fresh = e.cookie(&relaunch).await;
    assert_eq!(e.get(&relaunch.url, &[("cookie", &fresh)]).await.0, 200);
    // Someone else's setup link for alice's circuit is refused by the provider.
    let (s, _) = e
        .stack
        .manager(
            Method::POST,
            &format!("/v2/circuits/{}/setup-link", relaunch.id),
            Some(&json!({"user_id": Uuid::new_v4()})),
        )
        .await;
    assert_eq!(s, 403);
    // Bad revocation requests change nothing.
    for body in [
        json!({}),
        json!({"user_id": "x"}),
        json!({"login_session_token": ""}),
    ] {
        let (s, _) = e
            .stack
            .manager(Method::POST, "/v2/revocations", Some(&body))
            .await;
        assert_eq!(s, 400, "{body}");
    }
    assert_eq!(e.get(&bob.url, &[("cookie", &cb)]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a5_setup_never_redirects_off_origin() {
    let e = env().await;
    let l = e.launch().await;
    let corpus = [
        "//evil.example",
        "/\\evil.example",
        "/%09/evil.example",
        "%2F%2Fevil.example",
        "https://circuit.example.com.evil.com",
        "https://evil@circuit.example.com",
        "javascript:alert(1)",
        "/a\r\nSet-Cookie: x=1",
        "/../../x",
        "/%2e%2e/x",
    ];
    let long = format!("/{}", "a".repeat(5000));
    for bad in corpus.iter().copied().chain([long.as_str()]) {
        // Through the provider (sanitised before signing) …
        let (s, v) = e
            .stack
            .manager(
                Method::POST,
                &format!("/v2/circuits/{}/setup-link", l.id),
                Some(&json!({"redirect": bad})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, h, _) = e.get(v["setup_url"].as_str().unwrap(), &[]).await;
        assert_eq!(s, 302);
        assert_eq!(h["location"], "/", "{bad:?}");
        // … and signed as is (authgate sanitises again).
        let mut claims = setup_claims(&l);
        claims["redirect"] = json!(bad);
        let url = format!(
            "{}/_appproxy/setup?token={}",
            origin_of(&l.url),
            provider_sign(&e.stack, &claims)
        );
        let (s, h, _) = e.get(&url, &[]).await;
        assert_eq!(s, 302);
        assert_eq!(h["location"], "/", "{bad:?}");
    }
    let (s, v) = e
        .stack
        .manager(
            Method::POST,
            &format!("/v2/circuits/{}/setup-link", l.id),
            Some(&json!({"redirect": "/tree/work?a=1"})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, h, _) = e.get(v["setup_url"].as_str().unwrap(), &[]).await;
    assert_eq!(h["location"], "/tree/work?a=1");
    // Bad setup-link requests: Backend.AI error bodies, nothing minted.
    let path = format!("/v2/circuits/{}/setup-link", l.id);
    for (p, body, status) in [
        (
            format!("/v2/circuits/{}/setup-link", Uuid::new_v4()),
            json!({}),
            404,
        ),
        (
            "/v2/circuits/not-a-uuid/setup-link".to_string(),
            json!({}),
            400,
        ),
        (path.clone(), json!({"bogus": 1}), 400),
        (path.clone(), json!({"user_id": "nope"}), 400),
    ] {
        let (s, v) = e.stack.manager(Method::POST, &p, Some(&body)).await;
        assert_eq!(s, status, "{p} {body}: {v}");
        assert!(
            v["type"]
                .as_str()
                .unwrap()
                .starts_with("https://api.backend.ai/probs/")
        );
    }
    let (s, _) = e.stack.worker(Method::POST, &path, Some(&json!({}))).await;
    assert_eq!(s, 401, "the worker token cannot mint setup links");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a8_a9_spoofed_headers_and_path_tricks_change_nothing() {
    let e = env().await;
    let l = e.launch().await;
    let other = e.launch().await;
    let cookie = e.cookie(&l).await;
    let port = port_of(&l.url);
    let spoof: Vec<(&str, String)> = vec![
        (
            "x-forwarded-host",
            format!("127.0.0.1:{}", port_of(&other.url)),
        ),
        ("x-forwarded-uri", "/_appproxy/setup".into()),
        ("x-forwarded-method", "OPTIONS".into()),
        ("x-forwarded-prefix", "/_appproxy".into()),
        ("x-forwarded-port", "1".into()),
        ("x-forwarded-proto", "https".into()),
        ("x-forwarded-for", "10.0.0.1".into()),
        ("x_forwarded_method", "OPTIONS".into()),
        (
            "forwarded",
            "for=10.0.0.1;host=evil.test;proto=https".into(),
        ),
        ("x-original-url", "/_appproxy/setup".into()),
        ("x-auth-user", "admin".into()),
    ];
    // Without a cookie: every spoof is still a 401, nothing reaches the app.
    for (k, v) in &spoof {
        let (s, h, _) = e.get(&l.url, &[(k, v.as_str())]).await;
        assert_eq!(s, 401, "{k}: {v}");
        assert!(h.get("set-cookie").is_none());
    }
    let mut req = e.http.get(&l.url);
    for (k, v) in &spoof {
        req = req.header(*k, v.as_str());
    }
    assert_eq!(req.send().await.unwrap().status(), 401);
    assert_eq!(e.echo.count(), 0);
    // With the cookie: the same spoofs still pass (decision identical).
    for (k, v) in &spoof {
        let (s, _, _) = e.get(&l.url, &[(k, v.as_str()), ("cookie", &cookie)]).await;
        assert_eq!(s, 200, "{k}: {v}");
    }
    let allowed = e.echo.count();

    // A9: path corpus over raw TCP (so nothing normalises it first), without a cookie.
    let paths = [
        "/_appproxy/../lab",
        "/_appproxy/setup/../../lab",
        "/%2e%2e/lab",
        "//_appproxy/setup",
        "/_appproxy%2Fsetup",
        "/_appproxy%2fsetup",
        "/%5fappproxy/setup",
        "/_APPPROXY/setup",
        "/_appproxy/setup;x=1",
        "/_appproxy/setup%00",
        "/lab%00",
        "/%252e%252e/lab",
        "/\\_appproxy\\setup",
        "/lab;jsessionid=1",
        "/_appproxy/setup?token=",
        "/_appproxy/auth/x",
        "/_appproxy/metrics",
        "/_appproxy/health",
        "/_appproxy/",
        "/_appproxy",
    ];
    let long = format!("/{}", "a".repeat(9000));
    for p in paths.iter().copied().chain([long.as_str()]) {
        let (status, head) = raw_get(port, p, None).await;
        assert!(
            !(200..300).contains(&status) && status != 302,
            "{p} → {status}\n{head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("set-cookie"),
            "{p} set a cookie"
        );
        assert!(!head.contains("appproxy_authgate"), "{p} exposed metrics");
    }
    assert_eq!(
        e.echo.count(),
        allowed,
        "a path trick reached the app without a cookie"
    );
}

/// A raw HTTP/1.1 GET (path sent byte for byte); status and the whole answer head+body.
async fn raw_get(port: u16, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a12_internal_endpoints_unreachable_and_b2_malformed_cookies() {
    let e = env().await;
    let l = e.launch().await;
    let port = port_of(&l.url);
    // authgate's own API is not on any app origin.
    for p in [
        "/metrics",
        "/health",
        "/setup",
        &format!("/auth/{}?g=0&m=interactive", l.id),
    ] {
        let (s, body) = raw_get(port, p, None).await;
        assert_eq!(s, 401, "{p}: {body}");
    }
    // The provider API refuses unauthenticated callers.
    let (s, _) = e.stack.call(None, Method::GET, "/v2/circuits", None).await;
    assert_eq!(s, 401);
    // B2: malformed cookies and headers never pass.
    let name = format!("appproxy_{}", l.id.simple());
    let many: Vec<String> = (0..100).map(|i| format!("{name}=v{i}")).collect();
    let cases = [
        format!("{name}=%%%not-base64"),
        format!("{name}=a.b.c"),
        format!("{name}="),
        many.join("; "),
        format!("{name}={}", "a".repeat(20_000)),
        "=; ;;=;".to_string(),
    ];
    for c in &cases {
        let (s, _) = raw_get(port, "/", Some(c)).await;
        assert!(s == 400 || s == 401 || s == 431, "cookie {:.60} → {s}", c);
    }
    // Invalid UTF-8 in the Cookie header, sent raw.
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req =
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nCookie: {name}=")
            .into_bytes();
    req.extend_from_slice(&[0xff, 0xfe, 0x80]);
    req.extend_from_slice(b"\r\n\r\n");
    sock.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out)).await;
    let head = String::from_utf8_lossy(&out);
    assert!(!head.starts_with("HTTP/1.1 2"), "{head}");
    // authgate called directly without Traefik's headers: never a pass.
    let (s, _, _) = e
        .get(
            &format!("{}/auth/{}?g=0&m=interactive", e.worker.base(), l.id),
            &[],
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e.echo.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authgate_down_or_hung_fails_closed_and_redis_down_stops_setup() {
    let mut e = env().await;
    let l = e.launch().await;
    let cookie = e.cookie(&l).await;
    assert_eq!(e.get(&l.url, &[("cookie", &cookie)]).await.0, 200);

    e.worker.kill_authgate();
    // ForwardAuth fails at once; the fast path once authgate's heartbeat is 3 s old.
    closed_soon(&e, &l.url, &cookie, "authgate down").await;
    e.worker.start_authgate();
    e.worker.wait_ready(&e.stack.http).await;
    eventually("cookies survive a restart", patience(), || async {
        (e.get(&l.url, &[("cookie", &cookie)]).await.0 == 200).then_some(())
    })
    .await;

    // Hung authgate: the client never gets the app (after the heartbeat's age, fast path).
    e.worker.signal_authgate("STOP");
    closed_soon(&e, &l.url, &cookie, "authgate hung").await;
    let served = e.echo.count();
    let quick = e2e::client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let r = quick.get(&l.url).header("cookie", &cookie).send().await;
    assert!(r.is_err() || r.unwrap().status().as_u16() >= 500);
    e.worker.signal_authgate("CONT");
    assert_eq!(
        e.echo.count(),
        served,
        "the app got a request while authgate was hung"
    );

    // Redis down: setup fails closed (503, no cookie); provider revocations answer 503.
    let fresh = e.launch_with(l.user, json!({})).await;
    e.stack.kill_redis();
    let (s, h, _) = e.get(&fresh.setup_url, &[]).await;
    assert_eq!(s, 503);
    assert!(h.get("set-cookie").is_none());
    let (s, v) = e
        .stack
        .manager(
            Method::POST,
            "/v2/revocations",
            Some(&json!({"user_id": l.user})),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(
        v["type"],
        "https://api.backend.ai/probs/service-unavailable"
    );
    // Existing cookies keep working while Redis is away (no Redis on the hot path).
    assert_eq!(e.get(&l.url, &[("cookie", &cookie)]).await.0, 200);
    e.stack.restart_redis();
    eventually(
        "setup works again after Redis returns",
        patience(),
        || async { (e.get(&fresh.setup_url, &[]).await.0 == 302).then_some(()) },
    )
    .await;
}

/// Requests with a valid cookie are refused (5xx) within 5 s: at once through ForwardAuth,
/// within the fast path's 3 s heartbeat age otherwise; and stay refused.
async fn closed_soon(e: &Env, url: &str, cookie: &str, what: &str) {
    let quick = e2e::client_builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let status = || async {
        match quick.get(url).header("cookie", cookie).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 599,
        }
    };
    let before = e.echo.count();
    if e.worker.spec.fast_path {
        eventually(what, Duration::from_secs(5), || async {
            (status().await >= 500).then_some(())
        })
        .await;
    } else {
        let s = status().await;
        assert!(s >= 500, "{what} → {s}");
        assert_eq!(e.echo.count(), before, "{what}: the app got a request");
    }
    let served = e.echo.count();
    for _ in 0..3 {
        assert!(status().await >= 500, "{what}: a request got through again");
    }
    assert_eq!(e.echo.count(), served, "{what}: the app got a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a6_state_nonce_binds_the_launch_to_the_browser() {
    let mut spec = WorkerSpec::ports("gw-a6", 4);
    spec.login_url = Some("http://127.0.0.1:9/launch".into());
    let e = env_with(spec).await;
    let l = e.launch().await;
    let origin = origin_of(&l.url);
    let (s, h, _) = e
        .get(
            &format!("{origin}/_appproxy/login?circuit={}&next=/lab", l.id),
            &[],
        )
        .await;
    assert_eq!(s, 302);
    let loc = h["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with("http://127.0.0.1:9/launch?"), "{loc}");
    let state = e2e::query_param(&loc, "state").unwrap();
    let nonce_cookie = e2e::cookie_pair(h["set-cookie"].to_str().unwrap());
    assert!(nonce_cookie.starts_with("appproxy_state="));
    let link = |state: &str| {
        let body = json!({"user_id": l.user, "state": state, "redirect": "/lab"});
        let stack = &e.stack;
        let id = l.id;
        async move {
            let (s, v) = stack
                .manager(
                    Method::POST,
                    &format!("/v2/circuits/{id}/setup-link"),
                    Some(&body),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            v["setup_url"].as_str().unwrap().to_string()
        }
    };
    // Another browser (no nonce, or another nonce) cannot use the link.
    let url = link(&state).await;
    assert_eq!(e.get(&url, &[]).await.0, 403);
    assert_eq!(
        e.get(&url, &[("cookie", "appproxy_state=wrong")]).await.0,
        403
    );
    // The browser that started the launch can.
    let (s, h, _) = e.get(&url, &[("cookie", &nonce_cookie)]).await;
    assert_eq!(s, 302);
    assert_eq!(h["referrer-policy"], "no-referrer");
    let cookies: Vec<&str> = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("appproxy_state=;") && c.contains("Max-Age=0"))
    );
    // POST and HEAD to setup are refused.
    let post = e
        .http
        .post(&url)
        .header("cookie", &nonce_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let head = e
        .http
        .head(&url)
        .header("cookie", &nonce_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 405);
    // The provider refuses a malformed state.
    let (s, _) = e
        .stack
        .manager(
            Method::POST,
            &format!("/v2/circuits/{}/setup-link", l.id),
            Some(&json!({"state": "x"})),
        )
        .await;
    assert_eq!(s, 400);
    // The token never shows in authgate's log.
    assert!(!e.worker.authgate_log().contains(&token_of(&url)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_role_registers_heartbeats_and_deregisters() {
    let mut e = env().await;
    let (s, v) = e.stack.worker(Method::GET, "/api/worker", None).await;
    assert_eq!(s, 200);
    let w = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["authority"] == "gw-1")
        .unwrap()
        .clone();
    assert_eq!(w["authgate_url"], e.worker.base());
    assert_eq!(w["api_port"], e.worker.port);
    let id = w["id"].as_str().unwrap().to_string();
    let first = w["last_heartbeat"].as_str().unwrap().to_string();
    eventually("a heartbeat", Duration::from_secs(10), || async {
        let (_, w) = e
            .stack
            .worker(Method::GET, &format!("/api/worker/{id}"), None)
            .await;
        (w["last_heartbeat"].as_str() != Some(first.as_str())).then_some(())
    })
    .await;
    // The forwardAuth address points at this authgate.
    let l = e.launch().await;
    let dump = e.stack.etcd_dump().await;
    let addr = dump
        .iter()
        .find(|(k, _)| k.ends_with(&format!("ap-{}-auth/forwardAuth/address", l.id)))
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(
        addr.starts_with(&format!("{}/auth/{}", e.worker.base(), l.id)),
        "{addr}"
    );
    // SIGTERM: authgate deregisters on the way out.
    e.worker.stop_authgate();
    let (_, w) = e
        .stack
        .worker(Method::GET, &format!("/api/worker/{id}"), None)
        .await;
    assert_ne!(w["status"], "ALIVE", "{w}");
    // Started again, it registers again (same authority, ALIVE).
    e.worker.start_authgate();
    e.stack.wait_registered("gw-1").await;
    let ids: BTreeSet<String> = e.stack.worker(Method::GET, "/api/worker", None).await.1["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&id), "re-registration keeps the worker id");
}

/// `curl -sk -D -` (our reqwest build has no TLS): status line and headers, then the body.
fn curl_https(url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sk", "-D", "-", "--max-time", "10"]);
    if let Some(c) = cookie {
        cmd.args(["-H", &format!("Cookie: {c}")]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a7_tls_cookie_is_host_prefixed_secure_and_tossing_fails() {
    let mut spec = WorkerSpec::ports("gw-tls", 2);
    spec.env.push((
        "APPPROXY_AUTHGATE__WORKER__TLS_LISTEN".into(),
        "true".into(),
    ));
    let e = env_with(spec).await;
    let l = e.launch().await;
    assert!(l.url.starts_with("https://"), "{}", l.url);
    assert!(l.setup_url.starts_with("https://"));
    let (s, _) = curl_https(&l.url, None);
    assert_eq!(s, 401);
    let (s, head) = curl_https(&l.setup_url, None);
    assert_eq!(s, 302, "{head}\n{}", e.worker.authgate_log());
    let sc = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("set-cookie")
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .to_string();
    let name = format!("__Host-appproxy_{}", l.id.simple());
    assert!(sc.starts_with(&format!("{name}=")), "{sc}");
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure", "Max-Age="] {
        assert!(sc.contains(attr), "{attr}: {sc}");
    }
    assert!(!sc.to_ascii_lowercase().contains("domain="), "{sc}");
    let cookie = e2e::cookie_pair(&sc);
    let (s, body) = curl_https(&format!("{}/lab", l.url), Some(&format!("{cookie}; a=1")));
    assert_eq!(s, 200, "{body}");
    // A tossed cookie (same name, not ours) neither opens the app nor displaces the real one.
    let tossed = format!("{name}=eyJhbGciOiJIUzI1NiJ9.e30.x");
    assert_eq!(curl_https(&l.url, Some(&tossed)).0, 401);
    let plain_tossed = format!("appproxy_{}=x", l.id.simple());
    assert_eq!(
        curl_https(&l.url, Some(&format!("{tossed}; {plain_tossed}; {cookie}"))).0,
        200
    );
    assert_eq!(
        curl_https(&l.url, Some(&format!("{cookie}; {tossed}"))).0,
        200
    );
    // Plain HTTP to the TLS origin's setup link never sets the cookie.
    let plain = l.setup_url.replacen("https://", "http://", 1);
    let r = e.http.get(&plain).send().await;
    assert!(
        r.map(|r| !r.headers().contains_key("set-cookie"))
            .unwrap_or(true)
    );
    e.assert_backend_clean(&[cookie.split_once('=').unwrap().1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subdomain_mode_setup_runs_on_the_apps_own_host() {
    let apps_port = e2e::free_port();
    let spec = WorkerSpec::wildcard("gw-wild", apps_port, ".apps.test");
    let e = env_with(spec).await;
    let a = e
        .launch_with(Uuid::new_v4(), json!({"subdomain": "alpha"}))
        .await;
    let b = e
        .launch_with(Uuid::new_v4(), json!({"subdomain": "beta"}))
        .await;
    let host_a = format!("alpha.apps.test:{apps_port}");
    let host_b = format!("beta.apps.test:{apps_port}");
    assert!(a.url.contains(&host_a), "{}", a.url);
    let local = |url: &str, host: &str| url.replacen(host, &format!("127.0.0.1:{apps_port}"), 1);
    let get = |url: String, host: String, cookie: Option<String>| {
        let http = e.http.clone();
        async move {
            let mut req = http.get(url).header("host", host);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let sc = r
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_string());
            (status, sc)
        }
    };
    // A's setup link on B's host is refused; on A's host it sets a host-only cookie.
    let (s, sc) = get(local(&a.setup_url, &host_a), host_b.clone(), None).await;
    assert_eq!(s, 400);
    assert!(sc.is_none());
    let (s, sc) = get(local(&a.setup_url, &host_a), host_a.clone(), None).await;
    assert_eq!(s, 302);
    let sc = sc.unwrap();
    assert!(!sc.to_ascii_lowercase().contains("domain="), "{sc}");
    let cookie = e2e::cookie_pair(&sc);
    let root = format!("http://127.0.0.1:{apps_port}/");
    assert_eq!(
        get(root.clone(), host_a.clone(), Some(cookie.clone()))
            .await
            .0,
        200
    );
    assert_eq!(
        get(root.clone(), host_b.clone(), Some(cookie.clone()))
            .await
            .0,
        401
    );
    // A host no circuit serves gets authgate's closed-app page.
    assert_eq!(
        get(root, format!("gamma.apps.test:{apps_port}"), Some(cookie))
            .await
            .0,
        410
    );
    let _ = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_allowlists_are_enforced_by_traefik_before_auth() {
    let e = env().await;
    let user = Uuid::new_v4();
    let denied = e
        .launch_with(user, json!({"allowed_client_ips": "10.0.0.0/8,fd00::/8"}))
        .await;
    let allowed = e
        .launch_with(
            user,
            json!({"allowed_client_ips": ["127.0.0.1/32", "::1/128"]}),
        )
        .await;
    let public_denied = e
        .launch_with(
            user,
            json!({"allowed_client_ips": "fd00::/8", "open_to_public": true}),
        )
        .await;
    let cd = e.cookie(&denied).await;
    let ca = e.cookie(&allowed).await;
    assert_eq!(e.get(&denied.url, &[("cookie", &cd)]).await.0, 403);
    assert_eq!(e.get(&public_denied.url, &[]).await.0, 403);
    assert_eq!(e.echo.count(), 0);
    assert_eq!(e.get(&allowed.url, &[("cookie", &ca)]).await.0, 200);
    assert_eq!(
        e.get(&allowed.url, &[]).await.0,
        401,
        "allowlist does not replace auth"
    );
}

/// A request with any method, headers and body through Traefik: status.
async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> u16 {
    let mut req = http.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_links_preflights_and_the_ingest_listener() {
    let e = env().await;
    let alice = Uuid::new_v4();
    // Issue 13.2: links minted before a revocation set no cookie.
    let by_session = e
        .launch_with(alice, json!({"login_session_token": "alice-phone"}))
        .await;
    let by_user = e.launch_with(alice, json!({})).await;
    for body in [
        json!({"login_session_token": "alice-phone"}),
        json!({"user_id": alice}),
    ] {
        let (s, v) = e
            .stack
            .manager(Method::POST, "/v2/revocations", Some(&body))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    for l in [&by_session, &by_user] {
        // The revocation also cuts the user's connections: a reset is "not yet".
        eventually("revoked link refused", Duration::from_secs(5), || async {
            let (s, h, _) = e2e::try_http_get(&e.http, &l.setup_url, &[]).await?;
            (s == 401 && h.get("set-cookie").is_none()).then_some(())
        })
        .await;
        // The API-port entry refuses it too.
        let token = token_of(&l.setup_url);
        let (s, _, _) = e
            .get(&format!("{}/setup?token={token}", e.worker.base()), &[])
            .await;
        assert_eq!(s, 401);
    }
    // Another user's link on the same worker still works.
    let bob = e.launch().await;
    assert_eq!(e.get(&bob.setup_url, &[]).await.0, 302);

    // Issue 13.5: only a real CORS preflight passes without a cookie.
    let before = e.echo.count();
    let origin = origin_of(&bob.url).to_string();
    for (headers, body) in [
        (vec![], None),
        (vec![], Some("payload")),
        (vec![("origin", "http://x.test")], None),
        (vec![("access-control-request-method", "POST")], None),
        (
            vec![("sec-websocket-key", "a2V5a2V5a2V5a2V5a2V5aw==")],
            None,
        ),
    ] {
        let s = send(&e.http, "OPTIONS", &bob.url, &headers, body).await;
        assert_eq!(s, 401, "OPTIONS {headers:?} body {body:?}");
    }
    assert_eq!(
        e.echo.count(),
        before,
        "a non-preflight OPTIONS reached the app"
    );
    let pre = [
        ("origin", origin.as_str()),
        ("access-control-request-method", "PUT"),
    ];
    assert_eq!(send(&e.http, "OPTIONS", &bob.url, &pre, None).await, 200);
    let last = e.echo.requests().pop().unwrap();
    assert_eq!(last.method, "OPTIONS");

    // Issue 13.3: access logs are taken only on the ingest listener, with the secret.
    let export = vec![0u8; 0];
    let public = e
        .http
        .post(format!("{}/v1/logs", e.worker.base()))
        .body(export.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404, "the public listener took an export");
    let through_traefik = send(
        &e.http,
        "POST",
        &format!("{}/v1/logs", origin),
        &[],
        Some(""),
    )
    .await;
    assert_ne!(through_traefik, 200);
    let ingest = format!("http://127.0.0.1:{}/v1/logs", e.worker.ingest_port);
    for secret in [None, Some("wrong"), Some(&e.worker.ingest_secret[1..])] {
        let mut req = e.http.post(&ingest).body(export.clone());
        if let Some(s) = secret {
            req = req.header("x-appproxy-ingest-secret", s);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{secret:?}");
    }
    let ok = e.worker.post_logs(&e.http, export).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // The ingest listener serves nothing else.
    let (s, _, _) = e
        .get(
            &format!("http://127.0.0.1:{}/health", e.worker.ingest_port),
            &[],
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_use_from_another_origin_is_refused_and_planted_cookies_never_authorize() {
    let e = env().await;
    let a = e.launch().await;
    let b = e.launch().await;
    let allowed = e
        .launch_with(
            Uuid::new_v4(),
            json!({"allowed_origins": ["https://Portal.Example.com:443"]}),
        )
        .await;
    let (ca, callowed) = (e.cookie(&a).await, e.cookie(&allowed).await);
    let (own, other) = (origin_of(&a.url).to_string(), origin_of(&b.url).to_string());
    let before = e.echo.count();
    // Another app's page (another port of the same host): unsafe methods and form posts with
    // A's cookie are refused (403, short page), as is a WebSocket upgrade.
    for (m, extra) in [
        ("POST", vec![("origin", other.as_str())]),
        ("PUT", vec![("origin", other.as_str())]),
        ("DELETE", vec![("origin", "null")]),
        (
            "POST",
            vec![
                ("origin", other.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
        ),
        ("POST", vec![("sec-fetch-site", "same-site")]),
    ] {
        let mut h = vec![("cookie", ca.as_str()), ("accept", "text/html")];
        h.extend(extra.iter().copied());
        let s = send(&e.http, m, &a.url, &h, Some("x=1")).await;
        assert_eq!(s, 403, "{m} {extra:?}");
    }
    let (status, _) = websocket_with(port_of(&a.url), Some(&ca), &[("Origin", &other)]).await;
    assert!(status.contains("403"), "{status}");
    assert_eq!(
        e.echo.count(),
        before,
        "a cross-origin request reached the app"
    );
    // Its own page, top-level navigations and clients without Origin keep working.
    let own_h = [("cookie", ca.as_str()), ("origin", own.as_str())];
    assert_eq!(send(&e.http, "POST", &a.url, &own_h, Some("x")).await, 200);
    let nav = [("cookie", ca.as_str()), ("sec-fetch-site", "cross-site")];
    assert_eq!(send(&e.http, "GET", &a.url, &nav, None).await, 200);
    assert_eq!(
        send(
            &e.http,
            "POST",
            &a.url,
            &[("cookie", ca.as_str())],
            Some("x")
        )
        .await,
        200
    );
    let (status, echoed) = websocket_with(port_of(&a.url), Some(&ca), &[("Origin", &own)]).await;
    assert!(status.contains("101"), "{status}");
    assert_eq!(echoed.as_deref(), Some("hi over ws"));
    // A circuit's extra allowed origin (normalized) may post; others may not.
    let portal = [
        ("cookie", callowed.as_str()),
        ("origin", "https://portal.example.com"),
    ];
    // (authgate learns the circuit's extra origins with its next circuit map, ≤ 2 s.)
    eventually("extra origin allowed", patience(), || async {
        (send(&e.http, "POST", &allowed.url, &portal, Some("x")).await == 200).then_some(())
    })
    .await;
    let evil = [
        ("cookie", callowed.as_str()),
        ("origin", "https://evil.example.com"),
    ];
    assert_eq!(
        send(&e.http, "POST", &allowed.url, &evil, Some("x")).await,
        403
    );
    let (s, v) = e
        .stack
        .manager(
            Method::POST,
            "/v2/circuits",
            Some(
                &json!({"app": "x", "worker": e.worker.spec.authority, "user_id": Uuid::new_v4(),
                         "allowed_origins": ["https://*.example.com"],
                         "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1",
                                     "kernel_port": e.echo.port}]}),
            ),
        )
        .await;
    assert_eq!(s, 400, "wildcard origin accepted: {v}");

    // Issue 13.8: an app can plant `appproxy_<A>=…` on the shared host (port mode). A planted
    // value never authorizes; next to the real cookie the real one still wins; `/setup` sets
    // a working cookie over a planted one.
    let name = format!("appproxy_{}", a.id.simple());
    let planted = format!("{name}=planted.by.app");
    assert_eq!(e.get(&a.url, &[("cookie", &planted)]).await.0, 401);
    let both = format!("{planted}; {ca}");
    assert_eq!(e.get(&a.url, &[("cookie", &both)]).await.0, 200);
    let forged = format!("{name}={}", ca.split_once('=').unwrap().1.replace('a', "b"));
    assert_ne!(forged, ca, "the forgery must change the cookie");
    assert_eq!(e.get(&a.url, &[("cookie", &forged)]).await.0, 401);
    let (s, h, _) = e
        .get(&e.launch_link(&a).await, &[("cookie", &planted)])
        .await;
    assert_eq!(s, 302);
    let fresh = e2e::cookie_pair(&e2e::session_set_cookie(&h));
    assert_eq!(
        e.get(&a.url, &[("cookie", &format!("{planted}; {fresh}"))])
            .await
            .0,
        200
    );
    e.assert_backend_clean(&[ca.split_once('=').unwrap().1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_credential_acts_only_for_its_own_worker() {
    // No legacy shared token: each authgate enrols a credential of its own.
    let stack = Stack::start_strict(Db::Sqlite).await;
    let a = stack
        .start_gated_worker(WorkerSpec::ports("cred-a", 2))
        .await;
    let b = stack
        .start_gated_worker(WorkerSpec::ports("cred-b", 2))
        .await;
    let echo = HttpEcho::start("app").await;
    let http = e2e::no_redirect_client();
    let (s, v) = stack
        .manager(
            Method::POST,
            "/v2/circuits",
            Some(
                &json!({"app": "nb", "worker": "cred-b", "user_id": Uuid::new_v4(),
                         "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1",
                                     "kernel_port": echo.port}]}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (b_circuit, b_url) = (
        v["id"].as_str().unwrap().to_string(),
        v["url"].as_str().unwrap().to_string(),
    );
    e2e::wait_status(&http, &b_url, &[], 401).await;
    let (_, list) = stack.manager(Method::GET, "/api/worker", None).await;
    let id_of = |authority: &str| {
        list["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["authority"] == authority)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a_id, b_id) = (id_of("cred-a"), id_of("cred-b"));
    let (a_cred_id, a_cred) = stack.enrol_worker("cred-a").await;
    let before = stack.etcd_dump().await;
    let root_b = stack.root_key("cred-b");
    let b_keys = |d: &std::collections::BTreeMap<String, String>| {
        d.iter()
            .filter(|(k, _)| k.starts_with(&root_b))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };

    // Worker A's credential against worker B: every worker route refuses (403), nothing changes.
    let hijack = json!({"authority": "cred-b", "frontend_mode": "port", "protocol": "http",
                        "hostname": "127.0.0.1", "api_port": a.port, "port_range": [1, 2],
                        "authgate_url": "http://127.0.0.1:9"});
    let circuit = format!("/api/circuit/{b_circuit}");
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::PUT, "/api/worker".into(), Some(hijack)),
        (Method::PATCH, format!("/api/worker/{b_id}"), None),
        (Method::GET, format!("/api/worker/{b_id}"), None),
        (
            Method::GET,
            format!("/api/worker/{b_id}/circuits?view=map"),
            None,
        ),
        (
            Method::PUT,
            format!("/api/worker/{b_id}/route-health"),
            Some(json!({"circuits": {}})),
        ),
        (Method::GET, "/api/slots?wsproxy_host=cred-b".into(), None),
        (Method::GET, circuit.clone(), None),
        (Method::GET, format!("{circuit}/statistics"), None),
        (Method::DELETE, circuit.clone(), None),
        (
            Method::DELETE,
            "/api/circuit/_/bulk".into(),
            Some(json!({"circuit_ids": [b_circuit]})),
        ),
        (Method::DELETE, format!("/api/worker/{b_id}"), None),
    ];
    for (m, path, body) in attempts {
        let (s, v) = stack
            .call(Some(&a_cred), m.clone(), &path, body.as_ref())
            .await;
        assert_eq!(s, 403, "{m} {path}: {v}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b_keys(&stack.etcd_dump().await),
        b_keys(&before),
        "B's config changed"
    );
    assert_eq!(
        e2e::http_get(&http, &b_url, &[]).await.0,
        401,
        "auth still on"
    );
    let b_now = stack.worker_record("cred-b").await;
    assert_eq!(b_now["status"], "ALIVE", "{b_now}");

    // For its own worker it works; it sees only itself; it is no manager.
    let (s, v) = stack
        .call(
            Some(&a_cred),
            Method::GET,
            &format!("/api/worker/{a_id}/circuits"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = stack
        .call(Some(&a_cred), Method::GET, "/api/worker", None)
        .await;
    assert_eq!(s, 200);
    let seen: Vec<&str> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["authority"].as_str().unwrap())
        .collect();
    assert_eq!(seen, vec!["cred-a"]);
    for (m, path) in [
        (Method::GET, "/v2/circuits"),
        (Method::POST, "/v2/workers/credentials"),
        (Method::GET, "/v2/workers/credentials"),
    ] {
        let (s, _) = stack
            .call(
                Some(&a_cred),
                m,
                path,
                Some(&json!({"authority": "cred-a"})),
            )
            .await;
        assert_eq!(s, 401, "{path}");
    }
    // No shared token exists on this provider; forged and garbled credentials are refused.
    // Flip the last hex digit (replacing it with a fixed digit would forge nothing one time in 16).
    let last = if a_cred.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &a_cred[..a_cred.len() - 1]);
    assert_ne!(forged, a_cred);
    for t in ["worker-legacy-token-guess", forged.as_str(), "apw1.x.y", ""] {
        let (s, _) = stack
            .call(Some(t), Method::GET, &format!("/api/worker/{a_id}"), None)
            .await;
        assert_eq!(s, 401, "{t}");
    }

    // The listing never shows a secret; revoking a credential ends it at once.
    let (s, v) = stack
        .manager(
            Method::GET,
            "/v2/workers/credentials?authority=cred-a",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let creds = v["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 2, "{v}");
    let secret = a_cred.rsplit('.').next().unwrap();
    assert!(!v.to_string().contains(secret), "secret listed: {v}");
    let (s, v) = stack
        .manager(
            Method::DELETE,
            &format!("/v2/workers/credentials/{a_cred_id}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["revoked_at"].is_string(), "{v}");
    let (s, _) = stack
        .call(
            Some(&a_cred),
            Method::GET,
            &format!("/api/worker/{a_id}"),
            None,
        )
        .await;
    assert_eq!(s, 401, "revoked credential still works");
    // A's authgate (its own, other credential) keeps heartbeating.
    let before_beat = stack
        .manager(Method::GET, &format!("/api/worker/{a_id}"), None)
        .await
        .1["last_heartbeat"]
        .clone();
    eventually("authgate A still heartbeats", patience(), || async {
        let (_, w) = stack
            .manager(Method::GET, &format!("/api/worker/{a_id}"), None)
            .await;
        (w["last_heartbeat"] != before_beat && w["status"] == "ALIVE").then_some(())
    })
    .await;
    // Bad enrolments change nothing.
    for body in [
        json!({}),
        json!({"authority": ""}),
        json!({"authority": "x", "extra": 1}),
    ] {
        let (s, _) = stack
            .manager(Method::POST, "/v2/workers/credentials", Some(&body))
            .await;
        assert_eq!(s, 400, "{body}");
    }
    let (s, _) = stack
        .manager(Method::DELETE, "/v2/workers/credentials/nope", None)
        .await;
    assert_eq!(s, 404);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_stops_authgate_with_a_clear_error() {
    let stack = Stack::start_strict(Db::Sqlite).await;
    // A credential enrolled for another worker: the provider refuses (403), authgate stops
    // instead of retrying forever.
    let (_, other) = stack.enrol_worker("someone-else").await;
    let mut spec = WorkerSpec::ports("refused-1", 2);
    spec.env
        .push(("APPPROXY_AUTHGATE__PROVIDER__WORKER_TOKEN".into(), other));
    let mut w = stack.launch_gated_worker(spec).await;
    let start = Instant::now();
    let log = loop {
        if let Some(log) = w.authgate_exited() {
            break log;
        }
        assert!(
            start.elapsed() < patience(),
            "authgate kept running after a refusal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(log.contains("refused to register"), "{log}");
    assert!(log.contains("refused-1"), "{log}");
    let (_, list) = stack.manager(Method::GET, "/api/worker", None).await;
    assert_eq!(list["workers"], json!([]), "{list}");
}

/// Setup's rate limit per client address, through the worker's Traefik: after N setups from
/// one address (bad links count too) the next is a `429` with `Retry-After` and Backend.AI's
/// body, on the app's origin and on the API port alike, and a forged `X-Forwarded-For` does
/// not escape it; another address still sets its cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_is_rate_limited_per_client_address() {
    let mut spec = WorkerSpec::ports("gw-rl", 2);
    spec.env.push((
        "APPPROXY_AUTHGATE__RATE_LIMIT__SETUP_PER_ADDRESS__REQUESTS".into(),
        "3".into(),
    ));
    let e = env_with(spec).await;
    let l = e.launch().await;
    let origin = origin_of(&l.url).to_string();
    let (one, two) = (
        e2e::no_redirect_client_from("127.0.0.1"),
        e2e::no_redirect_client_from("127.0.0.2"),
    );
    let json = [("accept", "application/json")];
    e2e::early_in_a_minute(15).await;
    for i in 0..3 {
        let (s, _, body) = e2e::http_get(
            &one,
            &format!("{origin}/_appproxy/setup?token=bad{i}"),
            &json,
        )
        .await;
        assert_eq!(s, 401, "setup {i}: {body}");
    }
    let api = format!("http://127.0.0.1:{}/setup?token=bad", e.worker.port);
    for (url, forged) in [
        (format!("{origin}/_appproxy/setup?token=bad"), "127.0.0.9"),
        (l.setup_url.clone(), "203.0.113.9"),
        (api, "127.0.0.2"),
    ] {
        let (s, h, body) = e2e::http_get(
            &one,
            &url,
            &[("accept", "application/json"), ("x-forwarded-for", forged)],
        )
        .await;
        e2e::assert_rate_limited(s, &h, &body);
    }
    // Another address: its own budget, and the real link sets the cookie.
    let (s, h, body) = e2e::http_get(&two, &l.setup_url, &[]).await;
    assert_eq!(s, 302, "{body}");
    assert!(e2e::session_set_cookie(&h).starts_with("appproxy_"));
    let metrics = e2e::metrics_text(&e.http, &format!("http://127.0.0.1:{}", e.worker.port)).await;
    assert!(
        metrics.contains("appproxy_authgate_setups_total{result=\"rate_limited\"} 3"),
        "{metrics}"
    );
}

/// A Redis that stalls (a script holds it for 1.5 s) delays setups and revocations but fails
/// neither. The setup rate limit and the link's use count fail closed, so they wait out a
/// stall up to their own deadline (2 s) rather than the fail-open 300 ms, and ignore the
/// fail-open back-off (a second of instant failures after a timeout, so a dead Redis does not
/// cost every let-through request its wait); and no connection keeps the redis crate's hidden
/// 500 ms response timeout. Found in CI: 50 concurrent uses of one link on a loaded machine
/// got seven 503s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_delays_setups_but_refuses_none() {
    use appproxy_common::ratelimit::{Limit, LimitError, Limiter, Policy, Verdict};
    let e = env().await;
    let l = e.launch().await;
    let uses = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (http, url) = (e.http.clone(), l.setup_url.clone());
                tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.unwrap().unwrap());
        }
        codes
    };
    let revoke = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let body = json!({"user_id": Uuid::new_v4()});
        e.stack
            .manager(Method::POST, "/v2/revocations", Some(&body))
            .await
    };
    let ((), codes, (s, v)) = tokio::join!(e.stack.stall_redis(1500), uses, revoke);
    // Three uses per link (the worker's `setup_max_uses`), counted exactly through the stall.
    assert_eq!(codes.iter().filter(|c| **c == 302).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 17, "{codes:?}");
    assert_eq!(s, 200, "revocation during a stall: {v}");

    // The limiter's two policies, against the same kind of stall.
    let limiter = Limiter::new(redis::Client::open(e.stack.redis_url()).unwrap(), "stall");
    let limit = Limit::per_minute(100);
    assert_eq!(
        limiter
            .check("s", "a", &limit, Policy::FailOpen)
            .await
            .unwrap(),
        Verdict::Allow
    );
    let checks = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        let open = limiter.check("s", "a", &limit, Policy::FailOpen).await;
        let waited = t0.elapsed();
        let backed_off = limiter.check("s", "a", &limit, Policy::FailOpen).await;
        let closed = limiter.check("s", "a", &limit, Policy::FailClosed).await;
        (open, waited, backed_off, closed, t0.elapsed())
    };
    let ((), (open, waited, backed_off, closed, total)) =
        tokio::join!(e.stack.stall_redis(1500), checks);
    assert!(matches!(open, Err(LimitError::Timeout(_))), "{open:?}");
    assert!(
        waited < Duration::from_millis(800),
        "fail-open waited {waited:?}"
    );
    assert!(
        matches!(backed_off, Err(LimitError::Backoff)),
        "{backed_off:?}"
    );
    assert_eq!(
        closed.unwrap(),
        Verdict::Allow,
        "fail-closed waits the stall out"
    );
    assert!(total >= Duration::from_millis(1200), "{total:?}");

    // A fresh limiter, connecting during a stall: a fail-closed check holds the connection
    // slot while it connects (up to 2 s); a fail-open check beside it still gives up in time.
    let fresh = Limiter::new(redis::Client::open(e.stack.redis_url()).unwrap(), "stall");
    let checks = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let closed = fresh.check("s", "b", &limit, Policy::FailClosed);
        let open = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t0 = Instant::now();
            let r = fresh.check("s", "b", &limit, Policy::FailOpen).await;
            (r, t0.elapsed())
        };
        tokio::join!(closed, open)
    };
    let ((), (closed, (open, waited))) = tokio::join!(e.stack.stall_redis(1500), checks);
    assert!(open.is_err(), "{open:?}");
    assert!(
        waited < Duration::from_millis(800),
        "fail-open waited {waited:?} on another check's connect"
    );
    assert_eq!(closed.unwrap(), Verdict::Allow);
}

/// authgate's `/metrics` carries the Backend.AI worker's names beside ours (circuits by
/// protocol, `backendai_api_request_*` per route pattern) and our per-route histogram; it
/// answers only `[metrics] allowed_networks` or its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_backendai_names_and_answer_only_allowed_readers() {
    let mut spec = WorkerSpec::ports("gw-metrics", 2);
    // authgate's own ForwardAuth route is among the series: requests must reach it.
    spec.fast_path = false;
    let token = "metrics-reader-token-0123";
    spec.env.extend([
        (
            "APPPROXY_AUTHGATE__METRICS__ALLOWED_NETWORKS".into(),
            "[\"127.0.0.1/32\"]".into(),
        ),
        ("APPPROXY_AUTHGATE__METRICS__TOKEN".into(), token.into()),
    ]);
    let e = env_with(spec).await;
    let url = format!("http://127.0.0.1:{}/metrics", e.worker.port);
    // The first map (empty) is the census's start: circuits after it count as created.
    eventually("the first map poll", patience(), || async {
        let (_, _, t) = e.get(&url, &[]).await;
        t.contains("appproxy_alive_circuits{protocol=\"http\"} 0")
            .then_some(())
    })
    .await;
    let l = e.launch().await;
    let cookie = e.cookie(&l).await;
    let (s, _, _) = e.get(&l.url, &[("cookie", &cookie)]).await;
    assert_eq!(s, 200);
    let text = eventually("the map poll counts the circuit", patience(), || async {
        let (_, _, t) = e.get(&url, &[]).await;
        t.contains("appproxy_circuits_created{protocol=\"http\"} 1")
            .then_some(t)
    })
    .await;
    for series in [
        "appproxy_alive_circuits{protocol=\"http\"} 1",
        "appproxy_alive_circuits{protocol=\"tcp\"} 0",
        "backendai_api_request_count{domain=\"\",endpoint=\"/auth/{circuit}\",error_detail=\"\",method=\"GET\",operation=\"\",status_code=\"200\"}",
        "backendai_api_request_duration_sec_bucket{domain=\"\",endpoint=\"/_appproxy/setup\"",
        "appproxy_authgate_http_request_seconds_bucket{method=\"GET\",route=\"/auth/{circuit}\"",
        "backendai_memory_used_rss ",
        "backendai_memory_used_vms ",
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }
    assert!(
        !text.contains(&l.id.to_string()),
        "no circuit id in a label"
    );
    // Another address: refused, unless it brings the token.
    let other = e2e::no_redirect_client_from("127.0.0.2");
    let (s, _, _) = e2e::http_get(&other, &url, &[]).await;
    assert_eq!(s, 403);
    let bearer = format!("Bearer {token}");
    let (s, _, body) = e2e::http_get(&other, &url, &[("authorization", &bearer)]).await;
    assert_eq!(s, 200);
    assert!(body.contains("appproxy_authgate_decisions_total"));
}

/// Path mode, Backend.AI's `http://<worker>/<session-id>/<service-name>/…`, through real
/// Traefik: one app that runs under its base URL (keeps the prefix, as Jupyter with
/// `base_url`) and one that gets it stripped (`X-Forwarded-Prefix` tells it where it lives),
/// both with WebSocket; setup under the prefix (a link used under another prefix is refused);
/// each cookie scoped to its prefix and bound to its circuit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_mode_serves_each_app_under_its_prefix_with_its_own_cookie() {
    let port = e2e::free_port();
    let e = env_with(WorkerSpec::path("gw-path", port, &["lab"])).await;
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    let authority = e.worker.spec.authority.clone();
    let mut apps = Vec::new();
    for app in ["lab", "board"] {
        let v = e
            .stack
            .create_circuit(&authority, user, session, e.echo.port, &json!({"app": app}))
            .await;
        let url = v["url"].as_str().unwrap().to_string();
        assert_eq!(url, format!("http://127.0.0.1:{port}/{session}/{app}"));
        let setup = v["setup_url"].as_str().unwrap().to_string();
        assert!(
            setup.starts_with(&format!("{url}/_appproxy/setup?token=")),
            "{setup}"
        );
        let id: Uuid = v["id"].as_str().unwrap().parse().unwrap();
        e.wait_router(id).await;
        apps.push((app, id, url, setup));
    }
    let prefix = |app: &str| format!("/{session}/{app}");
    // No cookie: refused.
    let (s, _, _) = e.get(&format!("{}/x", apps[0].2), &[]).await;
    assert_eq!(s, 401);
    // A link used under another app's prefix is refused; under its own it sets a cookie
    // scoped to the prefix and lands on the app.
    let lab_token = token_of(&apps[0].3);
    let (s, _, body) = e
        .get(
            &format!("{}/_appproxy/setup?token={lab_token}", apps[1].2),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let mut cookies = Vec::new();
    for (app, id, _, setup) in &apps {
        let (s, h, body) = e.get(setup, &[]).await;
        assert_eq!(s, 302, "{app}: {body}");
        assert_eq!(h["location"], format!("{}/", prefix(app)));
        let set = e2e::session_set_cookie(&h);
        assert!(
            set.starts_with(&format!("appproxy_{}=", id.simple())),
            "{set}"
        );
        assert!(set.contains(&format!("; Path={};", prefix(app))), "{set}");
        cookies.push(e2e::cookie_pair(&set));
    }
    // The kept app sees its whole path; the stripped one its own path and the prefix apart.
    for (i, (app, _, url, _)) in apps.iter().enumerate() {
        let before = e.echo.count();
        let (s, _, body) = e
            .get(&format!("{url}/api/x?q=1"), &[("cookie", &cookies[i])])
            .await;
        assert_eq!(s, 200, "{app}: {body}");
        let seen = e.echo.requests()[before..].to_vec();
        let r = seen.last().expect("the app saw the request");
        let fwd = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        match *app {
            "lab" => assert_eq!(r.uri, format!("{}/api/x?q=1", prefix(app))),
            _ => {
                assert_eq!(r.uri, "/api/x?q=1");
                assert_eq!(fwd("x-forwarded-prefix"), Some(prefix(app)));
            }
        }
        assert!(
            fwd("cookie").is_none_or(|c| !c.contains("appproxy_")),
            "{r:?}"
        );
        // WebSocket under the prefix.
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (status, echoed) = e2e::websocket_echo_at(
            &mut sock,
            &format!("127.0.0.1:{port}"),
            &format!("{}/ws", prefix(app)),
            &[("Cookie", &cookies[i])],
        )
        .await;
        assert!(status.contains(" 101 "), "{app}: {status}");
        assert_eq!(echoed.as_deref(), Some("hi over ws"));
    }
    // Cookie isolation: one app's cookie opens nothing under the other's prefix (a browser
    // would not even send it there).
    let (s, _, _) = e
        .get(&format!("{}/x", apps[1].2), &[("cookie", &cookies[0])])
        .await;
    assert_eq!(s, 401);
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (status, _) = e2e::websocket_echo_at(
        &mut sock,
        &format!("127.0.0.1:{port}"),
        &format!("{}/ws", prefix("board")),
        &[("Cookie", &cookies[0])],
    )
    .await;
    assert!(status.contains(" 401 "), "{status}");
    // Addresses outside every prefix reach no app: authgate's page for closed apps.
    let (s, _, _) = e
        .get(
            &format!("http://127.0.0.1:{port}/{session}/other/"),
            &[("cookie", &cookies[0])],
        )
        .await;
    assert_eq!(s, 410);
}

/// authgate's decision counter for allowed requests (`decisions_total{result="allow",…}`).
async fn allowed_at_forward_auth(e: &Env) -> u64 {
    let url = format!("http://127.0.0.1:{}/metrics", e.worker.port);
    let (_, _, text) = e.get(&url, &[]).await;
    text.lines()
        .filter(|l| l.contains("decisions_total{") && l.contains("result=\"allow\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_decides_inside_traefik_with_per_circuit_keys_only() {
    let mut spec = WorkerSpec::ports("gw-fast", 3);
    spec.fast_path = true;
    let mut e = env_with(spec).await;
    let l = e.launch().await;
    let cookie = e.cookie(&l).await;
    assert_eq!(e.get(&l.url, &[("cookie", &cookie)]).await.0, 200);

    // Traefik runs the plugin on the circuit's router; its WebSocket twin keeps ForwardAuth.
    let api = format!(
        "http://127.0.0.1:{}/api/http/routers",
        e.worker.traefik.api_port
    );
    let (_, _, body) = e.get(&format!("{api}/ap-{}@etcd", l.id), &[]).await;
    let router: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        router["middlewares"],
        json!([format!("ap-{}-fast@etcd", l.id)]),
        "{router}"
    );
    assert_eq!(router["status"], "enabled", "{router}");
    let (_, _, body) = e.get(&format!("{api}/ap-{}-ws@etcd", l.id), &[]).await;
    let twin: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        twin["middlewares"],
        json!([format!("ap-{}-auth@etcd", l.id)])
    );

    // Requests are decided without authgate: its allow counter stands still.
    let before = allowed_at_forward_auth(&e).await;
    for _ in 0..20 {
        assert_eq!(e.get(&l.url, &[("cookie", &cookie)]).await.0, 200);
    }
    assert_eq!(e.get(&l.url, &[]).await.0, 401);
    assert_eq!(allowed_at_forward_auth(&e).await, before);
    // A WebSocket upgrade goes through ForwardAuth (held open as activity).
    let (status, echoed) = websocket(port_of(&l.url), Some(&cookie)).await;
    assert!(status.contains("101"), "{status}");
    assert_eq!(echoed.as_deref(), Some("hi over ws"));
    assert_eq!(allowed_at_forward_auth(&e).await, before + 1);

    // What the plugin can read: the circuit's derived key, never the cookie secret.
    let dir = e.worker.fast_path_dir().expect("fast-path dir");
    let secret = e.worker.setting("KEYS__COOKIE_SECRET").unwrap();
    let key_file = dir.join("keys").join(l.id.to_string());
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(key.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    for f in walk(&dir) {
        let text = std::fs::read(&f).unwrap();
        assert!(
            !text.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the cookie secret",
            f.display()
        );
    }
    // Nothing secret in etcd either: the plugin's config names the circuit only.
    let dump = e.stack.etcd_dump().await;
    let fast: Vec<(&String, &String)> = dump
        .iter()
        .filter(|(k, _)| k.contains(&format!("ap-{}-fast/", l.id)))
        .collect();
    assert!(!fast.is_empty());
    assert!(
        fast.iter().all(|(_, v)| !v.contains(key.trim())),
        "{fast:?}"
    );

    // The switch is per worker: off, its cookie circuits go back to ForwardAuth (the same
    // cookie still works: authgate derives the same key); on again, back to the plugin.
    let middlewares = |e: &Env| {
        let url = format!("{api}/ap-{}@etcd", l.id);
        let http = e.http.clone();
        async move {
            let (_, _, body) = e2e::http_get(&http, &url, &[]).await;
            serde_json::from_str::<Value>(&body).unwrap()["middlewares"].clone()
        }
    };
    e.worker.set_fast_path(false, &e.stack.http).await;
    eventually("ForwardAuth again", patience(), || async {
        (middlewares(&e).await == json!([format!("ap-{}-auth@etcd", l.id)])).then_some(())
    })
    .await;
    let before = allowed_at_forward_auth(&e).await;
    assert_eq!(e.get(&l.url, &[("cookie", &cookie)]).await.0, 200);
    assert_eq!(allowed_at_forward_auth(&e).await, before + 1);
    e.worker.set_fast_path(true, &e.stack.http).await;
    eventually("the fast path again", patience(), || async {
        (middlewares(&e).await == json!([format!("ap-{}-fast@etcd", l.id)])).then_some(())
    })
    .await;
    assert_eq!(e.get(&l.url, &[("cookie", &cookie)]).await.0, 200);

    // A deleted circuit's key leaves with it.
    let (s, _) = e
        .stack
        .manager(Method::DELETE, &format!("/v2/circuits/{}", l.id), None)
        .await;
    assert_eq!(s, 200);
    eventually("the key file is removed", patience(), || async {
        (!key_file.exists()).then_some(())
    })
    .await;

    // A public circuit: the plugin only counts (its router exports no access-log record), lets
    // the request through as it came, and needs nothing of authgate's.
    let v = e
        .stack
        .create_circuit(
            &e.worker.spec.authority,
            Uuid::new_v4(),
            Uuid::new_v4(),
            e.echo.port,
            &json!({"open_to_public": true}),
        )
        .await;
    let (public, url) = (v["id"].as_str().unwrap(), v["url"].as_str().unwrap());
    e2e::wait_status(&e.http, url, &[], 200).await;
    let (_, _, body) = e.get(&format!("{api}/ap-{public}@etcd"), &[]).await;
    let router: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        router["middlewares"],
        json!([format!("ap-{public}-fast@etcd")]),
        "{router}"
    );
    let (s, _, _) = e
        .get(
            &format!("{url}/own"),
            &[("authorization", "Bearer the-apps-own")],
        )
        .await;
    assert_eq!(s, 200);
    let seen = e.echo.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.uri, "/own");
    assert!(
        seen.headers
            .contains(&("authorization".into(), "Bearer the-apps-own".into())),
        "{seen:?}"
    );
    let requests = || async {
        let v: Option<String> = e
            .stack
            .redis()
            .await
            .get(format!("circuit.{public}.requests"))
            .await
            .unwrap();
        v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    eventually("the public requests are counted", patience(), || async {
        (requests().await >= 2).then_some(())
    })
    .await;
    // A WebSocket takes the twin router (the same plugin, and the access log for its end):
    // counted once, by the plugin; the record of its end is not a second request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = requests().await;
    let (status, echoed) = websocket(port_of(url), None).await;
    assert!(status.contains("101"), "{status}");
    assert_eq!(echoed.as_deref(), Some("hi over ws"));
    eventually("the upgrade is counted", patience(), || async {
        (requests().await == settled + 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(requests().await, settled + 1);
    e.worker.stop_authgate();
    for _ in 0..5 {
        assert_eq!(e.get(url, &[]).await.0, 200);
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
