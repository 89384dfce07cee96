//! The in-memory revocation set the hot path reads, and the task that keeps it in sync with
//! Redis: subscribe to the channel first, then load the whole hash (so nothing published in
//! between is missed), then apply events; on any error reconnect and load the hash again.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use appproxy_common::{auth::redis_keys, redis_conn};
use tokio::sync::watch;

/// Field (`u:<user>` / `l:<login session hash>`) → epoch seconds of the revocation.
#[derive(Default)]
pub struct Revocations {
    map: RwLock<HashMap<String, i64>>,
    synced: AtomicBool,
    connected: AtomicBool,
    /// Revocations older than this many seconds are forgotten (0: kept forever).
    retention_secs: AtomicI64,
    /// Bumped by every change (the fast path's state file follows it).
    version: AtomicU64,
}

impl Revocations {
    pub fn new() -> Arc<Revocations> {
        Arc::new(Revocations::default())
    }

    /// A set that forgets revocations older than `retention` (loads, events and [`pruner`]).
    pub fn with_retention(retention: Duration) -> Arc<Revocations> {
        let r = Revocations::default();
        r.retention_secs
            .store(retention.as_secs() as i64, Ordering::Relaxed);
        Arc::new(r)
    }

    /// Epoch seconds before which revocations are forgotten (`i64::MIN`: never).
    fn cutoff(&self) -> i64 {
        match self.retention_secs.load(Ordering::Relaxed) {
            0 => i64::MIN,
            r => crate::activity::now_ms() / 1000 - r,
        }
    }

    /// Whether a credential of `user` / login session `ls`, issued at `iat`, is revoked.
    pub fn is_revoked(&self, user: &str, ls: &str, iat: i64) -> bool {
        let map = self.map.read().expect("revocations lock");
        appproxy_gatecore::revocation::is_revoked(|f| map.get(f).copied(), user, ls, iat)
    }

    /// True once the whole set was loaded at least once; until then nothing is allowed.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// True while the subscription is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.map.read().expect("revocations lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts changes: a different value means the set changed (or was first loaded).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// A copy of the set, with the version it is at.
    pub fn snapshot(&self) -> (u64, HashMap<String, i64>) {
        let map = self.map.read().expect("revocations lock");
        (self.version(), map.clone())
    }

    /// Apply one event `<field>=<epoch seconds>` (keeps the later time).
    pub fn apply_event(&self, msg: &str) -> bool {
        let Some((field, at)) = msg.rsplit_once('=') else {
            return false;
        };
        let Ok(at) = at.parse::<i64>() else {
            return false;
        };
        if at < self.cutoff() {
            return true;
        }
        let mut map = self.map.write().expect("revocations lock");
        let e = map.entry(field.to_string()).or_insert(at);
        *e = (*e).max(at);
        self.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Replace the set with a full load.
    pub fn replace(&self, mut all: HashMap<String, i64>) {
        let cutoff = self.cutoff();
        all.retain(|_, at| *at >= cutoff);
        *self.map.write().expect("revocations lock") = all;
        self.synced.store(true, Ordering::Release);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Forget revocations made before `cutoff` (epoch seconds): every credential they could
    /// refuse has expired. Returns how many were dropped.
    pub fn prune(&self, cutoff: i64) -> usize {
        let mut map = self.map.write().expect("revocations lock");
        let before = map.len();
        map.retain(|_, at| *at >= cutoff);
        if map.len() != before {
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        before - map.len()
    }
}

/// Prune `set` every minute: revocations older than its retention are dropped.
pub async fn pruner(set: Arc<Revocations>, shutdown: watch::Receiver<bool>) {
    use appproxy_common::shutdown::{First, every};
    every(Duration::from_secs(60), First::Now, shutdown, || async {
        let n = set.prune(set.cutoff());
        if n > 0 {
            tracing::info!(dropped = n, "Expired revocations forgotten");
        }
    })
    .await;
}

/// Keep `set` in sync with Redis until `shutdown`.
pub async fn sync(
    client: redis::Client,
    namespace: String,
    set: Arc<Revocations>,
    on_event: OnRevoked,
    shutdown: watch::Receiver<bool>,
) {
    appproxy_common::shutdown::reconnecting(Duration::from_secs(2), shutdown, || async {
        let r = sync_once(&client, &namespace, &set, &on_event).await;
        set.connected.store(false, Ordering::Release);
        if let Err(e) = r {
            tracing::warn!(error = %e, "Revocation sync lost Redis; reconnecting");
        }
    })
    .await;
}

/// Called with each revocation event applied (`<field>=<epoch seconds>`, e.g. `u:<user>=…`).
pub type OnRevoked = Arc<dyn Fn(&str) + Send + Sync>;

/// How long loading the revocation set may wait for Redis (then the sync starts over).
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn sync_once(
    client: &redis::Client,
    namespace: &str,
    set: &Revocations,
    on_event: &OnRevoked,
) -> redis::RedisResult<()> {
    use futures_util::StreamExt;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub
        .subscribe(redis_keys::revocations_channel(namespace))
        .await?;
    let mut con = redis_conn::multiplexed(client, LOAD_TIMEOUT).await?;
    let all: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(redis_keys::revocations(namespace))
        .query_async(&mut con)
        .await?;
    let n = all.len();
    set.replace(all);
    set.connected.store(true, Ordering::Release);
    tracing::info!(revocations = n, "Revocation set loaded from Redis");
    let mut stream = pubsub.on_message();
    while let Some(msg) = stream.next().await {
        let payload: String = msg.get_payload().unwrap_or_default();
        if set.apply_event(&payload) {
            on_event(&payload);
        } else {
            tracing::warn!(payload, "Ignoring a malformed revocation event");
        }
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Io,
        "revocation subscription closed",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_applies_to_credentials_issued_at_or_before() {
        let r = Revocations::new();
        assert!(!r.synced());
        r.replace(HashMap::from([("u:alice".to_string(), 100)]));
        assert!(r.synced());
        assert!(r.is_revoked("alice", "", 100));
        assert!(r.is_revoked("alice", "", 99));
        assert!(!r.is_revoked("alice", "", 101));
        assert!(!r.is_revoked("bob", "", 1));
        assert!(r.apply_event("l:abc=200"));
        assert!(r.is_revoked("bob", "abc", 150));
        assert!(!r.is_revoked("bob", "", 150));
        assert!(
            r.apply_event("u:alice=50"),
            "an older event keeps the later time"
        );
        assert!(r.is_revoked("alice", "", 100));
        assert!(!r.apply_event("garbage"));
        assert!(!r.apply_event("u:x=notanumber"));
    }

    #[test]
    fn old_revocations_are_pruned_recent_ones_kept() {
        let r = Revocations::new();
        r.replace(HashMap::from([
            ("u:old".to_string(), 100),
            ("l:old".to_string(), 199),
            ("u:new".to_string(), 200),
        ]));
        assert_eq!(r.prune(200), 2);
        assert_eq!(r.len(), 1);
        assert!(r.is_revoked("new", "", 150));
        assert!(!r.is_revoked("old", "", 50));
        assert_eq!(r.prune(200), 0);
    }

    #[test]
    fn a_set_with_retention_ignores_expired_loads_and_events() {
        let now = crate::activity::now_ms() / 1000;
        let r = Revocations::with_retention(Duration::from_secs(3600));
        r.replace(HashMap::from([
            ("u:old".to_string(), now - 7200),
            ("u:new".to_string(), now - 60),
        ]));
        assert_eq!(r.len(), 1);
        assert!(r.apply_event(&format!("u:older={}", now - 4000)));
        assert_eq!(r.len(), 1, "an expired event is accepted but not kept");
        assert!(r.apply_event(&format!("u:fresh={now}")));
        assert_eq!(r.len(), 2);
        assert!(r.is_revoked("fresh", "", now));
    }
}
