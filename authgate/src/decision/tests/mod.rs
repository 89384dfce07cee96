//! Decision and token tests with fixed test-only keys: A1 (algorithm confusion, tampering,
//! key-pointing headers), A2 (strict claims), A3 (cross-circuit and old generation), B2
//! (malformed input), revocation, inference, preflight.

use std::collections::HashMap;

use appproxy_common::auth::{
    AUTHGATE_ISSUER, PROVIDER_ISSUER, TYP_INFERENCE, TYP_SESSION, TYP_SETUP, audience, cookie_name,
};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::revocation::Revocations;

/// Test-only Ed25519 key pair (never used outside tests).
const PROVIDER_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIMA8pPHmQ0ZLTLehI3SKiyo1xt8fHEKkIgHYm3F7G9MW
-----END PRIVATE KEY-----
";
pub(crate) const PROVIDER_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAwv4NvpdVm2hfnQPOS24NSaIw16e3tCnOWPkbJ3HIMGo=
-----END PUBLIC KEY-----
";
pub(crate) const COOKIE_SECRET: &[u8] = b"test-cookie-secret-of-at-least-32-bytes!";

pub(crate) fn keys() -> Keys {
    Keys::new(PROVIDER_PUBLIC.as_bytes(), COOKIE_SECRET, 30).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub(crate) fn synced() -> std::sync::Arc<Revocations> {
    let r = Revocations::new();
    r.replace(HashMap::new());
    r
}

pub(crate) fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

pub(crate) fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

pub(crate) fn eddsa(claims: &Value) -> String {
    let key = EncodingKey::from_ed_pem(PROVIDER_PRIVATE.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap()
}

fn session_claims(c: Uuid, generation: i64) -> Value {
    let t = now();
    json!({"typ": TYP_SESSION, "iss": AUTHGATE_ISSUER, "sub": "alice", "aud": audience(c, generation),
           "ls": "", "iat": t, "nbf": t, "exp": t + 600})
}

pub(crate) fn setup_claims(c: Uuid, generation: i64) -> Value {
    let t = now();
    json!({"typ": TYP_SETUP, "iss": PROVIDER_ISSUER, "sub": "alice", "aud": audience(c, generation),
           "cid": c, "generation": generation, "origin": "http://127.0.0.1:1", "redirect": "/",
           "ls": "", "iat": t, "nbf": t, "exp": t + 60, "jti": "j1"})
}

fn inference_claims(c: Uuid) -> Value {
    let t = now();
    json!({"typ": TYP_INFERENCE, "iss": PROVIDER_ISSUER, "sub": "bob", "aud": c.to_string(),
           "id": c, "user": "bob", "iat": t, "nbf": t, "exp": t + 600})
}

struct Req {
    method: String,
    host: Vec<String>,
    uri: String,
    cookies: Vec<String>,
    authorization: Vec<String>,
    /// Other forwarded headers by name (`origin`, `sec-fetch-site`, …).
    extra: Vec<(&'static str, String)>,
    extra_origins: Vec<String>,
}

impl Req {
    fn get() -> Req {
        Req {
            method: "GET".into(),
            host: vec!["app.test".into()],
            uri: "/lab?x=1".into(),
            cookies: vec![],
            authorization: vec![],
            extra: vec![("x-forwarded-proto", "http".into())],
            extra_origins: vec![],
        }
    }
    fn method(mut self, m: &str) -> Req {
        self.method = m.into();
        self
    }
    fn header(mut self, name: &'static str, v: &str) -> Req {
        self.extra.push((name, v.into()));
        self
    }
    fn cookie(mut self, c: Uuid, v: &str) -> Req {
        self.cookies.push(format!("{}={v}", cookie_name(c, false)));
        self
    }
    fn run(&self, t: Target, r: &Revocations) -> Result<Allow, Deny> {
        fn ok(v: &[String]) -> Vec<Result<&str, ()>> {
            v.iter().map(|s| Ok(s.as_str())).collect()
        }
        let h = |name: &str| -> Vec<Result<&str, ()>> {
            self.extra
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| Ok(v.as_str()))
                .collect()
        };
        let f = Forwarded {
            method: vec![Ok(self.method.as_str())],
            host: ok(&self.host),
            uri: vec![Ok(self.uri.as_str())],
            cookies: ok(&self.cookies),
            authorization: ok(&self.authorization),
            referer: vec![],
            proto: h("x-forwarded-proto"),
            origin: h("origin"),
            fetch_site: h("sec-fetch-site"),
            preflight_method: h("access-control-request-method"),
            websocket_key: h("sec-websocket-key"),
            content_length: h("content-length"),
            transfer_encoding: h("transfer-encoding"),
        };
        decide(
            &f,
            t,
            &keys(),
            r,
            &Settings {
                forward_inference_authorization: false,
                extra_origins: &self.extra_origins,
            },
        )
    }
}

fn interactive(c: Uuid, generation: i64) -> Target {
    Target {
        circuit: c,
        generation,
        mode: Mode::Interactive,
        public: false,
    }
}

#[test]
fn valid_cookie_allows_and_is_stripped() {
    let c = Uuid::new_v4();
    let tok = hs256(&session_claims(c, 3), COOKIE_SECRET);
    let mut req = Req::get().cookie(c, &tok);
    req.cookies.push("_xsrf=abc; appproxy_permit=legacy".into());
    let a = req.run(interactive(c, 3), &synced()).unwrap();
    assert_eq!(a.user, "alice");
    assert_eq!(a.cookie.as_deref(), Some("_xsrf=abc"));
    assert_eq!(a.authorization, None);
}

#[test]
fn keys_mint_what_they_verify() {
    let c = Uuid::new_v4();
    let k = keys();
    let setup = k.verify_setup(&eddsa(&setup_claims(c, 2))).unwrap();
    let cookie = k.mint_session(&setup, now(), 600);
    assert_eq!(k.verify_session(&cookie, c, 2).unwrap().sub, "alice");
    assert!(k.verify_session(&cookie, c, 3).is_err());
}

#[test]
fn a1_algorithm_confusion_and_tampering_rejected() {
    let c = Uuid::new_v4();
    let k = keys();
    let claims = session_claims(c, 1);
    let body = b64(claims.to_string().as_bytes());
    let none = format!("{}.{body}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    // HS256 "signed" with the provider's public key bytes (RS/Ed → HS confusion).
    let confused = hs256(&setup_claims(c, 1), PROVIDER_PUBLIC.as_bytes());
    // Session cookie signed with a different secret.
    let foreign = hs256(&claims, b"another-secret-another-secret-xx");
    // Tampered: valid token, payload swapped.
    let good = hs256(&claims, COOKIE_SECRET);
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims.clone();
    evil["sub"] = json!("mallory");
    let evil_body = b64(evil.to_string().as_bytes());
    parts[1] = &evil_body;
    let tampered = parts.join(".");
    // A jku header pointing elsewhere, otherwise validly signed.
    let mut h = Header::new(Algorithm::HS256);
    h.jku = Some("http://evil.test/keys".into());
    let jku = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(COOKIE_SECRET)).unwrap();
    // An EdDSA-signed token presented as cookie (right key family, wrong kind).
    let ed_cookie = eddsa(&claims);
    for t in [
        &none,
        &foreign,
        &tampered,
        &jku,
        &ed_cookie,
        &"a.b.c".to_string(),
        &String::new(),
    ] {
        assert!(k.verify_session(t, c, 1).is_err(), "cookie accepted: {t}");
        let r = Req::get().cookie(c, t).run(interactive(c, 1), &synced());
        assert!(r.is_err(), "request allowed with {t}");
    }
    let none_setup = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(setup_claims(c, 1).to_string().as_bytes())
    );
    for t in [
        &confused,
        &none_setup,
        &hs256(&setup_claims(c, 1), COOKIE_SECRET),
    ] {
        assert!(k.verify_setup(t).is_err(), "setup accepted: {t}");
    }
}

#[test]
fn a2_strict_claims() {
    let c = Uuid::new_v4();
    let k = keys();
    let t = now();
    type Edit = Box<dyn Fn(&mut Value)>;
    let variants: Vec<(&str, Edit)> = vec![
        (
            "no exp",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "expired beyond leeway",
            Box::new(move |v| v["exp"] = json!(t - 120)),
        ),
        (
            "nbf in the future",
            Box::new(move |v| v["nbf"] = json!(t + 600)),
        ),
        (
            "exp as string",
            Box::new(move |v| v["exp"] = json!((t + 600).to_string())),
        ),
        (
            "nbf as string",
            Box::new(|v| v["nbf"] = json!("99999999999")),
        ),
        ("wrong iss", Box::new(|v| v["iss"] = json!("someone"))),
        ("wrong typ", Box::new(|v| v["typ"] = json!(TYP_SETUP))),
        ("wrong aud", Box::new(|v| v["aud"] = json!("x.1"))),
        (
            "no sub",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("sub");
            }),
        ),
        ("unknown claim", Box::new(|v| v["admin"] = json!(true))),
    ];
    for (name, f) in &variants {
        let mut claims = session_claims(c, 1);
        f(&mut claims);
        assert!(
            k.verify_session(&hs256(&claims, COOKIE_SECRET), c, 1)
                .is_err(),
            "{name}"
        );
    }
    let mut skewed = session_claims(c, 1);
    skewed["exp"] = json!(t - 10);
    skewed["nbf"] = json!(t + 10);
    assert!(
        k.verify_session(&hs256(&skewed, COOKIE_SECRET), c, 1)
            .is_ok(),
        "skew within leeway"
    );
    // Setup token as cookie and cookie as setup token.
    let setup = eddsa(&setup_claims(c, 1));
    assert!(k.verify_session(&setup, c, 1).is_err());
    assert!(
        k.verify_setup(&hs256(&session_claims(c, 1), COOKIE_SECRET))
            .is_err()
    );
    // A setup token whose aud does not match its own circuit/generation.
    let mut bad = setup_claims(c, 1);
    bad["generation"] = json!(2);
    assert!(k.verify_setup(&eddsa(&bad)).is_err());
    let mut inf_typ = setup_claims(c, 1);
    inf_typ["typ"] = json!(TYP_INFERENCE);
    assert!(k.verify_setup(&eddsa(&inf_typ)).is_err());
}

#[test]
fn a3_cookie_of_other_circuit_or_generation_refused() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let tok_a = hs256(&session_claims(a, 1), COOKIE_SECRET);
    let r = synced();
    assert!(
        Req::get()
            .cookie(a, &tok_a)
            .run(interactive(a, 1), &r)
            .is_ok()
    );
    // A's cookie under B's name, and A's cookie sent to B.
    assert!(
        Req::get()
            .cookie(b, &tok_a)
            .run(interactive(b, 1), &r)
            .is_err()
    );
    assert_eq!(
        Req::get().cookie(a, &tok_a).run(interactive(b, 1), &r),
        Err(Deny::NoCookie)
    );
    // Same circuit, next generation.
    assert!(matches!(
        Req::get().cookie(a, &tok_a).run(interactive(a, 2), &r),
        Err(Deny::BadCookie(_))
    ));
}

#[test]
fn tossed_cookie_neither_authenticates_nor_displaces() {
    let c = Uuid::new_v4();
    let good = hs256(&session_claims(c, 1), COOKIE_SECRET);
    let tossed = hs256(&session_claims(c, 1), b"attacker-secret-attacker-secret!");
    let r = synced();
    assert!(
        Req::get()
            .cookie(c, &tossed)
            .run(interactive(c, 1), &r)
            .is_err()
    );
    assert!(
        Req::get()
            .cookie(c, &tossed)
            .cookie(c, &good)
            .run(interactive(c, 1), &r)
            .is_ok()
    );
    assert!(
        Req::get()
            .cookie(c, &good)
            .cookie(c, &tossed)
            .run(interactive(c, 1), &r)
            .is_ok()
    );
}

#[test]
fn b2_malformed_requests_fail_closed() {
    let c = Uuid::new_v4();
    let good = hs256(&session_claims(c, 1), COOKIE_SECRET);
    let r = synced();
    let t = interactive(c, 1);
    let mut no_host = Req::get().cookie(c, &good);
    no_host.host.clear();
    assert_eq!(no_host.run(t, &r), Err(Deny::BadForwarded));
    let mut two_hosts = Req::get().cookie(c, &good);
    two_hosts.host.push("evil.test".into());
    assert_eq!(two_hosts.run(t, &r), Err(Deny::BadForwarded));
    for uri in ["", "lab", "/a b", "/a\u{0}b", "http://x/"] {
        let mut q = Req::get().cookie(c, &good);
        q.uri = uri.into();
        assert_eq!(q.run(t, &r), Err(Deny::BadForwarded), "{uri:?}");
    }
    let mut many = Req::get();
    for _ in 0..100 {
        many = many.cookie(c, "x");
    }
    assert_eq!(many.run(t, &r), Err(Deny::BadCookieHeader));
    let mut huge = Req::get();
    huge.cookies.push(format!("big={}", "a".repeat(64 * 1024)));
    assert_eq!(huge.run(t, &r), Err(Deny::BadCookieHeader));
    let broken = Req::get().cookie(c, "%%%not-base64");
    assert!(broken.run(t, &r).is_err());
    // Invalid UTF-8 in a Cookie line.
    let f = Forwarded {
        method: vec![Ok("GET")],
        host: vec![Ok("h")],
        uri: vec![Ok("/")],
        cookies: vec![Err(())],
        authorization: vec![],
        referer: vec![],
        ..Forwarded::default()
    };
    assert_eq!(
        decide(
            &f,
            t,
            &keys(),
            &r,
            &Settings {
                forward_inference_authorization: false,
                extra_origins: &[],
            }
        ),
        Err(Deny::BadCookieHeader)
    );
}

#[test]
fn preflight_passes_and_not_ready_fails_closed() {
    let c = Uuid::new_v4();
    let mut pre = Req::get()
        .method("OPTIONS")
        .header("origin", "http://other.test")
        .header("access-control-request-method", "PUT");
    pre.cookies
        .push(format!("{}=x; a=1", cookie_name(c, false)));
    let a = pre.run(interactive(c, 1), &synced()).unwrap();
    assert_eq!(a.cookie.as_deref(), Some("a=1"));
    assert!(a.preflight);
    let good = hs256(&session_claims(c, 1), COOKIE_SECRET);
    let unsynced = Revocations::new();
    assert_eq!(
        Req::get()
            .cookie(c, &good)
            .run(interactive(c, 1), &unsynced),
        Err(Deny::NotReady)
    );
}

#[test]
fn revoked_user_or_login_session_refused() {
    let c = Uuid::new_v4();
    let mut claims = session_claims(c, 1);
    claims["ls"] = json!("abc");
    let tok = hs256(&claims, COOKIE_SECRET);
    let r = synced();
    assert!(
        Req::get()
            .cookie(c, &tok)
            .run(interactive(c, 1), &r)
            .is_ok()
    );
    r.apply_event(&format!("l:abc={}", now()));
    assert_eq!(
        Req::get().cookie(c, &tok).run(interactive(c, 1), &r),
        Err(Deny::Revoked)
    );
    let r2 = synced();
    r2.apply_event(&format!("u:alice={}", now() + 1));
    assert_eq!(
        Req::get().cookie(c, &tok).run(interactive(c, 1), &r2),
        Err(Deny::Revoked)
    );
}

#[test]
fn inference_tokens() {
    let c = Uuid::new_v4();
    let t = Target {
        circuit: c,
        generation: 1,
        mode: Mode::Inference,
        public: false,
    };
    let r = synced();
    let tok = eddsa(&inference_claims(c));
    for scheme in ["Bearer", "BackendAI", "bearer"] {
        let mut q = Req::get();
        q.authorization.push(format!("{scheme} {tok}"));
        let a = q.run(t, &r).unwrap();
        assert_eq!(a.user, "bob");
        assert_eq!(a.authorization, None, "removed before the model server");
    }
    assert_eq!(Req::get().run(t, &r), Err(Deny::NoToken));
    let mut basic = Req::get();
    basic.authorization.push("Basic dXNlcjpwdw==".into());
    assert_eq!(basic.run(t, &r), Err(Deny::BadScheme));
    let other = eddsa(&inference_claims(Uuid::new_v4()));
    let mut q = Req::get();
    q.authorization.push(format!("Bearer {other}"));
    assert_eq!(q.run(t, &r).unwrap_err().code(), "E20009");
    let mut forged = Req::get();
    forged.authorization.push(format!(
        "Bearer {}",
        hs256(&inference_claims(c), PROVIDER_PUBLIC.as_bytes())
    ));
    assert!(forged.run(t, &r).is_err());
    let auth = format!("Bearer {tok}");
    let f = Forwarded {
        method: vec![Ok("POST")],
        host: vec![Ok("h")],
        uri: vec![Ok("/v1/chat")],
        cookies: vec![],
        authorization: vec![Ok(auth.as_str())],
        referer: vec![],
        ..Forwarded::default()
    };
    let a = decide(
        &f,
        t,
        &keys(),
        &r,
        &Settings {
            forward_inference_authorization: true,
            extra_origins: &[],
        },
    )
    .unwrap();
    assert_eq!(a.authorization.as_deref(), Some(auth.as_str()));
}

mod requests;
