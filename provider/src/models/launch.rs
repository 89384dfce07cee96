//! Backend.AI's launch-flow requests: `POST /v2/conf` (`ConfRequestModel`) and the query of
//! `/v2/proxy/{token}/{session}/add` and `/v2/proxy/auth` (`AddRequestModel` /
//! `ProxyRequestModel`). Extra fields are ignored, as there.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use uuid::Uuid;

use super::IpList;
use crate::{domain::Protocol, error::ApiError};

/// `session` of `POST /v2/conf` (`project_id` is accepted as an alias of `group_id`).
#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct ConfSession {
    pub id: Option<Uuid>,
    pub user_uuid: Uuid,
    #[serde(alias = "project_id")]
    pub group_id: Uuid,
    pub access_key: Option<String>,
    #[serde(default)]
    pub domain_name: String,
}

/// `POST /v2/conf` (Backend.AI's `ConfRequestModel`; extra fields are ignored as there).
#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct ConfRequest {
    #[serde(default)]
    pub login_session_token: Option<String>,
    pub kernel_host: String,
    pub kernel_port: u16,
    pub session: ConfSession,
}

/// `envs` as an object or as JSON text (the WebUI sends `envs=<json>` in the query).
fn envs_any<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Map<String, Value>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Map(serde_json::Map<String, Value>),
        Text(String),
    }
    match Form::deserialize(d)? {
        Form::Map(m) => Ok(m),
        Form::Text(t) if t.trim().is_empty() => Ok(Default::default()),
        Form::Text(t) => serde_json::from_str(&t).map_err(serde::de::Error::custom),
    }
}

/// Query of `/v2/proxy/{token}/{session}/add` and `/v2/proxy/auth` (Backend.AI's
/// `AddRequestModel` / `ProxyRequestModel`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProxyQuery {
    pub app: String,
    /// `http`, `preopen`, `grpc`, `h2`, `tcp`, `vnc` or `rdp`.
    pub protocol: String,
    /// A JSON object, as text.
    #[serde(default, deserialize_with = "envs_any")]
    #[param(value_type = Option<String>)]
    pub envs: serde_json::Map<String, Value>,
    #[serde(default)]
    pub args: Option<String>,
    #[serde(default)]
    pub open_to_public: bool,
    #[serde(default)]
    pub allowed_client_ips: Option<IpList>,
    #[serde(default)]
    pub redirect: String,
    #[serde(default)]
    pub no_reuse: bool,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub subdomain: Option<String>,
    #[serde(default)]
    pub token: Option<Uuid>,
    #[serde(default)]
    pub session_id: Option<Uuid>,
}

/// Backend.AI's protocol names, mapped the way its coordinator stores them.
pub fn wire_protocol(p: &str) -> Result<Protocol, ApiError> {
    match p {
        "http" | "preopen" => Ok(Protocol::Http),
        "grpc" => Ok(Protocol::Grpc),
        "h2" => Ok(Protocol::H2),
        "tcp" | "vnc" | "rdp" => Ok(Protocol::Tcp),
        other => Err(ApiError::UnsupportedProtocol(format!(
            "unknown protocol {other:?}"
        ))),
    }
}
