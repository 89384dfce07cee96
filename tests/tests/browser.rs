//! What only a real browser shows (headless Chromium over WebDriver): the login-CSRF state nonce
//! of the setup flow (A6), another app's page using an app's cookie cross-origin (issue 13.7),
//! and cookies tossed by a hostile app on the shared host (A7, issue 13.8).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Query, State},
    response::{IntoResponse, Redirect},
    routing::get,
};
use e2e::{Db, Stack, WorkerSpec, backends::HttpEcho, browser::Browser, eventually, patience};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Serve `app` on a free loopback port; the port.
async fn serve(app: Router) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    port
}

/// The platform's launch page (`session.login_url`): mints a setup link bound to the state the
/// browser brought and sends the browser there.
#[derive(Clone)]
struct Platform {
    provider: String,
    manager_token: String,
    users: Arc<Mutex<HashMap<String, Uuid>>>,
}

async fn launch(
    State(p): State<Platform>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let circuit = q.get("circuit").cloned().unwrap_or_default();
    let user = p.users.lock().unwrap().get(&circuit).copied();
    let body = json!({"user_id": user, "state": q.get("state"), "redirect": q.get("next")});
    let v: Value = e2e::client_builder()
        .build()
        .expect("client")
        .post(format!("{}/v2/circuits/{circuit}/setup-link", p.provider))
        .header("X-BackendAI-Token", &p.manager_token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Redirect::to(v["setup_url"].as_str().unwrap_or("/failed"))
}

async fn create(
    stack: &Stack,
    worker: &str,
    port: u16,
    extra: Value,
) -> (Uuid, Uuid, String, String) {
    let user = Uuid::new_v4();
    let v = stack
        .create_circuit(worker, user, Uuid::new_v4(), port, &extra)
        .await;
    (
        v["id"].as_str().unwrap().parse().unwrap(),
        user,
        v["url"].as_str().unwrap().trim_end_matches('/').to_string(),
        v["setup_url"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a6_state_nonce_binds_the_launch_to_the_browser_that_started_it() {
    let stack = Stack::start(Db::Sqlite).await;
    let platform = Platform {
        provider: stack.provider_url(),
        manager_token: stack.manager_token.clone(),
        users: Arc::default(),
    };
    let platform_port = serve(
        Router::new()
            .route("/launch", get(launch))
            .with_state(platform.clone()),
    )
    .await;
    let mut spec = WorkerSpec::ports("br-a6", 2);
    spec.login_url = Some(format!("http://127.0.0.1:{platform_port}/launch"));
    let w = stack.start_gated_worker(spec).await;
    let echo = HttpEcho::start("app").await;
    let (id, user, url, _) = create(&stack, "br-a6", echo.port, json!({})).await;
    platform.users.lock().unwrap().insert(id.to_string(), user);
    let http = e2e::no_redirect_client();
    e2e::wait_status(&http, &url, &[], 401).await;

    // The user's browser starts the launch on the app's origin: nonce planted, platform page,
    // setup link with the state, cookie, landing page.
    let victim = Browser::start().await;
    victim
        .goto(&format!("{url}/_appproxy/login?circuit={id}&next=/lab"))
        .await;
    let text = victim.text().await;
    assert!(
        text.contains("backend=app path=/lab"),
        "{text}\n{}",
        w.authgate_log()
    );
    assert!(victim.url().await.ends_with("/lab"));

    // An attacker starts a launch in their own client and sends the resulting link to the
    // victim: the victim's browser has no matching nonce and gets no cookie.
    let r = http
        .get(format!("{url}/_appproxy/login?circuit={id}&next=/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let state = e2e::query_param(&loc, "state").unwrap();
    let (s, v) = stack
        .manager(
            Method::POST,
            &format!("/v2/circuits/{id}/setup-link"),
            Some(&json!({"user_id": user, "state": state})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let other = Browser::start().await;
    other.goto(v["setup_url"].as_str().unwrap()).await;
    let text = other.text().await;
    assert!(text.contains("another browser"), "{text}");
    other.goto(&format!("{url}/lab")).await;
    let text = other.text().await;
    assert!(!text.contains("backend=app"), "{text}");
    assert!(
        !other
            .cookies()
            .await
            .iter()
            .any(|(n, _)| n.starts_with("appproxy_") && n != "appproxy_state"),
        "a cookie was set in the other browser"
    );
    victim.quit().await;
    other.quit().await;
}

/// A hostile app: `/page?name=N&path=P` answers a page that sets cookie `N=tossed; Path=P`
/// from the server and tries `N=fromjs; path=/` from script.
fn hostile() -> Router {
    Router::new().route(
        "/page",
        get(|Query(q): Query<HashMap<String, String>>| async move {
            let name = q.get("name").cloned().unwrap_or_default();
            let path = q.get("path").cloned().unwrap_or_else(|| "/".into());
            (
                [
                    (
                        "set-cookie",
                        format!("{name}=tossed; Path={path}; SameSite=Lax"),
                    ),
                    ("content-type", "text/html".to_string()),
                ],
                format!(
                    "<html><body>hostile<script>document.cookie = '{name}=fromjs; path=/';\
                     </script></body></html>"
                ),
            )
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_apps_page_cannot_use_the_cookie_and_tossed_cookies_never_authorize() {
    let stack = Stack::start(Db::Sqlite).await;
    let _w = stack
        .start_gated_worker(WorkerSpec::ports("br-a7", 2))
        .await;
    let echo = HttpEcho::start("app").await;
    let hostile_port = serve(hostile()).await;
    let (a, _, a_url, a_setup) = create(&stack, "br-a7", echo.port, json!({})).await;
    let (_, _, b_url, _) = create(
        &stack,
        "br-a7",
        hostile_port,
        json!({"open_to_public": true}),
    )
    .await;
    let http = e2e::no_redirect_client();
    e2e::wait_status(&http, &a_url, &[], 401).await;
    e2e::wait_status(&http, &format!("{b_url}/page"), &[], 200).await;
    let name = format!("appproxy_{}", a.simple());

    let browser = Browser::start().await;
    browser.goto(&a_setup).await;
    assert!(browser.text().await.contains("backend=app path=/"));
    // On A's own page: a POST and a WebSocket work (same origin).
    let same = browser
        .script_async(
            "const done = arguments[0];
             fetch('/own', {method: 'POST', body: 'x'}).then(r => {
               const ws = new WebSocket(location.origin.replace('http', 'ws') + '/ws');
               ws.onopen = () => done('post ' + r.status + ' ws open');
               ws.onerror = () => done('post ' + r.status + ' ws error');
             });",
        )
        .await;
    assert_eq!(same, json!("post 200 ws open"));
    let posts = || {
        echo.requests()
            .iter()
            .filter(|r| r.method == "POST" || r.uri.starts_with("/evil"))
            .count()
    };
    let before = posts();

    // On B's page (another port of the same host): a POST, a form post and a WebSocket to A
    // carry A's cookie (same site) and B's Origin: all refused before reaching A.
    browser
        .goto(&format!("{b_url}/page?name=none&path=/nowhere"))
        .await;
    let cross = browser
        .script_async(&format!(
            "const done = arguments[0];
             fetch('{a_url}/evil-fetch', {{method: 'POST', mode: 'no-cors', credentials: 'include',
                                           body: 'x'}}).catch(() => 0);
             const fr = document.createElement('iframe'); fr.name = 'fr'; document.body.appendChild(fr);
             const f = document.createElement('form'); f.method = 'POST'; f.target = 'fr';
             f.action = '{a_url}/evil-form'; document.body.appendChild(f); f.submit();
             const ws = new WebSocket('{}/evil-ws');
             ws.onopen = () => done('ws open');
             ws.onerror = () => done('ws refused');",
            a_url.replace("http://", "ws://")
        ))
        .await;
    assert_eq!(cross, json!("ws refused"));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(posts(), before, "a cross-origin request reached app A");

    // B tosses a cookie named like A's at a deeper path (both are sent to /lab) and tries to
    // overwrite the HttpOnly one from script: A still opens with the real cookie.
    browser
        .goto(&format!("{b_url}/page?name={name}&path=/lab"))
        .await;
    browser.goto(&format!("{a_url}/lab")).await;
    let text = browser.text().await;
    assert!(text.contains("backend=app path=/lab"), "{text}");
    let values: Vec<String> = browser
        .cookies()
        .await
        .into_iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .collect();
    assert!(values.contains(&"tossed".to_string()), "{values:?}");
    assert!(
        !values.contains(&"fromjs".to_string()),
        "script overwrote an HttpOnly cookie"
    );
    // The same name and path from B's server replaces the real cookie (documented in
    // SECURITY.md): the planted value never authorizes, and a new setup link restores access.
    browser
        .goto(&format!("{b_url}/page?name={name}&path=/"))
        .await;
    browser.goto(&format!("{a_url}/")).await;
    let text = browser.text().await;
    assert!(
        !text.contains("backend=app"),
        "a planted cookie authorized: {text}"
    );
    let (s, v) = stack
        .manager(
            Method::POST,
            &format!("/v2/circuits/{a}/setup-link"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    browser.goto(v["setup_url"].as_str().unwrap()).await;
    eventually("access restored", patience(), || async {
        browser.text().await.contains("backend=app").then_some(())
    })
    .await;
    browser.quit().await;
}
