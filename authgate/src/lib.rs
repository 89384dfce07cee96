//! `appproxy-authgate`: the per-worker side of appproxy.
//!
//! - [`decision`] (pure): the ForwardAuth decision from the forwarded request, the target in
//!   the forwardAuth address, [`token`] keys, [`cookie`] parsing and the [`revocation`] set.
//! - [`http`]: the thin axum shell, one file per route family (`/auth`, `/_appproxy/setup`,
//!   `/_appproxy/login`, `/_appproxy/closed`, `/setup`, `/health`, `/metrics`, `/v1/logs`);
//!   [`setup`]: refusals and I/O (Redis use counts, waiting for Traefik); [`error`]: the only
//!   status mapping.
//! - [`ingest`] (pure): Traefik's OTLP access-log export → per-circuit events;
//!   [`activity`]: in-memory activity (requests, WebSocket refcounts, TCP connections) flushed
//!   to Redis every second.
//! - [`worker`]: registration, heartbeats (with ingest health), circuit map and route health.
//! - [`cut`]: ending the live connections of ended circuits (`SOCK_DESTROY` via `ss -K`).
//! - [`traefik_config`] (pure): the co-located Traefik's static configuration.

pub mod activity;
pub mod config;
pub mod cookie;
pub mod cut;
pub mod decision;
pub mod error;
pub mod fastpath;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod plugin;
pub mod revocation;
pub mod serve;
pub mod setup;
pub mod token;
pub mod traefik_config;
pub mod worker;

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

pub use config::Config;

/// Serve ForwardAuth and setup on `listeners` (see [`serve`]), keep the revocation set in
/// sync and the worker registered, until `stop` flips to `true`; then deregister. A
/// registration the provider refuses stops everything and is returned as the error.
pub async fn run(
    config: Config,
    listeners: Vec<std::net::TcpListener>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    appproxy_common::tls::install_provider();
    // The access-log receiver listens apart from the API (loopback, validated); bound before
    // anything starts, so a port in use fails the start instead of a half-running worker.
    let ingest = match config.ingest.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("ingest.listen {addr}: {e}"))?,
        ),
        None => None,
    };
    // One shutdown signal for every task: the caller's, or a refused registration.
    let (stop_all, shutdown) = watch::channel(false);
    let stop_all = Arc::new(stop_all);
    {
        let (tx, mut stop) = (stop_all.clone(), stop);
        tokio::spawn(async move {
            let _ = stop.wait_for(|v| *v).await;
            let _ = tx.send(true);
        });
    }
    // The HTTPS worker API, bound (and its certificate loaded) before anything starts.
    let public = match config.tls.served() {
        Some((addr, cert, key)) => {
            let tls = appproxy_common::tls::server_config(cert, key)?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("tls.listen {addr}: {e}"))?;
            Some(appproxy_common::tls::TlsListener::new(l, tls)?)
        }
        None => None,
    };
    let redis = appproxy_common::tls::redis_client(&config.redis.url, &config.redis.tls)?;
    let (gate, tasks) = start(config, redis, stop_all, &shutdown).await?;
    let addr = listeners
        .first()
        .map(|l| l.local_addr())
        .transpose()?
        .ok_or_else(|| anyhow::anyhow!("no listener"))?;
    tracing::info!(%addr, threads = listeners.len(), "authgate listening");
    let ingest_task = ingest.map(|l| serve_ingest(l, gate.clone(), shutdown.clone()));
    let public_task = public.map(|l| {
        let mut stop = shutdown.clone();
        let app = http::public_app(gate.clone());
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<appproxy_common::tls::PeerAddr>();
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|v| *v).await;
                })
                .await;
        })
    });
    serve::serve(listeners, http::app(gate), shutdown.clone()).await?;
    for t in [ingest_task, public_task].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    tasks.finish().await
}

/// What runs beside the HTTP surface, to be wound down in order at shutdown.
struct Tasks {
    sync: tokio::task::JoinHandle<()>,
    flusher: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<Result<(), worker::RegistrationRefused>>,
}

impl Tasks {
    async fn finish(self) -> anyhow::Result<()> {
        // The worker task deregisters on shutdown; give it a bounded moment.
        let role = tokio::time::timeout(Duration::from_secs(5), self.worker).await;
        // One last flush happens in the flusher's loop before it sees the shutdown.
        let _ = tokio::time::timeout(Duration::from_secs(3), self.flusher).await;
        self.sync.abort();
        match role {
            Ok(Ok(Err(refused))) => Err(refused.into()),
            _ => Ok(()),
        }
    }
}

/// Load the keys, start the revocation sync and pruner, the activity flusher, the worker role
/// and the plugin host: the shared [`http::Gate`] and the tasks to wind down.
async fn start(
    config: Config,
    redis: redis::Client,
    stop_all: Arc<watch::Sender<bool>>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<(Arc<http::Gate>, Tasks)> {
    let keys = token::Keys::load(
        &config.keys.provider_public_key_file,
        &config.keys.cookie_secret,
        config.session.leeway_seconds,
    )?;
    let metrics = metrics::Metrics::new();
    let revoked = revocation::Revocations::with_retention(Duration::from_secs(
        config.session.revocation_retention_seconds,
    ));
    let activity = activity::Activity::new();
    let cutter = cut::Cutter::new(metrics.clone());
    let sync = tokio::spawn(revocation::sync(
        redis.clone(),
        config.namespace.clone(),
        revoked.clone(),
        cut_on_revocation(activity.clone(), cutter.clone()),
        shutdown.clone(),
    ));
    tokio::spawn(revocation::pruner(revoked.clone(), shutdown.clone()));
    let traefik = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let flusher = tokio::spawn(activity::flusher(
        activity.clone(),
        redis.clone(),
        traefik.clone(),
        config.traefik.api_url.clone(),
        config.worker.protocol == appproxy_common::wire::Protocol::Tcp,
        shutdown.clone(),
    ));
    let fast_path = fastpath::start(&config, &keys, &revoked, &activity, shutdown)?;
    let role = worker::run(
        config.clone(),
        worker::provider_http(&config.provider)?,
        metrics.clone(),
        activity.clone(),
        cutter,
        fast_path.clone(),
        shutdown.clone(),
    );
    let worker = tokio::spawn(async move {
        let r = role.await;
        if let Err(e) = &r {
            tracing::error!(error = %e, "Registration refused; stopping");
            let _ = stop_all.send(true);
        }
        r
    });
    let plugins = plugin_runner(&config, &metrics, shutdown)?;
    let gate = http::Gate {
        plugins,
        activity,
        uses: Arc::new(setup::UseCounter::new(redis.clone(), &config.namespace)),
        limiter: Arc::new(appproxy_common::ratelimit::Limiter::new(
            redis,
            &config.namespace,
        )),
        cfg: Arc::new(config),
        keys,
        revoked,
        metrics,
        traefik,
        fast_path,
    };
    Ok((
        Arc::new(gate),
        Tasks {
            sync,
            flusher,
            worker,
        },
    ))
}

/// A revoked user's circuits, and the circuits where a revoked login session opened
/// WebSockets, lose their live connections (new requests are refused by the decision
/// already). Looked up now and once more after the next map poll: a circuit created a moment
/// ago may not be in this authgate's map yet.
fn cut_on_revocation(
    activity: Arc<activity::Activity>,
    cutter: cut::Cutter,
) -> revocation::OnRevoked {
    Arc::new(move |event: &str| {
        let Some((field, _)) = event.split_once('=') else {
            return;
        };
        let field = field.to_string();
        let (activity, cutter) = (activity.clone(), cutter.clone());
        tokio::spawn(async move {
            let mut done = std::collections::HashSet::new();
            for round in 0..2 {
                if round > 0 {
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                }
                for (id, ends, shared) in revoked_ends(&activity, &field) {
                    if done.insert(id) {
                        let cutter = cutter.clone();
                        tokio::spawn(async move {
                            cutter.cut(id, "access revoked", &ends, &shared).await
                        });
                    }
                }
            }
        });
    })
}

/// The circuits a revocation field (`u:<user>` or `l:<login session hash>`) ends, with their
/// ends and the backends other circuits still use.
fn revoked_ends(
    activity: &activity::Activity,
    field: &str,
) -> Vec<(uuid::Uuid, cut::Ends, std::collections::HashSet<String>)> {
    let ended = if let Some(user) = field.strip_prefix("u:") {
        match uuid::Uuid::parse_str(user) {
            Ok(u) => activity.ends_of_user(u),
            Err(_) => return Vec::new(),
        }
    } else if let Some(ls) = field.strip_prefix("l:") {
        activity.ends_of_login_session(ls)
    } else {
        return Vec::new();
    };
    let ids: Vec<uuid::Uuid> = ended.iter().map(|(id, _)| *id).collect();
    let shared = activity.backends_except(&ids);
    (ended.into_iter())
        .map(|(id, ends)| (id, ends, shared.clone()))
        .collect()
}

/// The plugin host and runner, with its directory rescanned every 2 s (none configured: none).
fn plugin_runner(
    config: &Config,
    metrics: &metrics::Metrics,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Arc<plugin::Runner>>> {
    let Some(dir) = &config.plugins.dir else {
        return Ok(None);
    };
    let limits = plugin::Limits {
        timeout: Duration::from_millis(config.plugins.timeout_ms),
        memory_bytes: config.plugins.memory_mib << 20,
        max_failures: config.plugins.max_failures,
        ..plugin::Limits::default()
    };
    let host = plugin::Host::new(Some(dir.into()), limits)?;
    let watched = host.clone();
    tokio::spawn(appproxy_common::shutdown::every(
        Duration::from_secs(2),
        appproxy_common::shutdown::First::AfterInterval,
        shutdown.clone(),
        move || {
            let h = watched.clone();
            async move {
                let _ = tokio::task::spawn_blocking(move || h.reload()).await;
            }
        },
    ));
    Ok(Some(Arc::new(plugin::Runner::new(
        host,
        config.plugins.workers,
        config.plugins.queue,
        metrics.plugin_seconds.clone(),
    ))))
}

/// The access-log receiver on its own listener, until shutdown.
fn serve_ingest(
    listener: tokio::net::TcpListener,
    gate: Arc<http::Gate>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "Access-log receiver listening");
    tokio::spawn(async move {
        let _ = axum::serve(listener, http::ingest_app(gate))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await;
    })
}
