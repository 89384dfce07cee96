//! The benchmark's results, typed: every figure is a struct, `latest.json` is their
//! serialization and the markdown table is rendered from the same structs (a renamed field is a
//! compile error, not a silent "n/a").

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::probes::pct;

/// Rounds of the auth-overhead scenarios (each scenario once per round; odd rounds run them in
/// reverse order, so neither auth server always goes first).
pub(crate) const AUTH_ROUNDS: usize = 5;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Results {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_to_live: Option<Vec<Live>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_update: Option<RouteUpdate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_overhead: Option<AuthRuns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authgate_alone: Option<WrkRun>,
    /// authgate alone with wrk (one thread) pinned to the last CPU and authgate to the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authgate_alone_pinned: Option<WrkRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginFigure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingestion: Option<Ingestion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_sqlite: Option<ApiSqlite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_postgres: Option<ApiPostgres>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<Ha>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<Https>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
}

/// The Manager's way to an inference endpoint: create it (no replicas yet), then
/// `bulk/routes` at once; from the routes call until Traefik answers 200. Baseline: a create
/// that carries its route, in the same run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RouteUpdate {
    pub update_ms: Vec<f64>,
    pub create_ms: Vec<f64>,
    pub update_p50: f64,
    pub update_p99: f64,
    pub create_p50: f64,
}

/// Create → live at one preload: provider samples against raw etcd transactions.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Live {
    pub preload: usize,
    pub provider_ms: Vec<f64>,
    pub raw_ms: Vec<f64>,
    pub provider_p50: f64,
    pub provider_p99: f64,
    pub raw_p50: f64,
    pub raw_p99: f64,
    pub added_p50_ms: f64,
}

impl Live {
    pub(crate) fn new(preload: usize, provider_ms: Vec<f64>, raw_ms: Vec<f64>) -> Live {
        Live {
            preload,
            provider_p50: pct(&provider_ms, 0.5),
            provider_p99: pct(&provider_ms, 0.99),
            raw_p50: pct(&raw_ms, 0.5),
            raw_p99: pct(&raw_ms, 0.99),
            added_p50_ms: pct(&provider_ms, 0.5) - pct(&raw_ms, 0.5),
            provider_ms,
            raw_ms,
        }
    }
}

/// A burst of creates against one raw transaction per circuit.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Burst {
    pub circuits: usize,
    pub provider_ms: f64,
    pub raw_per_circuit_ms: f64,
    pub provider_acked_ms: f64,
    pub raw_written_ms: f64,
    pub provider_idle_ms: f64,
    pub raw_idle_ms: f64,
    pub speedup: f64,
    pub traefik_cpu_s: f64,
    pub raw_traefik_cpu_s: f64,
    pub provider_cpu_s: f64,
    pub create_p50_ms: f64,
    pub create_p99_ms: f64,
    pub profile: Option<Value>,
    pub provider_metrics: Value,
}

/// One wrk run (and what was measured around it).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct WrkRun {
    pub rps: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    #[serde(default)]
    pub non2xx: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_share: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_symbols: Option<Value>,
    /// CPU time of the scenario's Traefik per request (µs, from `/proc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traefik_cpu_us_per_req: Option<f64>,
    /// CPU time of the scenario's auth server per request (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_cpu_us_per_req: Option<f64>,
    /// Connections accepted on this machine per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_conns_per_req: Option<f64>,
}

/// The auth scenarios (`<scenario>_<round>`), or why they were skipped.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum AuthRuns {
    Skipped { skipped: String },
    Runs(BTreeMap<String, WrkRun>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PluginFigure {
    pub cookie_p50_ms: f64,
    pub plugin_p50_ms: f64,
    pub added_us: f64,
    pub inside_plugin_mean_us: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ingestion {
    pub records: usize,
    pub seconds: f64,
    pub records_per_s: f64,
    pub redis_commands: u64,
    pub flush_window_s: f64,
    pub active_circuits: usize,
}

/// Resident memory of both binaries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Rss {
    pub provider_kib: u64,
    pub authgate_kib: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LoadedRss {
    pub circuits: usize,
    pub provider_kib: u64,
    pub authgate_kib: u64,
    pub provider_kib_before_list: u64,
    pub reconcile_image_kib: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Memory {
    pub idle: Rss,
    pub loaded: LoadedRss,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ApiSqlite {
    pub create_p50_ms: f64,
    pub create_p99_ms: f64,
    pub list_circuits: usize,
    pub list_ms: f64,
    pub create_samples: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ApiPostgres {
    pub create_p50_ms: f64,
    pub create_p99_ms: f64,
    pub creates: usize,
}

/// Create → live through the leader and a follower (ms), and recovery after leader kills
/// (s from the kill).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ha {
    pub leader_ms: Vec<f64>,
    pub follower_ms: Vec<f64>,
    pub takeover_s: Vec<f64>,
    pub kill_to_live_s: Vec<f64>,
    pub lease_ttl_s: u64,
}

/// HTTPS against HTTP through the same kind of worker (wrk), and create → live for a circuit
/// whose host needs a new ACME certificate (ms).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Https {
    pub http_kept: WrkRun,
    pub https_kept: WrkRun,
    pub http_new: WrkRun,
    pub https_new: WrkRun,
    pub acme_create_to_live_ms: Vec<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub rustc: String,
    pub etcd: String,
    pub redis: String,
    pub wrk: String,
    pub quick: bool,
    pub wall_s: f64,
}

fn f(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |x| format!("{x:.1}"))
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

/// The human table: figure, measured, baseline in the same run, target, verdict.
pub(crate) fn table(r: &Results) -> String {
    let mut rows = vec![
        "| figure | measured | same-run baseline | target | met |".to_string(),
        "|---|---|---|---|---|".to_string(),
    ];
    for c in r.create_to_live.iter().flatten() {
        rows.push(live_row(c));
    }
    if let Some(u) = &r.route_update {
        rows.push(format!(
            "| route update → live (endpoint create, then `bulk/routes` at once) | p50 {:.1} ms, p99 {:.1} ms | create with its route p50 {:.1} ms | report | — |",
            u.update_p50, u.update_p99, u.create_p50
        ));
    }
    if let Some(b) = &r.burst {
        rows.push(burst_row(b));
    }
    if let Some(AuthRuns::Runs(runs)) = &r.auth_overhead {
        rows.extend(auth_rows(runs, r.authgate_alone.as_ref()));
        rows.extend(data_plane_rows(runs));
    }
    if let Some(d) = &r.authgate_alone_pinned {
        rows.push(format!(
            "| authgate alone, `/auth`, wrk c=32 on its own CPU (`taskset`) | {} decisions/s, p99 {} ms | — | p99 ≤ 2 ms | {} |",
            f(d.rps),
            d.p99_ms.map_or("n/a".into(), |x| format!("{x:.3}")),
            yes(d.p99_ms.is_some_and(|p| p <= 2.0))
        ));
    }
    if let Some(i) = &r.ingestion {
        rows.push(format!(
            "| ingestion (OTLP into authgate) | {:.0} records/s | Redis: {} commands over {} s for {} circuits | ≥ 100k records/s; Redis writes ∝ circuits | {} |",
            i.records_per_s, i.redis_commands, f(Some(i.flush_window_s)), i.active_circuits,
            yes(i.records_per_s >= 100_000.0)
        ));
    }
    if let Some(pl) = &r.plugin {
        rows.push(format!(
            "| trivial plugin (api-keys), /auth p50 at c=1 | {:.3} ms (mean time inside the plugin {} µs) | cookie-only decision {:.3} ms | adds < 50 µs | {} (adds {:.0} µs) |",
            pl.plugin_p50_ms, f(Some(pl.inside_plugin_mean_us)), pl.cookie_p50_ms,
            yes(pl.added_us < 50.0), pl.added_us
        ));
    }
    if let Some(m) = &r.memory {
        let mib = |k: u64| k as f64 / 1024.0;
        let (pm, am) = (mib(m.loaded.provider_kib), mib(m.loaded.authgate_kib));
        rows.push(format!(
            "| RSS idle / with {} circuits | provider {:.1} / {pm:.1} MiB, authgate {:.1} / {am:.1} MiB | — | ≤ 64 MiB each | {} |",
            m.loaded.circuits, mib(m.idle.provider_kib), mib(m.idle.authgate_kib),
            yes(pm <= 64.0 && am <= 64.0)
        ));
    }
    let (s, p) = (r.api_sqlite.as_ref(), r.api_postgres.as_ref());
    rows.push(format!(
        "| provider API | create p50 {} ms (SQLite), {} ms (PostgreSQL); list {} circuits {} ms | — | report | — |",
        f(s.map(|s| s.create_p50_ms)), f(p.map(|p| p.create_p50_ms)),
        s.map_or("n/a".into(), |s| s.list_circuits.to_string()), f(s.map(|s| s.list_ms))
    ));
    if let Some(h) = &r.ha {
        let (lead, follow) = (pct(&h.leader_ms, 0.5), pct(&h.follower_ms, 0.5));
        rows.push(format!(
            "| HA: 2 providers, 3-member etcd, PostgreSQL | create → live p50 {lead:.1} ms through the leader, {follow:.1} ms through a follower ({:+.1} ms); leader killed → another leads p50 {:.2} s, a create through the survivor live p50 {:.2} s ({} kills, lease {} s) | — | follower within a few ms of the leader; takeover within the lease | {} |",
            follow - lead,
            pct(&h.takeover_s, 0.5),
            pct(&h.kill_to_live_s, 0.5),
            h.takeover_s.len(),
            h.lease_ttl_s,
            yes(follow - lead <= 5.0 && pct(&h.takeover_s, 0.5) <= h.lease_ttl_s as f64 + 1.0)
        ));
    }
    if let Some(h) = &r.https {
        let run = |w: &WrkRun| {
            format!(
                "{} req/s, p50 {} ms, p99 {} ms",
                f(w.rps),
                f(w.p50_ms),
                f(w.p99_ms)
            )
        };
        rows.push(format!(
            "| HTTPS vs HTTP, public app, wrk c=32 | kept-alive: HTTPS {} · HTTP {}; new connection per request: HTTPS {} · HTTP {}; create → live with a new ACME certificate (pebble, TLS-ALPN-01) p50 {} ms over {} | — | report | — |",
            run(&h.https_kept),
            run(&h.http_kept),
            run(&h.https_new),
            run(&h.http_new),
            f(Some(pct(&h.acme_create_to_live_ms, 0.5))),
            h.acme_create_to_live_ms.len(),
        ));
    }
    rows.join("\n")
}

fn live_row(c: &Live) -> String {
    format!(
        "| create → live, {} circuits loaded | p50 {} ms, p99 {} ms | raw etcd txn p50 {} ms, p99 {} ms | provider adds ≤ 10 ms p50 | {} (adds {:.1} ms) |",
        c.preload,
        f(Some(c.provider_p50)),
        f(Some(c.provider_p99)),
        f(Some(c.raw_p50)),
        f(Some(c.raw_p99)),
        yes(c.added_p50_ms <= 10.0),
        c.added_p50_ms
    )
}

fn burst_row(b: &Burst) -> String {
    format!(
        "| burst of {} creates → all live | {} ms (all acknowledged after {} ms; Traefik CPU {} s, idle again after {} ms) | one txn per circuit {} ms (all written after {} ms; Traefik CPU {} s, idle again after {} ms) | ≥ 5× faster | {} ({:.1}× to all live; {:.0}× less Traefik CPU) |",
        b.circuits,
        f(Some(b.provider_ms)),
        f(Some(b.provider_acked_ms)),
        f(Some(b.traefik_cpu_s)),
        f(Some(b.provider_idle_ms)),
        f(Some(b.raw_per_circuit_ms)),
        f(Some(b.raw_written_ms)),
        f(Some(b.raw_traefik_cpu_s)),
        f(Some(b.raw_idle_ms)),
        yes(b.speedup >= 5.0),
        b.speedup,
        b.raw_traefik_cpu_s / b.traefik_cpu_s
    )
}

/// A scenario's rounds (`<k>_<round>`).
fn rounds<'a>(runs: &'a BTreeMap<String, WrkRun>, k: &str) -> impl Iterator<Item = &'a WrkRun> {
    (0..AUTH_ROUNDS).filter_map(move |i| runs.get(&format!("{k}_{i}")))
}

/// A scenario's best throughput over its rounds (0 without any).
fn best_rps(runs: &BTreeMap<String, WrkRun>, k: &str) -> f64 {
    rounds(runs, k).filter_map(|r| r.rps).fold(0.0, f64::max)
}

/// A scenario's CPU per request, median over its rounds: its auth server's or its Traefik's.
fn median_cpu(runs: &BTreeMap<String, WrkRun>, k: &str, auth: bool) -> f64 {
    let v: Vec<f64> = rounds(runs, k)
        .filter_map(|r| match auth {
            true => r.auth_cpu_us_per_req,
            false => r.traefik_cpu_us_per_req,
        })
        .collect();
    pct(&v, 0.5)
}

/// The auth rows: authgate against the nginx floor on the raw Traefik (the verdict: the
/// median over rounds of authgate / nginx within a round, the two runs being adjacent), the
/// worker's own Traefik, and authgate alone.
fn auth_rows(runs: &BTreeMap<String, WrkRun>, alone: Option<&WrkRun>) -> Vec<String> {
    let round = |k: &str, i: usize| runs.get(&format!("{k}_{i}"));
    let best = |k: &str| best_rps(runs, k);
    let (open, gated) = (best("no_auth"), best("authgate"));
    let (raw_open, nginx, raw_gate) = (best("raw_no_auth"), best("nginx"), best("authgate_raw"));
    let pct_of = |x: f64, of: f64| if of > 0.0 { 100.0 * x / of } else { f64::NAN };
    let (ours, floor) = (pct_of(raw_gate, raw_open), pct_of(nginx, raw_open));
    // p50/p99 of the best run of a scenario.
    let lat = |k: &str| {
        let run = (0..AUTH_ROUNDS).filter_map(|i| round(k, i)).max_by(|x, y| {
            x.rps
                .partial_cmp(&y.rps)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let get = |v: Option<f64>| v.unwrap_or(f64::NAN);
        run.map_or((f64::NAN, f64::NAN), |r| (get(r.p50_ms), get(r.p99_ms)))
    };
    let ((g50, g99), (n50, n99), (o50, o99)) =
        (lat("authgate_raw"), lat("nginx"), lat("raw_no_auth"));
    let mut pairs: Vec<f64> = (0..AUTH_ROUNDS)
        .filter_map(|i| {
            Some(pct_of(
                round("authgate_raw", i)?.rps?,
                round("nginx", i)?.rps?,
            ))
        })
        .collect();
    pairs.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
    let median = pairs.get(pairs.len() / 2).copied().unwrap_or(f64::NAN);
    let (lo, hi) = (
        pairs.first().copied().unwrap_or(f64::NAN),
        pairs.last().copied().unwrap_or(f64::NAN),
    );
    // CPU per request of a scenario's auth server and Traefik, median over the rounds.
    let cpu = |name: &str, auth: bool| median_cpu(runs, name, auth);
    let rps = alone.and_then(|d| d.rps).unwrap_or(0.0);
    let p99 = alone.and_then(|d| d.p99_ms).unwrap_or(f64::INFINITY);
    vec![
        format!(
            "| same Traefik, same ForwardAuth middleware, wrk c=32 | authgate {raw_gate:.0} req/s = {ours:.0} % of no-auth ({raw_open:.0}); adds p50 {:.1} ms, p99 {:.1} ms; CPU per request: authgate {:.0} µs, Traefik {:.0} µs | nginx {nginx:.0} req/s = {floor:.0} % of no-auth; adds p50 {:.1} ms, p99 {:.1} ms; CPU per request: nginx {:.0} µs, Traefik {:.0} µs | within 5 % of the nginx floor | {} (authgate at {median:.0} % of nginx: median of {} adjacent pairs, range {lo:.0}–{hi:.0} %) |",
            g50 - o50,
            g99 - o99,
            cpu("authgate_raw", true),
            cpu("authgate_raw", false),
            n50 - o50,
            n99 - o99,
            cpu("nginx", true),
            cpu("nginx", false),
            yes(median >= 95.0),
            pairs.len()
        ),
        format!(
            "| the worker's own Traefik (OTLP access log on), wrk c=32 | authgate ForwardAuth {gated:.0} req/s = {:.0} % of no-auth ({open:.0}) | raw Traefik without access log: no-auth {raw_open:.0} req/s (the log export costs {:.0} %) | report | — |",
            pct_of(gated, open),
            100.0 - pct_of(open, raw_open)
        ),
        format!(
            "| authgate alone, `/auth`, wrk c=32 | {rps:.0} decisions/s, p99 {} ms | — | ≥ 40k/s, p99 ≤ 2 ms | {} |",
            alone
                .and_then(|d| d.p99_ms)
                .map_or("n/a".into(), |x| format!("{x:.3}")),
            yes(rps >= 40_000.0 && p99 <= 2.0)
        ),
    ]
}

/// The data plane as deployed against a bare Traefik (no access log, no metrics, no auth),
/// each route as a share of the bare one measured beside it: the public route and the private
/// route through ForwardAuth in the auth rounds, the private route through the fast path in
/// the fast-path rounds (`*_fp`). CPU per request of Traefik and authgate: medians over rounds.
fn data_plane_rows(runs: &BTreeMap<String, WrkRun>) -> Vec<String> {
    let best = |k: &str| best_rps(runs, k);
    let cpu = |k: &str, auth: bool| median_cpu(runs, k, auth);
    let row = |what: &str, k: &str, bare: &str, target: f64| {
        let (x, of) = (best(k), best(bare));
        if x <= 0.0 || of <= 0.0 {
            return None;
        }
        let share = 100.0 * x / of;
        Some(format!(
            "| {what}, worker's Traefik as deployed (access log and metrics on), wrk c=32 | {x:.0} req/s = {share:.0} % of bare; CPU per request: Traefik {:.0} µs, authgate {:.0} µs | bare Traefik (no log, metrics, auth) {of:.0} req/s; Traefik {:.0} µs | ≥ {target:.0} % of bare | {} |",
            cpu(k, false),
            cpu(k, true),
            cpu(bare, false),
            yes(share >= target),
        ))
    };
    [
        row("public route", "no_auth", "raw_no_auth", 85.0),
        row(
            "private route through ForwardAuth",
            "authgate",
            "raw_no_auth",
            33.0,
        ),
        row(
            "private route through the fast path (bearer token)",
            "fast_path",
            "raw_no_auth_fp",
            80.0,
        ),
        row(
            "public route counted by the fast path",
            "no_auth_fp",
            "raw_no_auth_fp",
            85.0,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Write the results (`latest.json`, or `partial.json` / `quick.json`) and, for a full run,
/// the table between the markers of `BENCHMARKS.md`.
pub(crate) fn write(root: &Path, r: &Results, partial: bool, quick: bool) {
    let out_dir = root.join("bench-results");
    std::fs::create_dir_all(&out_dir).unwrap();
    let file = out_dir.join(match (partial, quick) {
        (true, _) => "partial.json",
        (false, true) => "quick.json",
        (false, false) => "latest.json",
    });
    std::fs::write(&file, serde_json::to_string_pretty(r).unwrap()).unwrap();
    println!("raw results: {}", file.display());
    let table = table(r);
    println!("\n{table}");
    if quick || partial {
        return;
    }
    let md = root.join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&md).unwrap_or_default();
    let (start, end) = ("<!-- bench:start -->", "<!-- bench:end -->");
    let new = match (text.find(start), text.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{start}\n{table}\n{}", &text[..a], &text[b..]),
        _ => format!("{text}\n{start}\n{table}\n{end}\n"),
    };
    std::fs::write(&md, new).unwrap();
    println!("table written to {}", md.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_and_render() {
        let mut r = Results {
            create_to_live: Some(vec![Live::new(100, vec![20.0, 22.0], vec![15.0, 16.0])]),
            ..Results::default()
        };
        let mut runs = BTreeMap::new();
        for i in 0..AUTH_ROUNDS {
            for (k, rps) in [
                ("raw_no_auth", 10_000.0),
                ("nginx", 5_000.0),
                ("authgate_raw", 4_800.0),
            ] {
                let run = WrkRun {
                    rps: Some(rps),
                    p50_ms: Some(1.0),
                    p99_ms: Some(2.0),
                    ..WrkRun::default()
                };
                runs.insert(format!("{k}_{i}"), run);
            }
        }
        r.auth_overhead = Some(AuthRuns::Runs(runs));
        let text = serde_json::to_string(&r).unwrap();
        let back: Results = serde_json::from_str(&text).unwrap();
        let table = table(&back);
        assert!(
            table.contains("create → live, 100 circuits loaded"),
            "{table}"
        );
        assert!(table.contains("authgate at 96 % of nginx"), "{table}");
        let skipped: Results =
            serde_json::from_str(r#"{"auth_overhead": {"skipped": "wrk not installed"}}"#).unwrap();
        assert!(matches!(
            skipped.auth_overhead,
            Some(AuthRuns::Skipped { .. })
        ));
    }
}
