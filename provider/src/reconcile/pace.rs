//! Pacing: how soon a worker's etcd prefix may take another transaction.
//!
//! Traefik's etcd provider rebuilds its whole configuration — list the root prefix, decode
//! every key into a tree — for **each** watch response, i.e. for each of our transactions,
//! one after the other and without coalescing; etcd's client buffers the responses it has
//! not reached yet without bound. Measured on Traefik 3.7.15 (`deploy/traefik-rebuild-cost`,
//! BENCHMARKS.md "pacing"), a rebuild costs CPU that grows faster than the number of keys
//! (22 ms at 2,000 keys, 46 at 4,000, 113 at 8,000, 166 at 10,000, 369 at 16,000 on an idle
//! 2-core VM; several times that when the host is busy), so a reconciler that writes
//! a transaction every 100 ms to a prefix of a few thousand circuits outruns Traefik: the
//! backlog grows, new circuits become routable later and later, and Traefik's memory grows
//! with the buffered events (the hour soak of session 7: nothing routable after minute 43).
//!
//! So after writing `t` transactions to a worker whose prefix holds `k` keys, the reconciler
//! leaves that worker alone for `t × rebuild(k)`, with `rebuild(k) = at_10k × (k / 10,000)²`
//! (an estimate of Traefik's rebuild time with headroom; `reconcile.traefik_rebuild_ms_at_10k_keys`).
//! The changes that arrive meanwhile are gathered into the next pass, which writes them in as
//! few transactions as fit: Traefik sees fewer, larger revisions and keeps up. A small prefix
//! is hardly paced at all (1,000 keys: 1 % of the 10k figure per transaction). The square
//! overestimates large prefixes (safe) and underestimates small ones (cheap anyway).
//!
//! The gathering stays stable while a wait's changes fit in one transaction (`max_txn_ops`):
//! with 128 operations and the default figure, up to ~200 operations a second (~50 circuit
//! creates or deletes) at 8,000 keys; past that, raise etcd's `--max-txn-ops` with it.
//!
//! Pure logic, no I/O: the reconciler's loop asks and reports, with the time passed in.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use uuid::Uuid;

/// The reference prefix size of the configured rebuild time.
const REFERENCE_KEYS: f64 = 10_000.0;

/// Per-worker earliest time of the next write.
#[derive(Debug)]
pub(super) struct Pacer {
    at_10k: Duration,
    until: HashMap<Uuid, Instant>,
}

impl Pacer {
    /// `at_10k`: the rebuild time assumed for a prefix of 10,000 keys; zero turns pacing off.
    pub(super) fn new(at_10k: Duration) -> Pacer {
        Pacer {
            at_10k,
            until: HashMap::new(),
        }
    }

    /// Traefik's assumed time to rebuild its configuration from a prefix of `keys` keys.
    pub(super) fn rebuild(&self, keys: usize) -> Duration {
        let scale = keys as f64 / REFERENCE_KEYS;
        self.at_10k.mul_f64(scale * scale)
    }

    /// `worker`'s prefix took `txns` transactions at `now` and now holds `keys` keys.
    pub(super) fn wrote(&mut self, worker: Uuid, txns: usize, keys: usize, now: Instant) {
        if txns == 0 {
            return;
        }
        let rest = self.rebuild(keys) * txns.min(u32::MAX as usize) as u32;
        if rest.is_zero() {
            return;
        }
        self.until.insert(worker, now + rest);
    }

    /// Until when `worker` must not be written, if it must wait at `now`.
    pub(super) fn waits(&self, worker: Uuid, now: Instant) -> Option<Instant> {
        self.until.get(&worker).copied().filter(|t| *t > now)
    }

    /// The earliest time a waiting worker may be written again.
    pub(super) fn next_ready(&self, now: Instant) -> Option<Instant> {
        self.until.values().copied().filter(|t| *t > now).min()
    }

    /// Forget workers whose wait is over (keeps the map to the workers being paced).
    pub(super) fn expire(&mut self, now: Instant) {
        self.until.retain(|_, t| *t > now);
    }

    /// Forget everything (a new term: another leader may have written meanwhile, and a
    /// full pass of every worker is due at once).
    pub(super) fn clear(&mut self) {
        self.until.clear();
    }
}

/// The spacing of passes: a bucket of two, refilled one per `min_interval`. A change that
/// follows a pass at once (a Manager's `bulk/routes` right after the create) goes out at once
/// too, instead of waiting out the interval (25–130 ms, p50 67, in the peer run: the gap to
/// a create with its routes); from the third pass in a row, passes are spaced so a burst's
/// changes gather into few transactions.
#[derive(Debug)]
pub(super) struct Spacing {
    interval: Duration,
    tokens: f64,
    at: Option<Instant>,
}

/// Passes that may follow each other without a wait.
const SPACING_BURST: f64 = 2.0;

impl Spacing {
    pub(super) fn new(interval: Duration) -> Spacing {
        Spacing {
            interval,
            tokens: SPACING_BURST,
            at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let gained = match self.at {
            _ if self.interval.is_zero() => SPACING_BURST,
            Some(at) => {
                now.saturating_duration_since(at).as_secs_f64() / self.interval.as_secs_f64()
            }
            None => 0.0,
        };
        self.tokens = (self.tokens + gained).min(SPACING_BURST);
        self.at = Some(now);
    }

    /// How long to wait before the next pass may start (`None`: now).
    pub(super) fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        (self.tokens < 1.0).then(|| self.interval.mul_f64(1.0 - self.tokens))
    }

    /// A pass starts now.
    pub(super) fn spend(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_grows_with_the_square_of_the_prefix_and_with_the_transactions() {
        let p = Pacer::new(Duration::from_millis(4000));
        assert_eq!(p.rebuild(10_000), Duration::from_millis(4000));
        assert_eq!(p.rebuild(5_000), Duration::from_millis(1000));
        assert_eq!(p.rebuild(1_000), Duration::from_millis(40));
        assert_eq!(p.rebuild(0), Duration::ZERO);

        let mut p = p;
        let (w, now) = (Uuid::new_v4(), Instant::now());
        p.wrote(w, 3, 5_000, now);
        assert_eq!(p.waits(w, now), Some(now + Duration::from_millis(3000)));
        assert_eq!(p.waits(w, now + Duration::from_millis(3000)), None);
        assert_eq!(
            p.waits(Uuid::new_v4(), now),
            None,
            "other workers are not held"
        );
    }

    #[test]
    fn the_earliest_waiting_worker_wakes_the_loop_and_expired_ones_are_forgotten() {
        let mut p = Pacer::new(Duration::from_millis(10_000));
        let now = Instant::now();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        p.wrote(a, 1, 10_000, now);
        p.wrote(b, 1, 5_000, now);
        assert_eq!(p.next_ready(now), Some(now + Duration::from_millis(2500)));
        let later = now + Duration::from_millis(3000);
        assert_eq!(
            p.next_ready(later),
            Some(now + Duration::from_millis(10_000))
        );
        p.expire(later);
        assert_eq!(p.until.len(), 1);
        p.clear();
        assert_eq!(p.next_ready(now), None);
    }

    #[test]
    fn nothing_written_or_pacing_off_holds_nothing() {
        let now = Instant::now();
        let w = Uuid::new_v4();
        let mut p = Pacer::new(Duration::from_millis(4000));
        p.wrote(w, 0, 50_000, now);
        assert_eq!(p.waits(w, now), None);
        let mut off = Pacer::new(Duration::ZERO);
        off.wrote(w, 9, 50_000, now);
        assert_eq!(off.waits(w, now), None);
        assert_eq!(off.next_ready(now), None);
    }

    #[test]
    fn two_passes_go_at_once_then_they_are_spaced() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Spacing::new(ms(100));
        assert_eq!(s.wait(t0), None);
        s.spend(t0);
        // The routes right after the create: no wait.
        assert_eq!(s.wait(t0 + ms(20)), None);
        s.spend(t0 + ms(20));
        // A third at once waits for a token (80 ms at this point).
        let w = s.wait(t0 + ms(40)).expect("a wait");
        assert!(w > ms(55) && w <= ms(80), "{w:?}");
        s.spend(t0 + ms(120));
        // Idle for a while: two at once again.
        assert_eq!(s.wait(t0 + ms(400)), None);
        s.spend(t0 + ms(400));
        assert_eq!(s.wait(t0 + ms(401)), None);
        // No interval: never a wait.
        let mut none = Spacing::new(Duration::ZERO);
        for i in 0..5 {
            none.spend(t0 + ms(i));
            assert_eq!(none.wait(t0 + ms(i)), None);
        }
    }
}
