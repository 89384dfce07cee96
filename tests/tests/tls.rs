//! The internal links on TLS: etcd (clients and peers, client certificates required), Redis
//! (`rediss://`), the provider's API over HTTPS, authgate → provider and Traefik → etcd. A CA
//! that did not sign the server's certificate fails each link with an error that says so, and
//! no server of the stack answers plain text.

use std::time::Duration;

use e2e::{Db, Opts, Proc, Stack, WorkerSpec, backends::HttpEcho, eventually, free_port};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

async fn tls_stack() -> Stack {
    Stack::start_opts(Opts {
        tls: true,
        ..Opts::new(Db::Sqlite)
    })
    .await
}

/// Wait (at most 20 s) until `p` exited; its log.
fn exited(p: &mut Proc) -> String {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while p.alive() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!p.alive(), "still running:\n{}", p.log_tail(4000));
    p.log_tail(8000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_internal_link_on_tls_carries_a_circuit_and_a_revocation() {
    let stack = tls_stack().await;
    assert!(stack.provider_url().starts_with("https://"));
    // Registration over HTTPS, the revocation set from Redis over TLS (ready), the sentinel
    // through etcd over TLS.
    let _w = stack
        .start_gated_worker(WorkerSpec::ports("tls-w", 4))
        .await;
    let echo = HttpEcho::start("app").await;
    let http = e2e::no_redirect_client();
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    let c = stack
        .create_circuit(
            "tls-w",
            user,
            session,
            echo.port,
            &json!({"open_to_public": true}),
        )
        .await;
    // Traefik read the router from etcd over TLS.
    let url = c["url"].as_str().unwrap().to_string();
    e2e::wait_status(&http, &url, &[], 200).await;
    // Provider → Redis over TLS.
    let (s, v) = stack
        .manager(
            Method::POST,
            "/v2/revocations",
            Some(&json!({"user_id": user})),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // Nothing answers plain text.
    let plain = e2e::client_builder()
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{}/status", stack.provider_port))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "the provider answered plain HTTP: {plain:?}"
    );
    let etcd_plain = etcd_client::Client::connect(
        [format!("http://127.0.0.1:{}", stack.etcd_port)],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(3))),
    )
    .await;
    if let Ok(mut c) = etcd_plain {
        assert!(c.get("x", None).await.is_err(), "etcd answered plain gRPC");
    }
    let redis_plain = redis::Client::open(format!("redis://127.0.0.1:{}", stack.redis_port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    if let Ok(mut con) = redis_plain {
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
        assert!(pong.is_err(), "Redis answered plain text");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_each_link_with_a_clear_error() {
    let mut stack = tls_stack().await;
    let other = stack.pki.as_ref().unwrap().other_ca.display().to_string();
    let p = "APPPROXY_PROVIDER__";

    // Provider → etcd: the start ends, naming TLS and the certificate.
    let port = free_port();
    let mut cmd = std::process::Command::new(e2e::workspace_bin("appproxy-provider"));
    // Its own database: the stack's provider holds the SQLite file.
    let db = format!(
        "sqlite://{}?mode=rwc",
        stack.dir.path().join("bad.db").display()
    );
    cmd.envs(stack.provider_env_for(port))
        .env(format!("{p}DATABASE__URL"), db)
        .env(format!("{p}ETCD__TLS__CA_FILE"), &other);
    let mut bad = Proc::spawn("provider-bad-etcd-ca", cmd, stack.dir.path());
    let log = exited(&mut bad);
    assert!(log.contains("etcd TLS"), "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");

    // Provider → Redis: revocations answer 503 and the log says why.
    stack.provider_extra_env = vec![(format!("{p}REDIS__TLS__CA_FILE"), other.clone())];
    stack.kill_provider();
    stack.start_provider();
    let (s, v) = stack
        .manager(
            Method::POST,
            "/v2/revocations",
            Some(&json!({"user_id": Uuid::new_v4()})),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    let said = format!("{v} {}", stack.provider_log());
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    stack.provider_extra_env.clear();
    stack.kill_provider();
    stack.start_provider();

    // authgate → provider: registration fails with the reason, and nothing registers.
    let a = "APPPROXY_AUTHGATE__";
    let mut spec = WorkerSpec::ports("bad-provider-ca", 2);
    spec.env = vec![(format!("{a}PROVIDER__TLS__CA_FILE"), other.clone())];
    let w = stack.launch_gated_worker(spec).await;
    eventually("authgate says why", Duration::from_secs(20), || async {
        let log = w.authgate_log();
        (log.contains("Registration failed") && log.to_lowercase().contains("certificate"))
            .then_some(())
    })
    .await;
    let (s, v) = stack.manager(Method::GET, "/api/worker", None).await;
    assert_eq!(s, 200);
    assert!(
        !v.to_string().contains("bad-provider-ca"),
        "registered over a link it could not verify: {v}"
    );
    drop(w);

    // authgate → Redis: never ready (the revocation set cannot load), and says why.
    let mut spec = WorkerSpec::ports("bad-redis-ca", 2);
    spec.env = vec![(format!("{a}REDIS__TLS__CA_FILE"), other.clone())];
    let w = stack.launch_gated_worker(spec).await;
    eventually("authgate says why", Duration::from_secs(20), || async {
        w.authgate_log()
            .to_lowercase()
            .contains("certificate")
            .then_some(())
    })
    .await;
    let ready = e2e::client_builder()
        .build()
        .expect("client")
        .get(format!("{}/health", w.base()))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_ne!(ready.ok(), Some(200), "ready without its revocation set");
    drop(w);

    // Traefik → etcd: Traefik refuses etcd's certificate and loads nothing.
    let mut traefik = stack.start_traefik_etcd_ca("bad-traefik-ca", &other).await;
    eventually("Traefik says why", Duration::from_secs(20), || async {
        let log = traefik.proc.log_tail(20_000);
        (log.contains("x509") || log.to_lowercase().contains("certificate")).then_some(())
    })
    .await;
    traefik.proc.kill();
}
