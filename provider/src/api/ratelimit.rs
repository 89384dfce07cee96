//! Rate limits on the API, as Backend.AI's webserver has them, counted in Redis so every
//! replica shares one budget (`appproxy_common::ratelimit`): the launch routes (`/v2/conf`,
//! `/v2/proxy/*`) per client address, the management API (`/v2/*` otherwise) per token
//! (a digest of it; requests without one per address). Probes, `/metrics` and the workers'
//! `/api/*` are never limited. Over the limit: `429` with `Retry-After` and Backend.AI's
//! `rate-limit-exceeded` body. Redis down or slow: the request goes through (these routes
//! authenticate on their own), counted in `rate_limit_unavailable_total` and logged.
//!
//! The client address is the connecting peer, or, when that peer is a trusted proxy
//! (`[rate_limit] trusted_proxies`), the last `X-Forwarded-For` entry that is not one.

use std::net::{IpAddr, SocketAddr};

use appproxy_common::ratelimit::{self, Limit, Policy, Verdict};
use axum::http::HeaderMap;

use crate::{config::RateLimitConfig, error::ApiError};

/// Which budget a request counts against: the limit, the scope and the id in it.
pub(super) fn subject<'a>(
    route: &str,
    headers: &HeaderMap,
    client: IpAddr,
    cfg: &'a RateLimitConfig,
) -> Option<(&'a Limit, &'static str, String)> {
    let launch = route == "/v2/conf" || route.starts_with("/v2/proxy/");
    let (limit, scope, id) = if launch {
        (&cfg.launch_per_address, "launch-addr", client.to_string())
    } else if route.starts_with("/v2/") {
        match super::extract::presented(headers) {
            Some(t) => (&cfg.api_per_token, "api-token", ratelimit::digest(t)),
            None => (&cfg.api_per_token, "api-addr", client.to_string()),
        }
    } else {
        return None;
    };
    limit.is_on().then_some((limit, scope, id))
}

/// Count the request; `Err(RateLimited)` when over its budget.
pub(super) async fn admit(
    state: &super::AppState,
    route: &str,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<(), ApiError> {
    let Some(limiter) = state.limiter.as_ref() else {
        return Ok(());
    };
    let cfg = &state.config.rate_limit;
    let peer = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
    let client = ratelimit::client_addr(peer, headers, &cfg.trusted_proxies);
    let Some((limit, scope, id)) = subject(route, headers, client, cfg) else {
        return Ok(());
    };
    match limiter.check(scope, &id, limit, Policy::FailOpen).await {
        Ok(Verdict::Allow) => Ok(()),
        Ok(Verdict::Deny { retry_after }) => {
            state.metrics.rate_limited.with_label_values(&[scope]).inc();
            Err(ApiError::RateLimited(retry_after))
        }
        Err(e) => {
            state
                .metrics
                .rate_limit_unavailable
                .with_label_values(&[scope])
                .inc();
            if limiter.should_warn() {
                tracing::warn!(error = %e, scope, "Rate limit not checked (let through)");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RateLimitConfig {
        RateLimitConfig {
            launch_per_address: Limit::per_minute(5),
            api_per_token: Limit::per_minute(7),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn routes_count_per_address_or_per_token_and_probes_never() {
        let c = cfg();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let none = HeaderMap::new();
        let mut tok = HeaderMap::new();
        tok.insert("x-backendai-token", "s3cret".parse().unwrap());
        let s = |route, h| subject(route, h, ip, &c).map(|(l, sc, id)| (l.requests, sc, id));
        assert_eq!(
            s("/v2/proxy/auth", &tok),
            Some((5, "launch-addr", "192.0.2.7".into()))
        );
        assert_eq!(s("/v2/conf", &none).map(|x| x.1), Some("launch-addr"));
        let (n, scope, id) = s("/v2/circuits", &tok).unwrap();
        assert_eq!((n, scope), (7, "api-token"));
        assert!(!id.contains("s3cret"));
        assert_eq!(s("/v2/circuits", &none).map(|x| x.1), Some("api-addr"));
        for free in ["/health", "/status", "/metrics", "/api/worker", "unmatched"] {
            assert_eq!(s(free, &tok), None, "{free}");
        }
        let mut off = cfg();
        off.api_per_token = Limit::OFF;
        assert!(subject("/v2/circuits", &tok, ip, &off).is_none());
    }
}
