//! Plugin host tests: the shipped example plugins, and §6E (E1–E6) with hostile modules.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Runner,
    abi::{CircuitFacts, Request, Verdict},
    host::{CallError, Host, Limits},
};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins")
}

fn input(headers: &[(&str, &str)], config: serde_json::Value, now: i64) -> String {
    Request {
        abi: 1,
        method: "GET",
        host: "h",
        path: "/",
        client_ip: "127.0.0.1",
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        circuit: CircuitFacts {
            id: "c".into(),
            generation: 1,
            mode: "inference",
        },
        user: "",
        now,
        config: &config,
    }
    .to_lines()
}

/// Monday 2026-11-23 10:30 UTC, and the same day at 20:30, and Saturday 10:30.
const MON_1030: i64 = 1_795_429_800;
const MON_2030: i64 = MON_1030 + 10 * 3600;
const SAT_1030: i64 = MON_1030 + 5 * 86_400;

#[test]
fn example_plugins_allow_and_deny_as_documented() {
    let host = Host::new(Some(examples()), Limits::default()).unwrap();
    let (loaded, rejected) = host.status();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(loaded.len(), 3, "{loaded:?}");
    let keys = serde_json::json!({"keys": ["k-1", "k-2"]});
    let call = |p: &str, i: String| host.call(p, i.as_bytes()).unwrap();
    assert_eq!(
        call("api-keys", input(&[("x-api-key", "k-2")], keys.clone(), 0)),
        Verdict::Allow { headers: vec![] }
    );
    for bad in [
        vec![],
        vec![("x-api-key", "k-3")],
        vec![("x-api-key", "k-")],
        vec![("x-api-key", "k-1,k-2")],
    ] {
        assert_eq!(
            call("api-keys", input(&bad, keys.clone(), 0)),
            Verdict::Deny {
                status: 401,
                body: "missing or unknown API key".into()
            },
            "{bad:?}"
        );
    }
    let tenants = serde_json::json!({"tenants": ["acme", "globex"]});
    assert_eq!(
        call(
            "tenant",
            input(&[("x-tenant", "globex")], tenants.clone(), 0)
        ),
        Verdict::Allow {
            headers: vec![("X-Plugin-Tenant".into(), "globex".into())]
        }
    );
    for bad in ["initech", "acme\"", "ACME", ""] {
        assert!(
            matches!(
                call("tenant", input(&[("x-tenant", bad)], tenants.clone(), 0)),
                Verdict::Deny { status: 403, .. }
            ),
            "{bad:?}"
        );
    }
    let hours =
        serde_json::json!({"from_hour": 9, "to_hour": 18, "weekdays": ["0","1","2","3","4"]});
    assert_eq!(
        call("office-hours", input(&[], hours.clone(), MON_1030)),
        Verdict::Allow { headers: vec![] }
    );
    for t in [MON_2030, SAT_1030] {
        assert!(matches!(
            call("office-hours", input(&[], hours.clone(), t)),
            Verdict::Deny { status: 403, .. }
        ));
    }
}

/// A directory with these modules (name → WAT text or raw bytes).
fn dir_with(files: &[(&str, &[u8])]) -> (tempdir::Guard, PathBuf) {
    let g = tempdir::Guard::new();
    for (name, bytes) in files {
        std::fs::write(g.0.join(name), bytes).unwrap();
    }
    let p = g.0.clone();
    (g, p)
}

mod tempdir {
    pub(super) struct Guard(pub(super) std::path::PathBuf);
    impl Guard {
        pub(super) fn new() -> Guard {
            let p =
                std::env::temp_dir().join(format!("ap-plugins-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).unwrap();
            Guard(p)
        }
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A plugin whose `ap_decide` body is `body` (result i64), with the standard exports.
fn plugin(body: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"(module
  {extra}
  (memory (export "memory") 1)
  (data (i32.const 16) "{{\"allow\":true}}")
  (func (export "ap_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "ap_decide") (param i32 i32) (result i64) {body}))"#
    )
    .into_bytes()
}

const ALLOW_BODY: &str = "(i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 14))";

/// A 20 ms deadline, and failures enough that a runaway plugin is never disabled.
fn runaway_limits() -> Limits {
    Limits {
        timeout: Duration::from_millis(20),
        max_failures: 100,
        ..Limits::default()
    }
}

#[test]
fn e1_runaway_cpu_and_start_loops_hit_the_deadline() {
    let lim = runaway_limits();
    let (_g, dir) = dir_with(&[
        ("spin.wat", &plugin("(loop $l (br $l)) (i64.const 0)", "")),
        (
            "recurse.wat",
            &plugin(
                "(call $r (i32.const 0))",
                "(func $r (param i32) (result i64) (call $r (i32.add (local.get 0) (i32.const 1))))",
            ),
        ),
        (
            "startloop.wat",
            &plugin(ALLOW_BODY, "(func $s (loop $l (br $l))) (start $s)"),
        ),
        ("ok.wat", &plugin(ALLOW_BODY, "")),
    ]);
    let host = Host::new(Some(dir), lim).unwrap();
    for p in ["spin", "recurse", "startloop"] {
        let t = Instant::now();
        let r = host.call(p, b"abi\t1\n");
        assert!(r.is_err(), "{p} allowed");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{p} took {:?}",
            t.elapsed()
        );
    }
    assert!(matches!(host.call("spin", b""), Err(e) if e.label() == "timeout"));
    assert_eq!(
        host.call("ok", b"").unwrap(),
        Verdict::Allow { headers: vec![] }
    );
}

#[test]
fn idle_epoch_ticker_parks_and_a_later_runaway_still_hits_the_deadline() {
    let lim = runaway_limits();
    let (_g, dir) = dir_with(&[
        ("spin.wat", &plugin("(loop $l (br $l)) (i64.const 0)", "")),
        ("ok.wat", &plugin(ALLOW_BODY, "")),
    ]);
    let host = Host::new(Some(dir), lim).unwrap();
    let parked_within = |limit: Duration| {
        let t = Instant::now();
        while t.elapsed() < limit {
            if host.ticker_parked() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    };
    // Nothing in flight: the ticker parks after its linger.
    assert!(parked_within(Duration::from_secs(3)), "ticker never parked");
    for round in 0..3 {
        let t = Instant::now();
        let r = host.call("spin", b"abi\t1\n");
        assert!(
            matches!(&r, Err(e) if e.label() == "timeout"),
            "round {round}: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "round {round}: the deadline took {:?}",
            t.elapsed()
        );
        assert_eq!(
            host.call("ok", b"").unwrap(),
            Verdict::Allow { headers: vec![] }
        );
        assert!(parked_within(Duration::from_secs(3)), "round {round}");
    }
}

#[test]
fn e2_memory_and_table_bombs_trap_and_the_next_call_works() {
    let (_g, dir) = dir_with(&[
        (
            "grow.wat",
            &plugin("(drop (memory.grow (i32.const 1000))) (i64.const 0)", ""),
        ),
        (
            "table.wat",
            &plugin(
                "(drop (table.grow $t (ref.null func) (i32.const 1000000))) (i64.const 0)",
                "(table $t 1 funcref)",
            ),
        ),
        ("huge.wat", &plugin("(i64.const 0xffffffff)", "")),
        ("ok.wat", &plugin(ALLOW_BODY, "")),
    ]);
    let host = Host::new(Some(dir), Limits::default()).unwrap();
    for p in ["grow", "table"] {
        let e = host.call(p, b"").unwrap_err();
        assert_eq!(e.label(), "trap", "{p}: {e}");
    }
    assert_eq!(host.call("huge", b"").unwrap_err().label(), "bounds");
    // An oversized input cannot be written past the guest's memory: an error, not a panic.
    assert!(host.call("ok", &vec![b'a'; 200_000]).is_err());
    assert!(host.call("ok", b"").is_ok());
}

#[test]
fn e3_failures_deny_and_a_failing_plugin_is_disabled() {
    let out = |json: &str| {
        let escaped = json.replace('"', "\\\"");
        plugin(
            &format!(
                "(i64.or (i64.shl (i64.const 100) (i64.const 32)) (i64.const {}))",
                json.len()
            ),
            &format!("(data (i32.const 100) \"{escaped}\")"),
        )
    };
    let (_g, dir) = dir_with(&[
        ("unreachable.wat", &plugin("unreachable", "")),
        (
            "divzero.wat",
            &plugin(
                "(drop (i32.div_u (i32.const 1) (i32.const 0))) (i64.const 0)",
                "",
            ),
        ),
        ("partial.wat", &out(r#"{"allow":tr"#)),
        (
            "cookie.wat",
            &out(r#"{"allow":true,"headers":{"Set-Cookie":"x=1"}}"#),
        ),
        (
            "location.wat",
            &out(r#"{"allow":true,"headers":{"Location":"//evil"}}"#),
        ),
        ("badstatus.wat", &out(r#"{"allow":false,"status":200}"#)),
        ("ok.wat", &plugin(ALLOW_BODY, "")),
    ]);
    let host = Host::new(
        Some(dir),
        Limits {
            max_failures: 3,
            ..Limits::default()
        },
    )
    .unwrap();
    for p in [
        "unreachable",
        "divzero",
        "partial",
        "cookie",
        "location",
        "badstatus",
    ] {
        assert!(host.call(p, b"").is_err(), "{p} allowed");
    }
    for _ in 0..2 {
        let _ = host.call("unreachable", b"");
    }
    assert!(matches!(
        host.call("unreachable", b""),
        Err(CallError::Disabled)
    ));
    assert!(host.status().0.contains(&("unreachable".to_string(), true)));
    assert!(host.call("ok", b"").is_ok(), "other plugins unaffected");
    assert!(matches!(
        host.call("missing", b""),
        Err(CallError::Unknown(_))
    ));
}

#[test]
fn e4_nothing_survives_between_calls() {
    // Call 1 writes a secret into memory and a global; call 2 reports whether it sees one.
    let body = r#"
      (if (i32.eq (global.get $g) (i32.const 0))
        (then (if (i32.eq (i32.load (i32.const 4000)) (i32.const 0))
          (then
            (i32.store (i32.const 4000) (i32.const 0x5ec7e7))
            (global.set $g (i32.const 1))
            (return (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 14)))))))
      unreachable"#;
    let (_g, dir) = dir_with(&[(
        "leak.wat",
        &plugin(body, "(global $g (mut i32) (i32.const 0))"),
    )]);
    let host = Host::new(
        Some(dir),
        Limits {
            max_failures: 100,
            ..Limits::default()
        },
    )
    .unwrap();
    for _ in 0..50 {
        // Every call finds fresh memory and globals, so every call allows.
        assert!(host.call("leak", b"").is_ok(), "state leaked between calls");
    }
}

#[test]
fn e5_bad_modules_are_refused_at_load() {
    let mut cwasm = b"\x7fELF".to_vec();
    cwasm.extend_from_slice(&[0; 64]);
    let big = vec![0u8; super::host::MAX_MODULE_BYTES + 1];
    let (_g, dir) = dir_with(&[
        ("precompiled.wasm", &cwasm),
        ("artefact.cwasm", b"anything"),
        (
            "wasi.wat",
            &plugin(
                ALLOW_BODY,
                r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            ),
        ),
        (
            "hostcall.wat",
            &plugin(ALLOW_BODY, r#"(import "env" "anything" (func))"#),
        ),
        ("noexports.wat", b"(module (memory 1))"),
        ("garbage.wasm", b"\0asm\x01\0\0\0\xff\xff"),
        ("oversized.wasm", &big),
        ("Bad Name.wat", &plugin(ALLOW_BODY, "")),
        ("fine.wat", &plugin(ALLOW_BODY, "")),
    ]);
    let host = Host::new(Some(dir.clone()), Limits::default()).unwrap();
    let (loaded, rejected) = host.status();
    assert_eq!(loaded, vec![("fine".to_string(), false)]);
    let reasons: BTreeMap<String, String> = rejected
        .into_iter()
        .map(|r| (r.file.rsplit('/').next().unwrap().to_string(), r.reason))
        .collect();
    assert_eq!(reasons.len(), 8, "{reasons:?}");
    assert!(reasons["precompiled.wasm"].contains("precompiled"));
    assert!(reasons["wasi.wat"].contains("imports"));
    assert!(reasons["hostcall.wat"].contains("imports"));
    assert!(reasons["noexports.wat"].contains("export"));
    assert!(reasons["oversized.wasm"].contains("larger"));
    // Hot reload: a changed file is picked up, a removed one dropped.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(dir.join("second.wat"), plugin(ALLOW_BODY, "")).unwrap();
    std::fs::remove_file(dir.join("fine.wat")).unwrap();
    assert!(host.reload());
    assert_eq!(host.status().0, vec![("second".to_string(), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e6_concurrency_is_bounded_and_overflow_is_refused_fast() {
    let (_g, dir) = dir_with(&[
        ("slow.wat", &plugin("(loop $l (br $l)) (i64.const 0)", "")),
        ("ok.wat", &plugin(ALLOW_BODY, "")),
    ]);
    let host = Host::new(
        Some(dir),
        Limits {
            timeout: Duration::from_millis(50),
            max_failures: 10_000,
            ..Limits::default()
        },
    )
    .unwrap();
    let seconds = crate::metrics::Metrics::new().plugin_seconds;
    let runner = Arc::new(Runner::new(host, 2, 16, seconds));
    let start = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let r = runner.clone();
            tokio::spawn(async move { r.run("slow".into(), String::new()).await })
        })
        .collect();
    let mut busy = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(super::RunError::Busy) => busy += 1,
            Err(_) => {}
            Ok(v) => panic!("a runaway plugin allowed: {v:?}"),
        }
    }
    assert!(busy >= 900, "queue bound not enforced: {busy} refused");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // Afterwards a good plugin answers at once.
    assert!(runner.run("ok".into(), String::new()).await.is_ok());
}

/// Per-call time of a trivial plugin (the shipped api-keys) on this machine; printed, not
/// asserted (timing belongs to the benchmark program). Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn trivial_plugin_call_time() {
    let host = Host::new(Some(examples()), Limits::default()).unwrap();
    let i = input(
        &[("x-api-key", "k-1")],
        serde_json::json!({"keys": ["k-1"]}),
        0,
    );
    let mut samples: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            host.call("api-keys", i.as_bytes()).unwrap();
            t.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "api-keys call: p50 {:?} p99 {:?}",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100]
    );
}

/// On a serving thread (single-threaded runtime) a call with a short deadline runs in place,
/// holding the thread's other tasks at most that long; a long deadline goes to a blocking
/// thread so a slow plugin cannot hold a serving thread.
#[tokio::test(flavor = "current_thread")]
async fn on_a_serving_thread_short_deadlines_run_in_place_and_long_ones_elsewhere() {
    let (_g, dir) = dir_with(&[("spin.wat", &plugin("(loop $l (br $l)) (i64.const 0)", ""))]);
    for (deadline_ms, in_place) in [(20, true), (200, false)] {
        let host = Host::new(
            Some(dir.clone()),
            Limits {
                timeout: Duration::from_millis(deadline_ms),
                ..runaway_limits()
            },
        )
        .unwrap();
        assert_eq!(
            host.limits().timeout <= super::INLINE_DEADLINE,
            in_place,
            "{deadline_ms} ms"
        );
        let seconds = crate::metrics::Metrics::new().plugin_seconds;
        let runner = Arc::new(Runner::new(host, 2, 16, seconds));
        let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = ticks.clone();
        let other = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        tokio::task::yield_now().await;
        let r = runner.run("spin".into(), "abi\t1\n".into()).await;
        let ran = ticks.load(std::sync::atomic::Ordering::Relaxed);
        other.abort();
        assert!(
            matches!(&r, Err(super::RunError::Call(e)) if e.label() == "timeout"),
            "{r:?}"
        );
        if in_place {
            assert!(
                ran <= 1,
                "the thread ran {ran} other ticks during an in-place call"
            );
        } else {
            assert!(
                ran >= 10,
                "only {ran} ticks ran beside a 200 ms call on a blocking thread"
            );
        }
    }
}
