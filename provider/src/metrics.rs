//! Every metric the provider exports, declared in one place with a `appproxy_provider_` prefix.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Cheap-to-clone handles (prometheus metrics are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub reconcile_passes: IntCounterVec,
    pub reconcile_seconds: Histogram,
    pub reconcile_kind: IntCounterVec,
    pub reconcile_image_bytes: IntGauge,
    pub etcd_txns: IntCounter,
    pub etcd_ops: IntCounter,
    pub foreign_changes: IntCounter,
    pub http_requests: IntCounterVec,
    pub circuits_created: IntCounter,
    pub circuits_deleted: IntCounter,
    pub revocations: IntCounter,
    pub circuits_reclaimed: IntCounter,
    pub workers: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("appproxy_provider".into()), None)
            .expect("valid registry prefix");
        let m = Metrics {
            reconcile_passes: IntCounterVec::new(
                Opts::new("reconcile_passes_total", "Reconcile passes by outcome."),
                &["outcome"],
            )
            .expect("metric"),
            reconcile_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "reconcile_seconds",
                    "Duration of successful reconcile passes.",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )
            .expect("metric"),
            reconcile_kind: IntCounterVec::new(
                Opts::new(
                    "reconcile_workers_total",
                    "Worker reconciliations by kind (full, incremental).",
                ),
                &["kind"],
            )
            .expect("metric"),
            reconcile_image_bytes: IntGauge::new(
                "reconcile_image_bytes",
                "Approximate heap bytes of the reconciler's images of etcd.",
            )
            .expect("metric"),
            etcd_txns: IntCounter::new("etcd_txns_total", "etcd transactions applied.")
                .expect("metric"),
            etcd_ops: IntCounter::new("etcd_ops_total", "etcd operations applied.")
                .expect("metric"),
            foreign_changes: IntCounter::new(
                "foreign_changes_total",
                "Changes under a worker prefix that the provider did not write.",
            )
            .expect("metric"),
            http_requests: IntCounterVec::new(
                Opts::new("http_requests_total", "API requests by status class."),
                &["class"],
            )
            .expect("metric"),
            circuits_created: IntCounter::new("circuits_created_total", "Circuits created.")
                .expect("metric"),
            circuits_deleted: IntCounter::new("circuits_deleted_total", "Circuits deleted.")
                .expect("metric"),
            revocations: IntCounter::new("revocations_total", "Subjects revoked.").expect("metric"),
            circuits_reclaimed: IntCounter::new(
                "circuits_reclaimed_total",
                "Interactive circuits removed by the idle reaper.",
            )
            .expect("metric"),
            workers: IntGauge::new("workers", "Registered workers.").expect("metric"),
            registry,
        };
        for c in [
            Box::new(m.reconcile_passes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.reconcile_seconds.clone()),
            Box::new(m.reconcile_kind.clone()),
            Box::new(m.reconcile_image_bytes.clone()),
            Box::new(m.etcd_txns.clone()),
            Box::new(m.etcd_ops.clone()),
            Box::new(m.foreign_changes.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.circuits_created.clone()),
            Box::new(m.circuits_deleted.clone()),
            Box::new(m.revocations.clone()),
            Box::new(m.circuits_reclaimed.clone()),
            Box::new(m.workers.clone()),
        ] {
            m.registry.register(c).expect("unique metric");
        }
        m
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
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encode metrics");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
