//! Snapshot tests: the exact keys and values per fixture circuit.

use uuid::Uuid;

use super::*;
use crate::domain::Route;

const CID: &str = "0b6c2f7e-1111-4a2b-8c3d-1234567890ab";

fn worker(mode: FrontendMode, protocol: Protocol) -> Worker {
    let spec = crate::domain::fixtures::spec("w1", mode, protocol);
    crate::domain::fixtures::worker(Uuid::nil(), spec)
}

fn route(host: &str, port: u16, ratio: f64, protocol: Protocol) -> Route {
    Route {
        route_id: None,
        session_id: Uuid::nil(),
        session_name: None,
        kernel_host: host.into(),
        kernel_port: port,
        protocol,
        traffic_ratio: ratio,
    }
}

fn circuit(frontend: Frontend, protocol: Protocol, routes: Vec<Route>) -> Circuit {
    Circuit {
        balancing: None,
        auth_plugin: None,
        allowed_origins: Vec::new(),
        id: Uuid::parse_str(CID).unwrap(),
        app: "jupyter".into(),
        protocol,
        app_mode: AppMode::Interactive,
        worker_id: Uuid::nil(),
        frontend,
        envs: serde_json::json!({}),
        arguments: None,
        open_to_public: false,
        allowed_client_ips: Vec::new(),
        user_id: Some(Uuid::nil()),
        endpoint_id: None,
        runtime_variant: None,
        routes,
        idle_timeout: None,
        generation: 3,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

fn check(kv: &Kv, expect: &str) {
    let got: String = kv.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let want: String = expect
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(got, want, "\n--- got ---\n{got}");
}

#[test]
fn port_mode_private_http() {
    let w = worker(FrontendMode::Port, Protocol::Http);
    let c = circuit(
        Frontend::Port(10206),
        Protocol::Http,
        vec![route("10.0.0.5", 8888, 1.0, Protocol::Http)],
    );
    check(
        &render_circuit(&w, &c),
        "
        http/middlewares/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-auth/forwardAuth/address = http://127.0.0.1:10201/auth/0b6c2f7e-1111-4a2b-8c3d-1234567890ab?g=3&m=interactive&c=1
        http/middlewares/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-auth/forwardAuth/authResponseHeaders/0 = Cookie
        http/middlewares/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-auth/forwardAuth/authResponseHeaders/1 = Referer
        http/middlewares/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-auth/forwardAuth/maxResponseBodySize = 65536
        http/middlewares/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-auth/forwardAuth/trustForwardHeader = false
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-ws/entryPoints/0 = port_10206
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-ws/middlewares/0 = ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-auth
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-ws/rule = (PathPrefix(`/`)) && HeaderRegexp(`Upgrade`, `(?i)^websocket$`)
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-ws/service = ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/entryPoints/0 = port_10206
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/middlewares/0 = ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-auth
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/observability/accessLogs = false
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/rule = PathPrefix(`/`)
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/service = ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab
        http/services/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/loadBalancer/servers/0/url = http://10.0.0.5:8888
        ",
    );
}

#[test]
fn circuits_behind_forward_auth_log_only_their_websockets() {
    let w = worker(FrontendMode::Wildcard, Protocol::Http);
    let mut c = circuit(
        Frontend::Subdomain("lab".into()),
        Protocol::Http,
        vec![route("10.0.0.5", 8888, 1.0, Protocol::Http)],
    );
    let kv = render_circuit(&w, &c);
    let (r, ws) = (
        format!("http/routers/ap-{CID}"),
        format!("http/routers/ap-{CID}-ws"),
    );
    assert_eq!(kv[&format!("{r}/observability/accessLogs")], "false");
    assert_eq!(
        kv[&format!("{ws}/rule")],
        "(Host(`lab.apps.example.com`)) && HeaderRegexp(`Upgrade`, `(?i)^websocket$`)"
    );
    assert!(!kv.contains_key(&format!("{ws}/observability/accessLogs")));
    for k in ["service", "middlewares/0", "entryPoints/0"] {
        assert_eq!(kv[&format!("{ws}/{k}")], kv[&format!("{r}/{k}")], "{k}");
    }
    assert_eq!(group_of(&format!("{ws}/rule")), Some(Group::Circuit(c.id)));
    // gRPC has no WebSocket: no twin, still counted at ForwardAuth.
    c.protocol = Protocol::Grpc;
    let kv = render_circuit(&w, &c);
    assert!(!kv.keys().any(|k| k.starts_with(&ws)));
    assert_eq!(kv[&format!("{r}/observability/accessLogs")], "false");
    // Public (no ForwardAuth): every request is logged, as before.
    c.protocol = Protocol::Http;
    c.open_to_public = true;
    let kv = render_circuit(&w, &c);
    assert!(
        !kv.keys()
            .any(|k| k.starts_with(&ws) || k.contains("observability"))
    );
}

#[test]
fn a_fast_path_worker_decides_cookie_circuits_in_traefik_and_upgrades_at_forward_auth() {
    let mut w = worker(FrontendMode::Wildcard, Protocol::Http);
    w.spec.fast_path = true;
    w.spec.fast_path_interactive = true;
    let mut c = circuit(
        Frontend::Subdomain("lab".into()),
        Protocol::Http,
        vec![route("10.0.0.5", 8888, 1.0, Protocol::Http)],
    );
    c.allowed_origins = vec!["https://a.example".into(), "https://b.example".into()];
    c.allowed_client_ips = vec!["10.1.0.0/16".parse().unwrap()];
    let kv = render_circuit(&w, &c);
    let (r, ws) = (
        format!("http/routers/ap-{CID}"),
        format!("http/routers/ap-{CID}-ws"),
    );
    let p = format!("http/middlewares/ap-{CID}-fast/plugin/appproxy-fastpath");
    assert_eq!(kv[&format!("{p}/circuit")], CID);
    assert_eq!(kv[&format!("{p}/generation")], c.generation.to_string());
    assert_eq!(kv[&format!("{p}/mode")], "interactive");
    assert_eq!(
        kv[&format!("{p}/origins")],
        "https://a.example,https://b.example"
    );
    // Nothing secret in the plugin's config.
    assert_eq!(kv.keys().filter(|k| k.starts_with(&p)).count(), 4);
    // The router: allow list, then the plugin; no access log (the plugin counts requests).
    assert_eq!(
        kv[&format!("{r}/middlewares/0")],
        format!("ap-{CID}-ipallow")
    );
    assert_eq!(kv[&format!("{r}/middlewares/1")], format!("ap-{CID}-fast"));
    assert_eq!(kv[&format!("{r}/observability/accessLogs")], "false");
    assert!(!kv.contains_key(&format!("{ws}/observability/accessLogs")));
    // The WebSocket twin: the same chain with ForwardAuth (`c=1`) in the plugin's place.
    assert_eq!(
        kv[&format!("{ws}/middlewares/0")],
        format!("ap-{CID}-ipallow")
    );
    assert_eq!(kv[&format!("{ws}/middlewares/1")], format!("ap-{CID}-auth"));
    assert!(kv[&format!("http/middlewares/ap-{CID}-auth/forwardAuth/address")].contains("&c=1"));
    // Inference circuits check their bearer token there too.
    let mut inference = c.clone();
    inference.app_mode = AppMode::Inference;
    let kv = render_circuit(&w, &inference);
    assert_eq!(kv[&format!("{p}/mode")], "inference");
    // Circuits with a plugin keep ForwardAuth (public ones too).
    for public in [false, true] {
        let mut other = c.clone();
        other.open_to_public = public;
        other.auth_plugin = Some(appproxy_common::wire::AuthPlugin {
            name: "p".into(),
            config: serde_json::json!({}),
        });
        let kv = render_circuit(&w, &other);
        assert!(!kv.keys().any(|k| k.contains("-fast")), "{other:?}");
    }
    // A public circuit is only counted by the plugin (no access-log record per request); its
    // WebSocket twin keeps the plugin (the upgrade is counted) and the log (the socket's end).
    let mut public = c.clone();
    public.open_to_public = true;
    let kv = render_circuit(&w, &public);
    assert_eq!(kv[&format!("{p}/public")], "true");
    assert_eq!(kv[&format!("{r}/middlewares/1")], format!("ap-{CID}-fast"));
    assert_eq!(kv[&format!("{r}/observability/accessLogs")], "false");
    assert_eq!(kv[&format!("{ws}/middlewares/1")], format!("ap-{CID}-fast"));
    assert!(!kv.contains_key(&format!("{ws}/middlewares/2")));
    assert!(!kv.contains_key(&format!("{ws}/observability/accessLogs")));
    assert!(!kv.keys().any(|k| k.contains("-auth")), "{kv:?}");
    // By default a fast-path worker puts only its inference circuits on the plugin (Traefik
    // builds an instance per router): interactive ones keep ForwardAuth, or the access log.
    w.spec.fast_path_interactive = false;
    for public in [false, true] {
        let mut interactive = c.clone();
        interactive.open_to_public = public;
        let kv = render_circuit(&w, &interactive);
        assert!(!kv.keys().any(|k| k.contains("-fast")), "{kv:?}");
        let mut inference = interactive.clone();
        inference.app_mode = AppMode::Inference;
        let kv = render_circuit(&w, &inference);
        assert_eq!(kv[&format!("{r}/middlewares/1")], format!("ap-{CID}-fast"));
        assert_eq!(kv.contains_key(&format!("{p}/public")), public);
    }
    w.spec.fast_path_interactive = true;
    // The same circuit on a worker without the fast path.
    w.spec.fast_path = false;
    let kv = render_circuit(&w, &c);
    assert!(!kv.keys().any(|k| k.contains("-fast")));
    assert_eq!(kv[&format!("{r}/middlewares/1")], format!("ap-{CID}-auth"));
}

#[test]
fn path_mode_routes_by_prefix_strips_it_unless_the_app_keeps_it() {
    let mut w = worker(FrontendMode::Path, Protocol::Http);
    w.spec.path_keep_prefix_apps = vec!["jupyter".into()];
    let prefix = "/5e2c0000-0000-4000-8000-000000000001/jupyter";
    let mut c = circuit(
        Frontend::Path(prefix.into()),
        Protocol::Http,
        vec![route("10.0.0.5", 8888, 1.0, Protocol::Http)],
    );
    let kept = render_circuit(&w, &c);
    assert_eq!(
        kept[&format!("http/routers/ap-{CID}/rule")],
        format!("Path(`{prefix}`) || PathPrefix(`{prefix}/`)")
    );
    assert_eq!(
        kept[&format!("http/routers/ap-{CID}/entryPoints/0")],
        "apps"
    );
    assert!(
        !kept.keys().any(|k| k.contains("-strip")),
        "jupyter keeps its prefix"
    );
    c.app = "tensorboard".into();
    let stripped = render_circuit(&w, &c);
    assert_eq!(
        stripped[&format!("http/middlewares/ap-{CID}-strip/stripPrefix/prefixes/0")],
        prefix
    );
    // ForwardAuth first (it sees the whole path), then the strip.
    assert_eq!(
        stripped[&format!("http/routers/ap-{CID}/middlewares/0")],
        format!("ap-{CID}-auth")
    );
    assert_eq!(
        stripped[&format!("http/routers/ap-{CID}/middlewares/1")],
        format!("ap-{CID}-strip")
    );
    assert_eq!(
        group_of(&format!(
            "http/middlewares/ap-{CID}-strip/stripPrefix/prefixes/0"
        )),
        Some(Group::Circuit(c.id))
    );
    // The shared setup router takes `/<id>/<app>/_appproxy/…` and strips the prefix.
    let shared = render_shared(&w);
    assert_eq!(shared["http/routers/ap-setup/rule"], names::PATH_SETUP_RULE);
    assert_eq!(shared["http/routers/ap-setup/middlewares/0"], "ap-setup");
    assert_eq!(
        shared["http/middlewares/ap-setup/stripPrefixRegex/regex/0"],
        names::PATH_PREFIX_REGEX
    );
    assert_eq!(shared["http/routers/ap-setup/entryPoints/0"], "apps");
}

#[test]
fn subdomain_mode_public_with_allowlist_and_weights() {
    let w = worker(FrontendMode::Wildcard, Protocol::Http);
    let mut c = circuit(
        Frontend::Subdomain("my-app".into()),
        Protocol::Http,
        vec![
            route("10.0.0.5", 8000, 1.0, Protocol::Http),
            route("10.0.0.6", 8000, 1.0, Protocol::Http),
            route("fd00::7", 8000, 2.0, Protocol::Http),
        ],
    );
    c.open_to_public = true;
    c.allowed_client_ips = crate::domain::parse_client_ips("10.1.0.0/16, ::1").unwrap();
    check(
        &render_circuit(&w, &c),
        "
        http/middlewares/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-ipallow/ipAllowList/sourceRange/0 = 10.1.0.0/16
        http/middlewares/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-ipallow/ipAllowList/sourceRange/1 = ::1/128
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/entryPoints/0 = apps
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/middlewares/0 = ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab-ipallow
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/rule = Host(`my-app.apps.example.com`)
        http/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/service = ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab
        http/services/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/loadBalancer/servers/0/url = http://10.0.0.5:8000
        http/services/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/loadBalancer/servers/0/weight = 1
        http/services/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/loadBalancer/servers/1/url = http://10.0.0.6:8000
        http/services/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/loadBalancer/servers/1/weight = 1
        http/services/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/loadBalancer/servers/2/url = http://[fd00::7]:8000
        http/services/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/loadBalancer/servers/2/weight = 2
        ",
    );
}

#[test]
fn tcp_circuit_with_and_without_allowlist() {
    let w = worker(FrontendMode::Port, Protocol::Tcp);
    let mut c = circuit(
        Frontend::Port(10205),
        Protocol::Tcp,
        vec![route("10.0.0.5", 22, 1.0, Protocol::Tcp)],
    );
    check(
        &render_circuit(&w, &c),
        "
        tcp/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/entryPoints/0 = port_10205
        tcp/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/rule = HostSNI(`*`)
        tcp/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/service = ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab
        tcp/services/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/loadBalancer/servers/0/address = 10.0.0.5:22
        ",
    );
    c.allowed_client_ips = crate::domain::parse_client_ips("10.0.0.0/8,2001:db8::/32").unwrap();
    let kv = render_circuit(&w, &c);
    assert_eq!(
        kv["tcp/routers/ap-0b6c2f7e-1111-4a2b-8c3d-1234567890ab/rule"],
        "HostSNI(`*`) && (ClientIP(`10.0.0.0/8`) || ClientIP(`2001:db8::/32`))"
    );
}

#[test]
fn shared_objects_and_grouping() {
    let w = worker(FrontendMode::Port, Protocol::Http);
    check(
        &render_shared(&w),
        "
        http/routers/ap-setup/entryPoints/0 = port_10205
        http/routers/ap-setup/entryPoints/1 = port_10206
        http/routers/ap-setup/priority = 1000000
        http/routers/ap-setup/rule = PathPrefix(`/_appproxy/`)
        http/routers/ap-setup/service = ap-setup
        http/services/ap-sentinel/loadBalancer/servers/0/url = http://127.0.0.1:9
        http/services/ap-setup/loadBalancer/servers/0/url = http://127.0.0.1:10201
        ",
    );
    // TCP workers get only the sentinel.
    assert_eq!(
        render_shared(&worker(FrontendMode::Port, Protocol::Tcp)).len(),
        1
    );
    let id = Uuid::parse_str(CID).unwrap();
    assert_eq!(
        group_of(&format!(
            "http/middlewares/ap-{CID}-auth/forwardAuth/address"
        )),
        Some(Group::Circuit(id))
    );
    assert_eq!(
        group_of("http/services/ap-sentinel/loadBalancer/servers/0/url"),
        Some(Group::Shared)
    );
    assert_eq!(group_of("http/routers/other/rule"), None);
    assert_eq!(group_of("garbage"), None);
}

#[test]
fn h2_and_grpc_use_h2c_and_inference_strips_authorization() {
    let w = worker(FrontendMode::Port, Protocol::Http);
    let mut c = circuit(
        Frontend::Port(10205),
        Protocol::Grpc,
        vec![route("10.0.0.5", 9000, 1.0, Protocol::Grpc)],
    );
    c.app_mode = AppMode::Inference;
    let kv = render_circuit(&w, &c);
    assert_eq!(
        kv[&format!("http/services/ap-{CID}/loadBalancer/servers/0/url")],
        "h2c://10.0.0.5:9000"
    );
    assert_eq!(
        kv[&format!("http/middlewares/ap-{CID}-auth/forwardAuth/authResponseHeaders/2")],
        "Authorization"
    );
    assert!(
        kv[&format!("http/middlewares/ap-{CID}-auth/forwardAuth/address")]
            .ends_with("m=inference&c=1")
    );
}

#[test]
fn weights_reduce_and_equal_ratios_write_none() {
    let mk = |ratios: &[f64]| {
        circuit(
            Frontend::Port(1),
            Protocol::Http,
            ratios
                .iter()
                .map(|r| route("h", 1, *r, Protocol::Http))
                .collect(),
        )
    };
    assert_eq!(weights(&mk(&[1.0, 1.0])), None);
    assert_eq!(weights(&mk(&[0.5, 0.5, 0.5])), None);
    assert_eq!(weights(&mk(&[1.0, 1.0, 2.0])), Some(vec![1, 1, 2]));
    assert_eq!(weights(&mk(&[0.3, 0.7])), Some(vec![3, 7]));
    assert_eq!(weights(&mk(&[0.0, 1.0])), Some(vec![0, 1]));
}

#[test]
fn inference_balancing_sticky_health_check_and_retry() {
    let mut w = worker(FrontendMode::Port, Protocol::Http);
    w.spec.accepted_traffics = vec![AppMode::Interactive, AppMode::Inference];
    w.spec.tls_listen = true;
    let mut c = circuit(
        Frontend::Port(10205),
        Protocol::Http,
        vec![
            route("10.0.0.5", 9000, 1.0, Protocol::Http),
            route("10.0.0.6", 9000, 2.0, Protocol::Http),
        ],
    );
    c.app_mode = AppMode::Inference;
    c.open_to_public = true;
    c.balancing = Some(crate::domain::Balancing {
        sticky: true,
        health_check: Some(crate::domain::HealthCheck {
            enable: true,
            interval: 1.5,
            path: "healthz".into(),
            max_retries: 3,
            max_wait_time: 5.0,
            expected_status_code: 204,
            initial_delay: 30.0,
        }),
        strategy: crate::domain::LoadBalancing::RoundRobin,
        rate_limit: None,
    });
    check(
        &render_circuit(&w, &c),
        &format!(
            "
        http/routers/ap-{CID}/entryPoints/0 = port_10205
        http/routers/ap-{CID}/middlewares/0 = ap-retry
        http/routers/ap-{CID}/rule = PathPrefix(`/`)
        http/routers/ap-{CID}/service = ap-{CID}
        http/routers/ap-{CID}/tls/options = default
        http/services/ap-{CID}/loadBalancer/healthCheck/interval = 1500ms
        http/services/ap-{CID}/loadBalancer/healthCheck/path = /healthz
        http/services/ap-{CID}/loadBalancer/healthCheck/status = 204
        http/services/ap-{CID}/loadBalancer/healthCheck/timeout = 5s
        http/services/ap-{CID}/loadBalancer/passiveHealthCheck/failureWindow = 10s
        http/services/ap-{CID}/loadBalancer/passiveHealthCheck/maxFailedAttempts = 3
        http/services/ap-{CID}/loadBalancer/servers/0/url = http://10.0.0.5:9000
        http/services/ap-{CID}/loadBalancer/servers/0/weight = 1
        http/services/ap-{CID}/loadBalancer/servers/1/url = http://10.0.0.6:9000
        http/services/ap-{CID}/loadBalancer/servers/1/weight = 2
        http/services/ap-{CID}/loadBalancer/sticky/cookie/httpOnly = true
        http/services/ap-{CID}/loadBalancer/sticky/cookie/name = ap_sticky_0b6c2f7e
        http/services/ap-{CID}/loadBalancer/sticky/cookie/secure = true
        "
        ),
    );
    let shared = render_shared(&w);
    assert_eq!(shared["http/middlewares/ap-retry/retry/attempts"], "3");
    assert_eq!(
        group_of("http/middlewares/ap-retry/retry/attempts"),
        Some(Group::Shared)
    );
    // No routes yet (an endpoint before its replicas): nothing rendered, the URL is a 404.
    c.routes.clear();
    assert!(render_circuit(&w, &c).is_empty());
}

#[test]
fn least_loaded_strategies_name_traefiks_and_p2c_leaves_drained_replicas_out() {
    let w = worker(FrontendMode::Port, Protocol::Http);
    let mut c = circuit(
        Frontend::Port(10205),
        Protocol::Http,
        vec![
            route("10.0.0.5", 9000, 1.0, Protocol::Http),
            route("10.0.0.6", 9000, 0.0, Protocol::Http),
            route("10.0.0.7", 9000, 3.0, Protocol::Http),
        ],
    );
    c.app_mode = AppMode::Inference;
    let lb = |c: &mut Circuit, strategy| {
        c.balancing = Some(crate::domain::Balancing {
            strategy,
            ..Default::default()
        });
    };
    let servers = |kv: &Kv| -> Vec<String> {
        kv.iter()
            .filter(|(k, _)| k.contains("/loadBalancer/s"))
            .map(|(k, v)| format!("{} = {v}", k.rsplit_once("loadBalancer/").unwrap().1))
            .collect()
    };
    lb(&mut c, crate::domain::LoadBalancing::LeastConnections);
    let kv = render_circuit(&w, &c);
    assert_eq!(
        servers(&kv),
        [
            "servers/0/url = http://10.0.0.5:9000",
            "servers/1/url = http://10.0.0.7:9000",
            "strategy = p2c",
        ]
    );
    lb(&mut c, crate::domain::LoadBalancing::LeastTime);
    let kv = render_circuit(&w, &c);
    assert_eq!(
        servers(&kv),
        [
            "servers/0/url = http://10.0.0.5:9000",
            "servers/0/weight = 1",
            "servers/1/url = http://10.0.0.6:9000",
            "servers/1/weight = 0",
            "servers/2/url = http://10.0.0.7:9000",
            "servers/2/weight = 3",
            "strategy = leasttime",
        ]
    );
    lb(&mut c, crate::domain::LoadBalancing::RoundRobin);
    assert!(
        !render_circuit(&w, &c)
            .keys()
            .any(|k| k.ends_with("/strategy"))
    );
}

#[test]
fn plugins_are_named_in_the_address_and_their_headers_listed() {
    let w = worker(FrontendMode::Port, Protocol::Http);
    let mut c = circuit(
        Frontend::Port(10205),
        Protocol::Http,
        vec![route("10.0.0.5", 9000, 1.0, Protocol::Http)],
    );
    c.auth_plugin = Some(crate::domain::AuthPlugin {
        name: "api-keys".into(),
        config: serde_json::json!({"keys": ["secret-key"]}),
    });
    let kv = render_circuit(&w, &c);
    let fa = format!("http/middlewares/ap-{CID}-auth/forwardAuth");
    assert!(kv[&format!("{fa}/address")].ends_with("&m=interactive&c=1&p=api-keys"));
    assert_eq!(
        kv[&format!("{fa}/authResponseHeadersRegex")],
        "(?i)^x[-_]plugin[-_]"
    );
    assert!(
        !kv.values().any(|v| v.contains("secret-key")),
        "configs stay out of etcd"
    );
    // Public + plugin: the forwardAuth middleware exists and says `o=1`.
    c.open_to_public = true;
    let kv = render_circuit(&w, &c);
    assert!(kv[&format!("{fa}/address")].ends_with("&o=1&p=api-keys"));
    c.auth_plugin = None;
    assert!(!render_circuit(&w, &c).contains_key(&format!("{fa}/address")));
}

#[test]
fn an_endpoint_rate_limit_puts_even_a_public_endpoint_behind_authgate() {
    let w = worker(FrontendMode::Port, Protocol::Http);
    let mut c = circuit(
        Frontend::Port(10205),
        Protocol::Http,
        vec![route("10.0.0.5", 9000, 1.0, Protocol::Http)],
    );
    c.app_mode = AppMode::Inference;
    c.open_to_public = true;
    let fa = format!("http/middlewares/ap-{CID}-auth/forwardAuth/address");
    assert!(!render_circuit(&w, &c).contains_key(&fa));
    c.balancing = Some(crate::domain::Balancing {
        rate_limit: Some(crate::domain::Limit {
            requests: 50,
            window_seconds: 10,
        }),
        ..Default::default()
    });
    let kv = render_circuit(&w, &c);
    assert!(
        kv[&fa].ends_with("&m=inference&c=1&o=1&rl=50/10"),
        "{}",
        kv[&fa]
    );
    assert_eq!(
        kv[&format!("http/routers/ap-{CID}/middlewares/0")],
        format!("ap-{CID}-auth")
    );
    c.open_to_public = false;
    assert!(render_circuit(&w, &c)[&fa].ends_with("&m=inference&c=1&rl=50/10"));
}

#[test]
fn a_worker_with_authgate_answers_unserved_addresses_with_the_closed_page() {
    let mut w = worker(FrontendMode::Port, Protocol::Http);
    w.spec.authgate_url = Some("http://127.0.0.1:10201/".into());
    let kv = render_shared(&w);
    let get = |k: &str| kv.get(k).map(String::as_str);
    assert_eq!(get("http/routers/ap-closed/rule"), Some("PathPrefix(`/`)"));
    assert_eq!(get("http/routers/ap-closed/priority"), Some("1"));
    assert_eq!(get("http/routers/ap-closed/service"), Some("ap-setup"));
    assert_eq!(
        get("http/routers/ap-closed/entryPoints/1"),
        Some("port_10206")
    );
    assert_eq!(
        get("http/middlewares/ap-closed/replacePath/path"),
        Some("/_appproxy/closed")
    );
    // Its keys belong to the shared group (keys of no group are deleted as foreign).
    assert!(
        kv.keys().all(|k| group_of(k) == Some(Group::Shared)),
        "{kv:?}"
    );
    // Without a named authgate (a worker not registered by one), Traefik's own 404 stays.
    let bare = render_shared(&worker(FrontendMode::Port, Protocol::Http));
    assert!(!bare.keys().any(|k| k.contains("ap-closed")));
}

/// ACME: the resolver on every TLS router (a router's `tls` replaces its entrypoint's), with
/// the certificate's names where the rule names no host.
#[test]
fn acme_resolver_and_certificate_names_per_mode() {
    let tls_keys = |kv: &Kv, router: &str| -> Vec<String> {
        let prefix = format!("http/routers/{router}/tls/");
        kv.iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| format!("{} = {v}", &k[prefix.len()..]))
            .collect()
    };
    let cid = format!("ap-{CID}");
    let web = route("10.0.0.5", 8888, 1.0, Protocol::Http);

    // Port mode: one certificate for the worker's hostname, on circuit and setup routers.
    let mut w = worker(FrontendMode::Port, Protocol::Http);
    w.spec.tls_listen = true;
    w.spec.cert_resolver = Some("acme".into());
    let c = circuit(Frontend::Port(10205), Protocol::Http, vec![web.clone()]);
    let want = vec![
        "certResolver = acme".to_string(),
        "domains/0/main = apps.example.com".into(),
        "options = default".into(),
    ];
    assert_eq!(tls_keys(&render_circuit(&w, &c), &cid), want);
    assert_eq!(tls_keys(&render_shared(&w), names::SETUP), want);

    // Wildcard mode without names: per-host certificates from each circuit's Host rule; the
    // host-less setup router asks for none.
    let mut w = worker(FrontendMode::Wildcard, Protocol::Http);
    w.spec.tls_listen = true;
    w.spec.cert_resolver = Some("acme".into());
    let c = circuit(Frontend::Subdomain("lab".into()), Protocol::Http, vec![web]);
    assert_eq!(
        tls_keys(&render_circuit(&w, &c), &cid),
        vec!["certResolver = acme", "options = default"]
    );
    assert_eq!(
        tls_keys(&render_shared(&w), names::SETUP),
        vec!["options = default"]
    );

    // A wildcard certificate (DNS-01): its names on every router.
    w.spec.cert_domains = vec!["*.apps.example.com".into(), "apps.example.com".into()];
    let want = vec![
        "certResolver = acme".to_string(),
        "domains/0/main = *.apps.example.com".into(),
        "domains/0/sans/0 = apps.example.com".into(),
        "options = default".into(),
    ];
    assert_eq!(tls_keys(&render_circuit(&w, &c), &cid), want);
    assert_eq!(tls_keys(&render_shared(&w), names::SETUP), want);

    // No TLS: no tls keys at all.
    w.spec.tls_listen = false;
    assert!(tls_keys(&render_circuit(&w, &c), &cid).is_empty());
}
