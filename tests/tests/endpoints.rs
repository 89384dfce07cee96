//! Inference endpoints as Backend.AI's Manager drives them, through real Traefik and authgate:
//! weighted replicas, active health checks (ejection and return), sticky-free WRR, atomic
//! declarative route replacement, idempotent deltas, oversized bulk syncs, API tokens.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use e2e::{Db, GatedWorker, Stack, WorkerSpec, backends::HttpEcho, eventually, patience};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

struct Env {
    stack: Stack,
    worker: GatedWorker,
    http: reqwest::Client,
}

async fn env(authority: &str) -> Env {
    let stack = Stack::start(Db::Sqlite).await;
    let worker = stack
        .start_gated_worker(WorkerSpec::ports(authority, 4))
        .await;
    Env {
        stack,
        worker,
        http: e2e::no_redirect_client(),
    }
}

fn item(id: Uuid, name: &str, public: bool, hc: Option<Value>) -> Value {
    json!({
        "deployment_id": id, "version": "v2", "service_name": name, "open_to_public": public,
        "tags": {"session": {"user_uuid": Uuid::new_v4(), "group_id": Uuid::new_v4(),
                             "domain_name": "default"},
                 "endpoint": {"id": id, "runtime_variant": "custom", "existing_url": null}},
        "health_check": hc,
    })
}

/// The backend that answered: `<name>` of the echo's `backend=<name> path=…`.
fn backend_of(body: &str) -> String {
    let first = body.split_whitespace().next().unwrap_or("");
    first.trim_start_matches("backend=").to_string()
}

fn route(session: Uuid, port: u16, ratio: f64) -> Value {
    json!({"session_id": session, "route_id": Uuid::new_v4(), "kernel_host": "127.0.0.1",
           "kernel_port": port, "traffic_ratio": ratio})
}

impl Env {
    /// Replace the endpoint's replicas with one per port (equal ratios) and wait until served.
    async fn serve(&self, id: Uuid, url: &str, session: Uuid, ports: &[u16]) {
        let routes: Vec<Value> = ports.iter().map(|p| route(session, *p, 1.0)).collect();
        let r = self.routes("routes", id, json!(routes)).await;
        assert_eq!(r["success"], true, "{r}");
        self.wait_status("endpoint serves", url, None, 200).await;
    }

    /// `serve` for a private endpoint: wait until `auth` gets a 200.
    async fn serve_with_auth(&self, id: Uuid, url: &str, session: Uuid, ports: &[u16], auth: &str) {
        let routes: Vec<Value> = ports.iter().map(|p| route(session, *p, 1.0)).collect();
        let r = self.routes("routes", id, json!(routes)).await;
        assert_eq!(r["success"], true, "{r}");
        self.wait_status("endpoint serves", url, Some(auth), 200)
            .await;
    }

    /// `POST /v2/endpoints/{id}/token`.
    async fn token(&self, id: Uuid, user: Uuid, exp: u64) -> String {
        let (s, v) = self
            .stack
            .manager(
                Method::POST,
                &format!("/v2/endpoints/{id}/token"),
                Some(&json!({"user_uuid": user, "exp": exp})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// This endpoint's entry of `/health/endpoints`.
    async fn endpoint_health(&self, id: Uuid) -> Option<Value> {
        let (_, v) = self
            .stack
            .manager(Method::GET, "/health/endpoints", None)
            .await;
        v["endpoints"]
            .as_array()?
            .iter()
            .find(|x| x["endpoint_id"] == id.to_string())
            .cloned()
    }

    /// Wait until `url` answers `status` (with `authorization` if given).
    async fn wait_status(&self, what: &str, url: &str, auth: Option<&str>, status: u16) {
        eventually(what, patience(), || async {
            let mut req = self.http.get(url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.ok()?;
            (r.status() == status).then_some(())
        })
        .await;
    }

    async fn create(&self, id: Uuid, body: &Value) -> String {
        let (s, v) = self
            .stack
            .manager(Method::POST, &format!("/v2/endpoints/{id}"), Some(body))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["success"], true);
        v["endpoint"].as_str().unwrap().to_string()
    }

    async fn routes(&self, path: &str, id: Uuid, routes: Value) -> Value {
        let key = if path.ends_with("unregister") {
            "route_ids"
        } else {
            "routes"
        };
        let (s, v) = self
            .stack
            .manager(
                Method::POST,
                &format!("/v2/endpoints/bulk/{path}"),
                Some(&json!({"endpoints": [{"deployment_id": id, key: routes}]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["endpoints"][0].clone()
    }

    /// `n` requests, 8 at a time; backend name → count (non-200 answers under "!<status>").
    async fn spread(&self, url: &str, auth: Option<&str>, n: usize) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for chunk in 0..n.div_ceil(8) {
            let batch = (n - chunk * 8).min(8);
            let mut tasks = Vec::new();
            for _ in 0..batch {
                let mut req = self.http.get(format!("{url}/v1/infer"));
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                tasks.push(tokio::spawn(async move {
                    match req.send().await {
                        Ok(r) if r.status() == 200 => {
                            backend_of(&r.text().await.unwrap_or_default())
                        }
                        Ok(r) => format!("!{}", r.status().as_u16()),
                        Err(_) => "!error".into(),
                    }
                }));
            }
            for t in tasks {
                *out.entry(t.await.unwrap()).or_insert(0) += 1;
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_replicas_health_ejection_and_tokens() {
    let e = env("inf-1").await;
    let (a, b, c) = (
        HttpEcho::start("a").await,
        HttpEcho::start("b").await,
        HttpEcho::start("c").await,
    );
    let id = Uuid::new_v4();
    let hc = json!({"enable": true, "interval": 1.0, "path": "/health", "max_wait_time": 1.0,
                    "expected_status_code": 200, "initial_delay": 0.0, "max_retries": 1});
    let url = e.create(id, &item(id, "llm", false, Some(hc))).await;
    // Idempotent re-sync: the same URL, health check still on.
    let (s, v) = e
        .stack
        .manager(
            Method::POST,
            &format!("/v2/endpoints/{id}"),
            Some(&item(id, "llm", false, None)),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["endpoint"], url.as_str());
    // (a re-sync without health_check turns it off; turn it back on at once)
    let (s, v) = e
        .stack
        .manager(
            Method::PUT,
            &format!("/v2/endpoints/{id}/health-check"),
            Some(
                &json!({"health_check": {"enable": true, "interval": 1.0, "max_wait_time": 1.0,
                                          "path": "/health"}}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["health_check_enabled"], true);
    let session = Uuid::new_v4();
    let r = e
        .routes(
            "routes",
            id,
            json!([
                route(session, a.port, 1.0),
                route(session, b.port, 1.0),
                route(session, c.port, 2.0)
            ]),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");

    // Tokens: none → E20006, wrong scheme → E20007, valid → through.
    let user = Uuid::new_v4();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = e.token(id, user, exp).await;
    let bearer = format!("Bearer {token}");
    e.wait_status("endpoint serves", &url, Some(&bearer), 200)
        .await;
    let code = |v: &str| {
        serde_json::from_str::<Value>(v)
            .map(|j| j["error_code"].clone())
            .unwrap_or_default()
    };
    let (s, _, body) = e2e::http_get(&e.http, &url, &[("accept", "application/json")]).await;
    assert_eq!((s, code(&body)), (401, json!("E20006")));
    let (s, _, body) = e2e::http_get(&e.http, &url, &[("authorization", "Basic eDp5")]).await;
    assert_eq!((s, code(&body)), (401, json!("E20007")));
    let (s, _, _) = e2e::http_get(
        &e.http,
        &url,
        &[("authorization", &format!("BackendAI {token}"))],
    )
    .await;
    assert_eq!(s, 200);
    // On the fast path the token was checked inside Traefik: the router carries the plugin.
    if e.worker.spec.fast_path {
        let circuit = circuit_of(&e, id).await;
        let api = format!(
            "http://127.0.0.1:{}/api/http/routers/ap-{circuit}@etcd",
            e.worker.traefik.api_port
        );
        let (_, _, body) = e2e::http_get(&e.http, &api, &[]).await;
        let router: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            router["middlewares"][0],
            format!("ap-{circuit}-fast@etcd"),
            "{router}"
        );
    }

    // 1:1:2 over 2,000 requests, within ±10 % of the expected share.
    eventually("all replicas healthy", patience(), || async {
        let (_, v) = e
            .stack
            .manager(
                Method::GET,
                &format!("/health/circuits/{}", circuit_of(&e, id).await),
                None,
            )
            .await;
        let ok = v["routes"]
            .as_array()?
            .iter()
            .all(|r| r["health_status"] == "healthy");
        ok.then_some(())
    })
    .await;
    let counts = e.spread(&url, Some(&bearer), 2000).await;
    for (name, want) in [("a", 500.0), ("b", 500.0), ("c", 1000.0)] {
        let got = *counts.get(name).unwrap_or(&0) as f64;
        assert!(
            (got - want).abs() <= want * 0.1,
            "{name}: {got} vs {want}: {counts:?}"
        );
    }
    println!("1:1:2 over 2000 requests: {counts:?}");

    // Replica c's health path fails → ejected; back when it recovers.
    c.set_health(500);
    eventually("c ejected", patience(), || async {
        let counts = e.spread(&url, Some(&bearer), 40).await;
        (counts.len() == 2 && !counts.contains_key("c")).then_some(())
    })
    .await;
    let cid = circuit_of(&e, id).await;
    eventually("provider reports c unhealthy", patience(), || async {
        let ep = e.endpoint_health(id).await?;
        let bad: Vec<_> = ep["routes"]
            .as_array()?
            .iter()
            .filter(|r| r["health_status"] == "unhealthy")
            .collect();
        (bad.len() == 1 && bad[0]["kernel_port"] == c.port).then_some(())
    })
    .await;
    c.set_health(200);
    eventually("c back", patience(), || async {
        e.spread(&url, Some(&bearer), 40)
            .await
            .contains_key("c")
            .then_some(())
    })
    .await;
    let (s, v) = e
        .stack
        .manager(Method::GET, &format!("/health/circuits/{cid}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = e.stack.manager(Method::GET, "/health/status", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["appproxy_api_version"], "v2");
    assert_eq!(v["workers"][0]["authority"], "inf-1");

    // A token of another endpoint opens nothing here (E20009); an expired one neither (E20008).
    let other = Uuid::new_v4();
    e.create(other, &item(other, "other", false, None)).await;
    let foreign = format!("Bearer {}", e.token(other, user, exp).await);
    let (s, _, body) = e2e::http_get(&e.http, &url, &[("authorization", &foreign)]).await;
    assert_eq!((s, code(&body)), (401, json!("E20009")), "{body}");
    let now = exp as i64 - 600;
    let expired_claims = json!({"typ": "ap-inference", "iss": "appproxy-provider", "sub": user.to_string(),
        "aud": cid, "id": cid, "user": user.to_string(), "iat": now - 700, "nbf": now - 700, "exp": now - 300});
    let key = EncodingKey::from_ed_pem(&std::fs::read(&e.stack.signing_key.0).unwrap()).unwrap();
    let expired =
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &expired_claims, &key).unwrap();
    let (s, _, body) = e2e::http_get(
        &e.http,
        &url,
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!((s, code(&body)), (401, json!("E20008")), "{body}");
    // The model server never sees the bearer token.
    for echo in [&a, &b, &c] {
        for req in echo.requests() {
            assert!(
                !req.headers.iter().any(|(k, _)| k == "authorization"),
                "{:?}",
                req.headers
            );
        }
    }
    // Token requests for unknown endpoints or past expiry are refused.
    let (s, _) = e
        .stack
        .manager(
            Method::POST,
            &format!("/v2/endpoints/{}/token", Uuid::new_v4()),
            Some(&json!({"user_uuid": user, "exp": exp})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = e
        .stack
        .manager(
            Method::POST,
            &format!("/v2/endpoints/{id}/token"),
            Some(&json!({"user_uuid": user, "exp": "2020-01-01T00:00:00"})),
        )
        .await;
    assert_eq!(s, 400);

    // Delete: the URL stops serving (authgate's closed-app page, 410).
    let (s, _) = e
        .stack
        .manager(Method::DELETE, &format!("/v2/endpoints/{id}"), None)
        .await;
    assert_eq!(s, 200);
    e.wait_status("deleted endpoint 410", &url, Some(&bearer), 410)
        .await;
    let (s, _) = e
        .stack
        .manager(Method::DELETE, &format!("/v2/endpoints/{id}"), None)
        .await;
    assert_eq!(s, 404);
}

async fn circuit_of(e: &Env, id: Uuid) -> String {
    e.endpoint_health(id).await.expect("endpoint")["circuit_id"]
        .as_str()
        .expect("circuit of endpoint")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarative_replacement_is_atomic_and_deltas_idempotent() {
    let e = env("inf-2").await;
    let (a, b, c, d) = (
        HttpEcho::start("a").await,
        HttpEcho::start("b").await,
        HttpEcho::start("c").await,
        HttpEcho::start("d").await,
    );
    let id = Uuid::new_v4();
    // Bulk create of two endpoints: URLs in input order; the second keeps a stable URL later.
    let id2 = Uuid::new_v4();
    let (s, v) = e
        .stack
        .manager(
            Method::POST,
            "/v2/endpoints/bulk",
            Some(&json!({"endpoints": [item(id, "svc-one", true, None), item(id2, "svc-two", true, None)]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["endpoints"][0]["deployment_id"], id.to_string());
    assert_eq!(v["endpoints"][1]["deployment_id"], id2.to_string());
    let url = v["endpoints"][0]["url"].as_str().unwrap().to_string();
    let url2 = v["endpoints"][1]["url"].as_str().unwrap().to_string();
    let session = Uuid::new_v4();
    e.routes(
        "routes",
        id,
        json!([route(session, a.port, 1.0), route(session, b.port, 1.0)]),
    )
    .await;
    e.wait_status("a/b serve", &url, None, 200).await;

    // Load while every replica is replaced in one declarative call: no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, url, stop, failures, total) = (
            e.http.clone(),
            url.clone(),
            stop.clone(),
            failures.clone(),
            total.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                total.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = e
        .routes(
            "routes",
            id,
            json!([route(session, c.port, 1.0), route(session, d.port, 1.0)]),
        )
        .await;
    assert_eq!(r["success"], true);
    eventually("only c/d serve", patience(), || async {
        let counts = e.spread(&url, None, 24).await;
        (counts.keys().all(|k| k == "c" || k == "d")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "of {}",
        total.load(Ordering::Relaxed)
    );
    println!(
        "declarative replacement under load: {} requests, 0 failed",
        total.load(Ordering::Relaxed)
    );

    // Delta register/unregister are idempotent by route_id.
    let extra = route(session, a.port, 1.0);
    let rid = extra["route_id"].clone();
    let r1 = e
        .routes("routes/register", id, json!([extra.clone()]))
        .await;
    let r2 = e.routes("routes/register", id, json!([extra])).await;
    assert_eq!(r1["registered_route_ids"], json!([rid]));
    assert_eq!(r2["already_registered_route_ids"], json!([rid]));
    assert_eq!(r2["registered_route_ids"], json!([]));
    eventually("a serves again", patience(), || async {
        e.spread(&url, None, 24)
            .await
            .contains_key("a")
            .then_some(())
    })
    .await;
    let u1 = e.routes("routes/unregister", id, json!([rid])).await;
    let u2 = e.routes("routes/unregister", id, json!([rid])).await;
    assert_eq!(u1["unregistered_route_ids"], json!([rid]));
    assert_eq!(u2["already_absent_route_ids"], json!([rid]));

    // More replicas than one etcd transaction holds (150 servers ≫ 128 ops) still sync.
    let many: Vec<Value> = (0..150).map(|_| route(session, c.port, 1.0)).collect();
    let r = e.routes("routes", id, json!(many)).await;
    assert_eq!(r["success"], true);
    eventually("150 replicas served", patience(), || async {
        let ep = e.endpoint_health(id).await?;
        let n = ep["routes"].as_array()?.len();
        let counts = e.spread(&url, None, 16).await;
        (n == 150 && counts.keys().all(|k| k == "c")).then_some(())
    })
    .await;

    // Per-entry failure for an endpoint without a circuit; bad input changes nothing.
    let (s, v) = e
        .stack
        .manager(
            Method::POST,
            "/v2/endpoints/bulk/routes",
            Some(&json!({"endpoints": [{"deployment_id": Uuid::new_v4(), "routes": []}]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["endpoints"][0]["success"], false);
    assert_eq!(
        v["endpoints"][0]["error"],
        "No circuit registered for this endpoint yet."
    );
    let before = e.stack.etcd_dump().await;
    let (s, _) = e
        .stack
        .manager(
            Method::POST,
            "/v2/endpoints/bulk/routes",
            Some(&json!({"endpoints": [{"deployment_id": id, "routes": [
                {"session_id": session, "route_id": Uuid::new_v4(), "kernel_host": "a`b", "kernel_port": 1}]}]})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e.stack.etcd_dump().await, before);

    // Re-creating an endpoint with its existing_url keeps the URL.
    let (s, _) = e
        .stack
        .manager(
            Method::DELETE,
            "/v2/endpoints/bulk",
            Some(
                &json!({"endpoints": [{"deployment_id": id2}, {"deployment_id": Uuid::new_v4()}]}),
            ),
        )
        .await;
    assert_eq!(s, 200);
    let mut again = item(id2, "svc-two", true, None);
    again["tags"]["endpoint"]["existing_url"] = json!(url2);
    assert_eq!(e.create(id2, &again).await, url2);
}

impl Env {
    /// `clients` concurrent clients, each sending `each` requests one after another (a client
    /// sends its next request when its last is answered); backend name → count.
    async fn load(&self, url: &str, clients: usize, each: usize) -> BTreeMap<String, usize> {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (http, url) = (self.http.clone(), url.to_string());
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..each {
                    let (s, _, body) = e2e::http_get(&http, &format!("{url}/c{c}/{i}"), &[]).await;
                    seen.push(if s == 200 {
                        backend_of(&body)
                    } else {
                        format!("!{s}")
                    });
                }
                seen
            }));
        }
        let mut out = BTreeMap::new();
        for t in tasks {
            for name in t.await.unwrap() {
                *out.entry(name).or_insert(0) += 1;
            }
        }
        out
    }

    /// Wait until the worker's Traefik balances the endpoint's service with `strategy`.
    async fn wait_strategy(&self, id: Uuid, strategy: &str) {
        let service = format!("ap-{}", circuit_of(self, id).await);
        let http = e2e::client_builder().build().unwrap();
        e2e::eventually("Traefik loads the strategy", e2e::patience(), || {
            let (http, service) = (http.clone(), service.clone());
            async move {
                let s = self.worker.traefik.http_service(&http, &service).await?;
                (s["loadBalancer"]["strategy"].as_str().unwrap_or("wrr") == strategy).then_some(())
            }
        })
        .await
    }
}

/// Backend.AI's three documented choices: least connections (Traefik's p2c) and least time
/// send most requests to the fast replica; round robin still splits by `traffic_ratio`, even
/// when the heavier replica is the slow one; a re-sync without the option keeps it, one with
/// it changes it; an unknown strategy is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_balancing_prefers_the_fast_replica_and_round_robin_keeps_weights() {
    let e = env("inf-lb").await;
    let (fast, slow) = (HttpEcho::start("fast").await, HttpEcho::start("slow").await);
    slow.set_delay_ms(100);
    let session = Uuid::new_v4();
    for strategy in ["least_connections", "least_time"] {
        let id = Uuid::new_v4();
        let mut body = item(id, strategy, true, None);
        body["load_balancing"] = json!(strategy);
        let url = e.create(id, &body).await;
        e.serve(id, &url, session, &[fast.port, slow.port]).await;
        let seen = e.load(&url, 8, 25).await;
        let (f, s) = (seen.get("fast").copied(), seen.get("slow").copied());
        assert_eq!(f.unwrap_or(0) + s.unwrap_or(0), 200, "{strategy}: {seen:?}");
        assert!(f.unwrap_or(0) >= 4 * s.unwrap_or(0), "{strategy}: {seen:?}");
        eprintln!("{strategy}: {seen:?}");
    }

    // Round robin (the default) by weight: 3 parts slow, 1 part fast, slow or not.
    let id = Uuid::new_v4();
    let url = e.create(id, &item(id, "wrr", true, None)).await;
    let r = e
        .routes(
            "routes",
            id,
            json!([
                route(session, fast.port, 1.0),
                route(session, slow.port, 3.0)
            ]),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    e.wait_status("endpoint serves", &url, None, 200).await;
    e.wait_strategy(id, "wrr").await;
    let seen = e.load(&url, 8, 10).await;
    assert_eq!(seen.get("slow"), Some(&60), "{seen:?}");
    assert_eq!(seen.get("fast"), Some(&20), "{seen:?}");

    // A re-sync without the option keeps it; with it, changes it.
    let mut body = item(id, "wrr", true, None);
    body["load_balancing"] = json!("least_time");
    e.create(id, &body).await;
    e.wait_strategy(id, "leasttime").await;
    e.create(id, &item(id, "wrr", true, None)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    e.wait_strategy(id, "leasttime").await;
    body["load_balancing"] = json!("fastest");
    let (s, v) = e
        .stack
        .manager(Method::POST, &format!("/v2/endpoints/{id}"), Some(&body))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["msg"].as_str().unwrap_or("").contains("least_time"),
        "{v}"
    );
    e.wait_strategy(id, "leasttime").await;
}

/// A per-endpoint rate limit (an endpoint option; authgate counts the whole endpoint's
/// authorized requests in Redis): a public endpoint goes behind authgate for it; after N
/// requests a `429` with `Retry-After` and Backend.AI's body; requests without a valid token
/// on a private endpoint are refused without using the budget; with Redis down the app's
/// traffic flows (fail open) and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_rate_limits_answer_429_and_fail_open_without_redis() {
    let mut e = env("inf-rl").await;
    let backend = HttpEcho::start("a").await;
    let session = Uuid::new_v4();
    let limited = |id: Uuid, name: &str, public: bool| {
        let mut body = item(id, name, public, None);
        body["rate_limit"] = json!({"requests": 5, "window_seconds": 60});
        body
    };
    let (public, private) = (Uuid::new_v4(), Uuid::new_v4());
    let url = e.create(public, &limited(public, "pub", true)).await;
    let url2 = e.create(private, &limited(private, "priv", false)).await;
    e2e::early_in_a_minute(20).await;
    e.serve(public, &url, session, &[backend.port]).await; // one request of the five
    for i in 1..5 {
        let (s, _, _) = e2e::http_get(&e.http, &format!("{url}/r{i}"), &[]).await;
        assert_eq!(s, 200, "request {i}");
    }
    let (s, h, body) = e2e::http_get(
        &e.http,
        &format!("{url}/r5"),
        &[("accept", "application/json")],
    )
    .await;
    e2e::assert_rate_limited(s, &h, &body);

    // Private: refused requests (no token) do not use the budget.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = e.token(private, Uuid::new_v4(), exp).await;
    let auth = format!("Bearer {token}");
    e.serve_with_auth(private, &url2, session, &[backend.port], &auth)
        .await;
    for _ in 0..10 {
        let (s, _, _) = e2e::http_get(&e.http, &url2, &[]).await;
        assert_eq!(s, 401);
    }
    for i in 1..5 {
        let (s, _, body) = e2e::http_get(&e.http, &url2, &[("authorization", &auth)]).await;
        assert_eq!(s, 200, "authorized request {i}: {body}");
    }
    let (s, _, _) = e2e::http_get(&e.http, &url2, &[("authorization", &auth)]).await;
    assert_eq!(s, 429);

    // Redis down: the public endpoint serves again (its reads stay up), counted.
    e.stack.kill_redis();
    let (s, _, body) = e2e::http_get(&e.http, &format!("{url}/after"), &[]).await;
    assert_eq!(s, 200, "{body}");
    let metrics = e2e::metrics_text(&e.http, &format!("http://127.0.0.1:{}", e.worker.port)).await;
    assert!(
        metrics.contains("appproxy_authgate_rate_limit_unavailable_total{scope=\"endpoint\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_and_retry_past_a_dead_replica() {
    let e = env("inf-3").await;
    let (a, b) = (HttpEcho::start("a").await, HttpEcho::start("b").await);
    let dead = HttpEcho::start("dead").await;
    let id = Uuid::new_v4();
    let mut body = item(id, "sticky", true, None);
    body["sticky"] = json!(true);
    let url = e.create(id, &body).await;
    let session = Uuid::new_v4();
    e.serve(id, &url, session, &[a.port, b.port]).await;
    // The first answer pins the client to one replica.
    let r = e.http.get(&url).send().await.unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("ap_sticky_"))
        .expect("sticky cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let pair = e2e::cookie_pair(&cookie);
    let first = r.text().await.unwrap();
    for _ in 0..20 {
        let (_, _, body) = e2e::http_get(&e.http, &url, &[("cookie", &pair)]).await;
        assert_eq!(
            body.split_whitespace().next(),
            first.split_whitespace().next()
        );
    }

    // A replica whose port is closed: one request at a time (so no other request moves the
    // balancer between an attempt and its retry), every request is retried on the live
    // replica and none fails, before and after passive health takes the dead one out.
    let id2 = Uuid::new_v4();
    let url2 = e.create(id2, &item(id2, "retry", true, None)).await;
    e.serve(id2, &url2, session, &[a.port, dead.port]).await;
    drop(dead);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..100 {
        let (s, _, body) = e2e::http_get(&e.http, &format!("{url2}/r{i}"), &[]).await;
        assert_eq!(
            (s, body.split_whitespace().next()),
            (200, Some("backend=a")),
            "request {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_endpoints_take_service_name_as_subdomain_and_keep_their_url() {
    let stack = Stack::start(Db::Sqlite).await;
    let apps_port = e2e::free_port();
    let mut spec = WorkerSpec::ports("inf-wild", 1);
    spec.frontend = e2e::TraefikFrontend::Wildcard { port: apps_port };
    spec.wildcard_domain = Some(".models.test".into());
    let _w = stack.start_gated_worker(spec).await;
    let e = Env {
        stack,
        worker: _w,
        http: e2e::no_redirect_client(),
    };
    let echo = HttpEcho::start("m").await;
    let id = Uuid::new_v4();
    let url = e.create(id, &item(id, "My.LLM", true, None)).await;
    assert_eq!(url, format!("http://my-llm.models.test:{apps_port}"));
    e.routes("routes", id, json!([route(Uuid::new_v4(), echo.port, 1.0)]))
        .await;
    let local = format!("http://127.0.0.1:{apps_port}/");
    eventually("served by Host", patience(), || async {
        let (s, _, body) = e2e::http_get(
            &e.http,
            &local,
            &[("host", &format!("my-llm.models.test:{apps_port}"))],
        )
        .await;
        (s == 200 && body.contains("backend=m")).then_some(())
    })
    .await;
    // A second endpoint with the same name gets a suffixed subdomain.
    let id2 = Uuid::new_v4();
    let url2 = e.create(id2, &item(id2, "My.LLM", true, None)).await;
    assert!(url2.starts_with("http://my-llm-") && url2 != url, "{url2}");
    // Deleted and re-created with existing_url: the same URL again.
    let (s, _) = e
        .stack
        .manager(Method::DELETE, &format!("/v2/endpoints/{id}"), None)
        .await;
    assert_eq!(s, 200);
    let mut again = item(id, "renamed", true, None);
    again["tags"]["endpoint"]["existing_url"] = json!(url);
    assert_eq!(e.create(id, &again).await, url);
}

/// The fast path's default scope: a worker's inference endpoints take the plugin (the private
/// one decided by it, the public one only counted, neither writing an access-log record per
/// request), its interactive circuits keep ForwardAuth or the access log (Traefik builds one
/// plugin instance per router that uses it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_fast_path_takes_inference_circuits_only() {
    let stack = Stack::start(Db::Sqlite).await;
    let mut spec = WorkerSpec::ports("inf-scope", 4);
    spec.fast_path = true;
    spec.env.push((
        "APPPROXY_AUTHGATE__FAST_PATH__SCOPE".into(),
        "inference".into(),
    ));
    let e = Env {
        worker: stack.start_gated_worker(spec).await,
        stack,
        http: e2e::no_redirect_client(),
    };
    let echo = HttpEcho::start("app").await;
    let routers = format!(
        "http://127.0.0.1:{}/api/http/routers",
        e.worker.traefik.api_port
    );
    let middlewares = |circuit: String| {
        let (http, url) = (e.http.clone(), format!("{routers}/ap-{circuit}@etcd"));
        async move {
            let (_, _, body) = e2e::http_get(&http, &url, &[]).await;
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            let names: Vec<String> = (v["middlewares"].as_array().into_iter().flatten())
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect();
            let exists = v["name"].is_string();
            (names, v["observability"]["accessLogs"].clone(), exists)
        }
    };
    let session = Uuid::new_v4();
    for public in [false, true] {
        let id = Uuid::new_v4();
        let url = e.create(id, &item(id, "scoped", public, None)).await;
        let r = e
            .routes("routes", id, json!([route(session, echo.port, 1.0)]))
            .await;
        assert_eq!(r["success"], true, "{r}");
        let circuit = circuit_of(&e, id).await;
        let auth = if public {
            None
        } else {
            let exp = 4_000_000_000u64;
            Some(format!("Bearer {}", e.token(id, Uuid::new_v4(), exp).await))
        };
        e.wait_status("served", &url, auth.as_deref(), 200).await;
        let (names, logs, _) = middlewares(circuit.clone()).await;
        assert_eq!(
            names.first(),
            Some(&format!("ap-{circuit}-fast@etcd")),
            "{names:?}"
        );
        assert_eq!(
            logs,
            json!(false),
            "{public}: no access-log record per request"
        );
        if !public {
            e.wait_status("no token", &url, None, 401).await;
        }
    }
    for public in [false, true] {
        let v = e
            .stack
            .create_circuit(
                &e.worker.spec.authority,
                Uuid::new_v4(),
                Uuid::new_v4(),
                echo.port,
                &json!({"open_to_public": public}),
            )
            .await;
        let circuit = v["id"].as_str().unwrap().to_string();
        eventually("the router", patience(), || async {
            let (names, _, exists) = middlewares(circuit.clone()).await;
            let expected: Vec<String> = if public {
                vec![]
            } else {
                vec![format!("ap-{circuit}-auth@etcd")]
            };
            (exists && names == expected).then_some(())
        })
        .await;
    }
}
