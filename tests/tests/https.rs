//! Worker HTTPS with certificates from a local ACME CA (Debian's pebble): the Backend.AI
//! launch flow answering `https://` URLs, setup on the HTTPS origin, the `__Host-` cookie
//! with `Secure`, the app and a WebSocket (WSS) through it — in port mode with TLS-ALPN-01
//! and in wildcard mode with one wildcard certificate by DNS-01 — plus the redirect from
//! plain HTTP and HSTS.

use std::{sync::Arc, time::Duration, time::Instant};

use e2e::{
    Db, GatedWorker, Stack, TraefikExtra, TraefikFrontend, WorkerSpec, acme::Pebble,
    backends::HttpEcho, eventually, pki::Pki,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// A client that trusts only pebble's root and finds every test name at 127.0.0.1.
fn client(root: &str, names: &[&str]) -> reqwest::Client {
    let mut b = e2e::client_builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(root.as_bytes()).expect("root"))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10));
    for n in names {
        b = b.resolve(n, ([127, 0, 0, 1], 0).into());
    }
    b.build().expect("client")
}

/// The Manager's `/v2/conf`, then the WebUI's `/add` and `/auth`: the setup link it answers.
async fn webui_launch(stack: &Stack, session: Uuid, port: u16) -> String {
    let body = e2e::conf_body(session, Uuid::new_v4(), port);
    let (s, v) = stack
        .call(
            Some(&stack.manager_token),
            Method::POST,
            "/v2/conf",
            Some(&body),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let grant = v["token"].as_str().unwrap().to_string();
    let http = e2e::no_redirect_client();
    let add = format!(
        "{}/v2/proxy/{grant}/{session}/add?app=jupyter&protocol=http&redirect=%2Flab",
        stack.provider_url()
    );
    let add: Value = http.get(&add).send().await.unwrap().json().await.unwrap();
    let auth = add["url"].as_str().expect("add url");
    let auth: Value = (http.get(auth).header("accept", "application/json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    auth["redirect_url"]
        .as_str()
        .expect("redirect_url")
        .to_string()
}

/// A WebSocket handshake and one text frame over TLS to `127.0.0.1:port` with SNI `host`;
/// the status line and the echoed payload.
async fn wss(root: &str, host: &str, port: u16, cookie: &str) -> (String, Option<String>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(root) {
        roots.add(c).expect("root");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS to the worker");
    let origin = format!("https://{host}:{port}");
    let headers = [("Origin", origin.as_str()), ("Cookie", cookie)];
    e2e::websocket_echo(&mut s, &format!("{host}:{port}"), &headers).await
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("pem")
}

/// The whole HTTPS path of one worker: `setup` is a launch's setup link on `host:port`.
async fn https_launch_serves(
    worker: &GatedWorker,
    root: &str,
    host: &str,
    port: u16,
    setup: &str,
    http: &reqwest::Client,
) {
    let origin = format!("https://{host}:{port}");
    assert!(
        setup.starts_with(&format!("{origin}/_appproxy/setup?token=")),
        "{setup}"
    );
    // The certificate comes from the ACME CA a few seconds after the router appears; until
    // then Traefik presents its default certificate, which the client refuses.
    let t = Instant::now();
    let (s, h, body) = eventually(
        "the ACME certificate is served",
        Duration::from_secs(90),
        || async { e2e::try_http_get(http, setup, &[]).await },
    )
    .await;
    println!(
        "{host}: certificate served {:.1} s after the circuit",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(s, 302, "setup: {body}\n{}", worker.authgate_log());
    let sc = e2e::session_set_cookie(&h);
    assert!(sc.starts_with("__Host-appproxy_"), "{sc}");
    assert!(sc.contains("; Secure") && sc.contains("Path=/"), "{sc}");
    assert!(!sc.contains("Domain="), "{sc}");
    let cookie = e2e::cookie_pair(&sc);

    let (s, _, body) = e2e::try_http_get(http, &format!("{origin}/lab"), &[("cookie", &cookie)])
        .await
        .expect("app over HTTPS");
    assert_eq!(s, 200, "{body}");
    let (s, _, _) = e2e::try_http_get(http, &format!("{origin}/lab"), &[])
        .await
        .unwrap();
    assert_eq!(s, 401, "no cookie, no app");

    let (status, echoed) = wss(root, host, port, &cookie).await;
    assert!(status.contains(" 101 "), "{status}");
    assert_eq!(echoed.as_deref(), Some("hi over ws"));
    let (status, _) = wss(root, host, port, "x=y").await;
    assert!(
        !status.contains(" 101 "),
        "WSS without the cookie: {status}"
    );
}

fn tls_env(resolver: bool, hostname: &str, domains: Option<&str>) -> Vec<(String, String)> {
    let p = "APPPROXY_AUTHGATE__WORKER__";
    let mut env = vec![
        (format!("{p}TLS_LISTEN"), "true".into()),
        (format!("{p}HOSTNAME"), hostname.into()),
    ];
    if resolver {
        env.push((format!("{p}CERT_RESOLVER"), "acme".into()));
    }
    if let Some(d) = domains {
        env.push((format!("{p}CERT_DOMAINS"), d.into()));
    }
    env
}

/// A stack with one port-mode worker on HTTPS for `host`, its certificate from pebble by
/// TLS-ALPN-01 on the first port. Fields drop in order: the worker, the CA, the stack.
struct PortTls {
    worker: GatedWorker,
    _pebble: Pebble,
    /// Pebble's root (PEM).
    root: String,
    lo: u16,
    hi: u16,
    /// authgate's HTTPS worker API (`[tls] listen`), with the test PKI's certificate.
    api_port: u16,
    /// The test PKI's CA (what a client of the worker API trusts).
    pki_ca: std::path::PathBuf,
    stack: Stack,
}

async fn port_tls(authority: &str, host: &str) -> PortTls {
    let stack = Stack::start(Db::Sqlite).await;
    let pki = Pki::new(stack.dir.path());
    let (lo, hi) = Stack::port_range(2);
    let pebble = Pebble::start(stack.dir.path(), &pki, e2e::free_port(), lo);
    let api_port = e2e::free_port();
    let mut env = tls_env(true, host, None);
    let p = "APPPROXY_AUTHGATE__TLS__";
    env.extend([
        (format!("{p}LISTEN"), format!("127.0.0.1:{api_port}")),
        (format!("{p}CERT_FILE"), pki.cert.display().to_string()),
        (format!("{p}KEY_FILE"), pki.key.display().to_string()),
    ]);
    let spec = WorkerSpec {
        frontend: TraefikFrontend::Ports { lo, hi },
        env,
        traefik: TraefikExtra {
            args: pebble.traefik_args("tls-alpn"),
            env: Vec::new(),
        },
        ..WorkerSpec::ports(authority, 2)
    };
    let worker = stack.start_gated_worker(spec).await;
    let root = pebble.root_pem().await;
    PortTls {
        worker,
        _pebble: pebble,
        root,
        lo,
        hi,
        api_port,
        pki_ca: pki.ca.clone(),
        stack,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_mode_https_with_an_acme_certificate_by_tls_alpn() {
    let host = "w1.test";
    let PortTls {
        worker,
        root,
        lo,
        hi,
        api_port,
        pki_ca,
        stack,
        ..
    } = &port_tls("https-port", host).await;
    let (root, lo, hi, api_port) = (root.as_str(), *lo, *hi, *api_port);
    let http = client(root, &[host]);
    let echo = HttpEcho::start("app").await;

    let setup = webui_launch(stack, Uuid::new_v4(), echo.port).await;
    let port = setup
        .strip_prefix(&format!("https://{host}:"))
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("an https:// link on the worker's hostname");
    assert!((lo..=hi).contains(&port));
    https_launch_serves(worker, root, host, port, &setup, &http).await;

    // The provider's answer for the circuit is https:// too.
    let (_, list) = stack.manager(Method::GET, "/v2/circuits", None).await;
    let url = list["circuits"][0]["url"].as_str().unwrap_or_default();
    assert_eq!(url, format!("https://{host}:{port}"));
    // Plain HTTP on the TLS port reaches no router (every router of the worker is TLS-only):
    // Traefik's bare 404, never the app.
    let plain = e2e::no_redirect_client();
    let r = plain
        .get(format!("http://127.0.0.1:{port}/lab"))
        .send()
        .await;
    let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
    assert!(
        status == 404 || status == 0,
        "plain HTTP on a TLS port: {status}"
    );

    // The worker API users and the Manager reach is authgate's HTTPS listener: registered as
    // the worker's api_port, with setup and health only (no ForwardAuth, no metrics).
    let me = stack.worker_record("https-port").await;
    assert_eq!(me["api_port"], api_port, "{me}");
    let ca = std::fs::read(pki_ca).unwrap();
    let api = e2e::client_builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{api_port}");
    let status = |path: &'static str| {
        let (api, base) = (api.clone(), base.clone());
        async move {
            api.get(format!("{base}{path}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(status("/health").await.unwrap(), 200);
    assert_eq!(status("/metrics").await.unwrap(), 404);
    assert_eq!(
        status("/auth/00000000-0000-0000-0000-000000000000")
            .await
            .unwrap(),
        404
    );
    assert_eq!(
        status("/setup?token=x").await.unwrap(),
        401,
        "setup answers there"
    );
    let plain = e2e::no_redirect_client();
    assert!(
        plain
            .get(format!("http://127.0.0.1:{api_port}/health"))
            .send()
            .await
            .is_err(),
        "plain HTTP on the worker API's TLS port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_mode_https_with_a_dns01_wildcard_certificate_redirect_and_hsts() {
    let stack = Stack::start(Db::Sqlite).await;
    let pki = Pki::new(stack.dir.path());
    let (apps, web) = (e2e::free_port(), e2e::free_port());
    let pebble = Pebble::start(stack.dir.path(), &pki, web, apps);
    let mut args = pebble.traefik_args("dns");
    args.extend(["--web-port", &web.to_string(), "--hsts-seconds", "600"].map(String::from));
    let spec = WorkerSpec {
        env: tls_env(true, "apps.test", Some("[\"*.apps.test\"]")),
        traefik: TraefikExtra {
            args,
            env: pebble.dns_env(),
        },
        ..WorkerSpec::wildcard("https-wild", apps, ".apps.test")
    };
    let worker = stack.start_gated_worker(spec).await;
    let root = pebble.root_pem().await;
    let echo = HttpEcho::start("app").await;

    let setup = webui_launch(&stack, Uuid::new_v4(), echo.port).await;
    let host = setup
        .strip_prefix("https://")
        .and_then(|r| r.split(':').next())
        .expect("an https:// link")
        .to_string();
    assert!(host.ends_with(".apps.test"), "{host}");
    let http = client(&root, &[&host, "other.apps.test"]);
    https_launch_serves(&worker, &root, &host, apps, &setup, &http).await;

    // One wildcard certificate: a second circuit's host is served at once, no new order.
    let v = stack
        .create_circuit(
            "https-wild",
            Uuid::new_v4(),
            Uuid::new_v4(),
            echo.port,
            &json!({"app": "jupyter", "subdomain": "other", "open_to_public": true}),
        )
        .await;
    assert_eq!(v["url"], format!("https://other.apps.test:{apps}"));
    let url = format!("https://other.apps.test:{apps}/x");
    let (s, h, _) = eventually("the second host", Duration::from_secs(30), || async {
        e2e::try_http_get(&http, &url, &[])
            .await
            .filter(|(s, _, _)| *s == 200)
    })
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["strict-transport-security"], "max-age=600");
    assert_eq!(
        pebble.issued(),
        1,
        "one wildcard certificate for both hosts"
    );

    // Plain HTTP on `web` is sent to HTTPS (and the challenge path is Traefik's).
    let plain = client(&root, &[&host]);
    let (s, h, _) = e2e::try_http_get(&plain, &format!("http://{host}:{web}/lab?a=1"), &[])
        .await
        .expect("web answers");
    assert_eq!(s, 301, "permanent redirect (GET)");
    assert_eq!(h["location"], format!("https://{host}:{apps}/lab?a=1"));
}

/// A real Chromium that trusts the ACME CA's root (its own NSS database) opens the setup link
/// the WebUI flow answers: it lands on the app over HTTPS, holding the `__Host-` cookie, with
/// no certificate warning (a certificate error would stop the navigation on Chrome's
/// interstitial page instead of the app).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_trusting_the_local_ca_opens_an_app_over_https() {
    // `*.localhost` is loopback for Chromium without any resolver set-up.
    let host = "gw.localhost";
    let t = port_tls("https-browser", host).await;
    let (stack, root) = (&t.stack, t.root.as_str());
    let echo = HttpEcho::start("kernel").await;
    let setup = webui_launch(stack, Uuid::new_v4(), echo.port).await;
    assert!(setup.starts_with(&format!("https://{host}:")), "{setup}");
    // Wait for the certificate with a client that trusts the same root.
    let http = client(root, &[host]);
    eventually(
        "the ACME certificate is served",
        Duration::from_secs(90),
        || async {
            let origin = setup.split("/_appproxy/").next().unwrap_or_default();
            e2e::try_http_get(&http, &format!("{origin}/"), &[])
                .await
                .map(|_| ())
        },
    )
    .await;

    let browser = e2e::browser::Browser::start_trusting(Some(root)).await;
    browser.goto(&setup).await;
    let text = browser.text().await;
    assert!(
        text.contains("backend=kernel path=/lab"),
        "{text} at {}",
        browser.url().await
    );
    assert!(browser.url().await.starts_with(&format!("https://{host}:")));
    let cookies = browser.cookies().await;
    assert!(
        cookies
            .iter()
            .any(|(n, _)| n.starts_with("__Host-appproxy_")),
        "{cookies:?}"
    );
    browser.quit().await;
}

/// Certificate files of one's own: replaced on disk and `dynamic.yml` touched, Traefik serves
/// the new certificate to new handshakes without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_certificate_files_are_reloaded_without_a_restart() {
    let stack = Stack::start(Db::Sqlite).await;
    let pki = Pki::new(stack.dir.path());
    let (lo, hi) = Stack::port_range(1);
    let spec = WorkerSpec {
        frontend: TraefikFrontend::Ports { lo, hi },
        env: tls_env(false, "127.0.0.1", None),
        traefik: TraefikExtra {
            args: vec!["--tls".into()],
            env: Vec::new(),
        },
        ..WorkerSpec::ports("https-files", 1)
    };
    let worker = stack.start_gated_worker(spec).await;
    let echo = HttpEcho::start("app").await;
    let v = stack
        .create_circuit(
            "https-files",
            Uuid::new_v4(),
            Uuid::new_v4(),
            echo.port,
            &json!({"open_to_public": true}),
        )
        .await;
    let url = format!("{}/x", v["url"].as_str().unwrap());
    assert_eq!(url, format!("https://127.0.0.1:{lo}/x"));
    let ca = std::fs::read(&pki.ca).unwrap();
    let trusting = e2e::client_builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let insecure = e2e::client_builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually("served", e2e::patience(), || async {
        let r = insecure.get(&url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(
        trusting.get(&url).send().await.is_err(),
        "the stack's self-signed default certificate is not the PKI's"
    );
    let pid = worker.traefik.proc.pid();
    std::fs::copy(&pki.cert, &stack.cert.0).unwrap();
    std::fs::copy(&pki.key, &stack.cert.1).unwrap();
    let dynamic = worker.traefik.config_dir().join("dynamic.yml");
    let text = std::fs::read_to_string(&dynamic).unwrap();
    std::fs::write(&dynamic, text).unwrap();
    eventually("the new certificate", Duration::from_secs(20), || async {
        let r = trusting.get(&url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert_eq!(worker.traefik.proc.pid(), pid, "no restart");
}

/// Per-host certificates by HTTP-01 in wildcard mode: the challenge arrives on the `web` entry
/// point (which redirects everything else to HTTPS), and each circuit's host gets its own
/// certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_mode_per_host_certificates_by_http01() {
    let stack = Stack::start(Db::Sqlite).await;
    let pki = Pki::new(stack.dir.path());
    let (apps, web) = (e2e::free_port(), e2e::free_port());
    let pebble = Pebble::start(stack.dir.path(), &pki, web, apps);
    let mut args = pebble.traefik_args("http");
    args.extend(["--web-port".to_string(), web.to_string()]);
    let spec = WorkerSpec {
        env: tls_env(true, "apps.test", None),
        traefik: TraefikExtra {
            args,
            env: Vec::new(),
        },
        ..WorkerSpec::wildcard("https-http01", apps, ".apps.test")
    };
    let _worker = stack.start_gated_worker(spec).await;
    let root = pebble.root_pem().await;
    let echo = HttpEcho::start("app").await;
    for sub in ["one", "two"] {
        let v = stack
            .create_circuit(
                "https-http01",
                Uuid::new_v4(),
                Uuid::new_v4(),
                echo.port,
                &json!({"subdomain": sub, "open_to_public": true}),
            )
            .await;
        let host = format!("{sub}.apps.test");
        assert_eq!(v["url"], format!("https://{host}:{apps}"));
        let http = client(&root, &[&host]);
        let url = format!("https://{host}:{apps}/x");
        let (s, _, body) = eventually(
            "a certificate for the host",
            Duration::from_secs(90),
            || async { e2e::try_http_get(&http, &url, &[]).await },
        )
        .await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("backend=app"), "{body}");
    }
    assert_eq!(pebble.issued(), 2, "one certificate per host");
}
