//! Provider end to end: API → SQL → etcd → a real Traefik → a real backend.
//! Every scenario runs on SQLite and on PostgreSQL.

use std::{collections::BTreeSet, time::Duration};

use e2e::{
    Db, Stack, TraefikFrontend,
    backends::{HttpEcho, TcpEcho},
    eventually, patience,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Generate `<name>_sqlite` and `<name>_postgres` tests from one async scenario.
macro_rules! both_dbs {
    ($($name:ident),+ $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(e2e::Db::Sqlite).await } )+ }
        mod postgres { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(e2e::Db::Postgres).await } )+ }
    };
}

both_dbs!(
    http_port_circuit_serves_then_404_after_delete,
    subdomain_circuit_routes_by_host,
    tcp_circuit_echoes_bytes,
    session_delete_removes_circuits_and_frees_ports,
    concurrent_creates_get_distinct_ports_and_full_range_is_503,
    burst_of_creates_coalesces_into_few_transactions,
    a_worker_just_written_is_paced_so_its_traefik_keeps_up,
    incremental_passes_leave_what_a_full_pass_would,
    worker_api_health_and_bulk_delete,
    provider_kill_mid_burst_and_prefix_wipe_are_repaired,
    bad_input_is_rejected_and_changes_nothing,
    worker_selection_honours_app_filters_traffic_and_liveness,
);

/// A stack with one registered port-mode worker and its Traefik.
async fn port_stack(
    db: Db,
    authority: &str,
    ports: u16,
    protocol: &str,
) -> (Stack, e2e::Traefik, u16, u16) {
    let stack = Stack::start(db).await;
    let (lo, hi) = Stack::port_range(ports);
    stack
        .register_worker(port_worker(authority, lo, hi, protocol))
        .await;
    let traefik = stack
        .start_traefik(authority, TraefikFrontend::Ports { lo, hi })
        .await;
    (stack, traefik, lo, hi)
}

fn port_worker(authority: &str, lo: u16, hi: u16, protocol: &str) -> Value {
    json!({
        "authority": authority, "frontend_mode": "port", "protocol": protocol,
        "hostname": "127.0.0.1", "api_port": 10201, "port_range": [lo, hi],
        "accepted_traffics": ["interactive", "inference"],
    })
}

fn circuit_body(authority: &str, session: Uuid, port: u16, protocol: &str) -> Value {
    json!({
        "app": "jupyter", "protocol": protocol, "worker": authority,
        "user_id": Uuid::new_v4(), "open_to_public": true,
        "routes": [{"session_id": session, "kernel_host": "127.0.0.1", "kernel_port": port}],
    })
}

async fn create(stack: &Stack, body: &Value) -> Value {
    let (status, v) = stack
        .manager(Method::POST, "/v2/circuits", Some(body))
        .await;
    assert_eq!(status, 201, "create circuit: {v}\n{}", stack.provider_log());
    v
}

/// GET through Traefik; `Some(body)` on 200.
async fn get_ok(http: &reqwest::Client, url: &str, host: Option<&str>) -> Option<String> {
    let mut req = http.get(url);
    if let Some(h) = host {
        req = req.header("Host", h);
    }
    let resp = req.send().await.ok()?;
    if resp.status() == 200 {
        resp.text().await.ok()
    } else {
        None
    }
}

/// `DELETE /v2/circuits/{id}` must answer 200.
async fn delete_circuit(stack: &Stack, id: &str) {
    let (s, v) = stack
        .manager(Method::DELETE, &format!("/v2/circuits/{id}"), None)
        .await;
    assert_eq!(s, 200, "delete circuit {id}: {v}");
}

/// Wait until Traefik answers 404 for `url` (the route is gone).
async fn eventually_404(stack: &Stack, url: &str) {
    eventually(&format!("404 from {url}"), patience(), || async {
        (status_of(&stack.http, url, None).await == Some(404)).then_some(())
    })
    .await;
}

async fn status_of(http: &reqwest::Client, url: &str, host: Option<&str>) -> Option<u16> {
    let mut req = http.get(url);
    if let Some(h) = host {
        req = req.header("Host", h);
    }
    req.send().await.ok().map(|r| r.status().as_u16())
}

async fn http_port_circuit_serves_then_404_after_delete(db: Db) {
    let (stack, traefik, lo, _) = port_stack(db, "w1", 3, "http").await;
    let backend = HttpEcho::start("b1").await;
    let session = Uuid::new_v4();
    let c = create(&stack, &circuit_body("w1", session, backend.port, "http")).await;
    assert_eq!(c["frontend"]["port"], lo, "lowest free port first: {c}");
    assert_eq!(c["url"], format!("http://127.0.0.1:{lo}"));
    let url = format!("http://127.0.0.1:{lo}/lab?x=1");
    let body = eventually("circuit served through Traefik", patience(), || {
        get_ok(&stack.http, &url, None)
    })
    .await;
    assert_eq!(body, "backend=b1 path=/lab?x=1");

    // The API reflects it.
    let id = c["id"].as_str().unwrap();
    let (s, got) = stack
        .manager(Method::GET, &format!("/v2/circuits/{id}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(got["session_ids"], json!([session]));
    let (s, got) = stack
        .worker(Method::GET, &format!("/api/circuit/{id}"), None)
        .await;
    assert_eq!((s, got["port"].as_u64()), (200, Some(u64::from(lo))));

    // Delete the worker's last circuit: Traefik must stop serving it (sentinel keeps the
    // prefix non-empty, so the deletion is seen).
    delete_circuit(&stack, id).await;
    eventually_404(&stack, &url).await;
    let (s, err) = stack
        .manager(Method::GET, &format!("/v2/circuits/{id}"), None)
        .await;
    assert_eq!(s, 404);
    assert_eq!(err["title"], "E00002: No such circuit.");
    drop(traefik);
}

async fn subdomain_circuit_routes_by_host(db: Db) {
    let stack = Stack::start(db).await;
    let apps_port = e2e::free_port();
    stack
        .register_worker(json!({
            "authority": "wild", "frontend_mode": "wildcard", "protocol": "http",
            "hostname": "127.0.0.1", "api_port": 10201, "wildcard_domain": ".apps.test",
            "wildcard_traffic_port": apps_port,
        }))
        .await;
    let _traefik = stack
        .start_traefik("wild", TraefikFrontend::Wildcard { port: apps_port })
        .await;
    let (b1, b2) = (HttpEcho::start("one").await, HttpEcho::start("two").await);
    let mut body = circuit_body("wild", Uuid::new_v4(), b1.port, "http");
    body["subdomain"] = json!("My.Notebook");
    let c1 = create(&stack, &body).await;
    assert_eq!(c1["frontend"]["subdomain"], "my-notebook");
    assert_eq!(
        c1["url"],
        format!("http://my-notebook.apps.test:{apps_port}")
    );
    let c2 = create(
        &stack,
        &circuit_body("wild", Uuid::new_v4(), b2.port, "http"),
    )
    .await;
    let sub2 = c2["frontend"]["subdomain"].as_str().unwrap().to_string();
    assert!(sub2.starts_with("app-"), "{sub2}");
    let url = format!("http://127.0.0.1:{apps_port}/");
    let got1 = eventually("host 1 served", patience(), || {
        get_ok(&stack.http, &url, Some("my-notebook.apps.test"))
    })
    .await;
    assert_eq!(got1, "backend=one path=/");
    let host2 = format!("{sub2}.apps.test");
    let got2 = eventually("host 2 served", patience(), || {
        get_ok(&stack.http, &url, Some(&host2))
    })
    .await;
    assert_eq!(got2, "backend=two path=/");
    assert_eq!(
        status_of(&stack.http, &url, Some("nobody.apps.test")).await,
        Some(404)
    );
    // Same preferred subdomain again: a suffixed one, never the same.
    let c3 = create(&stack, &body).await;
    let sub3 = c3["frontend"]["subdomain"].as_str().unwrap();
    assert!(
        sub3.starts_with("my-notebook-") && sub3.len() == "my-notebook-".len() + 8,
        "{sub3}"
    );
}

async fn tcp_circuit_echoes_bytes(db: Db) {
    let (stack, _traefik, lo, _) = port_stack(db, "tcpw", 2, "tcp").await;
    let echo = TcpEcho::start("sshd").await;
    let c = create(
        &stack,
        &circuit_body("tcpw", Uuid::new_v4(), echo.port, "tcp"),
    )
    .await;
    assert_eq!(c["url"], format!("tcp://127.0.0.1:{lo}"));
    let exchange = || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", lo))
            .await
            .ok()?;
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        let greeting = String::from_utf8_lossy(&buf[..n]).to_string();
        s.write_all(b"ping\n").await.ok()?;
        let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some((greeting, String::from_utf8_lossy(&buf[..n]).to_string()))
    };
    let (greeting, echoed) = eventually("tcp echo through Traefik", patience(), exchange).await;
    assert_eq!(greeting, "hello from sshd\n");
    assert_eq!(echoed, "ping\n");
    let id = c["id"].as_str().unwrap();
    delete_circuit(&stack, id).await;
    // New connections are no longer proxied (Traefik keeps existing ones; issue 5).
    eventually("tcp router gone", patience(), || async {
        exchange().await.is_none().then_some(())
    })
    .await;
}

async fn session_delete_removes_circuits_and_frees_ports(db: Db) {
    let (stack, _traefik, lo, _) = port_stack(db, "w1", 4, "http").await;
    let backend = HttpEcho::start("b").await;
    let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
    let a = create(&stack, &circuit_body("w1", s1, backend.port, "http")).await;
    let b = create(&stack, &circuit_body("w1", s1, backend.port, "http")).await;
    let other = create(&stack, &circuit_body("w1", s2, backend.port, "http")).await;
    let ports: Vec<u64> = [&a, &b, &other]
        .iter()
        .map(|c| c["frontend"]["port"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports,
        vec![u64::from(lo), u64::from(lo) + 1, u64::from(lo) + 2]
    );
    for p in &ports {
        let url = format!("http://127.0.0.1:{p}/");
        eventually("served", patience(), || get_ok(&stack.http, &url, None)).await;
    }
    let (s, listed) = stack
        .manager(Method::GET, &format!("/v2/circuits?session_id={s1}"), None)
        .await;
    assert_eq!((s, listed["circuits"].as_array().unwrap().len()), (200, 2));

    let (s, v) = stack
        .manager(Method::DELETE, &format!("/v2/sessions/{s1}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deleted_circuit_ids"].as_array().unwrap().len(), 2);
    for p in &ports[..2] {
        let url = format!("http://127.0.0.1:{p}/");
        eventually_404(&stack, &url).await;
    }
    let url = format!("http://127.0.0.1:{}/", ports[2]);
    assert!(
        get_ok(&stack.http, &url, None).await.is_some(),
        "other session's circuit survives"
    );
    // The freed ports are allocated again, lowest first.
    let again = create(
        &stack,
        &circuit_body("w1", Uuid::new_v4(), backend.port, "http"),
    )
    .await;
    assert_eq!(again["frontend"]["port"], lo);
    let (_, slots) = stack
        .worker(Method::GET, "/api/slots?wsproxy_host=w1&in_use=true", None)
        .await;
    let used: BTreeSet<u64> = slots["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["port"].as_u64().unwrap())
        .collect();
    assert_eq!(used, BTreeSet::from([u64::from(lo), u64::from(lo) + 2]));
}

async fn concurrent_creates_get_distinct_ports_and_full_range_is_503(db: Db) {
    let stack = Stack::start(db).await;
    let (lo, hi) = Stack::port_range(12);
    stack
        .register_worker(port_worker("w1", lo, hi, "http"))
        .await;
    let body = circuit_body("w1", Uuid::new_v4(), 9, "http");
    let results = futures_join(&stack, &body, 16).await;
    let ok: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, v)| v)
        .collect();
    let full: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 503)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(ok.len(), 12, "every port used exactly once: {results:?}");
    assert_eq!(full.len(), 4, "{results:?}");
    let ports: BTreeSet<u64> = ok
        .iter()
        .map(|v| v["frontend"]["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, (u64::from(lo)..=u64::from(hi)).collect());
    for v in full {
        assert_eq!(
            v["type"],
            "https://api.backend.ai/probs/appproxy/worker-not-available"
        );
        assert_eq!(v["title"], "Worker not available.");
        assert!(v["error_code"].is_string() && v["msg"].is_string(), "{v}");
    }
    // A preferred port that is taken is a 409.
    let mut body = body.clone();
    body["port"] = json!(lo);
    let (s, v) = stack
        .manager(Method::POST, "/v2/circuits", Some(&body))
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(
        v["type"],
        "https://api.backend.ai/probs/appproxy/port-not-available"
    );
}

async fn etcd_txns(stack: &Stack) -> u64 {
    provider_counter(stack, "appproxy_provider_etcd_txns_total ").await
}

async fn burst_of_creates_coalesces_into_few_transactions(db: Db) {
    let (stack, _traefik, lo, hi) = port_stack(db, "w1", 40, "http").await;
    let backend = HttpEcho::start("b").await;
    let quiet = Duration::from_millis(300);
    let before =
        e2e::until_stable("etcd transactions", quiet, patience(), || etcd_txns(&stack)).await;
    let body = circuit_body("w1", Uuid::new_v4(), backend.port, "http");
    let results = futures_join(&stack, &body, 40).await;
    assert!(results.iter().all(|(s, _)| *s == 201), "{results:?}");
    // Every circuit is served through Traefik...
    for p in [lo, hi] {
        let url = format!("http://127.0.0.1:{p}/");
        eventually("burst served", patience(), || {
            get_ok(&stack.http, &url, None)
        })
        .await;
    }
    let root = stack.root_key("w1");
    eventually("all 40 routers in etcd", patience(), || async {
        let n = stack
            .etcd_dump()
            .await
            .keys()
            .filter(|k| k.starts_with(&root) && k.ends_with("/rule"))
            .count();
        (n == 41).then_some(())
    })
    .await;
    // ...and the 40 creates cost few etcd transactions (so few Traefik reloads).
    let txns = etcd_txns(&stack).await - before;
    eprintln!("40 concurrent creates took {txns} etcd transactions");
    assert!(
        txns >= 1 && txns * 3 <= 40,
        "40 circuits took {txns} transactions"
    );
}

/// Traefik rebuilds its whole configuration for every transaction under its root, so after
/// writing a worker the reconciler leaves it alone for a rebuild's time per transaction
/// (`reconcile.traefik_rebuild_ms_at_10k_keys`, scaled by the square of the worker's keys)
/// and gathers what arrives meanwhile into the next transaction. Here the figure is set so
/// that ~70 circuits (~290 keys) mean ~500 ms per transaction: ten creates 150 ms apart —
/// ten passes without pacing, since passes are at most `min_interval` (100 ms) apart — go
/// out in a few transactions, and every one of them is served.
async fn a_worker_just_written_is_paced_so_its_traefik_keeps_up(db: Db) {
    let env = vec![(
        "APPPROXY_PROVIDER__RECONCILE__TRAEFIK_REBUILD_MS_AT_10K_KEYS".to_string(),
        "600000".to_string(),
    )];
    let stack = Stack::start_with(db, env).await;
    let (lo, hi) = Stack::port_range(90);
    stack
        .register_worker(port_worker("w1", lo, hi, "http"))
        .await;
    let _traefik = stack
        .start_traefik("w1", TraefikFrontend::Ports { lo, hi })
        .await;
    let backend = HttpEcho::start("b").await;
    let body = circuit_body("w1", Uuid::new_v4(), backend.port, "http");
    for _ in 0..7 {
        let statuses: Vec<u16> = futures_join(&stack, &body, 10)
            .await
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    }
    let quiet = Duration::from_millis(1500);
    let before =
        e2e::until_stable("etcd transactions", quiet, patience(), || etcd_txns(&stack)).await;
    let held_before = provider_counter(&stack, "appproxy_provider_reconcile_held_total ").await;

    let mut ports = Vec::new();
    for _ in 0..10 {
        let v = create(
            &stack,
            &circuit_body("w1", Uuid::new_v4(), backend.port, "http"),
        )
        .await;
        ports.push(v["frontend"]["port"].as_u64().expect("port") as u16);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for p in &ports {
        let url = format!("http://127.0.0.1:{p}/");
        eventually("paced circuit served", patience(), || {
            get_ok(&stack.http, &url, None)
        })
        .await;
    }
    let txns = e2e::until_stable("etcd transactions", quiet, patience(), || etcd_txns(&stack))
        .await
        - before;
    eprintln!("10 creates 150 ms apart took {txns} etcd transactions");
    assert!(
        (1..=5).contains(&txns),
        "10 spaced creates took {txns} transactions"
    );
    let held = provider_counter(&stack, "appproxy_provider_reconcile_held_total ").await;
    assert!(held > held_before, "no change was held for a later pass");
}

/// A provider counter (first sample whose name and labels start with `series`).
async fn provider_counter(stack: &Stack, series: &str) -> u64 {
    e2e::metrics_text(&stack.http, &stack.provider_url())
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Creates, deletes and session deletes are applied by incremental passes (only the changed
/// circuits against the reconciler's image of etcd). A full pass afterwards — the periodic
/// resync, here every second — must find nothing to write; a foreign edit of a circuit's key
/// is repaired.
async fn incremental_passes_leave_what_a_full_pass_would(db: Db) {
    let stack = Stack::start_with(
        db,
        vec![(
            "APPPROXY_PROVIDER__RECONCILE__RESYNC_SECONDS".into(),
            "1".into(),
        )],
    )
    .await;
    let (lo, hi) = Stack::port_range(30);
    stack
        .register_worker(port_worker("w1", lo, hi, "http"))
        .await;
    let traefik = stack
        .start_traefik("w1", TraefikFrontend::Ports { lo, hi })
        .await;
    let backend = HttpEcho::start("b").await;
    let incremental = "appproxy_provider_reconcile_workers_total{kind=\"incremental\"} ";
    let full = "appproxy_provider_reconcile_workers_total{kind=\"full\"} ";
    let inc0 = provider_counter(&stack, incremental).await;
    let body = circuit_body("w1", Uuid::new_v4(), backend.port, "http");
    let created = futures_join(&stack, &body, 20).await;
    assert!(created.iter().all(|(s, _)| *s == 201), "{created:?}");
    for (_, c) in created.iter().take(5) {
        delete_circuit(&stack, c["id"].as_str().unwrap()).await;
    }
    let session = Uuid::new_v4();
    let own = create(&stack, &circuit_body("w1", session, backend.port, "http")).await;
    let (s, _) = stack
        .manager(Method::DELETE, &format!("/v2/sessions/{session}"), None)
        .await;
    assert_eq!(s, 200);
    for _ in 0..3 {
        create(
            &stack,
            &circuit_body("w1", Uuid::new_v4(), backend.port, "http"),
        )
        .await;
    }
    assert_agree(&stack, &traefik, "w1").await;
    assert!(
        !stack
            .etcd_dump()
            .await
            .keys()
            .any(|k| k.contains(own["id"].as_str().unwrap())),
        "the session's circuit left keys behind"
    );
    assert!(provider_counter(&stack, incremental).await > inc0);

    // A foreign edit of one circuit's service URL is put back (the watch forces a full pass).
    let root = stack.root_key("w1");
    let id = created[10].1["id"].as_str().unwrap();
    let key = format!("{root}/http/services/ap-{id}/loadBalancer/servers/0/url");
    let good = stack.etcd_dump().await[&key].clone();
    let mut etcd = stack.etcd_client().await;
    etcd.put(key.clone(), "http://127.0.0.1:9", None)
        .await
        .unwrap();
    eventually("foreign edit repaired", patience(), || async {
        (stack.etcd_dump().await.get(&key) == Some(&good)).then_some(())
    })
    .await;

    // Two full passes later nothing was written: the image equalled the full render.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (txns, full0) = (
        etcd_txns(&stack).await,
        provider_counter(&stack, full).await,
    );
    eventually("two more full passes", patience(), || async {
        (provider_counter(&stack, full).await >= full0 + 2).then_some(())
    })
    .await;
    assert_eq!(
        etcd_txns(&stack).await,
        txns,
        "a full pass after incremental ones changed etcd"
    );
}

async fn futures_join(stack: &Stack, body: &Value, n: usize) -> Vec<(u16, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (http, url, token, body) = (
            stack.http.clone(),
            format!("{}/v2/circuits", stack.provider_url()),
            stack.manager_token.clone(),
            body.clone(),
        );
        set.spawn(async move {
            let r = http
                .post(url)
                .header("X-BackendAI-Token", token)
                .json(&body)
                .send()
                .await
                .expect("post");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.expect("task"));
    }
    out
}

/// Routers we expect Traefik to serve for a worker: one per circuit in SQL.
async fn assert_agree(stack: &Stack, traefik: &e2e::Traefik, authority: &str) {
    stack.assert_agree(traefik, authority).await;
}

async fn provider_kill_mid_burst_and_prefix_wipe_are_repaired(db: Db) {
    let (mut stack, traefik, lo, _) = port_stack(db, "w1", 150, "http").await;
    let backend = HttpEcho::start("b").await;
    let body = circuit_body("w1", Uuid::new_v4(), backend.port, "http");
    // A burst of creates; SIGKILL the provider while it runs.
    let burst = {
        let (http, url, token, body) = (
            stack.http.clone(),
            format!("{}/v2/circuits", stack.provider_url()),
            stack.manager_token.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            let mut acked = Vec::new();
            // Ends with a transport error (the kill), never with an HTTP error status.
            let mut killed = false;
            for _ in 0..150 {
                let sent = http
                    .post(&url)
                    .header("X-BackendAI-Token", &token)
                    .json(&body)
                    .send();
                let Ok(r) = sent.await else {
                    killed = true;
                    break;
                };
                if r.status() != 201 {
                    break;
                }
                match r.json::<Value>().await {
                    Ok(v) => acked.push(v["id"].as_str().unwrap_or_default().to_string()),
                    Err(_) => {
                        killed = true;
                        break;
                    }
                }
            }
            (acked, killed)
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    stack.kill_provider();
    let (acked, killed) = burst.await.unwrap();
    assert!(
        killed && !acked.is_empty(),
        "the kill must interrupt a running burst ({} acknowledged, killed: {killed})",
        acked.len()
    );
    stack.start_provider();
    let (_, v) = stack
        .manager(Method::GET, "/v2/circuits?worker=w1", None)
        .await;
    let in_sql: BTreeSet<String> = v["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    for id in &acked {
        assert!(
            in_sql.contains(id),
            "acknowledged {id} lost: {} acked, {} in SQL",
            acked.len(),
            in_sql.len()
        );
    }
    assert_agree(&stack, &traefik, "w1").await;

    // Wipe the worker's whole prefix behind the provider's back: it is restored, and
    // traffic comes back, without a restart.
    let first_port = v["circuits"][0]["port"].as_u64().unwrap_or(u64::from(lo));
    let mut etcd = stack.etcd_client().await;
    etcd.delete(
        stack.root_key("w1"),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    assert_agree(&stack, &traefik, "w1").await;
    let url = format!("http://127.0.0.1:{first_port}/");
    eventually("served again", patience(), || {
        get_ok(&stack.http, &url, None)
    })
    .await;
    // A foreign key that would poison Traefik's decoder is removed too.
    let bogus = format!("{}/http/routers/intruder/bogusField", stack.root_key("w1"));
    etcd.put(bogus.clone(), "1", None).await.unwrap();
    eventually("foreign key removed", patience(), || async {
        (!stack.etcd_dump().await.contains_key(&bogus)).then_some(())
    })
    .await;
}

async fn bad_input_is_rejected_and_changes_nothing(db: Db) {
    let stack = Stack::start(db).await;
    let (lo, hi) = Stack::port_range(3);
    stack
        .register_worker(port_worker("w1", lo, hi, "http"))
        .await;
    let good = circuit_body("w1", Uuid::new_v4(), 8080, "http");
    // Let the reconciler settle, then snapshot the keyspace.
    let quiet = Duration::from_millis(300);
    let before = e2e::until_stable("the keyspace", quiet, patience(), || stack.etcd_dump()).await;

    let mut cases: Vec<(&str, Method, String, Option<Value>, u16)> = Vec::new();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let unknown = with(&|b| b["surprise"] = json!(1));
    let bad_port = with(&|b| b["routes"][0]["kernel_port"] = json!(70000));
    let zero_port = with(&|b| b["routes"][0]["kernel_port"] = json!(0));
    let bad_host = with(&|b| b["routes"][0]["kernel_host"] = json!("evil`) || Host(`x"));
    let url_host = with(&|b| b["routes"][0]["kernel_host"] = json!("http://10.0.0.1/"));
    let bad_ip = with(&|b| b["allowed_client_ips"] = json!("10.0.0.0/99"));
    let no_routes = with(&|b| b["routes"] = json!([]));
    let bad_proto = with(&|b| b["protocol"] = json!("gopher"));
    let out_of_range = with(&|b| b["port"] = json!(hi + 1));
    let nan_ratio = with(&|b| b["routes"][0]["traffic_ratio"] = json!(-1.0));
    for (body, status) in [
        (unknown, 400),
        (bad_port, 400),
        (zero_port, 400),
        (bad_host, 400),
        (url_host, 400),
        (bad_ip, 400),
        (no_routes, 400),
        (bad_proto, 400),
        (out_of_range, 409),
        (nan_ratio, 400),
    ] {
        cases.push((
            "create",
            Method::POST,
            "/v2/circuits".into(),
            Some(body),
            status,
        ));
    }
    let big = json!({ "app": "x".repeat(400_000) });
    cases.push((
        "oversized",
        Method::POST,
        "/v2/circuits".into(),
        Some(big),
        413,
    ));
    cases.push((
        "path chars",
        Method::GET,
        "/v2/circuits/..%2F..%2Fetc".into(),
        None,
        400,
    ));
    cases.push((
        "not a uuid",
        Method::DELETE,
        "/v2/circuits/abc".into(),
        None,
        400,
    ));
    cases.push((
        "not a uuid",
        Method::DELETE,
        "/api/circuit/1234".into(),
        None,
        400,
    ));
    cases.push((
        "session",
        Method::DELETE,
        "/v2/sessions/x;y".into(),
        None,
        400,
    ));
    let bad_worker = json!({"authority": "w2", "frontend_mode": "port", "protocol": "http",
        "hostname": "bad host", "api_port": 1, "port_range": [5, 4]});
    cases.push((
        "worker",
        Method::PUT,
        "/api/worker".into(),
        Some(bad_worker),
        400,
    ));
    let wild_no_domain = json!({"authority": "w3", "frontend_mode": "wildcard", "protocol": "http",
        "hostname": "h", "api_port": 1});
    cases.push((
        "worker",
        Method::PUT,
        "/api/worker".into(),
        Some(wild_no_domain),
        400,
    ));

    for (what, method, path, body, want) in cases {
        let token = if path.starts_with("/api/worker") {
            stack.worker_token.clone().unwrap()
        } else {
            stack.manager_token.clone()
        };
        let (s, v) = stack.call(Some(&token), method, &path, body.as_ref()).await;
        assert_eq!(s, want, "{what} {path}: {v}");
        assert!(
            v["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("https://api.backend.ai/probs/"))
                && v["title"].is_string()
                && v["error_code"].is_string(),
            "{what}: error body {v}"
        );
    }
    // Auth: no token, wrong token, worker token on manager routes.
    let (s, v) = stack
        .call(None, Method::POST, "/v2/circuits", Some(&good))
        .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (401, Some("https://api.backend.ai/probs/auth-failed"))
    );
    let (s, _) = stack
        .call(
            Some("wrong-token-wrong-token"),
            Method::GET,
            "/api/worker",
            None,
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = stack
        .call(
            stack.worker_token.as_deref(),
            Method::POST,
            "/v2/circuits",
            Some(&good),
        )
        .await;
    assert_eq!(s, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.etcd_dump().await, before, "etcd keyspace changed");
    let (_, v) = stack.manager(Method::GET, "/v2/circuits", None).await;
    assert_eq!(v["circuits"], json!([]));
    let (_, v) = stack.worker(Method::GET, "/api/worker", None).await;
    assert_eq!(v["workers"].as_array().unwrap().len(), 1);
}

async fn worker_api_health_and_bulk_delete(db: Db) {
    let stack = Stack::start(db).await;
    let (s, v) = stack.call(None, Method::GET, "/status", None).await;
    assert_eq!((s, v["api_version"].as_str()), (200, Some("v2")));
    let (s, v) = stack.call(None, Method::GET, "/health", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")), "{v}");
    for path in ["/health/livez", "/health/readyz"] {
        assert_eq!(
            stack.call(None, Method::GET, path, None).await.0,
            200,
            "{path}"
        );
    }
    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.provider_url()))
        .send()
        .await
        .unwrap();
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("appproxy_provider_reconcile_passes_total")
    );

    let (lo, hi) = Stack::port_range(3);
    let w = stack
        .register_worker(port_worker("w1", lo, hi, "http"))
        .await;
    let wid = w["id"].as_str().unwrap().to_string();
    assert_eq!(
        (w["available_slots"].as_i64(), w["nodes"].as_i64()),
        (Some(3), Some(1))
    );
    assert_eq!(w["slots"].as_array().unwrap().len(), 3);
    // Re-registration is an upsert by authority: same id.
    let again = stack
        .register_worker(port_worker("w1", lo, hi, "http"))
        .await;
    assert_eq!(again["id"], w["id"]);
    let (s, v) = stack
        .worker(Method::PATCH, &format!("/api/worker/{wid}"), None)
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ALIVE")));

    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            let c = create(&stack, &circuit_body("w1", Uuid::new_v4(), 9, "http")).await;
            ids.push(c["id"].as_str().unwrap().to_string());
        }
        ids
    };
    let (s, v) = stack
        .worker(Method::GET, &format!("/api/worker/{wid}/circuits"), None)
        .await;
    assert_eq!((s, v["circuits"].as_array().unwrap().len()), (200, 3));
    let (_, v) = stack
        .worker(Method::GET, &format!("/api/worker/{wid}"), None)
        .await;
    assert_eq!(v["occupied_slots"], 3);
    // Backend.AI's bulk delete takes a comma-separated query string...
    let (s, v) = stack
        .worker(
            Method::DELETE,
            &format!("/api/circuit/_/bulk?circuit_ids={},{}", ids[0], ids[1]),
            None,
        )
        .await;
    assert_eq!((s, v["success"].as_bool()), (200, Some(true)), "{v}");
    // ...or a JSON list in the body; unknown ids are ignored.
    let body = json!({ "circuit_ids": [ids[2], Uuid::new_v4()] });
    let (s, _) = stack
        .worker(Method::DELETE, "/api/circuit/_/bulk", Some(&body))
        .await;
    assert_eq!(s, 200);
    let (_, v) = stack
        .worker(Method::GET, &format!("/api/worker/{wid}/circuits"), None)
        .await;
    assert_eq!(v["circuits"], json!([]));
    // authgate's slim view carries an ETag; polling with it is 304 until a circuit changes.
    let map = |etag: Option<String>| {
        let mut req = stack
            .http
            .get(format!(
                "{}/api/worker/{wid}/circuits?view=map",
                stack.provider_url()
            ))
            .header("X-BackendAI-Token", stack.worker_token.as_deref().unwrap());
        if let Some(e) = etag {
            req = req.header("If-None-Match", e);
        }
        async move {
            let r = req.send().await.unwrap();
            let tag = r.headers()["etag"].to_str().unwrap().to_string();
            (r.status().as_u16(), tag, r.text().await.unwrap())
        }
    };
    let (s, tag, body) = map(None).await;
    assert_eq!(s, 200, "{body}");
    // No circuits; the three deleted ones are listed as ended (authgate cuts their
    // connections), each with where its connections went.
    let slim: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(slim["circuits"], json!([]), "{body}");
    let mut ended: Vec<&str> = (slim["ended"].as_array().unwrap().iter())
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    ended.sort();
    let mut deleted: Vec<&str> = ids.iter().map(String::as_str).collect();
    deleted.sort();
    assert_eq!(ended, deleted, "{body}");
    assert!(
        (slim["ended"].as_array().unwrap().iter())
            .all(|e| e["backends"] == json!(["127.0.0.1:9"]) && e["port"].is_u64()),
        "{body}"
    );
    assert!(
        tag.len() > 2 && tag.starts_with('"') && tag.ends_with('"'),
        "{tag}"
    );
    let (s, same, body) = map(Some(tag.clone())).await;
    assert_eq!((s, same.as_str(), body.as_str()), (304, tag.as_str(), ""));
    let extra = create(&stack, &circuit_body("w1", Uuid::new_v4(), 9, "http")).await;
    let (s, newer, body) = map(Some(tag.clone())).await;
    assert!(
        s == 200 && newer != tag,
        "a create must change the map's version"
    );
    let slim: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(slim["circuits"].as_array().unwrap().len(), 1);
    let entry = &slim["circuits"][0];
    assert!(
        entry["session_ids"].is_array() && entry["app"].is_null(),
        "{entry}"
    );
    delete_circuit(&stack, extra["id"].as_str().unwrap()).await;
    let (s, newest, _) = map(Some(newer.clone())).await;
    assert!(
        s == 200 && newest != newer,
        "a delete must change the map's version"
    );
    let root = stack.root_key("w1");
    eventually("etcd holds only shared objects", patience(), || async {
        let dump = stack.etcd_dump().await;
        dump.keys()
            .filter(|k| k.starts_with(&root))
            .all(|k| {
                use appproxy_common::names::{RETRY, SENTINEL, SETUP};
                [SETUP, SENTINEL, RETRY]
                    .iter()
                    .any(|n| k.contains(&format!("/{n}/")))
            })
            .then_some(())
    })
    .await;
    // Deregistering both registrations makes the worker LOST; then no circuit can be placed.
    for _ in 0..2 {
        let (s, _) = stack
            .worker(Method::DELETE, &format!("/api/worker/{wid}"), None)
            .await;
        assert_eq!(s, 200);
    }
    let (_, v) = stack
        .worker(Method::GET, &format!("/api/worker/{wid}"), None)
        .await;
    assert_eq!(
        (v["status"].as_str(), v["nodes"].as_i64()),
        (Some("LOST"), Some(0))
    );
    let (s, v) = stack
        .manager(
            Method::POST,
            "/v2/circuits",
            Some(&circuit_body("w1", Uuid::new_v4(), 9, "http")),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    let (s, v) = stack
        .worker(
            Method::GET,
            &format!("/api/worker/{}", Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(
        (s, v["title"].as_str()),
        (404, Some("E00002: No such worker."))
    );
}

/// The harness's Redis: started on a free port, answers, and is stopped by PID with the test.
#[tokio::test]
async fn harness_redis_starts_and_stops() {
    let stack = Stack::start(Db::Sqlite).await;
    let (mut redis, port) = stack.start_redis();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    let pid = redis.pid();
    redis.stop(Duration::from_secs(3));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "redis {pid} still exists after stop"
    );
}

/// Backend.AI's `pick_worker`, fixed: dedicated workers (`filtered_apps_only`) take only the
/// requests their `app_filters` match and are preferred for them; the traffic type and
/// liveness are honoured; general workers are chosen by free capacity.
async fn worker_selection_honours_app_filters_traffic_and_liveness(db: Db) {
    let stack = Stack::start(db).await;
    let alice = Uuid::new_v4();
    let (lo, hi) = Stack::port_range(4);
    let mut general = port_worker("general", lo, hi, "http");
    general["accepted_traffics"] = json!(["interactive"]);
    let general = stack.register_worker(general).await;
    let (lo, hi) = Stack::port_range(4);
    let mut dedicated = port_worker("dedicated", lo, hi, "http");
    dedicated["filtered_apps_only"] = json!(true);
    dedicated["app_filters"] = json!([{"key": "session.user_uuid", "value": alice.to_string()}]);
    stack.register_worker(dedicated).await;
    let (lo, hi) = Stack::port_range(4);
    let mut inference_only = port_worker("inference-only", lo, hi, "http");
    inference_only["accepted_traffics"] = json!(["inference"]);
    stack.register_worker(inference_only).await;
    let place = |user: Uuid| {
        let body = json!({
            "app": "jupyter", "user_id": user, "open_to_public": true,
            "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1", "kernel_port": 1}],
        });
        let stack = &stack;
        async move {
            let (s, v) = stack
                .manager(Method::POST, "/v2/circuits", Some(&body))
                .await;
            (s, v["worker"].as_str().unwrap_or("").to_string())
        }
    };
    // Alice's apps go to her dedicated worker; everyone else's never do.
    for _ in 0..3 {
        assert_eq!(place(alice).await, (201, "dedicated".to_string()));
        assert_eq!(place(Uuid::new_v4()).await, (201, "general".to_string()));
    }
    // The general worker goes away: others get 503, Alice still has her worker.
    let gid = general["id"].as_str().unwrap();
    let (s, _) = stack
        .worker(Method::DELETE, &format!("/api/worker/{gid}"), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = place(Uuid::new_v4()).await;
    assert_eq!(s, 503);
    assert_eq!(place(alice).await, (201, "dedicated".to_string()));
}

/// Issue 13.10: revocations older than the retention are pruned from Redis; recent ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revocations_are_pruned_from_redis() {
    let stack = Stack::start_with(
        Db::Sqlite,
        vec![
            (
                "APPPROXY_PROVIDER__AUTH__REVOCATION_RETENTION_SECONDS".into(),
                "86400".into(),
            ),
            (
                "APPPROXY_PROVIDER__AUTH__REVOCATION_PRUNE_INTERVAL_SECONDS".into(),
                "1".into(),
            ),
        ],
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = appproxy_common::auth::redis_keys::revocations(&stack.namespace);
    let mut redis = stack.redis().await;
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("u:gone")
        .arg(now - 2 * 86_400)
        .arg("l:gone")
        .arg(now - 86_401)
        .arg("u:kept")
        .arg(now - 3600)
        .query_async(&mut redis)
        .await
        .unwrap();
    // And one through the API, which must survive.
    let (s, v) = stack
        .manager(
            Method::POST,
            "/v2/revocations",
            Some(&json!({"user_id": Uuid::new_v4()})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let left = eventually("old revocations pruned", patience(), || async {
        let mut redis = stack.redis().await;
        let all: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .ok()?;
        (!all.contains_key("u:gone") && !all.contains_key("l:gone")).then_some(all)
    })
    .await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains_key("u:kept"));
}

/// GET with the manager token when given: status, headers, body.
async fn get_as(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let headers: Vec<(&str, &str)> = token
        .map(|t| ("X-BackendAI-Token", t))
        .into_iter()
        .collect();
    e2e::http_get(http, url, &headers).await
}

/// Rate limits as Backend.AI's webserver has them, shared by two provider replicas through
/// Redis: the launch routes per client address (127.0.0.1 is limited, 127.0.0.2 is not), the
/// management API per token; over the limit a `429` with `Retry-After` and Backend.AI's body;
/// with Redis down the API lets requests through (fail open) and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_by_replicas_and_answer_429_with_retry_after() {
    let mut stack = Stack::start_opts(e2e::Opts {
        providers: 2,
        provider_extra_env: vec![
            (
                "APPPROXY_PROVIDER__RATE_LIMIT__LAUNCH_PER_ADDRESS__REQUESTS".into(),
                "6".into(),
            ),
            (
                "APPPROXY_PROVIDER__RATE_LIMIT__API_PER_TOKEN__REQUESTS".into(),
                "5".into(),
            ),
        ],
        ..e2e::Opts::new(Db::Postgres)
    })
    .await;
    let (one, two) = (
        e2e::no_redirect_client_from("127.0.0.1"),
        e2e::no_redirect_client_from("127.0.0.2"),
    );
    let urls = [stack.provider_url_at(0), stack.provider_url_at(1)];
    e2e::early_in_a_minute(15).await;
    // Six launch calls from one address, alternating replicas: answered (a bad token is a
    // 4xx of its own); the seventh, on either replica, is 429.
    for i in 0..6 {
        let (s, _, v) = get_as(
            &one,
            &format!("{}/v2/proxy/auth?token=x", urls[i % 2]),
            None,
        )
        .await;
        assert_ne!(s, 429, "call {i}: {v}");
    }
    for url in &urls {
        let (s, h, body) = get_as(&one, &format!("{url}/v2/proxy/auth?token=x"), None).await;
        e2e::assert_rate_limited(s, &h, &body);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error_code"], "api_access_unavailable");
    }
    // Another address has its own budget.
    let (s, _, v) = get_as(&two, &format!("{}/v2/proxy/auth?token=x", urls[1]), None).await;
    assert_ne!(s, 429, "{v}");

    // The management API per token, across replicas.
    let token = stack.manager_token.clone();
    for i in 0..5 {
        let (s, _, v) = get_as(&two, &format!("{}/v2/circuits", urls[i % 2]), Some(&token)).await;
        assert_eq!(s, 200, "call {i}: {v}");
    }
    let (s, h, body) = get_as(&one, &format!("{}/v2/circuits", urls[0]), Some(&token)).await;
    e2e::assert_rate_limited(s, &h, &body);
    // Real preflights on the real listener: the WebUI's launch routes answer any origin,
    // the management API none (the default `[cors]`).
    for (path, method, status) in [
        ("/v2/proxy/auth?token=x", "GET", 204),
        ("/v2/conf", "POST", 204),
        ("/v2/circuits", "POST", 403),
    ] {
        let r = two
            .request(reqwest::Method::OPTIONS, format!("{}{path}", urls[0]))
            .header("origin", "https://webui.example.com")
            .header("access-control-request-method", method)
            .header(
                "access-control-request-headers",
                "content-type, x-backendai-token",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let allow = r.headers().get("access-control-allow-origin");
        assert_eq!(allow.is_some(), status == 204, "{path}");
        if status == 204 {
            let methods = r.headers()["access-control-allow-methods"]
                .to_str()
                .unwrap();
            assert!(methods.contains(method), "{methods}");
        }
    }
    // Probes and metrics are never limited.
    for _ in 0..10 {
        let (s, _, _) = get_as(&one, &format!("{}/health", urls[0]), None).await;
        assert_eq!(s, 200);
    }
    let metrics = e2e::metrics_text(&one, &urls[0]).await;
    assert!(
        metrics.contains("appproxy_provider_rate_limited_total{scope=\"launch-addr\"} 1"),
        "{metrics}"
    );

    // Redis down: the API answers (fail open) and counts what it let through.
    stack.kill_redis();
    let (s, _, v) = get_as(&one, &format!("{}/v2/circuits", urls[0]), Some(&token)).await;
    assert_eq!(s, 200, "{v}");
    let metrics = e2e::metrics_text(&one, &urls[0]).await;
    assert!(
        metrics.contains("appproxy_provider_rate_limit_unavailable_total{scope=\"api-token\"} 1"),
        "{metrics}"
    );
}

/// The provider's `/metrics`: Backend.AI's `backendai_api_request_*` (route patterns, its
/// error labels) beside ours and a per-route histogram; readable only from
/// `[metrics] allowed_networks` or with its token, so not through the public API listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_backendai_names_and_answer_only_allowed_readers() {
    let token = "metrics-reader-token-0123";
    let stack = Stack::start_with(
        Db::Sqlite,
        vec![
            (
                "APPPROXY_PROVIDER__METRICS__ALLOWED_NETWORKS".into(),
                "[\"127.0.0.1/32\"]".into(),
            ),
            ("APPPROXY_PROVIDER__METRICS__TOKEN".into(), token.into()),
        ],
    )
    .await;
    let (s, _) = stack.manager(Method::GET, "/v2/circuits", None).await;
    assert_eq!(s, 200);
    let (s, _) = stack
        .call(Some("wrong-token"), Method::GET, "/v2/circuits", None)
        .await;
    assert_eq!(s, 401);
    let text = e2e::metrics_text(&stack.http, &stack.provider_url()).await;
    for series in [
        "backendai_api_request_count{domain=\"\",endpoint=\"/v2/circuits\",error_detail=\"\",method=\"GET\",operation=\"\",status_code=\"200\"} 1",
        "backendai_api_request_count{domain=\"api\",endpoint=\"/v2/circuits\",error_detail=\"unauthorized\",method=\"GET\",operation=\"access\",status_code=\"401\"} 1",
        "backendai_api_request_duration_sec_bucket{domain=\"\",endpoint=\"/v2/circuits\"",
        "appproxy_provider_http_request_seconds_bucket{method=\"GET\",route=\"/v2/circuits\"",
        "backendai_memory_used_rss ",
        "backendai_cpu_usage_percent ",
        "backendai_async_task_count ",
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }
    let other = e2e::no_redirect_client_from("127.0.0.2");
    let url = format!("{}/metrics", stack.provider_url());
    let (s, _, body) = e2e::http_get(&other, &url, &[]).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("generic-forbidden"), "{body}");
    let bearer = format!("Bearer {token}");
    let (s, _, _) = e2e::http_get(&other, &url, &[("authorization", &bearer)]).await;
    assert_eq!(s, 200);
}
