//! The manager's circuit API (`POST /v2/circuits` and the circuit views): request, response
//! and the route of a circuit, shared by the provider, the e2e harness and the benchmark. The
//! request rejects unknown fields; the responses follow Backend.AI's `SerializableCircuit`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::{AppMode, AuthPlugin, FrontendMode, Protocol};

/// One backend replica of a circuit (Backend.AI's `RouteInfo`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub route_id: Option<Uuid>,
    pub session_id: Uuid,
    pub session_name: Option<String>,
    pub kernel_host: String,
    pub kernel_port: u16,
    pub protocol: Protocol,
    pub traffic_ratio: f64,
}

/// `allowed_client_ips` as a list or Backend.AI's comma-separated string (sent as the string).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList(pub String);

impl<'de> Deserialize<'de> for IpList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Form::deserialize(d)? {
            Form::One(s) => IpList(s),
            Form::Many(v) => IpList(v.join(",")),
        })
    }
}

/// A comma-separated string or a list of CIDRs.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for IpList {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(String::schema())
            .item(Vec::<String>::schema())
            .description(Some(
                "Client CIDRs: a list, or Backend.AI's comma-separated string",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for IpList {}

impl Serialize for IpList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// One route of `POST /v2/circuits`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_id: Option<Uuid>,
    pub session_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    pub kernel_host: String,
    pub kernel_port: u16,
    /// The circuit's protocol when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default = "one")]
    pub traffic_ratio: f64,
}

fn one() -> f64 {
    1.0
}

impl RouteRequest {
    /// A route to `host:port` of `session`, weight 1.
    pub fn to(session_id: Uuid, host: &str, port: u16) -> RouteRequest {
        RouteRequest {
            route_id: None,
            session_id,
            session_name: None,
            kernel_host: host.into(),
            kernel_port: port,
            protocol: None,
            traffic_ratio: 1.0,
        }
    }
}

/// `POST /v2/circuits`: an interactive circuit, created directly.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCircuitRequest {
    pub app: String,
    #[serde(default = "http")]
    pub protocol: Protocol,
    /// Authority of the worker to place it on; chosen automatically when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub user_id: Uuid,
    #[serde(default)]
    pub open_to_public: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_client_ips: Option<IpList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envs: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    pub routes: Vec<RouteRequest>,
    /// Binds the returned setup link (and the cookie) to this WebUI login session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_session_token: Option<String>,
    /// Relative path the setup link lands on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<String>,
    /// Origins besides the app's own whose pages may make unsafe requests and WebSocket
    /// upgrades with the circuit's cookie (`https://host[:port]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// WebAssembly auth plugin (after the built-in checks; instead of them when public).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_plugin: Option<AuthPlugin>,
}

fn http() -> Protocol {
    Protocol::Http
}

impl CreateCircuitRequest {
    /// An HTTP app of `user` with these routes, everything else defaulted.
    pub fn new(app: &str, user_id: Uuid, routes: Vec<RouteRequest>) -> CreateCircuitRequest {
        CreateCircuitRequest {
            app: app.into(),
            protocol: Protocol::Http,
            worker: None,
            user_id,
            open_to_public: false,
            allowed_client_ips: None,
            port: None,
            subdomain: None,
            envs: None,
            arguments: None,
            idle_timeout: None,
            routes,
            login_session_token: None,
            redirect: None,
            allowed_origins: Vec::new(),
            auth_plugin: None,
        }
    }
}

/// Backend.AI's `SerializableCircuit`, plus `generation`, `idle_timeout` and `url`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitResponse {
    pub id: Uuid,
    pub app: String,
    pub protocol: Protocol,
    pub worker: Uuid,
    pub app_mode: AppMode,
    pub frontend_mode: FrontendMode,
    pub envs: serde_json::Value,
    pub arguments: Option<String>,
    pub open_to_public: bool,
    pub allowed_client_ips: Option<String>,
    pub port: Option<u16>,
    pub subdomain: Option<String>,
    pub user_id: Option<Uuid>,
    pub endpoint_id: Option<Uuid>,
    pub runtime_variant: Option<String>,
    pub route_info: Vec<Route>,
    pub session_ids: Vec<Uuid>,
    pub generation: i64,
    pub idle_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub auth_plugin: Option<AuthPlugin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontendResponse {
    pub mode: FrontendMode,
    pub port: Option<u16>,
    pub subdomain: Option<String>,
}

/// The answer to `POST /v2/circuits`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateCircuitResponse {
    pub id: Uuid,
    pub url: String,
    /// Short-lived link that gives the owner's browser its cookie (HTTP circuits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_url_expires_at: Option<i64>,
    pub frontend: FrontendResponse,
    pub worker: String,
    pub circuit: CircuitResponse,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_request_round_trips_and_unknown_fields_are_refused() {
        let mut req = CreateCircuitRequest::new(
            "jupyter",
            Uuid::nil(),
            vec![RouteRequest::to(Uuid::nil(), "127.0.0.1", 8888)],
        );
        req.allowed_client_ips = Some(IpList("10.0.0.0/8,::1/128".into()));
        let text = serde_json::to_string(&req).unwrap();
        let back: CreateCircuitRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.allowed_client_ips, req.allowed_client_ips);
        assert_eq!(back.routes[0].kernel_port, 8888);
        let list: IpList = serde_json::from_str(r#"["10.0.0.0/8", "::1/128"]"#).unwrap();
        assert_eq!(list.0, "10.0.0.0/8,::1/128");
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["evil"] = 1.into();
        assert!(serde_json::from_value::<CreateCircuitRequest>(v).is_err());
    }
}
