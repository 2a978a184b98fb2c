//! The Flower SuperNode: joins a SuperLink over the Fleet API and runs ClientApps through the
//! ClientAppIo API, wire-compatible with Flower 1.28.0.
//!
//! * [`cli`]: the command line, flag for flag as `flower-supernode`.
//! * [`config`]: validation of the flags into a [`config::Config`].
//! * [`metrics`]: the SuperNode's Prometheus metrics (`--metrics-address`).
//! * [`forker`]: the ClientApp fork launcher (`--clientapp-launch fork`).
//! * [`trusted`]: `--trusted-entities`, the publishers whose signatures make a FAB acceptable.

pub mod app;
pub mod cli;
pub mod clientappio;
pub mod config;
pub mod fleet;
pub mod forker;
pub mod metrics;
pub mod node;
pub mod node_config;
pub mod state;
pub mod trusted;

use std::time::Duration;

/// How long leaving the SuperLink may take at shutdown.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// The version line of `--version`.
pub fn version_line() -> String {
    flwr_daemon::cli::version_line("supernode", env!("CARGO_PKG_VERSION"))
}

/// Why the SuperNode stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The flags are not valid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The files the flags name could not be used, or a port could not be bound.
    #[error(transparent)]
    Build(#[from] app::BuildError),
    /// The node lost the SuperLink for good.
    #[error("{0}")]
    Node(String),
}

/// Runs a SuperNode from parsed flags until SIGINT/SIGTERM/SIGQUIT (exit 0) or until the
/// SuperLink is lost for good.
pub async fn run(parsed: cli::Parsed) -> Result<(), RunError> {
    let mut signals = flwr_transport::signals::ShutdownSignals::install();
    tracing::info!("Starting Flower SuperNode ({})", version_line());
    let (config, warnings) = config::from_parsed(&parsed)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let app = app::App::build(config).await?;
    let running = app.spawn();
    tokio::select! {
        signal = signals.recv() => {
            tracing::info!("Received {signal}, leaving the SuperLink");
            running.shutdown(SHUTDOWN_DEADLINE).await.map_err(RunError::Node)?;
            tracing::info!("SuperNode terminated gracefully.");
            Ok(())
        }
        () = running.finished() => {
            running.shutdown(SHUTDOWN_DEADLINE).await.map_err(RunError::Node)
        }
    }
}
