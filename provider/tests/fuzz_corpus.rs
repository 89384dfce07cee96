//! Replays the committed fuzz seeds and minimized corpus of the provider's JSON bodies
//! (`fuzz/seeds/json_bodies`, `fuzz/corpus/json_bodies`) on stable.

use std::path::Path;

#[test]
fn json_bodies_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("json_bodies")) else {
            continue;
        };
        for e in entries.flatten() {
            appproxy_provider::api::fuzzing::json_bodies(&std::fs::read(e.path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no seeds");
}
