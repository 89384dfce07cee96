//! The benchmark program: starts the real stack like the e2e harness (use release builds:
//! `./deploy/bench`), measures each figure side by side with its baseline in the same run,
//! writes the typed results and the machine facts to `bench-results/latest.json` and the table
//! between the markers of `BENCHMARKS.md`.
//!
//! `--quick` shrinks every size for a smoke run. `--only=live,burst,auth,ingest,memory,pg,ha,https`
//! runs some figures (results go to `bench-results/partial.json`, BENCHMARKS.md is left
//! alone); `--preload=N` then creates N circuits first when `live` and `burst` are skipped,
//! so the auth figures see the worker as loaded as in a full run (default 2,100).
//! Where `perf` works, the burst and the auth runs are profiled system-wide (`cpu-clock`): the
//! CPU share of each process (thread names: `traefik`, `authgate-w`, `provider-w`, `wrk`, …)
//! is recorded, with the provider's hottest symbols for the burst and authgate's for `/auth`.
//! Every auth run also records CPU time per request of Traefik and the auth server (`/proc`)
//! and the TCP connections accepted per request.
//!
//! Layout: `probes` (measuring tools), `figures/` (one module per figure, each
//! `run(&mut Bench)`), `report` (typed results, the table, the files).

mod figures;
mod probes;
mod report;

use std::{path::PathBuf, process::Command, time::Duration, time::Instant};

use appproxy_common::wire::{CreateCircuitRequest, RouteRequest};
use clap::Parser;
use e2e::{Db, GatedWorker, Stack, Traefik, TraefikFrontend, WorkerSpec, backends::HttpEcho};
use uuid::Uuid;

use probes::{pid_listening, raw_preload, rss_kib, until_200, version};
use report::{Machine, Results, Rss};

#[derive(Debug, Parser)]
#[command(about = "appproxy's benchmark: every figure against a same-run baseline")]
struct Args {
    /// Small sizes for a smoke run (BENCHMARKS.md untouched).
    #[arg(long)]
    quick: bool,
    /// Run only these figures (comma-separated: live, burst, auth, ingest, memory, pg, ha,
    /// https).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Circuits created first when `live` and `burst` are skipped (the auth figures' load).
    #[arg(long, default_value_t = 2100)]
    preload: usize,
}

/// How much each figure does.
pub(crate) struct Sizes {
    pub preload: Vec<usize>,
    pub samples: usize,
    pub burst: usize,
    pub wrk_secs: u64,
    pub records: usize,
    pub memory_circuits: usize,
    pub list_circuits: usize,
    /// Leader kills in the HA figure.
    pub kills: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                preload: vec![10, 50],
                samples: 5,
                burst: 50,
                wrk_secs: 2,
                records: 20_000,
                memory_circuits: 200,
                list_circuits: 200,
                kills: 2,
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
                kills: 5,
            }
        }
    }
}

/// The running stack every figure measures, and what they have done to it so far.
pub(crate) struct Bench {
    pub sz: Sizes,
    pub stack: Stack,
    /// The gated wildcard worker (`*.bench.test` on `apps`).
    pub w: GatedWorker,
    pub apps: u16,
    /// The raw Traefik for baselines (`*.raw.test` on `raw_port`, root `raw_root`).
    pub raw: Traefik,
    pub raw_port: u16,
    pub raw_root: String,
    pub etcd: etcd_client::Client,
    pub echo: HttpEcho,
    pub http: reqwest::Client,
    /// Both Traefiks' pids (settled before measurements).
    pub traefiks: [u32; 2],
    /// Circuits on the worker, routers on the raw Traefik.
    pub loaded: usize,
    pub raw_loaded: usize,
    pub have_wrk: bool,
    pub idle: Rss,
    pub results: Results,
}

impl Bench {
    /// A public circuit `<sub>.bench.test` on the bench worker, to the echo server.
    pub(crate) fn create(&self, sub: String) -> CreateCircuitRequest {
        let route = RouteRequest::to(Uuid::new_v4(), "127.0.0.1", self.echo.port);
        let mut req = CreateCircuitRequest::new("bench", Uuid::new_v4(), vec![route]);
        req.worker = Some("bench".into());
        req.open_to_public = true;
        req.subdomain = Some(sub);
        req
    }

    /// Create circuits `pre<loaded>`… through the provider until the worker holds `to`.
    pub(crate) async fn preload_provider(&mut self, to: usize) {
        for i in self.loaded..to {
            self.stack.create(&self.create(format!("pre{i}"))).await;
        }
        self.loaded = self.loaded.max(to);
    }

    /// Preload the raw Traefik up to `to` routers.
    pub(crate) async fn preload_raw(&mut self, to: usize) {
        let (from, port) = (self.raw_loaded, self.echo.port);
        raw_preload(&mut self.etcd, &self.raw_root, from, to, port).await;
        self.raw_loaded = self.raw_loaded.max(to);
    }

    async fn start() -> Bench {
        let stack = Stack::start(Db::Sqlite).await;
        let apps = e2e::free_port();
        let spec = WorkerSpec {
            env: vec![
                (
                    "APPPROXY_AUTHGATE__PLUGINS__DIR".into(),
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../authgate/plugins").into(),
                ),
                // The default scope (inference circuits): the 10k preloaded interactive
                // circuits stay off the plugin (Traefik builds an instance per router).
                (
                    "APPPROXY_AUTHGATE__FAST_PATH__SCOPE".into(),
                    "inference".into(),
                ),
            ],
            // Its Traefik loads the fast-path plugin; authgate runs without it until the auth
            // figure's fast-path phase.
            fast_path: true,
            ..WorkerSpec::wildcard("bench", apps, ".bench.test")
        };
        let mut w = stack.start_gated_worker(spec).await;
        w.set_fast_path(false, &stack.http).await;
        // Idle: a registered worker, no circuits yet.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle = Rss {
            provider_kib: rss_kib(pid_listening(stack.provider_port)),
            authgate_kib: rss_kib(pid_listening(w.port)),
        };
        let raw_port = e2e::free_port();
        let frontend = TraefikFrontend::Wildcard { port: raw_port };
        let raw = stack.start_traefik("raw-bench", frontend).await;
        let raw_root = stack
            .root_key("raw-bench")
            .trim_end_matches('/')
            .to_string();
        let mut etcd = stack.etcd_client().await;
        let sentinel = format!("{raw_root}/http/services/ap-sentinel/loadBalancer/servers/0/url");
        etcd.put(sentinel, "http://127.0.0.1:9", None)
            .await
            .unwrap();
        Bench {
            sz: Sizes::new(false),
            traefiks: [w.traefik.proc.pid(), raw.proc.pid()],
            stack,
            w,
            apps,
            raw,
            raw_port,
            raw_root,
            etcd,
            echo: HttpEcho::start("bench").await,
            http: e2e::client_builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            loaded: 0,
            raw_loaded: 0,
            have_wrk: Command::new("wrk").arg("--version").output().is_ok(),
            idle,
            results: Results::default(),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let want = |figure: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|f| f == figure))
    };
    let started = Instant::now();
    println!(
        "appproxy benchmark ({})",
        if args.quick { "quick" } else { "full" }
    );
    let mut b = Bench::start().await;
    b.sz = Sizes::new(args.quick);
    if want("live") {
        figures::live::run(&mut b).await;
    }
    if want("burst") {
        figures::burst::run(&mut b).await;
    }
    if !want("live") && !want("burst") && want("auth") {
        // The auth figures see the worker as loaded as in a full run.
        b.preload_provider(args.preload).await;
        b.preload_raw(args.preload).await;
        until_200(&b.http, b.apps, "pre0.bench.test").await;
        until_200(&b.http, b.raw_port, "pre0.raw.test").await;
    }
    if want("auth") {
        figures::auth::run(&mut b).await;
    }
    if want("ingest") {
        figures::ingest::run(&mut b).await;
    }
    if want("memory") {
        figures::memory::run(&mut b).await;
    }
    let Bench {
        mut results,
        sz,
        have_wrk,
        w,
        raw,
        stack,
        ..
    } = b;
    // The PostgreSQL figure runs a stack of its own: stop this one first.
    drop((w, raw, stack));
    if want("pg") {
        results.api_postgres = Some(figures::pg::run(&sz).await);
    }
    if want("ha") {
        results.ha = Some(figures::ha::run(&sz).await);
    }
    if want("https") && have_wrk {
        results.https = Some(figures::https::run(&sz).await);
    }
    results.machine = Some(Machine {
        date: version("date", "-u"),
        kernel: version("uname", "-r"),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        rustc: version("rustc", "--version"),
        etcd: version("etcd", "--version"),
        redis: version("redis-server", "--version"),
        wrk: if have_wrk { "present" } else { "absent" }.into(),
        quick: args.quick,
        wall_s: started.elapsed().as_secs_f64(),
    });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    report::write(&root, &results, args.only.is_some(), args.quick);
}
