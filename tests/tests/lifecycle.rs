//! Lifecycles that end: workers that stop heartbeating become LOST and come back; inference
//! endpoints of a lost worker move to a worker that keeps their URL.

use std::time::Duration;

use e2e::{Db, Stack, TraefikFrontend, WorkerSpec, backends::HttpEcho, eventually};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// A short heartbeat timeout (authgate beats every 2 s in the harness).
fn liveness_env() -> Vec<(String, String)> {
    vec![(
        "APPPROXY_PROVIDER__WORKER__HEARTBEAT_TIMEOUT_SECONDS".into(),
        "4".into(),
    )]
}

/// Well past timeout + sweep interval + the start-up grace.
fn liveness_patience() -> Duration {
    Duration::from_secs(20)
}

async fn status_of(stack: &Stack, authority: &str) -> String {
    let w = stack.worker_record(authority).await;
    w["status"].as_str().unwrap_or_default().to_string()
}

async fn wait_status(stack: &Stack, authority: &str, want: &str) {
    eventually(
        &format!("{authority} {want}"),
        liveness_patience(),
        || async { (status_of(stack, authority).await == want).then_some(()) },
    )
    .await;
}

fn endpoint(id: Uuid, name: &str) -> Value {
    json!({
        "deployment_id": id, "service_name": name, "open_to_public": true,
        "tags": {"session": {"user_uuid": Uuid::new_v4()}, "endpoint": {"id": id}},
    })
}

async fn create_endpoint(stack: &Stack, id: Uuid, name: &str, backend: u16) -> String {
    let (s, v) = stack
        .manager(
            Method::POST,
            &format!("/v2/endpoints/{id}"),
            Some(&endpoint(id, name)),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    stack.add_replica(id, Uuid::new_v4(), backend).await;
    v["endpoint"].as_str().unwrap().to_string()
}

/// GET through a Traefik port with a Host header until `backend=<name>` answers.
async fn wait_served(http: &reqwest::Client, port: u16, host: &str, name: &str) {
    let url = format!("http://127.0.0.1:{port}/");
    eventually(
        &format!("{host} served on {port}"),
        liveness_patience(),
        || async {
            let (s, _, body) = e2e::http_get(http, &url, &[("host", host)]).await;
            (s == 200 && body.contains(&format!("backend={name}"))).then_some(())
        },
    )
    .await;
}

async fn endpoints_health(stack: &Stack, id: Uuid) -> Value {
    let (s, v) = stack.manager(Method::GET, "/health/endpoints", None).await;
    assert_eq!(s, 200, "{v}");
    v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint_id"] == json!(id))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_is_lost_gets_nothing_new_and_comes_back() {
    let stack = Stack::start_with(Db::Sqlite, liveness_env()).await;
    let w = stack
        .start_gated_worker(WorkerSpec::ports("frozen", 4))
        .await;
    let echo = HttpEcho::start("app").await;
    let http = e2e::no_redirect_client();
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    let extra = json!({"open_to_public": true});
    let c = stack
        .create_circuit("frozen", user, session, echo.port, &extra)
        .await;
    let url = c["url"].as_str().unwrap().to_string();
    e2e::wait_status(&http, &url, &[], 200).await;
    // An inference endpoint on the same (port) worker: no other worker can keep its URL.
    let ep = Uuid::new_v4();
    create_endpoint(&stack, ep, "stuck", echo.port).await;

    e2e::signal(w.authgate_pid(), "-STOP");
    wait_status(&stack, "frozen", "LOST").await;
    let body = json!({"app": "x", "worker": "frozen", "user_id": user,
                      "routes": [{"session_id": session, "kernel_host": "127.0.0.1", "kernel_port": echo.port}]});
    let (s, v) = stack
        .manager(Method::POST, "/v2/circuits", Some(&body))
        .await;
    assert_eq!(s, 503, "a LOST worker takes no new circuit: {v}");
    let mut auto = body.clone();
    auto.as_object_mut().unwrap().remove("worker");
    let (s, _) = stack
        .manager(Method::POST, "/v2/circuits", Some(&auto))
        .await;
    assert_eq!(s, 503, "placement skips LOST workers");
    // Interactive circuits on a lost worker are reported, not moved.
    let path = format!("/health/circuits/{}", c["id"].as_str().unwrap());
    let (s, v) = stack.manager(Method::GET, &path, None).await;
    assert_eq!((s, v["worker_status"].as_str()), (200, Some("LOST")), "{v}");
    assert!(
        v["problem"].as_str().is_some_and(|p| p.contains("LOST")),
        "{v}"
    );
    // Nothing was deleted: the public circuit is still served by the worker's Traefik.
    e2e::wait_status(&http, &url, &[], 200).await;
    let health = endpoints_health(&stack, ep).await;
    let problem = health["problem"].as_str().unwrap_or("");
    assert!(
        problem.contains("LOST") && problem.contains("no ALIVE worker"),
        "{health}"
    );

    e2e::signal(w.authgate_pid(), "-CONT");
    wait_status(&stack, "frozen", "ALIVE").await;
    let c2 = stack
        .create_circuit("frozen", user, session, echo.port, &extra)
        .await;
    e2e::wait_status(&http, c2["url"].as_str().unwrap(), &[], 200).await;
    e2e::wait_status(&http, &url, &[], 200).await;
    assert!(endpoints_health(&stack, ep).await["problem"].is_null());
    let metrics = e2e::metrics_text(&http, &stack.provider_url()).await;
    assert!(
        metrics.contains("appproxy_provider_workers_lost_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_of_a_lost_worker_moves_to_a_worker_of_the_same_domain() {
    let stack = Stack::start_with(Db::Sqlite, liveness_env()).await;
    let wildcard = |name: &str, port: u16| {
        let mut spec = WorkerSpec::ports(name, 1);
        spec.frontend = TraefikFrontend::Wildcard { port };
        spec.wildcard_domain = Some(".models.test".into());
        spec
    };
    let (port_a, port_b) = (e2e::free_port(), e2e::free_port());
    let a = stack.start_gated_worker(wildcard("wild-a", port_a)).await;
    let echo = HttpEcho::start("m").await;
    let http = e2e::no_redirect_client();
    // Placed on A (the only worker yet).
    let ep = Uuid::new_v4();
    let url = create_endpoint(&stack, ep, "llm", echo.port).await;
    assert_eq!(url, format!("http://llm.models.test:{port_a}"));
    wait_served(&http, port_a, "llm.models.test", "m").await;
    assert_eq!(endpoints_health(&stack, ep).await["worker"], "wild-a");
    let _b = stack.start_gated_worker(wildcard("wild-b", port_b)).await;

    e2e::signal(a.authgate_pid(), "-STOP");
    wait_status(&stack, "wild-a", "LOST").await;
    // B serves the same host name now, as a new generation.
    wait_served(&http, port_b, "llm.models.test", "m").await;
    let health = endpoints_health(&stack, ep).await;
    assert_eq!(health["worker"], "wild-b", "{health}");
    assert!(health["problem"].is_null(), "{health}");
    let (_, v) = stack
        .manager(
            Method::GET,
            &format!("/v2/circuits/{}", health["circuit_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(v["generation"], 2, "{v}");
    let metrics = e2e::metrics_text(&http, &stack.provider_url()).await;
    assert!(
        metrics.contains("appproxy_provider_circuits_moved_total 1"),
        "{metrics}"
    );
    e2e::signal(a.authgate_pid(), "-CONT");
}

/// A public circuit of `authority` to `backend`, once Traefik serves it: (answer, URL).
async fn served_public(stack: &Stack, authority: &str, backend: u16) -> (Value, String) {
    let public = json!({"open_to_public": true});
    let a = stack
        .create_circuit(authority, Uuid::new_v4(), Uuid::new_v4(), backend, &public)
        .await;
    let url = a["url"].as_str().unwrap().to_string();
    e2e::wait_status(&e2e::no_redirect_client(), &url, &[], 200).await;
    (a, url)
}

/// `POST /v2/revocations` for `user`.
async fn revoke_user(stack: &Stack, user: Uuid) {
    let body = json!({"user_id": user});
    let (s, v) = stack
        .manager(Method::POST, "/v2/revocations", Some(&body))
        .await;
    assert_eq!(s, 200, "{v}");
}

/// The port of a port-mode circuit (from `POST /v2/circuits`'s answer).
fn circuit_port(v: &Value) -> u16 {
    v["circuit"]["port"].as_u64().expect("a port circuit") as u16
}

async fn delete_circuit(stack: &Stack, v: &Value) {
    let path = format!("/v2/circuits/{}", v["id"].as_str().unwrap());
    let (s, body) = stack.manager(Method::DELETE, &path, None).await;
    assert_eq!(s, 200, "{body}");
}

/// A `scheduling` envelope byte for byte as Backend.AI 26.9.6's EventProducer publishes it
/// (reference: backendai-events.md, "On the wire"), for `session` and `status`.
fn scheduling(session: Uuid, status: &str) -> String {
    format!(
        r#"{{"name":"scheduling","source":"manager","payload":"{{\"session_id\":\"{session}\",\"creation_id\":\"c7Hq2b9V\",\"status_transition\":\"{status}\",\"reason\":\"triggered-by-scheduler\"}}","metadata":"{{\"request_id\":null,\"user\":null,\"triggered_user\":null,\"traceparent\":null}}"}}"#
    )
}

fn kernel_terminated(session: Uuid) -> String {
    format!(
        r#"{{"name":"kernel_terminated","source":"i-agent-01","payload":"{{\"kernel_id\":\"{}\",\"session_id\":\"{session}\",\"reason\":\"user-requested\",\"exit_code\":-1}}","metadata":"{{\"request_id\":null,\"user\":null,\"triggered_user\":null,\"traceparent\":null}}"}}"#,
        Uuid::new_v4()
    )
}

async fn circuits_of(stack: &Stack, session: Uuid) -> usize {
    let (s, v) = stack
        .manager(
            Method::GET,
            &format!("/v2/circuits?session_id={session}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["circuits"].as_array().unwrap().len()
}

async fn gone_within(stack: &Stack, session: Uuid, limit: Duration) {
    eventually(&format!("circuits of {session} removed"), limit, || async {
        (circuits_of(stack, session).await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_backendai_sessions_remove_their_circuits() {
    let mut stack = Stack::start(Db::Sqlite).await;
    // The Manager's stream-role Redis, DB 4 (here: the stack's Redis).
    let bus = format!("redis://127.0.0.1:{}/4", stack.redis_port);
    stack.provider_extra_env.push((
        "APPPROXY_PROVIDER__BACKENDAI__EVENTS_REDIS_URL".into(),
        bus.clone(),
    ));
    stack.kill_provider();
    stack.start_provider();
    stack
        .register_worker(json!({
            "authority": "bai", "frontend_mode": "wildcard", "protocol": "http",
            "hostname": "127.0.0.1", "api_port": 1, "wildcard_domain": ".bai.test",
        }))
        .await;
    let user = Uuid::new_v4();
    let (s1, s2, s3, s4) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    for s in [s1, s1, s2, s3, s4] {
        stack.create_circuit("bai", user, s, 9, &json!({})).await;
    }
    let redis = redis::Client::open(bus.as_str()).unwrap();
    let con = redis.get_multiplexed_async_connection().await.unwrap();
    let publish = |msg: String| {
        let mut con = con.clone();
        async move {
            let _: i64 = redis::cmd("PUBLISH")
                .arg("events_all")
                .arg(msg)
                .query_async(&mut con)
                .await
                .unwrap();
        }
    };
    // The subscription is up once the provider reports it.
    let http = e2e::no_redirect_client();
    eventually("subscribed to events_all", liveness_patience(), || async {
        let m = e2e::metrics_text(&http, &stack.provider_url()).await;
        m.contains("appproxy_provider_bai_events_connected 1")
            .then_some(())
    })
    .await;

    // An inference endpoint with a replica in s1: a replica's session ending must not take
    // the endpoint down (the Manager manages replicas over HTTP).
    let ep = Uuid::new_v4();
    let (s, v) = stack
        .manager(
            Method::POST,
            &format!("/v2/endpoints/{ep}"),
            Some(&endpoint(ep, "llm")),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    stack.add_replica(ep, s1, 9).await;
    assert_eq!(circuits_of(&stack, s1).await, 3);

    publish(scheduling(s1, "TERMINATED")).await;
    eventually(
        "s1's interactive circuits removed",
        Duration::from_secs(2),
        || async { (circuits_of(&stack, s1).await == 1).then_some(()) },
    )
    .await;
    let (s, v) = stack
        .manager(Method::GET, &format!("/v2/circuits?session_id={s1}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["circuits"][0]["app_mode"], "inference",
        "the endpoint stays: {v}"
    );
    publish(kernel_terminated(s3)).await;
    gone_within(&stack, s3, Duration::from_secs(2)).await;
    // RUNNING, junk and unknown events change nothing.
    publish(scheduling(s2, "RUNNING")).await;
    for junk in [
        "not json",
        r#"{"name":"scheduling","payload":"{}"}"#,
        "[1,2]",
    ] {
        publish(junk.into()).await;
    }
    publish(r#"{"name":"kernel_started","source":"a","payload":"{}","metadata":"{}"}"#.into())
        .await;
    eventually("junk counted", liveness_patience(), || async {
        let m = e2e::metrics_text(&http, &stack.provider_url()).await;
        m.contains(r#"appproxy_provider_bai_events_total{result="junk"} 3"#)
            .then_some(())
    })
    .await;
    assert_eq!(
        circuits_of(&stack, s2).await,
        1,
        "RUNNING leaves the session's circuits"
    );
    assert_eq!(circuits_of(&stack, s4).await, 1);

    // Sent while the provider was away: caught up from session_scheduler.<id> on reconnect.
    stack.kill_provider();
    let envelope = scheduling(s2, "CANCELLED");
    let _: () = redis::cmd("SET")
        .arg(format!("session_scheduler.{s2}"))
        .arg(&envelope)
        .arg("EX")
        .arg(300)
        .query_async(&mut con.clone())
        .await
        .unwrap();
    publish(envelope).await;
    stack.start_provider();
    gone_within(&stack, s2, liveness_patience()).await;
    assert_eq!(circuits_of(&stack, s4).await, 1, "other sessions untouched");
    let m = e2e::metrics_text(&http, &stack.provider_url()).await;
    assert!(
        m.contains(r#"appproxy_provider_bai_events_total{result="applied"} 1"#),
        "the catch-up applied it: {m}"
    );
}

/// An ended circuit's open WebSocket is cut within 2 s (deleted; its owner revoked); another
/// circuit's stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_circuits_lose_their_open_websockets() {
    let stack = Stack::start(Db::Sqlite).await;
    let _w = stack.start_gated_worker(WorkerSpec::ports("ws", 4)).await;
    let http = e2e::no_redirect_client();
    let (a_app, b_app, c_app) = (
        HttpEcho::start("a").await,
        HttpEcho::start("b").await,
        HttpEcho::start("c").await,
    );
    let public = json!({"open_to_public": true});
    let a = stack
        .create_circuit("ws", Uuid::new_v4(), Uuid::new_v4(), a_app.port, &public)
        .await;
    let b = stack
        .create_circuit("ws", Uuid::new_v4(), Uuid::new_v4(), b_app.port, &public)
        .await;
    let owner = Uuid::new_v4();
    let c = stack
        .create_circuit("ws", owner, Uuid::new_v4(), c_app.port, &json!({}))
        .await;
    let cookie = e2e::setup_cookie(&http, c["setup_url"].as_str().unwrap()).await;
    for v in [&a, &b] {
        e2e::wait_status(&http, v["url"].as_str().unwrap(), &[], 200).await;
    }
    e2e::wait_status(
        &http,
        c["url"].as_str().unwrap(),
        &[("cookie", &cookie)],
        200,
    )
    .await;
    let mut ws_a = e2e::ws_open(circuit_port(&a), None).await;
    let mut ws_b = e2e::ws_open(circuit_port(&b), None).await;
    let mut ws_c = e2e::ws_open(circuit_port(&c), Some(&cookie)).await;
    for ws in [&mut ws_a, &mut ws_b, &mut ws_c] {
        assert!(e2e::ws_echo(ws).await);
    }

    delete_circuit(&stack, &a).await;
    assert!(
        e2e::ws_closed_within(&mut ws_a, Duration::from_secs(2)).await,
        "the deleted circuit's WebSocket is still open"
    );
    revoke_user(&stack, owner).await;
    assert!(
        e2e::ws_closed_within(&mut ws_c, Duration::from_secs(2)).await,
        "the revoked owner's WebSocket is still open"
    );
    // A revoked login session: the circuit where it opened a WebSocket loses its connections.
    let d_app = HttpEcho::start("d").await;
    let with_ls = json!({"login_session_token": "webui-ls-7"});
    let d = stack
        .create_circuit("ws", Uuid::new_v4(), Uuid::new_v4(), d_app.port, &with_ls)
        .await;
    let d_cookie = e2e::setup_cookie(&http, d["setup_url"].as_str().unwrap()).await;
    let d_url = d["url"].as_str().unwrap();
    e2e::wait_status(&http, d_url, &[("cookie", &d_cookie)], 200).await;
    let mut ws_d = e2e::ws_open(circuit_port(&d), Some(&d_cookie)).await;
    assert!(e2e::ws_echo(&mut ws_d).await);
    let body = json!({"login_session_token": "webui-ls-7"});
    let (s, v) = stack
        .manager(Method::POST, "/v2/revocations", Some(&body))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        e2e::ws_closed_within(&mut ws_d, Duration::from_secs(2)).await,
        "the revoked login session's WebSocket is still open"
    );
    assert!(
        e2e::ws_echo(&mut ws_b).await,
        "another circuit's WebSocket was cut"
    );
    let metrics = e2e::metrics_text(&http, &_w.base()).await;
    assert!(
        !metrics.contains(r#"connections_cut_total{result="failed"}"#),
        "{metrics}"
    );
}

/// Read the greeting of a TCP echo backend through Traefik (retrying until the route is up)
/// and keep the connection.
async fn tcp_open(port: u16) -> tokio::net::TcpStream {
    use tokio::io::AsyncReadExt;
    eventually(
        &format!("tcp through {port}"),
        liveness_patience(),
        || async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            (n > 0).then_some(s)
        },
    )
    .await
}

async fn tcp_echoes(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if s.write_all(b"ping\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tcp_circuit_loses_its_open_connections() {
    let stack = Stack::start(Db::Sqlite).await;
    let mut spec = WorkerSpec::ports("tcpw", 2);
    spec.env
        .push(("APPPROXY_AUTHGATE__WORKER__PROTOCOL".into(), "tcp".into()));
    let _w = stack.start_gated_worker(spec).await;
    let (e1, e2) = (
        e2e::backends::TcpEcho::start("one").await,
        e2e::backends::TcpEcho::start("two").await,
    );
    let tcp = json!({"protocol": "tcp"});
    let c1 = stack
        .create_circuit("tcpw", Uuid::new_v4(), Uuid::new_v4(), e1.port, &tcp)
        .await;
    let c2 = stack
        .create_circuit("tcpw", Uuid::new_v4(), Uuid::new_v4(), e2.port, &tcp)
        .await;
    let mut s1 = tcp_open(circuit_port(&c1)).await;
    let mut s2 = tcp_open(circuit_port(&c2)).await;
    assert!(tcp_echoes(&mut s1).await && tcp_echoes(&mut s2).await);
    delete_circuit(&stack, &c1).await;
    assert!(
        e2e::ws_closed_within(&mut s1, Duration::from_secs(2)).await,
        "the deleted TCP circuit's connection is still open"
    );
    assert!(
        tcp_echoes(&mut s2).await,
        "another TCP circuit's connection was cut"
    );
    // Revoking a TCP circuit's owner cuts its connection too.
    let owner = Uuid::new_v4();
    let e3 = e2e::backends::TcpEcho::start("three").await;
    let c3 = stack
        .create_circuit("tcpw", owner, Uuid::new_v4(), e3.port, &tcp)
        .await;
    let mut s3 = tcp_open(circuit_port(&c3)).await;
    assert!(tcp_echoes(&mut s3).await);
    revoke_user(&stack, owner).await;
    assert!(
        e2e::ws_closed_within(&mut s3, Duration::from_secs(2)).await,
        "the revoked owner's TCP connection is still open"
    );
    assert!(
        tcp_echoes(&mut s2).await,
        "another owner's TCP connection was cut"
    );
}

/// Without CAP_NET_ADMIN nothing is cut, nothing breaks: the cut is counted as unsupported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_capability_ending_a_circuit_still_works_and_is_counted() {
    let stack = Stack::start(Db::Sqlite).await;
    let mut spec = WorkerSpec::ports("nocap", 2);
    spec.without_net_admin = true;
    let w = stack.start_gated_worker(spec).await;
    let http = e2e::no_redirect_client();
    let echo = HttpEcho::start("a").await;
    let (a, url) = served_public(&stack, "nocap", echo.port).await;
    let mut ws = e2e::ws_open(circuit_port(&a), None).await;
    assert!(e2e::ws_echo(&mut ws).await);
    delete_circuit(&stack, &a).await;
    eventually(
        "the impossible cut counted",
        liveness_patience(),
        || async {
            let m = e2e::metrics_text(&http, &w.base()).await;
            m.contains(r#"appproxy_authgate_connections_cut_total{result="unsupported"} 1"#)
                .then_some(())
        },
    )
    .await;
    // New requests are refused as for any deleted circuit; authgate keeps serving.
    eventually(
        "the deleted circuit is not served",
        liveness_patience(),
        || async {
            let (s, _, _) = e2e::http_get(&http, &url, &[]).await;
            (s != 200).then_some(())
        },
    )
    .await;
    w.wait_ready(&http).await;
}

/// The idle reaper ends a public circuit whose only traffic is an open WebSocket (public
/// circuits have no ForwardAuth, so their WebSockets are not counted as activity): the
/// reclaimed circuit's socket is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_circuit_loses_its_open_websocket() {
    let env = vec![(
        "APPPROXY_PROVIDER__REAPER__INTERVAL_SECONDS".into(),
        "1".into(),
    )];
    let stack = Stack::start_with(Db::Sqlite, env).await;
    let _w = stack.start_gated_worker(WorkerSpec::ports("idle", 2)).await;
    let http = e2e::no_redirect_client();
    let echo = HttpEcho::start("a").await;
    let extra = json!({"open_to_public": true, "idle_timeout": 3});
    let a = stack
        .create_circuit("idle", Uuid::new_v4(), Uuid::new_v4(), echo.port, &extra)
        .await;
    e2e::wait_status(&http, a["url"].as_str().unwrap(), &[], 200).await;
    let mut ws = e2e::ws_open(circuit_port(&a), None).await;
    assert!(e2e::ws_echo(&mut ws).await);
    assert!(
        e2e::ws_closed_within(&mut ws, liveness_patience()).await,
        "the reclaimed circuit's WebSocket is still open"
    );
    let (s, _) = stack
        .manager(
            Method::GET,
            &format!("/v2/circuits/{}", a["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 404, "reclaimed by the reaper");
}

/// A deleted app's address answers authgate's "closed" page (410, never cached, no
/// Retry-After, the way back), its activity keys are gone; a revoked user is told they were
/// logged out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_app_and_a_logged_out_user_are_told_so() {
    let stack = Stack::start(Db::Sqlite).await;
    let login = "https://platform.test/login";
    let mut spec = WorkerSpec::ports("pages", 2);
    spec.login_url = Some(login.into());
    let _w = stack.start_gated_worker(spec).await;
    let http = e2e::no_redirect_client();
    let echo = HttpEcho::start("a").await;
    let (a, url) = served_public(&stack, "pages", echo.port).await;
    let id = a["id"].as_str().unwrap();
    let mut redis = stack.redis().await;
    let key = format!("circuit.{id}.requests");
    eventually("activity flushed", liveness_patience(), || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let v: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .ok()?;
            v.map(|_| ())
        }
    })
    .await;

    delete_circuit(&stack, &a).await;
    let html = [("accept", "text/html")];
    let (s, h, body) = eventually("the closed page", liveness_patience(), || async {
        let r = e2e::http_get(&http, &url, &html).await;
        (r.0 == 410).then_some(r)
    })
    .await;
    assert_eq!(s, 410);
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h.get("retry-after").is_none(),
        "an open tab must not be told to retry"
    );
    assert!(body.contains("This app was closed"), "{body}");
    assert!(body.contains(&format!("href=\"{login}\"")), "{body}");
    let (s, _, body) = e2e::http_get(
        &http,
        &format!("{url}/api/kernels"),
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(s, 410);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error_code"], "E20013", "{v}");
    assert_eq!(v["login_url"], login);
    let gone: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        gone, None,
        "the deleted circuit's activity keys are removed"
    );

    // A revoked owner's cookie: the logged-out page.
    let owner = Uuid::new_v4();
    let c = stack
        .create_circuit("pages", owner, Uuid::new_v4(), echo.port, &json!({}))
        .await;
    let cookie = e2e::setup_cookie(&http, c["setup_url"].as_str().unwrap()).await;
    let curl = c["url"].as_str().unwrap();
    e2e::wait_status(&http, curl, &[("cookie", &cookie)], 200).await;
    revoke_user(&stack, owner).await;
    let (s, _, body) = eventually("the logged-out page", liveness_patience(), || async {
        let r = e2e::http_get(&http, curl, &[("cookie", &cookie), ("accept", "text/html")]).await;
        (r.0 == 401).then_some(r)
    })
    .await;
    assert_eq!(s, 401);
    assert!(body.contains("You were logged out"), "{body}");
    assert!(body.contains(&format!("href=\"{login}\"")), "{body}");
    let json_client = [("cookie", cookie.as_str()), ("accept", "application/json")];
    let (s, _, body) = e2e::http_get(&http, curl, &json_client).await;
    assert_eq!(s, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["error_code"].as_str(), v["login_url"].as_str()),
        (Some("E20005"), Some(login)),
        "{v}"
    );
}

/// Subdomain circuits share their entrypoint: an ended one is cut by its backend's address,
/// and a backend another live circuit still uses is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_subdomain_circuit_is_cut_by_its_backend_and_a_shared_backend_is_spared() {
    let stack = Stack::start(Db::Sqlite).await;
    let apps = e2e::free_port();
    let mut spec = WorkerSpec::ports("wild-ws", 1);
    spec.frontend = TraefikFrontend::Wildcard { port: apps };
    spec.wildcard_domain = Some(".ws.test".into());
    let _w = stack.start_gated_worker(spec).await;
    let http = e2e::no_redirect_client();
    let (one, two) = (HttpEcho::start("one").await, HttpEcho::start("two").await);
    let make = |sub: &str| json!({"open_to_public": true, "subdomain": sub});
    let a = stack
        .create_circuit(
            "wild-ws",
            Uuid::new_v4(),
            Uuid::new_v4(),
            one.port,
            &make("a"),
        )
        .await;
    let b = stack
        .create_circuit(
            "wild-ws",
            Uuid::new_v4(),
            Uuid::new_v4(),
            two.port,
            &make("b"),
        )
        .await;
    // c shares a's backend.
    let c = stack
        .create_circuit(
            "wild-ws",
            Uuid::new_v4(),
            Uuid::new_v4(),
            one.port,
            &make("c"),
        )
        .await;
    let host = |sub: &str| format!("{sub}.ws.test:{apps}");
    for sub in ["a", "b", "c"] {
        wait_served(
            &http,
            apps,
            &host(sub),
            if sub == "b" { "two" } else { "one" },
        )
        .await;
    }
    let mut ws_a = e2e::ws_open_host(apps, &host("a"), None).await;
    let mut ws_b = e2e::ws_open_host(apps, &host("b"), None).await;
    for ws in [&mut ws_a, &mut ws_b] {
        assert!(e2e::ws_echo(ws).await);
    }
    // a's backend is still used by c: deleting a leaves its connection (and c's) alone.
    delete_circuit(&stack, &a).await;
    assert!(
        !e2e::ws_closed_within(&mut ws_a, Duration::from_secs(2)).await,
        "a shared backend was cut"
    );
    let mut ws_c = e2e::ws_open_host(apps, &host("c"), None).await;
    assert!(e2e::ws_echo(&mut ws_c).await);
    // b's backend is b's alone: cut within 2 s.
    delete_circuit(&stack, &b).await;
    assert!(
        e2e::ws_closed_within(&mut ws_b, Duration::from_secs(2)).await,
        "the deleted subdomain circuit's WebSocket is still open"
    );
    assert!(e2e::ws_echo(&mut ws_c).await, "c's WebSocket was cut");
    assert!(c["id"].is_string());
}
