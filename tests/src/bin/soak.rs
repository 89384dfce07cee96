//! The churn soak (`./deploy/soak --minutes N`): the HA stack (PostgreSQL, a 3-member etcd,
//! two providers, one worker with Traefik and authgate in wildcard mode) under continuous
//! creates and deletes with thousands of circuits live, HTTP traffic to circuits that stay,
//! open WebSockets, and the leader killed (-9) every few minutes.
//!
//! At the end it checks, and fails (exit 1) unless: SQL == etcd == what Traefik serves; no
//! etcd key names a circuit SQL lacks; every acknowledged create and delete held; every
//! request to a circuit that stayed was served and counted exactly once in Redis; every
//! WebSocket is still open and echoing; authgate's and Traefik's RSS stayed flat (last
//! window vs first). It reports etcd's database size before and after compaction, the
//! takeover time of each leader kill and every process's RSS over time, as JSON.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use e2e::{Db, GatedWorker, Opts, Stack, WorkerSpec, backends::HttpEcho, pct};
use redis::AsyncCommands;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Parser, Debug, Clone)]
#[command(about = "Churn soak of the HA stack; exit 1 when an invariant broke")]
struct Args {
    /// How long to churn.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Circuits kept live (besides the stable ones).
    #[arg(long, default_value_t = 2000)]
    live: usize,
    /// Creates and deletes per second, each.
    #[arg(long, default_value_t = 10)]
    churn: usize,
    /// Seconds between leader kills.
    #[arg(long, default_value_t = 180)]
    kill_every: u64,
    /// Circuits that stay the whole run and get the traffic and the WebSockets.
    #[arg(long, default_value_t = 8)]
    stable: usize,
    /// Where the JSON report goes.
    #[arg(long)]
    out: Option<PathBuf>,
}

const DOMAIN: &str = ".apps.test";

#[derive(Serialize, Default)]
struct Report {
    minutes: f64,
    live_target: usize,
    creates_acked: u64,
    deletes_acked: u64,
    create_retries: u64,
    final_circuits: usize,
    requests_sent: u64,
    requests_failed: u64,
    leader_kills: Vec<f64>,
    websockets_open: usize,
    websockets_total: usize,
    etcd_db_bytes_before_compaction: i64,
    etcd_db_in_use_bytes_after_compaction: i64,
    etcd_db_in_use_bytes_after_fill: i64,
    /// Seconds from the end of the fill (every create acknowledged) until Traefik served all
    /// of it: the churn is measured from a worker that has caught up (a burst of thousands
    /// is the bench's burst figure, not this soak's).
    fill_to_all_routed_s: f64,
    rss_mib: BTreeMap<String, Vec<(u64, f64)>>,
    /// Every fifth churned create: seconds from sending it until Traefik served it; every
    /// fifth delete: until Traefik stopped serving it (DESIGN checklist D2: p99 ≤ 5 s).
    create_to_routable_s: Vec<f64>,
    delete_to_denied_s: Vec<f64>,
    /// Probes that ran out of time, by what the last answer was.
    probes_timed_out: BTreeMap<String, u64>,
    /// Every minute during the churn: (second, circuits in SQL, circuit routers in etcd,
    /// circuit routers Traefik serves) — which side falls behind, if one does.
    sides: Vec<(u64, usize, usize, usize)>,
    failures: Vec<String>,
}

impl Report {
    fn fail(&mut self, m: String) {
        eprintln!("soak: FAILED: {m}");
        self.failures.push(m);
    }
}

/// The replicas' base URLs; creates and deletes go to a random one and move on when it fails.
struct Api {
    http: reqwest::Client,
    urls: Vec<String>,
    token: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Option<(u16, Value)> {
        let start = rand_index(self.urls.len());
        for k in 0..self.urls.len() * 3 {
            let url = &self.urls[(start + k) % self.urls.len()];
            let mut req = (self.http.request(method.clone(), format!("{url}{path}")))
                .header("X-BackendAI-Token", &self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(r) if r.status().as_u16() < 500 => {
                    let s = r.status().as_u16();
                    return Some((s, r.json().await.unwrap_or(Value::Null)));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        None
    }
}

fn rand_index(n: usize) -> usize {
    (Uuid::new_v4().as_u128() % n as u128) as usize
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

struct Soak {
    args: Args,
    stack: Stack,
    worker: GatedWorker,
    api: Arc<Api>,
    backend: HttpEcho,
    authority: String,
    /// Churned circuits: id → subdomain.
    live: Vec<(String, String)>,
    next_name: u64,
    report: Report,
}

impl Soak {
    fn body(&mut self) -> Value {
        self.next_name += 1;
        json!({
            "app": "soak", "protocol": "http", "worker": self.authority, "open_to_public": true,
            "user_id": Uuid::new_v4(), "subdomain": format!("s{}", self.next_name),
            "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1", "kernel_port": self.backend.port}],
        })
    }

    /// Create one circuit (retrying on another replica); its id and subdomain.
    async fn create(&mut self) -> Option<(String, String)> {
        let body = self.body();
        for attempt in 0..10 {
            match self
                .api
                .send(reqwest::Method::POST, "/v2/circuits", Some(&body))
                .await
            {
                Some((201, v)) => {
                    self.report.creates_acked += 1;
                    let id = v["id"].as_str()?.to_string();
                    let sub = v["frontend"]["subdomain"].as_str()?.to_string();
                    return Some((id, sub));
                }
                other => {
                    self.report.create_retries += 1;
                    if attempt == 9 {
                        self.report
                            .failures
                            .push(format!("create failed: {other:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        None
    }

    async fn delete(&mut self, id: &str) -> bool {
        let path = format!("/v2/circuits/{id}");
        match self.api.send(reqwest::Method::DELETE, &path, None).await {
            Some((200 | 204, _)) => {
                self.report.deletes_acked += 1;
                true
            }
            other => {
                self.report.failures.push(format!("delete {id}: {other:?}"));
                false
            }
        }
    }

    /// Fill to `live` circuits, 16 at a time.
    async fn fill(&mut self) {
        while self.live.len() < self.args.live {
            let n = (self.args.live - self.live.len()).min(16);
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (api, body) = (self.api.clone(), self.body());
                set.spawn(async move {
                    api.send(reqwest::Method::POST, "/v2/circuits", Some(&body))
                        .await
                });
            }
            while let Some(a) = set.join_next().await {
                if let Ok(Some((201, v))) = a {
                    self.report.creates_acked += 1;
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    let sub = v["frontend"]["subdomain"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    self.live.push((id, sub));
                } else {
                    self.report.create_retries += 1;
                }
            }
        }
    }

    /// Kill the leader; the seconds until another leads. It is restarted a moment later.
    async fn kill_leader(&mut self) -> Option<(usize, f64)> {
        let l = self.stack.leading_provider(Duration::from_secs(10)).await?;
        self.stack.kill_provider_at(l);
        let killed = Instant::now();
        let new = self.stack.leading_provider(Duration::from_secs(30)).await;
        let took = killed.elapsed().as_secs_f64();
        if new.is_none() {
            self.report.failures.push("no leader after a kill".into());
        }
        Some((l, took))
    }

    /// Circuit counts per side now (SQL through any replica, etcd, Traefik).
    async fn sides(&self, at: u64) -> (u64, usize, usize, usize) {
        let path = format!("/v2/circuits?worker={}", self.authority);
        let sql = match self.api.send(reqwest::Method::GET, &path, None).await {
            Some((200, v)) => v["circuits"].as_array().map_or(0, Vec::len),
            _ => 0,
        };
        let prefix = format!("{}/http/routers/ap-", self.stack.root_key(&self.authority));
        let etcd = (self.stack.etcd_dump().await.keys())
            .filter(|k| k.starts_with(&prefix) && k.ends_with("/rule"))
            .filter(|k| !k.contains("/ap-setup/") && !k.contains("/ap-closed/"))
            .count();
        let traefik = (self
            .worker
            .traefik
            .enabled_routers(&self.api.http)
            .await
            .iter())
        .filter(|r| r.starts_with("ap-") && *r != "ap-setup" && *r != "ap-closed")
        .count();
        println!("soak: at {at} s: SQL {sql}, etcd {etcd}, Traefik {traefik} circuits");
        (at, sql, etcd, traefik)
    }

    fn sample_rss(&mut self, at: u64) {
        let mut procs = vec![
            ("authgate".to_string(), self.worker.authgate_pid()),
            ("traefik".to_string(), self.worker.traefik.proc.pid()),
        ];
        for i in 0..self.stack.provider_count() {
            procs.push((format!("provider-{i}"), self.stack.provider_pid(i)));
        }
        for (name, pid) in procs {
            if let Some(m) = rss_mib(pid) {
                self.report.rss_mib.entry(name).or_default().push((at, m));
            }
        }
    }
}

/// What the probes share: their samples, the timed-out ones by last answer (410 = Traefik
/// has no router, 401/403 = authgate refuses), and the subdomains the churn deleted (a create
/// probe whose circuit was deleted before it was routed drops its sample).
#[derive(Clone, Default)]
struct Probes {
    created: Arc<Mutex<Vec<f64>>>,
    deleted: Arc<Mutex<Vec<f64>>>,
    stuck: Arc<Mutex<BTreeMap<String, u64>>>,
    gone: Arc<Mutex<BTreeSet<String>>>,
}

/// Poll `sub` every 20 ms (at most 30 s) until Traefik serves it (`up`) or stops serving it;
/// push the seconds since `since` (or 30 when it never did).
fn spawn_probe(
    http: &reqwest::Client,
    apps_port: u16,
    sub: String,
    since: Instant,
    up: bool,
    probes: &Probes,
) {
    let (http, probes) = (http.clone(), probes.clone());
    tokio::spawn(async move {
        let mut last = String::from("none");
        let mut done = false;
        while since.elapsed() < Duration::from_secs(30) {
            if up && probes.gone.lock().expect("gone").contains(&sub) {
                return;
            }
            let r = (http.get(format!("http://127.0.0.1:{apps_port}/")))
                .header("host", format!("{sub}{DOMAIN}:{apps_port}"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            last = match &r {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) => format!("error: {e}"),
            };
            if r.is_ok_and(|r| r.status() == 200) == up {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !done {
            let what = if up { "create" } else { "delete" };
            *(probes.stuck.lock().expect("stuck"))
                .entry(format!("{what}: {last}"))
                .or_default() += 1;
        }
        let out = if up { &probes.created } else { &probes.deleted };
        out.lock()
            .expect("lat")
            .push(since.elapsed().as_secs_f64().min(30.0));
    });
}

/// Traffic to the stable circuits: each successful GET counted per circuit.
fn traffic(
    http: reqwest::Client,
    apps_port: u16,
    stable: Vec<(String, String)>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    failed: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0usize;
        while !*stop.borrow() {
            let (id, sub) = &stable[n % stable.len()];
            n += 1;
            let r = http
                .get(format!("http://127.0.0.1:{apps_port}/"))
                .header("host", format!("{sub}{DOMAIN}:{apps_port}"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    *counts
                        .lock()
                        .expect("counts")
                        .entry(id.clone())
                        .or_default() += 1;
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn run(args: Args) -> Report {
    let stack = Stack::start_opts(Opts {
        etcd_members: 3,
        providers: 2,
        provider_extra_env: vec![(
            "APPPROXY_PROVIDER__HA__LEASE_TTL_SECONDS".into(),
            "3".into(),
        )],
        ..Opts::new(Db::Postgres)
    })
    .await;
    let apps_port = e2e::free_port();
    let authority = "soak".to_string();
    let worker = stack
        .start_gated_worker(WorkerSpec::wildcard(&authority, apps_port, DOMAIN))
        .await;
    let api = Arc::new(Api {
        http: e2e::client_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
        urls: (0..stack.provider_count())
            .map(|i| stack.provider_url_at(i))
            .collect(),
        token: stack.manager_token.clone(),
    });
    let mut s = Soak {
        report: Report {
            minutes: args.minutes,
            live_target: args.live,
            ..Report::default()
        },
        args,
        stack,
        worker,
        api,
        backend: HttpEcho::start("soak").await,
        authority,
        live: Vec::new(),
        next_name: 0,
    };
    let mut stable = Vec::new();
    for _ in 0..s.args.stable {
        if let Some(c) = s.create().await {
            stable.push(c);
        }
    }
    s.fill().await;
    println!(
        "soak: {} circuits live, churning",
        s.live.len() + stable.len()
    );
    let filled = Instant::now();
    let all = s.live.len() + stable.len();
    e2e::eventually(
        "Traefik serves the whole fill",
        Duration::from_secs(300),
        || async {
            let n = (s.worker.traefik.enabled_routers(&s.api.http).await.iter())
                .filter(|r| r.starts_with("ap-") && *r != "ap-setup" && *r != "ap-closed")
                .count();
            (n >= all).then_some(())
        },
    )
    .await;
    s.report.fill_to_all_routed_s = filled.elapsed().as_secs_f64();
    println!(
        "soak: Traefik served the whole fill {:.1} s after the last create",
        s.report.fill_to_all_routed_s
    );
    s.report.etcd_db_in_use_bytes_after_fill = etcd_in_use(&s.stack, true).await.1;

    // Everything stable serves before the clock starts.
    let http = e2e::no_redirect_client();
    for (_, sub) in &stable {
        e2e::eventually(
            "a stable circuit serves",
            Duration::from_secs(60),
            || async {
                let r = (http.get(format!("http://127.0.0.1:{apps_port}/")))
                    .header("host", format!("{sub}{DOMAIN}:{apps_port}"))
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())
            },
        )
        .await;
    }
    // Counting starts from what Redis already holds (the warm-up above).
    let mut redis = s.stack.redis().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut base = BTreeMap::new();
    for (id, _) in &stable {
        let v: Option<i64> = redis
            .get(format!("circuit.{id}.requests"))
            .await
            .unwrap_or(None);
        base.insert(id.clone(), v.unwrap_or(0));
    }
    let mut sockets = Vec::new();
    for (_, sub) in stable.iter().cycle().take(s.args.stable) {
        sockets
            .push(e2e::ws_open_host(apps_port, &format!("{sub}{DOMAIN}:{apps_port}"), None).await);
    }
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = traffic(
        http.clone(),
        apps_port,
        stable.clone(),
        counts.clone(),
        failed.clone(),
        stop_rx,
    );

    let probes = Probes::default();
    let started = Instant::now();
    let total = Duration::from_secs_f64(s.args.minutes * 60.0);
    let mut next_kill = Duration::from_secs(s.args.kill_every.min(60));
    let mut restart: Option<(usize, Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < total {
        tick.tick().await;
        let at = started.elapsed().as_secs();
        for k in 0..s.args.churn {
            let probe = k % 5 == 0;
            if !s.live.is_empty() {
                let (id, sub) = s.live.swap_remove(rand_index(s.live.len()));
                let t = Instant::now();
                probes.gone.lock().expect("gone").insert(sub.clone());
                if s.delete(&id).await && probe {
                    spawn_probe(&http, apps_port, sub, t, false, &probes);
                }
            }
            let t = Instant::now();
            if let Some(c) = s.create().await {
                if probe {
                    spawn_probe(&http, apps_port, c.1.clone(), t, true, &probes);
                }
                s.live.push(c);
            }
        }
        if at.is_multiple_of(60) {
            let sides = s.sides(at).await;
            s.report.sides.push(sides);
        }
        if at.is_multiple_of(10) {
            s.sample_rss(at);
            for ws in &mut sockets {
                if !e2e::ws_echo(ws).await {
                    s.report
                        .failures
                        .push(format!("a WebSocket stopped echoing at {at} s"));
                }
            }
        }
        if started.elapsed() >= next_kill && restart.is_none() {
            if let Some((l, took)) = s.kill_leader().await {
                println!("soak: leader {l} killed at {at} s; another led after {took:.2} s");
                s.report.leader_kills.push(took);
                restart = Some((l, Instant::now() + Duration::from_secs(5)));
            }
            next_kill += Duration::from_secs(s.args.kill_every);
        }
        if let Some((l, when)) = restart
            && Instant::now() >= when
        {
            s.stack.start_provider_at(l);
            restart = None;
        }
    }
    if let Some((l, _)) = restart {
        s.stack.start_provider_at(l);
    }
    let _ = stop_tx.send(true);
    let _ = traffic.await;
    // The last probes end within their 30 s bound.
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.report.create_to_routable_s = probes.created.lock().expect("lat").clone();
    s.report.delete_to_denied_s = probes.deleted.lock().expect("lat").clone();
    s.report.probes_timed_out = probes.stuck.lock().expect("stuck").clone();
    s.report.requests_failed = failed.load(Ordering::Relaxed);
    finish(&mut s, &stable, &base, &counts, &mut sockets).await;
    s.report
}

/// (db size, in-use size) of the etcd cluster, after compacting to the current revision when
/// `compact`.
async fn etcd_in_use(stack: &Stack, compact: bool) -> (i64, i64) {
    let mut c = stack.etcd.client().await;
    if compact
        && let Ok(r) = c.get("soak-probe", None).await
        && let Some(h) = r.header()
    {
        let _ = c
            .compact(
                h.revision(),
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await;
    }
    let st = c.status().await.ok();
    st.map(|s| (s.db_size(), s.raft_used_db_size()))
        .unwrap_or((0, 0))
}

async fn finish(
    s: &mut Soak,
    stable: &[(String, String)],
    base: &BTreeMap<String, i64>,
    counts: &Mutex<BTreeMap<String, u64>>,
    sockets: &mut [tokio::net::TcpStream],
) {
    match s.stack.leading_provider(Duration::from_secs(30)).await {
        Some(l) => s.stack.use_provider(l),
        None => s.report.fail("no leader at the end".into()),
    }
    // SQL == etcd == Traefik, and every acknowledged change held.
    let want: BTreeSet<String> = stable
        .iter()
        .chain(&s.live)
        .map(|(id, _)| id.clone())
        .collect();
    let sql = s.stack.circuit_ids(&s.authority).await;
    s.report.final_circuits = sql.len();
    if sql != want {
        let lost = want.difference(&sql).count();
        let stale = sql.difference(&want).count();
        s.report.fail(format!(
            "SQL differs from the acknowledged changes: {lost} lost, {stale} deleted but present"
        ));
    }
    let root = s.stack.root_key(&s.authority);
    let fixed = ["ap-setup", "ap-closed"];
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut agreed = false;
    let mut last = String::new();
    while !agreed && Instant::now() < deadline {
        let dump = s.stack.etcd_dump().await;
        let in_etcd: BTreeSet<String> = (dump.keys())
            .filter_map(|k| k.strip_prefix(&format!("{root}/http/routers/")))
            .filter_map(|r| r.split('/').next()?.strip_prefix("ap-"))
            .filter(|n| !fixed.iter().any(|f| f.strip_prefix("ap-") == Some(n)))
            .map(str::to_string)
            .collect();
        let served: BTreeSet<String> = (s.worker.traefik.enabled_routers(&s.stack.http).await)
            .into_iter()
            .filter_map(|r| r.strip_prefix("ap-").map(str::to_string))
            .filter(|n| {
                !fixed
                    .iter()
                    .any(|f| f.strip_prefix("ap-") == Some(n.as_str()))
            })
            .collect();
        let orphans = (dump.keys())
            .filter(|k| k.starts_with(&root))
            .filter_map(|k| {
                let i = k.find("ap-")?;
                let id = k.get(i + 3..i + 39)?;
                Uuid::parse_str(id).ok().map(|_| id.to_string())
            })
            .filter(|id| !sql.contains(id))
            .count();
        agreed = in_etcd == sql && served == sql && orphans == 0;
        if !agreed {
            let some = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
                a.difference(b).take(3).cloned().collect()
            };
            last = format!(
                "SQL {} circuits, etcd {} (missing {:?}, extra {:?}), Traefik {} (missing {:?}, \
                 extra {:?}), orphan keys {orphans}",
                sql.len(),
                in_etcd.len(),
                some(&sql, &in_etcd),
                some(&in_etcd, &sql),
                served.len(),
                some(&sql, &served),
                some(&served, &sql),
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if !agreed {
        s.report.fail(format!(
            "SQL, etcd and Traefik did not agree within 90 s: {last}"
        ));
    }
    let (before, _) = etcd_in_use(&s.stack, false).await;
    s.report.etcd_db_bytes_before_compaction = before;
    s.report.etcd_db_in_use_bytes_after_compaction = etcd_in_use(&s.stack, true).await.1;
    let fill = s.report.etcd_db_in_use_bytes_after_fill.max(1);
    if s.report.etcd_db_in_use_bytes_after_compaction > 3 * fill + (8 << 20) {
        s.report.fail(format!(
            "etcd's database in use after compaction grew from {fill} to {} bytes",
            s.report.etcd_db_in_use_bytes_after_compaction
        ));
    }
    // Activity: every served request counted once.
    let sent = counts.lock().expect("counts").clone();
    s.report.requests_sent = sent.values().sum();
    if s.report.requests_failed > 0 {
        s.report.fail(format!(
            "{} requests to stable circuits failed",
            s.report.requests_failed
        ));
    }
    let mut redis = s.stack.redis().await;
    let mut exact = false;
    for _ in 0..30 {
        let mut all = true;
        for (id, _) in stable {
            let v: Option<i64> = redis
                .get(format!("circuit.{id}.requests"))
                .await
                .unwrap_or(None);
            let counted = v.unwrap_or(0) - base.get(id).copied().unwrap_or(0);
            // Open WebSockets are logged (and counted) when they close, not yet.
            all &= counted == sent.get(id).copied().unwrap_or(0) as i64;
        }
        if all {
            exact = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !exact {
        s.report
            .fail("activity counts in Redis differ from the requests served".into());
    }
    s.report.websockets_total = sockets.len();
    for ws in sockets.iter_mut() {
        if e2e::ws_echo(ws).await {
            s.report.websockets_open += 1;
        }
    }
    if s.report.websockets_open != sockets.len() {
        s.report.fail(format!(
            "{} of {} WebSockets closed",
            sockets.len() - s.report.websockets_open,
            sockets.len()
        ));
    }
    for (what, xs) in [
        ("create → routable", &s.report.create_to_routable_s),
        ("delete → denied", &s.report.delete_to_denied_s),
    ] {
        let (p50, p99) = (pct(xs, 0.5), pct(xs, 0.99));
        println!(
            "soak: {what} p50 {p50:.2} s, p99 {p99:.2} s over {} probes",
            xs.len()
        );
        if !s.report.probes_timed_out.is_empty() {
            println!("soak: probes out of time: {:?}", s.report.probes_timed_out);
        }
        if p99 > 5.0 {
            s.report
                .failures
                .push(format!("{what} p99 {p99:.2} s (> 5 s)"));
        }
    }
    // RSS: the last window against the first (a tenth of the run each, at least one sample).
    for name in ["authgate", "traefik"] {
        let samples = s.report.rss_mib.get(name).cloned().unwrap_or_default();
        let w = (samples.len() / 10).max(1);
        if samples.len() < 2 * w {
            continue;
        }
        let avg = |xs: &[(u64, f64)]| xs.iter().map(|(_, m)| m).sum::<f64>() / xs.len() as f64;
        let (first, last) = (avg(&samples[..w]), avg(&samples[samples.len() - w..]));
        println!("soak: {name} RSS {first:.1} → {last:.1} MiB");
        if last > first * 1.25 + 16.0 {
            s.report
                .fail(format!("{name} RSS grew from {first:.1} to {last:.1} MiB"));
        }
    }
}

fn main() {
    let args = Args::parse();
    let out = args.out.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Interrupted (Ctrl-C, SIGTERM): the run is dropped, and with it every process it started.
    let report = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            r = run(args) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
        }
    });
    let Some(report) = report else {
        eprintln!("soak: interrupted; every process it started was stopped");
        std::process::exit(130);
    };
    let text = serde_json::to_string_pretty(&report).expect("report");
    if let Some(p) = out {
        std::fs::write(&p, &text).expect("write the report");
        println!("soak: report in {}", p.display());
    }
    println!(
        "soak: {:.1} min, {} creates and {} deletes acknowledged, {} circuits at the end, {} requests served ({} failed), leader kills {:?} s to a new leader, etcd in use {} → {} bytes after compaction",
        report.minutes,
        report.creates_acked,
        report.deletes_acked,
        report.final_circuits,
        report.requests_sent,
        report.requests_failed,
        report.leader_kills,
        report.etcd_db_in_use_bytes_after_fill,
        report.etcd_db_in_use_bytes_after_compaction,
    );
    if report.failures.is_empty() {
        println!("soak: every invariant held");
    } else {
        eprintln!(
            "soak: {} invariant(s) broke: {:?}",
            report.failures.len(),
            report.failures
        );
        std::process::exit(1);
    }
}
