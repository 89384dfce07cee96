//! WebAssembly auth plugins through real Traefik: the shipped examples allow and deny as
//! documented, plugin headers reach the app (and spoofed ones never do), failures deny without
//! disturbing other circuits.

use std::{path::Path, time::Instant};

use e2e::{Db, Stack, WorkerSpec, backends::HttpEcho};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const SPIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "ap_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "ap_decide") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plugins_through_traefik_and_failures_deny() {
    let stack = Stack::start(Db::Sqlite).await;
    // The shipped examples plus a runaway plugin, in this test's plugin directory.
    let dir = stack.dir.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../authgate/plugins");
    for f in ["api-keys.wat", "tenant.wat", "office-hours.wat"] {
        std::fs::copy(examples.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("spin.wat"), SPIN).unwrap();
    let mut spec = WorkerSpec::ports("plug-1", 6);
    spec.env.push((
        "APPPROXY_AUTHGATE__PLUGINS__DIR".into(),
        dir.display().to_string(),
    ));
    let w = stack.start_gated_worker(spec).await;
    let http = e2e::no_redirect_client();
    let (_, _, body) = e2e::http_get(&http, &format!("{}/plugins", w.base()), &[]).await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["loaded"].as_array().unwrap().len(), 4, "{status}");
    let echo = HttpEcho::start("model").await;

    // api-keys on a public inference endpoint: the plugin is the only check.
    let ep = Uuid::new_v4();
    let (s, v) = stack
        .manager(
            Method::POST,
            &format!("/v2/endpoints/{ep}"),
            Some(&json!({"service_name": "llm", "open_to_public": true,
                         "auth_plugin": {"name": "api-keys", "config": {"keys": ["k-1", "k-2"]}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let url = v["endpoint"].as_str().unwrap().to_string();
    stack.add_replica(ep, Uuid::new_v4(), echo.port).await;
    e2e::wait_status(&http, &url, &[("x-api-key", "k-2")], 200).await;
    let before = echo.count();
    for (key, want) in [(None, 401), (Some("k-3"), 401), (Some("k-1,k-2"), 401)] {
        let mut req = http.get(&url).header("accept", "application/json");
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), want, "{key:?}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["msg"]
                .as_str()
                .unwrap()
                .contains("missing or unknown API key"),
            "{v}"
        );
    }
    assert_eq!(echo.count(), before, "denied requests reached the model");
    // A spoofed plugin header never reaches the app.
    let spoofed = [("x-api-key", "k-1"), ("x-plugin-tenant", "evil")];
    assert_eq!(e2e::http_get(&http, &url, &spoofed).await.0, 200);
    let last = echo.requests().pop().unwrap();
    assert!(
        !last.headers.iter().any(|(k, _)| k == "x-plugin-tenant"),
        "{:?}",
        last.headers
    );

    // tenant on a private interactive circuit: after the cookie, the plugin; its header reaches
    // the app.
    let user = Uuid::new_v4();
    let (s, v) = stack
        .manager(
            Method::POST,
            "/v2/circuits",
            Some(&json!({"app": "nb", "worker": "plug-1", "user_id": user,
                         "auth_plugin": {"name": "tenant", "config": {"tenants": ["acme"]}},
                         "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1",
                                     "kernel_port": echo.port}]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let nb = v["url"].as_str().unwrap().to_string();
    let setup = v["setup_url"].as_str().unwrap().to_string();
    let cookie = e2e::setup_cookie(&http, &setup).await;
    assert_eq!(
        http.get(&nb)
            .header("x-tenant", "acme")
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "no cookie"
    );
    // Until authgate's circuit map (refreshed every 2 s) has the plugin config: 503, retry.
    e2e::wait_status(
        &http,
        &nb,
        &[("cookie", &cookie), ("x-tenant", "initech")],
        403,
    )
    .await;
    // Look-alike spellings of the plugin's header (WSGI servers merge `X_Plugin_Tenant` and
    // `X-Plugin-Tenant` into one variable) are stripped; only the plugin's value arrives.
    let tenant = [
        ("cookie", cookie.as_str()),
        ("x-tenant", "acme"),
        ("X_Plugin_Tenant", "evil-1"),
        ("X-Plugin_Tenant", "evil-2"),
        ("x_plugin-tenant", "evil-3"),
        ("X-PLUGIN-ROLE", "admin"),
        ("X_Plugin_Role", "admin"),
    ];
    assert_eq!(e2e::http_get(&http, &nb, &tenant).await.0, 200);
    let last = echo.requests().pop().unwrap();
    assert!(
        last.headers
            .contains(&("x-plugin-tenant".into(), "acme".into())),
        "{:?}",
        last.headers
    );
    let plugin_like: Vec<_> = last
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase().replace('_', "-");
            k.starts_with("x-plugin-")
        })
        .collect();
    assert_eq!(
        plugin_like,
        vec![&("x-plugin-tenant".to_string(), "acme".to_string())],
        "client-sent plugin headers reached the app"
    );

    // office-hours: open all day → allowed; an empty window → 403.
    let hours = |from: u32, to: u32| {
        json!({"app": "oh", "worker": "plug-1", "user_id": user, "open_to_public": true,
               "auth_plugin": {"name": "office-hours",
                               "config": {"from_hour": from, "to_hour": to,
                                          "weekdays": ["0","1","2","3","4","5","6"]}},
               "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1",
                           "kernel_port": echo.port}]})
    };
    let (_, open) = stack
        .manager(Method::POST, "/v2/circuits", Some(&hours(0, 24)))
        .await;
    let (_, closed) = stack
        .manager(Method::POST, "/v2/circuits", Some(&hours(5, 5)))
        .await;
    let (open, closed) = (
        open["url"].as_str().unwrap().to_string(),
        closed["url"].as_str().unwrap().to_string(),
    );
    e2e::wait_status(&http, &open, &[], 200).await;
    e2e::wait_status(&http, &closed, &[], 403).await;

    // A runaway plugin and an unknown plugin deny (503) fast; the other circuits are unaffected.
    let mk = |name: &str| {
        json!({"app": "x", "worker": "plug-1", "user_id": user, "open_to_public": true,
               "auth_plugin": {"name": name, "config": {}},
               "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1",
                           "kernel_port": echo.port}]})
    };
    let (_, spin) = stack
        .manager(Method::POST, "/v2/circuits", Some(&mk("spin")))
        .await;
    let (_, missing) = stack
        .manager(Method::POST, "/v2/circuits", Some(&mk("nope")))
        .await;
    for u in [
        spin["url"].as_str().unwrap(),
        missing["url"].as_str().unwrap(),
    ] {
        e2e::wait_status(&http, u, &[], 503).await;
        let t = Instant::now();
        assert_eq!(http.get(u).send().await.unwrap().status(), 503);
        assert!(t.elapsed().as_millis() < 1000, "{:?}", t.elapsed());
    }
    assert_eq!(http.get(&open).send().await.unwrap().status(), 200);
    let r = http
        .get(&url)
        .header("x-api-key", "k-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Bad plugin references are refused by the provider.
    for bad in [
        json!({"name": "../x"}),
        json!({"name": "a", "config": [1]}),
        json!({"name": "a", "extra": 1}),
    ] {
        let mut body = mk("x");
        body["auth_plugin"] = bad.clone();
        let (s, _) = stack
            .manager(Method::POST, "/v2/circuits", Some(&body))
            .await;
        assert_eq!(s, 400, "{bad}");
    }
    // The plugin config never reaches etcd.
    let dump = stack.etcd_dump().await;
    assert!(
        !dump.values().any(|v| v.contains("k-1")),
        "a plugin secret was written to etcd"
    );
}
