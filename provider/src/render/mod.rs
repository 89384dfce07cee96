//! Pure rendering: a worker and its circuits → the Traefik KV pairs under the worker's
//! root key. No I/O; snapshot-tested.
//!
//! Keys are relative to the root key (`http/routers/ap-<id>/rule`). Every key belongs to one
//! *group*: a circuit (all objects named `ap-<id>…`) or the worker's shared objects
//! (sentinel, setup router). The reconciler writes one group per transaction, so Traefik never
//! sees a router without its service or its auth middleware.
//!
//! We write few keys per circuit (Traefik's decode cost grows faster than linearly with keys):
//! no value that equals Traefik's default is written except `trustForwardHeader=false`, whose
//! explicit form changes which headers Traefik forwards.

pub use crate::domain::host_port;
use std::collections::BTreeMap;

/// Request headers Traefik replaces with authgate's answer on circuits with a plugin: the
/// plugin's `X-Plugin-*` and every look-alike spelling (Go canonicalises `X_Plugin_A` to
/// `X_plugin_a`, so the match ignores case).
pub const PLUGIN_HEADERS_REGEX: &str = "(?i)^x[-_]plugin[-_]";

use appproxy_common::names;
use appproxy_gatecore::decision::{Mode, app_headers};
use uuid::Uuid;

use crate::domain::{AppMode, Circuit, Frontend, FrontendMode, LoadBalancing, Protocol, Worker};

/// Keys of one group, relative to the worker root key.
pub type Kv = BTreeMap<String, String>;

/// Owner of a key: a circuit, or the worker's shared objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    Shared,
    Circuit(Uuid),
}

/// Priority of the shared `/_appproxy/` router: above every circuit rule.
pub const SETUP_PRIORITY: u32 = 1_000_000;

/// Which group a relative key belongs to: `<proto>/<kind>/<name>/…`.
pub fn group_of(rel_key: &str) -> Option<Group> {
    let mut parts = rel_key.split('/');
    let (_proto, _kind, name) = (parts.next()?, parts.next()?, parts.next()?);
    match names::circuit_of_object(name) {
        Some(id) => Some(Group::Circuit(id)),
        None if [names::SENTINEL, names::SETUP, names::RETRY, names::CLOSED].contains(&name) => {
            Some(Group::Shared)
        }
        None => None,
    }
}

/// Entry points of a worker where HTTP apps live.
pub fn app_entrypoints(worker: &Worker) -> Vec<String> {
    match (worker.frontend_mode, worker.port_range) {
        (FrontendMode::Port, Some((lo, hi))) => (lo..=hi).map(names::port_entrypoint).collect(),
        (FrontendMode::Port, None) => Vec::new(),
        (FrontendMode::Wildcard | FrontendMode::Path, _) => {
            vec![names::APPS_ENTRYPOINT.to_string()]
        }
    }
}

/// The worker's shared objects: a sentinel that keeps the prefix non-empty, and for HTTP
/// workers one `/_appproxy/` router on every app entrypoint that reaches authgate.
pub fn render_shared(worker: &Worker) -> Kv {
    let mut kv = Kv::new();
    kv.insert(
        format!(
            "http/services/{}/loadBalancer/servers/0/url",
            names::SENTINEL
        ),
        "http://127.0.0.1:9".into(),
    );
    if worker.protocol.is_http() {
        let eps = app_entrypoints(worker);
        if !eps.is_empty() {
            let r = format!("http/routers/{}", names::SETUP);
            if worker.frontend_mode == FrontendMode::Path {
                // `/<id>/<app>/_appproxy/…`: authgate gets `/_appproxy/…` and the prefix in
                // `X-Forwarded-Prefix` (set by Traefik, never the client's).
                kv.insert(format!("{r}/rule"), names::PATH_SETUP_RULE.into());
                kv.insert(format!("{r}/middlewares/0"), names::SETUP.into());
                kv.insert(
                    format!("http/middlewares/{}/stripPrefixRegex/regex/0", names::SETUP),
                    names::PATH_PREFIX_REGEX.into(),
                );
            } else {
                kv.insert(
                    format!("{r}/rule"),
                    format!("PathPrefix(`{}`)", names::SETUP_PATH_PREFIX),
                );
            }
            kv.insert(format!("{r}/priority"), SETUP_PRIORITY.to_string());
            kv.insert(format!("{r}/service"), names::SETUP.into());
            for (i, ep) in eps.iter().enumerate() {
                kv.insert(format!("{r}/entryPoints/{i}"), ep.clone());
            }
            // Routers without TLS never match TLS requests: setup must serve the same
            // origins as the circuits.
            render_tls(&mut kv, &r, worker, false);
            kv.insert(
                format!("http/services/{}/loadBalancer/servers/0/url", names::SETUP),
                worker.authgate_base(),
            );
            // A worker whose authgate registered it (it names itself) answers addresses no
            // circuit serves with authgate's "closed" page instead of Traefik's bare 404.
            if worker.authgate_url.is_some() {
                render_closed(&mut kv, worker, &eps);
            }
            // Inference routers retry (up to two more times, on whatever replica the balancer
            // picks next) when a replica cannot be reached; Traefik retries on transport
            // errors only, never after a response.
            if worker.accepted_traffics.contains(&AppMode::Inference) {
                kv.insert(
                    format!("http/middlewares/{}/retry/attempts", names::RETRY),
                    "3".into(),
                );
            }
        }
    }
    kv
}

/// A TLS router's `tls` keys. A router's own `tls` section replaces its entrypoint's, so the
/// certificate resolver goes on every router: with the worker's certificate names, or — on
/// a circuit router (`has_host`: its rule names its host) of a wildcard worker without names
/// — none, and Traefik asks for the router's `Host` (per-host certificates). Port mode's rules
/// name no host: its certificate is for the worker's hostname unless names are given.
fn render_tls(kv: &mut Kv, r: &str, worker: &Worker, has_host: bool) {
    if !worker.tls_listen {
        return;
    }
    kv.insert(format!("{r}/tls/options"), "default".into());
    let Some(resolver) = &worker.cert_resolver else {
        return;
    };
    let domains: Vec<&str> = match (&worker.cert_domains[..], worker.frontend_mode) {
        ([], FrontendMode::Port) => vec![worker.hostname.as_str()],
        ([], FrontendMode::Wildcard) => vec![],
        ([], FrontendMode::Path) => vec![worker.hostname.as_str()],
        (names, _) => names.iter().map(String::as_str).collect(),
    };
    if domains.is_empty() && !has_host {
        return;
    }
    kv.insert(format!("{r}/tls/certResolver"), resolver.clone());
    if let Some((main, sans)) = domains.split_first() {
        kv.insert(format!("{r}/tls/domains/0/main"), (*main).to_string());
        for (i, san) in sans.iter().enumerate() {
            kv.insert(format!("{r}/tls/domains/0/sans/{i}"), (*san).to_string());
        }
    }
}

/// The catch-all router (priority 1: every circuit's router wins) to authgate's closed page.
fn render_closed(kv: &mut Kv, worker: &Worker, eps: &[String]) {
    let r = format!("http/routers/{}", names::CLOSED);
    kv.insert(format!("{r}/rule"), "PathPrefix(`/`)".into());
    kv.insert(format!("{r}/priority"), "1".into());
    kv.insert(format!("{r}/service"), names::SETUP.into());
    kv.insert(format!("{r}/middlewares/0"), names::CLOSED.into());
    for (i, ep) in eps.iter().enumerate() {
        kv.insert(format!("{r}/entryPoints/{i}"), ep.clone());
    }
    render_tls(kv, &r, worker, false);
    kv.insert(
        format!("http/middlewares/{}/replacePath/path", names::CLOSED),
        names::CLOSED_PATH.into(),
    );
}

/// All keys of one circuit. A circuit without routes (an inference endpoint before its
/// replicas are registered) has none: its URL answers 404 until then.
pub fn render_circuit(worker: &Worker, c: &Circuit) -> Kv {
    if c.routes.is_empty() {
        Kv::new()
    } else if c.protocol.is_http() {
        render_http(worker, c)
    } else {
        render_tcp(c)
    }
}

/// Every group of a worker, desired state.
pub fn render_worker(worker: &Worker, circuits: &[Circuit]) -> BTreeMap<Group, Kv> {
    let mut out = BTreeMap::new();
    out.insert(Group::Shared, render_shared(worker));
    for c in circuits {
        out.insert(Group::Circuit(c.id), render_circuit(worker, c));
    }
    out
}

fn entrypoint(c: &Circuit) -> String {
    match &c.frontend {
        Frontend::Port(p) => names::port_entrypoint(*p),
        Frontend::Subdomain(_) | Frontend::Path(_) => names::APPS_ENTRYPOINT.to_string(),
    }
}

fn render_http(worker: &Worker, c: &Circuit) -> Kv {
    let mut kv = Kv::new();
    let name = names::circuit_object(c.id);
    let r = format!("http/routers/{name}");
    let rule = match &c.frontend {
        // The entrypoint already identifies the circuit; no Host() that could mismatch.
        Frontend::Port(_) => "PathPrefix(`/`)".to_string(),
        Frontend::Subdomain(s) => {
            format!(
                "Host(`{s}{}`)",
                worker.wildcard_domain.as_deref().unwrap_or("")
            )
        }
        // The prefix itself and everything under it, on any host (as port mode).
        Frontend::Path(p) => format!("Path(`{p}`) || PathPrefix(`{p}/`)"),
    };
    kv.insert(format!("{r}/rule"), rule);
    kv.insert(format!("{r}/service"), name.clone());
    kv.insert(format!("{r}/entryPoints/0"), entrypoint(c));
    let mut mws = Vec::new();
    if !c.allowed_client_ips.is_empty() {
        let m = names::ipallow_middleware(c.id);
        for (i, net) in c.allowed_client_ips.iter().enumerate() {
            kv.insert(
                format!("http/middlewares/{m}/ipAllowList/sourceRange/{i}"),
                net.to_string(),
            );
        }
        mws.push(m);
    }
    let forward_auth = !c.open_to_public || c.auth_plugin.is_some() || rate_limit(c).is_some();
    let on_plugin = on_fast_path(worker, c);
    // A private circuit decided by the plugin instead of ForwardAuth.
    let fast = forward_auth && on_plugin;
    // A public circuit with nothing to decide: the plugin only counts.
    let count_only = !forward_auth && on_plugin;
    // The auth middleware's place in the chain (ForwardAuth, or the fast path's plugin).
    let auth_at = mws.len();
    if forward_auth {
        let fa = render_forward_auth(&mut kv, worker, c);
        mws.push(if fast {
            render_fast_path(&mut kv, c)
        } else {
            fa
        });
    } else if count_only {
        mws.push(render_fast_path(&mut kv, c));
    }
    let inference = c.app_mode == AppMode::Inference;
    if inference && worker.accepted_traffics.contains(&AppMode::Inference) {
        mws.push(names::RETRY.to_string());
    }
    // Path mode: the app sees its own paths, unless it runs under its base URL.
    if let Some(p) = c.path_prefix()
        && !worker.path_keep_prefix_apps.contains(&c.app)
    {
        let m = names::strip_middleware(c.id);
        kv.insert(
            format!("http/middlewares/{m}/stripPrefix/prefixes/0"),
            p.into(),
        );
        mws.push(m);
    }
    for (i, m) in mws.iter().enumerate() {
        kv.insert(format!("{r}/middlewares/{i}"), m.clone());
    }
    render_tls(&mut kv, &r, worker, true);
    if forward_auth || count_only {
        let twin_auth = fast.then(|| (auth_at, names::auth_middleware(c.id)));
        websocket_twin(&mut kv, &r, c, twin_auth);
        // Counted at ForwardAuth, or by the fast path's plugin: no access-log record.
        kv.insert(format!("{r}/observability/accessLogs"), "false".into());
    }
    let s = format!("http/services/{name}/loadBalancer");
    render_servers(&mut kv, &s, c);
    if inference {
        render_balancing(&mut kv, &s, c, worker);
    }
    kv
}

/// A circuit behind ForwardAuth is counted there: authgate sees every request it lets through
/// (`c=1` in the address), so the circuit's router writes no access-log record (exporting one
/// per request halved Traefik's throughput, issue 19). Its WebSocket upgrades take a twin
/// router (same entry points, middlewares, service and TLS; a longer rule, so it wins) that
/// keeps the access log: the record of a closed socket is how authgate learns it ended. On the
/// fast path the twin has ForwardAuth at `auth`'s place instead of the plugin, so an upgrade
/// is still held open as activity and known by its login session. A public circuit's twin
/// keeps the counting plugin: the upgrade is counted there, the record marks the socket's end.
fn websocket_twin(kv: &mut Kv, r: &str, c: &Circuit, auth: Option<(usize, String)>) {
    if c.protocol != Protocol::Http {
        return;
    }
    let ws = format!("http/routers/{}", names::websocket_router(c.id));
    let own: Vec<(String, String)> = kv
        .range(format!("{r}/")..)
        .take_while(|(k, _)| k.starts_with(&format!("{r}/")))
        .map(|(k, v)| (k[r.len()..].to_string(), v.clone()))
        .collect();
    let auth_key = auth.as_ref().map(|(i, _)| format!("/middlewares/{i}"));
    for (suffix, v) in own {
        let v = match suffix.as_str() {
            "/rule" => format!("({v}) && HeaderRegexp(`Upgrade`, `(?i)^websocket$`)"),
            s if Some(s) == auth_key.as_deref() => auth.as_ref().map_or(v, |(_, m)| m.clone()),
            _ => v,
        };
        kv.insert(format!("{ws}{suffix}"), v);
    }
}

/// Whether a circuit takes the fast path's plugin: one with neither a plugin nor a rate limit,
/// on a fast-path worker, in its scope (inference circuits; interactive ones too when the
/// worker says so). Private ones are decided by it instead of ForwardAuth, public ones
/// counted. Traefik builds a plugin instance per router that uses it (`FastPathScope`).
fn on_fast_path(worker: &Worker, c: &Circuit) -> bool {
    let in_scope = c.app_mode == AppMode::Inference || worker.fast_path_interactive;
    worker.fast_path && in_scope && c.auth_plugin.is_none() && rate_limit(c).is_none()
}

/// The circuit's fast-path middleware (its ForwardAuth stays, for the WebSocket twin):
/// circuit, generation and extra origins, nothing secret (the plugin reads the circuit's key
/// from authgate's state directory); `public` for a public circuit, which the plugin only
/// counts. Returns its name.
fn render_fast_path(kv: &mut Kv, c: &Circuit) -> String {
    let m = names::fast_path_middleware(c.id);
    let p = format!("http/middlewares/{m}/plugin/{}", names::FAST_PATH_PLUGIN);
    kv.insert(format!("{p}/circuit"), c.id.as_hyphenated().to_string());
    kv.insert(format!("{p}/generation"), c.generation.to_string());
    kv.insert(format!("{p}/mode"), c.app_mode.as_str().into());
    if c.open_to_public {
        kv.insert(format!("{p}/public"), "true".into());
    }
    if !c.allowed_origins.is_empty() {
        kv.insert(format!("{p}/origins"), c.allowed_origins.join(","));
    }
    m
}

/// The circuit's ForwardAuth middleware to authgate; returns its name.
fn render_forward_auth(kv: &mut Kv, worker: &Worker, c: &Circuit) -> String {
    let m = names::auth_middleware(c.id);
    let fa = format!("http/middlewares/{m}/forwardAuth");
    // `p=<plugin>`: authgate runs that plugin (its config comes over the worker API, never
    // through etcd).
    // `c=1`: authgate counts the requests it lets through (the router writes no access log).
    let mut address = format!(
        "{}/auth/{}?g={}&m={}&c=1",
        worker.authgate_base(),
        c.id.as_hyphenated(),
        c.generation,
        c.app_mode.as_str()
    );
    // `o=1`: a public circuit; authgate checks no credential (a plugin, if any, decides).
    if c.open_to_public {
        address.push_str("&o=1");
    }
    // `rl=<requests>/<seconds>`: the endpoint's rate limit, counted by authgate.
    if let Some(l) = rate_limit(c) {
        address.push_str(&format!("&rl={}/{}", l.requests, l.window_seconds));
    }
    if let Some(p) = &c.auth_plugin {
        address.push_str(&format!("&p={}", p.name));
        // Every spelling a WSGI/CGI server would merge with the plugin's headers
        // (`X_Plugin_Tenant`, `x-plugin_tenant`, …): Traefik deletes the client's headers
        // that match, then copies authgate's.
        kv.insert(
            format!("{fa}/authResponseHeadersRegex"),
            PLUGIN_HEADERS_REGEX.into(),
        );
    }
    kv.insert(format!("{fa}/address"), address);
    kv.insert(format!("{fa}/trustForwardHeader"), "false".into());
    // Traefik replaces these request headers with authgate's answer (or deletes them when
    // authgate omits them): our cookie never reaches the app, nor a Referer that carries a
    // setup link, nor a bearer token for inference.
    let mode = match c.app_mode {
        AppMode::Inference => Mode::Inference,
        AppMode::Interactive => Mode::Interactive,
    };
    for (i, h) in app_headers(mode).iter().enumerate() {
        kv.insert(format!("{fa}/authResponseHeaders/{i}"), (*h).into());
    }
    kv.insert(format!("{fa}/maxResponseBodySize"), "65536".into());
    m
}

/// An inference circuit's rate limit, if its endpoint has one.
fn rate_limit(c: &Circuit) -> Option<crate::domain::Limit> {
    c.balancing.as_ref().and_then(|b| b.rate_limit)
}

/// The load balancer's servers (`h2c` for gRPC and HTTP/2), weighted by traffic ratio.
fn render_servers(kv: &mut Kv, s: &str, c: &Circuit) {
    let scheme = match c.protocol {
        Protocol::Grpc | Protocol::H2 => "h2c",
        _ => "http",
    };
    let weights = weights(c);
    // Traefik's p2c has no weights: a replica weighted 0 (drained) is left out instead.
    let p2c = c
        .balancing
        .as_ref()
        .is_some_and(|b| b.strategy == LoadBalancing::LeastConnections);
    let mut i = 0;
    for (r, route) in c.routes.iter().enumerate() {
        let weight = weights.as_ref().map(|w| w[r]);
        if p2c && weight == Some(0) {
            continue;
        }
        kv.insert(
            format!("{s}/servers/{i}/url"),
            format!(
                "{scheme}://{}",
                host_port(&route.kernel_host, route.kernel_port)
            ),
        );
        if let Some(w) = weight.filter(|_| !p2c) {
            kv.insert(format!("{s}/servers/{i}/weight"), w.to_string());
        }
        i += 1;
    }
}

/// Inference load balancing: the strategy (round robin is Traefik's default), passive health (a replica that fails 3 times in 10 s is taken
/// out for the window), optional sticky cookie, and Backend.AI's `ModelHealthCheck` as
/// Traefik's active health check. Traefik has no initial delay and marks a server down on its
/// first failed check, so `initial_delay` and `max_retries` have no Traefik counterpart.
fn render_balancing(kv: &mut Kv, s: &str, c: &Circuit, worker: &Worker) {
    kv.insert(
        format!("{s}/passiveHealthCheck/maxFailedAttempts"),
        "3".into(),
    );
    kv.insert(
        format!("{s}/passiveHealthCheck/failureWindow"),
        "10s".into(),
    );
    let Some(b) = &c.balancing else { return };
    if b.strategy != LoadBalancing::RoundRobin {
        kv.insert(format!("{s}/strategy"), b.strategy.traefik().into());
    }
    if b.sticky {
        let ck = format!("{s}/sticky/cookie");
        kv.insert(
            format!("{ck}/name"),
            format!("ap_sticky_{}", &c.id.simple().to_string()[..8]),
        );
        kv.insert(format!("{ck}/httpOnly"), "true".into());
        if worker.use_tls() {
            kv.insert(format!("{ck}/secure"), "true".into());
        }
    }
    if let Some(h) = &b.health_check {
        let hc = format!("{s}/healthCheck");
        let path = if h.path.starts_with('/') {
            h.path.clone()
        } else {
            format!("/{}", h.path)
        };
        kv.insert(format!("{hc}/path"), path);
        kv.insert(format!("{hc}/interval"), duration(h.interval));
        kv.insert(format!("{hc}/timeout"), duration(h.max_wait_time));
        if h.expected_status_code != 200 {
            kv.insert(format!("{hc}/status"), h.expected_status_code.to_string());
        }
    }
}

/// Seconds as a Go duration Traefik parses (`10s`, `1500ms`).
fn duration(secs: f64) -> String {
    let ms = (secs * 1000.0).round() as u64;
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn render_tcp(c: &Circuit) -> Kv {
    let mut kv = Kv::new();
    let name = names::circuit_object(c.id);
    let r = format!("tcp/routers/{name}");
    let rule = if c.allowed_client_ips.is_empty() {
        // Admits IPv4 and IPv6 clients alike (Backend.AI's ClientIP(`0.0.0.0/0`) drops IPv6).
        "HostSNI(`*`)".to_string()
    } else {
        let ips: Vec<String> = c
            .allowed_client_ips
            .iter()
            .map(|n| format!("ClientIP(`{n}`)"))
            .collect();
        format!("HostSNI(`*`) && ({})", ips.join(" || "))
    };
    kv.insert(format!("{r}/rule"), rule);
    kv.insert(format!("{r}/service"), name.clone());
    kv.insert(format!("{r}/entryPoints/0"), entrypoint(c));
    for (i, route) in c.routes.iter().enumerate() {
        kv.insert(
            format!("tcp/services/{name}/loadBalancer/servers/{i}/address"),
            host_port(&route.kernel_host, route.kernel_port),
        );
    }
    kv
}

/// Integer weights proportional to the routes' `traffic_ratio` (to 1/1000), reduced by
/// their gcd; `None` when all ratios are equal (Traefik's default weight 1 then applies).
pub fn weights(c: &Circuit) -> Option<Vec<u32>> {
    let raw: Vec<u32> = c
        .routes
        .iter()
        .map(|r| (r.traffic_ratio.clamp(0.0, 1_000_000.0) * 1000.0).round() as u32)
        .collect();
    if raw.is_empty() || raw.iter().all(|w| *w == raw[0]) {
        return None;
    }
    let g = raw.iter().copied().fold(0, gcd);
    Some(raw.iter().map(|w| w.checked_div(g).unwrap_or(*w)).collect())
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests;
