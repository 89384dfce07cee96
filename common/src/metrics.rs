//! The Prometheus plumbing both binaries share: a prefixed registry, registering collectors,
//! and the text exposition `/metrics` serves. Each binary declares its own metrics.

use prometheus::{Encoder, Registry, TextEncoder, core::Collector};

/// A registry whose metric names all start with `<prefix>_`.
pub fn registry(prefix: &str) -> Registry {
    Registry::new_custom(Some(prefix.into()), None).expect("valid metric prefix")
}

/// Register `c` with `r` and hand it back (a duplicate name is a programming error).
pub fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// Prometheus text exposition of everything in `r`.
pub fn render(r: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&r.gather(), &mut buf)
        .expect("encode metrics");
    String::from_utf8(buf).unwrap_or_default()
}

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
}
