//! Probes the figures share: percentiles, waiting for a route, process RSS and CPU time, TCP
//! accept counts, raw etcd writes for the baselines, wrk runs, perf profiles, settling, the
//! OTLP payload, Redis command counts, nginx (the ForwardAuth floor).

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use e2e::{Stack, free_port};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::report::WrkRun;

pub(crate) use e2e::pct;

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A GET with a Host header until 200 (polling every 2 ms, at most 30 s).
pub(crate) async fn until_200(http: &reqwest::Client, port: u16, host: &str) -> Duration {
    until_200_with(http, port, host, &[]).await
}

/// Until every host answers 200 through Traefik on `port`: eight pollers share the list, so
/// the time measured is the data plane's, not a sequential client's (1,000 sequential checks
/// alone take most of a second here).
pub(crate) async fn all_live(http: &reqwest::Client, port: u16, hosts: Vec<String>) {
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

pub(crate) async fn until_200_with(
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

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// TCP connections this machine has accepted so far (`PassiveOpens` in /proc/net/snmp).
pub(crate) fn tcp_passive_opens() -> u64 {
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
pub(crate) async fn raw_put(etcd: &mut etcd_client::Client, root: &str, host: &str, backend: u16) {
    raw_put_many(etcd, root, &[host.to_string()], backend).await;
}

/// The four keys of a minimal Host router per host, as one raw etcd transaction.
pub(crate) async fn raw_put_many(
    etcd: &mut etcd_client::Client,
    root: &str,
    hosts: &[String],
    backend: u16,
) {
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

/// Preload the raw Traefik's prefix from `from` up to `to` routers (`pre<i>.raw.test`), 32
/// routers (128 operations) per transaction: preloading is not what is measured, and one
/// transaction per router would keep Traefik re-decoding for minutes.
pub(crate) async fn raw_preload(
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
pub(crate) async fn raw_forward_auth(
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

/// wrk at 32 connections.
pub(crate) fn wrk(url: &str, secs: u64, headers: &[(&str, &str)]) -> WrkRun {
    wrk_c(url, secs, 32, headers)
}

/// wrk for `secs` at `conns` connections: requests per second, p50/p99, non-2xx answers.
pub(crate) fn wrk_c(url: &str, secs: u64, conns: u32, headers: &[(&str, &str)]) -> WrkRun {
    wrk_on(None, url, secs, conns, headers)
}

/// [`wrk_c`] with wrk itself on the CPUs in `cpus` (one thread) when given.
pub(crate) fn wrk_on(
    cpus: Option<&str>,
    url: &str,
    secs: u64,
    conns: u32,
    headers: &[(&str, &str)],
) -> WrkRun {
    let mut cmd = match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.args(["-c", list, "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    let threads = if cpus.is_some() { 1 } else { conns.clamp(1, 2) };
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
        Err(e) => {
            return WrkRun {
                error: Some(format!("wrk: {e}")),
                ..WrkRun::default()
            };
        }
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
    WrkRun {
        rps,
        p50_ms: lat("50%"),
        p99_ms: lat("99%"),
        non2xx,
        ..WrkRun::default()
    }
}

/// Run `f` (a wrk run) under a system-wide `perf record -e cpu-clock`, if perf works here.
/// Returns wrk's result with `cpu_share` (thread name → % of all samples) and, for
/// `symbols_of`, that thread name's ten hottest symbols.
pub(crate) fn profiled(name: &str, symbols_of: Option<&str>, f: impl FnOnce() -> WrkRun) -> WrkRun {
    let profile = Profile::start(name);
    let mut out = f();
    if let Some(p) = profile.and_then(|p| p.finish(symbols_of)) {
        out.cpu_share = Some(p["cpu_share"].clone());
        out.hot_symbols = (!p["hot_symbols"].is_null()).then(|| p["hot_symbols"].clone());
    }
    out
}

/// The provider's `/metrics` samples whose names start with one of `prefixes`.
pub(crate) async fn provider_metrics(
    http: &reqwest::Client,
    stack: &Stack,
    prefixes: &[&str],
) -> Value {
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
pub(crate) struct Profile {
    name: String,
    data: PathBuf,
    child: std::process::Child,
}

impl Profile {
    /// Start recording; `None` where perf does not work here.
    pub(crate) fn start(name: &str) -> Option<Profile> {
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
    pub(crate) fn finish(mut self, symbols_of: Option<&str>) -> Option<Value> {
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
pub(crate) fn settle(pids: &[u32]) {
    settle_within(pids, Duration::from_secs(120));
}

/// When `pid` went quiet, measured from `since`: sampled every 100 ms from the call on, a
/// sample with more than 10 ms of CPU (a tenth of a core) is busy; the answer is the end of the
/// last busy sample once 2 s have passed without one (or `limit`), or the call's own time when
/// none was busy. Busy tenths are printed (when few) to show where the tail goes. Finer than [`settle_within`], which counts
/// whole quiet seconds and so adds one to every figure.
pub(crate) fn quiet_since(pid: u32, since: Instant, limit: Duration) -> Duration {
    const STEP: Duration = Duration::from_millis(100);
    let deadline = Instant::now() + limit;
    let mut last_busy = since.elapsed();
    let mut quiet = Duration::ZERO;
    let mut before = cpu_secs(pid);
    let mut timeline = Vec::new();
    while quiet < Duration::from_secs(2) && Instant::now() < deadline {
        std::thread::sleep(STEP);
        let now = cpu_secs(pid);
        if now - before > 0.010 {
            last_busy = since.elapsed();
            quiet = Duration::ZERO;
            timeline.push(format!(
                "{:.1}s:{:.0}ms",
                last_busy.as_secs_f64(),
                (now - before) * 1e3
            ));
        } else {
            quiet += STEP;
        }
        before = now;
    }
    if timeline.len() <= 40 {
        println!(
            "  busy tenths of pid {pid} after the start: {}",
            timeline.join(" ")
        );
    }
    last_busy
}

pub(crate) fn settle_within(pids: &[u32], limit: Duration) {
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

pub(crate) fn parse_wrk_duration(v: &str) -> f64 {
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
pub(crate) fn otlp_export(circuits: &[Uuid], n: usize) -> Vec<u8> {
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

pub(crate) async fn redis_calls(port: u16) -> u64 {
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

pub(crate) fn version(cmd: &str, arg: &str) -> String {
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

/// nginx answering 200 to everything (the auth floor), if nginx is installed.
pub(crate) fn start_nginx(stack: &Stack) -> Option<(e2e::Proc, u16)> {
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
pub(crate) fn pid_listening(port: u16) -> u32 {
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
