//! `GateError`: authgate's only mapping from failures to statuses and bodies. Browsers get a
//! small HTML page that says how to get back in (never a redirect, so never a loop); API
//! clients get a Backend.AI-style JSON error.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

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
        self.json = !accept.contains("text/html");
        self
    }
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '&' => "&amp;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

impl IntoResponse for GateError {
    fn into_response(self) -> Response {
        let (ctype, body) = if self.json {
            let kind = if self.status == StatusCode::TOO_MANY_REQUESTS {
                "rate-limit-exceeded"
            } else {
                "appproxy/auth-failed"
            };
            let mut body = json!({
                "type": format!("https://api.backend.ai/probs/{kind}"),
                "title": self.msg,
                "error_code": self.code,
                "msg": format!("{}: {}", self.code, self.msg),
            });
            if let Some(l) = &self.link {
                body["login_url"] = l.as_str().into();
            }
            ("application/problem+json", body.to_string())
        } else {
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><meta charset=\"utf-8\"><title>App access \
                     denied</title></head><body><h1>{} {}</h1><p>{}</p><p>{}</p></body></html>\n",
                    self.status.as_u16(),
                    html_escape(self.status.canonical_reason().unwrap_or("")),
                    html_escape(&self.msg),
                    match &self.link {
                        Some(l) => format!(
                            "<a href=\"{}\">Sign in to the platform</a> and open the app again.",
                            html_escape(l)
                        ),
                        None => "Go back to the platform and open the app again to get a fresh \
                                 link."
                            .to_string(),
                    },
                ),
            )
        };
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
