//! The worker role: register with the provider (retrying until it answers), heartbeat,
//! report replica health from the local Traefik, re-register when the provider forgot us,
//! deregister on shutdown.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    activity::{Activity, CircuitMap, now_ms},
    config::Config,
    metrics::Metrics,
};

/// `PUT /api/worker` body for this worker.
pub fn registration(cfg: &Config) -> Value {
    let w = &cfg.worker;
    json!({
        "authority": w.authority,
        "frontend_mode": w.frontend_mode,
        "protocol": w.protocol,
        "hostname": w.hostname,
        "tls_listen": w.tls_listen,
        "tls_advertised": w.tls_advertised,
        "api_port": cfg.listen.port(),
        "port_range": w.port_range,
        "wildcard_domain": w.wildcard_domain,
        "wildcard_traffic_port": w.wildcard_traffic_port,
        "accepted_traffics": w.accepted_traffics,
        "authgate_url": cfg.authgate_url(),
        "filtered_apps_only": w.filtered_apps_only,
        "app_filters": w.app_filters,
    })
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A request to the provider's `path`, with the worker token.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base.trim_end_matches('/')))
            .header("X-BackendAI-Token", &self.token)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// The worker's circuit map, unless it is still `etag` (then `None`).
    async fn circuits(
        &self,
        worker: &str,
        etag: Option<&str>,
    ) -> Result<Option<(CircuitMap, Option<String>)>, String> {
        let path = format!("/api/worker/{worker}/circuits?view=map");
        let mut req = self.request(reqwest::Method::GET, &path);
        if let Some(e) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        match resp.status().as_u16() {
            304 => Ok(None),
            200 => {
                let tag = resp
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let v = resp.json::<Value>().await.map_err(|e| e.to_string())?;
                Ok(Some((circuit_map(&v), tag)))
            }
            s => Err(format!(
                "provider answered {s}: {}",
                resp.text().await.unwrap_or_default()
            )),
        }
    }

    async fn register(&self, body: &Value) -> Result<String, String> {
        match self
            .send(reqwest::Method::PUT, "/api/worker", Some(body))
            .await?
        {
            (200, v) => v["id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "registration answer without id".to_string()),
            (s, v) => Err(format!("provider answered {s}: {v}")),
        }
    }
}

/// Heartbeat body: how fresh this worker's activity data in Redis is, so the provider never
/// reclaims circuits on stale data.
fn heartbeat(a: &Activity) -> Value {
    let last = a.last_flush_ok_ms.load(Ordering::Acquire);
    let lag = if last > 0 {
        Some((now_ms() - last) as f64 / 1000.0)
    } else {
        None
    };
    json!({ "ingest": {
        "redis_ok": a.redis_ok.load(Ordering::Acquire),
        "last_flush_ms": last,
        "lag_seconds": lag,
    }})
}

/// Sessions, TCP ports and plugins of this worker's circuits, from
/// `GET /api/worker/{id}/circuits?view=map`.
fn circuit_map(v: &Value) -> CircuitMap {
    let mut map = CircuitMap::default();
    for c in v["circuits"].as_array().into_iter().flatten() {
        let Some(id) = c["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
            continue;
        };
        let sessions = c["session_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().and_then(|s| Uuid::parse_str(s).ok()))
            .collect();
        map.sessions.insert(id, sessions);
        map.has_inference |= c["app_mode"] == "inference";
        if let Some(name) = c["auth_plugin"]["name"].as_str() {
            map.plugins
                .insert(id, (name.to_string(), c["auth_plugin"]["config"].clone()));
        }
        let origins: Vec<String> = c["allowed_origins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str().and_then(crate::decision::normalize_origin))
            .collect();
        if !origins.is_empty() {
            map.origins.insert(id, origins);
        }
        if c["protocol"] == "tcp"
            && let Some(p) = c["port"].as_u64().and_then(|p| u16::try_from(p).ok())
        {
            map.tcp_ports.insert(p, id);
        }
    }
    map
}

/// Replica status of every circuit Traefik serves: circuit id → server URL → `UP`/`DOWN`.
async fn route_health(
    http: &reqwest::Client,
    api: &str,
) -> Option<HashMap<String, BTreeMap<String, String>>> {
    let mut out = HashMap::new();
    // Traefik's API pages its lists; follow `X-Next-Page` (bounded).
    let mut page = 1;
    for _ in 0..100 {
        let url = format!(
            "{}/api/http/services?per_page=1000&page={page}",
            api.trim_end_matches('/')
        );
        let resp = http.get(url).send().await.ok()?;
        let next = resp
            .headers()
            .get("x-next-page")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| *n > page);
        let list: Vec<Value> = resp.json().await.ok()?;
        for s in list {
            let Some(name) = s["name"].as_str().and_then(|n| n.strip_suffix("@etcd")) else {
                continue;
            };
            let (Some(id), Some(status)) = (
                appproxy_common::names::circuit_of_object(name),
                s["serverStatus"].as_object(),
            ) else {
                continue;
            };
            let servers = status
                .iter()
                .map(|(u, v)| (u.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            out.insert(id.to_string(), servers);
        }
        match next {
            Some(n) => page = n,
            None => break,
        }
    }
    Some(out)
}

/// Run the worker role until `shutdown`; deregisters on the way out. Every 2 s it also
/// reports replica health from its Traefik when that changed (or every heartbeat).
pub async fn run(
    cfg: Config,
    metrics: Metrics,
    activity: Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client"),
        base: cfg.provider.url.clone(),
        token: cfg.provider.worker_token.clone(),
    };
    let body = registration(&cfg);
    let beat = Duration::from_secs(cfg.provider.heartbeat_seconds);
    let tick = Duration::from_secs(2).min(beat);
    let mut id: Option<String> = None;
    let mut backoff = Duration::from_millis(200);
    let mut last_beat = tokio::time::Instant::now();
    let mut last_health: Option<HashMap<String, BTreeMap<String, String>>> = None;
    // Version of the circuit map we hold; polls with it are answered 304 while unchanged.
    let mut map_etag: Option<String> = None;
    loop {
        let wait = match &id {
            None => match client.register(&body).await {
                Ok(new) => {
                    tracing::info!(worker = %new, authority = %cfg.worker.authority, "Registered with the provider");
                    metrics.registered.set(1);
                    id = Some(new);
                    backoff = Duration::from_millis(200);
                    last_beat = tokio::time::Instant::now();
                    last_health = None;
                    map_etag = None;
                    tick
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Registration failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            },
            Some(w) => {
                let due = last_beat.elapsed() >= beat;
                if due {
                    last_beat = tokio::time::Instant::now();
                    match client
                        .send(
                            reqwest::Method::PATCH,
                            &format!("/api/worker/{w}"),
                            Some(&heartbeat(&activity)),
                        )
                        .await
                    {
                        Ok((200, _)) => {}
                        Ok((404, _)) => {
                            tracing::warn!("Provider forgot this worker; registering again");
                            metrics.registered.set(0);
                            id = None;
                            continue;
                        }
                        Ok((s, v)) => tracing::warn!(status = s, body = %v, "Heartbeat refused"),
                        Err(e) => tracing::warn!(error = %e, "Heartbeat failed"),
                    }
                }
                match client.circuits(w, map_etag.as_deref()).await {
                    Ok(Some((map, tag))) => {
                        activity.set_map(map, now_ms());
                        map_etag = tag;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "Circuit list failed"),
                }
                // Replica health matters for inference circuits only; Traefik's service list
                // grows with every circuit, so it is not polled without any.
                if cfg.worker.protocol != "tcp"
                    && (activity.has_inference()
                        || last_health.as_ref().is_some_and(|h| !h.is_empty()))
                    && let Some(h) = route_health(&client.http, &cfg.traefik.api_url).await
                    && (due || last_health.as_ref() != Some(&h))
                {
                    let path = format!("/api/worker/{w}/route-health");
                    match client
                        .send(reqwest::Method::PUT, &path, Some(&json!({ "circuits": h })))
                        .await
                    {
                        Ok((200, _)) => last_health = Some(h),
                        Ok((s, v)) => tracing::warn!(status = s, body = %v, "Route health refused"),
                        Err(e) => tracing::warn!(error = %e, "Route health report failed"),
                    }
                }
                tick
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|v| *v) => break,
        }
    }
    if let Some(w) = id {
        match client
            .send(reqwest::Method::DELETE, &format!("/api/worker/{w}"), None)
            .await
        {
            Ok((200, _)) => tracing::info!("Deregistered from the provider"),
            Ok((s, v)) => tracing::warn!(status = s, body = %v, "Deregistration refused"),
            Err(e) => tracing::warn!(error = %e, "Deregistration failed"),
        }
        metrics.registered.set(0);
    }
}
