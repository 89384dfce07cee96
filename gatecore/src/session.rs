//! Session cookies: HS256 JWTs signed with a key of their own circuit.
//!
//! The key of a circuit is `HMAC-SHA256(secret, "appproxy-session-key-v1:" ‖ circuit)`, where
//! `secret` is authgate's cookie secret. authgate derives it to mint and to check; the fast-path
//! plugin inside Traefik is handed only the keys of the circuits its worker serves, so whoever
//! reads what the plugin reads can mint cookies for those circuits and no others, and never
//! learns the secret. One algorithm, pinned: the header must say `HS256` and nothing that
//! points elsewhere for a key.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::{
    TokenError,
    names::{AUTHGATE_ISSUER, TYP_SESSION, audience, same_secret},
};

/// Claims of a session cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionClaims {
    pub typ: String,
    pub iss: String,
    pub sub: String,
    pub aud: String,
    #[serde(default)]
    pub ls: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// A circuit's cookie key.
pub type Key = [u8; 32];

/// Longest token looked at; longer is malformed without decoding anything.
pub const MAX_TOKEN_BYTES: usize = 8192;

const DERIVATION_LABEL: &[u8] = b"appproxy-session-key-v1:";
/// `{"typ":"JWT","alg":"HS256"}`, the header every cookie is minted with.
const HEADER_B64: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9";

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// The cookie key of `circuit` under authgate's `secret`.
pub fn circuit_key(secret: &[u8], circuit: Uuid) -> Key {
    let mut m = mac(secret);
    m.update(DERIVATION_LABEL);
    m.update(circuit.as_hyphenated().to_string().as_bytes());
    m.finalize().into_bytes().into()
}

/// A credential valid from `nbf` to `exp` (epoch seconds) at `now`, `leeway` seconds either way
/// (expired once `exp < now - leeway`, as jsonwebtoken has it).
pub fn within(nbf: i64, exp: i64, now: i64, leeway: i64) -> Result<(), TokenError> {
    match exp < now - leeway || nbf > now + leeway {
        true => Err(TokenError::Expired),
        false => Ok(()),
    }
}

/// A key as 64 lowercase hex digits (the fast path's key files).
pub fn key_to_hex(k: &Key) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key from [`key_to_hex`]'s form (surrounding whitespace ignored).
pub fn key_from_hex(s: &str) -> Option<Key> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// The cookie value for `claims`, signed with `key`.
pub fn sign(key: &[u8], claims: &SessionClaims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialize");
    let mut token = format!("{HEADER_B64}.{}", b64().encode(payload));
    let mut m = mac(key);
    m.update(token.as_bytes());
    let sig = b64().encode(m.finalize().into_bytes());
    token.push('.');
    token.push_str(&sig);
    token
}

/// A compact JWT's header, payload and signature (still base64url), or `Malformed`: longer
/// than [`MAX_TOKEN_BYTES`] or not three parts.
pub fn split_jwt(token: &str) -> Result<(&str, &str, &str), TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => Err(TokenError::Malformed),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtHeader {
    alg: String,
    #[serde(default)]
    #[allow(dead_code)]
    typ: Option<String>,
}

/// Check a cookie value against `key`: signature first, then the claims: `typ`, `iss`, the
/// audience of exactly this circuit and generation, and `nbf`/`exp` against `now` (epoch
/// seconds) with `leeway` seconds either way (expired once `exp < now - leeway`).
pub fn verify(
    token: &str,
    key: &[u8],
    circuit: Uuid,
    generation: i64,
    now: i64,
    leeway: i64,
) -> Result<SessionClaims, TokenError> {
    let (h, p, s) = split_jwt(token)?;
    let header = b64().decode(h).map_err(|_| TokenError::Malformed)?;
    // A header naming a key source (`jku`, `jwk`, `x5u`, `x5c`, `kid`) or another algorithm
    // is refused before any key is used.
    let header: JwtHeader = serde_json::from_slice(&header).map_err(|_| TokenError::Signature)?;
    if header.alg != "HS256" {
        return Err(TokenError::Signature);
    }
    let sig = b64().decode(s).map_err(|_| TokenError::Malformed)?;
    let mut m = mac(key);
    m.update(&token.as_bytes()[..h.len() + 1 + p.len()]);
    if !same_secret(&m.finalize().into_bytes(), &sig) {
        return Err(TokenError::Signature);
    }
    let payload = b64().decode(p).map_err(|_| TokenError::Malformed)?;
    let c: SessionClaims = serde_json::from_slice(&payload).map_err(|e| {
        if e.is_data() {
            TokenError::Claims
        } else {
            TokenError::Malformed
        }
    })?;
    within(c.nbf, c.exp, now, leeway)?;
    if c.typ != TYP_SESSION || c.iss != AUTHGATE_ISSUER || c.aud != audience(circuit, generation) {
        return Err(TokenError::Claims);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(circuit: Uuid, generation: i64, now: i64) -> SessionClaims {
        SessionClaims {
            typ: TYP_SESSION.into(),
            iss: AUTHGATE_ISSUER.into(),
            sub: "u1".into(),
            aud: audience(circuit, generation),
            ls: "ls".into(),
            iat: now,
            nbf: now,
            exp: now + 60,
        }
    }

    #[test]
    fn a_cookie_verifies_under_its_own_circuit_key_only() {
        let (c, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let secret = b"a-secret-of-at-least-thirty-two-bytes!!";
        let k = circuit_key(secret, c);
        assert_ne!(k, circuit_key(secret, other));
        assert_ne!(k, circuit_key(b"another-secret-of-thirty-two-bytes!!!", c));
        let t = sign(&k, &claims(c, 3, 1000));
        assert_eq!(verify(&t, &k, c, 3, 1000, 0).unwrap().sub, "u1");
        // Another circuit's key, another generation, the master secret itself.
        let k2 = circuit_key(secret, other);
        assert_eq!(verify(&t, &k2, c, 3, 1000, 0), Err(TokenError::Signature));
        assert_eq!(verify(&t, &k, c, 4, 1000, 0), Err(TokenError::Claims));
        assert_eq!(
            verify(&t, secret, c, 3, 1000, 0),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn times_hold_with_leeway() {
        let c = Uuid::from_u128(7);
        let k = circuit_key(b"s", c);
        let t = sign(&k, &claims(c, 1, 1000));
        assert!(verify(&t, &k, c, 1, 1060, 0).is_ok());
        assert_eq!(verify(&t, &k, c, 1, 1061, 0), Err(TokenError::Expired));
        assert!(verify(&t, &k, c, 1, 1061, 5).is_ok());
        assert_eq!(verify(&t, &k, c, 1, 990, 0), Err(TokenError::Expired));
        assert!(verify(&t, &k, c, 1, 990, 10).is_ok());
    }

    #[test]
    fn tampering_and_other_algorithms_are_refused() {
        let c = Uuid::from_u128(9);
        let k = circuit_key(b"s", c);
        let t = sign(&k, &claims(c, 1, 1000));
        let (h, rest) = t.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let mut evil = claims(c, 1, 1000);
        evil.sub = "admin".into();
        let p2 = b64().encode(serde_json::to_vec(&evil).unwrap());
        assert_eq!(
            verify(&format!("{h}.{p2}.{s}"), &k, c, 1, 1000, 0),
            Err(TokenError::Signature)
        );
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"HS256","typ":"JWT","jku":"http://x"}"#,
            r#"{"alg":"HS256","kid":"../../x"}"#,
        ] {
            let h2 = b64().encode(header);
            let mut m = mac(&k);
            m.update(format!("{h2}.{p}").as_bytes());
            let s2 = b64().encode(m.finalize().into_bytes());
            assert_eq!(
                verify(&format!("{h2}.{p}.{s2}"), &k, c, 1, 1000, 0),
                Err(TokenError::Signature),
                "{header}"
            );
        }
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert_eq!(
                verify(junk, &k, c, 1, 1000, 0).unwrap_err(),
                TokenError::Malformed,
                "{junk:.20}"
            );
        }
    }
}
