//! Thin entry point of `appproxyctl`: parse, run, exit with the outcome's code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = appproxy_ctl::Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(appproxy_ctl::main(cli))
}
