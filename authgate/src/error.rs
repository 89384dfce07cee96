//! `GateError`: authgate's only mapping from failures to statuses and bodies. Browsers get a
//! small HTML page that says how to get back in (never a redirect, so never a loop); API
//! clients get a Backend.AI-style JSON error.

use appproxy_gatecore::answer::{Refusal, wants_json};
use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

#[derive(Debug, Clone)]
pub struct GateError {
    pub status: StatusCode,
    /// Backend.AI-style error code (`E2000x`).
    pub code: &'static str,
    pub msg: String,
    /// Answer as JSON (API client) rather than HTML (browser).
    pub json: bool,
    /// Where to go next (the platform's login page), shown as a link / `"login_url"`.
    pub link: Option<String>,
    /// `Retry-After` seconds (a `503` says 1 without it).
    pub retry_after: Option<u64>,
}

impl GateError {
    pub fn new(status: u16, code: &'static str, msg: impl Into<String>) -> GateError {
        GateError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            msg: msg.into(),
            json: false,
            link: None,
            retry_after: None,
        }
    }

    /// Say when to try again.
    pub fn with_retry_after(mut self, secs: u64) -> GateError {
        self.retry_after = Some(secs);
        self
    }

    /// Offer `url` as the way back (only an `http(s)` URL is shown).
    pub fn with_link(mut self, url: Option<&str>) -> GateError {
        self.link = url
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .map(str::to_string);
        self
    }

    /// Choose HTML or JSON from the client's `Accept`.
    pub fn for_client(mut self, headers: &HeaderMap) -> GateError {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.json = wants_json(accept);
        self
    }
}

impl IntoResponse for GateError {
    fn into_response(self) -> Response {
        let (ctype, body) = Refusal {
            status: self.status.as_u16(),
            code: self.code,
            msg: &self.msg,
            link: self.link.as_deref(),
        }
        .body(self.json);
        let mut resp = (self.status, body).into_response();
        resp.extensions_mut()
            .insert(appproxy_common::metrics::ErrorCode(self.code));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        match self.retry_after {
            Some(secs) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            None if self.status == StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            None => {}
        }
        resp
    }
}
