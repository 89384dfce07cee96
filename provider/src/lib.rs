//! `appproxy-provider`: the control plane of appproxy.
//!
//! Layout:
//! - [`config`]: typed TOML config with env overrides and validation.
//! - [`domain`]: validated types and pure allocation rules.
//! - [`store`]: SQL state (the source of truth), SQLite or PostgreSQL.
//! - [`render`]: pure circuit → Traefik KV rendering.
//! - [`etcd`]: thin etcd shell.
//! - [`reconcile`]: SQL → etcd projection, coalesced, idempotent, self-repairing.
//! - [`api`]: HTTP handlers (Backend.AI wire + extensions) that parse, call a [`service`] and
//!   answer in [`models`]; [`error`]: the only status mapping.
//! - [`placement`]: the pure worker ranking.
//! - [`tokens`]: Ed25519-signed setup links and inference tokens; [`revoke`]: revocations in
//!   Redis (unified logout).
//! - [`activity`]: activity keys in Redis, workers' ingest health, the idle reaper.
//! - [`events`]: ended Backend.AI sessions (from the Manager's event bus) remove their circuits.
//! - [`route_health`]: replica health as each worker's Traefik reports it (in memory).
//! - [`metrics`]: Prometheus metrics.

pub mod activity;
pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod etcd;
pub mod events;
pub mod metrics;
pub mod models;
pub mod placement;
pub mod reconcile;
pub mod render;
pub mod revoke;
pub mod route_health;
pub mod service;
pub mod store;
pub mod tokens;

use std::sync::Arc;

use tokio::{net::TcpListener, sync::watch};

pub use config::Config;

/// Connect to SQL and etcd, start the reconciler and serve the API on `listener` until
/// `shutdown` flips to `true`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let signer = tokens::Signer::from_file(
        &config.secrets.signing_key_file,
        config.auth.setup_token_ttl_seconds,
    )?;
    let revoker = revoke::Revoker::new(config.redis.url.as_deref(), &config.etcd.namespace)?;
    let prune_task = revoker.configured().then(|| {
        tokio::spawn(revoke::pruner(
            revoker.clone(),
            std::time::Duration::from_secs(config.auth.revocation_retention_seconds),
            std::time::Duration::from_secs(config.auth.revocation_prune_interval_seconds),
            shutdown.clone(),
        ))
    });
    let store =
        store::Store::connect(&config.database.url, config.database.max_connections).await?;
    let kv = etcd::Kv::connect(&config.etcd).await?;
    let metrics = metrics::Metrics::new();
    metrics.register_db(store.db_metrics());
    let reconciler = reconcile::Reconciler::new(
        store.clone(),
        kv.clone(),
        config.etcd.namespace.clone(),
        config.reconcile.max_txn_ops,
        config.resync_interval(),
        std::time::Duration::from_millis(config.reconcile.min_interval_ms),
        metrics.clone(),
    );
    let rec_task = tokio::spawn(reconciler.clone().run(shutdown.clone()));
    let gc_task = tokio::spawn(gc_tokens(store.clone(), shutdown.clone()));
    let liveness_task = tokio::spawn(liveness(
        store.clone(),
        reconciler.clone(),
        metrics.clone(),
        std::time::Duration::from_secs(config.worker.heartbeat_timeout_seconds),
        config.worker.sweep_interval(),
        shutdown.clone(),
    ));
    let activity = activity::ActivityStore::new(config.redis.url.as_deref())?;
    let ingest = activity::IngestHealth::default();
    let reaper_task = activity.configured().then(|| {
        tokio::spawn(activity::reaper(
            store.clone(),
            activity.clone(),
            ingest.clone(),
            reconciler.clone(),
            metrics.clone(),
            activity::ReaperSettings {
                interval: std::time::Duration::from_secs(config.reaper.interval_seconds),
                default_idle_timeout_secs: config.reaper.default_idle_timeout_seconds,
                max_ingest_lag_ms: config.reaper.max_ingest_lag_seconds as i64 * 1000,
            },
            shutdown.clone(),
        ))
    });
    let events_task = match &config.backendai.events_redis_url {
        Some(url) => {
            let listener = events::Listener {
                store: store.clone(),
                reconciler: reconciler.clone(),
                metrics: metrics.clone(),
                activity: activity.clone(),
            };
            let client = redis::Client::open(url.as_str())?;
            Some(tokio::spawn(listener.run(client, shutdown.clone())))
        }
        None => None,
    };
    let state = api::AppState::new(api::Shared {
        store,
        reconciler,
        metrics,
        config: Arc::new(config),
        etcd: kv,
        signer,
        revoker,
        route_health: route_health::RouteHealth::default(),
        activity,
        ingest,
    });
    tracing::info!(addr = %listener.local_addr()?, "Provider listening");
    axum::serve(listener, api::app(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .await?;
    rec_task.abort();
    gc_task.abort();
    liveness_task.abort();
    for t in [reaper_task, prune_task, events_task].into_iter().flatten() {
        t.abort();
    }
    Ok(())
}

/// Mark silent workers `LOST` every `interval` (see `service::liveness`). Not before this
/// process has run for `timeout`: after a provider restart, workers' last heartbeats are as
/// old as the outage, and they must get one `timeout` to reach this process again.
async fn liveness(
    store: store::Store,
    reconciler: Arc<reconcile::Reconciler>,
    metrics: metrics::Metrics,
    timeout: std::time::Duration,
    interval: std::time::Duration,
    shutdown: watch::Receiver<bool>,
) {
    use appproxy_common::shutdown::{First, every};
    let started = std::time::Instant::now();
    every(interval, First::AfterInterval, shutdown, || {
        let sweep = service::Workers {
            store: &store,
            reconciler: &reconciler,
            metrics: &metrics,
        };
        async move {
            if started.elapsed() < timeout {
                return;
            }
            if let Err(e) = sweep.sweep(timeout).await {
                tracing::warn!(error = %e, "Liveness sweep failed");
            }
        }
    })
    .await;
}

/// Delete expired `/v2/conf` grants every minute.
async fn gc_tokens(store: store::Store, shutdown: watch::Receiver<bool>) {
    use appproxy_common::shutdown::{First, every};
    every(
        std::time::Duration::from_secs(60),
        First::Now,
        shutdown,
        || async {
            match store.gc_tokens().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "Expired conf tokens removed"),
                Err(e) => tracing::warn!(error = %e, "Token GC failed"),
            }
        },
    )
    .await;
}
