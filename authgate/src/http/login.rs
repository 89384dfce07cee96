//! `GET /_appproxy/login?circuit=&next=`: start a launch bound to this browser (a state
//! nonce cookie, then the platform's login page).

use axum::{
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use std::sync::Arc;
use uuid::Uuid;

use super::{Gate, first, query, redirect};
use crate::{error::GateError, setup::state_cookie};
use appproxy_common::auth::{safe_redirect, state_hash};

/// Start a launch bound to this browser: plant a state nonce, then go to the platform's login
/// page, which asks the provider for a setup link carrying `state` = SHA-256(nonce).
pub(super) async fn login(
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
    let https = first(&headers, "x-forwarded-proto") == "https";
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
