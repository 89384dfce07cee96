//! `GET /auth/{circuit}?g=&m=[&c=1][&o=1][&rl=<n>/<s>][&p=<plugin>]`: Traefik's ForwardAuth.
//! Only Traefik reaches it (the port is loopback and Traefik's setup router forwards nothing
//! but `/_appproxy/*`). `c=1`: the circuit is counted here, `o=1`: public (no credential),
//! `rl`: the endpoint's rate limit, `p`: its plugin.
//! The decision is `decision::decide` (pure); this shell reads the request, runs the plugin
//! stage and the endpoint's rate limit after an allow, records an authorized WebSocket and
//! writes the answer.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use appproxy_common::ratelimit::{Limit, Policy, Verdict};

use super::Gate;
use crate::{
    decision::{self, Allow, Deny, Forwarded, Mode, Target},
    error::GateError,
};

/// Every value of a header, as UTF-8 or `Err(())`.
fn all<'a>(h: &'a HeaderMap, name: &str) -> Vec<Result<&'a str, ()>> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().map_err(|_| ()))
        .collect()
}

/// What Traefik forwarded, as the decision reads it.
fn forwarded(headers: &HeaderMap) -> Forwarded<'_> {
    Forwarded {
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
    }
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
        public: q.get("o").map(String::as_str) == Some("1"),
    })
}

/// `rl=<requests>/<seconds>`: the endpoint's rate limit. `Err` when present but malformed.
fn rate_limit(q: &HashMap<String, String>) -> Result<Option<Limit>, ()> {
    let Some(v) = q.get("rl") else {
        return Ok(None);
    };
    let (n, w) = v.split_once('/').ok_or(())?;
    let l = Limit {
        requests: n.parse().map_err(|_| ())?,
        window_seconds: w.parse().map_err(|_| ())?,
    };
    l.check("rl").map_err(|_| ())?;
    Ok(Some(l).filter(Limit::is_on))
}

/// Count an authorized request against its endpoint's limit (shared by every authgate through
/// Redis). Redis down: let it through (an app's reads stay up), counted and logged.
async fn within_limit(g: &Gate, t: Target, limit: &Limit) -> Result<(), GateError> {
    match g
        .limiter
        .check("endpoint", &t.circuit.to_string(), limit, Policy::FailOpen)
        .await
    {
        Ok(Verdict::Allow) => Ok(()),
        Ok(Verdict::Deny { retry_after }) => Err(GateError::new(
            429,
            "E20011",
            "This endpoint's request rate limit is reached; retry later.",
        )
        .with_retry_after(retry_after)),
        Err(e) => {
            g.metrics
                .rate_limit_unavailable
                .with_label_values(&["endpoint"])
                .inc();
            if g.limiter.should_warn() {
                tracing::warn!(error = %e, circuit = %t.circuit, "Endpoint rate limit not counted (let through)");
            }
            Ok(())
        }
    }
}

pub(super) async fn auth(
    State(g): State<Arc<Gate>>,
    Path(circuit): Path<String>,
    RawQuery(raw): RawQuery,
    // The request itself, not the `HeaderMap` extractor: that one clones every header.
    request: axum::extract::Request,
) -> Response {
    let headers = request.headers();
    let mut q = super::query(raw.as_deref());
    let Some(t) = q.as_ref().and_then(|q| target(&circuit, q)) else {
        tracing::error!(
            circuit,
            "ForwardAuth address is malformed; check the provider"
        );
        let e = GateError::new(400, "E20001", "Malformed auth address.");
        return refuse(&g, headers, e, "bad_address");
    };
    // Extra allowed origins come from the circuit map; looked up only when a page of some
    // origin asks (a lock on the shared map otherwise saved).
    let extra_origins = match headers.contains_key(header::ORIGIN) {
        true => g.activity.origins_of(t.circuit),
        false => Vec::new(),
    };
    let settings = decision::Settings {
        forward_inference_authorization: g.cfg.session.forward_inference_authorization,
        extra_origins: &extra_origins,
    };
    let Ok(limit) = q.as_ref().map_or(Ok(None), rate_limit) else {
        tracing::error!(
            circuit,
            "ForwardAuth rate limit is malformed; check the provider"
        );
        let e = GateError::new(400, "E20001", "Malformed auth address.");
        return refuse(&g, headers, e, "bad_address");
    };
    let plugin = q.as_mut().and_then(|q| q.remove("p"));
    let counted_here = q
        .as_ref()
        .and_then(|q| q.get("c"))
        .is_some_and(|c| c == "1");
    match decision::decide(&forwarded(headers), t, &g.keys, &g.revoked, &settings) {
        Ok(a) => {
            let resp = allowed(&g, t, headers, a, plugin.as_deref(), limit).await;
            // `c=1`: the circuit's router writes no access log; what is let through counts here.
            if counted_here && resp.status() == StatusCode::OK {
                g.activity.request(t.circuit, crate::activity::now_ms());
            }
            resp
        }
        Err(d) => {
            let e = GateError::new(d.status(), d.code(), d.message());
            // A browser that lost its access (revoked, no or a bad cookie) gets the way back.
            let lost = matches!(d, Deny::Revoked | Deny::NoCookie | Deny::BadCookie(_));
            let e = e.with_link(g.cfg.session.login_url.as_deref().filter(|_| lost));
            refuse(&g, headers, e, d.reason())
        }
    }
}

/// After an allow: the plugin stage and the endpoint's rate limit (unless a preflight), the
/// WebSocket's activity, then exactly the headers the app may see.
async fn allowed(
    g: &Gate,
    t: Target,
    headers: &HeaderMap,
    a: Allow,
    plugin: Option<&str>,
    limit: Option<Limit>,
) -> Response {
    let mut extra = Vec::new();
    if let Some(name) = plugin.filter(|_| !a.preflight) {
        match super::plugin::run(g, name, t, headers, &a.user).await {
            Ok(h) => extra = h,
            Err(e) => return e.into_response(),
        }
    }
    if let Some(l) = limit.filter(|_| !a.preflight)
        && let Err(e) = within_limit(g, t, &l).await
    {
        return refuse(g, headers, e, "rate_limited");
    }
    // An authorized WebSocket is activity until its request's access-log record.
    if let Some(key) = &a.websocket {
        let now = crate::activity::now_ms();
        g.activity
            .websocket_opened(t.circuit, key, &a.login_session, now);
    }
    let how = if a.user.is_empty() {
        "preflight"
    } else {
        "credential"
    };
    g.metrics.decisions.with_label_values(&["allow", how]).inc();
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    // What Traefik copies over the client's headers; one it does not get, it removes.
    for (name, value) in a.into_app_headers(t.mode) {
        if let (Ok(name), Some(Ok(v))) = (
            axum::http::HeaderName::try_from(name),
            value.map(|v| HeaderValue::from_str(&v)),
        ) {
            h.insert(name, v);
        }
    }
    for (k, v) in extra {
        let name = axum::http::HeaderName::try_from(k.as_str());
        if let (Ok(k), Ok(v)) = (name, HeaderValue::from_str(&v)) {
            h.insert(k, v);
        }
    }
    resp
}

fn refuse(g: &Gate, headers: &HeaderMap, e: GateError, reason: &str) -> Response {
    g.metrics
        .decisions
        .with_label_values(&["deny", reason])
        .inc();
    e.for_client(headers).into_response()
}
