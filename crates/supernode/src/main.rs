//! `supernode`: parse flags, set up logging, run, exit with a status.

use std::process::ExitCode;

use flwr_supernode::{cli, run, version_line};

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
    flwr_transport::logging::init(parsed.args.log_format);
    match run(parsed).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
