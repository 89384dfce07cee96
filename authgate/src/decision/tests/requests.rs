//! Decision tests of what a browser request carries: Referer, the verified-cookie cache, CORS
//! preflights, WebSocket upgrades, origins.

use super::*;

#[test]
fn referer_into_setup_is_dropped_others_kept() {
    let c = Uuid::new_v4();
    let tok = hs256(&session_claims(c, 1), COOKIE_SECRET);
    let cookie = format!("{}={tok}", cookie_name(c, false));
    let run = |referer: &str| {
        let f = Forwarded {
            method: vec![Ok("GET")],
            host: vec![Ok("h")],
            uri: vec![Ok("/")],
            cookies: vec![Ok(cookie.as_str())],
            authorization: vec![],
            referer: vec![Ok(referer)],
            ..Forwarded::default()
        };
        decide(
            &f,
            interactive(c, 1),
            &keys(),
            &synced(),
            &Settings {
                forward_inference_authorization: false,
                extra_origins: &[],
            },
        )
        .unwrap()
        .referer
    };
    assert_eq!(run("http://h/_appproxy/setup?token=abc"), None);
    assert_eq!(run("http://h/lab").as_deref(), Some("http://h/lab"));
}

#[test]
fn verified_cookies_are_cached_but_stay_bound_and_expire() {
    let k = Keys::new(PROVIDER_PUBLIC.as_bytes(), COOKIE_SECRET, 0).unwrap();
    let c = Uuid::new_v4();
    let mut claims = session_claims(c, 1);
    claims["exp"] = json!(now() + 1);
    let token = hs256(&claims, COOKIE_SECRET);
    assert_eq!(k.verify_session(&token, c, 1).unwrap().sub, "alice");
    // A hit answers the same, but only for the circuit and generation it was verified for.
    assert_eq!(k.verify_session(&token, c, 1).unwrap().sub, "alice");
    assert_eq!(
        k.verify_session(&token, c, 2).unwrap_err(),
        TokenError::Claims
    );
    assert_eq!(
        k.verify_session(&token, Uuid::new_v4(), 1).unwrap_err(),
        TokenError::Claims
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(
        k.verify_session(&token, c, 1).unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn only_a_real_cors_preflight_passes_without_a_credential() {
    let c = Uuid::new_v4();
    let t = interactive(c, 1);
    let r = synced();
    let pre = || {
        Req::get()
            .method("OPTIONS")
            .header("origin", "http://other.test")
            .header("access-control-request-method", "POST")
    };
    assert!(pre().run(t, &r).unwrap().preflight);
    assert!(pre().header("content-length", "0").run(t, &r).is_ok());
    // Not a preflight: a credential is needed like for any other method.
    for not_pre in [
        Req::get().method("OPTIONS"),
        Req::get()
            .method("OPTIONS")
            .header("origin", "http://other.test"),
        Req::get()
            .method("OPTIONS")
            .header("access-control-request-method", "POST"),
        pre().header("content-length", "12"),
        pre().header("transfer-encoding", "chunked"),
        pre()
            .header("content-length", "0")
            .header("content-length", "0"),
        pre().header("origin", "http://second.test"),
    ] {
        assert_eq!(not_pre.run(t, &r), Err(Deny::NoCookie));
    }
    // With the cookie, a plain OPTIONS is an ordinary request.
    let good = hs256(&session_claims(c, 1), COOKIE_SECRET);
    let a = Req::get()
        .method("OPTIONS")
        .cookie(c, &good)
        .run(t, &r)
        .unwrap();
    assert!(!a.preflight);
    assert_eq!(a.user, "alice");
}

#[test]
fn websocket_counted_only_for_an_authorized_get_upgrade() {
    let c = Uuid::new_v4();
    let t = interactive(c, 1);
    let r = synced();
    let good = hs256(&session_claims(c, 1), COOKIE_SECRET);
    let ws = |m: &str| {
        Req::get()
            .method(m)
            .cookie(c, &good)
            .header("sec-websocket-key", "a2V5MQ==")
            .header("origin", "http://app.test")
    };
    assert_eq!(
        ws("GET").run(t, &r).unwrap().websocket.as_deref(),
        Some("a2V5MQ==")
    );
    assert_eq!(ws("OPTIONS").run(t, &r).unwrap().websocket, None);
    // A preflight carrying the header is not a socket either.
    let pre = Req::get()
        .method("OPTIONS")
        .header("origin", "http://app.test")
        .header("access-control-request-method", "GET")
        .header("sec-websocket-key", "a2V5MQ==");
    assert_eq!(pre.run(t, &r).unwrap().websocket, None);
    // Refused upgrades count nothing.
    let anon = Req::get().header("sec-websocket-key", "a2V5MQ==");
    assert_eq!(anon.run(t, &r), Err(Deny::NoCookie));
}

#[test]
fn cookie_requests_from_another_origin_are_refused_when_unsafe() {
    let c = Uuid::new_v4();
    let t = interactive(c, 1);
    let r = synced();
    let good = hs256(&session_claims(c, 1), COOKIE_SECRET);
    let req = |m: &str| Req::get().method(m).cookie(c, &good);
    // Same origin (default port elided, case-insensitive), no Origin at all, safe methods.
    assert!(
        req("POST")
            .header("origin", "http://app.test")
            .run(t, &r)
            .is_ok()
    );
    assert!(
        req("POST")
            .header("origin", "HTTP://App.Test:80")
            .run(t, &r)
            .is_ok()
    );
    assert!(
        req("POST").run(t, &r).is_ok(),
        "no Origin: not a browser page"
    );
    assert!(
        req("GET")
            .header("origin", "http://evil.test")
            .run(t, &r)
            .is_ok()
    );
    assert!(
        req("HEAD")
            .header("sec-fetch-site", "cross-site")
            .run(t, &r)
            .is_ok()
    );
    assert!(
        req("POST")
            .header("sec-fetch-site", "same-origin")
            .run(t, &r)
            .is_ok()
    );
    assert!(
        req("POST")
            .header("sec-fetch-site", "none")
            .run(t, &r)
            .is_ok()
    );
    // Another origin: another port of the same host (port mode), a sibling subdomain
    // (wildcard mode), another scheme, `null`, two values.
    for (name, value) in [
        ("origin", "http://app.test:8081"),
        ("origin", "http://other.app.test"),
        ("origin", "https://app.test"),
        ("origin", "null"),
        ("sec-fetch-site", "same-site"),
        ("sec-fetch-site", "cross-site"),
    ] {
        for m in ["POST", "PUT", "DELETE", "PATCH"] {
            assert_eq!(
                req(m).header(name, value).run(t, &r),
                Err(Deny::CrossOrigin),
                "{m} {name}: {value}"
            );
        }
    }
    let twice = req("POST")
        .header("origin", "http://app.test")
        .header("origin", "http://app.test");
    assert_eq!(twice.run(t, &r), Err(Deny::CrossOrigin));
    // WebSocket upgrades are checked like unsafe methods.
    let ws = req("GET").header("sec-websocket-key", "k");
    assert_eq!(
        ws.header("origin", "http://app.test:9999").run(t, &r),
        Err(Deny::CrossOrigin)
    );
    // Origin wins over Sec-Fetch-Site when both are present.
    assert!(
        req("POST")
            .header("origin", "http://app.test")
            .header("sec-fetch-site", "same-origin")
            .run(t, &r)
            .is_ok()
    );
    // Extra allowed origins of the circuit.
    let mut allowed = req("POST").header("origin", "https://notebook.example.com");
    allowed.extra_origins = vec!["https://notebook.example.com".into()];
    assert!(allowed.run(t, &r).is_ok());
    // Without a valid cookie the answer stays "no access", not a hint about origins.
    assert_eq!(
        Req::get()
            .method("POST")
            .header("origin", "http://evil.test")
            .run(t, &r),
        Err(Deny::NoCookie)
    );
}
