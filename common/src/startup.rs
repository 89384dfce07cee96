//! The start-up path both binaries share: configuration (every problem at once, exit 64),
//! `--check-config`, logging, and the exit status of the run.

use std::{collections::BTreeMap, process::ExitCode};

use crate::config::ConfigError;

/// Exit status for a configuration that cannot be used (sysexits' `EX_USAGE`).
pub const EX_USAGE: u8 = 64;

/// Load the configuration with `load` (given the process environment for overrides). `Err`
/// carries the exit status `main` returns: 64 with every problem printed, or success after
/// `--check-config` (`check_only`).
pub fn load_config<C>(
    load: impl FnOnce(&BTreeMap<String, String>) -> Result<C, ConfigError>,
    check_only: bool,
) -> Result<C, ExitCode> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match load(&env) {
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(EX_USAGE))
        }
        Ok(_) if check_only => {
            eprintln!("configuration OK");
            Err(ExitCode::SUCCESS)
        }
        Ok(c) => Ok(c),
    }
}

/// How log lines are written: `text` for people, `json` (one object a line, with the
/// request's span — request id, method, matched route — on every line logged inside it) for
/// log collectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Log to stderr with `RUST_LOG`, or `default_filter` when it is unset, in `format`.
pub fn init_logging(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// The exit status of a finished run; an error is logged as `what stopped with an error`.
pub fn exit_status(result: anyhow::Result<()>, what: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "{what} stopped with an error");
            ExitCode::FAILURE
        }
    }
}
