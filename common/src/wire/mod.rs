//! The typed wire contract, shared by the provider (server), authgate (client), the e2e
//! harness and the bench: the protocol enums, the worker spec a worker registers with and its
//! one validation, the heartbeat, the circuit map authgate polls, the route-health report, and
//! the manager's circuit create request and responses ([`circuit`]). A field renamed on one
//! side is a compile error or a decode error, not a quiet gap.

pub mod circuit;

pub use appproxy_gatecore::origin::{normalize_origin, validate_host};
pub use circuit::{
    CircuitResponse, CreateCircuitRequest, CreateCircuitResponse, FrontendResponse, IpList, Route,
    RouteRequest,
};

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A wire enum with a fixed set of names.
macro_rules! wire_enum {
    ($name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }
        /// Its names, as a string enum.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }
        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$(Self::$variant),+];
            pub fn as_str(self) -> &'static str { match self { $(Self::$variant => $text),+ } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($text => Ok(Self::$variant),)+ _ => Err(format!("unknown {} {s:?}", stringify!($name))) }
            }
        }
    };
}

wire_enum!(Protocol { Http = "http", Grpc = "grpc", H2 = "h2", Tcp = "tcp" });
wire_enum!(AppMode { Interactive = "interactive", Inference = "inference" });
wire_enum!(FrontendMode { Port = "port", Wildcard = "wildcard", Path = "path" });
wire_enum!(WorkerStatus { Alive = "ALIVE", Lost = "LOST", Terminated = "TERMINATED" });

impl Protocol {
    /// Whether Traefik routes it as HTTP (`http`, `grpc`, `h2`) rather than raw TCP.
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }
}

/// A worker authority: 1-255 printable characters.
pub fn validate_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() || authority.len() > 255 || authority.chars().any(char::is_control) {
        return Err("authority must be 1-255 printable characters".into());
    }
    Ok(())
}

/// Most ports one worker may declare: each is a static Traefik entrypoint.
pub const MAX_PORTS_PER_WORKER: u32 = 4096;

/// An app filter of a worker (`filtered_apps_only`): a property the circuit must have.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFilter {
    pub key: String,
    pub value: String,
}

/// What a worker registers with (`PUT /api/worker`), Backend.AI's worker fields plus
/// `authgate_url`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    pub authority: String,
    pub frontend_mode: FrontendMode,
    /// `http` when absent.
    #[serde(default = "http_protocol")]
    pub protocol: Protocol,
    /// Host browsers use to reach this worker's Traefik.
    pub hostname: String,
    #[serde(default)]
    pub tls_listen: bool,
    #[serde(default)]
    pub tls_advertised: bool,
    /// The worker API's port (`/setup`); required (authgate sets it from `listen`).
    #[serde(default)]
    pub api_port: u16,
    #[serde(default)]
    pub port_range: Option<(u16, u16)>,
    #[serde(default)]
    pub wildcard_domain: Option<String>,
    /// The one traffic port of wildcard and path modes (the `apps` entry point).
    #[serde(default)]
    pub wildcard_traffic_port: Option<u16>,
    /// Extension, path mode: apps that run under their base URL (`/<session>/<app>/`, e.g.
    /// Jupyter with `base_url`) and get the prefix; every other app gets it stripped (Traefik
    /// sends it in `X-Forwarded-Prefix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_keep_prefix_apps: Vec<String>,
    /// Inference circuits are decided (private) or counted (public) inside Traefik by the
    /// fast-path plugin (set from authgate's `[fast_path] dir`); WebSocket upgrades of private
    /// ones still go through ForwardAuth.
    #[serde(default)]
    pub fast_path: bool,
    /// Interactive (cookie) circuits too (authgate's `[fast_path] scope = "all"`): Traefik
    /// builds a plugin instance per router that uses it, so this is for workers with few
    /// circuits.
    #[serde(default)]
    pub fast_path_interactive: bool,
    /// Take only requests matching `app_filters` (Backend.AI's dedicated workers).
    #[serde(default)]
    pub filtered_apps_only: bool,
    #[serde(default)]
    pub traefik_last_used_marker_path: Option<String>,
    #[serde(default = "both_traffics")]
    pub accepted_traffics: Vec<AppMode>,
    /// `[{key = "session.user_uuid", value = "…"}]`: requests this worker is meant for.
    #[serde(default)]
    pub app_filters: Vec<AppFilter>,
    /// Extension: where this worker's Traefik reaches authgate (authgate's default:
    /// `http://<listen>`).
    #[serde(default)]
    pub authgate_url: Option<String>,
    /// Extension: the ACME certificate resolver (a `certificatesResolvers` name of this
    /// worker's Traefik static config) that every TLS router of the worker names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_resolver: Option<String>,
    /// Extension: the names of the resolver's certificate, main name first, then SANs (e.g.
    /// `["*.apps.example.com"]` for one wildcard certificate by DNS-01). Empty: one certificate
    /// per circuit host (HTTP-01 / TLS-ALPN-01), or the worker's hostname in port mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_domains: Vec<String>,
}

/// A certificate name: a host name, or `*.` and a host name (a wildcard certificate).
fn validate_cert_domain(d: &str) -> Result<(), String> {
    validate_host(d.strip_prefix("*.").unwrap_or(d))
        .map_err(|e| format!("cert_domains: {d:?}: {e}"))
}

fn http_protocol() -> Protocol {
    Protocol::Http
}

fn both_traffics() -> Vec<AppMode> {
    vec![AppMode::Interactive, AppMode::Inference]
}

/// Why a worker spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    UnsupportedProtocol(String),
}

impl WorkerSpec {
    /// The one check of a worker spec: authgate's `--check-config` and the provider's
    /// registration run this same function.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Invalid(m));
        validate_authority(&self.authority).map_err(SpecError::Invalid)?;
        validate_host(&self.hostname).map_err(SpecError::Invalid)?;
        if self.api_port == 0 {
            return bad("api_port must be 1-65535".into());
        }
        match self.frontend_mode {
            FrontendMode::Port => match self.port_range {
                Some((lo, hi))
                    if lo >= 1 && lo <= hi && u32::from(hi - lo) < MAX_PORTS_PER_WORKER => {}
                _ => {
                    return bad(format!(
                        "port mode needs port_range [lo, hi] with 1 <= lo <= hi and at most \
                         {MAX_PORTS_PER_WORKER} ports"
                    ));
                }
            },
            FrontendMode::Wildcard => {
                let ok = self
                    .wildcard_domain
                    .as_deref()
                    .and_then(|d| d.strip_prefix('.'))
                    .is_some_and(|d| validate_host(d).is_ok());
                if !ok {
                    return bad(
                        "wildcard mode needs wildcard_domain like \".apps.example.com\"".into(),
                    );
                }
                if self.protocol == Protocol::Tcp {
                    return Err(SpecError::UnsupportedProtocol(
                        "tcp workers need port mode".into(),
                    ));
                }
            }
            FrontendMode::Path => {
                if self.protocol == Protocol::Tcp {
                    return Err(SpecError::UnsupportedProtocol(
                        "tcp workers need port mode".into(),
                    ));
                }
            }
        }
        if self.frontend_mode != FrontendMode::Path && !self.path_keep_prefix_apps.is_empty() {
            return bad("path_keep_prefix_apps is for path mode".into());
        }
        if self.path_keep_prefix_apps.len() > 100
            || (self.path_keep_prefix_apps.iter())
                .any(|a| a.is_empty() || a.len() > 64 || a.contains([',', ' ']))
        {
            return bad(
                "path_keep_prefix_apps: at most 100 app names of 1-64 characters, no ',' or ' '"
                    .into(),
            );
        }
        if let Some(u) = &self.authgate_url {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains(char::is_whitespace)
                && !u.contains(['`', '"', '?', '#']);
            if !ok {
                return bad("authgate_url must be an http(s) URL without query".into());
            }
        }
        if self
            .traefik_last_used_marker_path
            .as_ref()
            .is_some_and(|p| p.len() > 1024)
        {
            return bad("traefik_last_used_marker_path is too long".into());
        }
        if let Some(r) = &self.cert_resolver {
            let name_ok = !r.is_empty()
                && r.len() <= 64
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return bad("cert_resolver must be 1-64 letters, digits, '-' or '_'".into());
            }
            if !self.tls_listen {
                return bad("cert_resolver needs tls_listen (Traefik terminates TLS)".into());
            }
        } else if !self.cert_domains.is_empty() {
            return bad("cert_domains need cert_resolver".into());
        }
        if self.cert_domains.len() > 100 {
            return bad("cert_domains: at most 100 names".into());
        }
        for d in &self.cert_domains {
            validate_cert_domain(d).map_err(SpecError::Invalid)?;
        }
        Ok(())
    }
}

/// How fresh a worker's activity data in Redis is (the idle reaper trusts only fresh data).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IngestHealth {
    pub redis_ok: bool,
    /// Epoch ms of the last successful flush (0: never).
    pub last_flush_ms: i64,
    pub lag_seconds: Option<f64>,
}

/// `PATCH /api/worker/{id}` body (optional).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default)]
    pub ingest: Option<IngestHealth>,
}

/// `auth_plugin` of a circuit or endpoint: a plugin of the worker's plugin directory and its
/// JSON config (kept in SQL, handed to authgate over the worker API, never written to etcd).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPlugin {
    pub name: String,
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

impl AuthPlugin {
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        let name_ok = !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err("auth_plugin.name must be [a-z0-9_-]{1,64}".into());
        }
        if !self.config.is_object() {
            return Err("auth_plugin.config must be a JSON object".into());
        }
        if self.config.to_string().len() > 16 * 1024 {
            return Err("auth_plugin.config must be at most 16 KiB".into());
        }
        Ok(())
    }
}

/// What authgate needs of a circuit (`GET /api/worker/{id}/circuits?view=map`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitMapEntry {
    pub id: Uuid,
    pub protocol: Protocol,
    pub app_mode: AppMode,
    pub port: Option<u16>,
    pub session_ids: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_plugin: Option<AuthPlugin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// `host:port` of each route (`[v6]:port`): where Traefik's connections for this circuit
    /// go, so authgate can cut them when the circuit ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// The owner of an interactive circuit (its connections end with the user's revocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
}

/// A circuit that recently left a worker (deleted, reclaimed, its session ended, moved away):
/// where its connections went, so authgate cuts them even if it never saw the circuit.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedCircuit {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// The entrypoint port of a port-mode circuit (its client connections are its alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `GET /api/worker/{id}/circuits?view=map`: the worker's circuits and the ones that
/// recently ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerMap {
    pub circuits: Vec<CircuitMapEntry>,
    #[serde(default)]
    pub ended: Vec<EndedCircuit>,
}

/// `{"circuits": [...]}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitList<T> {
    pub circuits: Vec<T>,
}

/// `PUT /api/worker/{id}/route-health`: circuit → server URL → `UP`/`DOWN`, replacing the
/// worker's last report.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteHealthReport {
    pub circuits: HashMap<Uuid, BTreeMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkerSpec {
        WorkerSpec {
            authority: "w1".into(),
            frontend_mode: FrontendMode::Port,
            protocol: Protocol::Http,
            hostname: "apps.example.com".into(),
            tls_listen: false,
            tls_advertised: false,
            api_port: 10201,
            port_range: Some((10205, 10214)),
            wildcard_domain: None,
            wildcard_traffic_port: None,
            filtered_apps_only: false,
            traefik_last_used_marker_path: None,
            accepted_traffics: both_traffics(),
            app_filters: Vec::new(),
            authgate_url: None,
            cert_resolver: None,
            cert_domains: Vec::new(),
            path_keep_prefix_apps: Vec::new(),
            fast_path: false,
            fast_path_interactive: false,
        }
    }

    #[test]
    fn worker_specs_are_checked_once() {
        assert_eq!(spec().validate(), Ok(()));
        type Change = Box<dyn Fn(&mut WorkerSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            ("authority", Box::new(|s| s.authority = String::new())),
            ("host", Box::new(|s| s.hostname = "a b".into())),
            ("api_port", Box::new(|s| s.api_port = 0)),
            ("port_range", Box::new(|s| s.port_range = None)),
            ("port_range", Box::new(|s| s.port_range = Some((10, 9)))),
            ("port_range", Box::new(|s| s.port_range = Some((1, 5000)))),
            (
                "authgate_url",
                Box::new(|s| s.authgate_url = Some("ftp://x".into())),
            ),
            (
                "cert_resolver needs tls_listen",
                Box::new(|s| s.cert_resolver = Some("acme".into())),
            ),
            (
                "cert_resolver must be",
                Box::new(|s| {
                    s.tls_listen = true;
                    s.cert_resolver = Some("ac me".into());
                }),
            ),
            (
                "cert_domains need cert_resolver",
                Box::new(|s| s.cert_domains = vec!["a.example.com".into()]),
            ),
            (
                "cert_domains: \"*.*.x\"",
                Box::new(|s| {
                    s.tls_listen = true;
                    s.cert_resolver = Some("acme".into());
                    s.cert_domains = vec!["*.*.x".into()];
                }),
            ),
            (
                "authgate_url",
                Box::new(|s| s.authgate_url = Some("http://x?y".into())),
            ),
            (
                "wildcard_domain",
                Box::new(|s| s.frontend_mode = FrontendMode::Wildcard),
            ),
            (
                "wildcard_domain",
                Box::new(|s| {
                    s.frontend_mode = FrontendMode::Wildcard;
                    s.wildcard_domain = Some("apps.example.com".into());
                }),
            ),
            (
                "path_keep_prefix_apps is for path mode",
                Box::new(|s| s.path_keep_prefix_apps = vec!["jupyter".into()]),
            ),
            (
                "path_keep_prefix_apps: at most",
                Box::new(|s| {
                    s.frontend_mode = FrontendMode::Path;
                    s.path_keep_prefix_apps = vec!["a,b".into()];
                }),
            ),
        ];
        for (what, change) in cases {
            let mut s = spec();
            change(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
        let mut path = spec();
        path.frontend_mode = FrontendMode::Path;
        path.path_keep_prefix_apps = vec!["jupyter".into()];
        assert_eq!(path.validate(), Ok(()));
        path.protocol = Protocol::Tcp;
        assert!(matches!(
            path.validate(),
            Err(SpecError::UnsupportedProtocol(_))
        ));
        let mut tcp = spec();
        tcp.protocol = Protocol::Tcp;
        tcp.frontend_mode = FrontendMode::Wildcard;
        tcp.wildcard_domain = Some(".apps.example.com".into());
        assert!(matches!(
            tcp.validate(),
            Err(SpecError::UnsupportedProtocol(_))
        ));
    }

    #[test]
    fn origins_normalize() {
        for (raw, want) in [
            ("http://a.test", Some("http://a.test")),
            ("HTTPS://A.Test:443", Some("https://a.test")),
            ("http://a.test.:8080", Some("http://a.test:8080")),
            ("http://[::1]:80", Some("http://[::1]")),
            ("http://[::1]:81", Some("http://[::1]:81")),
            ("http://127.0.0.1:8080", Some("http://127.0.0.1:8080")),
            ("null", None),
            ("*", None),
            ("https://*.example.com", None),
            ("http://a.test/x", None),
            ("http://a.test?x", None),
            ("http://user@a.test", None),
            ("ftp://a.test", None),
            ("http://", None),
            ("http://a.test:0", None),
            ("http://a.test:99999", None),
            ("http://[nope]:1", None),
            ("http://[::1]x", None),
            ("https://€.com", None),
        ] {
            assert_eq!(normalize_origin(raw).as_deref(), want, "{raw}");
            if let Some(o) = normalize_origin(raw) {
                assert_eq!(normalize_origin(&o), Some(o.clone()), "idempotent");
            }
        }
    }
}
