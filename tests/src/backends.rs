//! In-test backends: an HTTP echo server that records every request it receives, and a TCP
//! echo server. They run as tasks of the test's runtime on free loopback ports.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    extract::{FromRequestParts, Request, ws::WebSocketUpgrade},
    response::IntoResponse,
    routing::any,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

/// HTTP echo backend: answers `backend=<name> path=<uri>`; a WebSocket upgrade on any path is
/// accepted and every message echoed back; `GET /health` answers a settable status; every other
/// answer waits a settable delay (a slow replica).
pub struct HttpEcho {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Status `GET /health` answers (200 until changed).
    health: Arc<std::sync::atomic::AtomicU16>,
    /// How long every other answer waits, in milliseconds (0 until changed).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpEcho {
    pub async fn start(name: &str) -> HttpEcho {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let health = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (name, log, hc, delay) = (
            name.to_string(),
            seen.clone(),
            health.clone(),
            delay_ms.clone(),
        );
        let app = Router::new().fallback(any(move |req: Request| {
            let (name, log, hc) = (name.clone(), log.clone(), hc.clone());
            let delay = delay.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if req.uri().path() == "/health" {
                    let code = hc.load(std::sync::atomic::Ordering::Relaxed);
                    let status = axum::http::StatusCode::from_u16(code)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    return (status, format!("backend={name} health")).into_response();
                }
                let uri = req.uri().to_string();
                let seen = Seen {
                    method: req.method().to_string(),
                    uri: uri.clone(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect(),
                };
                if req.headers().contains_key("sec-websocket-key") {
                    log.lock().expect("seen lock").push(seen);
                    let (mut parts, _) = req.into_parts();
                    return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                        Ok(ws) => ws
                            .on_upgrade(|mut sock| async move {
                                while let Some(Ok(m)) = sock.recv().await {
                                    if sock.send(m).await.is_err() {
                                        break;
                                    }
                                }
                            })
                            .into_response(),
                        Err(e) => e.into_response(),
                    };
                }
                log.lock().expect("seen lock").push(seen);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
                format!("backend={name} path={uri}").into_response()
            }
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpEcho {
            port,
            seen,
            health,
            delay_ms,
            task,
        }
    }

    /// Make `GET /health` answer `code` (health checks are not recorded as requests).
    pub fn set_health(&self, code: u16) {
        self.health
            .store(code, std::sync::atomic::Ordering::Relaxed);
    }

    /// Make every answer but `/health` and WebSockets wait `ms` milliseconds (a slow replica).
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("seen lock").len()
    }

    /// A copy of every request seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for HttpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// TCP echo backend: sends a greeting `hello from <name>\n`, then echoes.
pub struct TcpEcho {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TcpEcho {
    pub async fn start(name: &str) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp echo");
        let port = listener.local_addr().expect("addr").port();
        let greeting = format!("hello from {name}\n");
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if sock.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        TcpEcho { port, task }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}
