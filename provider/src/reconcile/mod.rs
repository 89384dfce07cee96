//! The reconciler: SQL → render → diff against etcd → per-circuit transactions.
//!
//! Handlers never write etcd; they nudge the reconciler: `nudge_circuit` after a circuit's
//! rows changed, `nudge` when the worker itself changed. A pass serves every dirty worker:
//!
//! - **full** (worker nudged, start, every `resync`, a change we did not make, after an
//!   error): render all of the worker's circuits from SQL, read its whole etcd prefix, apply
//!   the difference, and remember the result as the worker's *image* of etcd;
//! - **incremental** (only circuits nudged, image present): load just those circuits, render
//!   them, diff against the image and apply. Cost is O(changed circuits), not O(circuits on
//!   the worker). The image is exact because only we write under a worker's root: foreign
//!   writes are caught by the watch and answered with a full pass, and a failed transaction
//!   drops the image.
//!
//! Only the leader reconciles (`begin_term` … `end_term`), and each of its transactions is
//! fenced (`etcd::Fence`): it applies only while this process still holds the leader key.
//! A term starts with a full pass of every worker and no image (another leader wrote in
//! between). Nudges are local marks; with several providers (PostgreSQL) they are also
//! broadcast (`nudges`), so a write on a follower reaches the leader's reconciler at once.
//!
//! Whole circuits go into transactions of at most `max_txn_ops` operations. Passes start at
//! once when idle, two in a row at once, then at most one per `min_interval` (`pace::Spacing`);
//! nudges that arrive during a pass are served by the next one, so a burst of creates costs Traefik a few reloads instead of one per
//! circuit. A worker just written is left alone for as long as its Traefik needs to take the
//! transactions in (`pace`): Traefik rebuilds its whole configuration per transaction.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use appproxy_common::names;
use tokio::sync::{Notify, mpsc, watch};
use uuid::Uuid;

mod pace;
mod plan;

pub use plan::plan;

use crate::{
    config::ReconcileConfig,
    etcd::{Fence, Kv, KvError, Op},
    metrics::Metrics,
    render::{self, Group},
    store::{Store, StoreError},
};

/// How long after a watch event our own transaction may still be recording its revision.
const OWN_REVISION_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kv(#[from] KvError),
}

#[derive(Default)]
struct Dirty {
    all: bool,
    /// Workers that need a full pass.
    workers: HashSet<Uuid>,
    /// Worker → circuits whose rows changed (incremental pass).
    circuits: HashMap<Uuid, HashSet<Uuid>>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        !self.all && self.workers.is_empty() && self.circuits.is_empty()
    }

    /// Take out the marks of workers that `pacer` holds at `now` (not `all`: which workers
    /// that covers is known only in a pass, which holds them itself).
    fn take_held(&mut self, pacer: &pace::Pacer, now: std::time::Instant) -> Dirty {
        let workers: HashSet<Uuid> = self
            .workers
            .iter()
            .filter(|w| pacer.waits(**w, now).is_some())
            .copied()
            .collect();
        self.workers.retain(|w| !workers.contains(w));
        let circuits: HashMap<Uuid, HashSet<Uuid>> = self
            .circuits
            .extract_if(|w, _| pacer.waits(*w, now).is_some())
            .collect();
        Dirty {
            all: false,
            workers,
            circuits,
        }
    }

    fn merge(&mut self, other: Dirty) {
        self.all |= other.all;
        self.workers.extend(other.workers);
        for (w, ids) in other.circuits {
            self.circuits.entry(w).or_default().extend(ids);
        }
    }
}

/// What we last wrote under a worker's root: per group, its relative keys (sorted) with a hash
/// of each value — values themselves are not kept (memory: ~10 keys per circuit). Equal to
/// etcd's content while no foreign write happened (the watch turns one into a full pass).
#[derive(Default)]
struct Image {
    groups: HashMap<Group, Vec<(Box<str>, u64)>>,
    /// Approximate heap bytes, for the `reconcile_image_bytes` gauge.
    bytes: usize,
    /// Keys under the worker's root (what Traefik decodes on every revision).
    keys: usize,
}

fn value_hash(v: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

impl Image {
    fn group_bytes(keys: &[(Box<str>, u64)]) -> usize {
        keys.iter().map(|(k, _)| k.len() + 24).sum::<usize>() + 64
    }

    /// Record `kv` as what `group` now holds in etcd (nothing, if empty).
    fn set(&mut self, group: Group, kv: &render::Kv) {
        if let Some(old) = self.groups.remove(&group) {
            self.bytes -= Self::group_bytes(&old);
            self.keys -= old.len();
        }
        if kv.is_empty() {
            return;
        }
        let keys: Vec<(Box<str>, u64)> = kv
            .iter()
            .map(|(k, v)| (k.as_str().into(), value_hash(v)))
            .collect();
        self.bytes += Self::group_bytes(&keys);
        self.keys += keys.len();
        self.groups.insert(group, keys);
    }

    /// Make the image hold exactly `desired` (a full pass's result), keeping the entries of
    /// every group that did not change: a resync that changes nothing allocates nothing
    /// long-lived, so the image is not rebuilt among a full pass's transient allocations
    /// every 30 s (allocator fragmentation, seen as RSS creep).
    fn sync_to(&mut self, desired: &BTreeMap<Group, render::Kv>) {
        let gone: Vec<Group> = self
            .groups
            .keys()
            .filter(|g| !desired.contains_key(g))
            .copied()
            .collect();
        for g in gone {
            if let Some(old) = self.groups.remove(&g) {
                self.bytes -= Self::group_bytes(&old);
                self.keys -= old.len();
            }
        }
        for (group, kv) in desired {
            if !self.holds(*group, kv) {
                self.set(*group, kv);
            }
        }
    }

    /// Whether the image holds exactly `kv` for `group`.
    fn holds(&self, group: Group, kv: &render::Kv) -> bool {
        self.groups.get(&group).is_some_and(|keys| {
            keys.len() == kv.len()
                && keys
                    .iter()
                    .zip(kv.iter())
                    .all(|((k, h), (rel, v))| **k == **rel && *h == value_hash(v))
        })
    }

    /// etcd's content for `desired`'s groups in `plan`'s terms (full keys → values): a key
    /// whose stored hash matches the desired value carries that value; any other carries a
    /// value no rendered value equals (NUL), so `plan` puts it; keys no longer desired are
    /// deleted by `plan` as usual.
    fn actual_for(
        &self,
        prefix: &str,
        desired: &BTreeMap<Group, render::Kv>,
    ) -> BTreeMap<String, String> {
        let mut actual = BTreeMap::new();
        for (group, kv) in desired {
            for (rel, hash) in self.groups.get(group).into_iter().flatten() {
                let value = match kv.get(&**rel) {
                    Some(v) if value_hash(v) == *hash => v.clone(),
                    _ => "\0".to_string(),
                };
                actual.insert(format!("{prefix}{rel}"), value);
            }
        }
        actual
    }
}

/// etcd's default `--max-txn-ops`: transactions are never made smaller than this.
const ETCD_DEFAULT_MAX_TXN_OPS: usize = 128;

/// Shared handle; clone the `Arc`.
pub struct Reconciler {
    store: Store,
    kv: Kv,
    namespace: String,
    /// Most operations per transaction: the configured figure, halved (down to etcd's
    /// default, 128) while etcd refuses transactions that large (its `--max-txn-ops`).
    max_ops: std::sync::atomic::AtomicUsize,
    resync: Duration,
    min_interval: Duration,
    metrics: Metrics,
    // Short critical sections only, never held across `.await`.
    dirty: Mutex<Dirty>,
    notify: Notify,
    /// Revisions of our own transactions, so the watch can tell foreign changes apart.
    own_revisions: Mutex<VecDeque<i64>>,
    /// Root key → worker id, refreshed on every pass.
    roots: Mutex<HashMap<String, Uuid>>,
    /// Worker → image of its etcd prefix. Only the pass loop touches it.
    images: Mutex<HashMap<Uuid, Image>>,
    /// This term's fence; `None` while not leading (then nothing is written).
    fence: Mutex<Option<Fence>>,
    /// Where nudges go to the other providers (set by `nudges` on PostgreSQL).
    peers: std::sync::OnceLock<mpsc::UnboundedSender<Nudge>>,
    /// How soon each worker may be written again (Traefik's rebuild per transaction).
    pacer: Mutex<pace::Pacer>,
}

/// A request to reconcile, as marked locally and as broadcast between providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    All,
    Worker(Uuid),
    Circuit { worker: Uuid, circuit: Uuid },
}

impl Reconciler {
    pub fn new(
        store: Store,
        kv: Kv,
        namespace: String,
        cfg: &ReconcileConfig,
        metrics: Metrics,
    ) -> Arc<Reconciler> {
        Arc::new(Reconciler {
            store,
            kv,
            namespace,
            max_ops: std::sync::atomic::AtomicUsize::new(cfg.max_txn_ops),
            resync: Duration::from_secs(cfg.resync_seconds),
            min_interval: Duration::from_millis(cfg.min_interval_ms),
            pacer: Mutex::new(pace::Pacer::new(Duration::from_millis(
                cfg.traefik_rebuild_ms_at_10k_keys,
            ))),
            metrics,
            // Nothing to do before a term: `begin_term` asks for a full pass.
            dirty: Mutex::new(Dirty::default()),
            notify: Notify::new(),
            own_revisions: Mutex::new(VecDeque::new()),
            roots: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            fence: Mutex::new(None),
            peers: std::sync::OnceLock::new(),
        })
    }

    /// Send every nudge to the other providers too (once; later calls are ignored).
    pub fn broadcast_to(&self, peers: mpsc::UnboundedSender<Nudge>) {
        let _ = self.peers.set(peers);
    }

    /// This process now leads: write under `fence`, starting with a full pass of everything
    /// (no image survives a term: another leader may have written meanwhile).
    pub fn begin_term(&self, fence: Fence) {
        *self.fence.lock().expect("fence lock") = Some(fence);
        self.images.lock().expect("images lock").clear();
        self.own_revisions.lock().expect("own lock").clear();
        self.pacer.lock().expect("pacer lock").clear();
        *self.dirty.lock().expect("dirty lock") = Dirty {
            all: true,
            ..Dirty::default()
        };
        self.notify.notify_one();
    }

    /// This process no longer leads: write nothing more.
    pub fn end_term(&self) {
        *self.fence.lock().expect("fence lock") = None;
    }

    /// Mark `n` locally (a nudge from another provider, or our own). Not while following:
    /// nothing would take the marks, and a term starts with a full pass anyway.
    pub fn mark(&self, n: Nudge) {
        if self.fence.lock().expect("fence lock").is_none() {
            return;
        }
        {
            let mut dirty = self.dirty.lock().expect("dirty lock");
            match n {
                Nudge::All => dirty.all = true,
                Nudge::Worker(w) => {
                    dirty.workers.insert(w);
                }
                Nudge::Circuit { worker, circuit } => {
                    dirty.circuits.entry(worker).or_default().insert(circuit);
                }
            }
        }
        self.notify.notify_one();
    }

    fn nudged(&self, n: Nudge) {
        self.mark(n);
        if let Some(peers) = self.peers.get() {
            let _ = peers.send(n);
        }
    }

    /// The worker itself changed: reconcile all of it soon.
    pub fn nudge(&self, worker: Uuid) {
        self.nudged(Nudge::Worker(worker));
    }

    /// A circuit's rows changed (created, updated, deleted or moved away from `worker`):
    /// reconcile it soon.
    pub fn nudge_circuit(&self, worker: Uuid, circuit: Uuid) {
        self.nudged(Nudge::Circuit { worker, circuit });
    }

    /// Ask for every worker to be reconciled soon (no SQL change implied).
    pub fn nudge_all(&self) {
        self.mark(Nudge::All);
    }

    pub fn root_key(&self, authority: &str) -> String {
        names::worker_root_key(&self.namespace, authority)
    }

    /// Run passes until `shutdown` flips; also spawns the watch for foreign changes.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let watcher = tokio::spawn(self.clone().watch_foreign(shutdown.clone()));
        let mut backoff = Duration::from_millis(100);
        let mut spacing = pace::Spacing::new(self.min_interval);
        loop {
            // Space passes: during a burst, the changes of one window go out together (the
            // first two of a burst go at once: a change right after a pass is not held).
            if let Some(wait) = spacing.wait(std::time::Instant::now()) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => break,
                }
            }
            let now = std::time::Instant::now();
            let (dirty, next_ready) = {
                let mut marks = self.dirty.lock().expect("dirty lock");
                let mut pacer = self.pacer.lock().expect("pacer lock");
                pacer.expire(now);
                // Marks of workers Traefik is still taking in stay for a later pass.
                let held = marks.take_held(&pacer, now);
                if !held.is_empty() {
                    self.metrics.reconcile_held.inc();
                }
                let dirty = std::mem::replace(&mut *marks, held);
                (dirty, pacer.next_ready(now))
            };
            if !dirty.is_empty() {
                let started = std::time::Instant::now();
                spacing.spend(started);
                match self.pass(&dirty).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        self.metrics
                            .reconcile_passes
                            .with_label_values(&["ok"])
                            .inc();
                        self.metrics
                            .reconcile_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        self.metrics
                            .reconcile_passes
                            .with_label_values(&["error"])
                            .inc();
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Reconcile pass failed");
                        self.dirty.lock().expect("dirty lock").merge(dirty);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
                continue;
            }
            let paced = next_ready.map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep_until(paced.unwrap_or_else(tokio::time::Instant::now)), if paced.is_some() => {}
                _ = tokio::time::sleep(self.resync) => self.nudge_all(),
                _ = shutdown.changed() => break,
            }
        }
        watcher.abort();
    }

    async fn pass(&self, dirty: &Dirty) -> Result<(), ReconcileError> {
        let workers = self.store.list_workers().await?;
        {
            let mut roots = self.roots.lock().expect("roots lock");
            roots.clear();
            for w in &workers {
                roots.insert(self.root_key(&w.authority), w.id);
            }
        }
        {
            // Forget images of workers that are gone.
            let ids: HashSet<Uuid> = workers.iter().map(|w| w.id).collect();
            self.images
                .lock()
                .expect("images lock")
                .retain(|id, _| ids.contains(id));
        }
        for w in &workers {
            let full = dirty.all || dirty.workers.contains(&w.id);
            let ids = dirty.circuits.get(&w.id);
            if !full && ids.is_none() {
                continue;
            }
            if self
                .pacer
                .lock()
                .expect("pacer lock")
                .waits(w.id, std::time::Instant::now())
                .is_some()
            {
                // Only a pass for `all` gets here with a held worker: it waits its turn.
                self.metrics.reconcile_held.inc();
                let mut marks = self.dirty.lock().expect("dirty lock");
                if full {
                    marks.workers.insert(w.id);
                }
                if let Some(ids) = ids {
                    marks.circuits.entry(w.id).or_default().extend(ids);
                }
                continue;
            }
            let image = self.images.lock().expect("images lock").remove(&w.id);
            // On error the image stays dropped, so the retry is a full pass.
            let (image, txns) = match (image, ids) {
                (Some(image), Some(ids)) if !full => self.reconcile_circuits(w, image, ids).await?,
                (image, _) => self.reconcile_worker(w, image.unwrap_or_default()).await?,
            };
            self.pacer.lock().expect("pacer lock").wrote(
                w.id,
                txns,
                image.keys,
                std::time::Instant::now(),
            );
            let mut images = self.images.lock().expect("images lock");
            images.insert(w.id, image);
            let bytes: usize = images.values().map(|i| i.bytes).sum();
            self.metrics.reconcile_image_bytes.set(bytes as i64);
        }
        Ok(())
    }

    /// Full pass: everything of the worker from SQL against its whole etcd prefix; `image` is
    /// the previous image (or an empty one), brought up to date.
    async fn reconcile_worker(
        &self,
        w: &crate::domain::Worker,
        mut image: Image,
    ) -> Result<(Image, usize), ReconcileError> {
        let circuits = self.store.circuits_of_worker(w.id).await?;
        let desired = render::render_worker(w, &circuits);
        drop(circuits);
        let root = self.root_key(&w.authority);
        let actual = self.kv.get_prefix(&format!("{root}/")).await?;
        let batches = plan(&root, &desired, &actual, self.max_ops());
        drop(actual);
        let txns = self.apply(batches).await?;
        self.metrics
            .reconcile_kind
            .with_label_values(&["full"])
            .inc();
        image.sync_to(&desired);
        Ok((image, txns))
    }

    /// Incremental pass: only `ids`, from SQL, against the image.
    async fn reconcile_circuits(
        &self,
        w: &crate::domain::Worker,
        mut image: Image,
        ids: &HashSet<Uuid>,
    ) -> Result<(Image, usize), ReconcileError> {
        let ids: Vec<Uuid> = ids.iter().copied().collect();
        let circuits = self.store.circuits_by_ids(&ids).await?;
        let root = self.root_key(&w.authority);
        let prefix = format!("{root}/");
        let mut desired: BTreeMap<Group, render::Kv> = ids
            .iter()
            .map(|id| (Group::Circuit(*id), render::Kv::new()))
            .collect();
        // When each circuit whose keys change was changed in SQL (create → etcd, below).
        let mut changed_at = Vec::new();
        for c in circuits.iter().filter(|c| c.worker_id == w.id) {
            let kv = render::render_circuit(w, c);
            if !image.holds(Group::Circuit(c.id), &kv) {
                changed_at.push(c.updated_at_ms);
            }
            desired.insert(Group::Circuit(c.id), kv);
        }
        let actual = image.actual_for(&prefix, &desired);
        let batches = plan(&root, &desired, &actual, self.max_ops());
        let txns = self.apply(batches).await?;
        let now = crate::store::now_ms();
        for at in changed_at {
            self.metrics
                .publish_seconds
                .observe((now - at).max(0) as f64 / 1000.0);
        }
        self.metrics
            .reconcile_kind
            .with_label_values(&["incremental"])
            .inc();
        for (group, kv) in &desired {
            image.set(*group, kv);
        }
        Ok((image, txns))
    }

    fn max_ops(&self) -> usize {
        self.max_ops.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// etcd refused a transaction of `size` operations for its size: write smaller ones from
    /// the next pass on (the pass that failed is retried in full).
    fn too_many_ops(&self, size: usize) {
        let now = self.max_ops();
        let next = (size.min(now) / 2).max(ETCD_DEFAULT_MAX_TXN_OPS).min(now);
        if next < now {
            self.max_ops
                .store(next, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                refused = size,
                now_at_most = next,
                "etcd refuses transactions this large (its --max-txn-ops); writing smaller ones"
            );
        }
    }

    /// Write `batches`, one fenced transaction each; how many were written.
    async fn apply(&self, batches: Vec<Vec<Op>>) -> Result<usize, ReconcileError> {
        let txns = batches.len();
        for ops in batches {
            let fence = self.fence.lock().expect("fence lock").clone();
            let Some(fence) = fence else {
                return Err(KvError::Fenced.into());
            };
            let rev = match self.kv.txn_fenced(&ops, Some(&fence)).await {
                Err(KvError::Fenced) => {
                    self.metrics.etcd_fenced.inc();
                    return Err(KvError::Fenced.into());
                }
                Err(e) => {
                    self.metrics.etcd_txn_errors.inc();
                    if matches!(&e, KvError::Etcd(e) if e.to_string().contains("too many operations"))
                    {
                        self.too_many_ops(ops.len());
                    }
                    return Err(e.into());
                }
                Ok(rev) => rev,
            };
            self.metrics.etcd_txns.inc();
            self.metrics.etcd_ops.inc_by(ops.len() as u64);
            let mut own = self.own_revisions.lock().expect("own lock");
            own.push_back(rev);
            while own.len() > 4096 {
                own.pop_front();
            }
        }
        Ok(txns)
    }

    /// Watch the namespace; a change we did not write nudges the worker it belongs to.
    async fn watch_foreign(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let prefix = format!("{}/", self.namespace.trim_end_matches('/'));
        loop {
            let mut stream = match self.kv.watch_prefix(&prefix).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot watch etcd; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            // After (re)connecting we may have missed changes.
            self.nudge_all();
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = shutdown.changed() => return,
                };
                match msg {
                    Ok(Some(resp)) => {
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let rev = kv.mod_revision();
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            let owner = {
                                let roots = self.roots.lock().expect("roots lock");
                                roots
                                    .iter()
                                    .find(|(root, _)| key.starts_with(root.as_str()))
                                    .map(|(_, id)| *id)
                            };
                            let Some(id) = owner else { continue };
                            if self.own_revisions.lock().expect("own lock").contains(&rev) {
                                continue;
                            }
                            // Our own transaction's events can arrive before its revision is
                            // recorded: look again a moment later before calling it foreign.
                            let me = self.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(OWN_REVISION_GRACE).await;
                                if me.own_revisions.lock().expect("own lock").contains(&rev) {
                                    return;
                                }
                                tracing::info!(key = %key, "Foreign change under a worker prefix; repairing");
                                me.metrics.foreign_changes.inc();
                                me.nudge(id);
                            });
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
