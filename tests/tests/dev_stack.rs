//! The dev stack itself (`./deploy/up`, as an operator starts it): configured as a Backend.AI
//! coordinator is deployed, it runs Backend.AI's launch sequence with no token on `/v2/conf`
//! (today's Manager sends none) and refuses a kernel outside `allowed_kernel_networks` with
//! Backend.AI's body. The stack runs in a directory of its own on free loopback ports and is
//! stopped by `./deploy/down` (by the PIDs it recorded) when the test ends.

use std::{collections::HashMap, path::PathBuf, process::Command, time::Duration};

use e2e::{TempDir, conf_body, free_port, free_port_range, repo_root};
use serde_json::{Value, json};
use uuid::Uuid;

/// A `./deploy/up` stack; `./deploy/down` on drop.
struct DevStack {
    env: Vec<(String, String)>,
    run: PathBuf,
    _dir: TempDir,
}

impl DevStack {
    fn up() -> DevStack {
        let dir = TempDir::new("dev-stack");
        let run = dir.path().join("run");
        let (lo, hi) = free_port_range(4);
        let mut env: Vec<(String, String)> = [
            "ETCD_PORT",
            "ETCD_PEER_PORT",
            "REDIS_PORT",
            "PROVIDER_PORT",
            "AUTHGATE_PORT",
            "TRAEFIK_API_PORT",
            "INGEST_PORT",
            "DEMO_PORT",
        ]
        .iter()
        .map(|k| (format!("APPPROXY_{k}"), free_port().to_string()))
        .collect();
        env.extend([
            ("APPPROXY_PORT_LO".into(), lo.to_string()),
            ("APPPROXY_PORT_HI".into(), hi.to_string()),
            ("APPPROXY_RUN_DIR".into(), run.display().to_string()),
            // The harness built the binaries; a nested cargo would wait on this run's lock.
            ("APPPROXY_SKIP_BUILD".into(), "1".into()),
        ]);
        let stack = DevStack {
            env,
            run,
            _dir: dir,
        };
        let out = stack.script("up");
        assert!(
            out.status.success(),
            "deploy/up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    fn script(&self, name: &str) -> std::process::Output {
        Command::new(repo_root().join("deploy").join(name))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run a deploy script")
    }

    /// What deploy/up wrote to `<run>/env` for clients.
    fn vars(&self) -> HashMap<String, String> {
        std::fs::read_to_string(self.run.join("env"))
            .expect("deploy/up writes its env file")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn port(&self, key: &str) -> u16 {
        let (_, v) = (self.env.iter())
            .find(|(k, _)| k == key)
            .expect("a port of the stack");
        v.parse().expect("a port")
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        let out = self.script("down");
        if !out.status.success() {
            eprintln!(
                "deploy/down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_stack_runs_backendais_launch_sequence_without_a_token() {
    let stack = tokio::task::spawn_blocking(DevStack::up).await.unwrap();
    let vars = stack.vars();
    let provider = vars["APPPROXY_PROVIDER_URL"].clone();
    let demo = stack.port("APPPROXY_DEMO_PORT");
    let http = e2e::no_redirect_client();
    let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
    let conf = |body: Value| {
        let (http, url) = (http.clone(), format!("{provider}/v2/conf"));
        async move {
            let r = http.post(url).json(&body).send().await.expect("provider");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // The Manager's call, without any token: a grant.
    let (s, v) = conf(conf_body(session, user, demo)).await;
    assert_eq!(s, 200, "{v}");
    let grant = v["token"].as_str().expect("a grant token").to_string();
    // The WebUI's add → auth → setup → app, on the dev stack's worker and demo backend.
    let add = format!("{provider}/v2/proxy/{grant}/{session}/add?app=jupyter&protocol=http");
    let (s, _, body) = e2e::http_get(&http, &add, &[]).await;
    assert_eq!(s, 200, "{body}");
    let url = serde_json::from_str::<Value>(&body).unwrap()["url"]
        .as_str()
        .expect("the auth url")
        .to_string();
    let (s, _, body) = e2e::http_get(&http, &url, &[("accept", "application/json")]).await;
    assert_eq!(s, 200, "{body}");
    let setup = serde_json::from_str::<Value>(&body).unwrap()["redirect_url"]
        .as_str()
        .expect("the setup link")
        .to_string();
    let (s, h, body) = e2e::http_get(&http, &setup, &[]).await;
    assert_eq!(s, 302, "{body}");
    let cookie = e2e::cookie_pair(&e2e::session_set_cookie(&h));
    let origin = setup.split("/_appproxy/").next().unwrap();
    let served = e2e::eventually(
        "the demo through the worker",
        Duration::from_secs(20),
        || {
            let (http, cookie, origin) = (http.clone(), cookie.clone(), origin.to_string());
            async move {
                let (s, _, body) =
                    e2e::http_get(&http, &format!("{origin}/"), &[("cookie", &cookie)]).await;
                (s == 200).then_some(body)
            }
        },
    )
    .await;
    assert!(served.contains("appproxy demo backend"), "{served}");

    // A kernel outside allowed_kernel_networks: refused with Backend.AI's body.
    let mut body = conf_body(session, user, demo);
    body["kernel_host"] = json!("10.9.9.9");
    let (s, v) = conf(body).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["type"], "https://api.backend.ai/probs/generic-forbidden");
    assert!(
        v["msg"]
            .as_str()
            .unwrap_or("")
            .contains("allowed_kernel_networks"),
        "{v}"
    );
}
