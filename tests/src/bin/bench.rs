//! The benchmark program: starts the real stack like the e2e harness (use release builds:
//! `cargo run --release -p e2e --bin bench`), measures each figure side by side with its
//! baseline in the same run, writes the raw samples and the machine facts to
//! `bench-results/latest.json` and the table between the markers of `BENCHMARKS.md`.
//!
//! `--quick` shrinks every size for a smoke run. `--only=live,burst,auth,ingest,memory,pg`
//! runs some figures (results go to `bench-results/partial.json`, BENCHMARKS.md is left
//! alone); `--preload=N` then creates N circuits first when `live` and `burst` are skipped,
//! so the auth figures see the worker as loaded as in a full run (default 2,100).
//! Where `perf` works, the burst and the auth runs are profiled system-wide (`cpu-clock`): the
//! CPU share of each process (thread names: `traefik`, `authgate-w`, `provider-w`, `wrk`, …)
//! is recorded, with the provider's hottest symbols for the burst and authgate's for `/auth`.
//! Every auth run also records CPU time per request of Traefik and the auth server (`/proc`)
//! and the TCP connections accepted per request.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use e2e::{Db, Stack, TraefikFrontend, WorkerSpec, backends::HttpEcho, free_port};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

struct Sizes {
    preload: Vec<usize>,
    samples: usize,
    burst: usize,
    wrk_secs: u64,
    records: usize,
    memory_circuits: usize,
    list_circuits: usize,
}

fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            preload: vec![10, 50],
            samples: 5,
            burst: 50,
            wrk_secs: 2,
            records: 20_000,
            memory_circuits: 200,
            list_circuits: 200,
        }
    } else {
        Sizes {
            preload: vec![100, 1000],
            samples: 30,
            burst: 1000,
            wrk_secs: 8,
            records: 400_000,
            memory_circuits: 10_000,
            list_circuits: 10_000,
        }
    }
}

fn pct(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A GET with a Host header until 200 (polling every 2 ms, at most 30 s).
async fn until_200(http: &reqwest::Client, port: u16, host: &str) -> Duration {
    until_200_with(http, port, host, &[]).await
}

/// Until every host answers 200 through Traefik on `port`: eight pollers share the list, so
/// the time measured is the data plane's, not a sequential client's (1,000 sequential checks
/// alone take most of a second here).
async fn all_live(http: &reqwest::Client, port: u16, hosts: Vec<String>) {
    let queue = std::sync::Arc::new(std::sync::Mutex::new(hosts));
    let pollers: Vec<_> = (0..8)
        .map(|_| {
            let (http, queue) = (http.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    let Some(host) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    until_200(&http, port, &host).await;
                }
            })
        })
        .collect();
    for p in pollers {
        p.await.unwrap();
    }
}

async fn until_200_with(
    http: &reqwest::Client,
    port: u16,
    host: &str,
    headers: &[(&str, &str)],
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let mut req = http
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Ok(r) = req.send().await
            && r.status() == 200
        {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Duration::from_secs(30)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// TCP connections this machine has accepted so far (`PassiveOpens` in /proc/net/snmp).
fn tcp_passive_opens() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "PassiveOpens")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Raw baseline: one circuit's keys (the set the provider writes for a public HTTP circuit on a
/// wildcard worker) in one etcd transaction.
async fn raw_put(etcd: &mut etcd_client::Client, root: &str, host: &str, backend: u16) {
    raw_put_many(etcd, root, &[host.to_string()], backend).await;
}

/// The four keys of a minimal Host router per host, as one raw etcd transaction.
async fn raw_put_many(etcd: &mut etcd_client::Client, root: &str, hosts: &[String], backend: u16) {
    let mut ops = Vec::new();
    for host in hosts {
        let id = Uuid::new_v4().simple().to_string();
        let r = format!("{root}/http/routers/raw-{id}");
        let s = format!("{root}/http/services/raw-{id}/loadBalancer/servers/0/url");
        ops.extend([
            etcd_client::TxnOp::put(format!("{r}/rule"), format!("Host(`{host}`)"), None),
            etcd_client::TxnOp::put(format!("{r}/service"), format!("raw-{id}"), None),
            etcd_client::TxnOp::put(format!("{r}/entryPoints/0"), "apps", None),
            etcd_client::TxnOp::put(s, format!("http://127.0.0.1:{backend}"), None),
        ]);
    }
    etcd.txn(etcd_client::Txn::new().and_then(ops))
        .await
        .expect("raw txn");
}

/// Create circuits `pre<from>`… through the provider until the worker holds `to`; returns `to`.
async fn preload_provider(
    stack: &Stack,
    create: &dyn Fn(String) -> Value,
    from: usize,
    to: usize,
) -> usize {
    for i in from..to {
        let (s, v) = stack
            .manager(
                Method::POST,
                "/v2/circuits",
                Some(&create(format!("pre{i}"))),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    to.max(from)
}

/// Preload the raw Traefik's prefix from `from` up to `to` routers (`pre<i>.raw.test`), 32
/// routers (128 operations) per transaction: preloading is not what is measured, and one
/// transaction per router would keep Traefik re-decoding for minutes.
async fn raw_preload(
    etcd: &mut etcd_client::Client,
    root: &str,
    from: usize,
    to: usize,
    backend: u16,
) {
    let hosts: Vec<String> = (from..to).map(|i| format!("pre{i}.raw.test")).collect();
    for chunk in hosts.chunks(32) {
        raw_put_many(etcd, root, chunk, backend).await;
    }
}

/// A router `<name>.raw.test` on the raw Traefik behind a ForwardAuth middleware of the shape
/// the provider renders for private circuits, asking `address`.
async fn raw_forward_auth(
    etcd: &mut etcd_client::Client,
    root: &str,
    name: &str,
    address: &str,
    backend: u16,
) {
    let r = format!("{root}/http/routers/{name}");
    let m = format!("{root}/http/middlewares/{name}/forwardAuth");
    let svc = format!("{root}/http/services/{name}/loadBalancer/servers/0/url");
    let ops = vec![
        etcd_client::TxnOp::put(
            format!("{r}/rule"),
            format!("Host(`{name}.raw.test`)"),
            None,
        ),
        etcd_client::TxnOp::put(format!("{r}/service"), name, None),
        etcd_client::TxnOp::put(format!("{r}/entryPoints/0"), "apps", None),
        etcd_client::TxnOp::put(format!("{r}/middlewares/0"), name, None),
        // Above every preloaded router, whatever the name's length: Traefik tries routers in
        // priority order (by default the rule's length). Without it `fa-gate`, one character
        // shorter than `fa-nginx`, tied with ~1,100 preloaded routers, and Traefik spent
        // 30–50 µs more per request on it than on `fa-nginx` (18 µs with equal priorities).
        etcd_client::TxnOp::put(format!("{r}/priority"), "100000", None),
        etcd_client::TxnOp::put(format!("{m}/address"), address, None),
        etcd_client::TxnOp::put(format!("{m}/trustForwardHeader"), "false", None),
        etcd_client::TxnOp::put(format!("{m}/authResponseHeaders/0"), "Cookie", None),
        etcd_client::TxnOp::put(format!("{m}/authResponseHeaders/1"), "Referer", None),
        etcd_client::TxnOp::put(format!("{m}/maxResponseBodySize"), "65536", None),
        etcd_client::TxnOp::put(svc, format!("http://127.0.0.1:{backend}"), None),
    ];
    etcd.txn(etcd_client::Txn::new().and_then(ops))
        .await
        .expect("raw forwardAuth txn");
}

/// Rounds of the auth-overhead scenarios (each scenario once per round; odd rounds run them in
/// reverse order, so neither auth server always goes first).
const AUTH_ROUNDS: usize = 5;

fn wrk(url: &str, secs: u64, headers: &[(&str, &str)]) -> Value {
    wrk_c(url, secs, 32, headers)
}

fn wrk_c(url: &str, secs: u64, conns: u32, headers: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new("wrk");
    let threads = conns.clamp(1, 2);
    cmd.args([
        &format!("-t{threads}"),
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = match cmd.arg(url).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        Err(e) => return json!({ "error": format!("wrk: {e}") }),
    };
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let lat = |p: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(parse_wrk_duration)
    };
    let non2xx = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    json!({ "rps": rps, "p50_ms": lat("50%"), "p99_ms": lat("99%"), "non2xx": non2xx })
}

/// Run `f` (a wrk run) under a system-wide `perf record -e cpu-clock`, if perf works here.
/// Returns wrk's result with `cpu_share` (thread name → % of all samples) and, for
/// `symbols_of`, that thread name's ten hottest symbols.
fn profiled(name: &str, symbols_of: Option<&str>, f: impl FnOnce() -> Value) -> Value {
    let profile = Profile::start(name);
    let mut out = f();
    if let Some(p) = profile.and_then(|p| p.finish(symbols_of)) {
        out["cpu_share"] = p["cpu_share"].clone();
        if !p["hot_symbols"].is_null() {
            out["hot_symbols"] = p["hot_symbols"].clone();
        }
    }
    out
}

/// The provider's `/metrics` samples whose names start with one of `prefixes`.
async fn provider_metrics(http: &reqwest::Client, stack: &Stack, prefixes: &[&str]) -> Value {
    let text = match http
        .get(format!("{}/metrics", stack.provider_url()))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let samples: serde_json::Map<String, Value> = text
        .lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)) && !l.contains("_bucket"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), json!(v.parse::<f64>().ok()?)))
        })
        .collect();
    Value::Object(samples)
}

/// A system-wide `perf record -e cpu-clock` running until `finish`.
struct Profile {
    name: String,
    data: PathBuf,
    child: std::process::Child,
}

impl Profile {
    /// Start recording; `None` where perf does not work here.
    fn start(name: &str) -> Option<Profile> {
        let data = std::env::temp_dir().join(format!("appproxy-bench-{name}.perf"));
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-a", "-o"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        // perf needs a moment before it samples.
        std::thread::sleep(Duration::from_millis(300));
        Some(Profile {
            name: name.to_string(),
            data,
            child,
        })
    }

    /// Stop recording: `{cpu_share: {thread name: % of all samples}, hot_symbols: [...]}`
    /// (the ten hottest symbols of `symbols_of`), or `None` if perf failed.
    fn finish(mut self, symbols_of: Option<&str>) -> Option<Value> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let waited = self.child.wait();
        let report = |extra: &[&str]| {
            Command::new("perf")
                .args(["report", "-q", "--stdio", "-i"])
                .arg(&self.data)
                .args(extra)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default()
        };
        // Lines: `  45.12%  traefik` (or `… symbol` rows for the symbol report).
        let rows = |text: &str, limit: usize| -> Vec<(String, f64)> {
            text.lines()
                .filter_map(|l| {
                    let l = l.trim();
                    let (pct, rest) = l.split_once('%')?;
                    Some((rest.trim().to_string(), pct.trim().parse().ok()?))
                })
                .take(limit)
                .collect()
        };
        let share: serde_json::Map<String, Value> = rows(&report(&["--sort", "comm"]), 12)
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        let mut out = json!({});
        if waited.is_ok() && !share.is_empty() {
            println!(
                "  CPU share during {}: {}",
                self.name,
                Value::Object(share.clone())
            );
            out["cpu_share"] = Value::Object(share);
            if let Some(comm) = symbols_of {
                let syms = rows(
                    &report(&[
                        "--comms",
                        comm,
                        "--percentage",
                        "relative",
                        "--sort",
                        "dso,sym",
                    ]),
                    15,
                );
                out["hot_symbols"] = json!(syms);
            }
        }
        let _ = std::fs::remove_file(&self.data);
        out.get("cpu_share").is_some().then_some(out)
    }
}

/// Wait (at most two minutes, or `limit`) until these processes are idle: below 5 % of a core over a
/// second. Traefik re-decodes its whole prefix after every change, which takes seconds with
/// thousands of routers; a measurement must not share the cores with that catch-up.
fn settle(pids: &[u32]) {
    settle_within(pids, Duration::from_secs(120));
}

fn settle_within(pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let before: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
        std::thread::sleep(Duration::from_secs(1));
        let after: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
        if after - before < 0.05 {
            return;
        }
    }
    println!("  (processes {pids:?} still busy after {limit:?}; measuring anyway)");
}

fn parse_wrk_duration(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => n,
    }
}

/// An OTLP logs export with `n` records for `circuits` (round robin), protobuf-encoded.
fn otlp_export(circuits: &[Uuid], n: usize) -> Vec<u8> {
    // Hand-encoded protobuf: ExportLogsServiceRequest{resource_logs{scope_logs{log_records}}}.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag << 3 | 2), out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }
    fn kv_str(k: &str, v: &str) -> Vec<u8> {
        let mut any = Vec::new();
        field(1, v.as_bytes(), &mut any);
        let mut kv = Vec::new();
        field(1, k.as_bytes(), &mut kv);
        field(2, &any, &mut kv);
        kv
    }
    fn kv_int(k: &str, v: i64) -> Vec<u8> {
        let mut any = Vec::new();
        varint(3 << 3, &mut any);
        varint(v as u64, &mut any);
        let mut kv = Vec::new();
        field(1, k.as_bytes(), &mut kv);
        field(2, &any, &mut kv);
        kv
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut scope = Vec::new();
    for i in 0..n {
        let c = circuits[i % circuits.len()];
        let mut rec = Vec::new();
        rec.push(0x09); // field 1, fixed64
        rec.extend_from_slice(&now.to_le_bytes());
        field(6, &kv_str("RouterName", &format!("ap-{c}@etcd")), &mut rec);
        field(6, &kv_int("OriginStatus", 200), &mut rec);
        field(6, &kv_int("DownstreamStatus", 200), &mut rec);
        field(2, &rec, &mut scope);
    }
    let mut resource = Vec::new();
    field(2, &scope, &mut resource);
    let mut req = Vec::new();
    field(1, &resource, &mut req);
    req
}

async fn redis_calls(port: u16) -> u64 {
    let Ok(c) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return 0;
    };
    let Ok(mut con) = c.get_multiplexed_async_connection().await else {
        return 0;
    };
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut con)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|_| "not found".into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<String>> = args
        .iter()
        .find_map(|a| a.strip_prefix("--only="))
        .map(|v| v.split(',').map(str::to_string).collect());
    let want = |figure: &str| only.as_ref().is_none_or(|o| o.iter().any(|f| f == figure));
    let preload: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("--preload="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2100);
    let sz = sizes(quick);
    let mut results = serde_json::Map::new();
    let started = Instant::now();
    println!(
        "appproxy benchmark ({})",
        if quick { "quick" } else { "full" }
    );

    // --- one stack: provider (SQLite), a gated wildcard worker, a raw Traefik for baselines ---
    let stack = Stack::start(Db::Sqlite).await;
    let apps = free_port();
    let spec = WorkerSpec {
        authority: "bench".into(),
        frontend: TraefikFrontend::Wildcard { port: apps },
        wildcard_domain: Some(".bench.test".into()),
        setup_max_uses: 3,
        login_url: None,
        env: vec![(
            "APPPROXY_AUTHGATE__PLUGINS__DIR".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/../authgate/plugins").into(),
        )],
    };
    let w = stack.start_gated_worker(spec).await;
    // Idle: a registered worker, no circuits yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = json!({
        "provider_kib": rss_kib(pid_listening(stack.provider_port)),
        "authgate_kib": rss_kib(pid_listening(w.port)),
    });
    let raw_port = free_port();
    let raw = stack
        .start_traefik("raw-bench", TraefikFrontend::Wildcard { port: raw_port })
        .await;
    let traefiks = [w.traefik.proc.pid(), raw.proc.pid()];
    let raw_root = stack
        .root_key("raw-bench")
        .trim_end_matches('/')
        .to_string();
    let mut etcd = stack.etcd_client().await;
    etcd.put(
        format!("{raw_root}/http/services/ap-sentinel/loadBalancer/servers/0/url"),
        "http://127.0.0.1:9",
        None,
    )
    .await
    .unwrap();
    let echo = HttpEcho::start("bench").await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let create = |sub: String| {
        json!({"app": "bench", "worker": "bench", "user_id": Uuid::new_v4(), "open_to_public": true,
               "subdomain": sub,
               "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1", "kernel_port": echo.port}]})
    };

    // --- 1. create → live, provider vs raw etcd txn, at several preloads ---
    let mut figure1 = Vec::new();
    let mut loaded = 0usize;
    let mut raw_loaded = 0usize;
    let preloads = if want("live") {
        sz.preload.clone()
    } else {
        Vec::new()
    };
    for &preload in &preloads {
        loaded = preload_provider(&stack, &create, loaded, preload).await;
        raw_preload(&mut etcd, &raw_root, raw_loaded, preload, echo.port).await;
        raw_loaded = raw_loaded.max(preload);
        settle(&traefiks);
        let (mut prov, mut base) = (Vec::new(), Vec::new());
        for i in 0..sz.samples {
            // Alternate provider and raw samples so noise hits both alike, and start each one
            // after Traefik's 100 ms provider throttle has run out (else a sample waits for
            // the throttle window its predecessor opened, whoever wrote it).
            tokio::time::sleep(Duration::from_millis(250)).await;
            let sub = format!("live{preload}x{i}");
            let t = Instant::now();
            let (s, _) = stack
                .manager(Method::POST, "/v2/circuits", Some(&create(sub.clone())))
                .await;
            assert_eq!(s, 201);
            until_200(&http, apps, &format!("{sub}.bench.test")).await;
            prov.push(ms(t.elapsed()));
            loaded += 1;
            let host = format!("live{preload}x{i}.raw.test");
            tokio::time::sleep(Duration::from_millis(250)).await;
            let t = Instant::now();
            raw_put(&mut etcd, &raw_root, &host, echo.port).await;
            until_200(&http, raw_port, &host).await;
            base.push(ms(t.elapsed()));
            raw_loaded += 1;
        }
        println!(
            "create→live @{preload}: provider p50 {:.1} ms p99 {:.1} ms | raw txn p50 {:.1} ms p99 {:.1} ms",
            pct(&prov, 0.5),
            pct(&prov, 0.99),
            pct(&base, 0.5),
            pct(&base, 0.99)
        );
        figure1.push(json!({
            "preload": preload, "provider_ms": prov, "raw_ms": base,
            "provider_p50": pct(&prov, 0.5), "provider_p99": pct(&prov, 0.99),
            "raw_p50": pct(&base, 0.5), "raw_p99": pct(&base, 0.99),
            "added_p50_ms": pct(&prov, 0.5) - pct(&base, 0.5),
        }));
    }
    if want("live") {
        results.insert("create_to_live".into(), json!(figure1));
    }

    let have_wrk = Command::new("wrk").arg("--version").output().is_ok();
    // --- 2. burst: N concurrent creates vs N raw transactions (one per circuit) ---
    let traefik_pid = w.traefik.proc.pid();
    if want("burst") {
        settle(&traefiks);
        let provider_pid = pid_listening(stack.provider_port);
        let profile = Profile::start("burst");
        let cpu0 = cpu_secs(traefik_pid);
        let provider_cpu0 = cpu_secs(provider_pid);
        let t = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..sz.burst {
            let (stack_url, token, body) = (
                stack.provider_url(),
                stack.manager_token.clone(),
                create(format!("burst{i}")),
            );
            let http = http.clone();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let status = http
                    .post(format!("{stack_url}/v2/circuits"))
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
        let acked_provider = ms(t.elapsed());
        let provider_cpu = cpu_secs(provider_pid) - provider_cpu0;
        let burst_hosts = |domain: &str| -> Vec<String> {
            (0..sz.burst)
                .map(|i| format!("burst{i}.{domain}"))
                .collect()
        };
        all_live(&http, apps, burst_hosts("bench.test")).await;
        let burst_provider = ms(t.elapsed());
        let burst_profile = profile.and_then(|p| p.finish(Some("provider-w")));
        let reconcile_metrics = provider_metrics(
            &http,
            &stack,
            &[
                "appproxy_provider_reconcile",
                "appproxy_provider_etcd",
                "appproxy_provider_foreign",
            ],
        )
        .await;
        println!("  provider after the burst: {reconcile_metrics}");
        // Traefik's CPU for the burst includes the reloads it still runs after the last
        // circuit answered; so does the time until it is idle again.
        settle_within(&traefiks, Duration::from_secs(600));
        let idle_provider = ms(t.elapsed());
        let burst_cpu = cpu_secs(traefik_pid) - cpu0;
        let raw_pid = raw.proc.pid();
        let raw_hosts = burst_hosts("raw.test");
        let cpu0 = cpu_secs(raw_pid);
        let t = Instant::now();
        for host in &raw_hosts {
            raw_put(&mut etcd, &raw_root, host, echo.port).await;
        }
        let acked_raw = ms(t.elapsed());
        all_live(&http, raw_port, raw_hosts).await;
        let burst_raw = ms(t.elapsed());
        settle_within(&traefiks, Duration::from_secs(600));
        let idle_raw = ms(t.elapsed());
        let burst_raw_cpu = cpu_secs(raw_pid) - cpu0;
        println!(
            "  burst creates: p50 {:.1} ms, p99 {:.1} ms; provider CPU {provider_cpu:.2} s until all acknowledged",
            pct(&create_ms, 0.5),
            pct(&create_ms, 0.99)
        );
        println!(
            "burst of {}: provider {:.0} ms, all acknowledged after {acked_provider:.0} ms, Traefik idle after {idle_provider:.0} ms (Traefik CPU {:.1} s) | one txn per circuit {:.0} ms, all written after {acked_raw:.0} ms, Traefik idle after {idle_raw:.0} ms (Traefik CPU {:.1} s) → {:.1}×",
            sz.burst,
            burst_provider,
            burst_cpu,
            burst_raw,
            burst_raw_cpu,
            burst_raw / burst_provider
        );
        results.insert(
            "burst".into(),
            json!({"circuits": sz.burst, "provider_ms": burst_provider, "raw_per_circuit_ms": burst_raw,
                   "provider_acked_ms": acked_provider, "raw_written_ms": acked_raw,
                   "provider_idle_ms": idle_provider, "raw_idle_ms": idle_raw,
                   "speedup": burst_raw / burst_provider, "traefik_cpu_s": burst_cpu,
                   "raw_traefik_cpu_s": burst_raw_cpu, "provider_cpu_s": provider_cpu,
                   "create_p50_ms": pct(&create_ms, 0.5), "create_p99_ms": pct(&create_ms, 0.99),
                   "profile": burst_profile, "provider_metrics": reconcile_metrics}),
        );
    }
    if !want("live") && !want("burst") && want("auth") {
        // The auth figures see the worker as loaded as in a full run.
        loaded = preload_provider(&stack, &create, loaded, preload).await;
        raw_preload(&mut etcd, &raw_root, raw_loaded, preload, echo.port).await;
        until_200(&http, apps, "pre0.bench.test").await;
        until_200(&http, raw_port, "pre0.raw.test").await;
    }

    if want("auth") {
        // --- 3 + 4. auth overhead through Traefik, and authgate alone ---
        let (s, v) = stack
            .manager(
                Method::POST,
                "/v2/circuits",
                Some(&json!({"app": "priv", "worker": "bench", "user_id": Uuid::new_v4(), "subdomain": "priv",
                             "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1", "kernel_port": echo.port}]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let priv_id = v["id"].as_str().unwrap().to_string();
        let generation = v["circuit"]["generation"].as_i64().unwrap();
        let setup = v["setup_url"].as_str().unwrap().replacen(
            &format!("priv.bench.test:{apps}"),
            &format!("127.0.0.1:{apps}"),
            1,
        );
        until_200(&http, apps, "priv.bench.test").await; // 401 until cookie; wait for router
        let nr = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut cookie = String::new();
        for _ in 0..200 {
            if let Ok(r) = nr
                .get(&setup)
                .header("host", format!("priv.bench.test:{apps}"))
                .send()
                .await
                && let Some(c) = r.headers().get("set-cookie")
            {
                cookie = e2e::cookie_pair(c.to_str().unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The nginx floor: a raw router on the raw Traefik with ForwardAuth to an nginx that always
        // answers 200 (the cheapest possible auth server), next to a raw router without auth.
        let nginx = start_nginx(&stack);
        // The same ForwardAuth shape as the provider renders, on the raw Traefik (no access
        // log), in front of nginx and in front of authgate: only the auth server differs.
        if let Some((_, nginx_port)) = &nginx {
            let address = format!("http://127.0.0.1:{nginx_port}/");
            raw_forward_auth(&mut etcd, &raw_root, "fa-nginx", &address, echo.port).await;
            until_200(&http, raw_port, "fa-nginx.raw.test").await;
        }
        let gate_address = format!("{}/auth/{priv_id}?g={generation}&m=interactive", w.base());
        raw_forward_auth(&mut etcd, &raw_root, "fa-gate", &gate_address, echo.port).await;
        until_200_with(&http, raw_port, "fa-gate.raw.test", &[("Cookie", &cookie)]).await;
        if have_wrk {
            let base = format!("http://127.0.0.1:{apps}/");
            let mut runs = BTreeMap::new();
            let raw_base = format!("http://127.0.0.1:{raw_port}/");
            // (name, URL, Host, the Traefik, the auth server); alternated, AUTH_ROUNDS times
            // each. Every scenario sends the same request, session cookie included: Traefik
            // copies a request's headers into the ForwardAuth call and to the backend, so a
            // floor measured without the cookie would be a lighter request, not a cheaper auth
            // server.
            let (gate_pid, worker_traefik, raw_traefik) =
                (pid_listening(w.port), w.traefik.proc.pid(), raw.proc.pid());
            let mut scenarios = vec![
                ("no_auth", &base, "pre0.bench.test", worker_traefik, None),
                (
                    "authgate",
                    &base,
                    "priv.bench.test",
                    worker_traefik,
                    Some(gate_pid),
                ),
            ];
            if let Some((nginx, _)) = &nginx {
                scenarios.extend([
                    ("raw_no_auth", &raw_base, "pre0.raw.test", raw_traefik, None),
                    (
                        "nginx",
                        &raw_base,
                        "fa-nginx.raw.test",
                        raw_traefik,
                        Some(nginx.pid()),
                    ),
                    (
                        "authgate_raw",
                        &raw_base,
                        "fa-gate.raw.test",
                        raw_traefik,
                        Some(gate_pid),
                    ),
                ]);
            }
            for round in 0..AUTH_ROUNDS {
                let order: Vec<_> = if round % 2 == 0 {
                    scenarios.iter().collect()
                } else {
                    scenarios.iter().rev().collect()
                };
                for (name, url, host, traefik, auth) in order {
                    let headers = [("Host", *host), ("Cookie", cookie.as_str())];
                    settle(&traefiks);
                    let (traefik0, auth0) = (cpu_secs(*traefik), auth.map(cpu_secs));
                    let opens0 = tcp_passive_opens();
                    let run = || wrk(url, sz.wrk_secs, &headers);
                    // The first round is profiled (CPU share per process), the others are not.
                    let mut result = if round == 0 {
                        let symbols = name.starts_with("authgate").then_some("authgate-w");
                        profiled(name, symbols, run)
                    } else {
                        run()
                    };
                    // CPU time per request from /proc: far steadier than throughput here.
                    let requests = result["rps"].as_f64().unwrap_or(0.0) * sz.wrk_secs as f64;
                    let per_req = |secs: f64| (requests > 0.0).then(|| secs * 1e6 / requests);
                    result["traefik_cpu_us_per_req"] =
                        json!(per_req(cpu_secs(*traefik) - traefik0));
                    // Connections accepted on this machine per request: the ForwardAuth
                    // client's new connections (wrk's and the backend's are kept alive).
                    result["new_conns_per_req"] = json!(
                        (requests > 0.0).then(|| (tcp_passive_opens() - opens0) as f64 / requests)
                    );
                    if let (Some(pid), Some(c0)) = (auth, auth0) {
                        result["auth_cpu_us_per_req"] = json!(per_req(cpu_secs(*pid) - c0));
                    }
                    runs.insert(format!("{name}_{round}"), result);
                }
            }
            settle(&traefiks);
            let direct = profiled("direct", Some("authgate-w"), || {
                wrk(
                    &format!("{}/auth/{priv_id}?g={generation}&m=interactive", w.base()),
                    sz.wrk_secs,
                    &[
                        ("X-Forwarded-Method", "GET"),
                        ("X-Forwarded-Host", "priv.bench.test"),
                        ("X-Forwarded-Uri", "/"),
                        ("Cookie", &cookie),
                    ],
                )
            });
            let best = |k: &str| {
                (0..AUTH_ROUNDS)
                    .filter_map(|r| runs[&format!("{k}_{r}")]["rps"].as_f64())
                    .fold(0.0, f64::max)
            };
            println!(
                "through Traefik at c=32: no auth {:.0} req/s | authgate ForwardAuth {:.0} req/s ({:.0}%)",
                best("no_auth"),
                best("authgate"),
                100.0 * best("authgate") / best("no_auth")
            );
            if nginx.is_some() {
                println!(
                    "raw Traefik at c=32: no auth {:.0} req/s | nginx ForwardAuth {:.0} req/s ({:.0}%) | authgate ForwardAuth {:.0} req/s ({:.0}%)",
                    best("raw_no_auth"),
                    best("nginx"),
                    100.0 * best("nginx") / best("raw_no_auth"),
                    best("authgate_raw"),
                    100.0 * best("authgate_raw") / best("raw_no_auth")
                );
            }
            println!(
                "authgate alone (/auth, c=32): {:?} req/s, p99 {:?} ms",
                direct["rps"], direct["p99_ms"]
            );
            results.insert("auth_overhead".into(), json!(runs));
            results.insert("authgate_alone".into(), direct);

            // Added decision time of a trivial plugin: /auth at c=1, cookie decision vs the
            // api-keys plugin on a public circuit, alternating.
            let (s, v) = stack
                .manager(
                    Method::POST,
                    "/v2/circuits",
                    Some(
                        &json!({"app": "plug", "worker": "bench", "user_id": Uuid::new_v4(),
                                 "subdomain": "plug", "open_to_public": true,
                                 "auth_plugin": {"name": "api-keys", "config": {"keys": ["bench-key"]}},
                                 "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1",
                                             "kernel_port": echo.port}]}),
                    ),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            let plug_id = v["id"].as_str().unwrap().to_string();
            until_200_with(
                &http,
                apps,
                "plug.bench.test",
                &[("x-api-key", "bench-key")],
            )
            .await;
            let fwd = [
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Host", "plug.bench.test"),
                ("X-Forwarded-Uri", "/"),
            ];
            let cookie_url = format!("{}/auth/{priv_id}?g={generation}&m=interactive", w.base());
            let plugin_url = format!(
                "{}/auth/{plug_id}?g=1&m=interactive&p=api-keys&o=1",
                w.base()
            );
            let mut with_cookie = fwd.to_vec();
            with_cookie.push(("Cookie", &cookie));
            let mut with_key = fwd.to_vec();
            with_key.push(("X-API-Key", "bench-key"));
            let mut p50 = (Vec::new(), Vec::new());
            for _ in 0..2 {
                p50.0.push(
                    wrk_c(&cookie_url, sz.wrk_secs, 1, &with_cookie)["p50_ms"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                );
                p50.1.push(
                    wrk_c(&plugin_url, sz.wrk_secs, 1, &with_key)["p50_ms"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                );
            }
            // Time inside the plugin itself, from authgate's histogram.
            let gate_metrics = e2e::metrics_text(&http, &w.base()).await;
            let metric = |name: &str| {
                gate_metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            let inside_us = 1e6 * metric("appproxy_authgate_plugin_seconds_sum ")
                / metric("appproxy_authgate_plugin_seconds_count ");
            let base = p50.0.iter().cloned().fold(f64::INFINITY, f64::min);
            let plug = p50.1.iter().cloned().fold(f64::INFINITY, f64::min);
            println!(
                "plugin: /auth p50 at c=1 {:.3} ms with api-keys vs {:.3} ms cookie only → adds {:.0} µs (mean time inside the plugin {inside_us:.1} µs)",
                plug,
                base,
                (plug - base) * 1000.0
            );
            results.insert(
                "plugin".into(),
                json!({"cookie_p50_ms": base, "plugin_p50_ms": plug, "added_us": (plug - base) * 1000.0,
                       "inside_plugin_mean_us": inside_us}),
            );
        } else {
            println!("wrk not found: auth overhead figures skipped (deploy/lib.sh installs it)");
            results.insert(
                "auth_overhead".into(),
                json!({"skipped": "wrk not installed"}),
            );
        }
    }

    if want("ingest") {
        // --- 5. ingestion: records per second into authgate, Redis commands per flush ---
        let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
        let export = otlp_export(&ids, 1000);
        let calls0 = redis_calls(stack.redis_port).await;
        let t = Instant::now();
        let mut sent = 0;
        while sent < sz.records {
            let r = w.post_logs(&http, export.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200);
            sent += 1000;
        }
        let secs = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let calls = redis_calls(stack.redis_port).await - calls0;
        let flushes = (secs + 2.5).ceil();
        println!(
            "ingestion: {:.0} records/s over {} records; Redis commands ≈ {:.0} per 1 s flush for {} active circuits",
            sent as f64 / secs,
            sent,
            calls as f64 / flushes,
            ids.len()
        );
        results.insert(
            "ingestion".into(),
            json!({"records": sent, "seconds": secs, "records_per_s": sent as f64 / secs,
                   "redis_commands": calls, "flush_window_s": flushes, "active_circuits": ids.len()}),
        );
    }

    if want("memory") {
        // --- 6 + 7. memory and API figures ---
        let provider_pid = pid_listening(stack.provider_port);
        let gate_pid = pid_listening(w.port);
        // Traefik re-decodes its whole prefix on every change (seconds per change at 10k routers,
        // reference §5): pause it so it does not starve the two cores while 10k circuits are made.
        let _ = Command::new("kill")
            .args(["-STOP", &traefik_pid.to_string()])
            .status();
        let mut create_ms = Vec::new();
        while loaded < sz.memory_circuits {
            let t = Instant::now();
            let (s, _) = stack
                .manager(
                    Method::POST,
                    "/v2/circuits",
                    Some(&create(format!("mem{loaded}"))),
                )
                .await;
            assert_eq!(s, 201);
            create_ms.push(ms(t.elapsed()));
            loaded += 1;
        }
        // authgate refreshes its circuit map every 2 s: let it load all of them.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before_list_kib = rss_kib(provider_pid);
        let image_bytes = e2e::metrics_text(&http, &stack.provider_url())
            .await
            .lines()
            .find_map(|l| l.strip_prefix("appproxy_provider_reconcile_image_bytes "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let t = Instant::now();
        let (s, v) = stack.manager(Method::GET, "/v2/circuits", None).await;
        let list_ms = ms(t.elapsed());
        assert_eq!(s, 200);
        let listed = v["circuits"].as_array().map_or(0, Vec::len);
        let full = json!({"circuits": loaded, "provider_kib": rss_kib(provider_pid), "authgate_kib": rss_kib(gate_pid),
                          "provider_kib_before_list": before_list_kib,
                          "reconcile_image_kib": image_bytes / 1024});
        println!(
            "memory: idle provider {} KiB authgate {} KiB | with {} circuits provider {} KiB ({} KiB before listing them, reconciler image {} KiB) authgate {} KiB",
            idle["provider_kib"],
            idle["authgate_kib"],
            loaded,
            full["provider_kib"],
            full["provider_kib_before_list"],
            full["reconcile_image_kib"],
            full["authgate_kib"]
        );
        println!(
            "API (SQLite): create p50 {:.2} ms p99 {:.2} ms; list of {listed} circuits {list_ms:.0} ms",
            pct(&create_ms, 0.5),
            pct(&create_ms, 0.99)
        );
        results.insert("memory".into(), json!({"idle": idle, "loaded": full}));
        let _ = Command::new("kill")
            .args(["-CONT", &traefik_pid.to_string()])
            .status();
        results.insert(
            "api_sqlite".into(),
            json!({"create_p50_ms": pct(&create_ms, 0.5), "create_p99_ms": pct(&create_ms, 0.99),
                   "list_circuits": listed, "list_ms": list_ms, "create_samples": create_ms.len()}),
        );
    }

    drop(w);
    drop(raw);
    drop(stack);

    if want("pg") {
        // PostgreSQL create p50 (its own stack, no Traefik needed).
        let pg = Stack::start(Db::Postgres).await;
        pg.register_worker(json!({
            "authority": "pgw", "frontend_mode": "wildcard", "protocol": "http",
            "hostname": "127.0.0.1", "api_port": 1, "wildcard_domain": ".pg.test",
        }))
        .await;
        let mut pg_ms = Vec::new();
        for i in 0..sz.list_circuits.min(2000) {
            let mut body = create(format!("pg{i}"));
            body["worker"] = json!("pgw");
            let t = Instant::now();
            let (s, _) = pg.manager(Method::POST, "/v2/circuits", Some(&body)).await;
            assert_eq!(s, 201);
            pg_ms.push(ms(t.elapsed()));
        }
        println!(
            "API (PostgreSQL): create p50 {:.2} ms p99 {:.2} ms over {} creates",
            pct(&pg_ms, 0.5),
            pct(&pg_ms, 0.99),
            pg_ms.len()
        );
        results.insert(
            "api_postgres".into(),
            json!({"create_p50_ms": pct(&pg_ms, 0.5), "create_p99_ms": pct(&pg_ms, 0.99), "creates": pg_ms.len()}),
        );
        drop(pg);
    }

    let machine = json!({
        "date": version("date", "-u"),
        "kernel": version("uname", "-r"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "rustc": version("rustc", "--version"),
        "etcd": version("etcd", "--version"),
        "redis": version("redis-server", "--version"),
        "wrk": if have_wrk { "present" } else { "absent" },
        "quick": quick,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    results.insert("machine".into(), machine);
    let results = Value::Object(results);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = root.join("bench-results");
    std::fs::create_dir_all(&out_dir).unwrap();
    let file = out_dir.join(if only.is_some() {
        "partial.json"
    } else if quick {
        "quick.json"
    } else {
        "latest.json"
    });
    std::fs::write(&file, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("raw results: {}", file.display());
    let table = table(&results);
    println!("\n{table}");
    if !quick && only.is_none() {
        let md = root.join("BENCHMARKS.md");
        let text = std::fs::read_to_string(&md).unwrap_or_default();
        let (start, end) = ("<!-- bench:start -->", "<!-- bench:end -->");
        let new = match (text.find(start), text.find(end)) {
            (Some(a), Some(b)) if a < b => {
                format!("{}{start}\n{table}\n{}", &text[..a], &text[b..])
            }
            _ => format!("{text}\n{start}\n{table}\n{end}\n"),
        };
        std::fs::write(&md, new).unwrap();
        println!("table written to {}", md.display());
    }
}

/// The human table: figure, measured, baseline in the same run, target, verdict.
fn table(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.1}"));
    let f3 = |v: &Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.3}"));
    let mut rows = vec![
        "| figure | measured | same-run baseline | target | met |".to_string(),
        "|---|---|---|---|---|".to_string(),
    ];
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    for c in r["create_to_live"].as_array().into_iter().flatten() {
        let added = c["added_p50_ms"].as_f64().unwrap_or(f64::NAN);
        rows.push(format!(
            "| create → live, {} circuits loaded | p50 {} ms, p99 {} ms | raw etcd txn p50 {} ms, p99 {} ms | provider adds ≤ 10 ms p50 | {} (adds {added:.1} ms) |",
            c["preload"], f(&c["provider_p50"]), f(&c["provider_p99"]), f(&c["raw_p50"]), f(&c["raw_p99"]),
            yes(added <= 10.0)
        ));
    }
    let b = &r["burst"];
    if b.is_object() {
        let speed = b["speedup"].as_f64().unwrap_or(0.0);
        rows.push(format!(
            "| burst of {} creates → all live | {} ms (all acknowledged after {} ms; Traefik CPU {} s, idle again after {} ms) | one txn per circuit {} ms (all written after {} ms; Traefik CPU {} s, idle again after {} ms) | ≥ 5× faster | {} ({speed:.1}× to all live; {:.0}× less Traefik CPU) |",
            b["circuits"], f(&b["provider_ms"]), f(&b["provider_acked_ms"]), f(&b["traefik_cpu_s"]),
            f(&b["provider_idle_ms"]), f(&b["raw_per_circuit_ms"]), f(&b["raw_written_ms"]),
            f(&b["raw_traefik_cpu_s"]), f(&b["raw_idle_ms"]),
            yes(speed >= 5.0),
            b["raw_traefik_cpu_s"].as_f64().unwrap_or(f64::NAN) / b["traefik_cpu_s"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    let a = &r["auth_overhead"];
    if a.is_object() && a.get("skipped").is_none() {
        let best = |k: &str| {
            (0..AUTH_ROUNDS)
                .filter_map(|i| a[format!("{k}_{i}")]["rps"].as_f64())
                .fold(0.0, f64::max)
        };
        let (open, gated) = (best("no_auth"), best("authgate"));
        let (raw_open, nginx, raw_gate) =
            (best("raw_no_auth"), best("nginx"), best("authgate_raw"));
        let pct_of = |x: f64, of: f64| if of > 0.0 { 100.0 * x / of } else { f64::NAN };
        let (ours, floor) = (pct_of(raw_gate, raw_open), pct_of(nginx, raw_open));
        // p50/p99 of the better of the two runs of a scenario.
        let lat = |k: &str| {
            let run = (0..AUTH_ROUNDS)
                .map(|i| &a[format!("{k}_{i}")])
                .max_by(|x, y| {
                    x["rps"]
                        .as_f64()
                        .partial_cmp(&y["rps"].as_f64())
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .unwrap_or(&Value::Null);
            (
                run["p50_ms"].as_f64().unwrap_or(f64::NAN),
                run["p99_ms"].as_f64().unwrap_or(f64::NAN),
            )
        };
        let ((g50, g99), (n50, n99), (o50, o99)) =
            (lat("authgate_raw"), lat("nginx"), lat("raw_no_auth"));
        // The verdict: authgate / nginx within each round (the two runs are adjacent, so
        // they share the machine's mood), median over the rounds.
        let mut pairs: Vec<f64> = (0..AUTH_ROUNDS)
            .filter_map(|i| {
                let g = a[format!("authgate_raw_{i}")]["rps"].as_f64()?;
                let n = a[format!("nginx_{i}")]["rps"].as_f64()?;
                Some(pct_of(g, n))
            })
            .collect();
        pairs.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
        let median = pairs.get(pairs.len() / 2).copied().unwrap_or(f64::NAN);
        let (lo, hi) = (
            pairs.first().copied().unwrap_or(f64::NAN),
            pairs.last().copied().unwrap_or(f64::NAN),
        );
        // CPU per request of a scenario's auth server and Traefik, median over the rounds.
        let cpu = |name: &str, field: &str| {
            let v: Vec<f64> = (0..AUTH_ROUNDS)
                .filter_map(|i| a[format!("{name}_{i}")][field].as_f64())
                .collect();
            pct(&v, 0.5)
        };
        rows.push(format!(
            "| same Traefik, same ForwardAuth middleware, wrk c=32 | authgate {raw_gate:.0} req/s = {ours:.0} % of no-auth ({raw_open:.0}); adds p50 {:.1} ms, p99 {:.1} ms; CPU per request: authgate {:.0} µs, Traefik {:.0} µs | nginx {nginx:.0} req/s = {floor:.0} % of no-auth; adds p50 {:.1} ms, p99 {:.1} ms; CPU per request: nginx {:.0} µs, Traefik {:.0} µs | within 5 % of the nginx floor | {} (authgate at {median:.0} % of nginx: median of {} adjacent pairs, range {lo:.0}–{hi:.0} %) |",
            g50 - o50, g99 - o99,
            cpu("authgate_raw", "auth_cpu_us_per_req"), cpu("authgate_raw", "traefik_cpu_us_per_req"),
            n50 - o50, n99 - o99,
            cpu("nginx", "auth_cpu_us_per_req"), cpu("nginx", "traefik_cpu_us_per_req"),
            yes(median >= 95.0), pairs.len()
        ));
        rows.push(format!(
            "| the worker's own Traefik (OTLP access log on), wrk c=32 | authgate ForwardAuth {gated:.0} req/s = {:.0} % of no-auth ({open:.0}) | raw Traefik without access log: no-auth {raw_open:.0} req/s (the log export costs {:.0} %) | report | — |",
            pct_of(gated, open), 100.0 - pct_of(open, raw_open)
        ));
        let d = &r["authgate_alone"];
        let rps = d["rps"].as_f64().unwrap_or(0.0);
        let p99 = d["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
        rows.push(format!(
            "| authgate alone, `/auth`, wrk c=32 | {rps:.0} decisions/s, p99 {} ms | — | ≥ 40k/s, p99 ≤ 2 ms | {} |",
            f3(&d["p99_ms"]), yes(rps >= 40_000.0 && p99 <= 2.0)
        ));
    }
    let i = &r["ingestion"];
    if i.is_object() {
        let rec = i["records_per_s"].as_f64().unwrap_or(0.0);
        rows.push(format!(
        "| ingestion (OTLP into authgate) | {rec:.0} records/s | Redis: {} commands over {} s for {} circuits | ≥ 100k records/s; Redis writes ∝ circuits | {} |",
        i["redis_commands"], f(&i["flush_window_s"]), i["active_circuits"], yes(rec >= 100_000.0)
    ));
    }
    let pl = &r["plugin"];
    if pl.is_object() {
        let added = pl["added_us"].as_f64().unwrap_or(f64::NAN);
        rows.push(format!(
            "| trivial plugin (api-keys), /auth p50 at c=1 | {} ms (mean time inside the plugin {} µs) | cookie-only decision {} ms | adds < 50 µs | {} (adds {added:.0} µs) |",
            f3(&pl["plugin_p50_ms"]), f(&pl["inside_plugin_mean_us"]), f3(&pl["cookie_p50_ms"]), yes(added < 50.0)
        ));
    }
    let m = &r["memory"];
    if m.is_object() {
        let mib = |v: &Value| v.as_f64().map_or(f64::NAN, |k| k / 1024.0);
        let (pm, am) = (
            mib(&m["loaded"]["provider_kib"]),
            mib(&m["loaded"]["authgate_kib"]),
        );
        rows.push(format!(
        "| RSS idle / with {} circuits | provider {:.1} / {pm:.1} MiB, authgate {:.1} / {am:.1} MiB | — | ≤ 64 MiB each | {} |",
        m["loaded"]["circuits"], mib(&m["idle"]["provider_kib"]), mib(&m["idle"]["authgate_kib"]),
        yes(pm <= 64.0 && am <= 64.0)
    ));
    }
    let s = &r["api_sqlite"];
    let p = &r["api_postgres"];
    rows.push(format!(
        "| provider API | create p50 {} ms (SQLite), {} ms (PostgreSQL); list {} circuits {} ms | — | report | — |",
        f(&s["create_p50_ms"]), f(&p["create_p50_ms"]), s["list_circuits"], f(&s["list_ms"])
    ));
    rows.join("\n")
}

/// nginx answering 200 to everything (the auth floor), if nginx is installed.
fn start_nginx(stack: &Stack) -> Option<(e2e::Proc, u16)> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = free_port();
    let dir = stack.dir.path().join("nginx");
    std::fs::create_dir_all(dir.join("tmp")).ok()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; error_log stderr; pid {pid};\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};\n\
             fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200; }} }} }}\n",
            pid = dir.join("nginx.pid").display(),
            tmp = dir.join("tmp").display(),
        ),
    )
    .ok()?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf).arg("-p").arg(&dir);
    let mut p = e2e::Proc::spawn("nginx", cmd, stack.dir.path());
    e2e::wait_listening(port, Duration::from_secs(10), &mut p);
    Some((p, port))
}

/// The PID that listens on a loopback port (from `ss`).
fn pid_listening(port: u16) -> u32 {
    let out = Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.split("pid=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}
