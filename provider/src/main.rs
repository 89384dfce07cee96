//! Thin entry point: parse flags, load config, init logging, bind, `run`.

use std::{path::PathBuf, process::ExitCode};

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
}

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    appproxy_common::alloc::reexec_with_allocator_settings();
    let cli = Cli::parse();
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let config = match appproxy_provider::Config::load(cli.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if cli.check_config {
        eprintln!("configuration OK");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    // Named threads: profiles (`perf report --sort comm`) tell the processes apart.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("provider-w")
        .build()
        .expect("tokio runtime");
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Provider stopped with an error");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: appproxy_provider::Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let rx = appproxy_common::shutdown::on_signal();
    appproxy_provider::run(config, listener, rx).await
}
