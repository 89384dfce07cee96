//! A gated worker: a Traefik plus the authgate that registers it, heartbeats and guards its
//! circuits. authgate can be stopped, killed and restarted by the test.

use std::{path::PathBuf, process::Command, time::Duration};

use reqwest::Method;

use crate::{
    Stack, Traefik, TraefikFrontend,
    procs::{Proc, free_port, wait_listening},
    stack::workspace_bin,
};

/// How to start a gated worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub authority: String,
    pub frontend: TraefikFrontend,
    /// Wildcard mode: `.apps.test` style suffix.
    pub wildcard_domain: Option<String>,
    /// Path mode (on the one `apps` port of `TraefikFrontend::Wildcard`): apps at
    /// `/<id>/<app>/`; these apps keep the prefix, the others get it stripped.
    pub path_mode: Option<Vec<String>>,
    pub setup_max_uses: u32,
    pub login_url: Option<String>,
    /// Extra `APPPROXY_AUTHGATE__*` settings.
    pub env: Vec<(String, String)>,
    /// Start authgate without `CAP_NET_ADMIN` (`setpriv --bounding-set=-net_admin`).
    pub without_net_admin: bool,
    /// Start authgate on these CPUs only (`taskset -c`): it sizes its serving threads from
    /// the CPUs it may use.
    pub cpus: Option<String>,
    /// Its Traefik's extra `traefik-config` arguments and environment (HTTPS, ACME).
    pub traefik: crate::TraefikExtra,
    /// Circuits decided by the fast-path plugin inside Traefik (authgate's `[fast_path] dir`,
    /// with `scope = "all"` unless `env` says otherwise). Default: `APPPROXY_E2E_FAST_PATH=1`
    /// in the environment, so the auth suites run on both paths.
    pub fast_path: bool,
}

/// Whether workers start on the fast path unless a test says otherwise.
pub(crate) fn fast_path_by_default() -> bool {
    std::env::var("APPPROXY_E2E_FAST_PATH").is_ok_and(|v| v == "1")
}

/// The fast-path plugin, built by `deploy/test` (`build_fast_path`).
pub(crate) fn fast_path_module() -> PathBuf {
    let p = crate::stack::repo_root().join("target/wasm32-wasip1/release/appproxy_fastpath.wasm");
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p appproxy-fastpath --target wasm32-wasip1 --release`",
        p.display()
    );
    p
}

impl WorkerSpec {
    /// A wildcard-mode worker: apps at `<name><domain>:<port>` (`domain` like `.apps.test`).
    pub fn wildcard(authority: &str, port: u16, domain: &str) -> WorkerSpec {
        WorkerSpec {
            frontend: TraefikFrontend::Wildcard { port },
            wildcard_domain: Some(domain.into()),
            ..WorkerSpec::ports(authority, 1)
        }
    }

    /// A path-mode worker: apps at `http://127.0.0.1:<port>/<id>/<app>/`; `keep`: apps that
    /// run under their base URL.
    pub fn path(authority: &str, port: u16, keep: &[&str]) -> WorkerSpec {
        WorkerSpec {
            frontend: TraefikFrontend::Wildcard { port },
            path_mode: Some(keep.iter().map(|a| a.to_string()).collect()),
            ..WorkerSpec::ports(authority, 1)
        }
    }

    pub fn ports(authority: &str, n: u16) -> WorkerSpec {
        let (lo, hi) = Stack::port_range(n);
        WorkerSpec {
            authority: authority.into(),
            frontend: TraefikFrontend::Ports { lo, hi },
            wildcard_domain: None,
            path_mode: None,
            setup_max_uses: 3,
            login_url: None,
            env: Vec::new(),
            without_net_admin: false,
            cpus: None,
            traefik: crate::TraefikExtra::default(),
            fast_path: fast_path_by_default(),
        }
    }
}

/// Traefik + authgate of one worker. Field order: authgate stops (and deregisters) first.
pub struct GatedWorker {
    authgate: Option<Proc>,
    pub traefik: Traefik,
    pub port: u16,
    /// authgate's access-log receiver (loopback) and the secret Traefik sends it.
    pub ingest_port: u16,
    pub ingest_secret: String,
    pub spec: WorkerSpec,
    env: Vec<(String, String)>,
    dir: PathBuf,
    /// The fast path's state directory, when its Traefik loads the plugin.
    fast_dir: Option<PathBuf>,
}

impl Stack {
    /// Start Traefik and authgate for `spec`; returns once the worker is registered, its
    /// sentinel is in etcd and authgate has loaded the revocation set.
    pub async fn start_gated_worker(&self, spec: WorkerSpec) -> GatedWorker {
        let mut w = self.launch_gated_worker(spec).await;
        if let Some(p) = w.authgate.as_mut() {
            wait_listening(w.port, Duration::from_secs(30), p);
        }
        self.wait_registered(&w.spec.authority).await;
        w.wait_ready(&self.http).await;
        w
    }

    /// Start Traefik and authgate for `spec` (with a credential enrolled for its authority,
    /// unless `spec.env` sets another); returns once authgate is started.
    pub async fn launch_gated_worker(&self, mut spec: WorkerSpec) -> GatedWorker {
        let port = free_port();
        let fast_dir = self.dir.path().join(format!("fast-path-{port}"));
        if spec.fast_path {
            spec.traefik.args.extend([
                "--fast-path-dir".to_string(),
                fast_dir.display().to_string(),
                "--fast-path-module".to_string(),
                fast_path_module().display().to_string(),
            ]);
        }
        let ingest_port = free_port();
        let ingest_secret = format!(
            "ingest-{}-{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let traefik = self
            .start_traefik_extra(
                &spec.authority,
                spec.frontend,
                Some((
                    format!("http://127.0.0.1:{ingest_port}/v1/logs"),
                    ingest_secret.clone(),
                )),
                &spec.traefik,
            )
            .await;
        let (_, credential) = self.enrol_worker(&spec.authority).await;
        let p = "APPPROXY_AUTHGATE__";
        let mut env = vec![
            (format!("{p}LISTEN"), format!("127.0.0.1:{port}")),
            (
                format!("{p}INGEST__LISTEN"),
                format!("127.0.0.1:{ingest_port}"),
            ),
            (format!("{p}INGEST__SECRET"), ingest_secret.clone()),
            (format!("{p}NAMESPACE"), self.namespace.clone()),
            (format!("{p}WORKER__AUTHORITY"), spec.authority.clone()),
            (format!("{p}WORKER__HOSTNAME"), "127.0.0.1".into()),
            (format!("{p}PROVIDER__URL"), self.provider_urls()),
            (format!("{p}PROVIDER__WORKER_TOKEN"), credential),
            (format!("{p}PROVIDER__HEARTBEAT_SECONDS"), "2".into()),
            (
                format!("{p}KEYS__PROVIDER_PUBLIC_KEY_FILE"),
                self.signing_key.1.display().to_string(),
            ),
            (
                format!("{p}KEYS__COOKIE_SECRET"),
                format!(
                    "cookie-{}-{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                ),
            ),
            (format!("{p}REDIS__URL"), self.redis_url()),
            (
                format!("{p}TRAEFIK__API_URL"),
                format!("http://127.0.0.1:{}", traefik.api_port),
            ),
            (
                format!("{p}SESSION__SETUP_MAX_USES"),
                spec.setup_max_uses.to_string(),
            ),
        ];
        match spec.frontend {
            TraefikFrontend::Ports { lo, hi } => {
                env.push((format!("{p}WORKER__FRONTEND_MODE"), "port".into()));
                env.push((format!("{p}WORKER__PORT_RANGE"), format!("[{lo}, {hi}]")));
            }
            TraefikFrontend::Wildcard { port } if spec.path_mode.is_some() => {
                let keep = spec.path_mode.clone().unwrap_or_default();
                env.push((format!("{p}WORKER__FRONTEND_MODE"), "path".into()));
                env.push((
                    format!("{p}WORKER__PATH_KEEP_PREFIX_APPS"),
                    serde_json::to_string(&keep).expect("app names"),
                ));
                env.push((
                    format!("{p}WORKER__WILDCARD_TRAFFIC_PORT"),
                    port.to_string(),
                ));
            }
            TraefikFrontend::Wildcard { port } => {
                env.push((format!("{p}WORKER__FRONTEND_MODE"), "wildcard".into()));
                env.push((
                    format!("{p}WORKER__WILDCARD_DOMAIN"),
                    spec.wildcard_domain
                        .clone()
                        .unwrap_or_else(|| ".apps.test".into()),
                ));
                env.push((
                    format!("{p}WORKER__WILDCARD_TRAFFIC_PORT"),
                    port.to_string(),
                ));
            }
        }
        if let Some(pki) = &self.pki {
            let ca = pki.ca.display().to_string();
            env.push((format!("{p}PROVIDER__TLS__CA_FILE"), ca.clone()));
            env.push((format!("{p}REDIS__TLS__CA_FILE"), ca));
        }
        if let Some(u) = &spec.login_url {
            env.push((format!("{p}SESSION__LOGIN_URL"), u.clone()));
        }
        if spec.fast_path {
            env.push((format!("{p}FAST_PATH__DIR"), fast_dir.display().to_string()));
        }
        // Cookie circuits too (the suites' circuits are mostly interactive); a test that wants
        // the default scope sets it in `spec.env`, which comes later and wins.
        env.push((format!("{p}FAST_PATH__SCOPE"), "all".into()));
        env.extend(spec.env.iter().cloned());
        let spec_fast = spec.fast_path;
        let mut w = GatedWorker {
            authgate: None,
            traefik,
            port,
            ingest_port,
            ingest_secret,
            spec,
            env,
            dir: self.dir.path().to_path_buf(),
            fast_dir: spec_fast.then_some(fast_dir),
        };
        w.spawn_authgate();
        w
    }

    /// Wait until `authority` is registered and its sentinel is in etcd.
    pub async fn wait_registered(&self, authority: &str) {
        let root = self.root_key(authority);
        crate::eventually(
            "worker registered by authgate",
            crate::patience(),
            || async {
                let (status, list) = self.worker(Method::GET, "/api/worker", None).await;
                let listed = status == 200
                    && list["workers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|w| w["authority"] == authority && w["status"] == "ALIVE");
                let sentinel = self.etcd_dump().await.keys().any(|k| k.starts_with(&root));
                (listed && sentinel).then_some(())
            },
        )
        .await;
    }
}

impl GatedWorker {
    /// Start (or restart) authgate and wait until it listens.
    /// Restart authgate with the fast path on or off (its Traefik must have been started with
    /// the plugin: `spec.fast_path`); it registers again, and the provider renders its cookie
    /// circuits with the plugin or with ForwardAuth.
    pub async fn set_fast_path(&mut self, on: bool, http: &reqwest::Client) {
        const KEY: &str = "APPPROXY_AUTHGATE__FAST_PATH__DIR";
        let dir = self
            .fast_dir
            .clone()
            .expect("a worker started with the fast path");
        self.stop_authgate();
        self.env.retain(|(k, _)| k != KEY);
        if on {
            self.env.push((KEY.into(), dir.display().to_string()));
        }
        self.start_authgate();
        self.wait_ready(http).await;
    }

    pub fn start_authgate(&mut self) {
        self.spawn_authgate();
        if let Some(p) = self.authgate.as_mut() {
            wait_listening(self.port, Duration::from_secs(30), p);
        }
    }

    /// Start authgate without waiting for anything (it may exit at once).
    fn spawn_authgate(&mut self) {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(list) = &self.spec.cpus {
            argv.extend(["taskset".into(), "-c".into(), list.into()]);
        }
        if self.spec.without_net_admin {
            argv.extend(["setpriv".into(), "--bounding-set=-net_admin".into()]);
        }
        argv.push(workspace_bin("appproxy-authgate").into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.arg("serve")
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info");
        let p = Proc::spawn(&format!("authgate-{}", self.spec.authority), cmd, &self.dir);
        self.authgate = Some(p);
    }

    /// Wait until authgate reports ready (revocation set loaded).
    pub async fn wait_ready(&self, http: &reqwest::Client) {
        let url = format!("http://127.0.0.1:{}/health", self.port);
        crate::eventually("authgate ready", crate::patience(), || async {
            let r = http.get(&url).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    /// authgate's `[fast_path] dir`, if the worker runs the fast path.
    pub fn fast_path_dir(&self) -> Option<PathBuf> {
        self.setting("FAST_PATH__DIR").map(PathBuf::from)
    }

    /// An `APPPROXY_AUTHGATE__*` setting authgate was started with.
    pub fn setting(&self, name: &str) -> Option<String> {
        let key = format!("APPPROXY_AUTHGATE__{name}");
        self.env
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    /// Whether authgate has exited on its own, and its log.
    pub fn authgate_exited(&mut self) -> Option<String> {
        let p = self.authgate.as_mut()?;
        (!p.alive()).then(|| p.log_tail(6000))
    }

    /// SIGKILL authgate.
    pub fn kill_authgate(&mut self) {
        if let Some(mut p) = self.authgate.take() {
            p.kill();
        }
    }

    /// SIGTERM authgate and wait for it to exit (it deregisters on the way out).
    pub fn stop_authgate(&mut self) {
        if let Some(mut p) = self.authgate.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Suspend (SIGSTOP) or resume (SIGCONT) authgate: a hung auth service.
    pub fn signal_authgate(&self, sig: &str) {
        if let Some(p) = &self.authgate {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(p.pid().to_string())
                .status();
        }
    }

    pub fn authgate_log(&self) -> String {
        self.authgate
            .as_ref()
            .map(|p| p.log_tail(6000))
            .unwrap_or_default()
    }

    /// authgate's whole log.
    pub fn authgate_log_all(&self) -> String {
        self.authgate
            .as_ref()
            .map(|p| p.log_tail(usize::MAX))
            .unwrap_or_default()
    }

    /// authgate's pid (to freeze it with SIGSTOP, as a hung worker).
    pub fn authgate_pid(&self) -> u32 {
        self.authgate.as_ref().expect("authgate running").pid()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `POST /v1/logs` to the access-log receiver as Traefik does (with the secret).
    pub fn post_logs(&self, http: &reqwest::Client, body: Vec<u8>) -> reqwest::RequestBuilder {
        http.post(format!("http://127.0.0.1:{}/v1/logs", self.ingest_port))
            .header("x-appproxy-ingest-secret", &self.ingest_secret)
            .header("content-type", "application/x-protobuf")
            .body(body)
    }
}
