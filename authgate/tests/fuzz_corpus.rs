//! Replays the committed fuzz seeds and minimized corpora (`fuzz/seeds`, `fuzz/corpus`) through
//! the fuzz targets' functions on stable: every input that ever mattered stays a regression
//! test.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            run(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn cookie_corpus() {
    replay("cookie", appproxy_authgate::fuzzing::cookie);
}

#[test]
fn otlp_corpus() {
    replay("otlp", appproxy_authgate::fuzzing::otlp);
}

#[test]
fn plugin_abi_corpus() {
    replay("plugin_abi", appproxy_authgate::fuzzing::plugin_abi);
}

#[test]
fn setup_corpus() {
    replay("setup", appproxy_authgate::fuzzing::setup);
}
