//! A burst of N concurrent creates until all are live, against N raw transactions (one per
//! circuit, the usual way to write Traefik's KV): time, Traefik CPU, time until Traefik is
//! idle again.

use std::time::{Duration, Instant};

use crate::{
    Bench,
    probes::{
        Profile, all_live, cpu_secs, ms, pct, pid_listening, provider_metrics, quiet_since,
        raw_put, settle, settle_within,
    },
    report::Burst,
};

pub(crate) async fn run(b: &mut Bench) {
    settle(&b.traefiks);
    let traefik_pid = b.w.traefik.proc.pid();
    let provider_pid = pid_listening(b.stack.provider_port);
    let profile = Profile::start("burst");
    let (cpu0, provider_cpu0) = (cpu_secs(traefik_pid), cpu_secs(provider_pid));
    let t = Instant::now();
    let create_ms = concurrent_creates(b).await;
    let acked_provider = ms(t.elapsed());
    let provider_cpu = cpu_secs(provider_pid) - provider_cpu0;
    let hosts = |domain: &str| -> Vec<String> {
        (0..b.sz.burst)
            .map(|i| format!("burst{i}.{domain}"))
            .collect()
    };
    all_live(&b.http, b.apps, hosts("bench.test")).await;
    let burst_provider = ms(t.elapsed());
    // Traefik's CPU for the burst includes the reloads it still runs after the last
    // circuit answered; so does the time until it is idle again, watched from now on (the
    // profile's report below takes a second of its own).
    let idle_provider = ms(quiet_since(traefik_pid, t, Duration::from_secs(600)));
    let burst_profile = profile.and_then(|p| p.finish(Some("provider-w")));
    let prefixes = [
        "appproxy_provider_reconcile",
        "appproxy_provider_etcd",
        "appproxy_provider_foreign",
    ];
    let reconcile_metrics = provider_metrics(&b.http, &b.stack, &prefixes).await;
    println!("  provider after the burst: {reconcile_metrics}");
    let burst_cpu = cpu_secs(traefik_pid) - cpu0;
    let raw_pid = b.raw.proc.pid();
    let raw_hosts = hosts("raw.test");
    let cpu0 = cpu_secs(raw_pid);
    let t = Instant::now();
    for host in &raw_hosts {
        raw_put(&mut b.etcd, &b.raw_root, host, b.echo.port).await;
    }
    let acked_raw = ms(t.elapsed());
    all_live(&b.http, b.raw_port, raw_hosts).await;
    let burst_raw = ms(t.elapsed());
    let idle_raw = ms(quiet_since(raw_pid, t, Duration::from_secs(600)));
    settle_within(&b.traefiks, Duration::from_secs(600));
    let burst_raw_cpu = cpu_secs(raw_pid) - cpu0;
    let result = Burst {
        circuits: b.sz.burst,
        provider_ms: burst_provider,
        raw_per_circuit_ms: burst_raw,
        provider_acked_ms: acked_provider,
        raw_written_ms: acked_raw,
        provider_idle_ms: idle_provider,
        raw_idle_ms: idle_raw,
        speedup: burst_raw / burst_provider,
        traefik_cpu_s: burst_cpu,
        raw_traefik_cpu_s: burst_raw_cpu,
        provider_cpu_s: provider_cpu,
        create_p50_ms: pct(&create_ms, 0.5),
        create_p99_ms: pct(&create_ms, 0.99),
        profile: burst_profile,
        provider_metrics: reconcile_metrics,
    };
    print(&result);
    b.results.burst = Some(result);
}

/// All creates at once; each one's time to its `201`.
async fn concurrent_creates(b: &Bench) -> Vec<f64> {
    let mut tasks = Vec::new();
    for i in 0..b.sz.burst {
        let url = format!("{}/v2/circuits", b.stack.provider_url());
        let (token, body) = (b.stack.manager_token.clone(), b.create(format!("burst{i}")));
        let http = b.http.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = http
                .post(url)
                .header("X-BackendAI-Token", token)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            (status, ms(sent.elapsed()))
        }));
    }
    let mut create_ms = Vec::new();
    for t in tasks {
        let (status, took) = t.await.unwrap();
        assert_eq!(status, 201);
        create_ms.push(took);
    }
    create_ms
}

fn print(r: &Burst) {
    println!(
        "  burst creates: p50 {:.1} ms, p99 {:.1} ms; provider CPU {:.2} s until all acknowledged",
        r.create_p50_ms, r.create_p99_ms, r.provider_cpu_s
    );
    println!(
        "burst of {}: provider {:.0} ms, all acknowledged after {:.0} ms, Traefik idle after {:.0} ms (Traefik CPU {:.1} s) | one txn per circuit {:.0} ms, all written after {:.0} ms, Traefik idle after {:.0} ms (Traefik CPU {:.1} s) → {:.1}×",
        r.circuits,
        r.provider_ms,
        r.provider_acked_ms,
        r.provider_idle_ms,
        r.traefik_cpu_s,
        r.raw_per_circuit_ms,
        r.raw_written_ms,
        r.raw_idle_ms,
        r.raw_traefik_cpu_s,
        r.speedup
    );
}
