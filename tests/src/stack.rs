//! `Stack`: etcd (+ PostgreSQL) + provider for one test, each on free ports with its own
//! etcd namespace; Traefik instances per worker on demand.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    etcd::EtcdCluster,
    procs::{Proc, TempDir, free_port, free_port_range, wait_listening},
};

/// Which SQL database the provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// How a Traefik instance exposes apps.
#[derive(Debug, Clone, Copy)]
pub enum TraefikFrontend {
    Ports { lo: u16, hi: u16 },
    Wildcard { port: u16 },
}

/// A running Traefik for one worker.
pub struct Traefik {
    pub proc: Proc,
    pub api_port: u16,
    pub frontend: TraefikFrontend,
    /// Its static config's directory, where its log goes and its extra environment (for
    /// `restart`).
    config_dir: PathBuf,
    log_dir: PathBuf,
    env: Vec<(String, String)>,
}

/// What else a test's Traefik gets: `traefik-config` arguments (HTTPS, ACME) and environment
/// (a DNS provider's settings).
#[derive(Debug, Clone, Default)]
pub struct TraefikExtra {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Traefik {
    fn spawn(
        config_dir: &Path,
        log_dir: &Path,
        name: &str,
        api_port: u16,
        env: &[(String, String)],
    ) -> Proc {
        let mut cmd = Command::new(traefik_bin());
        cmd.arg(format!(
            "--configFile={}",
            config_dir.join("traefik.yml").display()
        ))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(config_dir);
        let mut p = Proc::spawn(name, cmd, log_dir);
        wait_listening(api_port, Duration::from_secs(30), &mut p);
        p
    }

    /// The directory of its rendered configuration (`traefik.yml`, `dynamic.yml`).
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// SIGKILL this Traefik and start it again with the same static config.
    pub fn restart(&mut self) {
        self.proc.kill();
        let name = self.proc.name.clone();
        self.proc = Traefik::spawn(
            &self.config_dir,
            &self.log_dir,
            &name,
            self.api_port,
            &self.env,
        );
    }

    /// An HTTP service as Traefik's API shows it (`name` without `@etcd`), if loaded.
    pub async fn http_service(&self, http: &reqwest::Client, name: &str) -> Option<Value> {
        let url = format!(
            "http://127.0.0.1:{}/api/http/services/{name}@etcd",
            self.api_port
        );
        let resp = http.get(url).send().await.ok()?;
        if resp.status() != 200 {
            return None;
        }
        resp.json().await.ok()
    }

    /// Names of routers Traefik has loaded from etcd and enabled (HTTP and TCP).
    pub async fn enabled_routers(&self, http: &reqwest::Client) -> Vec<String> {
        let mut names = Vec::new();
        for kind in ["http", "tcp"] {
            // The API pages its lists (100 by default): follow `X-Next-Page`, bounded.
            let mut page = 1;
            for _ in 0..100 {
                let url = format!(
                    "http://127.0.0.1:{}/api/{kind}/routers?per_page=1000&page={page}",
                    self.api_port
                );
                let Ok(resp) = http.get(url).send().await else {
                    break;
                };
                let next = (resp.headers().get("x-next-page"))
                    .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
                    .filter(|n| *n > page);
                let Ok(v) = resp.json::<Value>().await else {
                    break;
                };
                for r in v.as_array().into_iter().flatten() {
                    let name = r["name"].as_str().unwrap_or("");
                    if r["status"] == "enabled" && name.ends_with("@etcd") {
                        names.push(name.trim_end_matches("@etcd").to_string());
                    }
                }
                match next {
                    Some(n) => page = n,
                    None => break,
                }
            }
        }
        names.sort();
        names
    }
}

/// One provider replica of a stack.
struct ProviderSlot {
    port: u16,
    proc: Option<Proc>,
}

/// A PostgreSQL of a stack (kept so that a test can stop and restart it).
struct Postgres {
    proc: Option<Proc>,
    data: PathBuf,
    port: u16,
}

/// What a stack runs.
pub struct Opts {
    pub db: Db,
    pub provider_extra_env: Vec<(String, String)>,
    pub legacy_worker_token: bool,
    pub etcd_members: usize,
    pub providers: usize,
    /// Every internal link on TLS: etcd (clients and peers, client certificates required),
    /// Redis (`rediss://`), the provider's API (HTTPS), Traefik → etcd.
    pub tls: bool,
}

impl Opts {
    pub fn new(db: Db) -> Opts {
        Opts {
            db,
            provider_extra_env: Vec::new(),
            legacy_worker_token: true,
            etcd_members: 1,
            providers: 1,
            tls: false,
        }
    }
}

/// etcd + SQL + provider(s) for one test. Field order matters: processes stop before the
/// directory goes away.
pub struct Stack {
    providers: Vec<ProviderSlot>,
    /// The provider `call` uses.
    primary: usize,
    postgres: Option<Postgres>,
    redis: Option<Proc>,
    pub etcd: EtcdCluster,
    pub redis_port: u16,
    /// Ed25519 key pair of the provider (private, public PEM files).
    pub signing_key: (PathBuf, PathBuf),
    pub db: Db,
    pub db_url: String,
    /// The first etcd member's client port.
    pub etcd_port: u16,
    /// The first provider's port.
    pub provider_port: u16,
    pub namespace: String,
    pub control_prefix: String,
    pub manager_token: String,
    /// The provider's `legacy_shared_worker_token`, for tests that register workers without
    /// an authgate (`None`: the option is off, as in a default deployment). Gated workers
    /// always enrol a credential of their own.
    pub worker_token: Option<String>,
    pub http: reqwest::Client,
    /// The private PKI when the stack runs on TLS (`Opts::tls`).
    pub pki: Option<crate::pki::Pki>,
    /// Extra `APPPROXY_PROVIDER__*` settings for the next `start_provider`.
    pub provider_extra_env: Vec<(String, String)>,
    /// Traefik's default certificate and key (`traefik-config --cert-file/--key-file`).
    pub cert: (PathBuf, PathBuf),
    pub dir: TempDir,
}

/// `target/<profile>/` of this workspace: the directory of the running executable, or its
/// parent for test binaries (which live in `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary; panics with the build command when missing.
/// The repository's root (scripts under `deploy/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// The Traefik binary the tests run: `APPPROXY_TRAEFIK_BIN`, else the project's venv, else `traefik`.
pub fn traefik_bin() -> PathBuf {
    if let Ok(p) = std::env::var("APPPROXY_TRAEFIK_BIN") {
        return p.into();
    }
    let venv = repo_root().join(".venv/bin/traefik");
    if venv.exists() {
        venv
    } else {
        "traefik".into()
    }
}

fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| name.into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command that runs as `postgres` when we are root (PostgreSQL refuses root); `setpriv`
/// execs, so the PID we hold is PostgreSQL's own.
fn as_postgres(bin: PathBuf) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

impl Stack {
    pub async fn start(db: Db) -> Stack {
        Stack::start_opts(Opts::new(db)).await
    }

    /// A stack whose provider gets extra `APPPROXY_PROVIDER__*` settings.
    pub async fn start_with(db: Db, provider_extra_env: Vec<(String, String)>) -> Stack {
        Stack::start_opts(Opts {
            provider_extra_env,
            ..Opts::new(db)
        })
        .await
    }

    /// A stack whose provider has no legacy shared worker token (only enrolled credentials).
    pub async fn start_strict(db: Db) -> Stack {
        Stack::start_opts(Opts {
            legacy_worker_token: false,
            ..Opts::new(db)
        })
        .await
    }

    pub async fn start_opts(opts: Opts) -> Stack {
        let dir = TempDir::new("stack");
        let pki = opts.tls.then(|| crate::pki::Pki::new(dir.path()));
        let etcd = EtcdCluster::start_tls(dir.path(), opts.etcd_members.max(1), pki.as_ref());
        let (postgres, db_url) = match opts.db {
            Db::Sqlite => (
                None,
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("provider.db").display()
                ),
            ),
            Db::Postgres => {
                let (pg, url) = start_postgres(dir.path());
                (Some(pg), url)
            }
        };
        let key = dir.path().join("default.key");
        let crt = dir.path().join("default.crt");
        let ok = Command::new("openssl")
            .args(["req", "-x509"])
            .args(crate::pki::NEW_EC_KEY)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .args(["-days", "30", "-subj", "/CN=appproxy-default"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "openssl could not make a default certificate");
        let signing_key = ed25519_pair(dir.path());
        let (redis, redis_port) = redis_on(dir.path(), free_port(), pki.as_ref());
        let id = short_id();
        let providers: Vec<ProviderSlot> = (0..opts.providers.max(1))
            .map(|_| ProviderSlot {
                port: free_port(),
                proc: None,
            })
            .collect();
        let mut s = Stack {
            provider_port: providers[0].port,
            providers,
            primary: 0,
            postgres,
            redis: Some(redis),
            etcd_port: etcd.members[0].client_port,
            etcd,
            redis_port,
            signing_key,
            db: opts.db,
            db_url,
            namespace: format!("ns-{id}"),
            control_prefix: format!("cp-{id}/"),
            manager_token: format!("manager-{}", uuid::Uuid::new_v4().simple()),
            worker_token: opts
                .legacy_worker_token
                .then(|| format!("worker-{}", uuid::Uuid::new_v4().simple())),
            http: match &pki {
                Some(p) => p.http(),
                None => crate::client_builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client"),
            },
            pki,
            provider_extra_env: opts.provider_extra_env,
            cert: (crt, key),
            dir,
        };
        for i in 0..s.providers.len() {
            s.start_provider_at(i);
        }
        s
    }

    /// The URL of the provider that `call` and its helpers use (the first, unless
    /// `use_provider` chose another).
    pub fn provider_url(&self) -> String {
        self.provider_url_at(self.primary)
    }

    /// Every provider's URL, comma-separated (authgate's `provider.url` for several replicas).
    pub fn provider_urls(&self) -> String {
        (0..self.providers.len())
            .map(|i| self.provider_url_at(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `GET /status` of provider `i` (`None` when it does not answer within 2 s).
    pub async fn provider_status(&self, i: usize) -> Option<Value> {
        let r = (self.http)
            .get(format!("{}/status", self.provider_url_at(i)))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The index of a provider whose `/status` says it leads, polled every 20 ms for at most
    /// `limit`.
    pub async fn leading_provider(&self, limit: Duration) -> Option<usize> {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            for i in 0..self.providers.len() {
                if self
                    .provider_status(i)
                    .await
                    .is_some_and(|s| s["leader"] == true)
                {
                    return Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Send `call` and its helpers to provider `i` from now on.
    pub fn use_provider(&mut self, i: usize) {
        self.primary = i;
    }

    /// The URL of provider `i`.
    pub fn provider_url_at(&self, i: usize) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.providers[i].port)
    }

    /// This stack's Redis URL (`rediss://` on TLS).
    pub fn redis_url(&self) -> String {
        let scheme = if self.pki.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.redis_port)
    }

    /// How many provider replicas this stack runs.
    pub fn provider_count(&self) -> usize {
        self.providers.len()
    }

    /// Environment that configures the (first) provider binary for this stack.
    pub fn provider_env(&self) -> Vec<(String, String)> {
        self.provider_env_for(self.provider_port)
    }

    /// Environment for a provider listening on `port`.
    pub fn provider_env_for(&self, port: u16) -> Vec<(String, String)> {
        let p = "APPPROXY_PROVIDER__";
        let endpoints: Vec<String> = (self.etcd.endpoints().iter())
            .map(|e| format!("\"{e}\""))
            .collect();
        let mut env = vec![
            (format!("{p}LISTEN"), format!("127.0.0.1:{port}")),
            (format!("{p}DATABASE__URL"), self.db_url.clone()),
            (
                format!("{p}ETCD__ENDPOINTS"),
                format!("[{}]", endpoints.join(",")),
            ),
            (format!("{p}ETCD__NAMESPACE"), self.namespace.clone()),
            (
                format!("{p}ETCD__CONTROL_PREFIX"),
                self.control_prefix.clone(),
            ),
            (
                format!("{p}SECRETS__MANAGER_TOKEN"),
                self.manager_token.clone(),
            ),
            (
                format!("{p}SECRETS__SIGNING_KEY_FILE"),
                self.signing_key.0.display().to_string(),
            ),
            (format!("{p}REDIS__URL"), self.redis_url()),
        ];
        if let Some(pki) = &self.pki {
            let (ca, cert, key) = (pki.ca.display(), pki.cert.display(), pki.key.display());
            env.extend([
                (format!("{p}TLS__CERT_FILE"), cert.to_string()),
                (format!("{p}TLS__KEY_FILE"), key.to_string()),
                (format!("{p}ETCD__TLS__CA_FILE"), ca.to_string()),
                (format!("{p}ETCD__TLS__CERT_FILE"), cert.to_string()),
                (format!("{p}ETCD__TLS__KEY_FILE"), key.to_string()),
                (format!("{p}REDIS__TLS__CA_FILE"), ca.to_string()),
            ]);
        }
        if let Some(t) = &self.worker_token {
            env.push((format!("{p}SECRETS__LEGACY_SHARED_WORKER_TOKEN"), t.clone()));
        }
        env
    }

    /// A connection to this stack's Redis.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let tls = appproxy_common::tls::ClientTls {
            ca_file: (self.pki.as_ref()).map(|p| p.ca.display().to_string()),
            ..Default::default()
        };
        appproxy_common::tls::install_provider();
        let client =
            appproxy_common::tls::redis_client(&self.redis_url(), &tls).expect("redis url");
        appproxy_common::redis_conn::multiplexed(&client, Duration::from_secs(10))
            .await
            .expect("redis connect")
    }

    /// SIGKILL this stack's Redis.
    pub fn kill_redis(&mut self) {
        if let Some(mut p) = self.redis.take() {
            p.kill();
        }
    }

    /// Hold this stack's Redis busy for `ms` milliseconds (a script spinning on `TIME`: every
    /// other client waits, as behind a slow disk or a long command); returns when it is free.
    pub async fn stall_redis(&self, ms: u64) {
        let mut con = self.redis().await;
        let script = "local t0 = redis.call('TIME') \
            local start = t0[1] * 1000000 + t0[2] \
            while true do \
              local t = redis.call('TIME') \
              if t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1]) then return 1 end \
            end";
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .arg(ms * 1000)
            .query_async(&mut con)
            .await
            .expect("stall redis");
    }

    /// Start this stack's Redis again on the same port (after `kill_redis`).
    pub fn restart_redis(&mut self) {
        let (p, _) = redis_on(self.dir.path(), self.redis_port, self.pki.as_ref());
        self.redis = Some(p);
    }

    /// Start (or restart) the provider and wait until it answers.
    pub fn start_provider(&mut self) {
        self.start_provider_at(0);
    }

    /// Start (or restart) provider `i` and wait until it answers.
    pub fn start_provider_at(&mut self, i: usize) {
        let port = self.providers[i].port;
        let mut cmd = Command::new(workspace_bin("appproxy-provider"));
        cmd.envs(self.provider_env_for(port))
            .envs(self.provider_extra_env.iter().cloned())
            .env("RUST_LOG", "info,sqlx=warn");
        let name = if i == 0 {
            "provider".to_string()
        } else {
            format!("provider-{i}")
        };
        let mut p = Proc::spawn(&name, cmd, self.dir.path());
        wait_listening(port, Duration::from_secs(30), &mut p);
        self.providers[i].proc = Some(p);
    }

    /// SIGKILL the provider (no graceful shutdown).
    pub fn kill_provider(&mut self) {
        self.kill_provider_at(0);
    }

    /// SIGKILL provider `i`.
    pub fn kill_provider_at(&mut self, i: usize) {
        if let Some(mut p) = self.providers[i].proc.take() {
            p.kill();
        }
    }

    /// The PID of provider `i` (0 when not running).
    pub fn provider_pid(&self, i: usize) -> u32 {
        self.providers[i].proc.as_ref().map_or(0, |p| p.pid())
    }

    pub fn provider_log(&self) -> String {
        self.provider_log_at(0)
    }

    /// The first provider's whole log.
    pub fn provider_log_all(&self) -> String {
        self.providers[0]
            .proc
            .as_ref()
            .map(|p| p.log_tail(usize::MAX))
            .unwrap_or_default()
    }

    pub fn provider_log_at(&self, i: usize) -> String {
        self.providers[i]
            .proc
            .as_ref()
            .map(|p| p.log_tail(8000))
            .unwrap_or_default()
    }

    /// Stop PostgreSQL (SIGTERM, then SIGKILL after 5 s).
    pub fn stop_postgres(&mut self) {
        if let Some(pg) = self.postgres.as_mut()
            && let Some(mut p) = pg.proc.take()
        {
            p.stop(Duration::from_secs(5));
        }
    }

    /// Start PostgreSQL again on its data and port (after `stop_postgres`).
    pub fn restart_postgres(&mut self) {
        if let Some(pg) = self.postgres.as_mut() {
            let mut p = postgres_on(&pg.data, pg.port, self.dir.path());
            wait_listening(pg.port, Duration::from_secs(30), &mut p);
            pg.proc = Some(p);
        }
    }

    /// A request with a token; returns status and JSON body (`Null` when not JSON). The answer
    /// is recorded for the OpenAPI check when recording is on (`crate::openapi`).
    pub async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let a = self.ask(&self.http, token, method, path, body, &[]).await;
        (a.status, a.body)
    }

    /// A request to the provider through `http`, with a token and headers; the whole answer,
    /// recorded for the OpenAPI check when recording is on.
    pub async fn ask(
        &self,
        http: &reqwest::Client,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> crate::openapi::Answer {
        let mut req = http.request(method.clone(), format!("{}{path}", self.provider_url()));
        if let Some(t) = token {
            req = req.header("X-BackendAI-Token", t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("provider request");
        let status = resp.status().as_u16();
        let content_type = (resp.headers().get("content-type"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap_or_default();
        let a = crate::openapi::Answer {
            method: method.to_string(),
            path: path.split('?').next().unwrap_or(path).to_string(),
            status,
            content_type,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        };
        crate::openapi::record(&a);
        a
    }

    /// The registered worker `authority` as `GET /api/worker` lists it (`Null` when absent);
    /// fails the test unless the listing answers 200.
    pub async fn worker_record(&self, authority: &str) -> Value {
        let (s, v) = self.manager(Method::GET, "/api/worker", None).await;
        assert_eq!(s, 200, "{v}");
        (v["workers"].as_array().into_iter().flatten())
            .find(|w| w["authority"] == authority)
            .cloned()
            .unwrap_or_default()
    }

    pub async fn manager(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call(Some(&self.manager_token.clone()), method, path, body)
            .await
    }

    /// A worker-API call with the legacy shared token (the manager token on a strict stack).
    pub async fn worker(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let token = self
            .worker_token
            .clone()
            .unwrap_or_else(|| self.manager_token.clone());
        self.call(Some(&token), method, path, body).await
    }

    /// Give inference endpoint `ep` exactly one replica, `127.0.0.1:<port>` of `session`
    /// (`POST /v2/endpoints/bulk/routes`, as the Manager does); fails the test unless the
    /// provider takes it.
    pub async fn add_replica(&self, ep: uuid::Uuid, session: uuid::Uuid, port: u16) {
        let body = json!({"endpoints": [{"deployment_id": ep, "routes": [
            {"session_id": session, "route_id": uuid::Uuid::new_v4(), "kernel_host": "127.0.0.1",
             "kernel_port": port}]}]});
        let (s, v) = self
            .manager(Method::POST, "/v2/endpoints/bulk/routes", Some(&body))
            .await;
        assert_eq!(s, 200, "bulk/routes: {v}");
    }

    /// `POST /v2/circuits`: app `app` of `user` on `worker`, one route to `127.0.0.1:<port>` of
    /// `session`, with the fields of `extra` set over those; asserts `201`, returns the answer.
    pub async fn create_circuit(
        &self,
        worker: &str,
        user: uuid::Uuid,
        session: uuid::Uuid,
        port: u16,
        extra: &Value,
    ) -> Value {
        let mut body = serde_json::json!({
            "app": "app", "worker": worker, "user_id": user,
            "routes": [{"session_id": session, "kernel_host": "127.0.0.1", "kernel_port": port}],
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let (s, v) = self
            .manager(Method::POST, "/v2/circuits", Some(&body))
            .await;
        assert_eq!(s, 201, "create circuit: {v}");
        // The answer must decode as the typed contract (a renamed field fails here).
        serde_json::from_value::<appproxy_common::wire::CreateCircuitResponse>(v.clone())
            .unwrap_or_else(|e| panic!("the create answer breaks the wire contract: {e}: {v}"));
        v
    }

    /// `POST /v2/circuits` with a typed request; asserts `201`, returns the typed answer.
    pub async fn create(
        &self,
        req: &appproxy_common::wire::CreateCircuitRequest,
    ) -> appproxy_common::wire::CreateCircuitResponse {
        let body = serde_json::to_value(req).expect("a request serializes");
        let (s, v) = self
            .manager(Method::POST, "/v2/circuits", Some(&body))
            .await;
        assert_eq!(s, 201, "create circuit: {v}");
        serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("the create answer breaks the wire contract: {e}: {v}"))
    }

    /// Enrol a credential for `authority` (`POST /v2/workers/credentials`): (id, credential).
    pub async fn enrol_worker(&self, authority: &str) -> (String, String) {
        let (s, v) = self
            .manager(
                Method::POST,
                "/v2/workers/credentials",
                Some(&serde_json::json!({ "authority": authority })),
            )
            .await;
        assert_eq!(s, 201, "enrol {authority}: {v}");
        (
            v["id"].as_str().expect("id").to_string(),
            v["credential"].as_str().expect("credential").to_string(),
        )
    }

    pub async fn etcd_client(&self) -> etcd_client::Client {
        self.etcd.client().await
    }

    /// Every key and value under this test's namespace (and control prefix).
    pub async fn etcd_dump(&self) -> BTreeMap<String, String> {
        let mut c = self.etcd_client().await;
        let mut out = BTreeMap::new();
        for prefix in [format!("{}/", self.namespace), self.control_prefix.clone()] {
            // A member that just died or joined, or a raft election, fails a read for a
            // moment: retry (bounded).
            let mut tries = 0;
            let resp = loop {
                let opts = etcd_client::GetOptions::new().with_prefix();
                match c.get(prefix.clone(), Some(opts)).await {
                    Ok(r) => break r,
                    Err(e) if tries < 20 => {
                        tries += 1;
                        eprintln!("etcd get failed ({e}); retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        c = self.etcd_client().await;
                    }
                    Err(e) => panic!("etcd get: {e}"),
                }
            };
            for kv in resp.kvs() {
                out.insert(
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                );
            }
        }
        out
    }

    pub fn root_key(&self, authority: &str) -> String {
        appproxy_common::names::worker_root_key(&self.namespace, authority)
    }

    /// The ids of `authority`'s circuits (`GET /v2/circuits?worker=`), as SQL holds them.
    pub async fn circuit_ids(&self, authority: &str) -> std::collections::BTreeSet<String> {
        let path = format!("/v2/circuits?worker={authority}");
        let (s, v) = self.manager(Method::GET, &path, None).await;
        assert_eq!(s, 200, "list circuits: {v}");
        (v["circuits"].as_array().into_iter().flatten())
            .map(|c| c["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Wait until SQL (the provider's list), etcd and `traefik` agree on `authority`'s HTTP
    /// routers: one per circuit, plus `ap-setup`.
    pub async fn assert_agree(&self, traefik: &Traefik, authority: &str) {
        let mut want: Vec<String> = (self.circuit_ids(authority).await.iter())
            .map(|id| format!("ap-{id}"))
            .collect();
        want.push("ap-setup".into());
        want.sort();
        let prefix = format!("{}/http/routers/", self.root_key(authority));
        let deadline = std::time::Instant::now() + crate::patience();
        loop {
            let dump = self.etcd_dump().await;
            let in_etcd: std::collections::BTreeSet<String> = (dump.keys())
                .filter_map(|k| k.strip_prefix(&prefix))
                .map(|rest| rest.split('/').next().unwrap_or_default().to_string())
                .collect();
            let served = traefik.enabled_routers(&self.http).await;
            let in_etcd: Vec<String> = in_etcd.into_iter().collect();
            if in_etcd == want && served == want {
                return;
            }
            if std::time::Instant::now() > deadline {
                let missing = |have: &[String]| -> Vec<String> {
                    (want.iter())
                        .filter(|w| !have.contains(w))
                        .cloned()
                        .collect()
                };
                let extra = |have: &[String]| -> Vec<String> {
                    (have.iter())
                        .filter(|h| !want.contains(h))
                        .cloned()
                        .collect()
                };
                panic!(
                    "SQL, etcd and Traefik disagree on {authority} after {:?}: SQL has {}; \
                     etcd lacks {:?} and has extra {:?}; Traefik lacks {:?} and has extra {:?}",
                    crate::patience(),
                    want.len(),
                    missing(&in_etcd),
                    extra(&in_etcd),
                    missing(&served),
                    extra(&served),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Register a worker through the API and wait until its sentinel is in etcd.
    pub async fn register_worker(&self, body: Value) -> Value {
        let (status, w) = self.worker(Method::PUT, "/api/worker", Some(&body)).await;
        assert_eq!(status, 200, "register worker: {w}");
        let root = self.root_key(body["authority"].as_str().expect("authority"));
        crate::eventually("worker sentinel in etcd", crate::patience(), || async {
            self.etcd_dump()
                .await
                .keys()
                .any(|k| k.starts_with(&root))
                .then_some(())
        })
        .await;
        w
    }

    /// Start a Traefik for `authority` with the static config authgate renders.
    pub async fn start_traefik(&self, authority: &str, frontend: TraefikFrontend) -> Traefik {
        self.start_traefik_with(authority, frontend, None).await
    }

    /// Same, exporting access logs over OTLP/HTTP to `otlp_logs` (receiver URL, secret).
    pub async fn start_traefik_with(
        &self,
        authority: &str,
        frontend: TraefikFrontend,
        otlp_logs: Option<(String, String)>,
    ) -> Traefik {
        self.start_traefik_inner(
            authority,
            frontend,
            otlp_logs,
            None,
            &TraefikExtra::default(),
        )
        .await
    }

    /// Same, with `extra` arguments and environment.
    pub async fn start_traefik_extra(
        &self,
        authority: &str,
        frontend: TraefikFrontend,
        otlp_logs: Option<(String, String)>,
        extra: &TraefikExtra,
    ) -> Traefik {
        self.start_traefik_inner(authority, frontend, otlp_logs, None, extra)
            .await
    }

    /// A Traefik (two ports) that trusts `ca` instead of this stack's CA for etcd.
    pub async fn start_traefik_etcd_ca(&self, authority: &str, ca: &str) -> Traefik {
        let (lo, hi) = Stack::port_range(2);
        let frontend = TraefikFrontend::Ports { lo, hi };
        self.start_traefik_inner(
            authority,
            frontend,
            None,
            Some(ca),
            &TraefikExtra::default(),
        )
        .await
    }

    async fn start_traefik_inner(
        &self,
        authority: &str,
        frontend: TraefikFrontend,
        otlp_logs: Option<(String, String)>,
        etcd_ca: Option<&str>,
        extra: &TraefikExtra,
    ) -> Traefik {
        let dir = self.dir.path().join(format!("traefik-{}", short_id()));
        let api_port = free_port();
        let mut cmd = Command::new(workspace_bin("appproxy-authgate"));
        cmd.arg("traefik-config")
            .arg("--authority")
            .arg(authority)
            .arg("--namespace")
            .arg(&self.namespace);
        for e in self.etcd.endpoints() {
            cmd.arg("--etcd-endpoint").arg(e);
        }
        if let Some(pki) = &self.pki {
            cmd.arg("--etcd-ca-file")
                .arg(etcd_ca.map_or(pki.ca.clone(), PathBuf::from))
                .arg("--etcd-cert-file")
                .arg(&pki.cert)
                .arg("--etcd-key-file")
                .arg(&pki.key);
        }
        cmd.arg("--api-port")
            .arg(api_port.to_string())
            .arg("--cert-file")
            .arg(&self.cert.0)
            .arg("--key-file")
            .arg(&self.cert.1)
            .arg("--out-dir")
            .arg(&dir);
        if let Some((url, secret)) = &otlp_logs {
            cmd.arg("--otlp-logs")
                .arg(url)
                .env("APPPROXY_INGEST_SECRET", secret);
        }
        match frontend {
            TraefikFrontend::Ports { lo, hi } => cmd.arg("--port-range").arg(format!("{lo}-{hi}")),
            TraefikFrontend::Wildcard { port } => cmd.arg("--apps-port").arg(port.to_string()),
        };
        cmd.args(&extra.args);
        let out = cmd.output().expect("run traefik-config");
        assert!(
            out.status.success(),
            "traefik-config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = format!("traefik-{authority}");
        Traefik {
            proc: Traefik::spawn(&dir, self.dir.path(), &name, api_port, &extra.env),
            api_port,
            frontend,
            config_dir: dir,
            log_dir: self.dir.path().to_path_buf(),
            env: extra.env.clone(),
        }
    }

    /// Start an extra Redis for this test (no persistence) and return its port; it stops with
    /// the returned `Proc`.
    pub fn start_redis(&self) -> (Proc, u16) {
        start_redis_in(self.dir.path())
    }

    /// A fresh port range for a port-mode worker.
    pub fn port_range(n: u16) -> (u16, u16) {
        free_port_range(n)
    }
}

fn start_redis_in(dir: &Path) -> (Proc, u16) {
    redis_on(dir, free_port(), None)
}

/// Redis on `port`; with `pki`, on TLS only (no plain port; client certificates optional).
fn redis_on(dir: &Path, port: u16, pki: Option<&crate::pki::Pki>) -> (Proc, u16) {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir);
    match pki {
        None => cmd.args(["--port", &port.to_string()]),
        Some(p) => cmd
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&p.cert)
            .arg("--tls-key-file")
            .arg(&p.key)
            .arg("--tls-ca-cert-file")
            .arg(&p.ca)
            .args(["--tls-auth-clients", "optional"]),
    };
    let mut p = Proc::spawn("redis", cmd, dir);
    wait_listening(port, Duration::from_secs(20), &mut p);
    (p, port)
}

/// A fresh Ed25519 key pair (PKCS#8 private PEM, SPKI public PEM) made by openssl.
pub fn ed25519_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let id = short_id();
    let private = dir.join(format!("signing-{id}.pem"));
    let public = dir.join(format!("signing-{id}.pub.pem"));
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    assert!(ok, "openssl could not make an Ed25519 key pair");
    (private, public)
}

fn start_postgres(dir: &Path) -> (Postgres, String) {
    let data = dir.join("pg");
    std::fs::create_dir_all(&data).expect("pg dir");
    if is_root() {
        let ok = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&data)
            .status();
        assert!(ok.map(|s| s.success()).unwrap_or(false), "chown pg dir");
    }
    let out = as_postgres(pg_bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut p = postgres_on(&data, port, dir);
    wait_listening(port, Duration::from_secs(30), &mut p);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let pg = Postgres {
        proc: Some(p),
        data,
        port,
    };
    (pg, url)
}

fn postgres_on(data: &Path, port: u16, log_dir: &Path) -> Proc {
    let mut cmd = as_postgres(pg_bin("postgres"));
    cmd.arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(data)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ]);
    Proc::spawn("postgres", cmd, log_dir)
}
