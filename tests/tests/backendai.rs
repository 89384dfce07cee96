//! Backend.AI wire compatibility, replayed request by request as the Manager and the WebUI
//! make them (`reference/backendai-appproxy.md` §4.1): `/v2/conf` → `/v2/proxy/.../add` →
//! `/v2/proxy/auth` → setup → app, for HTTP and TCP apps, through real Traefik and authgate.

use std::time::Duration;

use e2e::{
    Db, GatedWorker, Stack, TraefikFrontend, WorkerSpec,
    backends::{HttpEcho, TcpEcho},
    conf_body, eventually, patience,
};
use reqwest::{Method, header::HeaderMap};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn client() -> reqwest::Client {
    e2e::no_redirect_client()
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, String) {
    e2e::http_get(http, url, headers).await
}

/// `POST /v2/conf` as the Manager makes it; returns the grant token.
async fn conf(stack: &Stack, token: Option<&str>, body: &Value) -> (u16, Value) {
    stack
        .call(token, Method::POST, "/v2/conf", Some(body))
        .await
}

/// The WebUI's `/add` then `/auth` (JSON form); returns (auth body, add url).
async fn launch(stack: &Stack, grant: &str, session: Uuid, query: &str) -> Value {
    let http = client();
    let (s, h, body) = get(
        &http,
        &format!(
            "{}/v2/proxy/{grant}/{session}/add?{query}",
            stack.provider_url()
        ),
        &[],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(h["access-control-allow-origin"], "*");
    let add: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(add["code"], 200);
    let url = add["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/v2/proxy/auth?", stack.provider_url())),
        "{url}"
    );
    assert!(
        url.contains(&format!("token={grant}")) && url.contains(&format!("session_id={session}"))
    );
    let (s, h, body) = get(&http, url, &[("accept", "application/json")]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(h["access-control-allow-origin"], "*");
    serde_json::from_str(&body).unwrap()
}

async fn gated(stack: &Stack, authority: &str) -> GatedWorker {
    stack
        .start_gated_worker(WorkerSpec::ports(authority, 4))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webui_http_launch_sequence_reuse_and_refresh() {
    let stack = Stack::start(Db::Sqlite).await;
    let _w = gated(&stack, "bai-1").await;
    let echo = HttpEcho::start("kernel-a").await;
    let echo2 = HttpEcho::start("kernel-b").await;
    let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
    let http = client();

    // The Manager calls /v2/conf with the manager token (open mode is opt-in, see below).
    let (s, v) = conf(&stack, None, &conf_body(session, user, echo.port)).await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = conf(
        &stack,
        Some(&stack.manager_token),
        &conf_body(session, user, echo.port),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let grant = v["token"].as_str().unwrap().to_string();
    Uuid::parse_str(&grant).unwrap();

    // add → auth (JSON): a new circuit, not reused; envs as the WebUI sends it (JSON text).
    let q = "app=jupyter&protocol=http&envs=%7B%22PASSWORD%22%3A%22x%22%7D&redirect=%2Flab";
    let auth = launch(&stack, &grant, session, q).await;
    assert_eq!(auth["reuse"], false, "{auth}");
    let setup = auth["redirect_url"].as_str().unwrap().to_string();
    assert!(setup.contains("/_appproxy/setup?token="), "{setup}");
    let origin = setup.split("/_appproxy/").next().unwrap().to_string();

    // connectToProxyWorker: a no-cors fetch that plants the cookie, then the navigation.
    let (s1, h1, _) = get(&http, &setup, &[]).await;
    let (s2, h2, _) = get(&http, &setup, &[]).await;
    assert_eq!((s1, s2), (302, 302));
    assert_eq!(h2["location"], "/lab");
    let cookie = e2e::cookie_pair(h1["set-cookie"].to_str().unwrap());
    assert!(h2.contains_key("set-cookie"));
    let (s, _, body) = get(&http, &format!("{origin}/lab"), &[("cookie", &cookie)]).await;
    assert_eq!(s, 200);
    assert!(body.contains("backend=kernel-a"), "{body}");
    let (s, _, _) = get(&http, &format!("{origin}/lab"), &[]).await;
    assert_eq!(s, 401);

    // The circuit carries what the WebUI asked for.
    let (_, list) = stack
        .manager(
            Method::GET,
            &format!("/v2/circuits?session_id={session}"),
            None,
        )
        .await;
    let circuits = list["circuits"].as_array().unwrap();
    assert_eq!(circuits.len(), 1);
    assert_eq!(circuits[0]["envs"]["PASSWORD"], "x");
    assert_eq!(circuits[0]["user_id"], user.to_string());
    let id = circuits[0]["id"].as_str().unwrap().to_string();

    // A second /v2/proxy/auth reuses the circuit (same origin).
    let again = launch(&stack, &grant, session, q).await;
    assert_eq!(again["reuse"], true, "{again}");
    assert!(again["redirect_url"].as_str().unwrap().starts_with(&origin));
    // no_reuse makes a new one.
    let fresh = launch(&stack, &grant, session, &format!("{q}&no_reuse=true")).await;
    assert_eq!(fresh["reuse"], false);
    assert!(!fresh["redirect_url"].as_str().unwrap().starts_with(&origin));

    // The kernel moved (new grant, new port): reuse refreshes the route.
    let (_, v) = conf(
        &stack,
        Some(&stack.manager_token),
        &conf_body(session, user, echo2.port),
    )
    .await;
    let grant2 = v["token"].as_str().unwrap().to_string();
    let moved = launch(&stack, &grant2, session, q).await;
    assert_eq!(moved["reuse"], true);
    eventually("route refreshed to the new kernel", patience(), || async {
        let (_, _, body) = get(&http, &format!("{origin}/"), &[("cookie", &cookie)]).await;
        body.contains("backend=kernel-b").then_some(())
    })
    .await;
    let (_, c) = stack
        .manager(Method::GET, &format!("/v2/circuits/{id}"), None)
        .await;
    assert_eq!(c["route_info"][0]["kernel_port"], echo2.port);

    // Redirect form: a non-cacheable 302 to the setup link.
    let url = format!(
        "{}/v2/proxy/auth?{q}&token={grant}&session_id={session}",
        stack.provider_url()
    );
    let (s, h, _) = get(&http, &url, &[("accept", "text/html")]).await;
    assert_eq!(s, 302);
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h["location"]
            .to_str()
            .unwrap()
            .contains("/_appproxy/setup?token=")
    );

    // Errors with Backend.AI bodies.
    let bad_token = format!(
        "{}/v2/proxy/auth?{q}&token={}&session_id={session}",
        stack.provider_url(),
        Uuid::new_v4()
    );
    let (s, _, body) = get(&http, &bad_token, &[("accept", "application/json")]).await;
    assert_eq!(s, 404);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["title"], "E00002: No such token.");
    let mismatch = format!(
        "{}/v2/proxy/auth?{q}&token={grant}&session_id={}",
        stack.provider_url(),
        Uuid::new_v4()
    );
    let (s, _, body) = get(&http, &mismatch, &[("accept", "application/json")]).await;
    assert_eq!(s, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["title"], "E20007: Session ID mismatch");
    let bad_proto = format!(
        "{}/v2/proxy/auth?app=x&protocol=gopher&token={grant}&session_id={session}",
        stack.provider_url()
    );
    assert_eq!(get(&http, &bad_proto, &[]).await.0, 400);
    let (s, v) = conf(
        &stack,
        Some(&stack.manager_token),
        &json!({"kernel_host": "127.0.0.1", "kernel_port": 1, "session": {"user_uuid": user, "group_id": user}}),
    )
    .await;
    assert_eq!(s, 400, "inference-style conf without session id: {v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("Not meant for inference apps")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webui_tcp_launch_hands_off_to_the_desktop_forwarder() {
    let stack = Stack::start(Db::Sqlite).await;
    let (lo, hi) = Stack::port_range(2);
    let mut spec = WorkerSpec::ports("bai-tcp", 2);
    spec.frontend = TraefikFrontend::Ports { lo, hi };
    spec.env
        .push(("APPPROXY_AUTHGATE__WORKER__PROTOCOL".into(), "tcp".into()));
    let w = stack.start_gated_worker(spec).await;
    let sshd = TcpEcho::start("sshd").await;
    let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
    let (_, v) = conf(
        &stack,
        Some(&stack.manager_token),
        &conf_body(session, user, sshd.port),
    )
    .await;
    let grant = v["token"].as_str().unwrap().to_string();
    let auth = launch(&stack, &grant, session, "app=sshd&protocol=tcp").await;
    assert_eq!(auth["reuse"], false);
    let setup = auth["redirect_url"].as_str().unwrap().to_string();
    assert!(
        setup.starts_with(&format!("{}/setup?token=", w.base())),
        "{setup}"
    );
    // JSON hand-off (no redirect asked), read cross-origin as the WebUI reads it:
    // `fetch(redirect_url + "&do-not-redirect=true")` from the WebUI's origin. Without
    // Backend.AI's CORS headers the browser hides the answer (and so the gateway's address).
    let http = client();
    let (s, h, body) = get(
        &http,
        &format!("{setup}&do-not-redirect=true"),
        &[("origin", "http://webui.test:8090")],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    for cors in [
        "access-control-allow-origin",
        "access-control-allow-headers",
        "access-control-expose-headers",
    ] {
        assert_eq!(
            h.get(cors).map(|v| v.as_bytes()),
            Some(&b"*"[..]),
            "{cors}: {h:?}"
        );
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    let uri = v["redirectURI"].as_str().unwrap().to_string();
    assert_eq!(v["redirect"], uri);
    assert!(
        uri.starts_with("http://localhost:45678/start?directTCP=true&auth="),
        "{uri}"
    );
    let gateway = uri
        .split("gateway=")
        .nth(1)
        .unwrap()
        .replace("%3A", ":")
        .replace("%2F", "/");
    assert!(gateway.starts_with("tcp://127.0.0.1:"), "{gateway}");
    let port: u16 = gateway.rsplit(':').next().unwrap().parse().unwrap();
    assert!((lo..=hi).contains(&port));
    // Second launch: TCP never reports reuse; redirect=1 asks for the 302 form.
    let again = launch(&stack, &grant, session, "app=sshd&protocol=tcp&redirect=1").await;
    assert_eq!(again["reuse"], false);
    let (s, h, _) = get(&http, again["redirect_url"].as_str().unwrap(), &[]).await;
    assert_eq!(s, 302);
    assert!(
        h["location"]
            .to_str()
            .unwrap()
            .starts_with("http://localhost:45678/start?")
    );
    // The gateway carries the bytes.
    let greeting = eventually("tcp gateway serves", patience(), || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        s.write_all(b"ping").await.ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
    })
    .await;
    assert_eq!(greeting, "hello from sshd\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_conf_only_reaches_allowed_kernel_networks_and_grants_expire() {
    let mut stack = Stack::start(Db::Sqlite).await;
    let p = "APPPROXY_PROVIDER__CONF__";
    stack.provider_extra_env = vec![
        (
            format!("{p}ALLOW_UNAUTHORIZED_CONFIGURE_REQUEST"),
            "true".into(),
        ),
        (
            format!("{p}ALLOWED_KERNEL_NETWORKS"),
            "[\"127.0.0.0/8\"]".into(),
        ),
        (format!("{p}TOKEN_TTL_SECONDS"), "10".into()),
    ];
    stack.kill_provider();
    stack.start_provider();
    let _w = gated(&stack, "bai-open").await;
    let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
    // Without a token, as today's Manager calls it.
    let (s, v) = conf(&stack, None, &conf_body(session, user, 8888)).await;
    assert_eq!(s, 200, "{v}");
    let grant = v["token"].as_str().unwrap().to_string();
    for host in ["10.1.2.3", "169.254.169.254", "metadata.internal", "::1"] {
        let mut body = conf_body(session, user, 8888);
        body["kernel_host"] = json!(host);
        let (s, v) = conf(&stack, None, &body).await;
        assert_eq!(s, 403, "{host}: {v}");
    }
    // Grants expire: after the TTL the grant is refused (and garbage-collected).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let url = format!(
        "{}/v2/proxy/auth?app=x&protocol=http&token={grant}&session_id={session}",
        stack.provider_url()
    );
    let (s, _, _) = get(&client(), &url, &[("accept", "application/json")]).await;
    assert_eq!(s, 404);
    // An open /v2/conf without allowed_kernel_networks is a configuration error.
    let out = std::process::Command::new(e2e::workspace_bin("appproxy-provider"))
        .arg("--check-config")
        .envs(stack.provider_env())
        .env(format!("{p}ALLOW_UNAUTHORIZED_CONFIGURE_REQUEST"), "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allowed_kernel_networks"));
}
