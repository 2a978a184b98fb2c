//! `superlink`: parse flags, set up logging, run, exit with a status.

use std::process::ExitCode;

use flwr_superlink::{cli, run, version_line};

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
    if let Some(path) = &parsed.args.log_file {
        let rotation = flwr_transport::logfile::Rotation {
            path: path.clone(),
            interval: std::time::Duration::from_secs(
                3600 * u64::from(parsed.args.log_rotation_interval_hours),
            ),
            backups: parsed.args.log_rotation_backup_count as usize,
        };
        if let Err(e) = flwr_transport::logging::init_with_file(rotation, parsed.args.log_format) {
            eprintln!(
                "error: cannot open `--log-file` '{}': {e}. Choose a writable path (the Docker images run as UID 49999).",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    } else {
        flwr_transport::logging::init(parsed.args.log_format);
    }
    match run(parsed).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
