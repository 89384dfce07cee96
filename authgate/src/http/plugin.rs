//! The plugin stage of ForwardAuth: after the built-in checks allowed a request (or instead of
//! them on a public circuit), the circuit's WebAssembly plugin decides; any failure denies.

use axum::http::HeaderMap;

use super::Gate;
use crate::{
    decision::Target,
    error::GateError,
    plugin::{RunError, Verdict, abi},
};

/// Run plugin `name` for this request: `Ok(headers to add)` to let it through, or the
/// refusal.
pub(super) async fn run(
    g: &Gate,
    name: &str,
    t: Target,
    headers: &HeaderMap,
    user: &str,
) -> Result<Vec<(String, String)>, GateError> {
    let count = |label: &str| {
        g.metrics
            .plugin_calls
            .with_label_values(&[name, label])
            .inc()
    };
    let deny =
        |status: u16, msg: &str| Err(GateError::new(status, "E20012", msg).for_client(headers));
    let Some(runner) = &g.plugins else {
        count("no_host");
        return deny(503, "Auth plugins are not enabled on this worker.");
    };
    // The address names the plugin; its config comes from the circuit map. A map that does not
    // (yet) agree with the address is the same case as no map entry.
    let config = match g.activity.plugin_of(t.circuit) {
        Some((configured, config)) if configured == name => config,
        _ => {
            count("no_config");
            return deny(503, "Auth plugin configuration not loaded yet; retry.");
        }
    };
    let now = crate::activity::now_ms() / 1000;
    let input = abi::Request::from_forwarded(headers, t, user, now, &config).to_lines();
    match runner.run(name.to_string(), input).await {
        Ok(Verdict::Allow { headers }) => {
            count("allow");
            Ok(headers)
        }
        Ok(Verdict::Deny { status, body }) => {
            count("deny");
            deny(
                status,
                if body.is_empty() {
                    "Denied by policy."
                } else {
                    &body
                },
            )
        }
        Err(RunError::Busy) => {
            count("busy");
            deny(503, "Auth plugin overloaded; retry.")
        }
        Err(RunError::Call(e)) => {
            tracing::warn!(plugin = name, error = %e, "Auth plugin failed; denying");
            count(e.label());
            deny(503, "Auth plugin failed; request denied.")
        }
    }
}
