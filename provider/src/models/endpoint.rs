//! Inference endpoint requests, as Backend.AI's Manager sends them. They ignore unknown
//! fields, as Backend.AI's pydantic models do, so a newer Manager keeps working; everything we
//! read is validated before anything is written.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    domain::{HealthCheck, Protocol, Route, validate_host},
    error::ApiError,
};

/// `tags.endpoint` of an endpoint item.
#[derive(utoipa::ToSchema, Debug, Default, Deserialize)]
pub struct EndpointTag {
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    pub runtime_variant: Option<String>,
    #[serde(default)]
    pub existing_url: Option<String>,
}

#[derive(utoipa::ToSchema, Debug, Default, Deserialize)]
pub struct EndpointTags {
    #[serde(default)]
    pub session: serde_json::Map<String, Value>,
    #[serde(default)]
    pub endpoint: EndpointTag,
}

/// Backend.AI's `CreateEndpointItem` / `EndpointCreationRequestModel`, plus `sticky`,
/// `load_balancing`, `rate_limit` and `auth_plugin`.
#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct EndpointItem {
    #[serde(default, alias = "endpoint_id")]
    pub deployment_id: Option<Uuid>,
    pub service_name: String,
    #[serde(default)]
    pub tags: EndpointTags,
    #[serde(default)]
    pub open_to_public: bool,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub subdomain: Option<String>,
    /// appproxy extension: sticky sessions across replicas.
    #[serde(default)]
    pub sticky: Option<bool>,
    /// appproxy extension: which replica takes the next request (`round_robin` by
    /// `traffic_ratio`, `least_connections`, `least_time`); absent on a sync: unchanged.
    #[serde(default)]
    pub load_balancing: Option<crate::domain::LoadBalancing>,
    /// appproxy extension: the whole endpoint's rate limit (`{requests, window_seconds}`,
    /// authorized requests only; `requests = 0` turns it off); absent on a sync: unchanged.
    #[serde(default)]
    pub rate_limit: Option<crate::domain::Limit>,
    /// appproxy extension: a WebAssembly auth plugin (e.g. API keys).
    #[serde(default)]
    pub auth_plugin: Option<crate::domain::AuthPlugin>,
}

impl EndpointItem {
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: &str| Err(ApiError::InvalidParams(m.into()));
        if self.service_name.is_empty() || self.service_name.len() > 255 {
            return bad("service_name must be 1-255 characters");
        }
        if let Some(h) = &self.health_check {
            h.validate().map_err(ApiError::InvalidParams)?;
        }
        if self.port == Some(0) {
            return bad("port must be 1-65535");
        }
        if let Some(p) = &self.auth_plugin {
            p.validate().map_err(ApiError::InvalidParams)?;
        }
        if let Some(l) = &self.rate_limit {
            l.check("rate_limit").map_err(ApiError::InvalidParams)?;
            if l.requests > 1_000_000_000 {
                return bad("rate_limit.requests must be at most 1000000000");
            }
        }
        Ok(())
    }

    /// Properties worker app filters match (`session.*`, `endpoint.*`).
    pub fn props(&self, id: Uuid) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = self
            .tags
            .session
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                (format!("session.{k}"), v)
            })
            .collect();
        p.push(("endpoint.id".into(), id.to_string()));
        if let Some(r) = &self.tags.endpoint.runtime_variant {
            p.push(("endpoint.runtime_variant".into(), r.clone()));
        }
        if let Some(u) = &self.tags.endpoint.existing_url {
            p.push(("endpoint.existing_url".into(), u.clone()));
        }
        p
    }
}

#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct BulkCreate {
    pub endpoints: Vec<EndpointItem>,
}

#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct DeploymentRef {
    #[serde(alias = "endpoint_id")]
    pub deployment_id: Uuid,
}

#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct BulkDelete {
    pub endpoints: Vec<DeploymentRef>,
}

/// `RouteEntry` (plus the optional `traffic_ratio` Backend.AI does not send).
#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct RouteEntry {
    pub session_id: Uuid,
    pub route_id: Uuid,
    #[serde(default)]
    pub session_name: Option<String>,
    #[serde(default = "localhost")]
    pub kernel_host: String,
    pub kernel_port: u16,
    /// `null` or absent: 1.
    #[serde(default = "one", deserialize_with = "ratio")]
    #[schema(value_type = Option<f64>, default = 1.0)]
    pub traffic_ratio: f64,
}

fn localhost() -> String {
    "localhost".into()
}
fn one() -> f64 {
    1.0
}
fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(1.0))
}

pub fn routes_of(entries: &[RouteEntry]) -> Result<Vec<Route>, String> {
    entries
        .iter()
        .map(|e| {
            validate_host(&e.kernel_host)?;
            if e.kernel_port == 0 {
                return Err("kernel_port must be 1-65535".into());
            }
            if !(e.traffic_ratio.is_finite() && e.traffic_ratio >= 0.0) {
                return Err("traffic_ratio must be a finite number >= 0".into());
            }
            Ok(Route {
                route_id: Some(e.route_id),
                session_id: e.session_id,
                session_name: e.session_name.clone(),
                kernel_host: e.kernel_host.clone(),
                kernel_port: e.kernel_port,
                protocol: Protocol::Http,
                traffic_ratio: e.traffic_ratio,
            })
        })
        .collect()
}

#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct RoutesItem {
    #[serde(alias = "endpoint_id")]
    pub deployment_id: Uuid,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    #[serde(default)]
    pub route_ids: Vec<Uuid>,
}

#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct BulkRoutes {
    pub endpoints: Vec<RoutesItem>,
}

#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct HealthCheckUpdate {
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

/// `exp` as epoch seconds or an ISO 8601 date-time (UTC when it has no offset).
fn exp_any<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Num(f64),
        Text(String),
    }
    match Form::deserialize(d)? {
        Form::Num(n) => Ok(n as i64),
        Form::Text(t) => {
            use time::format_description::well_known::Rfc3339;
            let t = t.trim().replace(' ', "T");
            // The last six characters (not bytes: the text is the client's and may hold
            // multi-byte characters) may carry an offset like `+09:00`.
            let tail: String = {
                let n = t.chars().count();
                t.chars().skip(n.saturating_sub(6)).collect()
            };
            let with_tz = if t.ends_with('Z') || tail.contains(['+', '-']) {
                t
            } else {
                format!("{t}Z")
            };
            time::OffsetDateTime::parse(&with_tz, &Rfc3339)
                .map(|d| d.unix_timestamp())
                .map_err(serde::de::Error::custom)
        }
    }
}

#[derive(utoipa::ToSchema, Debug, Deserialize)]
pub struct TokenRequest {
    pub user_uuid: Uuid,
    #[serde(deserialize_with = "exp_any")]
    #[schema(schema_with = exp_schema)]
    pub exp: i64,
}

/// What [`exp_any`] takes: epoch seconds, or an ISO 8601 date-time (UTC without an offset).
fn exp_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, Type};
    Schema::AnyOf(
        AnyOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::String))
            .description(Some("Epoch seconds, or an ISO 8601 date-time"))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn token_exp_in_any_text_is_an_error_not_a_panic() {
        let user = Uuid::new_v4();
        for exp in [
            "€a€",
            "€",
            "aé",
            "2026-01-01T00:00:00€",
            "🦀🦀🦀🦀🦀🦀🦀",
            "",
            " ",
        ] {
            let body = json!({ "user_uuid": user, "exp": exp }).to_string();
            assert!(
                serde_json::from_str::<TokenRequest>(&body).is_err(),
                "{exp}"
            );
        }
        let ok = json!({ "user_uuid": user, "exp": "2030-01-02 03:04:05+09:00" }).to_string();
        assert_eq!(
            serde_json::from_str::<TokenRequest>(&ok).unwrap().exp,
            1_893_521_045
        );
    }
}
