//! What an operator works with, end to end: JSON logs (a request id and the matched route on
//! every request line, a line per state change, never a credential).

use e2e::{Db, Stack, WorkerSpec, backends::HttpEcho, eventually, patience};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Every line of a JSON log, parsed; panics on a line that is not one JSON object.
fn json_lines(log: &str, what: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| panic!("{what}: not a JSON line: {l}"))
        })
        .collect()
}

/// The lines whose message is `msg`.
fn with_message<'a>(lines: &'a [Value], msg: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["message"] == msg).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_request_and_route_and_state_changes_and_never_a_credential() {
    let json_env = || vec![("APPPROXY_LOG_FORMAT".to_string(), "json".to_string())];
    let stack = Stack::start_with(Db::Sqlite, json_env()).await;
    let mut spec = WorkerSpec::ports("ops-logs", 2);
    spec.env.extend(json_env());
    let w = stack.start_gated_worker(spec).await;
    let echo = HttpEcho::start("app").await;
    let http = e2e::no_redirect_client();
    let user = Uuid::new_v4();
    let v = stack
        .create_circuit(
            &w.spec.authority,
            user,
            Uuid::new_v4(),
            echo.port,
            &json!({"login_session_token": "webui-session-secret"}),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let (url, setup) = (v["url"].as_str().unwrap(), v["setup_url"].as_str().unwrap());
    let cookie = e2e::setup_cookie(&http, setup).await;
    e2e::wait_status(&http, url, &[("cookie", &cookie)], 200).await;
    // A call with the caller's request id: the same id on its log line and its answer.
    let resp = stack
        .http
        .get(format!("{}/v2/circuits/{id}", stack.provider_url()))
        .header("X-BackendAI-Token", &stack.manager_token)
        .header("x-request-id", "ops-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "ops-req-1");
    let (s, _) = stack
        .manager(
            Method::POST,
            "/v2/revocations",
            Some(&json!({"user_id": user})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = stack
        .manager(Method::DELETE, &format!("/v2/circuits/{id}"), None)
        .await;
    assert_eq!(s, 200);

    let provider = json_lines(&stack.provider_log_all(), "provider");
    let mine: Vec<&Value> = with_message(&provider, "Request")
        .into_iter()
        .filter(|l| l["span"]["request_id"] == "ops-req-1")
        .collect();
    assert_eq!(mine.len(), 1, "{provider:?}");
    assert_eq!(mine[0]["span"]["route"], "/v2/circuits/{circuit_id}");
    assert_eq!(mine[0]["span"]["method"], "GET");
    assert_eq!(mine[0]["status"], 200);
    assert_eq!(mine[0]["level"], "INFO");
    // Every request line carries an id and a route.
    for l in with_message(&provider, "Request") {
        assert!(
            l["span"]["request_id"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{l}"
        );
        assert!(l["span"]["route"].is_string(), "{l}");
    }
    // State changes, one line each, with the circuit's id where it has one.
    for msg in ["Worker registered", "Circuit created", "Circuit removed"] {
        let lines = with_message(&provider, msg);
        assert!(!lines.is_empty(), "no {msg:?} line");
        if msg.starts_with("Circuit") {
            assert!(lines.iter().any(|l| l["circuit"] == id.as_str()), "{msg}");
        }
    }
    assert_eq!(with_message(&provider, "Access revoked").len(), 1);

    let authgate = json_lines(&w.authgate_log_all(), "authgate");
    let setup_lines: Vec<&Value> = with_message(&authgate, "Request")
        .into_iter()
        .filter(|l| l["span"]["route"] == "/_appproxy/setup" || l["span"]["route"] == "/setup")
        .collect();
    assert!(!setup_lines.is_empty(), "{authgate:?}");
    for l in setup_lines {
        assert!(
            l["span"]["request_id"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{l}"
        );
    }
    // ForwardAuth's requests (one per proxied request) are not logged at info.
    assert!(
        !authgate
            .iter()
            .any(|l| l["span"]["route"] == "/auth/{circuit}" && l["level"] == "INFO"),
        "ForwardAuth logged at info"
    );

    // No credential in either log: the setup token, the cookie, the login session.
    let token = setup
        .split("token=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let cookie_value = cookie.split_once('=').unwrap().1;
    for (name, log) in [
        ("provider", stack.provider_log_all()),
        ("authgate", w.authgate_log_all()),
    ] {
        for secret in [
            token,
            cookie_value,
            "webui-session-secret",
            &stack.manager_token,
        ] {
            assert!(!log.contains(secret), "{name} logged a credential");
        }
    }
}

/// The metric names a text uses: every `appproxy_…` and `backendai_…` word.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for prefix in ["appproxy_", "backendai_"] {
        for (at, _) in text.match_indices(prefix) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// The metric families of a `/metrics` text (`# TYPE <name> <kind>`), with their kinds.
fn families(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.to_string()))
        })
        .collect()
}

fn monitoring(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_check_and_use_only_exported_metrics() {
    let rules = monitoring("alerts.yml");
    let dashboard = monitoring("grafana/appproxy.json");
    // promtool (Debian's prometheus; deploy/lib.sh installs it) checks the rules.
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/monitoring/alerts.yml"),
        )
        .output()
        .expect("promtool (Debian package prometheus; deploy/lib.sh installs it)");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The dashboard: JSON, every panel's queries against the `datasource` variable.
    let d: Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let panels = d["panels"].as_array().unwrap();
    let queries: Vec<&Value> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .collect();
    assert!(queries.len() >= 20, "{}", queries.len());
    for q in &queries {
        assert!(q["expr"].as_str().is_some_and(|e| !e.is_empty()), "{q}");
        assert_eq!(q["datasource"]["uid"], "${datasource}");
    }

    // A worker with a plugin circuit (plugin metrics), one request of each kind.
    let stack = Stack::start(Db::Sqlite).await;
    let mut spec = WorkerSpec::ports("ops-metrics", 3);
    spec.env.push((
        "APPPROXY_AUTHGATE__PLUGINS__DIR".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../authgate/plugins").into(),
    ));
    let w = stack.start_gated_worker(spec).await;
    let echo = HttpEcho::start("app").await;
    let http = e2e::no_redirect_client();
    let v = stack
        .create_circuit(
            &w.spec.authority,
            Uuid::new_v4(),
            Uuid::new_v4(),
            echo.port,
            &json!({"open_to_public": true,
                    "auth_plugin": {"name": "api-keys", "config": {"keys": ["k-1"]}}}),
        )
        .await;
    let url = v["url"].as_str().unwrap();
    e2e::wait_status(&http, url, &[("x-api-key", "k-1")], 200).await;
    let scrape = |url: String| {
        let http = http.clone();
        async move { e2e::metrics_text(&http, &url).await }
    };
    let exported: std::collections::BTreeMap<String, String> =
        families(&(scrape(stack.provider_url()).await + &scrape(w.base()).await));
    let used = metric_names(&(rules + &dashboard));
    assert!(used.len() >= 20, "{used:?}");
    for name in &used {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (exported.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(
            exported.contains_key(family),
            "{name} is used by an alert or the dashboard but not exported"
        );
    }
}

/// `appproxyctl` with the stack's provider `i` and manager token; (exit code, stdout, stderr).
fn ctl(stack: &Stack, i: usize, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(e2e::workspace_bin("appproxyctl"))
        .args(args)
        .env("APPPROXY_PROVIDER_URL", stack.provider_url_at(i))
        .env("APPPROXY_MANAGER_TOKEN", &stack.manager_token)
        .env_remove("APPPROXY_CTL_CONFIG")
        .output()
        .expect("run appproxyctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ctl` that must succeed; its stdout.
fn ctl_ok(stack: &Stack, i: usize, args: &[&str]) -> String {
    let (code, out, err) = ctl(stack, i, args);
    assert_eq!(code, 0, "appproxyctl {args:?}: {out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appproxyctl_runs_every_command_and_doctor_finds_drift_made_behind_the_providers_back() {
    // Two providers (one leads and repairs etcd; the follower answers the API while the
    // leader is frozen), a long lease so the follower does not take over meanwhile.
    let stack = Stack::start_opts(e2e::Opts {
        providers: 2,
        provider_extra_env: vec![(
            "APPPROXY_PROVIDER__HA__LEASE_TTL_SECONDS".into(),
            "60".into(),
        )],
        ..e2e::Opts::new(Db::Postgres)
    })
    .await;
    let w = stack
        .start_gated_worker(WorkerSpec::ports("ops-ctl", 4))
        .await;
    let echo = HttpEcho::start("app").await;
    let authority = w.spec.authority.clone();

    // Usage and settings errors: exit 2, and a clear message.
    let out = std::process::Command::new(e2e::workspace_bin("appproxyctl"))
        .args(["workers", "list"])
        .env_remove("APPPROXY_PROVIDER_URL")
        .env_remove("APPPROXY_MANAGER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no provider URL"));

    // Workers: list (table and JSON), show.
    let table = ctl_ok(&stack, 0, &["workers", "list"]);
    assert!(table.starts_with("AUTHORITY"), "{table}");
    assert!(table.contains(&authority), "{table}");
    let list: Value =
        serde_json::from_str(&ctl_ok(&stack, 0, &["--json", "workers", "list"])).unwrap();
    assert_eq!(list[0]["authority"], authority.as_str());
    assert_eq!(list[0]["status"], "ALIVE");
    let show = ctl_ok(&stack, 0, &["workers", "show", &authority]);
    assert!(show.contains("TRAEFIK ROOT KEY:"), "{show}");
    let (code, _, err) = ctl(&stack, 0, &["workers", "show", "nobody"]);
    assert_eq!((code, err.contains("no worker nobody")), (1, true), "{err}");

    // Circuits: list with filters, show, delete.
    let user = Uuid::new_v4();
    let v = stack
        .create_circuit(&authority, user, Uuid::new_v4(), echo.port, &json!({}))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let mine = ctl_ok(
        &stack,
        0,
        &[
            "circuits",
            "list",
            "--worker",
            &authority,
            "--user",
            &user.to_string(),
        ],
    );
    assert!(mine.contains(&id), "{mine}");
    // The table names the worker by its authority.
    assert!(
        mine.lines().nth(1).is_some_and(|l| l.contains(&authority)),
        "{mine}"
    );
    let none = ctl_ok(
        &stack,
        0,
        &[
            "--json",
            "circuits",
            "list",
            "--user",
            &Uuid::new_v4().to_string(),
        ],
    );
    assert_eq!(serde_json::from_str::<Value>(&none).unwrap(), json!([]));
    let shown: Value =
        serde_json::from_str(&ctl_ok(&stack, 0, &["--json", "circuits", "show", &id])).unwrap();
    assert_eq!(shown["id"], id.as_str());

    // Drain: no new circuits on the worker, the existing one kept; undo.
    let drained: Value = serde_json::from_str(&ctl_ok(
        &stack,
        0,
        &["--json", "workers", "drain", &authority],
    ))
    .unwrap();
    assert_eq!(drained["draining"], true);
    let (s, body) = stack
        .manager(
            Method::POST,
            "/v2/circuits",
            Some(
                &json!({"app": "jupyter", "user_id": Uuid::new_v4(), "worker": authority,
                         "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1",
                                     "kernel_port": echo.port}]}),
            ),
        )
        .await;
    assert!(s >= 400, "a draining worker took a circuit: {s} {body}");
    assert_eq!(
        stack
            .manager(Method::GET, &format!("/v2/circuits/{id}"), None)
            .await
            .0,
        200
    );
    ctl_ok(&stack, 0, &["workers", "drain", &authority, "--undo"]);
    let again = stack
        .create_circuit(&authority, user, Uuid::new_v4(), echo.port, &json!({}))
        .await;
    let second = again["id"].as_str().unwrap().to_string();

    // Endpoints: list, show with routes and their health.
    let ep = Uuid::new_v4();
    let (s, v) = stack
        .manager(
            Method::POST,
            &format!("/v2/endpoints/{ep}"),
            Some(&json!({"service_name": "llm", "open_to_public": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    stack.add_replica(ep, Uuid::new_v4(), echo.port).await;
    let eps = ctl_ok(&stack, 0, &["endpoints", "list"]);
    assert!(
        eps.contains(&ep.to_string()) && eps.contains("REPLICAS"),
        "{eps}"
    );
    let one = ctl_ok(&stack, 0, &["endpoints", "show", &ep.to_string()]);
    assert!(
        one.contains("HEALTH") && one.contains(&echo.port.to_string()),
        "{one}"
    );

    // Revoke; enrol a worker, list and revoke its credential.
    ctl_ok(&stack, 0, &["revoke", "--user", &user.to_string()]);
    let (code, _, err) = ctl(&stack, 0, &["revoke"]);
    assert_eq!(code, 2, "{err}");
    let cred: Value = serde_json::from_str(&ctl_ok(
        &stack,
        0,
        &["--json", "workers", "enrol", "ops-new"],
    ))
    .unwrap();
    assert!(cred["credential"].as_str().is_some_and(|c| !c.is_empty()));
    let cid = cred["id"].as_str().unwrap();
    assert!(ctl_ok(&stack, 0, &["credentials", "list"]).contains(cid));
    ctl_ok(&stack, 0, &["credentials", "revoke", cid]);

    // Doctor: all agree.
    let etcd = stack.etcd.endpoints().join(",");
    let traefik = format!("{authority}=http://127.0.0.1:{}", w.traefik.api_port);
    let redis = stack.redis_url();
    let doctor = |i: usize| {
        ctl(
            &stack,
            i,
            &[
                "doctor",
                "--etcd",
                &etcd,
                "--traefik-api",
                &traefik,
                "--redis",
                &redis,
            ],
        )
    };
    let (code, out, err) = doctor(0);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no problems found"), "{out}");
    // A worker's Traefik that does not answer is a finding, not the end of the check.
    let gone = format!("{authority}=http://127.0.0.1:{}", e2e::free_port());
    let (code, out, err) = ctl(
        &stack,
        0,
        &["doctor", "--etcd", &etcd, "--traefik-api", &gone],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("[traefik]") && out.contains("does not answer"),
        "{out}"
    );

    // Drift behind the providers' back: the leader frozen (no repair), a circuit's router
    // deleted from etcd; the follower answers the doctor.
    let mut leader = None;
    for i in 0..2 {
        if stack
            .provider_status(i)
            .await
            .is_some_and(|s| s["leader"] == true)
        {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a leader");
    let follower = 1 - leader;
    e2e::signal(stack.provider_pid(leader), "-STOP");
    let root = stack.root_key(&authority);
    let mut etcd_client = stack.etcd_client().await;
    etcd_client
        .delete(
            // The router and its WebSocket twin (`ap-<id>-ws`).
            format!("{root}/http/routers/ap-{second}"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let (code, out, err) = doctor(follower);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("[missing_in_etcd]") && l.contains(&second)),
        "{out}"
    );
    let (code, out, _) = ctl(
        &stack,
        follower,
        &[
            "--json",
            "doctor",
            "--etcd",
            &etcd,
            "--traefik-api",
            &traefik,
        ],
    );
    e2e::signal(stack.provider_pid(leader), "-CONT");
    assert_eq!(code, 3);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "missing_in_etcd")
    );
    // The leader, back, repairs what it did not write; the doctor agrees again.
    eventually("the leader repairs etcd", patience(), || async {
        (doctor(0).0 == 0).then_some(())
    })
    .await;

    // Delete through the CLI.
    ctl_ok(&stack, 0, &["circuits", "delete", &id]);
    assert_eq!(
        stack
            .manager(Method::GET, &format!("/v2/circuits/{id}"), None)
            .await
            .0,
        404
    );
    let (code, _, err) = ctl(&stack, 0, &["circuits", "delete", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
}

/// `program args…` must succeed; its stdout and stderr.
fn must(program: &str, args: &[&str], env: &[(String, String)]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}: {text}");
    text
}

/// `KEY=value` lines of an environment file (comments skipped).
fn env_file(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn packages_build_their_units_verify_and_their_shipped_configs_check() {
    let repo = e2e::repo_root();
    let tmp = e2e::TempDir::new("packages");
    let out = tmp.path().join("debs");
    must(
        repo.join("deploy/package").to_str().unwrap(),
        &["--out", out.to_str().unwrap()],
        &[],
    );
    let root = tmp.path().join("root");
    let mut debs: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    debs.sort();
    assert_eq!(debs.len(), 2, "{debs:?}");
    for deb in &debs {
        let info = must("dpkg-deb", &["--info", deb.to_str().unwrap()], &[]);
        assert!(info.contains("Depends: adduser, openssl"), "{info}");
        must(
            "dpkg-deb",
            &["-x", deb.to_str().unwrap(), root.to_str().unwrap()],
            &[],
        );
    }
    let r = |p: &str| root.join(p.trim_start_matches('/'));
    for bin in [
        "usr/bin/appproxy-provider",
        "usr/bin/appproxyctl",
        "usr/bin/appproxy-authgate",
    ] {
        assert!(r(bin).is_file(), "{bin}");
    }
    assert!(r("usr/lib/appproxy-authgate/fastpath.wasm").is_file());
    // The conffiles are the shipped configs.
    let conffiles = must(
        "dpkg-deb",
        &["-I", debs[0].to_str().unwrap(), "conffiles"],
        &[],
    );
    assert!(conffiles.contains("/etc/appproxy/"), "{conffiles}");

    // The units, hardened, verify against the tree (Traefik's binary is the operator's: the
    // one the tests use stands in for it).
    std::fs::copy(e2e::traefik_bin(), r("usr/bin/traefik")).unwrap();
    // The targets they hang off (sysinit.target, …) are the system's: this machine's units.
    for e in std::fs::read_dir("/lib/systemd/system").expect("systemd units") {
        let e = e.unwrap();
        let to = r("lib/systemd/system").join(e.file_name());
        if !to.exists() && e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    let units = ["appproxy-provider", "appproxy-authgate", "appproxy-traefik"];
    for u in units {
        let path = r(&format!("lib/systemd/system/{u}.service"));
        let text = std::fs::read_to_string(&path).unwrap();
        for line in [
            "User=appproxy",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
        ] {
            assert!(text.contains(line), "{u}: {line}");
        }
        let caps = text
            .lines()
            .find(|l| l.starts_with("CapabilityBoundingSet="))
            .unwrap();
        let expected = match u {
            "appproxy-provider" => "CapabilityBoundingSet=",
            "appproxy-authgate" => "CapabilityBoundingSet=CAP_NET_ADMIN",
            _ => "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        };
        assert_eq!(caps, expected);
        let verify = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no", &format!("--root={}", root.display())])
            .arg(format!("/lib/systemd/system/{u}.service"))
            .output()
            .expect("systemd-analyze");
        let said = String::from_utf8_lossy(&verify.stderr).into_owned();
        assert!(verify.status.success(), "{u}: {said}");
        // Warnings about this machine (no systemd running, no such user here) are not about
        // the unit; anything naming the unit file is.
        assert!(!said.contains(&format!("{u}.service:")), "{u}: {said}");
    }

    // Install-time secrets, then --check-config on the shipped configs with them (as systemd
    // starts them: EnvironmentFile), paths inside the scratch tree.
    let root_s = root.to_str().unwrap();
    must(
        r("usr/lib/appproxy-provider/make-secrets")
            .to_str()
            .unwrap(),
        &["provider", root_s],
        &[],
    );
    must(
        r("usr/lib/appproxy-authgate/make-secrets")
            .to_str()
            .unwrap(),
        &["authgate", root_s],
        &[],
    );
    let key = std::fs::read_to_string(r("var/lib/appproxy/signing.pem")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    // What the service user (group `appproxy` on a real install: make-secrets sets owners only
    // there) must reach: its state directories, traversable by the group and made before
    // anything writes into them (Traefik's config is written there as that user), and the
    // configs, readable by the group (found by installing the packages on a machine: the
    // configs were root's alone and the key's directory 0700).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(r(p)).unwrap().permissions().mode() & 0o7777;
    for dir in [
        "var/lib/appproxy",
        "var/lib/appproxy-authgate",
        "var/lib/appproxy-traefik",
    ] {
        assert_eq!(mode(dir), 0o750, "{dir}");
    }
    for file in [
        "etc/appproxy/provider.toml",
        "etc/appproxy/authgate.toml",
        "etc/appproxy/provider.env",
        "etc/appproxy/authgate.env",
        "var/lib/appproxy/signing.pem",
    ] {
        assert_eq!(mode(file), 0o640, "{file}");
    }
    // A second run keeps what is there.
    must(
        r("usr/lib/appproxy-provider/make-secrets")
            .to_str()
            .unwrap(),
        &["provider", root_s],
        &[],
    );
    assert_eq!(
        std::fs::read_to_string(r("var/lib/appproxy/signing.pem")).unwrap(),
        key
    );
    let mut provider_env = env_file(&r("etc/appproxy/provider.env"));
    assert!(provider_env[0].1.len() >= 32);
    provider_env.push((
        "APPPROXY_PROVIDER__SECRETS__SIGNING_KEY_FILE".into(),
        r("var/lib/appproxy/signing.pem").display().to_string(),
    ));
    must(
        r("usr/bin/appproxy-provider").to_str().unwrap(),
        &[
            "--config",
            r("etc/appproxy/provider.toml").to_str().unwrap(),
            "--check-config",
        ],
        &provider_env,
    );
    std::fs::copy(
        r("var/lib/appproxy/signing.pub.pem"),
        r("etc/appproxy/provider.pub.pem"),
    )
    .unwrap();
    let mut gate_env = env_file(&r("etc/appproxy/authgate.env"));
    gate_env.extend([
        (
            "APPPROXY_AUTHGATE__KEYS__PROVIDER_PUBLIC_KEY_FILE".into(),
            r("etc/appproxy/provider.pub.pem").display().to_string(),
        ),
        // What the operator adds from `appproxyctl workers enrol`.
        (
            "APPPROXY_AUTHGATE__PROVIDER__WORKER_TOKEN".into(),
            "w1.0123456789abcdef".into(),
        ),
    ]);
    must(
        r("usr/bin/appproxy-authgate").to_str().unwrap(),
        &[
            "serve",
            "--config",
            r("etc/appproxy/authgate.toml").to_str().unwrap(),
            "--check-config",
        ],
        &gate_env,
    );
    // Without the secrets the shipped configs are refused (nothing secret ships).
    let bare = std::process::Command::new(r("usr/bin/appproxy-provider"))
        .args([
            "--config",
            r("etc/appproxy/provider.toml").to_str().unwrap(),
            "--check-config",
        ])
        .env_remove("APPPROXY_PROVIDER__SECRETS__MANAGER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(64));
}
