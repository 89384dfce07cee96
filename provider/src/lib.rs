//! `appproxy-provider`: the control plane of appproxy.
//!
//! Layout:
//! - [`config`]: typed TOML config with env overrides and validation.
//! - [`domain`]: validated types and pure allocation rules.
//! - [`store`]: SQL state (the source of truth), SQLite or PostgreSQL.
//! - [`render`]: pure circuit → Traefik KV rendering.
//! - [`etcd`]: thin etcd shell (fenced transactions, the leader key).
//! - [`leader`]: leader election over an etcd lease; the leader's writes are fenced.
//! - [`reconcile`]: SQL → etcd projection, coalesced, idempotent, self-repairing (leader only).
//! - [`nudges`]: reconcile requests between providers (PostgreSQL `LISTEN`/`NOTIFY`).
//! - [`api`]: HTTP handlers (Backend.AI wire + extensions) that parse, call a [`service`] and
//!   answer in [`models`]; [`error`]: the only status mapping.
//! - [`placement`]: the pure worker ranking.
//! - [`tokens`]: Ed25519-signed setup links and inference tokens; [`revoke`]: revocations in
//!   Redis (unified logout).
//! - [`activity`]: activity keys in Redis, workers' ingest health, the idle reaper's pass.
//! - [`background`]: every background task, started and stopped in one place: the election,
//!   and the leader's duties for as long as a term lasts.
//! - [`events`]: ended Backend.AI sessions (from the Manager's event bus) remove their circuits.
//! - [`route_health`]: replica health as each worker's Traefik reports it (kept in SQL).
//! - [`metrics`]: Prometheus metrics.

pub mod activity;
pub mod api;
pub mod background;
pub mod config;
pub mod domain;
pub mod error;
pub mod etcd;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod models;
pub mod nudges;
pub mod placement;
pub mod reconcile;
pub mod render;
pub mod revoke;
pub mod route_health;
pub mod service;
pub mod store;
pub mod tokens;

use std::sync::Arc;

use appproxy_common::tls::PeerAddr;
use tokio::{net::TcpListener, sync::watch};

pub use config::Config;

/// Connect to SQL and etcd, start the background work (`background`) and serve the API on
/// `listener` until `shutdown` flips to `true`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    appproxy_common::tls::install_provider();
    let signer = tokens::Signer::from_file(
        &config.secrets.signing_key_file,
        config.auth.setup_token_ttl_seconds,
    )?;
    let redis = config.redis.client()?;
    let limiter = redis
        .clone()
        .map(|c| appproxy_common::ratelimit::Limiter::new(c, &config.etcd.namespace));
    if limiter.is_none() {
        tracing::warn!("No [redis] url: the API's rate limits are not applied");
    }
    let revoker = revoke::Revoker::new(redis.clone(), &config.etcd.namespace);
    let store =
        store::Store::connect(&config.database.url, config.database.max_connections).await?;
    let kv = etcd::Kv::connect(&config.etcd).await?;
    let metrics = metrics::Metrics::new();
    metrics.register_db(store.db_metrics());
    let reconciler = reconcile::Reconciler::new(
        store.clone(),
        kv.clone(),
        config.etcd.namespace.clone(),
        &config.reconcile,
        metrics.clone(),
    );
    let activity = activity::ActivityStore::new(redis);
    let (role, leadership) = leader::Leadership::new(config.node_id());
    let state = api::AppState::new(api::Shared {
        store,
        reconciler,
        metrics,
        config: Arc::new(config),
        etcd: kv,
        signer,
        revoker,
        activity,
        leadership,
        quorum: etcd::Quorum::default(),
        limiter,
    });
    let tls = match state.config.tls.files() {
        Some((cert, key)) => Some(appproxy_common::tls::server_config(cert, key)?),
        None => None,
    };
    let tasks = background::spawn(&state, role, &shutdown);
    let stopped = async move {
        let _ = shutdown.wait_for(|v| *v).await;
    };
    let addr = listener.local_addr()?;
    match tls {
        Some(tls) => {
            tracing::info!(%addr, "Provider listening (HTTPS)");
            let listener = appproxy_common::tls::TlsListener::new(listener, tls)?;
            axum::serve(
                listener,
                api::app(state).into_make_service_with_connect_info::<PeerAddr>(),
            )
            .with_graceful_shutdown(stopped)
            .await?;
        }
        None => {
            tracing::info!(%addr, "Provider listening");
            axum::serve(
                listener,
                api::app(state).into_make_service_with_connect_info::<PeerAddr>(),
            )
            .with_graceful_shutdown(stopped)
            .await?;
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}
