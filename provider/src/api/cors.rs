//! CORS as Backend.AI's webserver does it, per route group: the WebUI's launch routes
//! (`/v2/conf`, `/v2/proxy/*`) answer any origin (`[cors] launch_origins`, default `*`, as
//! Backend.AI's), the management API none unless listed (`[cors] api_origins`). Preflights
//! (`OPTIONS` with `Access-Control-Request-Method`) are answered here with `204` and what the
//! group allows, or `403` for an origin it does not list. No credentials are ever allowed
//! cross-origin (the API authenticates with a header token, never a cookie). Pure.

use axum::http::{HeaderMap, HeaderValue, Method, header};

/// The route groups with their own CORS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Group {
    Launch,
    Api,
}

/// The group of a matched route (`MatchedPath`).
pub(super) fn group(route: &str) -> Group {
    if route == "/v2/conf" || route.starts_with("/v2/proxy/") {
        Group::Launch
    } else {
        Group::Api
    }
}

/// What `Access-Control-Allow-Origin` says to a request from `origin`: `*` when the group
/// allows any, the origin itself when listed, nothing otherwise.
pub(super) fn allowed_origin(origins: &[String], origin: Option<&str>) -> Option<String> {
    if origins.iter().any(|o| o == "*") {
        return Some("*".into());
    }
    let origin = origin?;
    origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
        .then(|| origin.to_string())
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub(super) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The headers of a granted preflight for `group`.
pub(super) fn preflight_headers(group: Group, allow_origin: &str, h: &mut HeaderMap) {
    let methods = match group {
        Group::Launch => "GET, POST, OPTIONS",
        Group::Api => "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    };
    let pairs = [
        (header::ACCESS_CONTROL_ALLOW_METHODS, methods),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "content-type, x-backendai-token, authorization, x-request-id",
        ),
        (header::ACCESS_CONTROL_MAX_AGE, "600"),
    ];
    for (name, value) in pairs {
        h.insert(name, HeaderValue::from_static(value));
    }
    set_origin(allow_origin, h);
}

/// `Access-Control-Allow-Origin` (and `Vary: Origin` when it echoes one) on any answer.
pub(super) fn set_origin(allow_origin: &str, h: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(allow_origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("*"),
        );
    }
    if allow_origin != "*" {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_origins() {
        assert_eq!(group("/v2/conf"), Group::Launch);
        assert_eq!(group("/v2/proxy/{token}/{session_id}/add"), Group::Launch);
        assert_eq!(group("/v2/circuits"), Group::Api);
        assert_eq!(group("unmatched"), Group::Api);
        let any = vec!["*".to_string()];
        assert_eq!(allowed_origin(&any, None).as_deref(), Some("*"));
        let listed = vec!["https://console.example.com".to_string()];
        assert_eq!(
            allowed_origin(&listed, Some("https://console.example.com")).as_deref(),
            Some("https://console.example.com")
        );
        assert_eq!(allowed_origin(&listed, Some("https://evil.example")), None);
        assert_eq!(
            allowed_origin(&[], Some("https://console.example.com")),
            None
        );
    }
}
