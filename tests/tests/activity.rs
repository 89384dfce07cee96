//! Activity and lifecycle end to end: Traefik's OTLP access log → authgate → Redis keys the
//! Manager reads; WebSocket and TCP activity; the provider's idle reaper (and its refusal to
//! act on stale data); a stopped receiver never slows Traefik down.

use std::time::{Duration, Instant};

use e2e::{
    Db, GatedWorker, Stack, WorkerSpec,
    backends::{HttpEcho, TcpEcho},
    eventually, patience,
};
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Reaper every second; circuits get short idle timeouts per test.
async fn stack() -> Stack {
    Stack::start_with(
        Db::Sqlite,
        vec![(
            "APPPROXY_PROVIDER__REAPER__INTERVAL_SECONDS".into(),
            "1".into(),
        )],
    )
    .await
}

struct Launch {
    id: Uuid,
    session: Uuid,
    url: String,
    setup_url: Option<String>,
}

async fn launch(stack: &Stack, w: &GatedWorker, port: u16, extra: Value) -> Launch {
    let session = Uuid::new_v4();
    let v = stack
        .create_circuit(&w.spec.authority, Uuid::new_v4(), session, port, &extra)
        .await;
    Launch {
        id: v["id"].as_str().unwrap().parse().unwrap(),
        session,
        url: v["url"].as_str().unwrap().to_string(),
        setup_url: v["setup_url"].as_str().map(str::to_string),
    }
}

async fn get_str(stack: &Stack, key: &str) -> Option<String> {
    stack.redis().await.get(key).await.unwrap()
}

async fn requests(stack: &Stack, id: Uuid) -> i64 {
    get_str(stack, &format!("circuit.{id}.requests"))
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn secs(v: Option<String>) -> f64 {
    v.and_then(|s| s.parse().ok()).unwrap_or(0.0)
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn exists(stack: &Stack, id: Uuid) -> bool {
    stack
        .manager(Method::GET, &format!("/v2/circuits/{id}"), None)
        .await
        .0
        == 200
}

/// A metric's value from authgate's `/metrics` (sum over series matching `filter`).
async fn metric(http: &reqwest::Client, w: &GatedWorker, name: &str, filter: &str) -> f64 {
    e2e::metrics_text(http, &w.base())
        .await
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_counted_exactly_and_last_access_is_its_time() {
    let stack = stack().await;
    let w = stack
        .start_gated_worker(WorkerSpec::ports("act-1", 4))
        .await;
    let echo = HttpEcho::start("app").await;
    let http = e2e::no_redirect_client();
    let public: Vec<Launch> = vec![
        launch(&stack, &w, echo.port, json!({"open_to_public": true})).await,
        launch(&stack, &w, echo.port, json!({"open_to_public": true})).await,
    ];
    let private = launch(&stack, &w, echo.port, json!({})).await;
    let setup = private.setup_url.clone().unwrap();
    let cookie = e2e::setup_cookie(&http, &setup).await;
    for l in &public {
        e2e::wait_status(&http, &l.url, &[], 200).await;
    }
    e2e::wait_status(&http, &private.url, &[("cookie", &cookie)], 200).await;
    // Let the warm-up requests land, then measure from a clean baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ids = [public[0].id, public[1].id, private.id];
    let mut base = Vec::new();
    for id in ids {
        base.push(requests(&stack, id).await);
    }
    let applied_before = metric(
        &http,
        &w,
        "appproxy_authgate_ingest_records_total",
        "result=\"applied\"",
    )
    .await;
    let plan = [(0usize, 120usize), (1, 45), (2, 35)];
    let mut last_sent = 0.0;
    for (i, n) in plan {
        let l = [&public[0], &public[1], &private][i];
        for k in 0..n {
            let mut req = http.get(format!("{}/req-{i}-{k}", l.url));
            if i == 2 {
                req = req.header("cookie", &cookie);
            }
            assert_eq!(req.send().await.unwrap().status(), 200);
        }
        last_sent = now_secs();
    }
    // Requests that never reach the app are not activity.
    for _ in 0..10 {
        assert_eq!(http.get(&private.url).send().await.unwrap().status(), 401);
    }
    let total: usize = plan.iter().map(|(_, n)| n).sum();
    eventually("all requests counted", Duration::from_secs(15), || async {
        let mut got = 0;
        for (id, b) in ids.iter().zip(&base) {
            got += requests(&stack, *id).await - b;
        }
        (got as usize == total).then_some(())
    })
    .await;
    // Exactly, per circuit; nothing more arrives later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for ((i, n), (id, b)) in plan.iter().zip(ids.iter().zip(&base)) {
        assert_eq!(
            (requests(&stack, *id).await - b) as usize,
            *n,
            "circuit {i}"
        );
    }
    let last = secs(get_str(&stack, &format!("circuit.{}.last_access", private.id)).await);
    assert!(
        (last - last_sent).abs() <= 2.0,
        "last_access {last} vs {last_sent}"
    );
    let session_last =
        secs(get_str(&stack, &format!("session.{}.last_access", private.session)).await);
    assert!(
        (session_last - last).abs() < 0.01,
        "{session_last} vs {last}"
    );
    let ttl: i64 = stack
        .redis()
        .await
        .ttl(format!("circuit.{}.last_access", private.id))
        .await
        .unwrap();
    assert!(ttl > 172_000, "TTL 2 days: {ttl}");
    // Statistics, as Backend.AI's workers read them.
    let (s, v) = stack
        .worker(
            Method::GET,
            &format!("/api/circuit/{}/statistics", private.id),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], private.id.to_string());
    assert!(v["requests"].as_i64().unwrap() >= 35);
    assert!((v["last_access"].as_f64().unwrap() / 1000.0 - last).abs() < 1.0);
    assert!(v["ttl"].as_i64().unwrap() > 3000, "{v}");

    // The private circuit is counted at ForwardAuth (or, on the fast path, by the plugin): its
    // router exports no access-log record (neither its 35 requests nor its 10 denials); the
    // public ones export one per request, unless the fast path's plugin counts them too.
    let applied = metric(
        &http,
        &w,
        "appproxy_authgate_ingest_records_total",
        "result=\"applied\"",
    )
    .await;
    let exported = if w.spec.fast_path { 0 } else { 120 + 45 };
    assert_eq!(applied - applied_before, exported as f64);
    let not_fwd = metric(
        &http,
        &w,
        "appproxy_authgate_ingest_records_total",
        "not_forwarded",
    )
    .await;
    assert_eq!(not_fwd, 0.0, "denials at ForwardAuth are not exported");
    // Garbage exports and records are counted and skipped.
    let junk = w.post_logs(&http, vec![0xffu8; 64]).send().await.unwrap();
    assert_eq!(junk.status(), 400);
    let big = w
        .post_logs(&http, vec![0u8; 9 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert!(
        metric(
            &http,
            &w,
            "appproxy_authgate_ingest_exports_total",
            "undecodable"
        )
        .await
            >= 1.0
    );
    assert!(w.authgate_log().lines().all(|l| !l.contains("panicked")));

    // DELETE /v2/sessions/{id} clears that session's activity keys.
    let (s, _) = stack
        .manager(
            Method::DELETE,
            &format!("/v2/sessions/{}", private.session),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        get_str(&stack, &format!("session.{}.last_access", private.session)).await,
        None
    );
    assert_eq!(
        get_str(&stack, &format!("circuit.{}.requests", private.id)).await,
        None
    );
}

/// Raw WebSocket handshake; returns the open stream after `101`.
async fn open_websocket(url: &str, cookie: &str) -> tokio::net::TcpStream {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    let req = format!(
        "GET /api/kernels/ws HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_its_session_alive_and_closing_it_lets_it_go() {
    let stack = stack().await;
    let w = stack
        .start_gated_worker(WorkerSpec::ports("act-ws", 4))
        .await;
    let echo = HttpEcho::start("nb").await;
    let http = e2e::no_redirect_client();
    let nb = launch(&stack, &w, echo.port, json!({"idle_timeout": 4})).await;
    let idle = launch(&stack, &w, echo.port, json!({"idle_timeout": 4})).await;
    let setup = nb.setup_url.clone().unwrap();
    let cookie = e2e::setup_cookie(&http, &setup).await;
    let ws = open_websocket(&nb.url, &cookie).await;
    // Only the WebSocket, for twice the idle timeout: not reclaimed; last_access advances.
    let key = format!("session.{}.last_access", nb.session);
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(9) {
        seen.push(secs(get_str(&stack, &key).await));
        assert!(
            exists(&stack, nb.id).await,
            "reclaimed while its WebSocket was open"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert!(
        seen.last().unwrap() > &(seen[1] + 4.0),
        "last_access must advance: {seen:?}"
    );
    // Meanwhile the circuit that saw nothing was reclaimed.
    assert!(!exists(&stack, idle.id).await, "idle circuit still there");
    // The socket closes: after the timeout the circuit goes.
    drop(ws);
    let closed = Instant::now();
    eventually(
        "reclaimed after the WebSocket closed",
        Duration::from_secs(20),
        || async { (!exists(&stack, nb.id).await).then_some(()) },
    )
    .await;
    assert!(
        closed.elapsed() >= Duration::from_secs(3),
        "reclaimed before its timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_circuit_with_an_open_connection_stays_and_goes_once_closed() {
    let stack = stack().await;
    let mut spec = WorkerSpec::ports("act-tcp", 2);
    spec.env
        .push(("APPPROXY_AUTHGATE__WORKER__PROTOCOL".into(), "tcp".into()));
    let w = stack.start_gated_worker(spec).await;
    let (sshd, other) = (TcpEcho::start("sshd").await, TcpEcho::start("other").await);
    let tcp = json!({"protocol": "tcp", "idle_timeout": 3});
    let used = launch(&stack, &w, sshd.port, tcp.clone()).await;
    let unused = launch(&stack, &w, other.port, tcp).await;
    let hostport = used.url.trim_start_matches("tcp://").to_string();
    let mut conn = eventually("tcp circuit serves", patience(), || async {
        let mut s = tokio::net::TcpStream::connect(&hostport).await.ok()?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        (n > 0).then_some(s)
    })
    .await;
    // An idle but open SSH-like connection for three times the timeout: the circuit stays.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(9) {
        assert!(
            exists(&stack, used.id).await,
            "reclaimed with an open connection"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        !exists(&stack, unused.id).await,
        "unused TCP circuit still there"
    );
    conn.write_all(b"still here").await.unwrap();
    drop(conn);
    eventually(
        "reclaimed once the connection closed",
        Duration::from_secs(20),
        || async { (!exists(&stack, used.id).await).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_reclaims_nothing_and_activity_resumes() {
    let mut stack = stack().await;
    let w = stack
        .start_gated_worker(WorkerSpec::ports("act-redis", 4))
        .await;
    let echo = HttpEcho::start("app").await;
    let http = e2e::no_redirect_client();
    let busy = launch(&stack, &w, echo.port, json!({"idle_timeout": 3})).await;
    let quiet = launch(
        &stack,
        &w,
        echo.port,
        json!({"idle_timeout": 3, "open_to_public": true}),
    )
    .await;
    let setup = busy.setup_url.clone().unwrap();
    let cookie = e2e::setup_cookie(&http, &setup).await;
    e2e::wait_status(&http, &busy.url, &[("cookie", &cookie)], 200).await;
    // Redis goes away under traffic, for longer than the idle timeout.
    stack.kill_redis();
    let mut during = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        // authgate keeps deciding for issued cookies without Redis.
        let r = http
            .get(&busy.url)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        during += 1;
        assert!(
            exists(&stack, busy.id).await && exists(&stack, quiet.id).await,
            "reclaimed during the outage"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Back (empty: this Redis has no persistence): the counts kept in authgate arrive.
    stack.restart_redis();
    eventually(
        "requests made during the outage arrive",
        Duration::from_secs(15),
        || async { (requests(&stack, busy.id).await >= during).then_some(()) },
    )
    .await;
    assert!(exists(&stack, busy.id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_dead_receiver_never_slows_traefik() {
    let stack = stack().await;
    let mut w = stack
        .start_gated_worker(WorkerSpec::ports("act-recv", 2))
        .await;
    let echo = HttpEcho::start("app").await;
    let http = e2e::no_redirect_client();
    let l = launch(&stack, &w, echo.port, json!({"open_to_public": true})).await;
    e2e::wait_status(&http, &l.url, &[], 200).await;
    let run = |n: usize| {
        let (http, url) = (http.clone(), l.url.clone());
        async move {
            let start = Instant::now();
            for i in 0..n {
                let r = http.get(format!("{url}/x{i}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
            start.elapsed()
        }
    };
    let normal = run(300).await;
    // Receiver hung (SIGSTOP): exports cannot be delivered.
    w.signal_authgate("STOP");
    let hung = run(300).await;
    w.signal_authgate("CONT");
    // Receiver gone.
    w.kill_authgate();
    let dead = run(300).await;
    println!("300 requests: normal {normal:?}, receiver hung {hung:?}, receiver dead {dead:?}");
    for t in [hung, dead] {
        assert!(
            t < normal * 3 + Duration::from_secs(2),
            "{t:?} vs {normal:?}"
        );
    }
}

/// A raw request on an app port; the status line.
async fn raw_status(url: &str, request: &str) -> String {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    s.write_all(request.replace("{host}", hostport).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answer")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_unauthorized_upgrades_hold_nothing_and_deleted_circuits_let_go() {
    let stack = stack().await;
    let w = stack
        .start_gated_worker(WorkerSpec::ports("act-wsx", 4))
        .await;
    let echo = HttpEcho::start("nb").await;
    let http = e2e::no_redirect_client();
    let probed = launch(&stack, &w, echo.port, json!({"idle_timeout": 3})).await;
    let refused = launch(&stack, &w, echo.port, json!({"idle_timeout": 3})).await;
    let deleted = launch(&stack, &w, echo.port, json!({"idle_timeout": 3600})).await;
    let c_refused = e2e::setup_cookie(&http, refused.setup_url.as_deref().unwrap()).await;
    let c_deleted = e2e::setup_cookie(&http, deleted.setup_url.as_deref().unwrap()).await;
    // An unauthenticated OPTIONS that carries Sec-WebSocket-Key: refused, counts nothing.
    let status = raw_status(
        &probed.url,
        "OPTIONS / HTTP/1.1\r\nHost: {host}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(status.contains(" 401 "), "{status}");
    // An authorized upgrade the app refuses (unsupported version: no 101).
    let status = raw_status(
        &refused.url,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: {{host}}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n\
             Cookie: {c_refused}\r\n\r\n"
        ),
    )
    .await;
    assert!(!status.contains(" 101 "), "{status}");
    // Neither holds its circuit: both are reclaimed after their idle timeout.
    eventually(
        "both circuits reclaimed",
        Duration::from_secs(25),
        || async {
            (!exists(&stack, probed.id).await && !exists(&stack, refused.id).await).then_some(())
        },
    )
    .await;

    // A WebSocket of a deleted circuit (Traefik keeps the hijacked socket) stops counting.
    let _ws = open_websocket(&deleted.url, &c_deleted).await;
    let (s, _) = stack
        .manager(
            Method::DELETE,
            &format!("/v2/circuits/{}", deleted.id),
            None,
        )
        .await;
    assert!(s == 200 || s == 204, "{s}");
    // After authgate's next circuit map (≤ 2 s) nothing writes its activity any more.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let key = format!("circuit.{}.last_access", deleted.id);
    let first = get_str(&stack, &key).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get_str(&stack, &key).await,
        first,
        "a deleted circuit's socket still refreshes its activity"
    );
}
