//! The auth contract between provider and authgate: token claims, cookie names and the Redis
//! keys both sides use.
//!
//! Three kinds of token exist, each with its own `typ` and its own key, so none can stand in
//! for another:
//! - **setup tokens** (`typ = ap-setup`): signed by the provider with its Ed25519 key, verified
//!   by authgate with the public key only; short-lived, use-bounded, bound to one circuit and
//!   generation (`aud`), one user, one origin and one redirect path.
//! - **session cookies** (`typ = ap-session`): minted and verified by authgate alone (HMAC-SHA256
//!   with a key derived per circuit from a secret the provider never sees; the fast-path
//!   plugin gets only the derived keys of its own circuits), bound to circuit + generation +
//!   user + login session.
//! - **inference tokens** (`typ = ap-inference`): signed by the provider (Ed25519), bound to one
//!   circuit; sent as `Authorization: Bearer|BackendAI <jwt>`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use appproxy_gatecore::names::{
    AUTHGATE_ISSUER, COOKIE_PREFIX, PROVIDER_ISSUER, TYP_INFERENCE, TYP_SESSION, TYP_SETUP,
    audience, cookie_name, is_our_cookie, same_secret,
};
pub use appproxy_gatecore::session::SessionClaims;

/// Path (under `/_appproxy/`) of the setup endpoint on every app origin.
pub const SETUP_PATH: &str = "/_appproxy/setup";

/// Claims of a setup token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupClaims {
    pub typ: String,
    pub iss: String,
    /// User id.
    pub sub: String,
    /// [`audience`] of the circuit.
    pub aud: String,
    pub cid: Uuid,
    pub generation: i64,
    /// Origin the app is served on (`scheme://host[:port]`); `/setup` runs only there.
    pub origin: String,
    /// Path mode: the circuit's prefix (`/<id>/<app>`); `/setup` runs only under it, and the
    /// cookie is scoped to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Relative path to land on after setup.
    pub redirect: String,
    /// Login-session binding ([`login_session_hash`]), empty when none.
    #[serde(default)]
    pub ls: String,
    /// SHA-256 (hex) of the browser's state nonce, when the launch came through
    /// `/_appproxy/login`; then `/setup` requires the matching state cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Unique id: the key of the use counter.
    pub jti: String,
}

/// Claims of an inference API token (`POST /v2/endpoints/{id}/token`). `id` is the circuit id
/// as Backend.AI's worker checks it; `aud` carries the same for strict validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceClaims {
    pub typ: String,
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub id: Uuid,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub endpoint_id: Option<Uuid>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// Login sessions are bound by a hash, never by the token itself (it is a WebUI credential).
pub fn login_session_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(token.as_bytes());
    hex(&d[..16])
}

/// SHA-256 of a state nonce, lowercase hex.
pub fn state_hash(nonce: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(nonce.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Per-worker credentials: `apw1.<id>.<secret>` (id 16 hex digits, secret 64). The provider
/// issues them bound to one worker authority and keeps only SHA-256(secret); authgate
/// presents the whole string.
pub mod worker_credential {
    use sha2::{Digest, Sha256};

    pub const PREFIX: &str = "apw1";

    /// The credential string for `id` and `secret`.
    pub fn format(id: &str, secret: &str) -> String {
        format!("{PREFIX}.{id}.{secret}")
    }

    /// `(id, secret)` of a well-formed credential.
    pub fn parse(token: &str) -> Option<(&str, &str)> {
        let mut parts = token.split('.');
        let (p, id, secret) = (parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (p == PREFIX && parts.next().is_none() && hex(id, 16) && hex(secret, 64))
            .then_some((id, secret))
    }

    /// What the provider stores: SHA-256 of the secret, lowercase hex (the secret has 244
    /// random bits, so a fast hash is enough).
    pub fn hash(secret: &str) -> String {
        super::hex(&Sha256::digest(secret.as_bytes()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn credentials_round_trip_and_reject_look_alikes() {
            let (id, secret) = ("0123456789abcdef", "a".repeat(64));
            let t = format(id, &secret);
            assert_eq!(parse(&t), Some((id, secret.as_str())));
            for bad in [
                "",
                "apw1",
                "apw1..",
                "apw2.0123456789abcdef.aaaa",
                &format!("apw1.0123456789abcde.{secret}"),
                &format!("apw1.0123456789abcdeg.{secret}"),
                &format!("apw1.0123456789abcdef.{secret}a"),
                &format!("{t}.x"),
                "apw1.€€€€€€€€€€€€€€€€.x",
            ] {
                assert_eq!(parse(bad), None, "{bad}");
            }
            assert_eq!(hash("x").len(), 64);
            assert_ne!(hash("x"), hash("y"));
        }
    }
}

/// Redis names shared by provider and authgate, all under `appproxy:<namespace>:`.
pub mod redis_keys {
    /// Hash: field `u:<user>` or `l:<login session hash>` → epoch seconds of the revocation;
    /// credentials issued at or before it are refused.
    pub fn revocations(ns: &str) -> String {
        format!("appproxy:{ns}:revocations")
    }
    /// Pub/sub channel announcing one revocation as `<field>=<epoch seconds>`.
    pub fn revocations_channel(ns: &str) -> String {
        format!("appproxy:{ns}:revocations:events")
    }
    /// Use counter of one setup token.
    pub fn setup_uses(ns: &str, jti: &str) -> String {
        format!("appproxy:{ns}:setup:{jti}")
    }
    pub use appproxy_gatecore::revocation::{login_field, user_field};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_names_are_per_circuit_and_recognised() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        assert_ne!(cookie_name(a, false), cookie_name(b, false));
        assert!(cookie_name(a, true).starts_with("__Host-appproxy_"));
        for n in [cookie_name(a, true), cookie_name(a, false)] {
            assert!(is_our_cookie(&n));
        }
        assert!(is_our_cookie("appproxy_permit"));
        assert!(is_our_cookie("__Secure-appproxy_x"));
        assert!(!is_our_cookie("_xsrf"));
        assert!(!is_our_cookie("session"));
    }

    #[test]
    fn login_session_hash_is_stable_and_not_the_token() {
        let h = login_session_hash("secret-session");
        assert_eq!(h, login_session_hash("secret-session"));
        assert_eq!(h.len(), 32);
        assert!(!h.contains("secret"));
        assert_ne!(h, login_session_hash("other"));
    }
}

/// The landing path after setup: `raw` if it is a plain relative path on this origin, else `/`.
///
/// Refused (→ `/`): anything not starting with exactly one `/` (`//evil`, `/\evil`, schemes,
/// `evil@host`), any `\`, control character or whitespace (raw or percent-decoded, so
/// `/%09/evil` and `%2F%2Fevil` fail), `..` segments, and more than 2048 bytes.
pub fn safe_redirect(raw: &str) -> String {
    fn plain(p: &str) -> bool {
        p.starts_with('/')
            && !p.starts_with("//")
            && !p.contains('\\')
            && !p.chars().any(|c| c.is_control() || c.is_whitespace())
            && !p
                .split(['?', '#'])
                .next()
                .unwrap_or("")
                .split('/')
                .any(|seg| seg == ".." || seg == ".")
    }
    if raw.is_empty() || raw.len() > 2048 || !plain(raw) {
        return "/".into();
    }
    // Decode the path part up to three times: double encoding must not smuggle anything either.
    let mut cur = raw.split(['?', '#']).next().unwrap_or("").to_string();
    for _ in 0..3 {
        let dec = percent_decode(&cur);
        if !plain(&dec) {
            return "/".into();
        }
        if dec == cur {
            break;
        }
        cur = dec;
    }
    raw.into()
}

/// Percent-decoding that keeps invalid escapes as they are and maps bytes lossily to UTF-8.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hexval(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod redirect_tests {
    use super::safe_redirect;

    #[test]
    fn open_redirect_corpus_falls_back_to_root() {
        let long = format!("/{}", "a".repeat(3000));
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/%09/evil.example",
            "/%2F/evil.example",
            "%2F%2Fevil.example",
            "/%252F/evil.example",
            "https://circuit.example.com.evil.com",
            "https://evil@circuit.example.com",
            "javascript:alert(1)",
            "/a\r\nSet-Cookie: x=1",
            "/a%0d%0aSet-Cookie:%20x=1",
            "/../../x",
            "/a/%2e%2e/b",
            "/ spaced",
            "evil",
            "",
            long.as_str(),
        ] {
            assert_eq!(safe_redirect(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn ordinary_paths_are_kept() {
        for ok in [
            "/",
            "/lab",
            "/lab/tree/a.ipynb?x=1&y=%20",
            "/tree#frag",
            "/a%2Fb",
        ] {
            assert_eq!(safe_redirect(ok), ok, "{ok:?}");
        }
    }
}
