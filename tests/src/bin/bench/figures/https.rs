//! HTTPS against HTTP: throughput and latency of one public app through two port-mode workers
//! whose Traefik configs differ only in TLS (wrk, 32 connections, kept alive and with a new
//! connection per request), and create → live for a circuit whose host needs a new
//! certificate from an ACME CA (Debian's pebble, TLS-ALPN-01, a wildcard-mode worker with one
//! certificate per host). Its own stack.

use std::time::{Duration, Instant};

use e2e::{Db, Stack, TraefikExtra, TraefikFrontend, acme::Pebble, backends::HttpEcho, pki::Pki};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    Sizes,
    probes::{ms, wrk},
    report::Https,
};

fn worker(authority: &str, mode: Value, tls: bool) -> Value {
    let mut w = json!({
        "authority": authority, "protocol": "http", "hostname": "127.0.0.1", "api_port": 1,
        "tls_listen": tls,
    });
    for (k, v) in mode.as_object().into_iter().flatten() {
        w[k] = v.clone();
    }
    w
}

async fn public(stack: &Stack, worker: &str, backend: u16, extra: Value) -> String {
    let mut body = json!({"app": "bench", "open_to_public": true});
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    let v = stack
        .create_circuit(worker, Uuid::new_v4(), Uuid::new_v4(), backend, &body)
        .await;
    v["url"].as_str().expect("url").to_string()
}

/// Poll until `url` answers 200 (bounded).
async fn until_ok(http: &reqwest::Client, url: &str) {
    e2e::eventually("served", Duration::from_secs(90), || async {
        let r = http.get(url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

pub(crate) async fn run(sz: &Sizes) -> Https {
    let stack = Stack::start(Db::Sqlite).await;
    let echo = HttpEcho::start("https").await;
    let insecure = e2e::client_builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // Two one-port workers, the same but for TLS (Traefik's default certificate).
    let mut urls = Vec::new();
    for (name, tls) in [("plain", false), ("tls", true)] {
        let (lo, hi) = Stack::port_range(1);
        let mode = json!({"frontend_mode": "port", "port_range": [lo, hi]});
        stack.register_worker(worker(name, mode, tls)).await;
        let extra = TraefikExtra {
            args: if tls {
                vec!["--tls".into()]
            } else {
                Vec::new()
            },
            env: Vec::new(),
        };
        let t = (stack.start_traefik_extra(name, TraefikFrontend::Ports { lo, hi }, None, &extra))
            .await;
        let url = public(&stack, name, echo.port, json!({})).await;
        until_ok(&insecure, &format!("{url}/")).await;
        urls.push((url, t));
    }
    let (http_url, https_url) = (format!("{}/", urls[0].0), format!("{}/", urls[1].0));
    assert!(https_url.starts_with("https://"), "{https_url}");
    let close = [("Connection", "close")];
    let http_kept = wrk(&http_url, sz.wrk_secs, &[]);
    let https_kept = wrk(&https_url, sz.wrk_secs, &[]);
    let http_new = wrk(&http_url, sz.wrk_secs, &close);
    let https_new = wrk(&https_url, sz.wrk_secs, &close);
    drop(urls);

    // create → live with a new ACME certificate per host.
    let pki = Pki::new(stack.dir.path());
    let apps = e2e::free_port();
    let pebble = Pebble::start(stack.dir.path(), &pki, e2e::free_port(), apps);
    let mode = json!({"frontend_mode": "wildcard", "wildcard_domain": ".acme.test",
                      "wildcard_traffic_port": apps, "cert_resolver": "acme"});
    stack.register_worker(worker("acme", mode, true)).await;
    let extra = TraefikExtra {
        args: pebble.traefik_args("tls-alpn"),
        env: Vec::new(),
    };
    let _t = (stack.start_traefik_extra(
        "acme",
        TraefikFrontend::Wildcard { port: apps },
        None,
        &extra,
    ))
    .await;
    let root = pebble.root_pem().await;
    let mut acme_ms = Vec::new();
    for i in 0..sz.samples.min(10) {
        let host = format!("c{i}.acme.test");
        let http = e2e::client_builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(root.as_bytes()).expect("root"))
            .resolve(&host, ([127, 0, 0, 1], 0).into())
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let t = Instant::now();
        let url = public(
            &stack,
            "acme",
            echo.port,
            json!({"subdomain": format!("c{i}")}),
        )
        .await;
        until_ok(&http, &format!("{url}/")).await;
        acme_ms.push(ms(t.elapsed()));
    }
    Https {
        http_kept,
        https_kept,
        http_new,
        https_new,
        acme_create_to_live_ms: acme_ms,
    }
}
