//! `GET /_appproxy/setup?token=` on every app origin (sets the circuit's cookie) and
//! Backend.AI's `GET /setup?token=` on the API port (forwards to the origin; TCP: the desktop
//! hand-off). Refusals are `SetupRefusal`s, counted by label.

use appproxy_common::{
    auth::{SETUP_PATH, SetupClaims, safe_redirect},
    ratelimit::{self, Policy, Verdict},
    tls::PeerAddr,
};
use axum::{
    Extension,
    extract::{ConnectInfo, RawQuery, State},
    http::{HeaderMap, HeaderValue, Method, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use std::{net::IpAddr, sync::Arc};

use super::{Gate, first, now, query, redirect};
use crate::{
    cookie::{Jar, set_cookie},
    setup::{SetupRefusal, check_origin, check_prefix, state_cookie, wait_loaded},
};

/// Backend.AI desktop app's local TCP forwarder.
const TCP_FORWARDER: &str = "http://localhost:45678/start";

fn refuse(g: &Gate, headers: &HeaderMap, r: SetupRefusal) -> Response {
    g.metrics.setups.with_label_values(&[r.label()]).inc();
    r.error().for_client(headers).into_response()
}

/// A setup request's token, verified: GET only, one `token` parameter, a valid link, and
/// not of a revoked user or login session.
fn setup_claims(
    g: &Gate,
    method: &Method,
    raw: Option<&str>,
) -> Result<(String, SetupClaims), SetupRefusal> {
    if *method != Method::GET {
        return Err(SetupRefusal::BadMethod);
    }
    let token = query(raw)
        .and_then(|mut q| q.remove("token"))
        .ok_or(SetupRefusal::MissingToken)?;
    let claims = g.keys.verify_setup(&token).map_err(|e| {
        tracing::info!(reason = e.as_str(), "Setup token refused");
        SetupRefusal::InvalidLink
    })?;
    // A link minted before its user or login session was revoked must not mint a fresh
    // cookie; before the set is loaded nothing is known, so nothing is set (fail closed).
    if !g.revoked.synced() {
        return Err(SetupRefusal::NotReady);
    }
    if g.revoked.is_revoked(&claims.sub, &claims.ls, claims.iat) {
        tracing::info!(circuit = %claims.cid, "Setup link of a revoked user or login session refused");
        return Err(SetupRefusal::Revoked);
    }
    Ok((token, claims))
}

/// Count one setup of the client against `[rate_limit] setup_per_address`. Redis down: fail
/// closed, as counting the link's uses does. `via_traefik`: the app-origin route, which
/// arrives through this worker's Traefik (loopback), so its `X-Forwarded-For` names the
/// client; the API port's `/setup` is reached directly (only configured proxies are trusted).
async fn admit(
    g: &Gate,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    headers: &HeaderMap,
    via_traefik: bool,
) -> Result<(), SetupRefusal> {
    let cfg = &g.cfg.rate_limit;
    let limit = &cfg.setup_per_address;
    if !limit.is_on() {
        return Ok(());
    }
    // Without a known peer (in-process tests) only a loopback caller is assumed.
    let peer = peer.map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.0.0.ip());
    let client = ratelimit::client_addr(peer, headers, &cfg.trusted(via_traefik));
    match g
        .limiter
        .check("setup-addr", &client.to_string(), limit, Policy::FailClosed)
        .await
    {
        Ok(Verdict::Allow) => Ok(()),
        Ok(Verdict::Deny { retry_after }) => Err(SetupRefusal::RateLimited(retry_after)),
        Err(e) => {
            tracing::warn!(error = %e, "Setup refused: cannot count it against the rate limit");
            Err(SetupRefusal::RedisDown)
        }
    }
}

pub(super) async fn on_origin(
    State(g): State<Arc<Gate>>,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    method: Method,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&g, peer, &headers, true).await {
        return refuse(&g, &headers, r);
    }
    match set_up(&g, &method, raw.as_deref(), &headers).await {
        Ok(resp) => resp,
        Err(r) => refuse(&g, &headers, r),
    }
}

/// Every check, then the cookie and the redirect into the app.
async fn set_up(
    g: &Gate,
    method: &Method,
    raw: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, SetupRefusal> {
    let (_, c) = setup_claims(g, method, raw)?;
    let lines: Vec<&str> = (headers.get_all(header::COOKIE).iter())
        .filter_map(|v| v.to_str().ok())
        .collect();
    let jar = Jar::parse(&lines).unwrap_or_default();
    let (host, proto) = (first(headers, "host"), first(headers, "x-forwarded-proto"));
    check_origin(&c.origin, c.state.as_deref(), host, proto, &jar)?;
    check_prefix(c.path.as_deref(), first(headers, "x-forwarded-prefix"))?;
    let (traefik, api) = (&g.traefik, &g.cfg.traefik.api_url);
    if let Err(e) = wait_loaded(traefik, api, c.cid, c.generation, g.cfg.router_wait()).await {
        tracing::warn!(circuit = %c.cid, error = %e, "Setup before the router was served");
        return Err(SetupRefusal::NotLoaded);
    }
    count_use(g, &c).await?;
    Ok(session_cookie(g, &c))
}

/// One more use of the link, within `setup_max_uses`.
async fn count_use(g: &Gate, c: &SetupClaims) -> Result<(), SetupRefusal> {
    let ttl = c.exp - now() + g.cfg.session.leeway_seconds as i64;
    match g.uses.count(&c.jti, ttl).await {
        Ok(n) if n <= i64::from(g.cfg.session.setup_max_uses) => Ok(()),
        Ok(_) => Err(SetupRefusal::UsedUp),
        Err(e) => {
            tracing::warn!(error = %e, "Setup refused: cannot count token uses");
            Err(SetupRefusal::RedisDown)
        }
    }
}

/// The redirect into the app with the circuit's session cookie (and the state nonce cleared).
fn session_cookie(g: &Gate, c: &SetupClaims) -> Response {
    let https = c.origin.starts_with("https://");
    let max_age = (g.cfg.session.cookie_ttl_seconds as i64).max(1);
    // The fast path must be able to check the cookie before the browser has it.
    if let Some(fp) = &g.fast_path
        && let Err(e) = fp.ensure_key(c.cid)
    {
        tracing::error!(error = %e, circuit = %c.cid, "Fast-path key not written; setup refused");
        return crate::error::GateError::new(
            503,
            "E10001",
            "Auth service is starting; retry shortly.",
        )
        .into_response();
    }
    let value = g.keys.mint_session(c, now(), max_age);
    g.metrics.setups.with_label_values(&["ok"]).inc();
    tracing::info!(circuit = %c.cid, generation = c.generation, "Session cookie set");
    // Path mode: the landing path is under the circuit's prefix.
    let prefix = c.path.as_deref();
    let target = format!("{}{}", prefix.unwrap_or(""), safe_redirect(&c.redirect));
    let mut resp = match redirect(&target) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let mut cookies = vec![set_cookie(c.cid, &value, max_age, https, prefix)];
    if c.state.is_some() {
        cookies.push(state_cookie(https, "", 0));
    }
    for v in cookies.iter().filter_map(|c| HeaderValue::from_str(c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Backend.AI's worker `/setup` on the API port: verify, then send the browser to the same
/// link on the app's own origin (where the cookie must be set). Uses are counted there.
pub(super) async fn on_api_port(
    State(g): State<Arc<Gate>>,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    method: Method,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&g, peer, &headers, false).await {
        return refuse(&g, &headers, r);
    }
    let (token, c) = match setup_claims(&g, &method, raw.as_deref()) {
        Ok(v) => v,
        Err(r) => return refuse(&g, &headers, r),
    };
    if c.origin.starts_with("tcp://") {
        return tcp_handoff(&g, &token, &c);
    }
    let location = format!(
        "{}{}{SETUP_PATH}?token={token}",
        c.origin,
        c.path.as_deref().unwrap_or("")
    );
    redirect(&location).unwrap_or_else(|_| refuse(&g, &headers, SetupRefusal::BadRedirect))
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
    let mut resp = if c.redirect.is_empty() {
        axum::Json(json!({ "redirect": url, "redirectURI": url })).into_response()
    } else {
        redirect(&url).unwrap_or_else(IntoResponse::into_response)
    };
    // The WebUI reads this answer cross-origin (`fetch(redirect_url +
    // "&do-not-redirect=true")`); Backend.AI's worker allows that with these three headers.
    // It carries no credential of the reader's: the token is the link's own.
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for name in [
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
    ] {
        h.insert(name, HeaderValue::from_static("*"));
    }
    resp
}
