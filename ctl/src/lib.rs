//! `appproxyctl`: the operator's command line over the provider's API (workers, circuits,
//! endpoints, revocations, worker enrolment) and `doctor`, which compares SQL (through the
//! API), etcd and each worker's Traefik and reports drift, stale workers, Redis and ingest lag.
//!
//! Settings come from flags, then the environment (`APPPROXY_*`), then a TOML file
//! (`--config`, `APPPROXY_CTL_CONFIG`). Tables for people, `--json` for scripts. Exit codes:
//! 0 done, 1 the provider (or another piece) refused or could not be reached, 2 bad usage,
//! 3 `doctor` found problems.

mod api;
pub mod doctor;
mod table;

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::{Value, json};

pub use api::{Api, ApiError};

/// Exit code: `doctor` found problems.
pub const EXIT_PROBLEMS: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "appproxyctl",
    version,
    about = "Operate appproxy: workers, circuits, endpoints, revocations, doctor"
)]
pub struct Cli {
    /// The provider's URL.
    #[arg(long, global = true, env = "APPPROXY_PROVIDER_URL")]
    pub provider: Option<String>,
    /// The manager token (`X-BackendAI-Token`).
    #[arg(
        long,
        global = true,
        env = "APPPROXY_MANAGER_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// PEM CA file to trust for the provider (and etcd), instead of the system's.
    #[arg(long, global = true, env = "APPPROXY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// TOML file with any of: provider, token, ca_file, etcd (list), namespace, redis,
    /// traefik_api (table: authority = URL).
    #[arg(long, global = true, env = "APPPROXY_CTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Workers: list, show, drain, enrol.
    #[command(subcommand)]
    Workers(WorkersCmd),
    /// Circuits: list (with filters), show, delete.
    #[command(subcommand)]
    Circuits(CircuitsCmd),
    /// Inference endpoints: list, show (routes and their health).
    #[command(subcommand)]
    Endpoints(EndpointsCmd),
    /// Revoke a user's or a login session's access to every circuit, within seconds.
    Revoke {
        #[arg(long, required_unless_present = "login_session")]
        user: Option<uuid::Uuid>,
        /// The WebUI's login session token (sent hashed by the provider, never stored).
        #[arg(long)]
        login_session: Option<String>,
    },
    /// Worker credentials: list, revoke.
    #[command(subcommand)]
    Credentials(CredentialsCmd),
    /// Compare SQL, etcd and each worker's Traefik; report drift, stale workers, Redis and
    /// ingest lag. Exit 3 when anything is wrong.
    Doctor(doctor::DoctorArgs),
}

#[derive(Subcommand, Debug)]
pub enum WorkersCmd {
    List,
    Show {
        authority: String,
    },
    /// No new circuits on this worker; its circuits stay (`--undo`: take new ones again).
    Drain {
        authority: String,
        #[arg(long)]
        undo: bool,
    },
    /// Issue a credential for a worker (printed once: put it in its authgate's config).
    Enrol {
        authority: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CircuitsCmd {
    List {
        #[arg(long)]
        worker: Option<String>,
        #[arg(long)]
        user: Option<uuid::Uuid>,
        #[arg(long)]
        session: Option<uuid::Uuid>,
        #[arg(long)]
        app: Option<String>,
        /// Only the circuits of inference endpoints.
        #[arg(long)]
        endpoints: bool,
    },
    Show {
        id: uuid::Uuid,
    },
    Delete {
        id: uuid::Uuid,
    },
}

#[derive(Subcommand, Debug)]
pub enum EndpointsCmd {
    List,
    Show { id: uuid::Uuid },
}

#[derive(Subcommand, Debug)]
pub enum CredentialsCmd {
    List,
    Revoke { id: String },
}

/// The settings file (`--config`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub provider: Option<String>,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub etcd: Vec<String>,
    pub namespace: Option<String>,
    pub redis: Option<String>,
    #[serde(default)]
    pub traefik_api: BTreeMap<String, String>,
}

/// Everything a command may need, from flags, environment and file (in that order).
#[derive(Debug)]
pub struct Settings {
    pub provider: String,
    pub token: String,
    pub ca_file: Option<PathBuf>,
    pub file: FileSettings,
}

/// Why a run failed, and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0}")]
    Other(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Result<Settings, Failure> {
        let file: FileSettings = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?
            }
            None => FileSettings::default(),
        };
        let provider =
            (cli.provider.clone().or_else(|| file.provider.clone())).ok_or_else(|| {
                Failure::Usage(
                    "no provider URL: --provider, APPPROXY_PROVIDER_URL or the config file".into(),
                )
            })?;
        // `APPPROXY_PROVIDER_URL` may list replicas (deploy/up's env): the first one.
        let provider = provider.split(',').next().unwrap_or("").trim().to_string();
        let token = (cli.token.clone().or_else(|| file.token.clone())).ok_or_else(|| {
            Failure::Usage(
                "no manager token: --token, APPPROXY_MANAGER_TOKEN or the config file".into(),
            )
        })?;
        Ok(Settings {
            provider,
            token,
            ca_file: cli.ca_file.clone().or_else(|| file.ca_file.clone()),
            file,
        })
    }
}

/// Parse-free entry point: run the command, print, and say how the process exits.
pub async fn main(cli: Cli) -> ExitCode {
    appproxy_common::tls::install_provider();
    match run(&cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("appproxyctl: {e}");
            ExitCode::from(e.code())
        }
    }
}

/// Run one command; `Ok(exit code)`.
pub async fn run(cli: &Cli) -> Result<u8, Failure> {
    let s = Settings::resolve(cli)?;
    let api = Api::new(&s)?;
    let out = Out { json: cli.json };
    match &cli.command {
        Command::Workers(c) => workers(&api, &out, c).await,
        Command::Circuits(c) => circuits(&api, &out, c).await,
        Command::Endpoints(c) => endpoints(&api, &out, c).await,
        Command::Credentials(c) => credentials(&api, &out, c).await,
        Command::Revoke {
            user,
            login_session,
        } => {
            let v = api
                .post(
                    "/v2/revocations",
                    &json!({"user_id": user, "login_session_token": login_session}),
                )
                .await?;
            out.record(&v, &[("revoked_at", "revoked_at")]);
            Ok(0)
        }
        Command::Doctor(args) => {
            let report = doctor::run(&api, &s, args).await?;
            out.doctor(&report);
            Ok(if report.problems().is_empty() {
                0
            } else {
                EXIT_PROBLEMS
            })
        }
    }
}

/// How results are printed.
struct Out {
    json: bool,
}

impl Out {
    /// A list: a table of `cols` (header, JSON field), or the JSON.
    fn list(&self, rows: &[Value], cols: &[(&str, &str)]) {
        if self.json {
            println!("{}", Value::Array(rows.to_vec()));
        } else {
            print!("{}", table::render(rows, cols));
        }
    }

    /// One object: `field: value` lines, or the JSON.
    fn record(&self, v: &Value, fields: &[(&str, &str)]) {
        if self.json {
            println!("{v}");
        } else {
            print!("{}", table::record(v, fields));
        }
    }

    /// What a command did: `json` for scripts, `text` for people.
    fn done(&self, json: Value, text: &str) {
        if self.json {
            println!("{json}");
        } else {
            println!("{text}");
        }
    }

    fn doctor(&self, r: &doctor::Report) {
        if self.json {
            println!("{}", serde_json::to_value(r).unwrap_or_default());
        } else {
            print!("{r}");
        }
    }
}

const WORKER_COLS: &[(&str, &str)] = &[
    ("AUTHORITY", "authority"),
    ("STATUS", "status"),
    ("DRAINING", "draining"),
    ("MODE", "frontend_mode"),
    ("CIRCUITS", "occupied_slots"),
    ("NODES", "nodes"),
    ("LAST HEARTBEAT", "last_heartbeat"),
];

async fn worker_by_authority(api: &Api, authority: &str) -> Result<Value, Failure> {
    let v = api.get("/api/worker").await?;
    (v["workers"].as_array().into_iter().flatten())
        .find(|w| w["authority"] == authority)
        .cloned()
        .ok_or_else(|| Failure::Other(format!("no worker {authority}")))
}

async fn workers(api: &Api, out: &Out, c: &WorkersCmd) -> Result<u8, Failure> {
    match c {
        WorkersCmd::List => {
            let v = api.get("/api/worker").await?;
            out.list(
                v["workers"].as_array().map_or(&[], Vec::as_slice),
                WORKER_COLS,
            );
        }
        WorkersCmd::Show { authority } => {
            let w = worker_by_authority(api, authority).await?;
            let mut fields = WORKER_COLS.to_vec();
            fields.extend([
                ("ID", "id"),
                ("TRAEFIK ROOT KEY", "traefik_root_key"),
                ("AUTHGATE", "authgate_url"),
                ("FAST PATH", "fast_path"),
                ("REDIS OK", "ingest.redis_ok"),
                ("ACTIVITY FLUSHED", "ingest.last_flush_at"),
            ]);
            out.record(&w, &fields);
        }
        WorkersCmd::Drain { authority, undo } => {
            let path = format!("/v2/workers/{authority}/drain");
            let w = api.post(&path, &json!({"drain": !undo})).await?;
            out.record(&w, &[("AUTHORITY", "authority"), ("DRAINING", "draining")]);
        }
        WorkersCmd::Enrol { authority } => {
            let v = api
                .post("/v2/workers/credentials", &json!({"authority": authority}))
                .await?;
            out.record(
                &v,
                &[
                    ("ID", "id"),
                    ("AUTHORITY", "authority"),
                    ("CREDENTIAL", "credential"),
                ],
            );
        }
    }
    Ok(0)
}

const CIRCUIT_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("APP", "app"),
    ("MODE", "app_mode"),
    ("PUBLIC", "open_to_public"),
    ("WORKER", "worker_authority"),
    ("GEN", "generation"),
    ("URL", "url"),
];

/// Each circuit's worker by its authority too (`worker_authority`; the API names its id).
async fn with_authorities(api: &Api, circuits: &mut [Value]) -> Result<(), Failure> {
    let workers = api.get("/api/worker").await?;
    let names: BTreeMap<&str, &Value> = (workers["workers"].as_array().into_iter().flatten())
        .filter_map(|w| Some((w["id"].as_str()?, &w["authority"])))
        .collect();
    for c in circuits {
        let name = c["worker"].as_str().and_then(|id| names.get(id)).cloned();
        c["worker_authority"] = name.cloned().unwrap_or(Value::Null);
    }
    Ok(())
}

async fn circuits(api: &Api, out: &Out, c: &CircuitsCmd) -> Result<u8, Failure> {
    match c {
        CircuitsCmd::List {
            worker,
            user,
            session,
            app,
            endpoints,
        } => {
            let mut q = Vec::new();
            if let Some(w) = worker {
                q.push(format!("worker={w}"));
            }
            if let Some(u) = user {
                q.push(format!("user_id={u}"));
            }
            if let Some(s) = session {
                q.push(format!("session_id={s}"));
            }
            let path = format!("/v2/circuits?{}", q.join("&"));
            let v = api.get(&path).await?;
            let mut rows: Vec<Value> = (v["circuits"].as_array().into_iter().flatten())
                .filter(|c| app.as_ref().is_none_or(|a| c["app"] == a.as_str()))
                .filter(|c| !endpoints || !c["endpoint_id"].is_null())
                .cloned()
                .collect();
            with_authorities(api, &mut rows).await?;
            out.list(&rows, CIRCUIT_COLS);
        }
        CircuitsCmd::Show { id } => {
            let mut v = [api.get(&format!("/v2/circuits/{id}")).await?];
            with_authorities(api, &mut v).await?;
            let [v] = v;
            let mut fields = CIRCUIT_COLS.to_vec();
            fields.extend([
                ("USER", "user_id"),
                ("ENDPOINT", "endpoint_id"),
                ("SESSIONS", "session_ids"),
                ("ROUTES", "route_info"),
                ("CREATED", "created_at"),
                ("UPDATED", "updated_at"),
            ]);
            out.record(&v, &fields);
        }
        CircuitsCmd::Delete { id } => {
            api.delete(&format!("/v2/circuits/{id}")).await?;
            out.done(json!({"deleted": id}), &format!("circuit {id} deleted"));
        }
    }
    Ok(0)
}

async fn endpoints(api: &Api, out: &Out, c: &EndpointsCmd) -> Result<u8, Failure> {
    let v = api.get("/health/endpoints").await?;
    let all = v["endpoints"].as_array().cloned().unwrap_or_default();
    match c {
        EndpointsCmd::List => {
            let rows: Vec<Value> = all
                .iter()
                .map(|e| {
                    let routes = e["routes"].as_array().map_or(0, Vec::len);
                    let healthy = (e["routes"].as_array().into_iter().flatten())
                        .filter(|r| r["health_status"] == "healthy")
                        .count();
                    let mut e = e.clone();
                    e["replicas"] = json!(format!("{healthy}/{routes} healthy"));
                    e
                })
                .collect();
            out.list(
                &rows,
                &[
                    ("ENDPOINT", "endpoint_id"),
                    ("CIRCUIT", "circuit_id"),
                    ("WORKER", "worker"),
                    ("REPLICAS", "replicas"),
                    ("HEALTH CHECK", "health_check_enabled"),
                    ("PROBLEM", "problem"),
                ],
            );
        }
        EndpointsCmd::Show { id } => {
            let e = all
                .iter()
                .find(|e| e["endpoint_id"] == id.to_string())
                .ok_or_else(|| Failure::Other(format!("no endpoint {id}")))?;
            if out.json {
                println!("{e}");
            } else {
                print!(
                    "{}",
                    table::record(
                        e,
                        &[
                            ("ENDPOINT", "endpoint_id"),
                            ("CIRCUIT", "circuit_id"),
                            ("WORKER", "worker"),
                            ("PROBLEM", "problem"),
                        ]
                    )
                );
                println!();
                print!(
                    "{}",
                    table::render(
                        e["routes"].as_array().map_or(&[], Vec::as_slice),
                        &[
                            ("ROUTE", "route_id"),
                            ("SESSION", "session_id"),
                            ("HOST", "kernel_host"),
                            ("PORT", "kernel_port"),
                            ("RATIO", "traffic_ratio"),
                            ("HEALTH", "health_status"),
                        ]
                    )
                );
            }
        }
    }
    Ok(0)
}

async fn credentials(api: &Api, out: &Out, c: &CredentialsCmd) -> Result<u8, Failure> {
    match c {
        CredentialsCmd::List => {
            let v = api.get("/v2/workers/credentials").await?;
            out.list(
                v["credentials"].as_array().map_or(&[], Vec::as_slice),
                &[
                    ("ID", "id"),
                    ("AUTHORITY", "authority"),
                    ("CREATED", "created_at"),
                    ("REVOKED", "revoked_at"),
                ],
            );
        }
        CredentialsCmd::Revoke { id } => {
            api.delete(&format!("/v2/workers/credentials/{id}")).await?;
            out.done(json!({"revoked": id}), &format!("credential {id} revoked"));
        }
    }
    Ok(0)
}
