//! The provider's background work, started in one place and stopped together: the
//! reconciler, grant GC, worker liveness and, when configured, the revocation pruner, the idle
//! reaper and Backend.AI's event listener. Periodic jobs run through
//! `appproxy_common::shutdown::every` and act through the same services as the handlers.

use std::time::{Duration, Instant};

use appproxy_common::shutdown::{First, every};
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

use crate::{activity, api::AppState, events, revoke};

/// Start every background task over `state`'s handles; abort them when serving ends.
pub fn spawn(
    state: &AppState,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let cfg = &state.config;
    let mut tasks = vec![
        tokio::spawn(state.reconciler.clone().run(shutdown.clone())),
        tokio::spawn(gc_tokens(state.clone(), shutdown.clone())),
        tokio::spawn(liveness(state.clone(), shutdown.clone())),
    ];
    if state.revoker.configured() {
        tasks.push(tokio::spawn(revoke::pruner(
            state.revoker.clone(),
            Duration::from_secs(cfg.auth.revocation_retention_seconds),
            Duration::from_secs(cfg.auth.revocation_prune_interval_seconds),
            shutdown.clone(),
        )));
    }
    if state.activity.configured() {
        tasks.push(tokio::spawn(reaper(state.clone(), shutdown.clone())));
    }
    if let Some(url) = &cfg.backendai.events_redis_url {
        let listener = events::Listener {
            store: state.store.clone(),
            reconciler: state.reconciler.clone(),
            metrics: state.metrics.clone(),
            activity: state.activity.clone(),
        };
        let client = redis::Client::open(url.as_str())?;
        tasks.push(tokio::spawn(listener.run(client, shutdown.clone())));
    }
    Ok(tasks)
}

/// Mark silent workers `LOST` (see `service::liveness`). Not before this process has run for
/// the timeout: after a provider restart, workers' last heartbeats are as old as the outage,
/// and they must get one timeout to reach this process again.
async fn liveness(state: AppState, shutdown: watch::Receiver<bool>) {
    let timeout = Duration::from_secs(state.config.worker.heartbeat_timeout_seconds);
    let started = Instant::now();
    every(
        state.config.worker.sweep_interval(),
        First::AfterInterval,
        shutdown,
        || async {
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
            let (store, ingest) = (&state.store, &state.ingest);
            match activity::reap_once(store, &state.activity, ingest, &settings).await {
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

/// Delete expired `/v2/conf` grants every minute.
async fn gc_tokens(state: AppState, shutdown: watch::Receiver<bool>) {
    every(Duration::from_secs(60), First::Now, shutdown, || async {
        match state.store.gc_tokens().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "Expired conf tokens removed"),
            Err(e) => tracing::warn!(error = %e, "Token GC failed"),
        }
    })
    .await;
}
