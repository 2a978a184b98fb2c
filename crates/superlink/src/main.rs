//! `superlink`: parse flags, set up logging, run, exit with a status.

use std::process::ExitCode;

use flwr_superlink::{cli, run, version_line};

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
        file: parsed
            .args
            .log_file
            .as_ref()
            .map(|path| flwr_daemon::logfile::Rotation {
                path: path.clone(),
                interval: std::time::Duration::from_secs(
                    3600 * u64::from(parsed.args.log_rotation_interval_hours),
                ),
                backups: parsed.args.log_rotation_backup_count as usize,
            }),
        otlp: parsed
            .args
            .otlp_endpoint
            .clone()
            .map(|e| (e, "flwr-superlink")),
    };
    flwr_daemon::logging::run_logged(options, run(parsed)).await
}
