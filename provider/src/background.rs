//! The provider's background work, started in one place and stopped together.
//!
//! Every replica runs the leader election, the etcd quorum probe and (on PostgreSQL) the
//! nudge exchange with the other replicas. The leader's duties — the reconciler, grant GC,
//! worker liveness and, when configured, the revocation pruner, the idle reaper and
//! Backend.AI's event listener — start when this replica wins a term and stop when it ends
//! (`lead`). Periodic jobs run through `appproxy_common::shutdown::every` and act through the
//! same services as the handlers.

use std::time::{Duration, Instant};

use appproxy_common::shutdown::{First, every};
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

use crate::{
    activity,
    api::AppState,
    etcd::Fence,
    events,
    leader::{Election, Role},
    nudges, revoke,
};

/// Start the election and every task of this replica over `state`'s handles (`role` is the
/// election's side of `state.leadership`); abort them when serving ends.
pub fn spawn(
    state: &AppState,
    role: watch::Sender<Role>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let cfg = &state.config;
    let election = Election {
        kv: state.etcd.clone(),
        key: format!("{}leader", cfg.etcd.control_prefix),
        node: state.leadership.node().to_string(),
        ttl: Duration::from_secs(cfg.ha.lease_ttl_seconds),
    };
    let mut tasks = vec![
        tokio::spawn(election.run(role, shutdown.clone())),
        tokio::spawn(quorum(state.clone(), shutdown.clone())),
        tokio::spawn(lead(state.clone(), shutdown.clone())),
    ];
    let (store, reconciler, metrics) = (&state.store, &state.reconciler, &state.metrics);
    if let Some(t) = nudges::start(&cfg.database.url, store, reconciler, metrics) {
        tasks.extend(t);
    }
    tasks
}

/// One term of leadership: its duties and how to stop them.
struct Term {
    fence: Fence,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Term {
    fn start(state: &AppState, fence: Fence) -> Term {
        state.reconciler.begin_term(fence.clone());
        state.metrics.leader.set(1);
        state.metrics.leader_terms.inc();
        let (stop, rx) = watch::channel(false);
        Term {
            fence,
            stop,
            tasks: duties(state, &rx),
        }
    }

    fn end(self, state: &AppState) {
        state.reconciler.end_term();
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
        }
        state.metrics.leader.set(0);
    }
}

/// Run the leader's duties exactly while this replica leads.
async fn lead(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut role = state.leadership.subscribe();
    let mut term: Option<Term> = None;
    loop {
        let now = role.borrow_and_update().clone();
        if let Some(t) = term.take() {
            match &now {
                Role::Leader(f) if *f == t.fence => term = Some(t),
                _ => t.end(&state),
            }
        }
        if let (Role::Leader(fence), None) = (&now, &term) {
            term = Some(Term::start(&state, fence.clone()));
        }
        tokio::select! {
            changed = role.changed() => if changed.is_err() { break },
            _ = shutdown.wait_for(|v| *v) => break,
        }
    }
    if let Some(t) = term {
        t.end(&state);
    }
}

/// The leader's duties, stopped by `stop`.
fn duties(state: &AppState, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let cfg = &state.config;
    let mut tasks = vec![
        tokio::spawn(state.reconciler.clone().run(stop.clone())),
        tokio::spawn(gc(state.clone(), stop.clone())),
        tokio::spawn(liveness(state.clone(), stop.clone())),
    ];
    if state.revoker.configured() {
        tasks.push(tokio::spawn(revoke::pruner(
            state.revoker.clone(),
            Duration::from_secs(cfg.auth.revocation_retention_seconds),
            Duration::from_secs(cfg.auth.revocation_prune_interval_seconds),
            stop.clone(),
        )));
    }
    if state.activity.configured() {
        tasks.push(tokio::spawn(reaper(state.clone(), stop.clone())));
    }
    if let Some(url) = &cfg.backendai.events_redis_url {
        match appproxy_common::tls::redis_client(url, &cfg.backendai.tls) {
            Ok(client) => {
                let listener = events::Listener {
                    state: state.clone(),
                };
                tasks.push(tokio::spawn(listener.run(client, stop.clone())));
            }
            Err(e) => tracing::error!(error = %e, "Cannot follow Backend.AI's event bus"),
        }
    }
    tasks
}

/// Probe etcd every second with a read that needs a quorum; after two failed probes in a
/// row, creates are refused with a 503 until one succeeds. A single failure is not enough:
/// while etcd elects a new raft leader (the member that led died), requests fail for a
/// moment although the cluster is healthy.
async fn quorum(state: AppState, shutdown: watch::Receiver<bool>) {
    let key = format!("{}leader", state.config.etcd.control_prefix);
    let failed = std::sync::atomic::AtomicU32::new(0);
    every(Duration::from_secs(1), First::Now, shutdown, || async {
        let probe = state.etcd.quorum(&key, Duration::from_secs(2)).await;
        let in_a_row = match &probe {
            Ok(()) => {
                failed.store(0, std::sync::atomic::Ordering::Relaxed);
                0
            }
            Err(_) => failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        };
        let ok = in_a_row < 2;
        state.metrics.etcd_quorum.set(i64::from(ok));
        if state.quorum.set(ok) {
            match probe {
                Ok(()) => tracing::info!("etcd has a quorum again"),
                Err(e) => tracing::warn!(error = %e, "etcd has no quorum; creates are refused"),
            }
        }
    })
    .await;
}

/// Mark silent workers `LOST` (see `service::liveness`). Not before this term has lasted the
/// timeout: after an outage of the control plane (or a failover that made the workers'
/// provider unreachable), workers' last heartbeats are as old as the outage, and they must
/// get one timeout to reach a provider again.
async fn liveness(state: AppState, shutdown: watch::Receiver<bool>) {
    let timeout = Duration::from_secs(state.config.worker.heartbeat_timeout_seconds);
    let started = Instant::now();
    every(
        state.config.worker.sweep_interval(),
        First::AfterInterval,
        shutdown,
        || async {
            if let Err(e) = state.workers().count_by_status().await {
                tracing::warn!(error = %e, "Counting workers by status failed");
            }
            if started.elapsed() < timeout {
                return;
            }
            if let Err(e) = state.workers().sweep(timeout).await {
                tracing::warn!(error = %e, "Liveness sweep failed");
            }
        },
    )
    .await;
}

/// Remove idle interactive circuits (`activity::reap_once`), settled like any deletion.
async fn reaper(state: AppState, shutdown: watch::Receiver<bool>) {
    let r = &state.config.reaper;
    let settings = activity::ReaperSettings {
        interval: Duration::from_secs(r.interval_seconds),
        default_idle_timeout_secs: r.default_idle_timeout_seconds,
        max_ingest_lag_ms: r.max_ingest_lag_seconds as i64 * 1000,
    };
    every(
        settings.interval,
        First::AfterInterval,
        shutdown,
        || async {
            match activity::reap_once(&state.store, &state.activity, &settings).await {
                Ok(gone) if gone.is_empty() => {}
                Ok(gone) => {
                    for c in &gone {
                        tracing::info!(circuit = %c.id, app = %c.app, "Idle circuit reclaimed");
                    }
                    state.metrics.circuits_reclaimed.inc_by(gone.len() as u64);
                    let circuits = state.circuits();
                    circuits.settle(&gone);
                    let ids: Vec<Uuid> = gone.iter().map(|c| c.id).collect();
                    circuits.forget_activity(&ids).await;
                }
                Err(e) => tracing::warn!(error = %e, "Idle reaper skipped a pass"),
            }
        },
    )
    .await;
}

/// Every minute: delete expired `/v2/conf` grants and forget circuits that ended long enough
/// ago to have left every worker's map.
async fn gc(state: AppState, shutdown: watch::Receiver<bool>) {
    every(Duration::from_secs(60), First::Now, shutdown, || async {
        match state.store.gc_tokens().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "Expired conf tokens removed"),
            Err(e) => tracing::warn!(error = %e, "Token GC failed"),
        }
        let before = crate::store::now_ms() - 2 * crate::store::ENDED_LISTED_MS;
        if let Err(e) = state.store.gc_ended(before).await {
            tracing::warn!(error = %e, "Ended-circuit GC failed");
        }
    })
    .await;
}
