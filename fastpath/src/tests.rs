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
    write_key(&dir, circuit, secret);
    write_state(&dir, 1, &[]);
    alive(&dir, NOW, 1);
    let config = format!(
        r#"{{"circuit":"{circuit}","generation":"4","mode":"interactive","origins":"https://ok.example","stateDir":"{}"}}"#,
        dir.display()
    );
    let gate = Gate::new(Config::parse(config.as_bytes()).unwrap());
    (Dir(dir), gate)
}

fn write_key(dir: &std::path::Path, circuit: Uuid, secret: &[u8]) {
    let k = session::key_to_hex(&session::circuit_key(secret, circuit));
    std::fs::write(dir.join(format!("keys/{circuit}")), k).unwrap();
}

fn write_state(dir: &std::path::Path, version: u64, revoked: &[(&str, i64)]) {
    let version = format!("7-{version}");
    let revocations: HashMap<&str, i64> = revoked.iter().copied().collect();
    let s = serde_json::json!({"version": version, "synced": true, "leeway": 0,
        "login_url": "https://login.example/", "revocations": revocations});
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
    assert_eq!(
        o,
        Outcome::Allow(vec![("Cookie", Some("a=1; b=2".into())), ("Referer", None)])
    );
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
    write_state(&d.0, 2, &[("l:ls-1", NOW)]);
    // Same second: `alive` is not read again; the next second it is.
    alive(&d.0, NOW + 1, 2);
    assert_eq!(status(&g.handle(&req, NOW)), 200);
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
        format!(r#"{{"circuit":"{c}","generation":"1","mode":"inference"}}"#),
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
