//! Backend.AI's interactive launch flow, as the Manager and WebUI call it:
//! `POST /v2/conf` → `GET /v2/proxy/{token}/{session_id}/add` → `GET /v2/proxy/auth` → the
//! setup link (authgate) → the app.
//!
//! Differences from Backend.AI, none visible to a correct client: grants expire and are
//! garbage-collected; an open `/v2/conf` is only allowed with `allowed_kernel_networks`;
//! reuse never picks a circuit on a dead worker and refreshes the kernel address; the
//! redirect form is a non-cacheable `302` (not `308`); `envs` is accepted as JSON text.
//! CORS headers (`*`, no credentials) come from the router's common layer.

use axum::{
    Json,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    AppState,
    auth::signed_link,
    circuit::{NewInteractive, create_interactive},
    extract::{JsonBody, QueryParams, manager_presented},
    models::IpList,
};
use crate::{
    domain::{AppMode, ConfToken, Protocol, WorkerStatus, parse_client_ips, validate_host},
    error::ApiError,
    store::{CircuitFilter, now_ms},
    tokens::SetupRequest,
};

/// `session` of `POST /v2/conf` (`project_id` is accepted as an alias of `group_id`).
#[derive(Debug, Deserialize)]
pub(crate) struct ConfSession {
    pub id: Option<Uuid>,
    pub user_uuid: Uuid,
    #[serde(alias = "project_id")]
    pub group_id: Uuid,
    pub access_key: Option<String>,
    #[serde(default)]
    pub domain_name: String,
}

/// `POST /v2/conf` (Backend.AI's `ConfRequestModel`; extra fields are ignored as there).
#[derive(Debug, Deserialize)]
pub(crate) struct ConfRequest {
    #[serde(default)]
    pub login_session_token: Option<String>,
    pub kernel_host: String,
    pub kernel_port: u16,
    pub session: ConfSession,
}

pub(super) async fn conf(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ConfRequest>,
) -> Result<Json<Value>, ApiError> {
    let cc = &state.config.conf;
    if !cc.allow_unauthorized_configure_request && !manager_presented(&headers, &state) {
        return Err(ApiError::Unauthorized);
    }
    let (Some(session_id), Some(access_key)) = (req.session.id, req.session.access_key.clone())
    else {
        return Err(ApiError::InvalidParams(
            "Not meant for inference apps: session.id and session.access_key are required".into(),
        ));
    };
    validate_host(&req.kernel_host).map_err(ApiError::InvalidParams)?;
    if req.kernel_port == 0 {
        return Err(ApiError::InvalidParams(
            "kernel_port must be 1-65535".into(),
        ));
    }
    if !cc.allowed_kernel_networks.is_empty() {
        let inside = req
            .kernel_host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| cc.allowed_kernel_networks.iter().any(|n| n.contains(&ip)));
        if !inside {
            return Err(ApiError::Forbidden(
                "kernel_host is not inside conf.allowed_kernel_networks".into(),
            ));
        }
    }
    let now = now_ms();
    let token = ConfToken {
        id: Uuid::new_v4(),
        login_session_token: req.login_session_token.filter(|t| !t.is_empty()),
        kernel_host: req.kernel_host,
        kernel_port: req.kernel_port,
        session_id,
        user_uuid: req.session.user_uuid,
        group_id: req.session.group_id,
        access_key,
        domain_name: req.session.domain_name,
        created_at_ms: now,
        expires_at_ms: now + cc.token_ttl_seconds as i64 * 1000,
    };
    state.store.insert_token(&token).await?;
    Ok(Json(json!({ "token": token.id.to_string() })))
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
#[derive(Debug, Deserialize)]
pub(crate) struct ProxyQuery {
    pub app: String,
    pub protocol: String,
    #[serde(default, deserialize_with = "envs_any")]
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
fn wire_protocol(p: &str) -> Result<Protocol, ApiError> {
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

pub(super) async fn add(
    State(state): State<AppState>,
    Path((token, session_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    QueryParams(q): QueryParams<ProxyQuery>,
) -> Result<Response, ApiError> {
    let bad = |what: &str| ApiError::InvalidParams(format!("{what} must be a UUID"));
    let token = Uuid::parse_str(&token).map_err(|_| bad("token"))?;
    let session_id = Uuid::parse_str(&session_id).map_err(|_| bad("session_id"))?;
    wire_protocol(&q.protocol)?;
    let base = state
        .config
        .advertise_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", state.config.listen));
    let mut query: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    query.retain(|(k, _)| k != "token" && k != "session_id");
    query.push(("token".into(), token.to_string()));
    query.push(("session_id".into(), session_id.to_string()));
    let url = format!(
        "{}/v2/proxy/auth?{}",
        base.trim_end_matches('/'),
        serde_urlencoded::to_string(&query).unwrap_or_default()
    );
    Ok(Json(json!({ "code": 200, "url": url })).into_response())
}

pub(super) async fn auth(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<ProxyQuery>,
) -> Result<Response, ApiError> {
    let (Some(token_id), Some(session_id)) = (q.token, q.session_id) else {
        return Err(ApiError::InvalidParams(
            "token and session_id are required".into(),
        ));
    };
    let protocol = wire_protocol(&q.protocol)?;
    let token = state
        .store
        .get_token(token_id)
        .await?
        .ok_or(ApiError::NotFound("token"))?;
    if token.session_id != session_id {
        return Err(ApiError::InvalidCredentials(
            "E20007: Session ID mismatch".into(),
        ));
    }
    let ips = match &q.allowed_client_ips {
        Some(l) => parse_client_ips(&l.0).map_err(ApiError::InvalidParams)?,
        None => Vec::new(),
    };
    let mut reused = None;
    if !q.no_reuse {
        let filter = CircuitFilter {
            session_id: Some(session_id),
            ..Default::default()
        };
        for c in state.store.list_circuits(&filter).await? {
            let same = c.app == q.app
                && c.protocol == protocol
                && c.app_mode == AppMode::Interactive
                && c.open_to_public == q.open_to_public
                && same_set(&c.allowed_client_ips, &ips);
            if !same {
                continue;
            }
            match state.store.get_worker(c.worker_id).await? {
                Some(w) if w.status == WorkerStatus::Alive => {
                    reused = Some((c, w));
                    break;
                }
                _ => {}
            }
        }
    }
    let (circuit, worker, reuse) = match reused {
        Some((c, w)) => {
            let moved = c.routes.iter().any(|r| {
                r.session_id == session_id
                    && (r.kernel_host != token.kernel_host || r.kernel_port != token.kernel_port)
            });
            let c = if moved {
                let c = state
                    .store
                    .refresh_session_route(c.id, session_id, &token.kernel_host, token.kernel_port)
                    .await?
                    .ok_or(ApiError::NotFound("circuit"))?;
                state.reconciler.nudge_circuit(w.id, c.id);
                c
            } else {
                c
            };
            (c, w, true)
        }
        None => {
            let new = NewInteractive {
                app: q.app.clone(),
                protocol,
                worker: None,
                user_id: token.user_uuid,
                open_to_public: q.open_to_public,
                allowed_client_ips: ips,
                port: q.port,
                subdomain: q.subdomain.clone(),
                envs: q.envs.clone(),
                arguments: q.args.clone(),
                idle_timeout: None,
                routes: vec![crate::domain::Route {
                    route_id: None,
                    session_id,
                    session_name: None,
                    kernel_host: token.kernel_host.clone(),
                    kernel_port: token.kernel_port,
                    protocol,
                    traffic_ratio: 1.0,
                }],
                props: session_props(&token),
                auth_plugin: None,
                allowed_origins: Vec::new(),
            };
            let (c, w) = create_interactive(&state, new).await?;
            (c, w, false)
        }
    };
    let link = signed_link(
        &state,
        &circuit,
        &worker,
        &SetupRequest {
            user_id: Some(token.user_uuid),
            login_session_token: token.login_session_token.as_deref(),
            redirect: Some(&q.redirect),
            state: None,
        },
    )?;
    // "Current version of WebUI always expects this to be False" for TCP.
    let reuse = reuse && protocol != Protocol::Tcp;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .any(|p| p.trim().starts_with("application/json"))
        });
    if wants_json {
        return Ok(Json(json!({ "redirect_url": link.setup_url, "reuse": reuse })).into_response());
    }
    let mut resp = StatusCode::FOUND.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&link.setup_url)
            .map_err(|_| ApiError::InvalidParams("bad URL".into()))?,
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(resp)
}

fn same_set(a: &[ipnet::IpNet], b: &[ipnet::IpNet]) -> bool {
    let sa: std::collections::BTreeSet<_> = a.iter().collect();
    let sb: std::collections::BTreeSet<_> = b.iter().collect();
    sa == sb
}

/// The `session.<field>` properties worker app filters match against.
fn session_props(t: &ConfToken) -> Vec<(String, String)> {
    vec![
        ("session.id".into(), t.session_id.to_string()),
        ("session.user_uuid".into(), t.user_uuid.to_string()),
        ("session.project_id".into(), t.group_id.to_string()),
        ("session.group_id".into(), t.group_id.to_string()),
        ("session.access_key".into(), t.access_key.clone()),
        ("session.domain_name".into(), t.domain_name.clone()),
    ]
}
