//! The API's wire models (serde), shared by handlers and services. Our own request models
//! reject unknown fields; Backend.AI's (`endpoint`, `launch`) ignore them as Backend.AI does.
//! Response models follow Backend.AI's `WorkerResponseModel` and `SerializableCircuit`, plus
//! our extensions. The worker API's types come from `appproxy_common::wire`.

pub mod answers;
pub mod endpoint;
pub mod launch;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::{
    domain::{
        Circuit, Frontend, FrontendMode, Route, Worker, WorkerStatus, parse_client_ips,
        validate_host,
    },
    error::ApiError,
};

pub use appproxy_common::wire::{
    CircuitList, CircuitMapEntry, CircuitResponse, CreateCircuitRequest, CreateCircuitResponse,
    FrontendResponse, IpList, RouteRequest, WorkerSpec,
};

#[derive(utoipa::ToSchema, Debug, Serialize)]
pub struct SlotResponse {
    pub frontend_mode: FrontendMode,
    pub in_use: bool,
    pub port: Option<u16>,
    pub subdomain: Option<String>,
    pub circuit_id: Option<Uuid>,
}

/// Backend.AI's `WorkerResponseModel`: the registered spec plus identity, load and lifecycle.
#[derive(utoipa::ToSchema, Debug, Serialize)]
pub struct WorkerResponse {
    pub id: Uuid,
    #[serde(flatten)]
    #[schema(inline)]
    pub spec: WorkerSpec,
    pub available_slots: i64,
    pub occupied_slots: i64,
    pub nodes: i64,
    pub status: WorkerStatus,
    /// No new circuits (`POST /v2/workers/{authority}/drain`); existing ones kept.
    pub draining: bool,
    pub traefik_root_key: String,
    pub last_heartbeat: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<SlotResponse>>,
    /// The worker's last report of its activity ingestion (from its heartbeat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestResponse>,
}

/// A worker's activity ingestion, as its last heartbeat reported it.
#[derive(utoipa::ToSchema, Debug, Serialize)]
pub struct IngestResponse {
    pub reported_at: String,
    /// Whether authgate reached Redis at its last flush.
    pub redis_ok: bool,
    /// When authgate last wrote activity to Redis.
    pub last_flush_at: String,
    /// Seconds since then, at the time of this answer.
    pub flush_age_seconds: i64,
}

impl IngestResponse {
    pub fn new(r: &crate::store::IngestReport, now_ms: i64) -> IngestResponse {
        IngestResponse {
            reported_at: iso(r.reported_ms),
            redis_ok: r.redis_ok,
            last_flush_at: iso(r.last_flush_ms),
            flush_age_seconds: (now_ms - r.last_flush_ms).max(0) / 1000,
        }
    }
}

pub fn iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl WorkerResponse {
    pub fn new(w: &Worker, occupied: i64, root_key: String) -> Self {
        WorkerResponse {
            id: w.id,
            spec: w.spec.clone(),
            available_slots: w.available_slots(),
            occupied_slots: occupied,
            nodes: w.nodes,
            status: w.status,
            draining: w.draining,
            traefik_root_key: root_key,
            last_heartbeat: iso(w.last_heartbeat_ms),
            created_at: iso(w.created_at_ms),
            updated_at: iso(w.updated_at_ms),
            slots: None,
            ingest: None,
        }
    }
}

/// The API's view of a circuit (with its URL when the worker is known).
pub fn circuit_response(c: &Circuit, worker: Option<&Worker>) -> CircuitResponse {
    let ips: Vec<String> = c.allowed_client_ips.iter().map(|n| n.to_string()).collect();
    CircuitResponse {
        id: c.id,
        app: c.app.clone(),
        protocol: c.protocol,
        worker: c.worker_id,
        app_mode: c.app_mode,
        frontend_mode: match c.frontend {
            Frontend::Port(_) => FrontendMode::Port,
            Frontend::Subdomain(_) => FrontendMode::Wildcard,
            Frontend::Path(_) => FrontendMode::Path,
        },
        envs: c.envs.clone(),
        arguments: c.arguments.clone(),
        open_to_public: c.open_to_public,
        allowed_client_ips: if ips.is_empty() {
            None
        } else {
            Some(ips.join(","))
        },
        port: c.port(),
        subdomain: c.subdomain().map(str::to_string),
        user_id: c.user_id,
        endpoint_id: c.endpoint_id,
        runtime_variant: c.runtime_variant.clone(),
        route_info: c.routes.clone(),
        session_ids: c.session_ids(),
        generation: c.generation,
        idle_timeout: c.idle_timeout,
        url: worker.map(|w| c.url(w)),
        auth_plugin: c.auth_plugin.clone(),
        allowed_origins: c.allowed_origins.clone(),
        created_at: iso(c.created_at_ms),
        updated_at: iso(c.updated_at_ms),
    }
}

/// What authgate needs of a circuit (the field names of `CircuitResponse`, a fraction of its
/// size).
pub fn map_entry(c: &Circuit) -> CircuitMapEntry {
    CircuitMapEntry {
        id: c.id,
        protocol: c.protocol,
        app_mode: c.app_mode,
        port: c.port(),
        session_ids: c.session_ids(),
        auth_plugin: c.auth_plugin.clone(),
        allowed_origins: c.allowed_origins.clone(),
        backends: c.backends(),
        user_id: c.user_id,
    }
}

/// A list of uuids as a JSON list or a comma-separated string.
#[derive(Debug, Clone, Default)]
pub struct UuidList(pub Vec<Uuid>);

impl<'de> Deserialize<'de> for UuidList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<Uuid>),
        }
        match Form::deserialize(d)? {
            Form::Many(v) => Ok(UuidList(v)),
            Form::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Uuid::parse_str(s).map_err(serde::de::Error::custom))
                .collect::<Result<_, _>>()
                .map(UuidList),
        }
    }
}

/// A list of uuids or a comma-separated string of them.
impl utoipa::PartialSchema for UuidList {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        let uuid = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)));
        OneOfBuilder::new()
            .item(ArrayBuilder::new().items(uuid))
            .item(String::schema())
            .description(Some("UUIDs: a list, or a comma-separated string"))
            .into()
    }
}

impl utoipa::ToSchema for UuidList {}

/// A `POST /v2/circuits` request that passed every check.
pub struct ValidCreate {
    pub routes: Vec<Route>,
    pub allowed_client_ips: Vec<ipnet::IpNet>,
    pub allowed_origins: Vec<String>,
}

/// Every check of a `POST /v2/circuits` request, before anything is placed or written.
pub fn validate_create(
    req: &CreateCircuitRequest,
    max_routes: usize,
) -> Result<ValidCreate, ApiError> {
    let routes = create_routes(req, max_routes)?;
    if let Some(p) = &req.auth_plugin {
        p.validate().map_err(ApiError::InvalidParams)?;
    }
    let allowed_client_ips = match &req.allowed_client_ips {
        Some(l) => parse_client_ips(&l.0).map_err(ApiError::InvalidParams)?,
        None => Vec::new(),
    };
    let allowed_origins =
        crate::domain::normalize_origins(&req.allowed_origins).map_err(ApiError::InvalidParams)?;
    Ok(ValidCreate {
        routes,
        allowed_client_ips,
        allowed_origins,
    })
}

/// Routes of the request, checked (app, sizes, hosts, ports, ratios, protocols).
fn create_routes(req: &CreateCircuitRequest, max_routes: usize) -> Result<Vec<Route>, ApiError> {
    let bad = |m: String| Err(ApiError::InvalidParams(m));
    if req.app.is_empty() || req.app.len() > 255 || req.app.chars().any(char::is_control) {
        return bad("app must be 1-255 printable characters".into());
    }
    if req.routes.is_empty() || req.routes.len() > max_routes {
        return bad(format!("routes must hold 1-{max_routes} entries"));
    }
    if let Some(a) = &req.arguments
        && a.len() > 1000
    {
        return bad("arguments must be at most 1000 characters".into());
    }
    if let Some(0) = req.port {
        return bad("port must be 1-65535".into());
    }
    let mut routes = Vec::new();
    for r in &req.routes {
        validate_host(&r.kernel_host).map_err(ApiError::InvalidParams)?;
        if r.kernel_port == 0 {
            return bad("kernel_port must be 1-65535".into());
        }
        if !(r.traffic_ratio.is_finite() && r.traffic_ratio >= 0.0) {
            return bad("traffic_ratio must be a finite number >= 0".into());
        }
        let protocol = r.protocol.unwrap_or(req.protocol);
        if protocol.is_http() != req.protocol.is_http() {
            return Err(ApiError::UnsupportedProtocol(
                "routes must match the circuit protocol".into(),
            ));
        }
        routes.push(Route {
            route_id: r.route_id,
            session_id: r.session_id,
            session_name: r.session_name.clone(),
            kernel_host: r.kernel_host.clone(),
            kernel_port: r.kernel_port,
            protocol,
            traffic_ratio: r.traffic_ratio,
        });
    }
    Ok(routes)
}

/// The answer to `POST /v2/circuits`.
pub fn create_response(
    c: &Circuit,
    worker: &Worker,
    link: Option<SetupLinkResponse>,
) -> CreateCircuitResponse {
    CreateCircuitResponse {
        id: c.id,
        url: c.url(worker),
        setup_url_expires_at: link.as_ref().map(|l| l.expires_at),
        setup_url: link.map(|l| l.setup_url),
        frontend: FrontendResponse {
            mode: worker.frontend_mode,
            port: c.port(),
            subdomain: c.subdomain().map(str::to_string),
        },
        worker: worker.authority.clone(),
        circuit: circuit_response(c, Some(worker)),
    }
}

/// `GET /v2/circuits` filters.
#[derive(utoipa::ToSchema, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListCircuitsQuery {
    #[serde(default)]
    pub session_id: Option<Uuid>,
    #[serde(default)]
    pub user_id: Option<Uuid>,
    /// Worker authority.
    #[serde(default)]
    pub worker: Option<String>,
}

/// `GET /api/slots`.
#[derive(utoipa::ToSchema, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsQuery {
    pub wsproxy_host: String,
    #[serde(default)]
    pub in_use: Option<bool>,
}

/// `DELETE /api/circuit/_/bulk`.
#[derive(utoipa::ToSchema, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkDeleteRequest {
    pub circuit_ids: UuidList,
}

/// `POST /v2/circuits/{id}/setup-link`.
#[derive(utoipa::ToSchema, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupLinkRequest {
    /// Must be the circuit's owner when given.
    #[serde(default)]
    pub user_id: Option<Uuid>,
    /// The WebUI login session; the cookie dies when it is revoked.
    #[serde(default)]
    pub login_session_token: Option<String>,
    /// Relative path to land on (anything else becomes `/`).
    #[serde(default)]
    pub redirect: Option<String>,
    /// SHA-256 hex of the browser's state nonce (from `/_appproxy/login`).
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(utoipa::ToSchema, Debug, Serialize)]
pub struct SetupLinkResponse {
    pub setup_url: String,
    /// Epoch seconds.
    pub expires_at: i64,
}

/// `POST /v2/revocations`.
#[derive(utoipa::ToSchema, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    #[serde(default)]
    pub user_id: Option<Uuid>,
    #[serde(default)]
    pub login_session_token: Option<String>,
}

impl RevocationRequest {
    /// Who is revoked: the user, the login session (by its hash), or both; at least one.
    pub fn subjects(&self) -> Result<Vec<crate::revoke::Subject>, ApiError> {
        use crate::revoke::Subject;
        let mut subjects = Vec::new();
        if let Some(u) = self.user_id {
            subjects.push(Subject::User(u.to_string()));
        }
        if let Some(t) = &self.login_session_token {
            if t.is_empty() {
                return Err(ApiError::InvalidParams(
                    "login_session_token must not be empty".into(),
                ));
            }
            subjects.push(Subject::LoginSession(
                appproxy_common::auth::login_session_hash(t),
            ));
        }
        if subjects.is_empty() {
            return Err(ApiError::InvalidParams(
                "give user_id and/or login_session_token".into(),
            ));
        }
        Ok(subjects)
    }
}
