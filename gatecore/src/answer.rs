//! The body of a refusal, as authgate and the fast-path plugin both write it: a small HTML
//! page that says how to get back in for browsers (never a redirect, so never a loop), a
//! Backend.AI-style JSON problem for API clients.

/// What a refused client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal<'a> {
    pub status: u16,
    /// Backend.AI-style error code (`E2000x`).
    pub code: &'a str,
    pub msg: &'a str,
    /// The way back in (the platform's login page), when it is an `http(s)` URL.
    pub link: Option<&'a str>,
}

/// Whether to answer JSON: unless the client's `Accept` asks for HTML.
pub fn wants_json(accept: &str) -> bool {
    !accept.contains("text/html")
}

/// The reason phrase of the statuses a refusal uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Refusal<'_> {
    fn link(&self) -> Option<&str> {
        self.link
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
    }

    /// `(content type, body)`.
    pub fn body(&self, json: bool) -> (&'static str, String) {
        if json {
            let kind = if self.status == 429 {
                "rate-limit-exceeded"
            } else {
                "appproxy/auth-failed"
            };
            let mut body = serde_json::json!({
                "type": format!("https://api.backend.ai/probs/{kind}"),
                "title": self.msg,
                "error_code": self.code,
                "msg": format!("{}: {}", self.code, self.msg),
            });
            if let Some(l) = self.link() {
                body["login_url"] = l.into();
            }
            ("application/problem+json", body.to_string())
        } else {
            let next = match self.link() {
                Some(l) => format!(
                    "<a href=\"{}\">Sign in to the platform</a> and open the app again.",
                    html_escape(l)
                ),
                None => "Go back to the platform and open the app again to get a fresh link."
                    .to_string(),
            };
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><meta charset=\"utf-8\"><title>App access \
                     denied</title></head><body><h1>{} {}</h1><p>{}</p><p>{}</p></body></html>\n",
                    self.status,
                    html_escape(reason_phrase(self.status)),
                    html_escape(self.msg),
                    next,
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_html_carry_the_code_and_a_safe_link_only() {
        let r = Refusal {
            status: 401,
            code: "E20004",
            msg: "No <access>.",
            link: Some("https://login.example/"),
        };
        let (ct, b) = r.body(true);
        assert_eq!(ct, "application/problem+json");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error_code"], "E20004");
        assert_eq!(v["login_url"], "https://login.example/");
        let (ct, h) = r.body(false);
        assert!(ct.starts_with("text/html"));
        assert!(
            h.contains("401 Unauthorized") && h.contains("No &lt;access&gt;."),
            "{h}"
        );
        let js = Refusal {
            link: Some("javascript:alert(1)"),
            ..r
        };
        assert!(!js.body(false).1.contains("javascript"));
        assert!(wants_json("*/*") && !wants_json("text/html,application/xhtml+xml"));
    }
}
