//! Validated domain types and the pure rules on them: subdomain normalisation, lowest-free
//! port allocation, client-IP allowlists. No axum, sqlx or etcd types here.

use std::collections::BTreeSet;

pub use appproxy_common::ratelimit::Limit;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

pub use appproxy_common::wire::{
    AppFilter, AppMode, AuthPlugin, FrontendMode, Protocol, Route, WorkerSpec, WorkerStatus,
    normalize_origin, validate_authority, validate_host,
};

/// A worker: one authgate plus the Traefik instances that read its etcd prefix. What it
/// registered with is the wire contract's [`WorkerSpec`] (the one list of worker fields;
/// `Deref` reads through it); the provider adds identity and lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub id: Uuid,
    pub spec: WorkerSpec,
    pub nodes: i64,
    pub status: WorkerStatus,
    /// Set by the operator: no new circuits, existing ones kept.
    pub draining: bool,
    pub last_heartbeat_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl std::ops::Deref for Worker {
    type Target = WorkerSpec;
    fn deref(&self) -> &WorkerSpec {
        &self.spec
    }
}

impl Worker {
    pub fn use_tls(&self) -> bool {
        self.tls_listen || self.tls_advertised
    }

    /// Number of slots: the port range size, or -1 (unbounded) for wildcard workers.
    pub fn available_slots(&self) -> i64 {
        match (self.frontend_mode, self.port_range) {
            (FrontendMode::Port, Some((lo, hi))) => i64::from(hi) - i64::from(lo) + 1,
            (FrontendMode::Port, None) => 0,
            (FrontendMode::Wildcard | FrontendMode::Path, _) => -1,
        }
    }

    /// Base URL of the worker API as users reach it (`/setup` lives there).
    pub fn api_endpoint(&self) -> String {
        let scheme = if self.use_tls() { "https" } else { "http" };
        let default = if self.use_tls() { 443 } else { 80 };
        if self.api_port == default {
            format!("{scheme}://{}", self.hostname)
        } else {
            format!("{scheme}://{}:{}", self.hostname, self.api_port)
        }
    }

    /// Address Traefik uses for ForwardAuth and setup routing.
    pub fn authgate_base(&self) -> String {
        match &self.authgate_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://127.0.0.1:{}", self.api_port),
        }
    }
}

/// A `/v2/conf` grant: the Manager vouches that `session` may reach `kernel_host:kernel_port`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfToken {
    pub id: Uuid,
    pub login_session_token: Option<String>,
    pub kernel_host: String,
    pub kernel_port: u16,
    pub session_id: Uuid,
    pub user_uuid: Uuid,
    pub group_id: Uuid,
    pub access_key: String,
    pub domain_name: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Where a circuit is reachable on its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    Port(u16),
    Subdomain(String),
    /// Path mode: `/<session or endpoint id>/<app>` on the worker's one host and port.
    Path(String),
}

/// One routable app.
#[derive(Debug, Clone, PartialEq)]
pub struct Circuit {
    pub id: Uuid,
    pub app: String,
    pub protocol: Protocol,
    pub app_mode: AppMode,
    pub worker_id: Uuid,
    pub frontend: Frontend,
    pub envs: serde_json::Value,
    pub arguments: Option<String>,
    pub open_to_public: bool,
    pub allowed_client_ips: Vec<ipnet::IpNet>,
    pub user_id: Option<Uuid>,
    pub endpoint_id: Option<Uuid>,
    pub runtime_variant: Option<String>,
    pub routes: Vec<Route>,
    pub idle_timeout: Option<u64>,
    pub generation: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Load-balancing options of an inference circuit (from its endpoint).
    pub balancing: Option<Balancing>,
    /// WebAssembly auth plugin authgate runs for this circuit.
    pub auth_plugin: Option<AuthPlugin>,
    /// Origins besides the app's own allowed to make unsafe requests and WebSocket upgrades
    /// with the circuit's cookie (authgate's cross-origin guard).
    pub allowed_origins: Vec<String>,
}

/// Most extra origins one circuit may list.
pub const MAX_ALLOWED_ORIGINS: usize = 16;

/// Validate and normalize `allowed_origins`: `http(s)://host[:port]`, nothing else (no path,
/// no wildcard, no `null`); lowercase, without the scheme's default port.
pub fn normalize_origins(list: &[String]) -> Result<Vec<String>, String> {
    if list.len() > MAX_ALLOWED_ORIGINS {
        return Err(format!(
            "allowed_origins takes at most {MAX_ALLOWED_ORIGINS} origins"
        ));
    }
    let mut out = Vec::new();
    for o in list {
        let norm = normalize_origin(o).ok_or_else(|| {
            format!("allowed_origins: {o:?} is not an origin like https://host[:port]")
        })?;
        if !out.contains(&norm) {
            out.push(norm);
        }
    }
    Ok(out)
}

/// Backend.AI's `ModelHealthCheck` (field names, defaults and units as on the wire: seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthCheck {
    #[serde(default)]
    pub enable: bool,
    #[serde(default = "hc_interval")]
    pub interval: f64,
    #[serde(default = "hc_path")]
    pub path: String,
    #[serde(default = "hc_retries")]
    pub max_retries: u32,
    #[serde(default = "hc_wait")]
    pub max_wait_time: f64,
    #[serde(default = "hc_status")]
    pub expected_status_code: u16,
    #[serde(default = "hc_delay")]
    pub initial_delay: f64,
}

fn hc_interval() -> f64 {
    10.0
}
fn hc_path() -> String {
    "/health".into()
}
fn hc_retries() -> u32 {
    10
}
fn hc_wait() -> f64 {
    15.0
}
fn hc_status() -> u16 {
    200
}
fn hc_delay() -> f64 {
    60.0
}

impl HealthCheck {
    /// Bounds that keep the rendered Traefik values valid.
    pub fn validate(&self) -> Result<(), String> {
        let secs = |v: f64| v.is_finite() && (0.0..=86_400.0).contains(&v);
        if !(secs(self.interval) && self.interval >= 0.1) {
            return Err("health_check.interval must be 0.1-86400 seconds".into());
        }
        if !(secs(self.max_wait_time) && self.max_wait_time >= 0.1) {
            return Err("health_check.max_wait_time must be 0.1-86400 seconds".into());
        }
        if !secs(self.initial_delay) {
            return Err("health_check.initial_delay must be 0-86400 seconds".into());
        }
        if !(100..=599).contains(&self.expected_status_code) {
            return Err("health_check.expected_status_code must be 100-599".into());
        }
        let p = &self.path;
        if p.len() > 1024 || p.chars().any(|c| c.is_control() || c == ' ' || c == '`') {
            return Err("health_check.path must be a plain URL path".into());
        }
        Ok(())
    }
}

/// How an inference circuit balances its replicas.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Balancing {
    pub health_check: Option<HealthCheck>,
    pub sticky: bool,
    pub strategy: LoadBalancing,
    /// Requests per window for the whole endpoint (authorized requests only), or off.
    pub rate_limit: Option<Limit>,
}

/// Which replica takes the next request (an endpoint option, appproxy's extension; the three
/// Backend.AI documents). Each is one of Traefik 3.7's `loadBalancer/strategy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Weighted round robin (`wrr`, Traefik's default): replicas by `traffic_ratio`.
    #[default]
    RoundRobin,
    /// Power of two choices (`p2c`): of two random replicas, the one with fewer requests in
    /// flight. Traefik's p2c has no weights: a replica with `traffic_ratio` 0 is left out,
    /// the others are equal.
    LeastConnections,
    /// Least time (`leasttime`): the lowest mean time to first byte × (1 + requests in
    /// flight) ÷ weight, so `traffic_ratio` still counts.
    LeastTime,
}

impl LoadBalancing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::LeastTime => "least_time",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::RoundRobin, Self::LeastConnections, Self::LeastTime]
            .into_iter()
            .find(|b| b.as_str() == s)
    }

    /// Traefik's name for it.
    pub fn traefik(self) -> &'static str {
        match self {
            Self::RoundRobin => "wrr",
            Self::LeastConnections => "p2c",
            Self::LeastTime => "leasttime",
        }
    }
}

/// An inference endpoint row.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: Uuid,
    pub health_check: Option<HealthCheck>,
    pub sticky: bool,
    pub load_balancing: LoadBalancing,
    pub rate_limit: Option<Limit>,
}

impl Endpoint {
    pub fn health_check_enabled(&self) -> bool {
        self.health_check.as_ref().is_some_and(|h| h.enable)
    }
}

/// `scheme://host[:port]`, without the scheme's default port.
fn with_port(scheme: &str, host: &str, port: Option<u16>) -> String {
    match port {
        Some(80) if scheme == "http" => format!("{scheme}://{host}"),
        Some(443) if scheme == "https" => format!("{scheme}://{host}"),
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    }
}

/// `host:port`, with an IPv6 host in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Circuit {
    /// Distinct session ids of the routes, in route order.
    pub fn session_ids(&self) -> Vec<Uuid> {
        let mut seen = BTreeSet::new();
        self.routes
            .iter()
            .map(|r| r.session_id)
            .filter(|s| seen.insert(*s))
            .collect()
    }

    pub fn port(&self) -> Option<u16> {
        match self.frontend {
            Frontend::Port(p) => Some(p),
            Frontend::Subdomain(_) | Frontend::Path(_) => None,
        }
    }

    /// Path mode: the circuit's prefix (`/<id>/<app>`, no trailing `/`).
    pub fn path_prefix(&self) -> Option<&str> {
        match &self.frontend {
            Frontend::Path(p) => Some(p),
            _ => None,
        }
    }

    /// Where its routes lead (`host:port`, IPv6 hosts bracketed), in route order.
    pub fn backends(&self) -> Vec<String> {
        (self.routes.iter())
            .map(|r| host_port(&r.kernel_host, r.kernel_port))
            .collect()
    }

    /// What a worker's map says of it once it left the worker: where its connections went.
    pub fn ended(&self) -> appproxy_common::wire::EndedCircuit {
        appproxy_common::wire::EndedCircuit {
            id: self.id,
            backends: self.backends(),
            port: self.port(),
        }
    }

    pub fn subdomain(&self) -> Option<&str> {
        match &self.frontend {
            Frontend::Subdomain(s) => Some(s),
            Frontend::Port(_) | Frontend::Path(_) => None,
        }
    }

    /// The URL users open: the origin, and in path mode the prefix.
    pub fn url(&self, worker: &Worker) -> String {
        format!(
            "{}{}",
            self.origin(worker),
            self.path_prefix().unwrap_or("")
        )
    }

    /// `scheme://host[:port]` the app is served on.
    pub fn origin(&self, worker: &Worker) -> String {
        let scheme = match (self.protocol, worker.use_tls()) {
            (Protocol::Tcp, _) => "tcp",
            (_, true) => "https",
            (_, false) => "http",
        };
        match &self.frontend {
            Frontend::Port(p) => format!("{scheme}://{}:{p}", worker.hostname),
            Frontend::Subdomain(s) => {
                let domain = worker.wildcard_domain.as_deref().unwrap_or("");
                with_port(
                    scheme,
                    &format!("{s}{domain}"),
                    worker.wildcard_traffic_port,
                )
            }
            Frontend::Path(_) => with_port(scheme, &worker.hostname, worker.wildcard_traffic_port),
        }
    }
}

/// Lowest port of `lo..=hi` not in `taken`.
pub fn lowest_free_port(lo: u16, hi: u16, taken: &BTreeSet<u16>) -> Option<u16> {
    (lo..=hi).find(|p| !taken.contains(p))
}

/// Normalise a preferred subdomain as Backend.AI does: NFC, lowercase, `.` → `-`, other
/// characters outside `[a-z0-9-]` → `-` (non-ASCII labels become Punycode `xn--…`), collapse
/// `--`, trim to 63 characters, strip `-` at both ends. `None` when nothing usable remains.
pub fn normalize_subdomain(preferred: &str) -> Option<String> {
    let nfc: String = preferred.nfc().collect::<String>().to_lowercase();
    let mut parts = Vec::new();
    for label in nfc.split('.') {
        if label.is_ascii() {
            parts.push(label.to_string());
        } else {
            match idna::punycode::encode_str(label) {
                Some(p) => parts.push(format!("xn--{p}")),
                None => parts.push(String::new()),
            }
        }
    }
    let joined = parts.join("-");
    let mut out = String::with_capacity(joined.len());
    for c in joined.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        // Collapse runs of `-`, except the `xn--` marker of Punycode labels.
        if c == '-' && out.ends_with('-') && !out.ends_with("xn-") {
            continue;
        }
        out.push(c);
    }
    let trimmed: String = out.chars().take(63).collect();
    let trimmed = trimmed.trim_matches('-');
    if trimmed.is_empty() {
        None
    } else {
        Some(trimmed.to_string())
    }
}

/// `app-<8 hex>` from a fresh uuid.
pub fn random_subdomain() -> String {
    format!("app-{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// The subdomain to try at allocation `attempt`: the normalised preference (or a random
/// name) first, then that name's first 54 characters with `-<8 random hex>` appended. The
/// unique index decides which attempt wins.
pub fn subdomain_candidate(preferred: Option<&str>, attempt: usize) -> String {
    let base = preferred
        .and_then(normalize_subdomain)
        .unwrap_or_else(random_subdomain);
    if attempt == 0 {
        return base;
    }
    let head: String = base.chars().take(54).collect();
    format!(
        "{}-{}",
        head.trim_end_matches('-'),
        &Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A path-mode prefix: `/<id>/<app>` (Backend.AI's `/<session-id>/<service-name>/`), the app
/// name made URL-safe as a subdomain is; later attempts (the prefix is taken) add a suffix.
pub fn path_candidate(id: Uuid, app: &str, attempt: usize) -> String {
    format!(
        "/{}/{}",
        id.as_hyphenated(),
        subdomain_candidate(Some(app), attempt)
    )
}

/// A well-formed path-mode prefix made of the first two segments of `path` (`/<a>/<b>`, each
/// 1-64 of `[a-z0-9-]`, lowercased), or `None`. Only such a prefix is ever written into a
/// Traefik rule.
pub fn path_prefix_of(path: &str) -> Option<String> {
    let mut segs = path.strip_prefix('/')?.split('/');
    let (a, b) = (segs.next()?, segs.next()?);
    let plain = |s: &str| {
        (1..=64).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    };
    (plain(a) && plain(b)).then(|| format!("/{a}/{b}").to_ascii_lowercase())
}

/// Parse Backend.AI's comma-separated `allowed_client_ips` (CIDRs or bare IPs, v4 or v6).
pub fn parse_client_ips(text: &str) -> Result<Vec<ipnet::IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if let Ok(net) = s.parse::<ipnet::IpNet>() {
                Ok(net.trunc())
            } else if let Ok(ip) = s.parse::<std::net::IpAddr>() {
                Ok(ipnet::IpNet::from(ip))
            } else {
                Err(format!("{s:?} is not an IP address or CIDR"))
            }
        })
        .collect()
}

/// Validate a kernel host: an IP address or a DNS name (no scheme, path, port or spaces).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_origins_are_validated_and_normalized() {
        let ok =
            |l: &[&str]| normalize_origins(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ok(&[
                "HTTPS://Lab.Example.com:443",
                "http://127.0.0.1:8080",
                "http://[::1]:81",
                "https://[::1]"
            ])
            .unwrap(),
            vec![
                "https://lab.example.com",
                "http://127.0.0.1:8080",
                "http://[::1]:81",
                "https://[::1]"
            ]
        );
        assert_eq!(
            ok(&["https://a.b", "https://a.b:443"]).unwrap(),
            vec!["https://a.b"]
        );
        for bad in [
            "null",
            "*",
            "https://*.example.com",
            "https://a.b/path",
            "ftp://a.b",
            "https://",
            "https://a.b:0",
            "https://a.b:99999",
            "https://a.b:x",
            "https://user@a.b",
            "https://[nope]:1",
            "https://[::1]x",
            "https://€.com",
            "https://a.b?x",
        ] {
            assert!(ok(&[bad]).is_err(), "{bad}");
        }
        assert!(ok(&vec!["https://a.b"; MAX_ALLOWED_ORIGINS + 1]).is_err());
    }

    #[test]
    fn subdomain_normalisation() {
        let cases = [
            ("MyApp", Some("myapp")),
            ("my.app.v2", Some("my-app-v2")),
            ("a__b  c", Some("a-b-c")),
            ("--x--", Some("x")),
            ("!!!", None),
            ("", None),
            ("café", Some("xn--caf-dma")),
            ("bücher.shop", Some("xn--bcher-kva-shop")),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_subdomain(input).as_deref(),
                want,
                "input {input:?}"
            );
        }
        let long = "a".repeat(100);
        assert_eq!(normalize_subdomain(&long).unwrap().len(), 63);
    }

    #[test]
    fn path_prefixes_are_two_plain_segments() {
        let id = Uuid::parse_str("5e2c0000-0000-4000-8000-000000000001").unwrap();
        assert_eq!(
            path_candidate(id, "Jupyter Lab", 0),
            "/5e2c0000-0000-4000-8000-000000000001/jupyter-lab"
        );
        assert!(path_candidate(id, "lab", 1).starts_with(&format!("/{id}/lab-")));
        assert_eq!(path_prefix_of("/A1/lab/x?y"), Some("/a1/lab".into()));
        for bad in [
            "",
            "/",
            "/a",
            "//lab",
            "/a/l b",
            "/a/l`b",
            "a/b",
            "/a/b`) || Path(`/x",
        ] {
            assert_eq!(path_prefix_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn subdomain_candidates() {
        assert_eq!(subdomain_candidate(Some("Jupyter"), 0), "jupyter");
        let s = subdomain_candidate(Some("Jupyter"), 1);
        assert!(
            s.starts_with("jupyter-") && s.len() == "jupyter-".len() + 8,
            "{s}"
        );
        assert_ne!(s, subdomain_candidate(Some("Jupyter"), 2));
        let r = subdomain_candidate(None, 0);
        assert!(r.starts_with("app-") && r.len() == 12, "{r}");
        let long = "b".repeat(63);
        assert_eq!(subdomain_candidate(Some(&long), 0), long);
        assert_eq!(subdomain_candidate(Some(&long), 1).len(), 54 + 1 + 8);
    }

    #[test]
    fn lowest_free() {
        let taken: BTreeSet<u16> = [10, 11, 13].into();
        assert_eq!(lowest_free_port(10, 14, &taken), Some(12));
        let full: BTreeSet<u16> = (10..=14).collect();
        assert_eq!(lowest_free_port(10, 14, &full), None);
    }

    #[test]
    fn client_ips() {
        let nets = parse_client_ips("10.0.0.0/8, 192.168.1.5,::1, 2001:db8::/32").unwrap();
        assert_eq!(nets.len(), 4);
        assert_eq!(nets[1].to_string(), "192.168.1.5/32");
        assert!(parse_client_ips("10.0.0.0/33").is_err());
        assert!(parse_client_ips("evil`)||Host(`x").is_err());
    }

    #[test]
    fn hosts() {
        assert!(validate_host("10.0.0.5").is_ok());
        assert!(validate_host("::1").is_ok());
        assert!(validate_host("kernel-1.cluster.local").is_ok());
        for bad in ["", "a b", "http://x", "x:80", "x/y", "-a", "a..b", "x`)"] {
            assert!(validate_host(bad).is_err(), "{bad}");
        }
    }
}

/// Fixtures for the provider's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A worker spec: ports 10205-10206 or `.apps.example.com`, interactive traffic only.
    pub(crate) fn spec(authority: &str, mode: FrontendMode, protocol: Protocol) -> WorkerSpec {
        WorkerSpec {
            authority: authority.into(),
            frontend_mode: mode,
            protocol,
            hostname: "apps.example.com".into(),
            tls_listen: false,
            tls_advertised: false,
            api_port: 10201,
            port_range: (mode == FrontendMode::Port).then_some((10205, 10206)),
            wildcard_domain: (mode == FrontendMode::Wildcard).then(|| ".apps.example.com".into()),
            wildcard_traffic_port: None,
            filtered_apps_only: false,
            traefik_last_used_marker_path: None,
            accepted_traffics: vec![AppMode::Interactive],
            app_filters: vec![],
            authgate_url: None,
            cert_resolver: None,
            cert_domains: vec![],
            path_keep_prefix_apps: vec![],
            fast_path: false,
            fast_path_interactive: false,
        }
    }

    /// An ALIVE worker with that spec.
    pub(crate) fn worker(id: Uuid, spec: WorkerSpec) -> Worker {
        Worker {
            id,
            spec,
            nodes: 1,
            status: WorkerStatus::Alive,
            draining: false,
            last_heartbeat_ms: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }
}
