//! Fuzz entry points (`fuzz/`, run with `cargo fuzz` on nightly) and the same functions the
//! corpus replay tests call on stable. Each takes arbitrary bytes, must never panic, and checks
//! the invariants its parser promises.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::{cookie::Jar, ingest, plugin::abi, token::Keys};

/// A fixed Ed25519 public key (its private half signs nothing anywhere): setup tokens checked
/// against it exercise the verifier's parsing, never accept.
const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAwv4NvpdVm2hfnQPOS24NSaIw16e3tCnOWPkbJ3HIMGo=
-----END PUBLIC KEY-----
";

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `Cookie` header lines (split at `\n`): parse, find candidates, strip ours.
pub fn cookie(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let lines: Vec<&str> = s.split('\n').collect();
    let Ok(jar) = Jar::parse(&lines) else { return };
    let circuit = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    if let Ok(c) = jar.candidates(circuit) {
        assert!(c.len() <= crate::cookie::MAX_CANDIDATES);
    }
    assert!(jar.values("appproxy_state").len() <= crate::cookie::MAX_CANDIDATES);
    if let Some(kept) = jar.without_ours() {
        let again = Jar::parse(&[kept.as_str()]).expect("a stripped header parses");
        assert!(
            again.candidates(circuit).is_ok_and(|c| c.is_empty()),
            "our cookie survived stripping: {kept:?}"
        );
    }
}

/// An OTLP/HTTP logs export (first byte: 0 identity, 1 gzip, else an unknown encoding).
pub fn otlp(data: &[u8]) {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let encoding = match first {
        0 => None,
        1 => Some("gzip"),
        _ => Some("br"),
    };
    let Ok(records) = ingest::decode_body(body, encoding) else {
        return;
    };
    for r in &records {
        let c = ingest::classify(r, 1_800_000_000_000);
        if let Ok(e) = &c.event {
            assert!(e.at_ms <= 1_800_000_000_000, "event in the future");
        }
    }
}

/// The plugin ABI both ways: a plugin's answer (decoder), and a request (encoder) built from
/// NUL-separated fields.
pub fn plugin_abi(data: &[u8]) {
    if let Ok(abi::Verdict::Allow { headers }) = abi::verdict(data) {
        for (k, v) in headers {
            assert!(
                k.get(..abi::HEADER_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(abi::HEADER_PREFIX)),
                "{k}"
            );
            assert!(!v.chars().any(char::is_control), "{v:?}");
        }
    }
    let s = String::from_utf8_lossy(data);
    let f: Vec<&str> = s.split('\0').collect();
    let at = |i: usize| f.get(i).copied().unwrap_or("");
    let config = serde_json::from_str(at(7)).unwrap_or(serde_json::Value::Null);
    let headers: BTreeMap<String, String> = f
        .iter()
        .skip(8)
        .filter_map(|h| h.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let req = abi::Request {
        abi: abi::ABI_VERSION,
        method: at(0),
        host: at(1),
        path: at(2),
        client_ip: at(3),
        headers,
        circuit: abi::CircuitFacts {
            id: at(4).to_string(),
            generation: at(5).len() as i64,
            mode: "interactive",
        },
        user: at(6),
        now: i64::from_le_bytes(
            data.get(..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 8]),
        ),
        config: &config,
    };
    for line in req.to_lines().lines() {
        assert_eq!(
            line.matches('\t').count(),
            1,
            "not one key TAB value: {line:?}"
        );
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "{line:?}"
        );
    }
}

/// Setup tokens, landing paths and origins: the setup link's checks on arbitrary text.
pub fn setup(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let to = appproxy_common::auth::safe_redirect(s);
    if to != "/" {
        assert_eq!(to, s);
        assert!(to.starts_with('/') && !to.starts_with("//") && !to.contains('\\'));
    }
    if let Some(o) = appproxy_common::wire::normalize_origin(s) {
        assert_eq!(
            appproxy_common::wire::normalize_origin(&o).as_deref(),
            Some(o.as_str())
        );
    }
    let keys = Keys::new(
        PUBLIC_PEM.as_bytes(),
        b"fuzz-cookie-secret-fuzz-cookie-secret",
        30,
    )
    .expect("fixed key");
    assert!(keys.verify_setup(s).is_err(), "a fuzzed token verified");
}
