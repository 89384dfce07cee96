//! Prometheus metrics of authgate (prefix `appproxy_authgate_`), and the Backend.AI worker's
//! names beside them (`backendai_api_request_*`, `appproxy_alive_circuits`,
//! `appproxy_circuits_created`).

use appproxy_common::metrics::{histogram, register as reg, registry};
use prometheus::{Histogram, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// ForwardAuth decisions by result (`allow`/`deny`) and reason.
    pub decisions: IntCounterVec,
    /// Setup requests by result.
    pub setups: IntCounterVec,
    /// 1 while the revocation subscription is up.
    pub revocations_connected: IntGauge,
    /// Entries in the revocation set.
    pub revocations: IntGauge,
    /// 1 while registered with the provider.
    pub registered: IntGauge,
    /// Access-log records by result (`applied`/`rejected`) and rejection reason.
    pub ingest_records: IntCounterVec,
    /// OTLP export requests by result (`ok`/`undecodable`).
    pub ingest_exports: IntCounterVec,
    /// How old an applied access-log record was when it arrived.
    pub ingest_lag: Histogram,
    /// When activity was last written to Redis (epoch seconds; set at each scrape).
    pub activity_flushed: IntGauge,
    /// Plugin calls by plugin and outcome (allow, deny, timeout, trap, bad_answer, busy, …).
    pub plugin_calls: IntCounterVec,
    /// Time spent inside plugins (instantiate + call).
    pub plugin_seconds: Histogram,
    /// Sockets of ended circuits destroyed (`ok`), or cuts that failed or were impossible.
    pub connections_cut: IntCounterVec,
    /// "This app was closed" pages served.
    pub closed_pages: prometheus::IntCounter,
    pub rate_limit_unavailable: IntCounterVec,
    /// Requests per route, ours and Backend.AI's (`backendai_api_request_*`).
    pub routes: appproxy_common::metrics::RouteMetrics,
    /// Backend.AI's worker metrics: circuits of this worker by protocol.
    pub bai_alive_circuits: IntGaugeVec,
    pub bai_circuits_created: IntCounterVec,
    /// Backend.AI's process metrics (CPU, memory, tasks), read at each scrape.
    system: appproxy_common::metrics::SystemMetrics,
    /// Backend.AI's metric names, unprefixed.
    backendai: prometheus::Registry,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = registry("appproxy_authgate");
        let backendai = prometheus::Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("metric"),
            )
        };
        let gauge = |name: &str, help: &str| reg(&r, IntGauge::new(name, help).expect("metric"));
        let m = Metrics {
            decisions: counters(
                "decisions_total",
                "ForwardAuth decisions.",
                &["result", "reason"],
            ),
            setups: counters("setups_total", "Setup requests by result.", &["result"]),
            rate_limit_unavailable: counters(
                "rate_limit_unavailable_total",
                "Requests whose rate limit Redis could not count, by scope (endpoint: let through; setup-addr: refused).",
                &["scope"],
            ),
            revocations_connected: gauge(
                "revocations_connected",
                "1 while the revocation subscription is up.",
            ),
            revocations: gauge("revocations", "Entries in the revocation set."),
            registered: gauge("registered", "1 while registered with the provider."),
            ingest_records: counters(
                "ingest_records_total",
                "Access-log records: received = applied + rejected.",
                &["result", "reason"],
            ),
            plugin_calls: counters(
                "plugin_calls_total",
                "WebAssembly plugin calls by outcome; anything but allow denies.",
                &["plugin", "result"],
            ),
            plugin_seconds: histogram(&r, "plugin_seconds", "Time inside WebAssembly plugins (fresh instance + call).", &[1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1]),
            closed_pages: reg(
                &r,
                prometheus::IntCounter::new(
                    "closed_pages_total",
                    "Requests to addresses no circuit serves (the closed-app page).",
                )
                .expect("metric"),
            ),
            connections_cut: counters(
                "connections_cut_total",
                "Sockets of ended circuits destroyed (ok), or cuts failed / unsupported.",
                &["result"],
            ),
            ingest_exports: counters(
                "ingest_exports_total",
                "OTLP log export requests.",
                &["result"],
            ),
            ingest_lag: histogram(&r, "ingest_lag_seconds", "Age of an applied access-log record when it arrived (the request's end to its export).", &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
            activity_flushed: gauge(
                "activity_flushed_timestamp_seconds",
                "When activity was last written to Redis (epoch seconds; 0: never).",
            ),
            routes: appproxy_common::metrics::RouteMetrics::new(&r, &backendai),
            system: appproxy_common::metrics::SystemMetrics::new(&backendai),
            bai_alive_circuits: reg(
                &backendai,
                IntGaugeVec::new(
                    Opts::new("appproxy_alive_circuits", "Circuits on this worker, by protocol."),
                    &["protocol"],
                )
                .expect("metric"),
            ),
            bai_circuits_created: reg(
                &backendai,
                IntCounterVec::new(
                    Opts::new(
                        "appproxy_circuits_created",
                        "Circuits that appeared on this worker since authgate started, by protocol.",
                    ),
                    &["protocol"],
                )
                .expect("metric"),
            ),
            backendai,
            registry: r.clone(),
        };
        m.exported_at_zero();
        m
    }

    /// Series that alerts and dashboards divide or compare, exported at 0 from the start (a
    /// missing series reads as "no data", not "none").
    fn exported_at_zero(&self) {
        self.decisions.with_label_values(&["allow", "credential"]);
        self.decisions.with_label_values(&["deny", "no_cookie"]);
        for result in ["ok", "undecodable"] {
            self.ingest_exports.with_label_values(&[result]);
        }
        self.ingest_records.with_label_values(&["applied", ""]);
        self.setups.with_label_values(&["ok"]);
        self.connections_cut.with_label_values(&["ok"]);
    }

    pub fn render(&self) -> String {
        self.system.observe();
        appproxy_common::metrics::render_all(&[&self.registry, &self.backendai])
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
