//! authgate's HTTP surface:
//! - `GET /auth/{circuit}?g=&m=` — ForwardAuth (only Traefik reaches it: the port is loopback
//!   and Traefik's setup router forwards nothing but `/_appproxy/*`);
//! - `GET /_appproxy/setup?token=` — on every app origin, through the setup router;
//! - `GET /_appproxy/login?circuit=&next=` — starts a launch with a state nonce (if configured);
//! - `GET /setup?token=` — Backend.AI-compatible entry on the API port, forwards to the origin;
//! - `/health`, `/metrics` — on the API port only (through Traefik they are 404);
//! - `POST /v1/logs` — Traefik's access-log export, on the ingest listener only, with the secret.

use std::{collections::HashMap, sync::Arc};

use appproxy_common::auth::{SETUP_PATH, SetupClaims, safe_redirect, state_hash};
use axum::{
    Router,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    config::Config,
    cookie::{Jar, set_cookie},
    decision::{self, Forwarded, Mode, Target},
    error::GateError,
    metrics::Metrics,
    revocation::Revocations,
    setup::{UseCounter, wait_loaded},
    token::Keys,
};

/// Backend.AI desktop app's local TCP forwarder.
const TCP_FORWARDER: &str = "http://localhost:45678/start";

/// Name of the state-nonce cookie (`__Host-` under TLS).
const STATE_COOKIE: &str = "appproxy_state";

/// Everything the handlers share; handed to axum as `Arc<Gate>`, so a request costs one
/// reference count, not a clone of the keys.
pub struct Gate {
    pub activity: Arc<crate::activity::Activity>,
    pub plugins: Option<Arc<crate::plugin::Runner>>,
    pub cfg: Arc<Config>,
    pub keys: Keys,
    pub revoked: Arc<Revocations>,
    pub uses: Arc<UseCounter>,
    pub metrics: Metrics,
    pub traefik: reqwest::Client,
}

/// The ForwardAuth/setup API (Traefik and, through `/_appproxy/`, browsers reach it).
pub fn app(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/auth/{circuit}", get(auth))
        .route("/_appproxy/setup", get(setup_on_origin))
        .route("/_appproxy/login", get(login))
        .route("/setup", get(setup_on_api_port))
        .route("/health", get(health))
        .route("/plugins", get(plugins))
        .route("/metrics", get(metrics))
        .fallback(|| async { GateError::new(404, "E00002", "Not found.") })
        .method_not_allowed_fallback(|| async {
            GateError::new(405, "E00003", "Method not allowed.")
        })
        .with_state(gate)
}

/// The access-log receiver, on its own loopback listener: `POST /v1/logs` with the secret.
pub fn ingest_app(gate: Arc<Gate>) -> Router {
    Router::new()
        .route(
            "/v1/logs",
            axum::routing::post(ingest_logs).layer(axum::extract::DefaultBodyLimit::max(
                crate::ingest::MAX_EXPORT_BYTES,
            )),
        )
        .fallback(|| async { GateError::new(404, "E00002", "Not found.") })
        .with_state(gate)
}

/// Constant-time equality (the ingest secret must not be guessable byte by byte).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Epoch seconds (authgate's one clock is `activity::now_ms`).
fn now() -> i64 {
    crate::activity::now_ms() / 1000
}

/// Every value of a header, as UTF-8 or `Err(())`.
fn all<'a>(h: &'a HeaderMap, name: &str) -> Vec<Result<&'a str, ()>> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().map_err(|_| ()))
        .collect()
}

/// Query parameters, refusing repeated names (a second `token=` must not pick the winner).
fn query(raw: Option<&str>) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (k, v) in serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or("")).ok()? {
        if out.insert(k, v).is_some() {
            return None;
        }
    }
    Some(out)
}

fn target(circuit: &str, q: &HashMap<String, String>) -> Option<Target> {
    let circuit = Uuid::parse_str(circuit).ok()?;
    let generation = q.get("g")?.parse().ok()?;
    let mode = match q.get("m").map(String::as_str) {
        Some("interactive") => Mode::Interactive,
        Some("inference") => Mode::Inference,
        _ => return None,
    };
    Some(Target {
        circuit,
        generation,
        mode,
        public: q.get("o").map(String::as_str) == Some("1") && q.contains_key("p"),
    })
}

/// The plugin stage after an allow: `None` to let the request through with `extra` headers,
/// or the response that denies it.
async fn run_plugin(
    g: &Gate,
    name: &str,
    t: Target,
    headers: &HeaderMap,
    user: &str,
    extra: &mut Vec<(String, String)>,
) -> Option<Response> {
    use crate::plugin::{RunError, Verdict, abi};
    let fail = |label: &str, msg: &str| {
        g.metrics
            .plugin_calls
            .with_label_values(&[name, label])
            .inc();
        Some(
            GateError::new(503, "E20012", msg)
                .for_client(headers)
                .into_response(),
        )
    };
    let Some(runner) = &g.plugins else {
        return fail("no_host", "Auth plugins are not enabled on this worker.");
    };
    // The address names the plugin; its config comes from the circuit map. A map that does not
    // (yet) agree with the address is the same case as no map entry.
    let config = match g.activity.plugin_of(t.circuit) {
        Some((configured, config)) if configured == name => config,
        _ => {
            return fail(
                "no_config",
                "Auth plugin configuration not loaded yet; retry.",
            );
        }
    };
    let first = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let req_headers = headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k != "cookie" && !k.starts_with("x-forwarded-") && k != "host"
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let client = first("x-forwarded-for")
        .split(',')
        .next()
        .unwrap_or("")
        .trim();
    let input = abi::Request {
        abi: abi::ABI_VERSION,
        method: first("x-forwarded-method"),
        host: first("x-forwarded-host"),
        path: first("x-forwarded-uri"),
        client_ip: client,
        headers: req_headers,
        circuit: abi::CircuitFacts {
            id: t.circuit.to_string(),
            generation: t.generation,
            mode: match t.mode {
                Mode::Interactive => "interactive",
                Mode::Inference => "inference",
            },
        },
        user,
        now: crate::activity::now_ms() / 1000,
        config: &config,
    }
    .to_lines();
    match runner.run(name.to_string(), input).await {
        Ok(Verdict::Allow { headers: h }) => {
            g.metrics
                .plugin_calls
                .with_label_values(&[name, "allow"])
                .inc();
            extra.extend(h);
            None
        }
        Ok(Verdict::Deny { status, body }) => {
            g.metrics
                .plugin_calls
                .with_label_values(&[name, "deny"])
                .inc();
            let msg = if body.is_empty() {
                "Denied by policy."
            } else {
                body.as_str()
            };
            Some(
                GateError::new(status, "E20012", msg)
                    .for_client(headers)
                    .into_response(),
            )
        }
        Err(RunError::Busy) => fail("busy", "Auth plugin overloaded; retry."),
        Err(RunError::Call(e)) => {
            tracing::warn!(plugin = name, error = %e, "Auth plugin failed; denying");
            fail(e.label(), "Auth plugin failed; request denied.")
        }
    }
}

async fn auth(
    State(g): State<Arc<Gate>>,
    Path(circuit): Path<String>,
    RawQuery(raw): RawQuery,
    // The request itself, not the `HeaderMap` extractor: that one clones every header.
    request: axum::extract::Request,
) -> Response {
    let headers = request.headers();
    let deny = |code: &'static str, status: u16, msg: &str, reason: &str| {
        g.metrics
            .decisions
            .with_label_values(&["deny", reason])
            .inc();
        GateError::new(status, code, msg)
            .for_client(headers)
            .into_response()
    };
    let mut q = query(raw.as_deref());
    let Some(t) = q.as_ref().and_then(|q| target(&circuit, q)) else {
        tracing::error!(
            circuit,
            "ForwardAuth address is malformed; check the provider"
        );
        return deny("E20001", 400, "Malformed auth address.", "bad_address");
    };
    let f = Forwarded {
        method: all(headers, "x-forwarded-method"),
        host: all(headers, "x-forwarded-host"),
        uri: all(headers, "x-forwarded-uri"),
        cookies: all(headers, "cookie"),
        authorization: all(headers, "authorization"),
        referer: all(headers, "referer"),
        proto: all(headers, "x-forwarded-proto"),
        origin: all(headers, "origin"),
        fetch_site: all(headers, "sec-fetch-site"),
        preflight_method: all(headers, "access-control-request-method"),
        websocket_key: all(headers, "sec-websocket-key"),
        content_length: all(headers, "content-length"),
        transfer_encoding: all(headers, "transfer-encoding"),
    };
    // Extra allowed origins come from the circuit map; looked up only when a page of some
    // origin asks (a lock on the shared map otherwise saved).
    let extra_origins = if headers.contains_key(header::ORIGIN) {
        g.activity.origins_of(t.circuit)
    } else {
        Vec::new()
    };
    let settings = decision::Settings {
        forward_inference_authorization: g.cfg.session.forward_inference_authorization,
        extra_origins: &extra_origins,
    };
    let plugin = q.as_mut().and_then(|q| q.remove("p"));
    match decision::decide(&f, t, &g.keys, &g.revoked, &settings) {
        Ok(a) => {
            let mut extra = Vec::new();
            if let Some(name) = plugin.as_deref().filter(|_| !a.preflight)
                && let Some(denied) = run_plugin(&g, name, t, headers, &a.user, &mut extra).await
            {
                return denied;
            }
            // An authorized WebSocket is activity until its request's access-log record.
            if let Some(key) = &a.websocket {
                g.activity
                    .websocket_opened(t.circuit, key, crate::activity::now_ms());
            }
            g.metrics
                .decisions
                .with_label_values(&[
                    "allow",
                    if a.user.is_empty() {
                        "preflight"
                    } else {
                        "credential"
                    },
                ])
                .inc();
            let mut resp = StatusCode::OK.into_response();
            let h = resp.headers_mut();
            for (name, value) in [
                (header::COOKIE, a.cookie),
                (header::REFERER, a.referer),
                (header::AUTHORIZATION, a.authorization),
            ] {
                if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    h.insert(name, v);
                }
            }
            for (k, v) in extra {
                if let (Ok(k), Ok(v)) = (
                    axum::http::HeaderName::try_from(k.as_str()),
                    HeaderValue::from_str(&v),
                ) {
                    h.insert(k, v);
                }
            }
            resp
        }
        Err(d) => {
            let msg = match d {
                decision::Deny::NoCookie | decision::Deny::BadCookie(_) => {
                    "This browser has no valid access to this app."
                }
                decision::Deny::Revoked => "Access to this app was revoked (logged out).",
                decision::Deny::NoToken => "Authorization header required.",
                decision::Deny::BadScheme => "Use Authorization: Bearer <token>.",
                decision::Deny::BadToken(_) => "Invalid API token.",
                decision::Deny::NotReady => "Auth service is starting; retry shortly.",
                decision::Deny::BadForwarded | decision::Deny::BadCookieHeader => {
                    "Malformed request."
                }
                decision::Deny::CrossOrigin => {
                    "This request came from another site's page and was refused."
                }
            };
            deny(d.code(), d.status(), msg, d.reason())
        }
    }
}

/// Host (and port, without the scheme's default) of an origin or a Host header, lowercase.
fn authority(scheme_https: bool, hostport: &str) -> String {
    let h = hostport.trim().trim_end_matches('.').to_ascii_lowercase();
    let default = if scheme_https { ":443" } else { ":80" };
    h.strip_suffix(default).map(str::to_string).unwrap_or(h)
}

/// A `302` that is never cached and never leaks the current URL as `Referer`.
fn redirect(location: &str) -> Result<Response, GateError> {
    let v = HeaderValue::from_str(location)
        .map_err(|_| GateError::new(400, "E20001", "Bad redirect target."))?;
    let mut resp = StatusCode::FOUND.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, v);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(resp)
}

fn setup_error(g: &Gate, headers: &HeaderMap, result: &str, e: GateError) -> Response {
    g.metrics.setups.with_label_values(&[result]).inc();
    e.for_client(headers).into_response()
}

/// A setup request's token, verified: GET only (axum also routes HEAD to GET handlers), one
/// `token` parameter. The error carries its metric label.
fn setup_claims(
    g: &Gate,
    method: &Method,
    raw: Option<&str>,
) -> Result<(String, SetupClaims), (&'static str, GateError)> {
    if *method != Method::GET {
        return Err((
            "bad_method",
            GateError::new(405, "E00003", "Method not allowed."),
        ));
    }
    let token = query(raw).and_then(|mut q| q.remove("token")).ok_or((
        "bad_token",
        GateError::new(400, "E20001", "Missing or repeated token parameter."),
    ))?;
    let claims = g.keys.verify_setup(&token).map_err(|e| {
        tracing::info!(reason = e.as_str(), "Setup token refused");
        (
            "bad_token",
            GateError::new(401, "E20008", "This app link is invalid or has expired."),
        )
    })?;
    // A link minted before its user or login session was revoked must not mint a fresh
    // cookie; before the set is loaded nothing is known, so nothing is set (fail closed).
    if !g.revoked.synced() {
        return Err((
            "not_ready",
            GateError::new(503, "E10001", "Auth service is starting; retry shortly."),
        ));
    }
    if g.revoked.is_revoked(&claims.sub, &claims.ls, claims.iat) {
        tracing::info!(circuit = %claims.cid, "Setup link of a revoked user or login session refused");
        return Err((
            "revoked",
            GateError::new(
                401,
                "E20005",
                "Access to this app was revoked (logged out).",
            ),
        ));
    }
    Ok((token, claims))
}

async fn setup_on_origin(
    State(g): State<Arc<Gate>>,
    method: Method,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (_, c) = match setup_claims(&g, &method, raw.as_deref()) {
        Ok(v) => v,
        Err((label, e)) => return setup_error(&g, &headers, label, e),
    };
    let https = c.origin.starts_with("https://");
    let origin_auth = c.origin.split_once("://").map(|(_, a)| a).unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let proto_ok = proto == if https { "https" } else { "http" };
    if !proto_ok || authority(https, host) != authority(https, origin_auth) {
        return setup_error(
            &g,
            &headers,
            "wrong_origin",
            GateError::new(400, "E20001", "This app link belongs to another address."),
        );
    }
    let lines: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let jar = Jar::parse(&lines).unwrap_or_default();
    if let Some(want) = &c.state
        && !jar
            .values(STATE_COOKIE)
            .iter()
            .any(|v| state_hash(v) == *want)
    {
        return setup_error(
            &g,
            &headers,
            "state_mismatch",
            GateError::new(
                403,
                "E20010",
                "This app link was started in another browser.",
            ),
        );
    }
    if let Err(e) = wait_loaded(
        &g.traefik,
        &g.cfg.traefik.api_url,
        c.cid,
        c.generation,
        g.cfg.router_wait(),
    )
    .await
    {
        tracing::warn!(circuit = %c.cid, error = %e, "Setup before the router was served");
        return setup_error(
            &g,
            &headers,
            "not_loaded",
            GateError::new(503, "E10001", "The app is not reachable yet; retry."),
        );
    }
    let t = now();
    let ttl = c.exp - t + g.cfg.session.leeway_seconds as i64;
    match g.uses.count(&c.jti, ttl).await {
        Ok(n) if n <= i64::from(g.cfg.session.setup_max_uses) => {}
        Ok(_) => {
            return setup_error(
                &g,
                &headers,
                "used_up",
                GateError::new(
                    401,
                    "E20008",
                    "This app link was already used; open the app again.",
                ),
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "Setup refused: cannot count token uses");
            return setup_error(
                &g,
                &headers,
                "redis_down",
                GateError::new(503, "E10001", "Auth storage unavailable; retry."),
            );
        }
    }
    let max_age = (g.cfg.session.cookie_ttl_seconds as i64).max(1);
    let value = g.keys.mint_session(&c, t, max_age);
    g.metrics.setups.with_label_values(&["ok"]).inc();
    tracing::info!(circuit = %c.cid, generation = c.generation, "Session cookie set");
    let mut resp = match redirect(&safe_redirect(&c.redirect)) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let h = resp.headers_mut();
    let mut cookies = vec![set_cookie(c.cid, &value, max_age, https)];
    if c.state.is_some() {
        cookies.push(state_cookie(https, "", 0));
    }
    for v in cookies.iter().filter_map(|c| HeaderValue::from_str(c).ok()) {
        h.append(header::SET_COOKIE, v);
    }
    resp
}

/// `Set-Cookie` of the state nonce (`__Host-` and `Secure` under TLS).
fn state_cookie(https: bool, value: &str, max_age: i64) -> String {
    let (prefix, secure) = if https {
        ("__Host-", "; Secure")
    } else {
        ("", "")
    };
    format!(
        "{prefix}{STATE_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    )
}

/// Backend.AI's worker `/setup` on the API port: verify, then send the browser to the same
/// link on the app's own origin (where the cookie must be set). Uses are counted there.
async fn setup_on_api_port(
    State(g): State<Arc<Gate>>,
    method: Method,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (token, c) = match setup_claims(&g, &method, raw.as_deref()) {
        Ok(v) => v,
        Err((label, e)) => return setup_error(&g, &headers, label, e),
    };
    if c.origin.starts_with("tcp://") {
        return tcp_handoff(&g, &token, &c);
    }
    let location = format!("{}{SETUP_PATH}?token={token}", c.origin);
    redirect(&location).unwrap_or_else(|e| setup_error(&g, &headers, "bad_token", e))
}

/// Backend.AI's TCP hand-off: the desktop app's local forwarder gets the gateway address
/// (no cookie: TCP has no ForwardAuth). A redirect when the launch asked for one, else JSON.
fn tcp_handoff(g: &Gate, token: &str, c: &SetupClaims) -> Response {
    let url = format!(
        "{TCP_FORWARDER}?{}",
        serde_urlencoded::to_string([
            ("directTCP", "true"),
            ("auth", token),
            ("proto", "tcp"),
            ("gateway", c.origin.as_str()),
        ])
        .unwrap_or_default()
    );
    g.metrics.setups.with_label_values(&["tcp_handoff"]).inc();
    if !c.redirect.is_empty() {
        return redirect(&url).unwrap_or_else(IntoResponse::into_response);
    }
    let mut resp = axum::Json(json!({ "redirect": url, "redirectURI": url })).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Start a launch bound to this browser: plant a state nonce, then go to the platform's login
/// page, which asks the provider for a setup link carrying `state` = SHA-256(nonce).
async fn login(
    State(g): State<Arc<Gate>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(login_url) = g.cfg.session.login_url.clone() else {
        return GateError::new(404, "E00002", "Not found.")
            .for_client(&headers)
            .into_response();
    };
    let q = query(raw.as_deref()).unwrap_or_default();
    let Some(circuit) = q.get("circuit").and_then(|c| Uuid::parse_str(c).ok()) else {
        return GateError::new(400, "E20001", "circuit must be a UUID.")
            .for_client(&headers)
            .into_response();
    };
    let next = safe_redirect(q.get("next").map(String::as_str).unwrap_or("/"));
    let nonce: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        == Some("https");
    let sep = if login_url.contains('?') { '&' } else { '?' };
    let target = format!(
        "{login_url}{sep}{}",
        serde_urlencoded::to_string([
            ("circuit", circuit.to_string()),
            ("state", state_hash(&nonce)),
            ("next", next),
        ])
        .unwrap_or_default()
    );
    let mut resp = match redirect(&target) {
        Ok(r) => r,
        Err(e) => return e.for_client(&headers).into_response(),
    };
    if let Ok(c) = HeaderValue::from_str(&state_cookie(https, &nonce, 600)) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// Ready when the revocation set is loaded and (HTTP workers) the local Traefik serves the
/// shared setup router — before that, setup links of this worker would get Traefik's 404.
/// Traefik's OTLP/HTTP access-log export: apply every record, count every one.
async fn ingest_logs(
    State(g): State<Arc<Gate>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let m = &g.metrics;
    let presented = headers
        .get(crate::config::INGEST_SECRET_HEADER)
        .map(HeaderValue::as_bytes);
    let expected = g.cfg.ingest.secret.as_deref().map(str::as_bytes);
    if !matches!((presented, expected), (Some(p), Some(e)) if same_secret(p, e)) {
        m.ingest_exports.with_label_values(&["unauthorized"]).inc();
        return (StatusCode::UNAUTHORIZED, "missing or wrong ingest secret").into_response();
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let records = match crate::ingest::decode_body(&body, encoding) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(bytes = body.len(), error = %e, "OTLP logs export refused");
            m.ingest_exports.with_label_values(&["undecodable"]).inc();
            return (StatusCode::BAD_REQUEST, "not an OTLP logs export").into_response();
        }
    };
    m.ingest_exports.with_label_values(&["ok"]).inc();
    let now = crate::activity::now_ms();
    for r in &records {
        tracing::trace!(attributes = ?r.attributes, "Access-log record");
        let c = crate::ingest::classify(r, now);
        if let Some((circuit, key)) = &c.websocket_ended {
            g.activity.websocket_ended(*circuit, key);
        }
        match c.event {
            Ok(e) => {
                g.activity.apply(&e);
                m.ingest_records.with_label_values(&["applied", ""]).inc();
            }
            Err(reason) => {
                m.ingest_records
                    .with_label_values(&["rejected", reason.as_str()])
                    .inc();
            }
        }
    }
    // An empty ExportLogsServiceResponse.
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}

async fn health(State(g): State<Arc<Gate>>) -> Response {
    let synced = g.revoked.synced();
    let setup_router = if g.cfg.worker.protocol == appproxy_common::wire::Protocol::Tcp {
        true
    } else {
        crate::setup::setup_router_loaded(&g.traefik, &g.cfg.traefik.api_url).await
    };
    let ready = synced && setup_router;
    let body = json!({
        "status": if ready { "ok" } else { "starting" },
        "revocations_synced": synced,
        "redis_connected": g.revoked.connected(),
        "revocations": g.revoked.len(),
        "traefik_setup_router": setup_router,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Loaded plugins (and whether each is disabled) and refused files with reasons.
async fn plugins(State(g): State<Arc<Gate>>) -> Response {
    let Some(r) = &g.plugins else {
        return axum::Json(json!({ "enabled": false })).into_response();
    };
    let (loaded, rejected) = r.host.status();
    let loaded: Vec<Value> = loaded
        .into_iter()
        .map(|(name, disabled)| json!({ "name": name, "disabled": disabled }))
        .collect();
    axum::Json(json!({ "enabled": true, "loaded": loaded, "rejected": rejected })).into_response()
}

async fn metrics(State(g): State<Arc<Gate>>) -> Response {
    g.metrics.revocations.set(g.revoked.len() as i64);
    g.metrics
        .revocations_connected
        .set(i64::from(g.revoked.connected()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        g.metrics.render(),
    )
        .into_response()
}
