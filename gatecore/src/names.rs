//! Names both the minting and the checking side agree on: cookie names, issuers, token types,
//! audiences. `appproxy_common::auth` re-exports them for the rest of the workspace.

use uuid::Uuid;

/// `iss` of tokens the provider signs.
pub const PROVIDER_ISSUER: &str = "appproxy-provider";
/// `iss` of cookies authgate signs.
pub const AUTHGATE_ISSUER: &str = "appproxy-authgate";
pub const TYP_SETUP: &str = "ap-setup";
pub const TYP_SESSION: &str = "ap-session";
pub const TYP_INFERENCE: &str = "ap-inference";

/// Every cookie of ours starts with this (after an optional `__Host-`); authgate strips all of
/// them (and Backend.AI's `appproxy_permit`) before a request reaches an app.
pub const COOKIE_PREFIX: &str = "appproxy_";
/// Every address of ours on an app's origin starts with this (setup, login, closed page).
pub const SETUP_PATH_PREFIX: &str = "/_appproxy/";

/// Audience of setup tokens and session cookies: circuit id and generation, so a cookie dies
/// when its circuit is re-created or moved.
pub fn audience(circuit: Uuid, generation: i64) -> String {
    format!("{}.{generation}", circuit.as_hyphenated())
}

/// Name of the session cookie of a circuit. Per circuit, because in port mode every port of a
/// host shares one cookie jar; `__Host-` under TLS (Secure, `Path=/`, no `Domain`).
pub fn cookie_name(circuit: Uuid, tls: bool) -> String {
    let base = format!("{COOKIE_PREFIX}{}", circuit.simple());
    if tls { format!("__Host-{base}") } else { base }
}

/// Whether a cookie name is one of ours (any circuit, with or without a prefix).
pub fn is_our_cookie(name: &str) -> bool {
    let n = name
        .strip_prefix("__Host-")
        .or_else(|| name.strip_prefix("__Secure-"))
        .unwrap_or(name);
    n.starts_with(COOKIE_PREFIX)
}

/// Constant-time equality of two secrets: every byte is compared whatever the first
/// difference, so a secret cannot be guessed byte by byte from response times (only the
/// length shows).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
