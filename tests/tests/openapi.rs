//! The provider's OpenAPI document (`GET /openapi.json`) against the live provider: every
//! operation it names is served (no router fallback), every route the router serves is in it,
//! and answers — this test's own over every operation, and with `APPPROXY_E2E_RECORD_DIR` set
//! every answer the e2e suite recorded — fit the schemas it gives them.

use std::collections::BTreeSet;

use e2e::{
    Db, Stack, WorkerSpec,
    backends::HttpEcho,
    openapi::{Answer, Checker, RECORD_DIR, is_fallback},
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// One request to the provider (no redirects followed); the answer, recorded.
async fn ask(
    stack: &Stack,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let http = e2e::no_redirect_client();
    stack.ask(&http, token, method, path, body, headers).await
}

/// A path of `template` with every parameter filled.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| {
            if s.starts_with('{') {
                Uuid::new_v4().to_string()
            } else {
                s.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_names_every_route_and_answers_fit_it() {
    let stack = Stack::start(Db::Sqlite).await;
    let _worker = stack.start_gated_worker(WorkerSpec::ports("oa-1", 4)).await;
    let echo = HttpEcho::start("app").await;
    let manager = stack.manager_token.clone();

    // The served document is the one the code makes, OpenAPI 3.1, with its auth schemes.
    let served = ask(&stack, None, "GET", "/openapi.json", None, &[]).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body, appproxy_provider::api::document());
    let printed = std::process::Command::new(e2e::workspace_bin("appproxy-provider"))
        .arg("--openapi")
        .output()
        .expect("appproxy-provider --openapi");
    assert!(printed.status.success());
    let printed: Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(printed, served.body, "--openapi prints the served document");
    // A validator nobody here wrote agrees it is an OpenAPI 3.1 document.
    let file = stack.dir.path().join("openapi.json");
    std::fs::write(&file, served.body.to_string()).unwrap();
    let validator = e2e::repo_root().join(".venv/bin/openapi-spec-validator");
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (deploy/lib.sh install_deps installs it)",
                validator.display()
            )
        });
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = served.body.clone();
    assert_eq!(doc["openapi"], "3.1.0");
    for scheme in ["manager_token", "worker_token", "metrics_token"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    let checker = Checker::new(doc.clone());
    let operations = checker.operations();
    let ids: BTreeSet<&str> = (doc["paths"].as_object().unwrap().values())
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    assert_eq!(ids.len(), operations.len(), "operation ids are unique");
    assert!(operations.len() >= 45, "{operations:?}");
    // Every error is Backend.AI's body.
    for (path, method) in &operations {
        let default = &doc["paths"][path][method]["responses"]["default"];
        assert_eq!(
            default["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{method} {path}"
        );
    }

    let mut answers = vec![served];
    // Every operation, with made-up parameters, without a token and with the manager's:
    // served by its handler (never the router's fallback), and the answer fits.
    for (path, method) in &operations {
        for token in [None, Some(manager.as_str())] {
            let body = (method != "get").then(|| json!({}));
            let a = ask(&stack, token, method, &concrete(path), body.as_ref(), &[]).await;
            assert!(
                !is_fallback(&a, "url-not-found") && !is_fallback(&a, "method-not-allowed"),
                "{method} {path} is in the document but not served: {}",
                a.body
            );
            answers.push(a);
        }
    }
    // What the router does not serve is its fallback, and the checker knows it.
    for (method, path) in [("GET", "/v2/nothing"), ("PATCH", "/v2/circuits")] {
        let a = ask(&stack, Some(&manager), method, path, None, &[]).await;
        assert_eq!(checker.check(&a), Ok(None), "{a:?}");
    }

    // The successful answers of a whole lifecycle.
    let m = Some(manager.as_str());
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    let create = json!({"app": "jupyter", "worker": "oa-1", "user_id": user,
        "routes": [{"session_id": session, "kernel_host": "127.0.0.1", "kernel_port": echo.port}]});
    let created = ask(&stack, m, "POST", "/v2/circuits", Some(&create), &[]).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let wid = stack.worker_record("oa-1").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ep = Uuid::new_v4();
    let item = json!({"service_name": "oa", "open_to_public": false,
        "tags": {"session": {"user_uuid": user}, "endpoint": {"id": ep}}});
    let routes = json!({"endpoints": [{"deployment_id": ep, "routes": [
        {"session_id": session, "route_id": Uuid::new_v4(), "kernel_host": "127.0.0.1",
         "kernel_port": echo.port}]}]});
    let steps: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/status".into(), None),
        ("GET", "/health".into(), None),
        ("GET", "/health/livez".into(), None),
        ("GET", "/health/readyz".into(), None),
        ("GET", "/metrics".into(), None),
        ("GET", "/health/status".into(), None),
        ("GET", format!("/v2/circuits/{id}"), None),
        ("GET", format!("/v2/circuits?session_id={session}"), None),
        ("GET", format!("/api/circuit/{id}"), None),
        ("GET", format!("/api/circuit/{id}/statistics"), None),
        (
            "POST",
            format!("/v2/circuits/{id}/setup-link"),
            Some(json!({"user_id": user})),
        ),
        ("GET", "/api/worker".into(), None),
        ("GET", format!("/api/worker/{wid}"), None),
        ("GET", format!("/api/worker/{wid}/circuits"), None),
        ("GET", format!("/api/worker/{wid}/circuits?view=map"), None),
        ("GET", "/api/slots?wsproxy_host=oa-1".into(), None),
        ("PATCH", format!("/api/worker/{wid}"), None),
        (
            "PUT",
            format!("/api/worker/{wid}/route-health"),
            Some(json!({"circuits": {}})),
        ),
        ("POST", format!("/v2/endpoints/{ep}"), Some(item.clone())),
        (
            "POST",
            "/v2/endpoints/bulk".into(),
            Some(json!({"endpoints": [item]})),
        ),
        (
            "POST",
            "/v2/endpoints/bulk/routes".into(),
            Some(routes.clone()),
        ),
        (
            "POST",
            "/v2/endpoints/bulk/routes/register".into(),
            Some(routes.clone()),
        ),
        (
            "POST",
            "/v2/endpoints/bulk/routes/unregister".into(),
            Some(json!({"endpoints": [{"deployment_id": ep, "route_ids": [Uuid::new_v4()]}]})),
        ),
        (
            "PUT",
            format!("/v2/endpoints/{ep}/health-check"),
            Some(json!({"health_check": null})),
        ),
        (
            "POST",
            format!("/v2/endpoints/{ep}/token"),
            Some(json!({"user_uuid": user, "exp": 4_000_000_000u64})),
        ),
        ("GET", "/health/endpoints".into(), None),
        ("GET", "/health/summary".into(), None),
        ("GET", format!("/health/circuits/{id}"), None),
        (
            "POST",
            "/v2/workers/credentials".into(),
            Some(json!({"authority": "oa-2"})),
        ),
        ("GET", "/v2/workers/credentials".into(), None),
        (
            "POST",
            "/v2/workers/oa-1/drain".into(),
            Some(json!({"drain": false})),
        ),
        (
            "POST",
            "/v2/revocations".into(),
            Some(json!({"user_id": Uuid::new_v4()})),
        ),
        (
            "DELETE",
            "/v2/endpoints/bulk".into(),
            Some(json!({"endpoints": [{"deployment_id": Uuid::new_v4()}]})),
        ),
        ("DELETE", format!("/v2/endpoints/{ep}"), None),
    ];
    for (method, path, body) in &steps {
        let a = ask(&stack, m, method, path, body.as_ref(), &[]).await;
        assert!(a.status < 300, "{method} {path}: {} {}", a.status, a.body);
        answers.push(a);
    }
    let cred = answers
        .iter()
        .rev()
        .find(|a| a.path == "/v2/workers/credentials" && a.method == "POST")
        .map(|a| a.body["id"].as_str().unwrap().to_string())
        .unwrap();
    let grant = ask(
        &stack,
        m,
        "POST",
        "/v2/conf",
        Some(&e2e::conf_body(session, user, echo.port)),
        &[],
    )
    .await;
    let token = grant.body["token"].as_str().unwrap().to_string();
    let q = "app=jupyter&protocol=http&redirect=%2F";
    let add = format!("/v2/proxy/{token}/{session}/add?{q}");
    let auth = format!("/v2/proxy/auth?{q}&token={token}&session_id={session}");
    let json_accept = [("accept", "application/json")];
    for (method, path, body, headers) in [
        ("GET", add.as_str(), None, &[][..]),
        ("GET", auth.as_str(), None, &json_accept[..]),
        ("GET", auth.as_str(), None, &[][..]),
        (
            "DELETE",
            &format!("/v2/workers/credentials/{cred}"),
            None,
            &[][..],
        ),
        ("DELETE", &format!("/v2/circuits/{id}"), None, &[][..]),
        ("DELETE", &format!("/v2/sessions/{session}"), None, &[][..]),
        (
            "DELETE",
            "/api/circuit/_/bulk",
            Some(json!({"circuit_ids": []})),
            &[][..],
        ),
    ] {
        let a = ask(&stack, m, method, path, body.as_ref(), headers).await;
        assert!(a.status < 400, "{method} {path}: {} {}", a.status, a.body);
        answers.push(a);
    }
    answers.push(grant);

    let (covered, failures) = checker.check_all(&answers);
    let failures: Vec<_> = failures.into_iter().collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The checker is not blind: an answer missing a field, or with one of the wrong type, or
    // of a status the operation does not list with a body that is not an error, fails.
    let mut bad = created.clone();
    bad.body.as_object_mut().unwrap().remove("url");
    assert!(checker.check(&bad).is_err(), "missing field");
    let mut bad = created.clone();
    bad.body["circuit"]["generation"] = json!("1");
    assert!(checker.check(&bad).is_err(), "wrong type");
    let mut bad = created.clone();
    bad.status = 409;
    bad.content_type = "application/problem+json".into();
    assert!(checker.check(&bad).is_err(), "not an error body");
    let ok = covered.iter().filter(|o| !o.ends_with(" default")).count();
    println!(
        "{} answers fit the document: {ok} operation/status pairs with a success answer, {} \
         with an error answer",
        answers.len(),
        covered.len() - ok
    );
}

/// Every answer the e2e suite recorded (`APPPROXY_E2E_RECORD_DIR`, set by `./deploy/test`,
/// which runs this after the suite) fits the document; an answer of a route the document does
/// not name fails it.
#[test]
#[ignore = "run by ./deploy/test after the suite has recorded its answers"]
fn recorded_answers_of_the_suite_fit_the_document() {
    let dir = std::env::var_os(RECORD_DIR).expect("APPPROXY_E2E_RECORD_DIR");
    let answers = e2e::openapi::recorded(std::path::Path::new(&dir));
    assert!(
        answers.len() > 1000,
        "only {} answers recorded",
        answers.len()
    );
    let checker = Checker::new(appproxy_provider::api::document());
    let (covered, failures) = checker.check_all(&answers);
    let listed: Vec<_> = failures.iter().take(20).cloned().collect();
    assert!(
        failures.is_empty(),
        "{} of {} answers do not fit:\n{}",
        failures.len(),
        answers.len(),
        listed.join("\n")
    );
    println!(
        "{} recorded answers fit the document ({} operation/status pairs)",
        answers.len(),
        covered.len()
    );
}
