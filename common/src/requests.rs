//! Request logging both binaries share: the request id (`x-request-id`) and one log line per
//! request, inside the request's span (request id, method, matched route).

use axum::http::{HeaderMap, HeaderName};

/// The request id header, taken from the caller when sane and echoed on the response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's `x-request-id` when it is short and plain (1-64 of `[A-Za-z0-9._-]`, so it
/// cannot forge log lines), else a fresh one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string)
}

/// Routes whose lines are debug, not info: those polled by probes and scrapers, and
/// authgate's ForwardAuth (one call per proxied request: a line each would cost every
/// request of every app a formatted, written line; measured: a third of authgate's
/// throughput).
const QUIET: [&str; 6] = [
    "/status",
    "/health",
    "/health/livez",
    "/health/readyz",
    "/metrics",
    "/auth/{circuit}",
];

/// One line per request (call it inside the request's span): status, the Backend.AI error
/// code when there is one, milliseconds. Server errors warn; probes and scrapes are debug;
/// the rest info. Never the raw path (it may hold a grant id), a header or a body.
pub fn log_request(route: &str, status: u16, code: Option<&str>, secs: f64) {
    let ms = (secs * 1e4).round() / 10.0;
    let code = code.unwrap_or("");
    if status >= 500 {
        tracing::warn!(status, code, ms, "Request");
    } else if QUIET.contains(&route) {
        tracing::debug!(status, code, ms, "Request");
    } else {
        tracing::info!(status, code, ms, "Request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_auth_and_probes_are_quiet() {
        for r in ["/auth/{circuit}", "/metrics", "/health"] {
            assert!(QUIET.contains(&r), "{r}");
        }
        assert!(!QUIET.contains(&"/v2/circuits"));
    }

    #[test]
    fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "abc-123.x_y".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123.x_y");
        for bad in ["a b", "x\"y", &"z".repeat(65), ""] {
            h.insert(X_REQUEST_ID, bad.parse().unwrap());
            let id = request_id(&h);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32, "{id}");
        }
    }
}
