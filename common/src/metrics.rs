//! The Prometheus plumbing both binaries share: a prefixed registry, registering collectors,
//! the text exposition `/metrics` serves, who may read it (`MetricsAccess`), and the request
//! metrics per route both binaries export (`RouteMetrics`: ours, and Backend.AI's
//! `backendai_api_request_*` under Backend.AI's own names and labels, for dashboards built for
//! Backend.AI). Each binary declares its other metrics.

use std::net::IpAddr;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
    core::Collector,
};
use serde::Deserialize;

/// A registry whose metric names all start with `<prefix>_`.
pub fn registry(prefix: &str) -> Registry {
    Registry::new_custom(Some(prefix.into()), None).expect("valid metric prefix")
}

/// Register `c` with `r` and hand it back (a duplicate name is a programming error).
pub fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// A histogram with these bucket bounds, registered with `r`.
pub fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("metric"),
    )
}

/// Prometheus text exposition of everything in `r`.
pub fn render(r: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&r.gather(), &mut buf)
        .expect("encode metrics");
    String::from_utf8(buf).unwrap_or_default()
}

/// Prometheus text exposition of several registries (ours, then Backend.AI's names).
pub fn render_all(rs: &[&Registry]) -> String {
    rs.iter().map(|r| render(r)).collect()
}

/// Who may read `/metrics` (`[metrics]`): a peer in `allowed_networks` (default loopback, as
/// Backend.AI's `metric_access_allowed_hosts`), or any caller presenting
/// `Authorization: Bearer <token>` when a token is set. Never through a proxy's
/// `X-Forwarded-For`: the connecting address decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsAccess {
    pub allowed_networks: Vec<ipnet::IpNet>,
    pub token: Option<String>,
}

impl Default for MetricsAccess {
    fn default() -> Self {
        Self {
            allowed_networks: vec![
                "127.0.0.0/8".parse().expect("net"),
                "::1/128".parse().expect("net"),
            ],
            token: None,
        }
    }
}

impl MetricsAccess {
    /// Whether a request from `peer` (unknown: refused unless it has the token) may read.
    pub fn allows(&self, peer: Option<IpAddr>, headers: &axum::http::HeaderMap) -> bool {
        if let Some(p) = peer
            && self.allowed_networks.iter().any(|n| n.contains(&p))
        {
            return true;
        }
        let Some(token) = self.token.as_deref() else {
            return false;
        };
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        crate::auth::same_secret(presented.as_bytes(), token.as_bytes())
    }

    /// Configuration errors (`what`: the section's name).
    pub fn check(&self, what: &str, errs: &mut Vec<String>) {
        if self.token.as_ref().is_some_and(|t| t.len() < 16) {
            errs.push(format!("{what}.token must be at least 16 characters"));
        }
    }
}

/// Request metrics per matched route: ours (`<prefix>_http_request_seconds{route,method}`,
/// fine buckets for sub-millisecond answers) and Backend.AI's
/// (`backendai_api_request_count` / `backendai_api_request_duration_sec` with `method`,
/// `endpoint` (the route pattern, never the raw path), `domain`, `operation`, `error_detail`
/// (from an error's `domain_operation_detail` code, empty on success), `status_code`).
#[derive(Clone)]
pub struct RouteMetrics {
    seconds: HistogramVec,
    bai_count: IntCounterVec,
    bai_seconds: HistogramVec,
}

impl RouteMetrics {
    /// Ours into `ours` (prefixed), Backend.AI's into `backendai` (no prefix).
    pub fn new(ours: &Registry, backendai: &Registry) -> RouteMetrics {
        let labels = [
            "method",
            "endpoint",
            "domain",
            "operation",
            "error_detail",
            "status_code",
        ];
        RouteMetrics {
            seconds: register(
                ours,
                HistogramVec::new(
                    HistogramOpts::new("http_request_seconds", "Time to answer, by route.")
                        .buckets(vec![
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                            2.5, 5.0, 10.0,
                        ]),
                    &["route", "method"],
                )
                .expect("metric"),
            ),
            bai_count: register(
                backendai,
                IntCounterVec::new(
                    Opts::new(
                        "backendai_api_request_count",
                        "Total number of API requests",
                    ),
                    &labels,
                )
                .expect("metric"),
            ),
            bai_seconds: register(
                backendai,
                HistogramVec::new(
                    HistogramOpts::new(
                        "backendai_api_request_duration_sec",
                        "Duration of API requests in seconds",
                    )
                    .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
                    &labels,
                )
                .expect("metric"),
            ),
        }
    }

    /// One answered request: its matched route (`""` when none matched), method, status, the
    /// error code it carried (if any) and how long it took.
    pub fn observe(
        &self,
        route: &str,
        method: &str,
        status: u16,
        error_code: Option<&str>,
        secs: f64,
    ) {
        let method = known_method(method);
        self.seconds
            .with_label_values(&[route, method])
            .observe(secs);
        let (domain, operation, detail) = split_error_code(error_code.unwrap_or(""));
        let status = status.to_string();
        let labels = [method, route, domain, operation, detail, status.as_str()];
        self.bai_count.with_label_values(&labels).inc();
        self.bai_seconds.with_label_values(&labels).observe(secs);
    }
}

/// The method as a label: the standard ones, anything else `OTHER` (a client may send any
/// token as a method, and each would otherwise become series of its own: a memory leak anyone
/// can drive).
fn known_method(method: &str) -> &str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("OTHER")
}

/// Backend.AI's `domain_operation_detail` error code as its three labels; another code is
/// all detail.
pub fn split_error_code(code: &str) -> (&str, &str, &str) {
    let mut parts = code.splitn(3, '_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(d), Some(o), Some(e)) => (d, o, e),
        _ => ("", "", code),
    }
}

/// Backend.AI's process metrics (`SystemMetricObserver`), observed at each scrape:
/// `backendai_cpu_usage_percent` (of one core, since the last scrape), `backendai_memory_used_rss`
/// and `backendai_memory_used_vms` (bytes), `backendai_async_task_count` (live tokio tasks of
/// the runtime that renders).
#[derive(Clone)]
pub struct SystemMetrics {
    cpu: prometheus::Gauge,
    rss: prometheus::IntGauge,
    vms: prometheus::IntGauge,
    tasks: prometheus::IntGauge,
    last: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, f64)>>>,
}

impl SystemMetrics {
    pub fn new(backendai: &Registry) -> SystemMetrics {
        let int = |name: &str, help: &str| {
            register(
                backendai,
                prometheus::IntGauge::new(name, help).expect("metric"),
            )
        };
        SystemMetrics {
            cpu: register(
                backendai,
                prometheus::Gauge::new("backendai_cpu_usage_percent", "CPU usage of the process")
                    .expect("metric"),
            ),
            rss: int(
                "backendai_memory_used_rss",
                "Memory used by the process in RSS",
            ),
            vms: int(
                "backendai_memory_used_vms",
                "Memory used by the process in VMS",
            ),
            tasks: int("backendai_async_task_count", "Number of active async tasks"),
            last: Default::default(),
        }
    }

    /// Read the process's figures from `/proc/self` (Linux; elsewhere they stay 0).
    pub fn observe(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kib = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
                    .map_or(0, |k| k * 1024)
            };
            self.rss.set(kib("VmRSS:"));
            self.vms.set(kib("VmSize:"));
        }
        if let Some(cpu) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(cpu_seconds)
        {
            let now = std::time::Instant::now();
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, before)) = *last {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    self.cpu.set(((cpu - before) / wall * 100.0).max(0.0));
                }
            }
            *last = Some((now, cpu));
        }
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            self.tasks.set(h.metrics().num_alive_tasks() as i64);
        }
    }
}

/// User + system CPU seconds from `/proc/self/stat` (fields 14 and 15, in `USER_HZ` = 100
/// ticks per second, Linux's fixed user-space unit).
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces; fields after its `)` are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / 100.0)
}

/// The error code an error response carries, for `RouteMetrics` (set by the error mapping,
/// read by the request middleware).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_render_with_the_prefix() {
        let r = registry("appproxy_test");
        let c = register(
            &r,
            prometheus::IntCounter::new("hits_total", "Hits.").unwrap(),
        );
        c.inc();
        let text = render(&r);
        assert!(text.contains("appproxy_test_hits_total 1"), "{text}");
    }

    #[test]
    fn route_metrics_carry_backendais_names_and_labels() {
        let (ours, bai) = (registry("appproxy_test"), Registry::new());
        let m = RouteMetrics::new(&ours, &bai);
        m.observe(
            "/v2/proxy/{token}/{session_id}/add",
            "GET",
            200,
            None,
            0.002,
        );
        m.observe(
            "/v2/circuits",
            "POST",
            401,
            Some("api_access_unauthorized"),
            0.0004,
        );
        let text = render_all(&[&ours, &bai]);
        assert!(text.contains(
            "appproxy_test_http_request_seconds_count{method=\"GET\",route=\"/v2/proxy/{token}/{session_id}/add\"} 1"
        ), "{text}");
        assert!(text.contains(
            "backendai_api_request_count{domain=\"api\",endpoint=\"/v2/circuits\",error_detail=\"unauthorized\",method=\"POST\",operation=\"access\",status_code=\"401\"} 1"
        ), "{text}");
        assert!(text.contains("backendai_api_request_duration_sec_bucket{domain=\"\",endpoint=\"/v2/proxy/{token}/{session_id}/add\""), "{text}");
        assert_eq!(
            split_error_code("api_parsing_invalid-parameters"),
            ("api", "parsing", "invalid-parameters")
        );
        assert_eq!(split_error_code("E20008"), ("", "", "E20008"));
        // Methods a client invents share one label.
        m.observe("/v2/circuits", "FOO1", 405, None, 0.001);
        m.observe("/v2/circuits", "FOO2", 405, None, 0.001);
        let text = render_all(&[&ours, &bai]);
        assert!(!text.contains("FOO"), "{text}");
        assert!(text.contains("method=\"OTHER\""), "{text}");
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let stat = "1234 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
        let r = Registry::new();
        let m = SystemMetrics::new(&r);
        m.observe();
        m.observe();
        let text = render(&r);
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1.0)
        };
        assert!(value("backendai_memory_used_rss") > 0.0, "{text}");
        assert!(value("backendai_memory_used_vms") >= value("backendai_memory_used_rss"));
        assert!(value("backendai_cpu_usage_percent") >= 0.0, "{text}");
    }

    #[test]
    fn metrics_are_readable_from_allowed_networks_or_with_the_token() {
        let mut a = MetricsAccess::default();
        let none = axum::http::HeaderMap::new();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(a.allows(ip("127.0.0.1"), &none));
        assert!(a.allows(ip("::1"), &none));
        assert!(!a.allows(ip("192.0.2.1"), &none));
        assert!(!a.allows(None, &none));
        a.token = Some("metrics-token-0123456789".into());
        let mut bearer = axum::http::HeaderMap::new();
        bearer.insert(
            "authorization",
            "Bearer metrics-token-0123456789".parse().unwrap(),
        );
        assert!(a.allows(ip("192.0.2.1"), &bearer));
        bearer.insert(
            "authorization",
            "Bearer metrics-token-012345678".parse().unwrap(),
        );
        assert!(!a.allows(ip("192.0.2.1"), &bearer));
        let mut errs = Vec::new();
        a.token = Some("short".into());
        a.check("metrics", &mut errs);
        assert_eq!(errs, ["metrics.token must be at least 16 characters"]);
    }
}
