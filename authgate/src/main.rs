//! Thin entry point of `appproxy-authgate`.

use std::{path::PathBuf, process::ExitCode};

use appproxy_authgate::traefik_config::{
    Acme, Challenge, EtcdTls, Frontend, Https, Settings, check_etcd, check_https, render_dynamic,
    render_static,
};
use clap::{Parser, Subcommand};

/// mimalloc (tuned by `appproxy_common::alloc`): the ForwardAuth path allocates a little per
/// request on both runtime threads; glibc's malloc showed ~11 % of authgate's samples in the
/// benchmark's profile, and keeps freed memory in per-thread arenas.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "appproxy-authgate",
    version,
    about = "appproxy per-worker auth gate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ForwardAuth and setup, register this worker with the provider.
    Serve(ServeArgs),
    /// Write the static configuration of this worker's Traefik into a directory.
    TraefikConfig(Box<TraefikArgs>),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (env `APPPROXY_AUTHGATE__*` overrides its values).
    #[arg(short, long, env = "APPPROXY_AUTHGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the problems, and exit.
    #[arg(long)]
    check_config: bool,
    /// Log lines as `text` or `json` (one object a line).
    #[arg(long, value_enum, default_value_t, env = "APPPROXY_LOG_FORMAT")]
    log_format: appproxy_common::startup::LogFormat,
}

#[derive(clap::Args)]
struct TraefikArgs {
    #[arg(long)]
    authority: String,
    #[arg(long, default_value = "traefik")]
    namespace: String,
    #[arg(long = "etcd-endpoint", default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// CA (PEM) Traefik trusts for `https://` etcd endpoints (default: the system's).
    #[arg(long)]
    etcd_ca_file: Option<String>,
    /// Client certificate (PEM) Traefik presents to etcd.
    #[arg(long, requires = "etcd_key_file")]
    etcd_cert_file: Option<String>,
    #[arg(long, requires = "etcd_cert_file")]
    etcd_key_file: Option<String>,
    /// etcd user for Traefik (read-only on its root key is enough).
    #[arg(long, requires = "etcd_password")]
    etcd_user: Option<String>,
    #[arg(
        long,
        env = "APPPROXY_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    etcd_password: Option<String>,
    /// Port range `LO-HI` (port mode).
    #[arg(long, conflicts_with = "apps_port")]
    port_range: Option<String>,
    /// Port of the one `apps` entrypoint (wildcard and path modes).
    #[arg(long)]
    apps_port: Option<u16>,
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// Loopback port for Traefik's API, ping and metrics.
    #[arg(long, default_value_t = 10202)]
    api_port: u16,
    #[arg(long, requires = "key_file")]
    cert_file: Option<String>,
    #[arg(long, requires = "cert_file")]
    key_file: Option<String>,
    #[arg(long)]
    log_file: Option<String>,
    #[arg(long, default_value_t = 100)]
    throttle_ms: u64,
    /// authgate's OTLP logs receiver (its `ingest.listen`), e.g.
    /// `http://127.0.0.1:10203/v1/logs` (activity).
    #[arg(long, requires = "otlp_secret")]
    otlp_logs: Option<String>,
    /// The receiver's `ingest.secret`, sent with every export.
    #[arg(long, env = "APPPROXY_INGEST_SECRET", hide_env_values = true)]
    otlp_secret: Option<String>,
    /// Directory that receives `traefik.yml` (and `dynamic.yml`).
    #[arg(long)]
    out_dir: PathBuf,
    /// The fast path: authgate's `[fast_path] dir` (mounted read-only into the plugin).
    #[arg(long, requires = "fast_path_module")]
    fast_path_dir: Option<String>,
    /// The fast-path plugin (`appproxy_fastpath.wasm`), installed under `plugins-local/` of
    /// `--traefik-workdir`.
    #[arg(long, requires = "fast_path_dir")]
    fast_path_module: Option<PathBuf>,
    /// Traefik's working directory (where it looks for `plugins-local/`); default `--out-dir`.
    #[arg(long)]
    traefik_workdir: Option<PathBuf>,
    #[command(flatten)]
    https: HttpsArgs,
}

/// The worker's HTTPS (its `[worker] tls_listen`, `cert_resolver`, `cert_domains` say the
/// same to the provider).
#[derive(clap::Args)]
struct HttpsArgs {
    /// The app entry points terminate TLS (with `--cert-file`, ACME, or both).
    #[arg(long)]
    tls: bool,
    /// Plain-HTTP entry point `web`: ACME HTTP-01 challenges, and (wildcard mode with
    /// `--tls`) a permanent redirect to HTTPS.
    #[arg(long)]
    web_port: Option<u16>,
    /// `Strict-Transport-Security` max-age on the app entry points (0: no header).
    #[arg(long, default_value_t = 0)]
    hsts_seconds: u64,
    /// ACME challenge: `http` (HTTP-01 on `--web-port`), `tls-alpn` (TLS-ALPN-01) or `dns`
    /// (DNS-01, the only one for wildcard certificates). Without it: no ACME.
    #[arg(long, value_parser = ["http", "tls-alpn", "dns"])]
    acme_challenge: Option<String>,
    /// The resolver's name (the worker's `cert_resolver`).
    #[arg(long, default_value = "acme")]
    acme_resolver: String,
    #[arg(long, default_value = "")]
    acme_email: String,
    /// ACME directory URL (default: Let's Encrypt's production directory).
    #[arg(long)]
    acme_ca_server: Option<String>,
    /// PEM CA of a private ACME server's own certificate.
    #[arg(long)]
    acme_ca_file: Option<String>,
    /// Account and certificate storage (default: `acme.json` in `--out-dir`).
    #[arg(long)]
    acme_storage: Option<String>,
    /// Traefik's DNS provider for DNS-01 (credentials in Traefik's environment).
    #[arg(long, default_value = "")]
    acme_dns_provider: String,
    /// DNS server (`host:port`) for the DNS-01 lookups; repeatable.
    #[arg(long)]
    acme_dns_resolver: Vec<String>,
    /// Skip DNS-01 propagation checks (a test DNS server that answers at once).
    #[arg(long)]
    acme_dns_no_propagation_check: bool,
    /// A TLS-terminating load balancer's address or CIDR whose `X-Forwarded-*` headers the
    /// app entry points keep (with `tls_advertised`); repeatable.
    #[arg(long)]
    trusted_proxy: Vec<String>,
}

impl HttpsArgs {
    fn settings(self, out_dir: &std::path::Path) -> Https {
        let challenge = self.acme_challenge.map(|c| match c.as_str() {
            "http" => Challenge::Http,
            "tls-alpn" => Challenge::TlsAlpn,
            _ => Challenge::Dns {
                provider: self.acme_dns_provider,
                resolvers: self.acme_dns_resolver,
                no_propagation_check: self.acme_dns_no_propagation_check,
            },
        });
        Https {
            enabled: self.tls,
            web_port: self.web_port,
            hsts_seconds: self.hsts_seconds,
            trusted_proxies: self.trusted_proxy,
            acme: challenge.map(|challenge| Acme {
                name: self.acme_resolver,
                email: self.acme_email,
                ca_server: self.acme_ca_server,
                ca_file: self.acme_ca_file,
                storage: (self.acme_storage)
                    .unwrap_or_else(|| out_dir.join("acme.json").display().to_string()),
                challenge,
            }),
        }
    }
}

fn main() -> ExitCode {
    appproxy_common::alloc::reexec_with_allocator_settings();
    match Cli::parse().command {
        Command::Serve(a) => serve(a),
        Command::TraefikConfig(a) => traefik_config(*a),
    }
}

fn serve(a: ServeArgs) -> ExitCode {
    use appproxy_common::startup;
    let path = a.config.as_deref();
    let config = match startup::load_config(
        |env| appproxy_authgate::Config::load(path, env),
        a.check_config,
    ) {
        Ok(c) => c,
        Err(status) => return status,
    };
    startup::init_logging("info", a.log_format);
    // One serving thread per core unless configured: each has a listener and a
    // single-threaded runtime (see `serve`); this one also runs the background tasks.
    let threads = match config.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let listeners = match appproxy_authgate::serve::bind(config.listen, threads) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, addr = %config.listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    // Named threads (this runtime runs on one, not on `main`): profiles
    // (`perf report --sort comm`) tell the processes apart.
    let serving = std::thread::Builder::new()
        .name("authgate-w".into())
        .spawn(move || {
            appproxy_authgate::serve::runtime()?.block_on(async move {
                let rx = appproxy_common::shutdown::on_signal();
                appproxy_authgate::run(config, listeners, rx).await
            })
        });
    let result = match serving.map(|t| t.join()) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(anyhow::anyhow!("the serving thread panicked")),
        Err(e) => Err(e.into()),
    };
    startup::exit_status(result, "authgate")
}

fn traefik_config(a: TraefikArgs) -> ExitCode {
    let frontend = match (&a.port_range, a.apps_port) {
        (Some(r), None) => {
            let parsed = r.split_once('-').and_then(|(lo, hi)| {
                Some((
                    lo.trim().parse::<u16>().ok()?,
                    hi.trim().parse::<u16>().ok()?,
                ))
            });
            match parsed {
                Some((lo, hi)) if lo >= 1 && lo <= hi => Frontend::Ports { lo, hi },
                _ => {
                    eprintln!("--port-range must be LO-HI with 1 <= LO <= HI <= 65535");
                    return ExitCode::from(appproxy_common::startup::EX_USAGE);
                }
            }
        }
        (None, Some(port)) => Frontend::Wildcard { port },
        _ => {
            eprintln!("give exactly one of --port-range or --apps-port");
            return ExitCode::from(appproxy_common::startup::EX_USAGE);
        }
    };
    let dynamic = a.out_dir.join("dynamic.yml");
    let https = a.https.settings(&a.out_dir);
    let s = Settings {
        authority: a.authority,
        namespace: a.namespace,
        etcd_endpoints: a.etcd_endpoints,
        etcd_tls: (a.etcd_ca_file.is_some() || a.etcd_cert_file.is_some()).then_some(EtcdTls {
            ca_file: a.etcd_ca_file,
            cert_file: a.etcd_cert_file,
            key_file: a.etcd_key_file,
        }),
        etcd_auth: a.etcd_user.zip(a.etcd_password),
        frontend,
        bind_host: a.bind_host,
        api_port: a.api_port,
        default_cert: a.cert_file.zip(a.key_file),
        dynamic_file: dynamic.display().to_string(),
        log_file: a.log_file,
        throttle_ms: a.throttle_ms,
        otlp_logs: a.otlp_logs.zip(a.otlp_secret),
        https,
        fast_path_dir: a.fast_path_dir.clone(),
    };
    if let Err(e) = check_etcd(&s).and_then(|_| check_https(&s)) {
        eprintln!("{e}");
        return ExitCode::from(appproxy_common::startup::EX_USAGE);
    }
    // Owner-only: the static configuration carries the ingest secret (and etcd's password).
    let write = |path: PathBuf, text: String| {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let result = std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| e.to_string())
        .and_then(|_| write(a.out_dir.join("traefik.yml"), render_static(&s)))
        .and_then(|_| match render_dynamic(&s) {
            Some(text) => write(dynamic, text),
            None => Ok(()),
        })
        .and_then(|_| match &a.fast_path_module {
            Some(wasm) => {
                let workdir = a.traefik_workdir.as_deref().unwrap_or(&a.out_dir);
                // The mount must exist when Traefik starts (authgate fills it later).
                let state = a.fast_path_dir.as_deref().unwrap_or_default();
                std::fs::create_dir_all(std::path::Path::new(state).join("counts"))
                    .and_then(|_| {
                        appproxy_authgate::traefik_config::install_fast_path(workdir, wasm)
                    })
                    .map_err(|e| format!("fast-path plugin {}: {e}", wasm.display()))
            }
            None => Ok(()),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write Traefik configuration: {e}");
            ExitCode::FAILURE
        }
    }
}
