//! Typed provider configuration: a TOML file, then `APPPROXY_PROVIDER__*` environment
//! overrides, then validation that reports every problem at once.
//!
//! An override `APPPROXY_PROVIDER__ETCD__NAMESPACE=x` sets `[etcd] namespace = "x"`; values
//! that parse as TOML (numbers, booleans, arrays) keep their type, everything else is a string.
//!
//! Each section declares its defaults once (its `impl Default`, used for missing fields and
//! a missing section alike) and checks its own fields (`check`).

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use appproxy_common::{
    ratelimit::Limit,
    tls::{ClientTls, ServerTls},
};
use serde::Deserialize;

pub use appproxy_common::config::ConfigError;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "APPPROXY_PROVIDER__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the REST API binds (default `127.0.0.1:10200`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Browser-facing base URL of this provider (`/status` `advertise_address`).
    #[serde(default)]
    pub advertise_base_url: Option<String>,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub etcd: EtcdConfig,
    pub secrets: Secrets,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub conf: ConfConfig,
    #[serde(default)]
    pub cors: CorsConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Who may read `/metrics`: `allowed_networks` (default loopback), `token` (a bearer).
    #[serde(default)]
    pub metrics: appproxy_common::metrics::MetricsAccess,
    #[serde(default)]
    pub reaper: ReaperConfig,
    #[serde(default)]
    pub worker: WorkerLiveness,
    #[serde(default)]
    pub backendai: BackendAiConfig,
    #[serde(default)]
    pub ha: HaConfig,
    /// The API over HTTPS: `cert_file` and `key_file` (PEM; re-read when they change). Plain
    /// HTTP when unset.
    #[serde(default)]
    pub tls: ServerTls,
}

/// Several providers on one PostgreSQL: every replica serves the API; one, elected with an
/// etcd lease on `<control_prefix>leader`, writes Traefik's config and runs the background
/// duties. A single provider elects itself the same way.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    /// This replica's name in the election (and in `/status`); default `<hostname>:<port>`.
    /// Must differ between replicas: a replica that finds its own name on the leader key at
    /// start takes the key over at once (it is its own previous process).
    pub node_id: Option<String>,
    /// The leader's lease: a leader that cannot renew it for this long stops writing, and a
    /// follower takes over at most this long after the leader died.
    pub lease_ttl_seconds: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            lease_ttl_seconds: 5,
        }
    }
}

impl HaConfig {
    fn check(&self, errs: &mut Vec<String>) {
        if !(2..=60).contains(&self.lease_ttl_seconds) {
            errs.push("ha.lease_ttl_seconds must be 2-60".into());
        }
        if let Some(n) = &self.node_id
            && (n.is_empty() || n.len() > 128 || n.chars().any(|c| c.is_control()))
        {
            errs.push("ha.node_id must be 1-128 printable characters".into());
        }
    }
}

impl Config {
    /// This replica's election name: `ha.node_id`, or `<hostname>:<listen port>`.
    pub fn node_id(&self) -> String {
        self.ha.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "provider".into());
            format!("{host}:{}", self.listen.port())
        })
    }
}

/// Backend.AI integration: the Manager's event bus (its stream-role Redis, DB 4 in a default
/// install), from which ended sessions remove their circuits. Off when unset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendAiConfig {
    pub events_redis_url: Option<String>,
    /// `[backendai.tls]`: CA and client certificate for a `rediss://` events URL.
    pub tls: ClientTls,
}

impl BackendAiConfig {
    fn check(&self, errs: &mut Vec<String>) {
        check_redis(
            "backendai.events_redis_url",
            &self.events_redis_url,
            &self.tls,
            errs,
        );
    }
}

/// A Redis URL (when set) and its TLS section.
fn check_redis(what: &str, url: &Option<String>, tls: &ClientTls, errs: &mut Vec<String>) {
    match url {
        Some(u) => appproxy_common::tls::check_redis(what, u, tls, errs),
        None if tls.is_set() => errs.push(format!("{what}: TLS files are named without a URL")),
        None => {}
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10200))
}

/// Worker liveness: a worker without a heartbeat for `heartbeat_timeout_seconds` becomes
/// `LOST` (no new circuits, no reuse; its inference circuits move to a worker that can keep
/// their URL); a heartbeat or a registration makes it `ALIVE` again.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerLiveness {
    pub heartbeat_timeout_seconds: u64,
}

impl Default for WorkerLiveness {
    fn default() -> Self {
        Self {
            heartbeat_timeout_seconds: 30,
        }
    }
}

impl WorkerLiveness {
    fn check(&self, errs: &mut Vec<String>) {
        if !(3..=3600).contains(&self.heartbeat_timeout_seconds) {
            errs.push("worker.heartbeat_timeout_seconds must be 3-3600".into());
        }
    }

    /// How often liveness is checked: a third of the timeout, at most every 5 s.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs((self.heartbeat_timeout_seconds / 3).clamp(1, 5))
    }
}

/// The idle reaper (needs `[redis] url`; without it nothing is reclaimed).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReaperConfig {
    pub interval_seconds: u64,
    /// Idle timeout of circuits created without one.
    pub default_idle_timeout_seconds: u64,
    /// A worker whose authgate has not flushed activity for this long is never reaped.
    pub max_ingest_lag_seconds: u64,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            interval_seconds: 10,
            default_idle_timeout_seconds: 3600,
            max_ingest_lag_seconds: 30,
        }
    }
}

impl ReaperConfig {
    fn check(&self, errs: &mut Vec<String>) {
        if !(1..=3600).contains(&self.interval_seconds) {
            errs.push("reaper.interval_seconds must be 1-3600".into());
        }
        if self.default_idle_timeout_seconds == 0 {
            errs.push("reaper.default_idle_timeout_seconds must be at least 1".into());
        }
        if !(3..=3600).contains(&self.max_ingest_lag_seconds) {
            errs.push("reaper.max_ingest_lag_seconds must be 3-3600".into());
        }
    }
}

/// Cross-origin access per route group (`api::cors`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins the WebUI's launch routes (`/v2/conf`, `/v2/proxy/*`) answer: `["*"]` as
    /// Backend.AI's webserver does.
    pub launch_origins: Vec<String>,
    /// Origins the management API answers (default: none).
    pub api_origins: Vec<String>,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            launch_origins: vec!["*".into()],
            api_origins: Vec::new(),
        }
    }
}

impl CorsConfig {
    fn check(&self, errs: &mut Vec<String>) {
        for (key, list) in [
            ("launch_origins", &self.launch_origins),
            ("api_origins", &self.api_origins),
        ] {
            for o in list {
                if o != "*" && crate::domain::normalize_origin(o).as_deref() != Some(o.as_str()) {
                    errs.push(format!(
                        "cors.{key}: {o:?} is not \"*\" or an origin like https://host[:port] (lowercase, no path)"
                    ));
                }
            }
        }
    }
}

/// Rate limits on the API, counted in Redis so every replica shares them (`api::ratelimit`).
/// Without `[redis] url` nothing is counted (the start-up log says so).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The launch routes (`/v2/conf`, `/v2/proxy/*`), per client address.
    pub launch_per_address: Limit,
    /// The management API, per token (the Manager's, or each caller's); requests without a
    /// token count per address. Off by default: a Manager's bulk syncs come in bursts.
    pub api_per_token: Limit,
    /// Peers (CIDRs) whose `X-Forwarded-For` is believed: the client is the last address in
    /// it that is not one of them. Empty: the connecting address is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            launch_per_address: Limit::per_minute(300),
            api_per_token: Limit::OFF,
            trusted_proxies: Vec::new(),
        }
    }
}

impl RateLimitConfig {
    fn check(&self, errs: &mut Vec<String>) {
        for (what, l) in [
            ("rate_limit.launch_per_address", &self.launch_per_address),
            ("rate_limit.api_per_token", &self.api_per_token),
        ] {
            if let Err(e) = l.check(what) {
                errs.push(e);
            }
        }
    }
}

/// `POST /v2/conf` (the Manager's interactive-app grants).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfConfig {
    /// Lifetime of a grant; expired grants are refused and garbage-collected.
    pub token_ttl_seconds: u64,
    /// Backend.AI's Manager calls `/v2/conf` without a token; allow that only together with
    /// `allowed_kernel_networks`, so an open `/v2/conf` cannot proxy to arbitrary hosts.
    pub allow_unauthorized_configure_request: bool,
    /// Networks kernel addresses must lie in (IP literals only when set).
    pub allowed_kernel_networks: Vec<ipnet::IpNet>,
}

impl Default for ConfConfig {
    fn default() -> Self {
        Self {
            token_ttl_seconds: 600,
            allow_unauthorized_configure_request: false,
            allowed_kernel_networks: Vec::new(),
        }
    }
}

impl ConfConfig {
    fn check(&self, errs: &mut Vec<String>) {
        if self.allow_unauthorized_configure_request && self.allowed_kernel_networks.is_empty() {
            errs.push(
                "conf.allow_unauthorized_configure_request needs conf.allowed_kernel_networks"
                    .into(),
            );
        }
        if !(10..=7 * 24 * 3600).contains(&self.token_ttl_seconds) {
            errs.push("conf.token_ttl_seconds must be between 10 and 604800".into());
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of a setup link in seconds (short: it travels in a URL).
    pub setup_token_ttl_seconds: u64,
    /// Revocations older than this are deleted from Redis: every cookie issued before them has
    /// expired (keep it ≥ authgate's `session.cookie_ttl_seconds`; inference tokens that live
    /// longer are no longer covered by an older user revocation — delete the endpoint's tokens).
    pub revocation_retention_seconds: u64,
    /// How often expired revocations are pruned.
    pub revocation_prune_interval_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            setup_token_ttl_seconds: 120,
            revocation_retention_seconds: 30 * 24 * 3600,
            revocation_prune_interval_seconds: 300,
        }
    }
}

impl AuthConfig {
    fn check(&self, errs: &mut Vec<String>) {
        if !(10..=600).contains(&self.setup_token_ttl_seconds) {
            errs.push("auth.setup_token_ttl_seconds must be between 10 and 600".into());
        }
        if self.revocation_retention_seconds < 3600 {
            errs.push("auth.revocation_retention_seconds must be at least 3600".into());
        }
        if !(1..=86_400).contains(&self.revocation_prune_interval_seconds) {
            errs.push("auth.revocation_prune_interval_seconds must be 1-86400".into());
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` or `rediss://…` (TLS); revocations (`POST /v2/revocations`)
    /// need it.
    pub url: Option<String>,
    /// `[redis.tls]`: CA and client certificate for a `rediss://` URL.
    pub tls: ClientTls,
}

impl RedisConfig {
    fn check(&self, errs: &mut Vec<String>) {
        check_redis("redis.url", &self.url, &self.tls, errs);
    }

    /// The client for `url` (TLS per `[redis.tls]`), or `None` without a URL.
    pub fn client(&self) -> anyhow::Result<Option<redis::Client>> {
        Ok(self
            .url
            .as_deref()
            .map(|u| appproxy_common::tls::redis_client(u, &self.tls))
            .transpose()?)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path?mode=rwc` (default) or `postgres://…`.
    pub url: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://appproxy.db?mode=rwc".into(),
            max_connections: 8,
        }
    }
}

impl DatabaseConfig {
    fn check(&self, errs: &mut Vec<String>) {
        let url = &self.url;
        let known = ["sqlite:", "postgres://", "postgresql://"];
        if !known.iter().any(|k| url.starts_with(k)) {
            errs.push(format!(
                "database.url {url:?} must start with sqlite: or postgres://"
            ));
        }
        if self.max_connections == 0 {
            errs.push("database.max_connections must be at least 1".into());
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Namespace under which every worker's Traefik root key lives.
    pub namespace: String,
    /// Prefix for the provider's own keys (leader lease); must not overlap `namespace`.
    pub control_prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// `[etcd.tls]`: CA and client certificate for `https://` endpoints.
    pub tls: ClientTls,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            namespace: "traefik".into(),
            control_prefix: "appproxy-control/".into(),
            user: None,
            password: None,
            tls: ClientTls::default(),
        }
    }
}

impl EtcdConfig {
    fn check(&self, errs: &mut Vec<String>) {
        let (ns, cp) = (&self.namespace, &self.control_prefix);
        if ns.is_empty() || ns.contains(char::is_whitespace) {
            errs.push("etcd.namespace must be a non-empty key without spaces".into());
        }
        if cp.is_empty() || cp.starts_with(ns.as_str()) || ns.starts_with(cp.as_str()) {
            errs.push(format!(
                "etcd.control_prefix {cp:?} must be non-empty and neither a prefix of nor \
                 prefixed by etcd.namespace {ns:?} (Traefik watches its root key as a raw prefix)"
            ));
        }
        if self.endpoints.is_empty() {
            errs.push("etcd.endpoints must not be empty".into());
        }
        let secure = self.endpoints.iter().filter(|e| e.starts_with("https://"));
        match secure.count() {
            0 if self.tls.is_set() => errs.push(
                "etcd.tls names TLS files but no endpoint is https:// (they would be unused)"
                    .into(),
            ),
            0 => {}
            n if n != self.endpoints.len() => errs.push(
                "etcd.endpoints must be all https:// or all plain (a mixed list would send \
                 credentials in clear to some members)"
                    .into(),
            ),
            _ => self.tls.check("etcd.tls", errs),
        }
        for e in &self.endpoints {
            if e.contains("://") && !(e.starts_with("http://") || e.starts_with("https://")) {
                errs.push(format!(
                    "etcd endpoint {e:?} must be http://, https:// or host:port"
                ));
            }
        }
        if self.user.is_some() != self.password.is_some() {
            errs.push("etcd.user and etcd.password go together".into());
        }
    }

    /// Whether the endpoints are TLS ones.
    pub fn secure(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Token the platform manager presents.
    pub manager_token: String,
    /// Legacy: one token that every worker shares (Backend.AI's model). Off unless set; its
    /// holder may act for *any* worker, so prefer per-worker credentials
    /// (`POST /v2/workers/credentials`). Must differ from the manager token.
    #[serde(default)]
    pub legacy_shared_worker_token: Option<String>,
    /// Removed (it was the shared worker token); kept only to explain the replacement.
    #[serde(default)]
    pub worker_token: Option<String>,
    /// Ed25519 private key (PKCS#8 PEM) that signs setup and inference tokens; authgate holds
    /// only the public half.
    pub signing_key_file: String,
}

impl Secrets {
    fn check(&self, errs: &mut Vec<String>) {
        if self.manager_token.len() < 16 {
            errs.push("secrets.manager_token must be at least 16 characters".into());
        }
        if self.worker_token.is_some() {
            errs.push(
                "secrets.worker_token was removed: enrol each worker (POST \
                 /v2/workers/credentials, SECURITY.md) or, to keep one token for every worker, \
                 set secrets.legacy_shared_worker_token"
                    .into(),
            );
        }
        if let Some(t) = &self.legacy_shared_worker_token {
            if t.len() < 16 {
                errs.push(
                    "secrets.legacy_shared_worker_token must be at least 16 characters".into(),
                );
            }
            if *t == self.manager_token {
                errs.push(
                    "secrets.manager_token and secrets.legacy_shared_worker_token must differ"
                        .into(),
                );
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most routes one circuit may carry.
    pub max_routes_per_circuit: usize,
    /// Requests the API works on at once; more wait their turn (each holds SQL rows and JSON
    /// while it runs, so this bounds the provider's memory under a flood).
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_routes_per_circuit: 256,
            max_concurrent_requests: 128,
        }
    }
}

impl Limits {
    fn check(&self, errs: &mut Vec<String>) {
        if self.max_body_bytes < 1024 {
            errs.push("limits.max_body_bytes must be at least 1024".into());
        }
        if !(1..=65_536).contains(&self.max_concurrent_requests) {
            errs.push("limits.max_concurrent_requests must be 1-65536".into());
        }
    }
}

/// Traefik 3.7.15's etcd provider rebuilds from 10,000 keys in 166 ms of CPU on an idle 2-core
/// VM (`deploy/traefik-rebuild-cost`, BENCHMARKS.md "pacing"); ×6 for a busy host where Traefik
/// shares the cores with its traffic. See `reconcile::pace`.
pub const TRAEFIK_REBUILD_MS_AT_10K_KEYS: u64 = 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Full resync period in seconds.
    pub resync_seconds: u64,
    /// Most etcd operations per transaction. Traefik rebuilds its whole configuration for
    /// every transaction, so fewer, larger ones make a burst cheaper: run etcd with
    /// `--max-txn-ops=1024` (its default is 128). Against an etcd that refuses this many, the
    /// provider halves it (not below 128) and says so in its log.
    pub max_txn_ops: usize,
    /// Least time between the starts of two passes: an idle reconciler applies a change at
    /// once, a busy one gathers the changes of this window into one pass.
    pub min_interval_ms: u64,
    /// Time the workers' Traefik is assumed to need to rebuild its configuration from a prefix
    /// of 10,000 keys (it does so for every transaction); scaled with the square of a worker's
    /// key count, it spaces the transactions to that worker. 0 turns pacing off.
    pub traefik_rebuild_ms_at_10k_keys: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            resync_seconds: 30,
            max_txn_ops: 1024,
            min_interval_ms: 100,
            traefik_rebuild_ms_at_10k_keys: TRAEFIK_REBUILD_MS_AT_10K_KEYS,
        }
    }
}

impl ReconcileConfig {
    fn check(&self, errs: &mut Vec<String>) {
        if !(2..=128 * 1024).contains(&self.max_txn_ops) {
            errs.push("reconcile.max_txn_ops must be between 2 and 131072".into());
        }
        if self.min_interval_ms > 10_000 {
            errs.push("reconcile.min_interval_ms must be at most 10000".into());
        }
        if self.traefik_rebuild_ms_at_10k_keys > 600_000 {
            errs.push("reconcile.traefik_rebuild_ms_at_10k_keys must be at most 600000".into());
        }
        if self.resync_seconds == 0 {
            errs.push("reconcile.resync_seconds must be at least 1".into());
        }
    }
}

impl Config {
    /// Load from an optional file plus the given environment (name → value).
    pub fn load(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let cfg: Config = appproxy_common::config::load(path, env, ENV_PREFIX)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every section; collect every violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        self.secrets.check(&mut errs);
        self.etcd.check(&mut errs);
        self.database.check(&mut errs);
        self.reconcile.check(&mut errs);
        self.conf.check(&mut errs);
        self.cors.check(&mut errs);
        self.rate_limit.check(&mut errs);
        self.metrics.check("metrics", &mut errs);
        self.reaper.check(&mut errs);
        self.auth.check(&mut errs);
        self.redis.check(&mut errs);
        self.limits.check(&mut errs);
        self.worker.check(&mut errs);
        self.backendai.check(&mut errs);
        self.ha.check(&mut errs);
        self.tls.check("tls", &mut errs);
        if let Some(u) = &self.advertise_base_url
            && self.tls.files().is_some()
            && u.starts_with("http://")
        {
            errs.push(format!(
                "advertise_base_url {u:?} is http:// but the API is served over TLS ([tls])"
            ));
        }
        ConfigError::check(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_and_defaults() {
        let cfg = Config::load(
            None,
            &env(&[
                (
                    "APPPROXY_PROVIDER__SECRETS__MANAGER_TOKEN",
                    "m".repeat(20).as_str(),
                ),
                ("APPPROXY_PROVIDER__SECRETS__SIGNING_KEY_FILE", "/k.pem"),
                ("APPPROXY_PROVIDER__LISTEN", "127.0.0.1:1234"),
                ("APPPROXY_PROVIDER__RECONCILE__MAX_TXN_OPS", "64"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 1234);
        assert_eq!(cfg.reconcile.max_txn_ops, 64);
        // A partly given section keeps its other defaults (declared once, in its Default).
        assert_eq!(cfg.reconcile.resync_seconds, 30);
        assert_eq!(cfg.reconcile.min_interval_ms, 100);
        assert_eq!(cfg.limits.max_body_bytes, 256 * 1024);
        assert_eq!(cfg.etcd.namespace, "traefik");
        assert_eq!(
            cfg.secrets.legacy_shared_worker_token, None,
            "the shared worker token is off unless configured"
        );
    }

    #[test]
    fn all_errors_reported_together() {
        let err = Config::load(
            None,
            &env(&[
                ("APPPROXY_PROVIDER__SECRETS__MANAGER_TOKEN", "short"),
                (
                    "APPPROXY_PROVIDER__SECRETS__LEGACY_SHARED_WORKER_TOKEN",
                    "short",
                ),
                (
                    "APPPROXY_PROVIDER__SECRETS__WORKER_TOKEN",
                    "w".repeat(20).as_str(),
                ),
                ("APPPROXY_PROVIDER__SECRETS__SIGNING_KEY_FILE", "/k.pem"),
                ("APPPROXY_PROVIDER__ETCD__CONTROL_PREFIX", "traefik-cp/"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("manager_token must be at least"), "{text}");
        assert!(text.contains("must differ"), "{text}");
        assert!(
            text.contains("legacy_shared_worker_token must be at least"),
            "{text}"
        );
        assert!(text.contains("worker_token was removed"), "{text}");
        assert!(text.contains("control_prefix"), "{text}");
    }

    #[test]
    fn unknown_fields_rejected() {
        let err = Config::load(
            None,
            &env(&[
                (
                    "APPPROXY_PROVIDER__SECRETS__MANAGER_TOKEN",
                    "m".repeat(20).as_str(),
                ),
                (
                    "APPPROXY_PROVIDER__SECRETS__WORKER_TOKEN",
                    "w".repeat(20).as_str(),
                ),
                ("APPPROXY_PROVIDER__SECRETS__SIGNING_KEY_FILE", "/k.pem"),
                ("APPPROXY_PROVIDER__BOGUS", "1"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
