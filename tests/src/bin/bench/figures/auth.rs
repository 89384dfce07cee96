//! The cost of auth: the same request through the same Traefik with no auth, with nginx as
//! the ForwardAuth server (the floor: the cheapest possible auth server) and with authgate;
//! through the worker's own Traefik; authgate alone; and a trivial plugin's added time.

use std::{collections::BTreeMap, time::Duration};

use appproxy_common::wire::{AuthPlugin, CreateCircuitResponse};
use serde_json::json;

use crate::{
    Bench,
    probes::{
        cpu_secs, pid_listening, profiled, raw_forward_auth, settle, start_nginx,
        tcp_passive_opens, until_200, until_200_with, wrk, wrk_c, wrk_on,
    },
    report::{AUTH_ROUNDS, AuthRuns, PluginFigure, WrkRun},
};

/// A private circuit and a session cookie for it.
struct Private {
    id: String,
    generation: i64,
    cookie: String,
}

/// A scenario: name, base URL, Host, its Traefik's pid, its auth server's pid.
type Scenario<'a> = (&'a str, &'a str, &'a str, u32, Option<u32>);

pub(crate) async fn run(b: &mut Bench) {
    let private = private_circuit(b).await;
    // The nginx floor: a raw router on the raw Traefik with ForwardAuth to an nginx that always
    // answers 200 (the cheapest possible auth server), next to a raw router without auth.
    let nginx = start_nginx(&b.stack);
    // The same ForwardAuth shape as the provider renders, on the raw Traefik (no access
    // log), in front of nginx and in front of authgate: only the auth server differs.
    if let Some((_, nginx_port)) = &nginx {
        let address = format!("http://127.0.0.1:{nginx_port}/");
        raw_forward_auth(&mut b.etcd, &b.raw_root, "fa-nginx", &address, b.echo.port).await;
        until_200(&b.http, b.raw_port, "fa-nginx.raw.test").await;
    }
    let gate_address = auth_url(b, &private);
    raw_forward_auth(
        &mut b.etcd,
        &b.raw_root,
        "fa-gate",
        &gate_address,
        b.echo.port,
    )
    .await;
    let cookie = [("Cookie", private.cookie.as_str())];
    until_200_with(&b.http, b.raw_port, "fa-gate.raw.test", &cookie).await;
    if !b.have_wrk {
        println!("wrk not found: auth overhead figures skipped (deploy/lib.sh installs it)");
        b.results.auth_overhead = Some(AuthRuns::Skipped {
            skipped: "wrk not installed".into(),
        });
        return;
    }
    let mut runs = scenarios(b, &private, nginx.as_ref().map(|(p, _)| p.pid())).await;
    runs.extend(fast_path_scenarios(b).await);
    settle(&b.traefiks);
    let direct = profiled("direct", Some("authgate-w"), || {
        let headers = [
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Host", "priv.bench.test"),
            ("X-Forwarded-Uri", "/"),
            ("Cookie", private.cookie.as_str()),
        ];
        wrk(&auth_url(b, &private), b.sz.wrk_secs, &headers)
    });
    print(&runs, &direct, nginx.is_some());
    let pinned = pinned_direct(b, &private).await;
    b.results.auth_overhead = Some(AuthRuns::Runs(runs));
    b.results.authgate_alone = Some(direct);
    b.results.authgate_alone_pinned = pinned;
    b.results.plugin = Some(plugin(b, &private).await);
}

/// authgate's ForwardAuth address for the private circuit.
fn auth_url(b: &Bench, p: &Private) -> String {
    format!(
        "{}/auth/{}?g={}&m=interactive",
        b.w.base(),
        p.id,
        p.generation
    )
}

/// `priv.bench.test` (not public) and a cookie from its setup link.
async fn private_circuit(b: &Bench) -> Private {
    let mut req = b.create("priv".into());
    req.app = "priv".into();
    req.open_to_public = false;
    let v: CreateCircuitResponse = b.stack.create(&req).await;
    let setup = v.setup_url.expect("a setup link").replacen(
        &format!("priv.bench.test:{}", b.apps),
        &format!("127.0.0.1:{}", b.apps),
        1,
    );
    until_200(&b.http, b.apps, "priv.bench.test").await; // 401 until cookie; wait for router
    let nr = e2e::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut cookie = String::new();
    for _ in 0..200 {
        if let Ok(r) = nr
            .get(&setup)
            .header("host", format!("priv.bench.test:{}", b.apps))
            .send()
            .await
            && let Some(c) = r.headers().get("set-cookie")
        {
            cookie = e2e::cookie_pair(c.to_str().unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Private {
        id: v.id.to_string(),
        generation: v.circuit.generation,
        cookie,
    }
}

/// The worker's and the raw Traefik's base URLs, and the pids of authgate and both Traefiks.
fn endpoints(b: &Bench) -> (String, String, u32, u32, u32) {
    (
        format!("http://127.0.0.1:{}/", b.apps),
        format!("http://127.0.0.1:{}/", b.raw_port),
        pid_listening(b.w.port),
        b.w.traefik.proc.pid(),
        b.raw.proc.pid(),
    )
}

/// Every scenario, alternated, `AUTH_ROUNDS` times each. Every scenario sends the same
/// request, session cookie included: Traefik copies a request's headers into the ForwardAuth
/// call and to the backend, so a floor measured without the cookie would be a lighter
/// request, not a cheaper auth server.
async fn scenarios(b: &Bench, p: &Private, nginx: Option<u32>) -> BTreeMap<String, WrkRun> {
    let (base, raw_base, gate, worker_traefik, raw_traefik) = endpoints(b);
    let mut list: Vec<Scenario> = vec![
        // authgate's CPU here is the access-log ingestion of the public route's records.
        (
            "no_auth",
            &base,
            "pre0.bench.test",
            worker_traefik,
            Some(gate),
        ),
        (
            "authgate",
            &base,
            "priv.bench.test",
            worker_traefik,
            Some(gate),
        ),
    ];
    if let Some(nginx) = nginx {
        list.extend([
            (
                "raw_no_auth",
                raw_base.as_str(),
                "pre0.raw.test",
                raw_traefik,
                None,
            ),
            (
                "nginx",
                &raw_base,
                "fa-nginx.raw.test",
                raw_traefik,
                Some(nginx),
            ),
            (
                "authgate_raw",
                &raw_base,
                "fa-gate.raw.test",
                raw_traefik,
                Some(gate),
            ),
        ]);
    }
    alternated(b, &list, AUTH_ROUNDS, ("Cookie", &p.cookie))
}

/// `rounds` rounds of every scenario, forwards then backwards (`<name>_<round>`); the first
/// round profiled.
fn alternated(
    b: &Bench,
    list: &[Scenario],
    rounds: usize,
    credential: (&str, &str),
) -> BTreeMap<String, WrkRun> {
    let mut runs = BTreeMap::new();
    for round in 0..rounds {
        let order: Vec<&Scenario> = if round % 2 == 0 {
            list.iter().collect()
        } else {
            list.iter().rev().collect()
        };
        for s in order {
            settle(&b.traefiks);
            runs.insert(
                format!("{}_{round}", s.0),
                measure(b, s, credential, round == 0),
            );
        }
    }
    runs
}

/// Rounds of the fast-path phase (each: the worker's public route, the private route through
/// the plugin, the bare Traefik).
const FAST_ROUNDS: usize = 3;

/// An inference endpoint on the bench worker (one replica, the echo server): its host.
async fn endpoint(b: &Bench, name: &str, public: bool) -> (uuid::Uuid, String) {
    let id = uuid::Uuid::new_v4();
    let item = json!({
        "deployment_id": id, "version": "v2", "service_name": name, "open_to_public": public,
        "tags": {"session": {"user_uuid": uuid::Uuid::new_v4(), "group_id": uuid::Uuid::new_v4(),
                             "domain_name": "default"},
                 "endpoint": {"id": id, "runtime_variant": "custom", "existing_url": null}},
    });
    let (s, v) = b
        .stack
        .manager(
            reqwest::Method::POST,
            &format!("/v2/endpoints/{id}"),
            Some(&item),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let url = v["endpoint"].as_str().expect("endpoint URL").to_string();
    b.stack
        .add_replica(id, uuid::Uuid::new_v4(), b.echo.port)
        .await;
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split([':', '/']).next())
        .expect("endpoint host")
        .to_string();
    (id, host)
}

/// The fast path, in its default scope (inference circuits; `FastPathScope`): the worker's
/// authgate restarted with its `[fast_path] dir`, a private inference endpoint (its bearer
/// token decided by the plugin) and a public one (counted by it, no access-log record), then
/// `FAST_ROUNDS` rounds beside the bare Traefik, alternated (`*_fp_<round>`); authgate
/// restarted without it after. Every scenario sends the same bearer token.
async fn fast_path_scenarios(b: &mut Bench) -> BTreeMap<String, WrkRun> {
    let mut runs = BTreeMap::new();
    b.w.set_fast_path(true, &b.stack.http).await;
    let (private, private_host) = endpoint(b, "fpriv", false).await;
    let (_, public_host) = endpoint(b, "fpub", true).await;
    let (s, v) = b
        .stack
        .manager(
            reqwest::Method::POST,
            &format!("/v2/endpoints/{private}/token"),
            Some(&json!({"user_uuid": uuid::Uuid::new_v4(), "exp": 4_000_000_000u64})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let bearer = format!("Bearer {}", v["token"].as_str().expect("token"));
    // Both routers carry the plugin first (then Traefik's retry of inference circuits).
    let routers = format!(
        "http://127.0.0.1:{}/api/http/routers?search=",
        b.w.traefik.api_port
    );
    let on_plugin = |v: &serde_json::Value| {
        v["middlewares"][0]
            .as_str()
            .is_some_and(|n| n.ends_with("-fast@etcd"))
    };
    let mut on = false;
    for _ in 0..600 {
        let mut both = 0;
        for host in [&private_host, &public_host] {
            if let Ok(r) = b.http.get(format!("{routers}`{host}`")).send().await
                && let Ok(v) = r.json::<Vec<serde_json::Value>>().await
                && v.iter()
                    .filter(|r| r["name"].as_str().is_some_and(|n| !n.ends_with("-ws@etcd")))
                    .any(on_plugin)
            {
                both += 1;
            }
        }
        if both == 2 {
            on = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !on {
        println!("fast path: the routers never carried the plugin; rows skipped");
    } else {
        let auth = [("Authorization", bearer.as_str())];
        until_200_with(&b.http, b.apps, &private_host, &auth).await;
        until_200(&b.http, b.apps, &public_host).await;
        let (base, raw_base, gate, worker_traefik, raw_traefik) = endpoints(b);
        let list: Vec<Scenario> = vec![
            (
                "no_auth_fp",
                &base,
                &public_host,
                worker_traefik,
                Some(gate),
            ),
            (
                "fast_path",
                &base,
                &private_host,
                worker_traefik,
                Some(gate),
            ),
            (
                "raw_no_auth_fp",
                &raw_base,
                "pre0.raw.test",
                raw_traefik,
                None,
            ),
        ];
        runs = alternated(b, &list, FAST_ROUNDS, ("Authorization", &bearer));
    }
    b.w.set_fast_path(false, &b.stack.http).await;
    runs
}

/// One wrk run of a scenario with the CPU time per request of its Traefik and auth server
/// (from `/proc`: far steadier than throughput here) and the connections accepted per
/// request (the ForwardAuth client's new connections; wrk's and the backend's are kept alive).
/// The first round is profiled (CPU share per process).
fn measure(b: &Bench, s: &Scenario, credential: (&str, &str), profile: bool) -> WrkRun {
    let &(name, url, host, traefik, auth) = s;
    let headers = [("Host", host), credential];
    let (traefik0, auth0) = (cpu_secs(traefik), auth.map(cpu_secs));
    let opens0 = tcp_passive_opens();
    let run = || wrk(url, b.sz.wrk_secs, &headers);
    let mut result = if profile {
        let symbols = name.starts_with("authgate").then_some("authgate-w");
        profiled(name, symbols, run)
    } else {
        run()
    };
    let requests = result.rps.unwrap_or(0.0) * b.sz.wrk_secs as f64;
    let per_req = |secs: f64| (requests > 0.0).then(|| secs * 1e6 / requests);
    result.traefik_cpu_us_per_req = per_req(cpu_secs(traefik) - traefik0);
    result.new_conns_per_req =
        (requests > 0.0).then(|| (tcp_passive_opens() - opens0) as f64 / requests);
    if let (Some(pid), Some(c0)) = (auth, auth0) {
        result.auth_cpu_us_per_req = per_req(cpu_secs(pid) - c0);
    }
    result
}

fn print(runs: &BTreeMap<String, WrkRun>, direct: &WrkRun, nginx: bool) {
    let best = |k: &str| {
        (0..AUTH_ROUNDS)
            .filter_map(|r| runs.get(&format!("{k}_{r}"))?.rps)
            .fold(0.0, f64::max)
    };
    println!(
        "through Traefik at c=32: no auth {:.0} req/s | authgate ForwardAuth {:.0} req/s ({:.0}%)",
        best("no_auth"),
        best("authgate"),
        100.0 * best("authgate") / best("no_auth")
    );
    if nginx {
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
        direct.rps, direct.p99_ms
    );
}

/// authgate alone with the load generator kept off its CPUs: authgate restarted on every CPU
/// but the last (it sizes its serving threads from them), wrk (one thread) on the last; then
/// authgate restarted on all CPUs again. `None` on a single CPU.
async fn pinned_direct(b: &mut Bench, p: &Private) -> Option<WrkRun> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return None;
    }
    let (others, last) = (format!("0-{}", cpus - 2), (cpus - 1).to_string());
    restart_gate(b, Some(others.clone())).await;
    settle(&b.traefiks);
    let headers = [
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Host", "priv.bench.test"),
        ("X-Forwarded-Uri", "/"),
        ("Cookie", p.cookie.as_str()),
    ];
    let run = wrk_on(Some(&last), &auth_url(b, p), b.sz.wrk_secs, 32, &headers);
    restart_gate(b, None).await;
    println!(
        "authgate alone, started on CPUs {others}, wrk on {last}: {:?} req/s, p99 {:?} ms",
        run.rps, run.p99_ms
    );
    Some(run)
}

/// Restart the bench worker's authgate on `cpus` (all when `None`) and wait until it serves.
async fn restart_gate(b: &mut Bench, cpus: Option<String>) {
    b.w.stop_authgate();
    b.w.spec.cpus = cpus;
    b.w.start_authgate();
    b.w.wait_ready(&b.http).await;
}

/// Added decision time of a trivial plugin: `/auth` at c=1, the cookie decision against the
/// api-keys plugin on a public circuit, alternating; and the time inside the plugin from
/// authgate's histogram.
async fn plugin(b: &Bench, p: &Private) -> PluginFigure {
    let mut req = b.create("plug".into());
    req.app = "plug".into();
    req.auth_plugin = Some(AuthPlugin {
        name: "api-keys".into(),
        config: json!({"keys": ["bench-key"]}),
    });
    let plug_id = b.stack.create(&req).await.id;
    let key = [("x-api-key", "bench-key")];
    until_200_with(&b.http, b.apps, "plug.bench.test", &key).await;
    let fwd = [
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Host", "plug.bench.test"),
        ("X-Forwarded-Uri", "/"),
    ];
    let plugin_url = format!(
        "{}/auth/{plug_id}?g=1&m=interactive&p=api-keys&o=1",
        b.w.base()
    );
    let mut with_cookie = fwd.to_vec();
    with_cookie.push(("Cookie", &p.cookie));
    let mut with_key = fwd.to_vec();
    with_key.push(("X-API-Key", "bench-key"));
    let (mut base, mut plug) = (f64::INFINITY, f64::INFINITY);
    let p50 = |r: WrkRun| r.p50_ms.unwrap_or(f64::NAN);
    for _ in 0..2 {
        base = base.min(p50(wrk_c(&auth_url(b, p), b.sz.wrk_secs, 1, &with_cookie)));
        plug = plug.min(p50(wrk_c(&plugin_url, b.sz.wrk_secs, 1, &with_key)));
    }
    let gate_metrics = e2e::metrics_text(&b.http, &b.w.base()).await;
    let metric = |name: &str| {
        gate_metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let inside_us = 1e6 * metric("appproxy_authgate_plugin_seconds_sum ")
        / metric("appproxy_authgate_plugin_seconds_count ");
    println!(
        "plugin: /auth p50 at c=1 {plug:.3} ms with api-keys vs {base:.3} ms cookie only → adds {:.0} µs (mean time inside the plugin {inside_us:.1} µs)",
        (plug - base) * 1000.0
    );
    PluginFigure {
        cookie_p50_ms: base,
        plugin_p50_ms: plug,
        added_us: (plug - base) * 1000.0,
        inside_plugin_mean_us: inside_us,
    }
}
