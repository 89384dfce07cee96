//! The plugin's logic on the host, over a real state directory: fail closed without a fresh
//! `alive`, cookies bound to the circuit's own key and generation, ours stripped, revocations
//! followed by version, the origin guard, a rotated key picked up.

use std::collections::HashMap;

use appproxy_gatecore::names::{AUTHGATE_ISSUER, TYP_SESSION, audience, cookie_name};

use super::*;

const SECRET: &[u8] = b"test-cookie-secret-of-at-least-32-bytes!";
const NOW: i64 = 1_800_000_000;

struct Req(Vec<(&'static str, String)>, &'static str);

impl Request for Req {
    fn method(&self) -> String {
        self.1.into()
    }
    fn uri(&self) -> String {
        "/lab?x=1".into()
    }
    fn header(&self, name: &str) -> Vec<Result<String, ()>> {
        (self.0.iter())
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| Ok(v.clone()))
            .collect()
    }
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(circuit: Uuid, secret: &[u8]) -> (Dir, Gate) {
    let dir = std::env::temp_dir().join(format!("fastpath-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::create_dir_all(dir.join("counts")).unwrap();
    write_key(&dir, circuit, secret);
    write_state(&dir, 1, &[]);
    alive(&dir, NOW, 1);
    let config = format!(
        r#"{{"circuit":"{circuit}","generation":"4","mode":"interactive","origins":"https://ok.example","stateDir":"{0}","countsDir":"{0}/counts"}}"#,
        dir.display()
    );
    let gate = Gate::new(Config::parse(config.as_bytes()).unwrap());
    (Dir(dir), gate)
}

fn write_key(dir: &std::path::Path, circuit: Uuid, secret: &[u8]) {
    let k = session::key_to_hex(&session::circuit_key(secret, circuit));
    std::fs::write(dir.join(format!("keys/{circuit}")), k).unwrap();
}

/// Test-only Ed25519 key of "the provider".
const PROVIDER_SEED: [u8; 32] = [7; 32];

fn provider_key_hex() -> String {
    let k = ed25519_dalek::SigningKey::from_bytes(&PROVIDER_SEED);
    session::key_to_hex(&k.verifying_key().to_bytes())
}

fn write_state(dir: &std::path::Path, version: u64, revoked: &[(&str, i64)]) {
    let version = format!("7-{version}");
    let revocations: HashMap<&str, i64> = revoked.iter().copied().collect();
    let s = serde_json::json!({"version": version, "synced": true, "leeway": 0,
        "login_url": "https://login.example/", "revocations": revocations,
        "provider_key": provider_key_hex(), "forward_authorization": false});
    std::fs::write(dir.join("state.json"), s.to_string()).unwrap();
}

fn alive(dir: &std::path::Path, at: i64, version: u64) {
    std::fs::write(dir.join("alive"), format!("{at} 7-{version}\n")).unwrap();
}

fn cookie(circuit: Uuid, generation: i64, secret: &[u8], iat: i64) -> String {
    let claims = SessionClaims {
        typ: TYP_SESSION.into(),
        iss: AUTHGATE_ISSUER.into(),
        sub: "user-1".into(),
        aud: audience(circuit, generation),
        ls: "ls-1".into(),
        iat,
        nbf: iat,
        exp: iat + 600,
    };
    let v = session::sign(&session::circuit_key(secret, circuit), &claims);
    format!("a=1; {}={v}; b=2", cookie_name(circuit, false))
}

fn get(cookie: String) -> Req {
    Req(
        vec![("host", "lab.apps.test".into()), ("cookie", cookie)],
        "GET",
    )
}

fn status(o: &Outcome) -> u16 {
    match o {
        Outcome::Allow(_) => 200,
        Outcome::Refuse { status, .. } => *status,
    }
}

#[test]
fn a_valid_cookie_goes_on_without_our_cookie() {
    let c = Uuid::new_v4();
    let (_d, mut g) = setup(c, SECRET);
    let o = g.handle(&get(cookie(c, 4, SECRET, NOW)), NOW);
    // Only what changes is set or removed (each is a call into Traefik): no Referer was sent.
    assert_eq!(o, Outcome::Allow(vec![("Cookie", Some("a=1; b=2".into()))]));
    // A Referer into a setup link is removed; any other stays as it came.
    for (referer, changes) in [
        (
            "https://lab.apps.test/_appproxy/setup?token=x",
            vec![("Referer", None)],
        ),
        ("https://lab.apps.test/tree", vec![]),
    ] {
        let mut req = get(cookie(c, 4, SECRET, NOW));
        req.0.push(("referer", referer.into()));
        let mut expected = vec![("Cookie", Some("a=1; b=2".into()))];
        expected.extend(changes);
        assert_eq!(g.handle(&req, NOW), Outcome::Allow(expected), "{referer}");
    }
}

#[test]
fn other_circuits_generations_and_secrets_are_refused() {
    let c = Uuid::new_v4();
    let (_d, mut g) = setup(c, SECRET);
    let other = Uuid::new_v4();
    // The other circuit's cookie under this circuit's name.
    let foreign =
        cookie(other, 4, SECRET, NOW).replace(&cookie_name(other, false), &cookie_name(c, false));
    for (req, want) in [
        (get(cookie(c, 3, SECRET, NOW)), 401),
        (get(foreign), 401),
        (
            get(cookie(c, 4, b"another-secret-of-thirty-two-bytes!!!!", NOW)),
            401,
        ),
        (get(cookie(c, 4, SECRET, NOW - 700)), 401),
        (get("a=1".into()), 401),
    ] {
        assert_eq!(status(&g.handle(&req, NOW)), want);
    }
    // JSON for API clients, with the way back in.
    let Outcome::Refuse { body, headers, .. } = g.handle(&get("a=1".into()), NOW) else {
        panic!()
    };
    assert!(
        body.contains("E20004") && body.contains("https://login.example/"),
        "{body}"
    );
    assert!(headers.contains(&("Cache-Control", "no-store".into())));
}

#[test]
fn without_a_fresh_heartbeat_nothing_passes() {
    let c = Uuid::new_v4();
    let (d, mut g) = setup(c, SECRET);
    let ok = || get(cookie(c, 4, SECRET, NOW));
    assert_eq!(status(&g.handle(&ok(), NOW + STALE_SECS)), 200);
    assert_eq!(status(&g.handle(&ok(), NOW + STALE_SECS + 1)), 503);
    alive(&d.0, NOW + 11, 1);
    assert_eq!(status(&g.handle(&ok(), NOW + 12)), 200);
    // A restarted authgate's state differs even where its counter repeats.
    std::fs::write(d.0.join("alive"), format!("{} 8-1\n", NOW + 12)).unwrap();
    write_state(&d.0, 1, &[("u:user-1", NOW)]);
    std::fs::write(
        d.0.join("state.json"),
        std::fs::read_to_string(d.0.join("state.json"))
            .unwrap()
            .replace("7-1", "8-1"),
    )
    .unwrap();
    assert_eq!(status(&g.handle(&ok(), NOW + 13)), 401);
    // `alive` removed (authgate stopped): closed at once.
    std::fs::remove_file(d.0.join("alive")).unwrap();
    assert_eq!(status(&g.handle(&ok(), NOW + 14)), 503);
    // Not synced: closed too.
    alive(&d.0, NOW + 15, 2);
    std::fs::write(
        d.0.join("state.json"),
        r#"{"version":"7-2","synced":false}"#,
    )
    .unwrap();
    assert_eq!(status(&g.handle(&ok(), NOW + 15)), 503);
}

#[test]
fn revocations_apply_once_the_version_moves() {
    let c = Uuid::new_v4();
    let (d, mut g) = setup(c, SECRET);
    let req = get(cookie(c, 4, SECRET, NOW));
    assert_eq!(status(&g.handle(&req, NOW)), 200);
    // The state alone changes nothing until authgate replaces `alive` (it writes the state
    // first); then the very next request sees it, in the same second too.
    write_state(&d.0, 2, &[("l:ls-1", NOW)]);
    assert_eq!(status(&g.handle(&req, NOW)), 200);
    alive(&d.0, NOW, 2);
    assert_eq!(status(&g.handle(&req, NOW)), 401);
    assert_eq!(status(&g.handle(&req, NOW + 1)), 401);
    // A cookie issued after the revocation passes.
    let later = get(cookie(c, 4, SECRET, NOW + 1));
    assert_eq!(status(&g.handle(&later, NOW + 1)), 200);
    write_state(&d.0, 3, &[("u:user-1", NOW + 2)]);
    alive(&d.0, NOW + 2, 3);
    assert_eq!(status(&g.handle(&later, NOW + 2)), 401);
}

#[test]
fn another_origins_page_cannot_post_or_open_a_socket() {
    let c = Uuid::new_v4();
    let (_d, mut g) = setup(c, SECRET);
    let with = |method, origin: &str, ws: bool| {
        let mut h = vec![
            ("host", "lab.apps.test".to_string()),
            ("cookie", cookie(c, 4, SECRET, NOW)),
            ("x-forwarded-proto", "http".into()),
            ("origin", origin.to_string()),
        ];
        if ws {
            h.push(("sec-websocket-key", "k".into()));
        }
        Req(h, method)
    };
    assert_eq!(
        status(&g.handle(&with("POST", "http://evil.test", false), NOW)),
        403
    );
    assert_eq!(
        status(&g.handle(&with("GET", "http://evil.test", true), NOW)),
        403
    );
    assert_eq!(
        status(&g.handle(&with("POST", "http://lab.apps.test", false), NOW)),
        200
    );
    assert_eq!(
        status(&g.handle(&with("POST", "https://ok.example", false), NOW)),
        200
    );
}

#[test]
fn a_remembered_cookie_still_expires_and_dies_with_a_rotated_key() {
    let c = Uuid::new_v4();
    let (d, mut g) = setup(c, SECRET);
    let req = get(cookie(c, 4, SECRET, NOW));
    assert_eq!(status(&g.handle(&req, NOW)), 200);
    assert_eq!(status(&g.handle(&req, NOW)), 200);
    alive(&d.0, NOW + 601, 1);
    assert_eq!(status(&g.handle(&req, NOW + 601)), 401);
    // Same cookie, key rotated (read again after 5 s): the remembered one no longer counts.
    let (d, mut g) = setup(c, SECRET);
    assert_eq!(status(&g.handle(&req, NOW)), 200);
    write_key(&d.0, c, b"a-rotated-secret-of-thirty-two-bytes!!!!");
    alive(&d.0, NOW + 5, 1);
    let other = get(cookie(
        c,
        4,
        b"a-rotated-secret-of-thirty-two-bytes!!!!",
        NOW,
    ));
    assert_eq!(status(&g.handle(&other, NOW + 5)), 200);
    assert_eq!(status(&g.handle(&req, NOW + 5)), 401);
}

#[test]
fn a_rotated_key_is_read_again() {
    let c = Uuid::new_v4();
    let (d, mut g) = setup(c, SECRET);
    assert_eq!(status(&g.handle(&get(cookie(c, 4, SECRET, NOW)), NOW)), 200);
    let new = b"a-rotated-secret-of-thirty-two-bytes!!!!";
    write_key(&d.0, c, new);
    let fresh = get(cookie(c, 4, new, NOW));
    // Read again only once the cached key is a few seconds old.
    assert_eq!(status(&g.handle(&fresh, NOW)), 401);
    alive(&d.0, NOW + 5, 1);
    assert_eq!(status(&g.handle(&fresh, NOW + 5)), 200);
}

#[test]
fn config_is_strict_about_what_it_serves() {
    let c = Uuid::new_v4();
    for bad in [
        r#"{"circuit":"x","generation":"1","mode":"interactive"}"#.to_string(),
        format!(r#"{{"circuit":"{c}","generation":"one","mode":"interactive"}}"#),
        format!(r#"{{"circuit":"{c}","generation":"1","mode":"tcp"}}"#),
        "{}".into(),
    ] {
        assert!(Config::parse(bad.as_bytes()).is_err(), "{bad}");
    }
    let ok = Config::parse(
        format!(r#"{{"circuit":"{c}","generation":7,"mode":"interactive","origins":"https://A.example:443,junk"}}"#)
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(ok.target.generation, 7);
    assert_eq!(ok.origins, ["https://a.example"]);
    assert_eq!(ok.state_dir, PathBuf::from(MOUNT));
}

fn eddsa(claims: &serde_json::Value, header: &str) -> String {
    use base64::Engine;
    use ed25519_dalek::Signer;
    let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let signing = format!(
        "{}.{}",
        b(header.as_bytes()),
        b(claims.to_string().as_bytes())
    );
    let k = ed25519_dalek::SigningKey::from_bytes(&PROVIDER_SEED);
    format!("{signing}.{}", b(&k.sign(signing.as_bytes()).to_bytes()))
}

fn inference_gate(circuit: Uuid) -> (Dir, Gate) {
    let (d, _) = setup(circuit, SECRET);
    let config = format!(
        r#"{{"circuit":"{circuit}","generation":"1","mode":"inference","stateDir":"{0}","countsDir":"{0}/counts"}}"#,
        d.0.display()
    );
    (d, Gate::new(Config::parse(config.as_bytes()).unwrap()))
}

fn token(circuit: Uuid, user: &str, iat: i64, exp: i64) -> String {
    let claims = serde_json::json!({"typ": "ap-inference", "iss": "appproxy-provider",
        "sub": "endpoint-owner", "aud": circuit.to_string(), "id": circuit, "user": user,
        "iat": iat, "nbf": iat, "exp": exp});
    eddsa(&claims, r#"{"typ":"JWT","alg":"EdDSA"}"#)
}

fn call(auth: &str) -> Req {
    Req(
        vec![
            ("host", "model.apps.test".into()),
            ("authorization", auth.into()),
        ],
        "POST",
    )
}

#[test]
fn bearer_tokens_of_this_circuit_pass_and_never_reach_the_app() {
    let c = Uuid::new_v4();
    let (d, mut g) = inference_gate(c);
    let t = token(c, "user-9", NOW, NOW + 60);
    for scheme in ["Bearer", "BackendAI", "bearer"] {
        let o = g.handle(&call(&format!("{scheme} {t}")), NOW);
        assert_eq!(o, Outcome::Allow(vec![("Authorization", None)]), "{scheme}");
    }
    // The cached token expires like a fresh one.
    alive(&d.0, NOW + 61, 1);
    assert_eq!(
        status(&g.handle(&call(&format!("Bearer {t}")), NOW + 61)),
        401
    );
}

#[test]
fn foreign_expired_forged_and_revoked_tokens_are_refused() {
    let c = Uuid::new_v4();
    let (d, mut g) = inference_gate(c);
    let other = token(Uuid::new_v4(), "user-9", NOW, NOW + 60);
    let code = |g: &mut Gate, auth: &str, now: i64| match g.handle(&call(auth), now) {
        Outcome::Refuse { status, body, .. } => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (status, v["error_code"].as_str().unwrap().to_string())
        }
        Outcome::Allow(_) => (200, String::new()),
    };
    assert_eq!(
        code(&mut g, &format!("Bearer {other}"), NOW),
        (401, "E20009".into())
    );
    let old = token(c, "user-9", NOW - 120, NOW - 60);
    assert_eq!(
        code(&mut g, &format!("Bearer {old}"), NOW),
        (401, "E20008".into())
    );
    let t = token(c, "user-9", NOW, NOW + 60);
    let (h, rest) = t.split_once('.').unwrap();
    let _ = h;
    let none = format!("eyJhbGciOiJub25lIn0.{rest}");
    assert_eq!(code(&mut g, &format!("Bearer {none}"), NOW).0, 401);
    let hs = eddsa(
        &serde_json::json!({"typ": "ap-inference"}),
        r#"{"alg":"EdDSA","jku":"http://evil"}"#,
    );
    assert_eq!(code(&mut g, &format!("Bearer {hs}"), NOW).0, 401);
    assert_eq!(code(&mut g, "Basic abc", NOW), (401, "E20007".into()));
    assert_eq!(code(&mut g, "", NOW).0, 401);
    // Revoked user: refused once the state says so.
    assert_eq!(code(&mut g, &format!("Bearer {t}"), NOW).0, 200);
    write_state(&d.0, 2, &[("u:user-9", NOW)]);
    alive(&d.0, NOW + 1, 2);
    assert_eq!(
        code(&mut g, &format!("Bearer {t}"), NOW + 1),
        (401, "E20005".into())
    );
}

#[test]
fn the_token_reaches_the_app_only_when_authgate_forwards_it() {
    let c = Uuid::new_v4();
    let (d, mut g) = inference_gate(c);
    let s = std::fs::read_to_string(d.0.join("state.json"))
        .unwrap()
        .replace(
            r#""forward_authorization":false"#,
            r#""forward_authorization":true"#,
        )
        .replace("7-1", "7-3");
    std::fs::write(d.0.join("state.json"), s).unwrap();
    alive(&d.0, NOW, 3);
    let t = format!("Bearer {}", token(c, "u", NOW, NOW + 60));
    // The app gets the token as it came: nothing to change.
    assert_eq!(g.handle(&call(&t), NOW), Outcome::Allow(vec![]));
}

/// Requests counted in `dir/counts` for `circuit`: the bytes of its files.
fn counted(dir: &std::path::Path, circuit: Uuid) -> u64 {
    std::fs::read_dir(dir.join("counts"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&circuit.to_string())
        })
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn every_request_let_through_is_counted_once_and_nothing_else() {
    let c = Uuid::new_v4();
    let (d, mut g) = setup(c, SECRET);
    for _ in 0..5 {
        assert_eq!(status(&g.handle(&get(cookie(c, 4, SECRET, NOW)), NOW)), 200);
    }
    assert_eq!(status(&g.handle(&get("a=1".into()), NOW)), 401);
    assert_eq!(counted(&d.0, c), 5);
    // authgate takes an idle file away (renames it, reads it a last time): the instance
    // opens a new one at its next second, and nothing is lost in between.
    let file = std::fs::read_dir(d.0.join("counts"))
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    let away = d.0.join("taken");
    std::fs::rename(file.path(), &away).unwrap();
    assert_eq!(status(&g.handle(&get(cookie(c, 4, SECRET, NOW)), NOW)), 200);
    alive(&d.0, NOW + 1, 1);
    assert_eq!(
        status(&g.handle(&get(cookie(c, 4, SECRET, NOW)), NOW + 1)),
        200
    );
    assert_eq!(
        std::fs::metadata(&away).unwrap().len() + counted(&d.0, c),
        7
    );
    // A request that cannot be counted is not let through.
    std::fs::remove_dir_all(d.0.join("counts")).unwrap();
    alive(&d.0, NOW + 2, 1);
    assert_eq!(
        status(&g.handle(&get(cookie(c, 4, SECRET, NOW)), NOW + 2)),
        503
    );
}

#[test]
fn a_public_circuit_is_only_counted_and_needs_nothing_of_authgate() {
    let c = Uuid::new_v4();
    let dir = std::env::temp_dir().join(format!("fastpath-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("counts")).unwrap();
    let d = Dir(dir);
    // No key, no state, no `alive`: authgate is gone.
    let config = format!(
        r#"{{"circuit":"{c}","generation":"2","mode":"inference","public":"true","stateDir":"{0}","countsDir":"{0}/counts"}}"#,
        d.0.display()
    );
    let mut g = Gate::new(Config::parse(config.as_bytes()).unwrap());
    let req = Req(
        vec![
            ("host", "api.apps.test".into()),
            ("authorization", "Bearer the-apps-own".into()),
            ("cookie", format!("{}=x", cookie_name(c, false))),
        ],
        "POST",
    );
    for _ in 0..3 {
        // Let through as it came: no header set or removed (the app's own credentials too).
        assert_eq!(g.handle(&req, NOW), Outcome::Allow(Vec::new()));
    }
    assert_eq!(counted(&d.0, c), 3);
    // Only a request that cannot be counted is refused.
    std::fs::remove_dir_all(d.0.join("counts")).unwrap();
    assert_eq!(status(&g.handle(&req, NOW + 1)), 503);
    for bad in ["yes", "1"] {
        let config =
            format!(r#"{{"circuit":"{c}","generation":"2","mode":"inference","public":"{bad}"}}"#);
        assert!(Config::parse(config.as_bytes()).is_err(), "{bad}");
    }
}
