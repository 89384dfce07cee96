//! `appproxyctl doctor`: what SQL holds (through the provider's API) against what etcd holds
//! under each worker's root key and what each worker's Traefik serves (its API lists its
//! routers), plus stale workers, Redis and the workers' activity ingestion. The comparison is
//! pure ([`compare`]); [`run`] gathers. Drift seen once is looked at again after a moment (a
//! create can land between the reads); only what stays is reported.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{Api, Failure, Settings};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// etcd endpoints (repeat or comma-separate; default: the config file's `etcd`).
    #[arg(long = "etcd", env = "APPPROXY_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Redis URL to ping (default: the config file's `redis`).
    #[arg(long, env = "APPPROXY_REDIS_URL")]
    pub redis: Option<String>,
    /// A worker's Traefik API, `AUTHORITY=URL` (repeat; default: the config file's
    /// `traefik_api`). Workers without one are compared in SQL and etcd only.
    #[arg(long = "traefik-api", value_parser = authority_url)]
    pub traefik_api: Vec<(String, String)>,
    /// A worker whose last heartbeat is older than this many seconds is stale.
    #[arg(long, default_value_t = 60)]
    pub stale_after: i64,
    /// A worker whose activity reached Redis longer ago than this many seconds lags.
    #[arg(long, default_value_t = 60)]
    pub max_ingest_lag: i64,
}

fn authority_url(s: &str) -> Result<(String, String), String> {
    let (a, u) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not AUTHORITY=URL"))?;
    Ok((a.to_string(), u.trim_end_matches('/').to_string()))
}

/// One thing that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The worker it concerns, if one.
    pub worker: Option<String>,
    /// `missing_in_etcd`, `stray_in_etcd`, `not_served`, `router_error`, `stray_in_traefik`,
    /// `worker_stale`, `worker_lost`, `ingest_lag`, `redis`, `etcd`, `traefik`.
    pub kind: &'static str,
    pub detail: String,
}

/// What one worker holds in each place.
#[derive(Debug, Default, Serialize)]
pub struct WorkerView {
    pub authority: String,
    pub status: String,
    pub circuits_in_sql: usize,
    pub circuits_in_etcd: usize,
    /// `None`: its Traefik API was not given.
    pub circuits_in_traefik: Option<usize>,
}

/// The doctor's answer.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub workers: Vec<WorkerView>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn problems(&self) -> &[Finding] {
        &self.findings
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows: Vec<Value> = self
            .workers
            .iter()
            .map(|w| serde_json::to_value(w).unwrap_or_default())
            .collect();
        f.write_str(&crate::table::render(
            &rows,
            &[
                ("WORKER", "authority"),
                ("STATUS", "status"),
                ("SQL", "circuits_in_sql"),
                ("ETCD", "circuits_in_etcd"),
                ("TRAEFIK", "circuits_in_traefik"),
            ],
        ))?;
        if self.findings.is_empty() {
            return writeln!(f, "\nno problems found");
        }
        writeln!(f, "\n{} problem(s):", self.findings.len())?;
        for p in &self.findings {
            let w = p.worker.as_deref().unwrap_or("-");
            writeln!(f, "  [{}] {w}: {}", p.kind, p.detail)?;
        }
        Ok(())
    }
}

/// A router's state in Traefik: enabled, or its error.
pub type Served = BTreeMap<Uuid, Result<(), String>>;

/// The drift of one worker: circuits in SQL without keys in etcd and the reverse; with its
/// Traefik's routers, circuits it does not serve, serves with an error, or serves though SQL
/// has none.
pub fn compare(
    worker: &str,
    sql: &BTreeSet<Uuid>,
    etcd: &BTreeSet<Uuid>,
    traefik: Option<&Served>,
) -> Vec<Finding> {
    let at = |kind, detail: String| Finding {
        worker: Some(worker.to_string()),
        kind,
        detail,
    };
    let mut out = Vec::new();
    for id in sql.difference(etcd) {
        out.push(at(
            "missing_in_etcd",
            format!("circuit {id} is in SQL, not in etcd"),
        ));
    }
    for id in etcd.difference(sql) {
        out.push(at(
            "stray_in_etcd",
            format!("circuit {id} is in etcd, not in SQL"),
        ));
    }
    if let Some(served) = traefik {
        for id in sql {
            match served.get(id) {
                None => out.push(at(
                    "not_served",
                    format!("circuit {id} is in SQL, its Traefik serves no router for it"),
                )),
                Some(Err(e)) => out.push(at("router_error", format!("circuit {id}: {e}"))),
                Some(Ok(())) => {}
            }
        }
        for id in served.keys().filter(|id| !sql.contains(id)) {
            out.push(at(
                "stray_in_traefik",
                format!("circuit {id} is served by Traefik, not in SQL"),
            ));
        }
    }
    out
}

/// Circuit ids of router keys under `root` (`<root>/http/routers/ap-<id>…/…`, TCP too).
pub fn circuits_in_keys<'a>(root: &str, keys: impl Iterator<Item = &'a str>) -> BTreeSet<Uuid> {
    keys.filter_map(|k| {
        let rest = k.strip_prefix(root)?.strip_prefix('/')?;
        let rest =
            (rest.strip_prefix("http/routers/")).or_else(|| rest.strip_prefix("tcp/routers/"))?;
        appproxy_common::names::circuit_of_object(rest.split('/').next()?)
    })
    .collect()
}

/// What one gathering saw of a worker.
struct Seen {
    view: WorkerView,
    sql: BTreeSet<Uuid>,
    etcd: BTreeSet<Uuid>,
    traefik: Option<Served>,
    /// Why its Traefik could not be asked, if it could not.
    unreachable: Option<String>,
}

/// Gather and compare; drift is looked at a second time before it is reported.
pub async fn run(api: &Api, s: &Settings, args: &DoctorArgs) -> Result<Report, Failure> {
    let mut report = Report::default();
    let ready = api.get("/health/readyz").await;
    if let Err(e) = ready {
        report.findings.push(Finding {
            worker: None,
            kind: "provider",
            detail: e.to_string(),
        });
    }
    let endpoints = if args.etcd.is_empty() {
        s.file.etcd.clone()
    } else {
        args.etcd.clone()
    };
    let mut etcd = match endpoints.is_empty() {
        true => None,
        false => match connect_etcd(&endpoints, s).await {
            Ok(c) => Some(c),
            Err(e) => {
                report.findings.push(Finding {
                    worker: None,
                    kind: "etcd",
                    detail: e,
                });
                None
            }
        },
    };
    if etcd.is_none() && endpoints.is_empty() {
        return Err(Failure::Usage(
            "doctor needs etcd: --etcd, APPPROXY_ETCD_ENDPOINTS or the config file's etcd".into(),
        ));
    }
    let mut apis: BTreeMap<String, String> = s.file.traefik_api.clone();
    apis.extend(args.traefik_api.iter().cloned());
    let workers = api.get("/api/worker").await?;
    let workers = workers["workers"].as_array().cloned().unwrap_or_default();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for w in &workers {
        report.findings.extend(worker_health(w, now, args));
    }
    if let Some(etcd) = etcd.as_mut() {
        for w in &workers {
            let authority = w["authority"].as_str().unwrap_or_default();
            let mut seen = gather(api, etcd, w, apis.get(authority)).await?;
            let mut drift = compare(authority, &seen.sql, &seen.etcd, seen.traefik.as_ref());
            if !drift.is_empty() {
                tokio::time::sleep(Duration::from_secs(2)).await;
                seen = gather(api, etcd, w, apis.get(authority)).await?;
                drift = compare(authority, &seen.sql, &seen.etcd, seen.traefik.as_ref());
            }
            report.findings.extend(drift);
            if let Some(why) = seen.unreachable {
                report.findings.push(Finding {
                    worker: Some(authority.to_string()),
                    kind: "traefik",
                    detail: why,
                });
            }
            report.workers.push(seen.view);
        }
    }
    if let Some(url) = args.redis.clone().or_else(|| s.file.redis.clone())
        && let Err(e) = ping_redis(&url).await
    {
        report.findings.push(Finding {
            worker: None,
            kind: "redis",
            detail: format!("{}: {e}", appproxy_common::tls::redact(&url)),
        });
    }
    Ok(report)
}

/// A worker's liveness and its activity ingestion, from the provider's view.
fn worker_health(w: &Value, now: i64, args: &DoctorArgs) -> Vec<Finding> {
    let authority = w["authority"].as_str().unwrap_or_default();
    let at = |kind, detail: String| Finding {
        worker: Some(authority.to_string()),
        kind,
        detail,
    };
    let mut out = Vec::new();
    match w["status"].as_str() {
        Some("ALIVE") => {}
        Some("LOST") => out.push(at("worker_lost", "no heartbeat: marked LOST".into())),
        _ => return out,
    }
    let heartbeat = w["last_heartbeat"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| now - t.unix_timestamp());
    if let Some(age) = heartbeat.filter(|a| *a > args.stale_after) {
        out.push(at("worker_stale", format!("last heartbeat {age} s ago")));
    }
    if w["status"] == "ALIVE" {
        let ingest = &w["ingest"];
        if ingest["redis_ok"] == false {
            out.push(at("ingest_lag", "its authgate cannot reach Redis".into()));
        }
        if let Some(age) = ingest["flush_age_seconds"]
            .as_i64()
            .filter(|a| *a > args.max_ingest_lag)
        {
            out.push(at(
                "ingest_lag",
                format!("activity last reached Redis {age} s ago"),
            ));
        }
    }
    out
}

async fn gather(
    api: &Api,
    etcd: &mut etcd_client::Client,
    w: &Value,
    traefik_api: Option<&String>,
) -> Result<Seen, Failure> {
    let authority = w["authority"].as_str().unwrap_or_default();
    let root = w["traefik_root_key"].as_str().unwrap_or_default();
    let list = api.get(&format!("/v2/circuits?worker={authority}")).await?;
    let sql: BTreeSet<Uuid> = (list["circuits"].as_array().into_iter().flatten())
        .filter_map(|c| c["id"].as_str()?.parse().ok())
        .collect();
    let resp = etcd
        .get(
            format!("{root}/"),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .map_err(|e| Failure::Other(format!("etcd: {e}")))?;
    let keys: Vec<String> = resp
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok().map(str::to_string))
        .collect();
    let etcd_ids = circuits_in_keys(root, keys.iter().map(String::as_str));
    let (traefik, unreachable) = match traefik_api {
        Some(url) => match served(api.http(), url).await {
            Ok(s) => (Some(s), None),
            Err(e) => (
                None,
                Some(format!("its Traefik at {url} does not answer: {e}")),
            ),
        },
        None => (None, None),
    };
    Ok(Seen {
        view: WorkerView {
            authority: authority.to_string(),
            status: w["status"].as_str().unwrap_or_default().to_string(),
            circuits_in_sql: sql.len(),
            circuits_in_etcd: etcd_ids.len(),
            circuits_in_traefik: traefik.as_ref().map(BTreeMap::len),
        },
        sql,
        etcd: etcd_ids,
        traefik,
        unreachable,
    })
}

/// The circuits a Traefik serves (its routers from etcd, HTTP and TCP, every page), each
/// enabled or with its error.
async fn served(http: &reqwest::Client, api: &str) -> Result<Served, String> {
    let mut out = Served::new();
    for kind in ["http", "tcp"] {
        let mut page = 1;
        // Bounded: 1,000 routers a page, at most 1,000 pages.
        while page <= 1000 {
            let url = format!("{api}/api/{kind}/routers?per_page=1000&page={page}");
            let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let next = resp
                .headers()
                .get("x-next-page")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(1);
            let routers: Vec<Value> = resp.json().await.map_err(|e| e.to_string())?;
            for r in &routers {
                let Some(name) = r["name"].as_str().and_then(|n| n.strip_suffix("@etcd")) else {
                    continue;
                };
                let Some(id) = appproxy_common::names::circuit_of_object(name) else {
                    continue;
                };
                let state = if r["status"] == "enabled" {
                    Ok(())
                } else {
                    Err(format!("router {name} is {}: {}", r["status"], r["error"]))
                };
                // A circuit's twin (`-ws`) shares its fate: the first error wins.
                let entry = out.entry(id).or_insert(Ok(()));
                if entry.is_ok() {
                    *entry = state;
                }
            }
            if next <= page {
                break;
            }
            page = next;
        }
    }
    Ok(out)
}

async fn connect_etcd(endpoints: &[String], s: &Settings) -> Result<etcd_client::Client, String> {
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10));
    if let Some(ca) = &s.ca_file
        && endpoints.iter().any(|e| e.starts_with("https://"))
    {
        let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        opts = opts.with_tls(
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(pem)),
        );
    }
    etcd_client::Client::connect(endpoints, Some(opts))
        .await
        .map_err(|e| format!("{}: {e}", endpoints.join(",")))
}

/// How long the Redis check waits for `PING`.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

async fn ping_redis(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let ping = async {
        let mut con = appproxy_common::redis_conn::multiplexed(&client, PING_TIMEOUT).await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    };
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u128) -> Vec<Uuid> {
        (1..=n).map(Uuid::from_u128).collect()
    }

    #[test]
    fn drift_between_sql_etcd_and_traefik_is_named_per_circuit() {
        let [a, b, c] = ids(3)[..] else {
            unreachable!()
        };
        let sql: BTreeSet<Uuid> = [a, b].into();
        let etcd: BTreeSet<Uuid> = [a, c].into();
        let served: Served = [(a, Err("router ap-x is disabled".into())), (c, Ok(()))].into();
        let kinds: Vec<(&str, String)> = compare("w", &sql, &etcd, Some(&served))
            .into_iter()
            .map(|f| (f.kind, f.detail))
            .collect();
        assert_eq!(
            kinds.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [
                "missing_in_etcd",
                "stray_in_etcd",
                "router_error",
                "not_served",
                "stray_in_traefik"
            ]
        );
        assert!(kinds[0].1.contains(&b.to_string()));
        assert!(compare("w", &sql, &sql, None).is_empty());
    }

    #[test]
    fn router_keys_name_their_circuits_and_nothing_else_does() {
        let id = Uuid::from_u128(7);
        let root = "traefik/worker_x";
        let keys = [
            format!("{root}/http/routers/ap-{id}/rule"),
            format!("{root}/http/routers/ap-{id}-ws/rule"),
            format!("{root}/tcp/routers/ap-{}/service", Uuid::from_u128(8)),
            format!("{root}/http/middlewares/ap-{}-auth/x", Uuid::from_u128(9)),
            format!("{root}/http/routers/ap-setup/rule"),
            format!("{root}-other/http/routers/ap-{}/rule", Uuid::from_u128(10)),
        ];
        let got = circuits_in_keys(root, keys.iter().map(String::as_str));
        assert_eq!(got, [id, Uuid::from_u128(8)].into());
    }
}
