//! Thin entry point: parse flags, load config, init logging, bind, `run`.

use std::{path::PathBuf, process::ExitCode};

use appproxy_common::startup;
use clap::Parser;

/// mimalloc (tuned by `appproxy_common::alloc`): glibc's malloc kept large freed snapshots
/// (full reconcile passes, big lists) in per-thread arenas (every SQLite connection has its
/// own thread), so RSS grew far beyond the live data.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "appproxy-provider", version, about = "appproxy control plane")]
struct Cli {
    /// TOML configuration file (env `APPPROXY_PROVIDER__*` overrides its values).
    #[arg(short, long, env = "APPPROXY_PROVIDER_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the problems, and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the API's OpenAPI 3.1 document (what `GET /openapi.json` serves) and exit; needs
    /// no configuration.
    #[arg(long)]
    openapi: bool,
    /// Log lines as `text` or `json` (one object a line).
    #[arg(long, value_enum, default_value_t, env = "APPPROXY_LOG_FORMAT")]
    log_format: startup::LogFormat,
}

fn main() -> ExitCode {
    appproxy_common::alloc::reexec_with_allocator_settings();
    let cli = Cli::parse();
    if cli.openapi {
        use std::io::Write;
        let doc = format!("{:#}\n", appproxy_provider::api::document());
        // A closed pipe (`| head`) is the reader's choice, not a failure worth a panic.
        return match std::io::stdout().write_all(doc.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let path = cli.config.as_deref();
    let config = match startup::load_config(
        |env| appproxy_provider::Config::load(path, env),
        cli.check_config,
    ) {
        Ok(c) => c,
        Err(status) => return status,
    };
    startup::init_logging("info,sqlx=warn", cli.log_format);
    // Named threads: profiles (`perf report --sort comm`) tell the processes apart.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("provider-w")
        .build()
        .expect("tokio runtime");
    startup::exit_status(rt.block_on(serve(config)), "Provider")
}

async fn serve(config: appproxy_provider::Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let rx = appproxy_common::shutdown::on_signal();
    appproxy_provider::run(config, listener, rx).await
}
