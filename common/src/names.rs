//! Names of everything appproxy writes for Traefik.
//!
//! Traefik keys are case-insensitive and object names may not contain `@` or `/`, so every
//! name we derive is lowercase `[a-z0-9-]`. Worker root keys are *prefix-free*: Traefik lists
//! and watches its `rootKey` as a raw string prefix, so the root key of worker `a` must not be
//! a string prefix of the root key of worker `ab`, or every write for `ab` would make `a`'s
//! Traefik re-decode its whole tree (and see foreign keys).

use uuid::Uuid;

/// Shared per-worker object that keeps the worker prefix non-empty (traefik#8092).
pub const SENTINEL: &str = "ap-sentinel";
/// Shared per-worker router/service that sends `/_appproxy/*` to the worker's authgate.
pub const SETUP: &str = "ap-setup";
/// Shared per-worker middleware: retry a request whose replica could not be reached.
pub const RETRY: &str = "ap-retry";
/// The lowest-priority router (and its path middleware) of a worker: whatever no circuit
/// serves goes to authgate's "this app was closed" page.
pub const CLOSED: &str = "ap-closed";
/// authgate's page for addresses no circuit serves (any more).
pub const CLOSED_PATH: &str = "/_appproxy/closed";
/// Path prefix served by authgate on every app origin.
pub use appproxy_gatecore::names::SETUP_PATH_PREFIX;
/// Entrypoint that carries every subdomain-mode (and path-mode) app of a worker.
pub const APPS_ENTRYPOINT: &str = "apps";

/// Router and service name of a circuit.
pub fn circuit_object(id: Uuid) -> String {
    format!("ap-{}", id.as_hyphenated())
}

/// ForwardAuth middleware of a circuit.
pub fn auth_middleware(id: Uuid) -> String {
    format!("ap-{}-auth", id.as_hyphenated())
}

/// IP allowlist middleware of a circuit.
pub fn ipallow_middleware(id: Uuid) -> String {
    format!("ap-{}-ipallow", id.as_hyphenated())
}

/// The twin router of a circuit behind ForwardAuth that takes its WebSocket upgrades and keeps
/// the access log (the record of a closed socket ends its activity); the circuit's own router
/// writes none (authgate counts its requests at ForwardAuth). On a fast-path worker the twin
/// is how upgrades still reach ForwardAuth (an open socket is activity, and a revoked login
/// session's sockets are cut).
pub fn websocket_router(id: Uuid) -> String {
    format!("ap-{}-ws", id.as_hyphenated())
}

/// The fast-path middleware of a cookie circuit on a fast-path worker (the plugin decides
/// inside Traefik instead of ForwardAuth).
pub fn fast_path_middleware(id: Uuid) -> String {
    format!("ap-{}-fast", id.as_hyphenated())
}

/// Name of the fast-path plugin in Traefik's static config (`experimental.localPlugins`) and
/// in a middleware's `plugin/<name>/…` keys.
pub const FAST_PATH_PLUGIN: &str = "appproxy-fastpath";
/// Its module name: the plugin lives in `plugins-local/src/<module>/` under Traefik's working
/// directory.
pub const FAST_PATH_MODULE: &str = "appproxy/fastpath";

/// Path mode: the middleware that strips a circuit's prefix before its app.
pub fn strip_middleware(id: Uuid) -> String {
    format!("ap-{}-strip", id.as_hyphenated())
}

/// Path mode: what the shared setup router matches (`/<id>/<app>/_appproxy/…`) and strips
/// (`/<id>/<app>`, which Traefik hands on in `X-Forwarded-Prefix`).
pub const PATH_SETUP_RULE: &str = "PathRegexp(`^/[^/]+/[^/]+/_appproxy/`)";
pub const PATH_PREFIX_REGEX: &str = "^/[^/]+/[^/]+";

/// Entrypoint name for a port of a port-mode worker.
pub fn port_entrypoint(port: u16) -> String {
    format!("port_{port}")
}

/// Circuit id an object name belongs to (`ap-<uuid>` or `ap-<uuid>-<suffix>`), if any.
pub fn circuit_of_object(name: &str) -> Option<Uuid> {
    let rest = name.strip_prefix("ap-")?;
    let id = rest.get(..36)?;
    let tail = &rest[36..];
    if !(tail.is_empty() || tail.starts_with('-')) {
        return None;
    }
    Uuid::parse_str(id).ok()
}

/// Escape an authority so the result is `[a-z0-9-]` plus `_xx` escapes and never contains `.`.
fn escape_authority(authority: &str) -> String {
    let mut out = String::with_capacity(authority.len());
    for b in authority.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("_{b:02x}")),
        }
    }
    out
}

/// Traefik `rootKey` of a worker: `<namespace>/worker_<escaped authority>.`
///
/// The trailing `.` never occurs inside the escaped authority, which makes the set of root
/// keys prefix-free: two different authorities never yield keys where one is a string prefix
/// of the other.
pub fn worker_root_key(namespace: &str, authority: &str) -> String {
    format!(
        "{}/worker_{}.",
        namespace.trim_end_matches('/'),
        escape_authority(authority)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keys_are_prefix_free() {
        let authorities = [
            "a",
            "ab",
            "a.b",
            "a_b",
            "A",
            "a-",
            "a-b",
            "worker-1",
            "worker-10",
            "w/x",
            "",
        ];
        for x in authorities {
            for y in authorities {
                if x == y {
                    continue;
                }
                let (kx, ky) = (worker_root_key("traefik", x), worker_root_key("traefik", y));
                assert!(!ky.starts_with(&kx), "{kx} is a prefix of {ky}");
            }
        }
        assert_eq!(
            worker_root_key("traefik", "worker-1"),
            "traefik/worker_worker-1."
        );
        assert_eq!(worker_root_key("ns/", "W.1"), "ns/worker__57_2e1.");
    }

    #[test]
    fn object_names_round_trip() {
        let id = Uuid::new_v4();
        for name in [
            circuit_object(id),
            auth_middleware(id),
            ipallow_middleware(id),
        ] {
            assert_eq!(circuit_of_object(&name), Some(id));
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
        }
        assert_eq!(circuit_of_object(SENTINEL), None);
        assert_eq!(circuit_of_object(SETUP), None);
        assert_eq!(circuit_of_object(&format!("{}x", circuit_object(id))), None);
    }
}
