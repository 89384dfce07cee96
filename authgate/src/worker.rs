//! The worker role: register with the provider (retrying until it answers), heartbeat,
//! report replica health from the local Traefik, re-register when the provider forgot us,
//! deregister on shutdown.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use appproxy_common::wire::{
    AppMode, CircuitMapEntry, Heartbeat, IngestHealth, Protocol, RouteHealthReport, WorkerMap,
    WorkerSpec,
};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    activity::{Activity, CircuitMap, now_ms},
    config::Config,
    metrics::Metrics,
};

/// `PUT /api/worker` body for this worker: its `[worker]` spec with the API port of `listen`
/// and the address its Traefik reaches it at.
pub fn registration(cfg: &Config) -> WorkerSpec {
    WorkerSpec {
        api_port: cfg.api_port(),
        authgate_url: Some(cfg.authgate_url()),
        fast_path: cfg.fast_path.dir.is_some(),
        fast_path_interactive: cfg.fast_path.dir.is_some()
            && cfg.fast_path.scope == crate::config::FastPathScope::All,
        ..cfg.worker.clone()
    }
}

/// The provider's API, at one of several replicas: requests go to the one that answered
/// last; a transport failure moves on to the next (each replica serves the whole API).
struct Client {
    http: reqwest::Client,
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    token: String,
}

impl Client {
    fn new(http: reqwest::Client, urls: &str, token: String) -> Client {
        Client {
            http,
            bases: provider_urls(urls),
            current: std::sync::atomic::AtomicUsize::new(0),
            token,
        }
    }

    /// Send the request `build` makes for a base URL, trying each replica once from the
    /// current one until one answers.
    async fn execute(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..self.bases.len() {
            let i = (start + k) % self.bases.len();
            let base = self.bases[i].trim_end_matches('/');
            match build(base)
                .header("X-BackendAI-Token", &self.token)
                .send()
                .await
            {
                Ok(resp) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => last = format!("{base}: {}", appproxy_common::tls::error_chain(&e)),
            }
        }
        Err(last)
    }

    async fn send<B: serde::Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(u16, Value), String> {
        let resp = self
            .execute(|base| {
                let req = self.http.request(method.clone(), format!("{base}{path}"));
                match body {
                    Some(b) => req.json(b),
                    None => req,
                }
            })
            .await?;
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// The worker's circuit map, unless it is still `etag` (then `None`).
    async fn circuits(
        &self,
        worker: &str,
        etag: Option<&str>,
    ) -> Result<Option<(WorkerMap, Option<String>)>, String> {
        let path = format!("/api/worker/{worker}/circuits?view=map");
        let resp = self
            .execute(|base| {
                let req = self.http.get(format!("{base}{path}"));
                match etag {
                    Some(e) => req.header(reqwest::header::IF_NONE_MATCH, e),
                    None => req,
                }
            })
            .await?;
        match resp.status().as_u16() {
            304 => Ok(None),
            200 => {
                let tag = resp
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let map = resp
                    .json::<WorkerMap>()
                    .await
                    .map_err(|e| format!("undecodable circuit map: {e}"))?;
                Ok(Some((map, tag)))
            }
            s => Err(format!(
                "provider answered {s}: {}",
                resp.text().await.unwrap_or_default()
            )),
        }
    }

    async fn register(&self, body: &WorkerSpec) -> Result<String, RegisterError> {
        let (status, v) = self
            .send(reqwest::Method::PUT, "/api/worker", Some(body))
            .await
            .map_err(RegisterError::Transient)?;
        match status {
            200 => v["id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| RegisterError::Transient("registration answer without id".into())),
            // A refusal of this worker or its credential does not heal by retrying.
            400..=499 if status != 408 && status != 429 => Err(RegisterError::Refused(status, v)),
            s => Err(RegisterError::Transient(format!(
                "provider answered {s}: {v}"
            ))),
        }
    }
}

/// The replicas of `provider.url`: one URL, or several separated by commas.
pub fn provider_urls(url: &str) -> Vec<String> {
    (url.split(','))
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// Why registration failed.
#[derive(Debug)]
enum RegisterError {
    /// The provider refused this worker (4xx): a configuration or credential problem.
    Refused(u16, Value),
    /// Anything that may heal (provider down, 5xx): retried.
    Transient(String),
}

/// The provider refused this worker's registration; authgate stops (retrying would not help).
#[derive(Debug, thiserror::Error)]
#[error(
    "the provider refused to register worker {authority:?} ({status}): {body} — check \
     [provider] worker_token (a credential enrolled for this authority) and [worker]"
)]
pub struct RegistrationRefused {
    pub authority: String,
    pub status: u16,
    pub body: Value,
}

/// Heartbeat body: how fresh this worker's activity data in Redis is, so the provider never
/// reclaims circuits on stale data.
fn heartbeat(a: &Activity) -> Heartbeat {
    let last = a.last_flush_ok_ms.load(Ordering::Acquire);
    let lag = if last > 0 {
        Some((now_ms() - last) as f64 / 1000.0)
    } else {
        None
    };
    Heartbeat {
        ingest: Some(IngestHealth {
            redis_ok: a.redis_ok.load(Ordering::Acquire),
            last_flush_ms: last,
            lag_seconds: lag,
        }),
    }
}

/// Sessions, TCP ports, plugins and extra origins of this worker's circuits, from
/// `GET /api/worker/{id}/circuits?view=map`.
fn circuit_map(circuits: Vec<CircuitMapEntry>) -> CircuitMap {
    let mut map = CircuitMap::default();
    for c in circuits {
        map.has_inference |= c.app_mode == AppMode::Inference;
        if let Some(p) = c.auth_plugin {
            map.plugins.insert(c.id, (p.name, p.config));
        }
        // Normalized by the provider when the circuit was created (the same function the
        // decision uses for `Origin`).
        if !c.allowed_origins.is_empty() {
            map.origins.insert(c.id, c.allowed_origins);
        }
        if c.protocol == Protocol::Tcp
            && let Some(p) = c.port
        {
            map.tcp_ports.insert(p, c.id);
        }
        let ends = crate::cut::Ends {
            backends: c.backends,
            port: c.port,
        };
        map.ends.insert(c.id, ends);
        if let Some(u) = c.user_id {
            map.users.insert(c.id, u);
        }
        map.sessions.insert(c.id, c.session_ids);
    }
    map
}

/// Replica status of every circuit Traefik serves: circuit id → server URL → `UP`/`DOWN`.
async fn route_health(
    http: &reqwest::Client,
    api: &str,
) -> Option<HashMap<Uuid, BTreeMap<String, String>>> {
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
            out.insert(id, servers);
        }
        match next {
            Some(n) => page = n,
            None => break,
        }
    }
    Some(out)
}

/// The HTTP client for the provider: 5 s a request; for `https://` URLs only HTTPS, with the
/// `[provider.tls]` CA as the only trust root (the system's without one) and its client
/// certificate. Files that do not load fail the start.
pub fn provider_http(p: &crate::config::ProviderConfig) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(5));
    if provider_urls(&p.url)
        .iter()
        .all(|u| u.starts_with("https://"))
    {
        let pem = p.tls.load()?;
        if let Some(ca) = pem.ca {
            b = b.tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca)?);
        }
        if let Some((mut cert, key)) = pem.identity {
            cert.extend_from_slice(b"\n");
            cert.extend_from_slice(&key);
            b = b.identity(reqwest::Identity::from_pem(&cert)?);
        }
        b = b.https_only(true);
    }
    Ok(b.build()?)
}

/// Run the worker role until `shutdown`; deregisters on the way out. Every 2 s it also
/// reports replica health from its Traefik when that changed (or every heartbeat). A refused
/// registration ends it with [`RegistrationRefused`].
pub async fn run(
    cfg: Config,
    http: reqwest::Client,
    metrics: Metrics,
    activity: Arc<Activity>,
    cutter: crate::cut::Cutter,
    fast_path: Option<Arc<crate::fastpath::FastPath>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RegistrationRefused> {
    let mut role = Role::new(cfg, http, metrics, activity, cutter);
    role.fast_path = fast_path;
    loop {
        let wait = match role.id.clone() {
            None => role.register().await?,
            Some(w) => role.serve(&w).await,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|v| *v) => break,
        }
    }
    role.deregister().await;
    Ok(())
}

/// What a new circuit map holds, for Backend.AI's worker metrics: circuits by protocol, and
/// those not in the previous map (none on the first: they were created before authgate).
struct Census {
    alive: HashMap<Protocol, i64>,
    created: HashMap<Protocol, u64>,
    ids: HashSet<Uuid>,
}

impl Census {
    fn of(previous: Option<&HashSet<Uuid>>, circuits: &[CircuitMapEntry]) -> Census {
        let mut c = Census {
            alive: HashMap::new(),
            created: HashMap::new(),
            ids: HashSet::with_capacity(circuits.len()),
        };
        for e in circuits {
            *c.alive.entry(e.protocol).or_default() += 1;
            if previous.is_some_and(|p| !p.contains(&e.id)) {
                *c.created.entry(e.protocol).or_default() += 1;
            }
            c.ids.insert(e.id);
        }
        c
    }
}

/// The worker role's state between steps.
struct Role {
    client: Client,
    cfg: Config,
    metrics: Metrics,
    activity: Arc<Activity>,
    spec: WorkerSpec,
    beat: Duration,
    tick: Duration,
    /// The provider's id for this worker, once registered.
    id: Option<String>,
    backoff: Duration,
    last_beat: tokio::time::Instant,
    last_health: Option<HashMap<Uuid, BTreeMap<String, String>>>,
    /// Version of the circuit map we hold; polls with it are answered 304 while unchanged.
    map_etag: Option<String>,
    cutter: crate::cut::Cutter,
    /// Circuits whose connections were cut lately (each ended circuit is cut once).
    cut: HashMap<Uuid, tokio::time::Instant>,
    /// Circuits of the last map (`None` before the first): new ones count as created.
    census: Option<HashSet<Uuid>>,
    /// The fast path's state directory: the map's circuits have their keys there.
    fast_path: Option<Arc<crate::fastpath::FastPath>>,
}

impl Role {
    fn new(
        cfg: Config,
        http: reqwest::Client,
        metrics: Metrics,
        activity: Arc<Activity>,
        cutter: crate::cut::Cutter,
    ) -> Role {
        let client = Client::new(http, &cfg.provider.url, cfg.provider.worker_token.clone());
        let beat = Duration::from_secs(cfg.provider.heartbeat_seconds);
        Role {
            client,
            spec: registration(&cfg),
            // The map poll (a 304 while unchanged) is how ended circuits are noticed: their
            // connections are cut within about a second of the change.
            tick: Duration::from_secs(1),
            beat,
            cfg,
            metrics,
            activity,
            id: None,
            backoff: Duration::from_millis(200),
            last_beat: tokio::time::Instant::now(),
            last_health: None,
            map_etag: None,
            cutter,
            cut: HashMap::new(),
            census: None,
            fast_path: None,
        }
    }

    /// Register; the wait before the next step (backing off while the provider is away).
    async fn register(&mut self) -> Result<Duration, RegistrationRefused> {
        match self.client.register(&self.spec).await {
            Ok(new) => {
                tracing::info!(worker = %new, authority = %self.cfg.worker.authority, "Registered with the provider");
                self.metrics.registered.set(1);
                self.id = Some(new);
                self.backoff = Duration::from_millis(200);
                self.last_beat = tokio::time::Instant::now();
                self.last_health = None;
                self.map_etag = None;
                Ok(self.tick)
            }
            Err(RegisterError::Refused(status, body)) => Err(RegistrationRefused {
                authority: self.cfg.worker.authority.clone(),
                status,
                body,
            }),
            Err(RegisterError::Transient(e)) => {
                tracing::warn!(error = %e, "Registration failed; retrying");
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                Ok(self.backoff)
            }
        }
    }

    /// One tick of a registered worker: heartbeat when due, poll the circuit map, report
    /// replica health.
    async fn serve(&mut self, w: &str) -> Duration {
        let due = self.last_beat.elapsed() >= self.beat;
        if due && !self.heartbeat(w).await {
            return Duration::ZERO;
        }
        self.poll_map(w).await;
        self.report_health(w, due).await;
        self.tick
    }

    /// Send a heartbeat (with ingest health); `false` when the provider forgot this worker
    /// (it registers again at once).
    async fn heartbeat(&mut self, w: &str) -> bool {
        self.last_beat = tokio::time::Instant::now();
        let body = heartbeat(&self.activity);
        let path = format!("/api/worker/{w}");
        match self
            .client
            .send(reqwest::Method::PATCH, &path, Some(&body))
            .await
        {
            Ok((200, _)) => {}
            Ok((404, _)) => {
                tracing::warn!("Provider forgot this worker; registering again");
                self.metrics.registered.set(0);
                self.id = None;
                return false;
            }
            Ok((s, v)) => tracing::warn!(status = s, body = %v, "Heartbeat refused"),
            Err(e) => tracing::warn!(error = %e, "Heartbeat failed"),
        }
        true
    }

    /// Fetch the circuit map unless unchanged (`ETag`).
    async fn poll_map(&mut self, w: &str) {
        match self.client.circuits(w, self.map_etag.as_deref()).await {
            Ok(Some((map, tag))) => {
                let census = Census::of(self.census.as_ref(), &map.circuits);
                for p in Protocol::ALL {
                    let alive = census.alive.get(p).copied().unwrap_or(0);
                    (self.metrics.bai_alive_circuits)
                        .with_label_values(&[p.as_str()])
                        .set(alive);
                    let created = census.created.get(p).copied().unwrap_or(0);
                    (self.metrics.bai_circuits_created)
                        .with_label_values(&[p.as_str()])
                        .inc_by(created);
                }
                if let Some(fp) = &self.fast_path {
                    let (fp, ids) = (fp.clone(), census.ids.clone());
                    tokio::task::spawn_blocking(move || fp.sync_keys(&ids));
                }
                self.census = Some(census.ids);
                let mut ended = self.activity.set_map(circuit_map(map.circuits), now_ms());
                self.map_etag = tag;
                // The provider also lists circuits that ended recently: one that came and
                // went between two polls still had connections.
                ended.extend(map.ended.into_iter().map(|e| {
                    let ends = crate::cut::Ends {
                        backends: e.backends,
                        port: e.port,
                    };
                    (e.id, ends)
                }));
                self.cut_ended(ended);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "Circuit list failed"),
        }
    }

    /// Cut the live connections of circuits that left the map (deleted, reclaimed, session
    /// ended, moved away), each once.
    fn cut_ended(&mut self, ended: Vec<(Uuid, crate::cut::Ends)>) {
        let now = tokio::time::Instant::now();
        self.cut
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(120));
        if ended.is_empty() {
            return;
        }
        let shared = self.activity.backends_except(&[]);
        for (id, ends) in ended {
            if self.cut.insert(id, now).is_some() {
                continue;
            }
            let (cutter, shared) = (self.cutter.clone(), shared.clone());
            tokio::spawn(async move { cutter.cut(id, "circuit ended", &ends, &shared).await });
        }
    }

    /// Report replica health when it changed or a heartbeat is due. It matters for inference
    /// circuits only; Traefik's service list grows with every circuit, so it is not polled
    /// without any.
    async fn report_health(&mut self, w: &str, due: bool) {
        let had = self.last_health.as_ref().is_some_and(|h| !h.is_empty());
        if self.cfg.worker.protocol == Protocol::Tcp || !(self.activity.has_inference() || had) {
            return;
        }
        let Some(h) = route_health(&self.client.http, &self.cfg.traefik.api_url).await else {
            return;
        };
        if !due && self.last_health.as_ref() == Some(&h) {
            return;
        }
        let path = format!("/api/worker/{w}/route-health");
        let report = RouteHealthReport { circuits: h };
        match self
            .client
            .send(reqwest::Method::PUT, &path, Some(&report))
            .await
        {
            Ok((200, _)) => self.last_health = Some(report.circuits),
            Ok((s, v)) => tracing::warn!(status = s, body = %v, "Route health refused"),
            Err(e) => tracing::warn!(error = %e, "Route health report failed"),
        }
    }

    /// Leave the provider (one node fewer), if registered.
    async fn deregister(&mut self) {
        let Some(w) = self.id.take() else { return };
        let path = format!("/api/worker/{w}");
        match self
            .client
            .send::<()>(reqwest::Method::DELETE, &path, None)
            .await
        {
            Ok((200, _)) => tracing::info!("Deregistered from the provider"),
            Ok((s, v)) => tracing::warn!(status = s, body = %v, "Deregistration refused"),
            Err(e) => tracing::warn!(error = %e, "Deregistration failed"),
        }
        self.metrics.registered.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: Uuid, protocol: Protocol) -> CircuitMapEntry {
        CircuitMapEntry {
            id,
            protocol,
            app_mode: AppMode::Interactive,
            port: None,
            session_ids: Vec::new(),
            auth_plugin: None,
            allowed_origins: Vec::new(),
            backends: Vec::new(),
            user_id: None,
        }
    }

    #[test]
    fn the_census_counts_by_protocol_and_new_circuits_after_the_first_map() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let first = Census::of(None, &[entry(a, Protocol::Http), entry(b, Protocol::Tcp)]);
        assert_eq!(first.alive[&Protocol::Http], 1);
        assert_eq!(first.alive[&Protocol::Tcp], 1);
        assert!(
            first.created.is_empty(),
            "circuits before authgate are not created by it"
        );
        let next = Census::of(
            Some(&first.ids),
            &[entry(a, Protocol::Http), entry(c, Protocol::Http)],
        );
        assert_eq!(next.alive[&Protocol::Http], 2);
        assert_eq!(next.alive.get(&Protocol::Tcp), None);
        assert_eq!(next.created[&Protocol::Http], 1);
    }
}
