//! The Flower SuperLink: Fleet API for SuperNodes, ServerAppIo API for ServerApps and Control API
//! for the `flwr` CLI, wire-compatible with Flower 1.28.0.
//!
//! * [`cli`]: the command line, flag for flag as `flower-superlink`.
//! * [`config`]: validation of the flags into a [`config::Config`].
//! * [`app`]: build (TLS, listeners, state), then serve.
//! * [`core`]: the domain operations behind the three APIs; [`error`]: their errors.
//! * [`service`]: the gRPC edge (Fleet, ServerAppIo, Control); the only code that knows protobuf.
//! * [`launcher`]: starting and owning ServerApp processes.
//! * [`metrics`]: the SuperLink's Prometheus metrics (`--metrics-address`).
//!
//! State, objects and FABs live behind the engines of `flwr_state` (memory, SQLite, PostgreSQL).

pub mod app;
pub mod cli;
pub mod config;
pub mod core;
pub mod error;
pub mod hub;
pub mod launcher;
pub mod metrics;
pub mod service;

/// The version line of `--version`.
pub fn version_line() -> String {
    flwr_daemon::cli::version_line("superlink", env!("CARGO_PKG_VERSION"))
}

/// Runs a SuperLink from parsed flags until SIGINT, SIGTERM or SIGQUIT.
pub async fn run(parsed: cli::Parsed) -> anyhow::Result<()> {
    let mut signals = flwr_transport::signals::ShutdownSignals::install();
    tracing::info!("Starting Flower SuperLink ({})", version_line());
    let (config, warnings) = config::from_parsed(&parsed)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let grace = config.shutdown_grace;
    let app = app::App::build(config).await?;
    let running = app.spawn();
    tokio::select! {
        signal = signals.recv() => {
            tracing::info!("Received {signal}, shutting down");
            if !running.shutdown(grace).await {
                tracing::warn!("Shutdown took longer than {grace:?} (--shutdown-grace-seconds); exiting anyway");
            }
            tracing::info!("SuperLink terminated gracefully.");
            Ok(())
        }
        failure = running.failed() => {
            anyhow::bail!("{failure}")
        }
    }
}
