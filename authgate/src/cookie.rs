//! Cookies authgate sets (`Set-Cookie`); reading them is `appproxy_gatecore::jar`, re-exported
//! here.

use appproxy_common::auth::cookie_name;
pub use appproxy_gatecore::jar::{CookieError, Jar, MAX_CANDIDATES, MAX_COOKIE_BYTES};
use uuid::Uuid;

/// `Set-Cookie` for a session cookie: host-only, HttpOnly, SameSite=Lax, `Path=/` (path mode:
/// the circuit's prefix, so the browser sends it to that app only); under TLS `Secure` and the
/// `__Host-` name (`__Secure-` with a prefix: `__Host-` demands `Path=/`).
pub fn set_cookie(
    circuit: Uuid,
    value: &str,
    max_age: i64,
    tls: bool,
    path: Option<&str>,
) -> String {
    let name = match (tls, path) {
        (true, Some(_)) => format!("__Secure-{}", cookie_name(circuit, false)),
        _ => cookie_name(circuit, tls),
    };
    let mut s = format!(
        "{name}={value}; Path={}; Max-Age={max_age}; HttpOnly; SameSite=Lax",
        path.unwrap_or("/")
    );
    if tls {
        s.push_str("; Secure");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn set_cookie_attributes() {
        let c = Uuid::new_v4();
        let s = set_cookie(c, "v", 60, true, None);
        assert!(s.starts_with("__Host-appproxy_"));
        for attr in [
            "Path=/;",
            "Max-Age=60",
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
        ] {
            assert!(s.contains(attr), "{s}");
        }
        assert!(!s.contains("Domain"));
        assert!(!set_cookie(c, "v", 60, false, None).contains("Secure"));
        // Path mode: scoped to the prefix; under TLS `__Secure-` (`__Host-` needs `Path=/`),
        // and the jar finds it under that name.
        let p = set_cookie(c, "v", 60, true, Some("/s1/lab"));
        assert!(
            p.starts_with("__Secure-appproxy_") && p.contains("; Path=/s1/lab;"),
            "{p}"
        );
        let plain = set_cookie(c, "v", 60, false, Some("/s1/lab"));
        assert!(
            plain.starts_with("appproxy_") && plain.contains("; Path=/s1/lab;"),
            "{plain}"
        );
        let line = format!("{}=tok", p.split('=').next().unwrap());
        assert_eq!(
            Jar::parse(&[&line]).unwrap().candidates(c).unwrap(),
            ["tok"]
        );
        assert!(Jar::parse(&[&line]).unwrap().without_ours().is_none());
    }
}
