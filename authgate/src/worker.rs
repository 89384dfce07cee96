//! The worker role: register with the provider (retrying until it answers), heartbeat,
//! re-register when the provider forgot us, deregister on shutdown.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{config::Config, metrics::Metrics};

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
    })
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base.trim_end_matches('/')))
            .header("X-BackendAI-Token", &self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
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

/// Run the worker role until `shutdown`; deregisters on the way out.
pub async fn run(cfg: Config, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
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
    let mut id: Option<String> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        let wait = match &id {
            None => match client.register(&body).await {
                Ok(new) => {
                    tracing::info!(worker = %new, authority = %cfg.worker.authority, "Registered with the provider");
                    metrics.registered.set(1);
                    id = Some(new);
                    backoff = Duration::from_millis(200);
                    beat
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Registration failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            },
            Some(w) => {
                match client
                    .send(
                        reqwest::Method::PATCH,
                        &format!("/api/worker/{w}"),
                        Some(&json!({})),
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
                beat
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
