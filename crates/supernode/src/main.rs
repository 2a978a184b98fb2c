//! `supernode`: parse flags, set up logging, run, exit with a status.

use std::process::ExitCode;

use flwr_supernode::{cli, run, version_line};

#[global_allocator]
static ALLOCATOR: flwr_daemon::Allocator = flwr_daemon::Allocator {};

#[tokio::main]
async fn main() -> ExitCode {
    let parsed = match cli::parse_from(std::env::args_os()) {
        Ok(p) => p,
        Err(e) => e.exit(),
    };
    if parsed.args.version {
        println!("{}", version_line());
        return ExitCode::SUCCESS;
    }
    let options = flwr_daemon::logging::LogOptions {
        format: parsed.args.log_format,
        file: None,
        otlp: parsed
            .args
            .otlp_endpoint
            .clone()
            .map(|e| (e, "flwr-supernode")),
    };
    flwr_daemon::logging::run_logged(options, run(parsed)).await
}
