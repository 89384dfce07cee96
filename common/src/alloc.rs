//! Allocator settings for both binaries (they use mimalloc as the global allocator).
//!
//! mimalloc keeps freed memory for 10 ms before returning it and lets the kernel back its
//! regions with 2 MiB transparent huge pages; for a long-running control plane whose memory
//! goes up and down with full reconcile passes and large lists, that kept RSS far above the
//! live data (BENCHMARKS.md: provider with 10k circuits 175 → 85 MiB, idle 32 → 17 MiB with
//! both off). mimalloc reads its options from the environment when the process starts, before
//! `main`, and setting them later needs `unsafe` FFI, which the workspace forbids — so `main`
//! calls [`reexec_with_allocator_settings`] first: unless done already, it replaces the process
//! (same PID, same arguments) with the same binary and these variables set. Values the operator
//! set win.

use std::{ffi::OsString, os::unix::process::CommandExt, process::Command};

/// The settings: return freed memory at once, no transparent huge pages.
pub const SETTINGS: [(&str, &str); 2] =
    [("MIMALLOC_PURGE_DELAY", "0"), ("MIMALLOC_ALLOW_THP", "0")];

/// Marks a process that already went through the re-execution.
pub const MARKER: &str = "APPPROXY_ALLOCATOR_SETTINGS";

/// The environment additions for a process started with `env` (`None` once applied).
pub fn missing(
    env: impl Fn(&str) -> Option<OsString>,
) -> Option<Vec<(&'static str, &'static str)>> {
    if env(MARKER).is_some() {
        return None;
    }
    let mut add = vec![(MARKER, "1")];
    add.extend(SETTINGS.iter().copied().filter(|(k, _)| env(k).is_none()));
    Some(add)
}

/// Re-execute this binary with [`SETTINGS`] unless they were applied already. Returns only
/// when nothing was to be done or the re-execution failed (then the process goes on as is).
pub fn reexec_with_allocator_settings() {
    let Some(add) = missing(|k| std::env::var_os(k)) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(add)
        .exec();
    eprintln!("could not re-execute with allocator settings ({err}); going on without them");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_only_what_is_missing_and_only_once() {
        let none = missing(|_| None).unwrap();
        assert_eq!(none.len(), 3);
        assert!(none.contains(&(MARKER, "1")));
        let operator = missing(|k| (k == "MIMALLOC_PURGE_DELAY").then(|| "50".into())).unwrap();
        assert!(!operator.iter().any(|(k, _)| *k == "MIMALLOC_PURGE_DELAY"));
        assert!(missing(|k| (k == MARKER).then(|| "1".into())).is_none());
    }
}
