//! Typed authgate configuration: a TOML file, then `APPPROXY_AUTHGATE__*` environment
//! overrides, then validation that reports every problem at once.

use std::{net::SocketAddr, path::Path, time::Duration};

use appproxy_common::{tls::ClientTls, wire::WorkerSpec};
use serde::Deserialize;

pub const ENV_PREFIX: &str = "APPPROXY_AUTHGATE__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the ForwardAuth/setup API (Traefik and the setup router reach it here).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Same as the provider's `etcd.namespace`; names the Redis keys both sides share.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// What this worker registers with the provider (`PUT /api/worker`): the wire
    /// contract's `WorkerSpec` itself, so the field list is written once. `api_port` comes
    /// from `listen` and `authgate_url` defaults to `http://<listen>`.
    pub worker: WorkerSpec,
    pub provider: ProviderConfig,
    pub keys: KeysConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub traefik: TraefikConfig,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The worker API for users and the Manager over HTTPS (`[tls]`).
    #[serde(default)]
    pub tls: ApiTls,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Who may read `/metrics`: `allowed_networks` (default loopback), `token` (a bearer).
    #[serde(default)]
    pub metrics: appproxy_common::metrics::MetricsAccess,
    /// Serving threads, each with its own listener (`SO_REUSEPORT`) and single-threaded
    /// runtime; 0 = one per core. The first also runs the background tasks.
    #[serde(default)]
    pub worker_threads: usize,
    /// The fast path: cookie circuits decided inside Traefik (`[fast_path] dir`).
    #[serde(default)]
    pub fast_path: FastPathConfig,
}

/// The fast path: the worker's circuits are decided (private) or counted (public) by a plugin
/// inside Traefik, which reads the state authgate keeps in `dir` (mounted read-only into the
/// plugin; Traefik must run on this host). WebSocket ends still come from the access log, so
/// `[ingest]` is required.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastPathConfig {
    /// The state directory; none: every private circuit goes through ForwardAuth.
    #[serde(default)]
    pub dir: Option<std::path::PathBuf>,
    /// Which circuits: `inference` (default) or `all`.
    #[serde(default)]
    pub scope: FastPathScope,
}

/// Which circuits take the fast path. Traefik builds one plugin instance per router that uses
/// it, at start and again at every reload (measured on Traefik 3.7: ~1.2 MiB of RSS and ~9 ms
/// of CPU per such router and reload), so the default keeps it to inference circuits — few
/// per worker, and the ones with the traffic. `all` adds interactive (cookie) circuits: for
/// workers with few circuits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FastPathScope {
    #[default]
    Inference,
    All,
}

/// The access-log receiver: Traefik's OTLP/HTTP exporter posts `/v1/logs` here, on a listener
/// of its own (never the ForwardAuth/setup one that browsers reach through `/_appproxy/`), and
/// every export must carry the shared secret in [`INGEST_SECRET_HEADER`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Loopback address of the receiver; none: no access-log ingestion (no activity data).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// At least 32 characters; `appproxy-authgate traefik-config --otlp-secret` renders it into
    /// Traefik's exporter headers.
    #[serde(default)]
    pub secret: Option<String>,
}

/// The worker API (`/setup`, `/health`) on a listener of its own with TLS: what users and the
/// Manager reach (`api_port` becomes its port, so the provider's `https://host:api_port`
/// links land here), while `listen` stays the loopback ForwardAuth port Traefik calls.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTls {
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain and key (re-read within 5 s when the files change).
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
}

impl ApiTls {
    /// The listener's address and files, when configured.
    pub fn served(&self) -> Option<(SocketAddr, &str, &str)> {
        Some((
            self.listen?,
            self.cert_file.as_deref()?,
            self.key_file.as_deref()?,
        ))
    }

    fn check(&self, listen: SocketAddr, errs: &mut Vec<String>) {
        let files = appproxy_common::tls::ServerTls {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        };
        match (self.listen, files.files()) {
            (None, None) => {}
            (Some(addr), Some(_)) => {
                if addr == listen {
                    errs.push("tls.listen must differ from listen".into());
                }
                files.check("tls", errs);
            }
            _ => errs.push("tls: listen, cert_file and key_file go together".into()),
        }
    }
}

/// Header carrying [`IngestConfig::secret`] on every export.
pub const INGEST_SECRET_HEADER: &str = "x-appproxy-ingest-secret";

/// WebAssembly auth plugins (see PLUGINS.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of `<name>.wasm` / `<name>.wat` modules, watched for changes. None: no plugins
    /// (circuits that name one are denied with 503).
    pub dir: Option<String>,
    /// Wall-clock bound of one call.
    pub timeout_ms: u64,
    /// Linear-memory bound of one call.
    pub memory_mib: usize,
    /// Calls running at once, and calls allowed to wait (beyond: 503 at once).
    pub workers: usize,
    pub queue: usize,
    /// Consecutive failures after which a plugin is disabled until its file changes.
    pub max_failures: u32,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            timeout_ms: 20,
            memory_mib: 16,
            workers: 2,
            queue: 256,
            max_failures: 20,
        }
    }
}

impl PluginsConfig {
    fn check(&self, errs: &mut Vec<String>) {
        if !(1..=10_000).contains(&self.timeout_ms) {
            errs.push("plugins.timeout_ms must be 1-10000".into());
        }
        if !(1..=64).contains(&self.memory_mib) {
            errs.push("plugins.memory_mib must be 1-64".into());
        }
        if !(1..=64).contains(&self.workers) || self.queue > 100_000 || self.max_failures == 0 {
            errs.push(
                "plugins.workers must be 1-64, queue at most 100000, max_failures ≥ 1".into(),
            );
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The provider's base URL, or several replicas' separated by commas (requests go to
    /// the one that answered last; a replica that does not answer is skipped).
    pub url: String,
    /// This worker's credential (`apw1.…`, from `POST /v2/workers/credentials`) or the
    /// provider's legacy shared token.
    pub worker_token: String,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u64,
    /// `[provider.tls]`: the CA (instead of the system's) and client certificate for
    /// `https://` provider URLs.
    #[serde(default)]
    pub tls: ClientTls,
}

fn default_heartbeat() -> u64 {
    10
}

impl ProviderConfig {
    fn check(&self, errs: &mut Vec<String>) {
        if self.worker_token.len() < 16 {
            errs.push("provider.worker_token must be at least 16 characters".into());
        }
        let urls = crate::worker::provider_urls(&self.url);
        if urls.is_empty()
            || !(urls.iter()).all(|u| u.starts_with("http://") || u.starts_with("https://"))
        {
            errs.push("provider.url must be an http(s) URL (or several, comma-separated)".into());
        } else if !urls.iter().any(|u| u.starts_with("https://")) {
            if self.tls.is_set() {
                errs.push("provider.tls names TLS files but no provider.url is https://".into());
            }
        } else if !urls.iter().all(|u| u.starts_with("https://")) {
            errs.push(
                "provider.url: all https:// or all http:// (the worker credential would cross \
                 some links in clear)"
                    .into(),
            );
        } else {
            self.tls.check("provider.tls", errs);
        }
        if !(1..=300).contains(&self.heartbeat_seconds) {
            errs.push("provider.heartbeat_seconds must be 1-300".into());
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The provider's Ed25519 public key (PEM): verifies setup and inference tokens.
    pub provider_public_key_file: String,
    /// Secret (≥ 32 bytes) that signs session cookies; shared only by this worker's authgates.
    pub cookie_secret: String,
}

/// Rate limits, counted in Redis so all authgates share them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `/setup` and `/_appproxy/setup`, per client address (`requests = 0`: off). While Redis
    /// is down setup fails closed, as its use counting does.
    pub setup_per_address: appproxy_common::ratelimit::Limit,
    /// Peers (CIDRs) whose `X-Forwarded-For` is believed (the client is the last address in
    /// it that is not one of them); on `/_appproxy/setup` also loopback, this worker's
    /// Traefik. Direct callers of the API port's `/setup` are their own address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            setup_per_address: appproxy_common::ratelimit::Limit::per_minute(300),
            trusted_proxies: Vec::new(),
        }
    }
}

impl RateLimitConfig {
    /// The configured proxies, and loopback (this worker's Traefik) for what arrives through
    /// Traefik.
    pub fn trusted(&self, via_traefik: bool) -> Vec<ipnet::IpNet> {
        let mut t = self.trusted_proxies.clone();
        if via_traefik {
            t.push("127.0.0.0/8".parse().expect("net"));
            t.push("::1/128".parse().expect("net"));
        }
        t
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Revocations and setup-token use counts. While it is down `/setup` fails closed.
    /// `rediss://` for TLS.
    pub url: String,
    /// `[redis.tls]`: CA and client certificate for a `rediss://` URL.
    pub tls: ClientTls,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            tls: ClientTls::default(),
        }
    }
}

impl RedisConfig {
    fn check(&self, errs: &mut Vec<String>) {
        appproxy_common::tls::check_redis("redis.url", &self.url, &self.tls, errs);
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraefikConfig {
    /// The co-located Traefik's API (loopback), polled by `/setup` until the router is loaded.
    pub api_url: String,
    /// How long `/setup` waits for the router before answering 503 (the WebUI retries).
    pub router_wait_ms: u64,
}

impl Default for TraefikConfig {
    fn default() -> Self {
        Self {
            api_url: "http://127.0.0.1:10202".into(),
            router_wait_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Lifetime of a session cookie.
    pub cookie_ttl_seconds: u64,
    /// How often one setup link may be used (the WebUI opens it twice).
    pub setup_max_uses: u32,
    /// Clock skew accepted on `exp`/`nbf`.
    pub leeway_seconds: u64,
    /// Pass a valid inference `Authorization` header on to the model server (default: removed).
    pub forward_inference_authorization: bool,
    /// Revocations older than this are forgotten (in memory; the provider prunes Redis with
    /// its own `auth.revocation_retention_seconds`): every cookie issued before them has
    /// expired by then. At least `cookie_ttl_seconds + leeway_seconds`.
    pub revocation_retention_seconds: u64,
    /// Platform page that starts a launch with a state nonce (`/_appproxy/login` sends the
    /// browser there with `state` and `circuit`); none → the 401 page only explains.
    pub login_url: Option<String>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie_ttl_seconds: 12 * 3600,
            setup_max_uses: 3,
            leeway_seconds: 30,
            forward_inference_authorization: false,
            revocation_retention_seconds: 30 * 24 * 3600,
            login_url: None,
        }
    }
}

impl SessionConfig {
    fn check(&self, errs: &mut Vec<String>) {
        if !(60..=7 * 24 * 3600).contains(&self.cookie_ttl_seconds) {
            errs.push("session.cookie_ttl_seconds must be between 60 and 604800".into());
        }
        if !(1..=100).contains(&self.setup_max_uses) {
            errs.push("session.setup_max_uses must be 1-100".into());
        }
        if self.leeway_seconds > 60 {
            errs.push("session.leeway_seconds must be at most 60".into());
        }
        if self.revocation_retention_seconds < self.cookie_ttl_seconds + self.leeway_seconds {
            errs.push(
                "session.revocation_retention_seconds must be at least cookie_ttl_seconds + \
                 leeway_seconds"
                    .into(),
            );
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10201))
}
fn default_namespace() -> String {
    "traefik".into()
}

pub use appproxy_common::config::ConfigError;

impl Config {
    pub fn load(
        path: Option<&Path>,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let cfg: Config = appproxy_common::config::load(path, env, ENV_PREFIX)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs: Vec<String> = Vec::new();
        // The provider runs the same check on registration: a config that passes here is
        // one it accepts.
        if let Err(e) = crate::worker::registration(self).validate() {
            errs.push(format!("worker: {e}"));
        }
        if ![0, self.api_port()].contains(&self.worker.api_port) {
            errs.push(
                "worker.api_port is the port of `listen` (or `tls.listen`): leave it out".into(),
            );
        }
        self.tls.check(self.listen, &mut errs);
        if self.worker.fast_path || self.worker.fast_path_interactive {
            errs.push("worker.fast_path* follow [fast_path] dir and scope: leave them out".into());
        }
        if self.fast_path.dir.is_some() && self.ingest.listen.is_none() {
            errs.push(
                "fast_path needs [ingest] listen: its circuits' activity comes from the access log"
                    .into(),
            );
        }
        if self.keys.cookie_secret.len() < 32 {
            errs.push("keys.cookie_secret must be at least 32 bytes".into());
        }
        self.provider.check(&mut errs);
        self.session.check(&mut errs);
        self.plugins.check(&mut errs);
        self.check_ingest(&mut errs);
        self.redis.check(&mut errs);
        self.metrics.check("metrics", &mut errs);
        if let Err(e) = self
            .rate_limit
            .setup_per_address
            .check("rate_limit.setup_per_address")
        {
            errs.push(e);
        }
        ConfigError::check(errs)
    }

    fn check_ingest(&self, errs: &mut Vec<String>) {
        let i = &self.ingest;
        if let Some(addr) = i.listen {
            if !addr.ip().is_loopback() {
                errs.push(
                    "ingest.listen must be a loopback address (only the co-located Traefik \
                     posts access logs)"
                        .into(),
                );
            }
            if addr == self.listen {
                errs.push("ingest.listen must differ from listen".into());
            }
            if i.secret.as_ref().is_none_or(|s| s.len() < 32) {
                errs.push(
                    "ingest.secret of at least 32 characters is required with ingest.listen".into(),
                );
            }
        }
    }

    /// The port users and the Manager reach the worker API on: the TLS listener's if any.
    pub fn api_port(&self) -> u16 {
        self.tls.listen.map_or(self.listen.port(), |a| a.port())
    }

    pub fn authgate_url(&self) -> String {
        self.worker
            .authgate_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }

    pub fn router_wait(&self) -> Duration {
        Duration::from_millis(self.traefik.router_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn example_file_loads_and_env_overrides_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../traefik/authgate.example.toml");
        let env = BTreeMap::from([(
            "APPPROXY_AUTHGATE__SESSION__SETUP_MAX_USES".to_string(),
            "1".to_string(),
        )]);
        let cfg = Config::load(Some(&path), &env).unwrap();
        assert_eq!(cfg.session.setup_max_uses, 1);
        assert_eq!(cfg.worker.port_range, Some((10205, 10214)));
        assert_eq!(cfg.authgate_url(), "http://127.0.0.1:10201");
        // The registration is the `[worker]` spec with the API port of `listen`.
        let spec = crate::worker::registration(&cfg);
        assert_eq!(spec.api_port, 10201);
        assert_eq!(
            spec.protocol,
            appproxy_common::wire::Protocol::Http,
            "default"
        );
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_reported() {
        let env: BTreeMap<String, String> = [
            ("WORKER__AUTHORITY", "w"),
            ("WORKER__FRONTEND_MODE", "port"),
            ("WORKER__HOSTNAME", "h"),
            ("PROVIDER__URL", "ftp://x"),
            ("PROVIDER__WORKER_TOKEN", "short"),
            ("KEYS__PROVIDER_PUBLIC_KEY_FILE", "/k"),
            ("KEYS__COOKIE_SECRET", "short"),
            ("SESSION__SETUP_MAX_USES", "0"),
            ("INGEST__LISTEN", "0.0.0.0:10203"),
            ("INGEST__SECRET", "short"),
            ("WORKER__API_PORT", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v.to_string()))
        .collect();
        let text = Config::load(None, &env).unwrap_err().to_string();
        for want in [
            "worker.api_port is the port of `listen`",
            "port_range",
            "cookie_secret",
            "worker_token",
            "provider.url",
            "setup_max_uses",
            "ingest.listen must be a loopback",
            "ingest.secret",
        ] {
            assert!(text.contains(want), "{want} missing from: {text}");
        }
    }
}
