//! The Flower SuperNode: joins a SuperLink over the Fleet API and runs ClientApps through the
//! ClientAppIo API, wire-compatible with Flower 1.28.0.
//!
//! * [`cli`]: the command line, flag for flag as `flower-supernode`.
//! * [`config`]: validation of the flags into a [`config::Config`].

pub mod cli;
pub mod config;

use flwr_transport::node_auth::NodeSigningKey;
use flwr_transport::tls;

/// The version line of `--version`.
pub fn version_line() -> String {
    flwr_transport::cli::version_line("supernode", env!("CARGO_PKG_VERSION"))
}

/// Why the SuperNode stopped before serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The flags are not valid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The key file could not be used.
    #[error(transparent)]
    Key(#[from] flwr_transport::node_auth::KeyError),
    /// The Fleet client is not part of this build yet.
    #[error(
        "the SuperNode's Fleet client is not built yet: this build checks the flags, the TLS \
         files and the key, then stops. Use flower-supernode 1.28.0 until it lands."
    )]
    NotBuiltYet,
}

/// Loads everything the flags name (certificates, key), failing before any network activity.
pub fn prepare(parsed: &cli::Parsed) -> Result<(config::Config, NodeSigningKey), StartError> {
    let (config, warnings) = config::from_parsed(parsed)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let _client_tls = tls::load_client_config(&config.tls)?;
    let key = match &config.key {
        config::KeySource::Generate => NodeSigningKey::generate(),
        config::KeySource::File(p) => {
            NodeSigningKey::load_openssh_file("--auth-supernode-private-key", p)?
        }
    };
    Ok((config, key))
}

/// Runs a SuperNode from parsed flags.
pub async fn run(parsed: cli::Parsed) -> Result<(), StartError> {
    tracing::info!("Starting Flower SuperNode ({})", version_line());
    let parsed = tokio::task::spawn_blocking(move || prepare(&parsed).map(|_| ()))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    parsed?;
    Err(StartError::NotBuiltYet)
}
