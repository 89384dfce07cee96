//! Plugin ABI v1 — the contract between authgate and a WebAssembly auth plugin (pure: what
//! goes in, what may come out, and how an answer is checked). See `PLUGINS.md`.
//!
//! A module imports **nothing** and exports:
//! - `memory`;
//! - `ap_alloc(len: i32) -> i32`: a buffer of `len` bytes in its memory for the request;
//! - `ap_decide(ptr: i32, len: i32) -> i64`: reads the request JSON at `ptr..ptr+len` and returns
//!   `(out_ptr << 32) | out_len`, the decision JSON in its memory;
//! - optionally `ap_abi_version() -> i32`, which must return 1.
//!
//! Request: UTF-8 lines `key<TAB>value<LF>`, first `abi<TAB>1`, then `method`, `host`,
//! `path`, `client_ip`, `user`, `now` (epoch s), `weekday` (0 = Monday, UTC), `hour` (UTC),
//! `circuit.id`, `circuit.generation`, `circuit.mode`, `header.<lowercase name>` (no `cookie`;
//! values with control characters are left out) and `config.<key>` (strings as they are, lists
//! of strings joined by `,`, other values as JSON). Flat lines keep plugins small enough to
//! write in WAT; keys never repeat.
//! Decision JSON: `{"allow":true,"headers":{"X-Plugin-…":"…"}}` or
//! `{"allow":false,"status":403,"body":"…"}`. Anything else is a failure, which denies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version a module may announce through `ap_abi_version`.
pub const ABI_VERSION: i32 = 1;
/// Prefix of the only request headers a plugin may add (Traefik copies exactly these).
pub const HEADER_PREFIX: &str = "X-Plugin-";
/// Most bytes of a decision we read out of guest memory.
pub const MAX_OUTPUT: usize = 16 * 1024;
/// Most headers a plugin may add, and bytes per value.
pub const MAX_HEADERS: usize = 16;
pub const MAX_HEADER_VALUE: usize = 1024;
/// Most bytes of a deny body.
pub const MAX_BODY: usize = 1024;

/// What a plugin sees (rendered with [`Request::to_lines`]).
#[derive(Debug, Clone, Serialize)]
pub struct Request<'a> {
    pub abi: i32,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub client_ip: &'a str,
    pub headers: BTreeMap<String, String>,
    pub circuit: CircuitFacts,
    /// The user the built-in check admitted (empty for public circuits).
    pub user: &'a str,
    /// Epoch seconds.
    pub now: i64,
    pub config: &'a serde_json::Value,
}

impl<'a> Request<'a> {
    /// The plugin's input for a request Traefik forwarded: method, host, path and client from
    /// `X-Forwarded-*`, every other header except `Cookie` and `Host` (authgate's cookies never
    /// reach a plugin), the circuit the address names, the admitted user and the config.
    pub fn from_forwarded(
        headers: &'a axum::http::HeaderMap,
        t: crate::decision::Target,
        user: &'a str,
        now: i64,
        config: &'a serde_json::Value,
    ) -> Request<'a> {
        let first = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let headers_in = headers
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                k != "cookie" && !k.starts_with("x-forwarded-") && k != "host"
            })
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        Request {
            abi: ABI_VERSION,
            method: first("x-forwarded-method"),
            host: first("x-forwarded-host"),
            path: first("x-forwarded-uri"),
            client_ip: first("x-forwarded-for")
                .split(',')
                .next()
                .unwrap_or("")
                .trim(),
            headers: headers_in,
            circuit: CircuitFacts {
                id: t.circuit.to_string(),
                generation: t.generation,
                mode: match t.mode {
                    crate::decision::Mode::Interactive => "interactive",
                    crate::decision::Mode::Inference => "inference",
                },
            },
            user,
            now,
            config,
        }
    }

    /// The ABI v1 input text.
    pub fn to_lines(&self) -> String {
        fn clean(v: &str) -> Option<&str> {
            (!v.chars().any(char::is_control)).then_some(v)
        }
        let mut out = String::with_capacity(512);
        let mut line = |k: &str, v: &str| {
            if let (Some(k), Some(v)) = (clean(k), clean(v)) {
                out.push_str(k);
                out.push('\t');
                out.push_str(v);
                out.push('\n');
            }
        };
        let days = self.now.div_euclid(86_400);
        line("abi", &ABI_VERSION.to_string());
        line("method", self.method);
        line("host", self.host);
        line("path", self.path);
        line("client_ip", self.client_ip);
        line("user", self.user);
        line("now", &self.now.to_string());
        // 1970-01-01 was a Thursday (3 when Monday is 0).
        line("weekday", &((days + 3).rem_euclid(7)).to_string());
        line("hour", &(self.now.rem_euclid(86_400) / 3600).to_string());
        line("circuit.id", &self.circuit.id);
        line("circuit.generation", &self.circuit.generation.to_string());
        line("circuit.mode", self.circuit.mode);
        for (k, v) in &self.headers {
            if k != "cookie" {
                line(&format!("header.{k}"), v);
            }
        }
        if let Some(cfg) = self.config.as_object() {
            for (k, v) in cfg {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(a) if a.iter().all(|x| x.is_string()) => a
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                line(&format!("config.{k}"), &text);
            }
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CircuitFacts {
    pub id: String,
    pub generation: i64,
    pub mode: &'static str,
}

/// A checked decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow { headers: Vec<(String, String)> },
    Deny { status: u16, body: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    allow: bool,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    body: Option<String>,
}

/// Why an answer was refused (the call then denies with 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    #[error("not a decision JSON: {0}")]
    Json(String),
    #[error("header {0:?} is not allowed (only {HEADER_PREFIX}*)")]
    Header(String),
    #[error("header value of {0:?} is not a short printable string")]
    HeaderValue(String),
    #[error("too many headers")]
    TooManyHeaders,
    #[error("deny status {0} outside 400-599")]
    Status(u16),
    #[error("deny body too long or not printable")]
    Body,
    #[error("an allow carries no status or body")]
    AllowWithStatus,
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

/// Check a plugin's answer against the ABI.
pub fn verdict(bytes: &[u8]) -> Result<Verdict, BadAnswer> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| BadAnswer::Json(e.to_string()))?;
    if raw.allow {
        if raw.status.is_some() || raw.body.is_some() {
            return Err(BadAnswer::AllowWithStatus);
        }
        if raw.headers.len() > MAX_HEADERS {
            return Err(BadAnswer::TooManyHeaders);
        }
        let mut headers = Vec::new();
        for (k, v) in raw.headers {
            let ok_name = k.len() <= 64
                && k.len() > HEADER_PREFIX.len()
                && k.get(..HEADER_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(HEADER_PREFIX))
                && k.chars().all(token_char);
            if !ok_name {
                return Err(BadAnswer::Header(k));
            }
            if v.len() > MAX_HEADER_VALUE || v.chars().any(|c| c.is_control() || !c.is_ascii()) {
                return Err(BadAnswer::HeaderValue(k));
            }
            headers.push((k, v));
        }
        return Ok(Verdict::Allow { headers });
    }
    let status = raw.status.unwrap_or(403);
    if !(400..=599).contains(&status) {
        return Err(BadAnswer::Status(status));
    }
    let body = raw.body.unwrap_or_default();
    if body.len() > MAX_BODY || body.chars().any(|c| c.is_control() && c != '\n') {
        return Err(BadAnswer::Body);
    }
    if !raw.headers.is_empty() {
        return Err(BadAnswer::Header("headers on a deny".into()));
    }
    Ok(Verdict::Deny { status, body })
}

/// Plugin names: what file stems and `auth_plugin.name` may be.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        assert_eq!(
            verdict(br#"{"allow":true,"headers":{"X-Plugin-Tenant":"a"}}"#),
            Ok(Verdict::Allow {
                headers: vec![("X-Plugin-Tenant".into(), "a".into())]
            })
        );
        assert_eq!(
            verdict(br#"{"allow":false,"status":401,"body":"no key"}"#),
            Ok(Verdict::Deny {
                status: 401,
                body: "no key".into()
            })
        );
        assert_eq!(
            verdict(br#"{"allow":false}"#),
            Ok(Verdict::Deny {
                status: 403,
                body: String::new()
            })
        );
        for bad in [
            &br#"{"allow":true,"headers":{"Set-Cookie":"x=1"}}"#[..],
            br#"{"allow":true,"headers":{"Location":"//evil"}}"#,
            br#"{"allow":true,"headers":{"X-Plugin-":"x"}}"#,
            // A multi-byte character across the prefix's end (was a slicing panic).
            "{\"allow\":true,\"headers\":{\"X-Plugin€\":\"x\"}}".as_bytes(),
            "{\"allow\":true,\"headers\":{\"X-Plugi€€\":\"x\"}}".as_bytes(),
            br#"{"allow":true,"headers":{"X-Plugin-A":"a\r\nSet-Cookie: x"}}"#,
            br#"{"allow":false,"status":200}"#,
            br#"{"allow":false,"status":302}"#,
            br#"{"allow":true,"status":200}"#,
            br#"{"allow":"yes"}"#,
            br#"{"allow":true,"extra":1}"#,
            br#"{"allow":tr"#,
            b"",
            b"\xff\xfe",
        ] {
            assert!(verdict(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let many: BTreeMap<String, String> = (0..17)
            .map(|i| (format!("X-Plugin-{i}"), "v".to_string()))
            .collect();
        let j = serde_json::json!({"allow": true, "headers": many}).to_string();
        assert_eq!(verdict(j.as_bytes()), Err(BadAnswer::TooManyHeaders));
    }

    #[test]
    fn input_lines() {
        let cfg = serde_json::json!({"keys": ["a", "b"], "from_hour": 9, "label": "x"});
        let r = Request {
            abi: 1,
            method: "GET",
            host: "h",
            path: "/p",
            client_ip: "127.0.0.1",
            headers: BTreeMap::from([
                ("x-api-key".into(), "k".into()),
                ("cookie".into(), "secret".into()),
                ("x-evil".into(), "a\nconfig.keys\tmine".into()),
            ]),
            circuit: CircuitFacts {
                id: "c".into(),
                generation: 2,
                mode: "inference",
            },
            user: "",
            // 2026-11-23 (a Monday) 10:30 UTC.
            now: 1_795_429_800,
            config: &cfg,
        };
        let text = r.to_lines();
        assert!(text.starts_with("abi\t1\nmethod\tGET\n"), "{text}");
        for want in [
            "\nheader.x-api-key\tk\n",
            "\nconfig.keys\ta,b\n",
            "\nconfig.from_hour\t9\n",
            "\nweekday\t0\n",
            "\nhour\t10\n",
            "\ncircuit.mode\tinference\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
        assert!(!text.contains("secret"), "cookies never reach plugins");
        assert!(!text.contains("mine"), "no line injection");
    }

    #[test]
    fn names() {
        assert!(valid_name("api-keys_v2"));
        for bad in ["", "Upper", "a/b", "../x", "a.wasm", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
