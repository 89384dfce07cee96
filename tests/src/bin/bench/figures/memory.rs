//! Memory with many circuits (provider and authgate RSS, the reconciler's image) and the
//! provider API on SQLite (create latency, listing every circuit).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use reqwest::Method;

use crate::{
    Bench,
    probes::{ms, pct, pid_listening, rss_kib},
    report::{ApiSqlite, LoadedRss, Memory},
};

pub(crate) async fn run(b: &mut Bench) {
    let provider_pid = pid_listening(b.stack.provider_port);
    let gate_pid = pid_listening(b.w.port);
    // Traefik re-decodes its whole prefix on every change (seconds per change at 10k routers,
    // reference §5): pause it so it does not starve the two cores while 10k circuits are made.
    let traefik_pid = b.w.traefik.proc.pid().to_string();
    let _ = Command::new("kill").args(["-STOP", &traefik_pid]).status();
    let mut create_ms = Vec::new();
    while b.loaded < b.sz.memory_circuits {
        let t = Instant::now();
        b.stack.create(&b.create(format!("mem{}", b.loaded))).await;
        create_ms.push(ms(t.elapsed()));
        b.loaded += 1;
    }
    // authgate refreshes its circuit map every 2 s: let it load all of them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_list_kib = rss_kib(provider_pid);
    let image_bytes = e2e::metrics_text(&b.http, &b.stack.provider_url())
        .await
        .lines()
        .find_map(|l| l.strip_prefix("appproxy_provider_reconcile_image_bytes "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let t = Instant::now();
    let (s, v) = b.stack.manager(Method::GET, "/v2/circuits", None).await;
    let list_ms = ms(t.elapsed());
    assert_eq!(s, 200);
    let listed = v["circuits"].as_array().map_or(0, Vec::len);
    let loaded = LoadedRss {
        circuits: b.loaded,
        provider_kib: rss_kib(provider_pid),
        authgate_kib: rss_kib(gate_pid),
        provider_kib_before_list: before_list_kib,
        reconcile_image_kib: image_bytes / 1024,
    };
    println!(
        "memory: idle provider {} KiB authgate {} KiB | with {} circuits provider {} KiB ({} KiB before listing them, reconciler image {} KiB) authgate {} KiB",
        b.idle.provider_kib,
        b.idle.authgate_kib,
        loaded.circuits,
        loaded.provider_kib,
        loaded.provider_kib_before_list,
        loaded.reconcile_image_kib,
        loaded.authgate_kib
    );
    println!(
        "API (SQLite): create p50 {:.2} ms p99 {:.2} ms; list of {listed} circuits {list_ms:.0} ms",
        pct(&create_ms, 0.5),
        pct(&create_ms, 0.99)
    );
    b.results.memory = Some(Memory {
        idle: b.idle,
        loaded,
    });
    let _ = Command::new("kill").args(["-CONT", &traefik_pid]).status();
    b.results.api_sqlite = Some(ApiSqlite {
        create_p50_ms: pct(&create_ms, 0.5),
        create_p99_ms: pct(&create_ms, 0.99),
        list_circuits: listed,
        list_ms,
        create_samples: create_ms.len(),
    });
}
