//! Typed provider configuration: a TOML file, then `APPPROXY_PROVIDER__*` environment
//! overrides, then validation that reports every problem at once.
//!
//! An override `APPPROXY_PROVIDER__ETCD__NAMESPACE=x` sets `[etcd] namespace = "x"`; values
//! that parse as TOML (numbers, booleans, arrays) keep their type, everything else is a string.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "APPPROXY_PROVIDER__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the REST API binds.
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
    pub reaper: ReaperConfig,
}

/// The idle reaper (needs `[redis] url`; without it nothing is reclaimed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaperConfig {
    #[serde(default = "default_reaper_interval")]
    pub interval_seconds: u64,
    /// Idle timeout of circuits created without one.
    #[serde(default = "default_idle_timeout")]
    pub default_idle_timeout_seconds: u64,
    /// A worker whose authgate has not flushed activity for this long is never reaped.
    #[serde(default = "default_ingest_lag")]
    pub max_ingest_lag_seconds: u64,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            interval_seconds: default_reaper_interval(),
            default_idle_timeout_seconds: default_idle_timeout(),
            max_ingest_lag_seconds: default_ingest_lag(),
        }
    }
}

fn default_reaper_interval() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    3600
}
fn default_ingest_lag() -> u64 {
    30
}

/// `POST /v2/conf` (the Manager's interactive-app grants).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfConfig {
    /// Lifetime of a grant; expired grants are refused and garbage-collected.
    #[serde(default = "default_conf_ttl")]
    pub token_ttl_seconds: u64,
    /// Backend.AI's Manager calls `/v2/conf` without a token; allow that only together with
    /// `allowed_kernel_networks`, so an open `/v2/conf` cannot proxy to arbitrary hosts.
    #[serde(default)]
    pub allow_unauthorized_configure_request: bool,
    /// Networks kernel addresses must lie in (IP literals only when set).
    #[serde(default)]
    pub allowed_kernel_networks: Vec<ipnet::IpNet>,
}

impl Default for ConfConfig {
    fn default() -> Self {
        Self {
            token_ttl_seconds: default_conf_ttl(),
            allow_unauthorized_configure_request: false,
            allowed_kernel_networks: Vec::new(),
        }
    }
}

fn default_conf_ttl() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of a setup link in seconds (short: it travels in a URL).
    #[serde(default = "default_setup_ttl")]
    pub setup_token_ttl_seconds: u64,
    /// Revocations older than this are deleted from Redis: every cookie issued before them has
    /// expired (keep it ≥ authgate's `session.cookie_ttl_seconds`; inference tokens that live
    /// longer are no longer covered by an older user revocation — delete the endpoint's tokens).
    #[serde(default = "default_revocation_retention")]
    pub revocation_retention_seconds: u64,
    /// How often expired revocations are pruned.
    #[serde(default = "default_revocation_prune_interval")]
    pub revocation_prune_interval_seconds: u64,
}

fn default_revocation_retention() -> u64 {
    30 * 24 * 3600
}
fn default_revocation_prune_interval() -> u64 {
    300
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`; revocations (`POST /v2/revocations`) need it.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path?mode=rwc` (default) or `postgres://…`.
    #[serde(default = "default_db_url")]
    pub url: String,
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    #[serde(default = "default_etcd_endpoints")]
    pub endpoints: Vec<String>,
    /// Namespace under which every worker's Traefik root key lives.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Prefix for the provider's own keys (leader lease); must not overlap `namespace`.
    #[serde(default = "default_control_prefix")]
    pub control_prefix: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    /// Most routes one circuit may carry.
    #[serde(default = "default_max_routes")]
    pub max_routes_per_circuit: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Full resync period in seconds.
    #[serde(default = "default_resync")]
    pub resync_seconds: u64,
    /// Most etcd operations per transaction (etcd's default `--max-txn-ops` is 128).
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
    /// Least time between the starts of two passes: an idle reconciler applies a change at
    /// once, a busy one gathers the changes of this window into one pass.
    #[serde(default = "default_min_interval")]
    pub min_interval_ms: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10200))
}
fn default_db_url() -> String {
    "sqlite://appproxy.db?mode=rwc".into()
}
fn default_pool() -> u32 {
    8
}
fn default_etcd_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:2379".into()]
}
fn default_namespace() -> String {
    "traefik".into()
}
fn default_control_prefix() -> String {
    "appproxy-control/".into()
}
fn default_body_limit() -> usize {
    256 * 1024
}
fn default_max_routes() -> usize {
    256
}
fn default_resync() -> u64 {
    30
}
fn default_max_txn_ops() -> usize {
    128
}
fn default_min_interval() -> u64 {
    100
}
fn default_setup_ttl() -> u64 {
    120
}
impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            setup_token_ttl_seconds: default_setup_ttl(),
            revocation_retention_seconds: default_revocation_retention(),
            revocation_prune_interval_seconds: default_revocation_prune_interval(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_db_url(),
            max_connections: default_pool(),
        }
    }
}
impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: default_etcd_endpoints(),
            namespace: default_namespace(),
            control_prefix: default_control_prefix(),
            user: None,
            password: None,
        }
    }
}
impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: default_body_limit(),
            max_routes_per_circuit: default_max_routes(),
        }
    }
}
impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            resync_seconds: default_resync(),
            max_txn_ops: default_max_txn_ops(),
            min_interval_ms: default_min_interval(),
        }
    }
}

pub use appproxy_common::config::ConfigError;

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

    /// Check cross-field rules; collect every violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let s = &self.secrets;
        if s.manager_token.len() < 16 {
            errs.push("secrets.manager_token must be at least 16 characters".into());
        }
        if s.worker_token.is_some() {
            errs.push(
                "secrets.worker_token was removed: enrol each worker (POST \
                 /v2/workers/credentials, SECURITY.md) or, to keep one token for every worker, \
                 set secrets.legacy_shared_worker_token"
                    .into(),
            );
        }
        if let Some(t) = &s.legacy_shared_worker_token {
            if t.len() < 16 {
                errs.push(
                    "secrets.legacy_shared_worker_token must be at least 16 characters".into(),
                );
            }
            if *t == s.manager_token {
                errs.push(
                    "secrets.manager_token and secrets.legacy_shared_worker_token must differ"
                        .into(),
                );
            }
        }
        let ns = &self.etcd.namespace;
        let cp = &self.etcd.control_prefix;
        if ns.is_empty() || ns.contains(char::is_whitespace) {
            errs.push("etcd.namespace must be a non-empty key without spaces".into());
        }
        if cp.is_empty() || cp.starts_with(ns.as_str()) || ns.starts_with(cp.as_str()) {
            errs.push(format!(
                "etcd.control_prefix {cp:?} must be non-empty and neither a prefix of nor \
                 prefixed by etcd.namespace {ns:?} (Traefik watches its root key as a raw prefix)"
            ));
        }
        if self.etcd.endpoints.is_empty() {
            errs.push("etcd.endpoints must not be empty".into());
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            errs.push(format!(
                "database.url {url:?} must start with sqlite: or postgres://"
            ));
        }
        if self.database.max_connections == 0 {
            errs.push("database.max_connections must be at least 1".into());
        }
        if !(2..=128 * 1024).contains(&self.reconcile.max_txn_ops) {
            errs.push("reconcile.max_txn_ops must be between 2 and 131072".into());
        }
        if self.reconcile.min_interval_ms > 10_000 {
            errs.push("reconcile.min_interval_ms must be at most 10000".into());
        }
        if self.reconcile.resync_seconds == 0 {
            errs.push("reconcile.resync_seconds must be at least 1".into());
        }
        if self.conf.allow_unauthorized_configure_request
            && self.conf.allowed_kernel_networks.is_empty()
        {
            errs.push(
                "conf.allow_unauthorized_configure_request needs conf.allowed_kernel_networks"
                    .into(),
            );
        }
        if !(1..=3600).contains(&self.reaper.interval_seconds) {
            errs.push("reaper.interval_seconds must be 1-3600".into());
        }
        if self.reaper.default_idle_timeout_seconds == 0 {
            errs.push("reaper.default_idle_timeout_seconds must be at least 1".into());
        }
        if !(3..=3600).contains(&self.reaper.max_ingest_lag_seconds) {
            errs.push("reaper.max_ingest_lag_seconds must be 3-3600".into());
        }
        if !(10..=7 * 24 * 3600).contains(&self.conf.token_ttl_seconds) {
            errs.push("conf.token_ttl_seconds must be between 10 and 604800".into());
        }
        if !(10..=600).contains(&self.auth.setup_token_ttl_seconds) {
            errs.push("auth.setup_token_ttl_seconds must be between 10 and 600".into());
        }
        if self.auth.revocation_retention_seconds < 3600 {
            errs.push("auth.revocation_retention_seconds must be at least 3600".into());
        }
        if !(1..=86_400).contains(&self.auth.revocation_prune_interval_seconds) {
            errs.push("auth.revocation_prune_interval_seconds must be 1-86400".into());
        }
        if let Some(u) = &self.redis.url
            && !(u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            errs.push(format!(
                "redis.url {u:?} must start with redis:// or rediss://"
            ));
        }
        if self.limits.max_body_bytes < 1024 {
            errs.push("limits.max_body_bytes must be at least 1024".into());
        }
        ConfigError::check(errs)
    }

    pub fn resync_interval(&self) -> Duration {
        Duration::from_secs(self.reconcile.resync_seconds)
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
