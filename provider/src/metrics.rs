//! Every metric the provider exports, declared in one place with a `appproxy_provider_` prefix,
//! and Backend.AI's `backendai_api_request_*` beside them (`RouteMetrics`).

use appproxy_common::metrics::{RouteMetrics, histogram, register, registry, render_all};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Cheap-to-clone handles (prometheus metrics are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Backend.AI's metric names, unprefixed.
    backendai: Registry,
    /// Requests per route, ours and Backend.AI's (`backendai_api_request_*`).
    pub routes: RouteMetrics,
    /// Backend.AI's process metrics (CPU, memory, tasks), read at each scrape.
    system: appproxy_common::metrics::SystemMetrics,
    pub reconcile_passes: IntCounterVec,
    pub reconcile_seconds: Histogram,
    pub reconcile_kind: IntCounterVec,
    pub reconcile_image_bytes: IntGauge,
    pub etcd_txns: IntCounter,
    /// etcd transactions that failed (not the fenced ones).
    pub etcd_txn_errors: IntCounter,
    /// A circuit's change in SQL to its keys in etcd (incremental passes).
    pub publish_seconds: Histogram,
    /// Workers by status (set at each liveness sweep of the leader).
    pub workers_by_status: prometheus::IntGaugeVec,
    pub etcd_ops: IntCounter,
    pub foreign_changes: IntCounter,
    pub reconcile_held: IntCounter,
    pub http_requests: IntCounterVec,
    pub circuits_created: IntCounter,
    pub circuits_deleted: IntCounter,
    pub revocations: IntCounter,
    pub circuits_reclaimed: IntCounter,
    pub workers: IntGauge,
    pub workers_lost: IntCounter,
    pub circuits_moved: IntCounter,
    pub bai_events: IntCounterVec,
    pub bai_events_connected: IntGauge,
    pub etcd_fenced: IntCounter,
    pub leader: IntGauge,
    pub leader_terms: IntCounter,
    pub etcd_quorum: IntGauge,
    pub nudges_sent: IntCounter,
    pub nudges_received: IntCounter,
    pub rate_limited: IntCounterVec,
    pub rate_limit_unavailable: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = registry("appproxy_provider");
        let backendai = Registry::new();
        let counter =
            |name: &str, help: &str| register(&r, IntCounter::new(name, help).expect("metric"));
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("metric"),
            )
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("metric"));
        let reconcile_passes = counters(
            "reconcile_passes_total",
            "Reconcile passes by outcome.",
            &["outcome"],
        );
        // Exported at 0 from the start (a follower may never pass; a missing series reads
        // as "no data", not "none").
        for outcome in ["ok", "error"] {
            reconcile_passes.with_label_values(&[outcome]);
        }
        let bai_events = counters(
            "bai_events_total",
            "Backend.AI session events by result (applied, ended_none, ignored, junk, failed).",
            &["result"],
        );
        for result in ["applied", "ended_none", "ignored", "junk", "failed"] {
            bai_events.with_label_values(&[result]);
        }
        Metrics {
            reconcile_passes,
            reconcile_seconds: histogram(
                &r,
                "reconcile_seconds",
                "Duration of successful reconcile passes.",
                &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
            ),
            reconcile_kind: counters(
                "reconcile_workers_total",
                "Worker reconciliations by kind (full, incremental).",
                &["kind"],
            ),
            reconcile_image_bytes: gauge(
                "reconcile_image_bytes",
                "Approximate heap bytes of the reconciler's images of etcd.",
            ),
            etcd_txns: counter("etcd_txns_total", "etcd transactions applied."),
            etcd_ops: counter("etcd_ops_total", "etcd operations applied."),
            etcd_txn_errors: counter(
                "etcd_txn_errors_total",
                "etcd transactions that failed (fenced ones are etcd_fenced_total).",
            ),
            publish_seconds: histogram(
                &r,
                "publish_seconds",
                "From a circuit's change in SQL (create, routes, generation) to its keys in etcd.",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            workers_by_status: {
                let g = register(
                    &r,
                    prometheus::IntGaugeVec::new(
                        Opts::new(
                            "workers_by_status",
                            "Workers by status (the leader's view).",
                        ),
                        &["status"],
                    )
                    .expect("metric"),
                );
                for s in ["ALIVE", "LOST", "TERMINATED"] {
                    g.with_label_values(&[s]);
                }
                g
            },
            reconcile_held: counter(
                "reconcile_held_total",
                "Times the reconciler held a worker's changes for a later pass: its Traefik was still taking in the last transactions.",
            ),
            foreign_changes: counter(
                "foreign_changes_total",
                "Changes under a worker prefix that the provider did not write.",
            ),
            http_requests: counters(
                "http_requests_total",
                "API requests by status class.",
                &["class"],
            ),
            circuits_created: counter("circuits_created_total", "Circuits created."),
            circuits_deleted: counter("circuits_deleted_total", "Circuits deleted."),
            revocations: counter("revocations_total", "Subjects revoked."),
            circuits_reclaimed: counter(
                "circuits_reclaimed_total",
                "Interactive circuits removed by the idle reaper.",
            ),
            workers: gauge("workers", "Registered workers."),
            workers_lost: counter(
                "workers_lost_total",
                "Workers marked LOST after their heartbeat stopped.",
            ),
            bai_events,
            bai_events_connected: gauge(
                "bai_events_connected",
                "1 while subscribed to Backend.AI's event bus.",
            ),
            circuits_moved: counter(
                "circuits_moved_total",
                "Inference circuits moved off a lost worker to one that keeps their URL.",
            ),
            etcd_fenced: counter(
                "etcd_fenced_total",
                "etcd transactions refused because this process no longer held the leader key.",
            ),
            leader: gauge("leader", "1 while this provider is the leader."),
            leader_terms: counter("leader_terms_total", "Terms this provider has led."),
            etcd_quorum: gauge(
                "etcd_quorum",
                "1 while etcd answers reads that need a quorum (creates are refused otherwise).",
            ),
            nudges_sent: counter(
                "nudges_sent_total",
                "Reconcile requests sent to the other providers (PostgreSQL NOTIFY).",
            ),
            nudges_received: counter(
                "nudges_received_total",
                "Reconcile requests received from the other providers.",
            ),
            rate_limited: counters(
                "rate_limited_total",
                "API requests refused with 429 by scope (launch-addr, api-token, api-addr).",
                &["scope"],
            ),
            rate_limit_unavailable: counters(
                "rate_limit_unavailable_total",
                "API requests let through unchecked because Redis did not answer, by scope.",
                &["scope"],
            ),
            routes: RouteMetrics::new(&r, &backendai),
            system: appproxy_common::metrics::SystemMetrics::new(&backendai),
            backendai,
            registry: r.clone(),
        }
    }

    /// Export the store's query timing (`db_seconds`, `db_errors_total`) with the rest.
    pub fn register_db(&self, db: &crate::store::DbMetrics) {
        for c in [
            Box::new(db.seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(db.errors.clone()),
        ] {
            // Registering the same store twice is a no-op, not a failure.
            let _ = self.registry.register(c);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.system.observe();
        render_all(&[&self.registry, &self.backendai])
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
