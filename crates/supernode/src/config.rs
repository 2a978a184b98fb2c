//! The validated configuration of a SuperNode, built from the command line with Flower's rules.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flwr_transport::address::{Address, AddressError};
use flwr_transport::server::{PeerFilter, PeerFilterError};
use flwr_transport::tls::{self, ClientTlsChoice, TlsError};

use crate::cli::{Isolation, Parsed};

/// Where the SuperNode's identity comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A fresh P-384 key at every start; the node registers and unregisters itself.
    Generate,
    /// An OpenSSH ECDSA key registered with `flwr supernode register`.
    File(PathBuf),
}

/// Everything a SuperNode needs to start.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The SuperLink's Fleet API.
    pub superlink: Address,
    /// Which transport reaches it.
    pub transport: Transport,
    /// How to secure the connection.
    pub tls: ClientTlsChoice,
    /// The node's identity.
    pub key: KeySource,
    /// Reconnection attempts before giving up (`None`: no limit).
    pub max_retries: Option<u32>,
    /// Time spent reconnecting before giving up (`None`: no limit).
    pub max_wait_time: Option<Duration>,
    /// Raw `--node-config`.
    pub node_config: Option<String>,
    /// How ClientApps run.
    pub isolation: Isolation,
    /// `--clientapp-launch`.
    pub clientapp_launch: crate::cli::ClientAppLaunch,
    /// ClientAppIo API address.
    pub clientappio_address: Address,
    /// Health service address.
    pub health_address: Option<Address>,
    /// `--metrics-address`: Prometheus metrics over plaintext HTTP (not in Flower).
    pub metrics_address: Option<Address>,
    /// `--shutdown-grace-seconds`: how long the message in hand may take at shutdown.
    pub shutdown_grace: Duration,
    /// `--trusted-entities`: the file of publishers whose signed FABs are accepted (read at
    /// start); `None`: every FAB is accepted, as in Flower.
    pub trusted_entities: Option<std::path::PathBuf>,
    /// Peers allowed on the ClientAppIo API; `None`: every peer.
    pub clientappio_allow: Option<Arc<PeerFilter>>,
}

/// The Fleet transport (`--grpc-rere`, `--grpc-adapter`, `--rest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// One gRPC method per Fleet call (the default).
    #[default]
    GrpcRere,
    /// Every call packed into `GrpcAdapter/SendReceive`.
    GrpcAdapter,
    /// HTTP/1.1 `POST /api/v0/fleet/<method>`.
    Rest,
}

/// Why the command line cannot start a SuperNode. Each message names the flag and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag's value is not an address.
    #[error("`{flag}`: {source}")]
    Address {
        /// The flag.
        flag: &'static str,
        /// Why.
        #[source]
        source: AddressError,
    },
    /// TLS flags break Flower's rules.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A key file without TLS.
    #[error(
        "The private key for SuperNode authentication was provided, but TLS is not enabled. \
         Node authentication can only be used with TLS: remove `--insecure` and give \
         `--root-certificates` (or rely on the system trust store)."
    )]
    KeyWithoutTls,
    /// `--rest` with a `--superlink` that is not a URL.
    #[error(
        "When using the REST API, please provide `https://` or `http://` before the server \
         address (e.g. `http://127.0.0.1:8080`); got `--superlink {0}`."
    )]
    RestAddress(String),
    /// `--rest --insecure` with an `https://` SuperLink.
    #[error(
        "`--insecure` with `--superlink {0}`: on the REST transport the URL's scheme decides; \
         use `http://` for a plaintext SuperLink, or drop `--insecure` for TLS."
    )]
    RestInsecureHttps(String),
    /// Not a count or a number of seconds (negative, or not a number).
    #[error("`--{flag}` must be a number, zero or more; got {value}.")]
    Negative {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// An allow-list does not parse.
    #[error(transparent)]
    Networks(#[from] PeerFilterError),
}

/// Seconds given to `--flag`: zero or more; beyond what a `Duration` holds is as good as no
/// limit.
fn seconds(flag: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if !(value >= 0.0 && value.is_finite()) {
        return Err(ConfigError::Negative {
            flag,
            value: value.to_string(),
        });
    }
    Ok(Duration::try_from_secs_f64(value).unwrap_or(Duration::MAX))
}

fn address(flag: &'static str, value: &str) -> Result<Address, ConfigError> {
    value
        .parse()
        .map_err(|source| ConfigError::Address { flag, source })
}

/// The validated configuration, and warnings to log.
pub fn from_parsed(parsed: &Parsed) -> Result<(Config, Vec<String>), ConfigError> {
    let a = &parsed.args;
    let mut warnings = Vec::new();
    let transport = if a.rest {
        Transport::Rest
    } else if a.grpc_adapter {
        Transport::GrpcAdapter
    } else {
        Transport::GrpcRere
    };
    // On REST, `--superlink` is a URL whose scheme says whether TLS is used (as in Flower).
    let (superlink, insecure) = if transport == Transport::Rest {
        if let Some(rest) = a.superlink.strip_prefix("https://") {
            if a.insecure {
                return Err(ConfigError::RestInsecureHttps(a.superlink.clone()));
            }
            (rest, false)
        } else if let Some(rest) = a.superlink.strip_prefix("http://") {
            (rest, true)
        } else {
            return Err(ConfigError::RestAddress(a.superlink.clone()));
        }
    } else {
        (a.superlink.as_str(), a.insecure)
    };
    let superlink = superlink.trim_end_matches('/');
    // `http://` on REST without `--insecure`: `--root-certificates` would go unused.
    let roots = a
        .root_certificates
        .as_deref()
        .filter(|_| !insecure || a.insecure);
    let tls = tls::client_tls_choice(insecure, roots)?;
    if tls == ClientTlsChoice::Insecure {
        warnings.push(format!(
            "Option `--insecure` was set: the connection to {} is not encrypted.",
            a.superlink
        ));
    }
    let key = match &a.auth_supernode_private_key {
        Some(p) => {
            if tls == ClientTlsChoice::Insecure {
                return Err(ConfigError::KeyWithoutTls);
            }
            KeySource::File(p.clone())
        }
        None => KeySource::Generate,
    };
    if a.auth_supernode_public_key.is_some() {
        warnings.push(
            "`--auth-supernode-public-key` is deprecated and ignored: the public key is derived \
             from `--auth-supernode-private-key`."
                .to_owned(),
        );
    }
    let max_retries = match a.max_retries {
        Some(n) if n < 0 => {
            return Err(ConfigError::Negative {
                flag: "max-retries",
                value: n.to_string(),
            })
        }
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        None => None,
    };
    let shutdown_grace = seconds("shutdown-grace-seconds", a.shutdown_grace_seconds)?;
    let max_wait_time = a
        .max_wait_time
        .map(|s| seconds("max-wait-time", s))
        .transpose()?;
    let config = Config {
        superlink: address("--superlink", superlink)?,
        transport,
        tls,
        key,
        max_retries,
        max_wait_time,
        node_config: a.node_config.clone(),
        isolation: a.isolation,
        clientapp_launch: a.clientapp_launch,
        clientappio_address: address("--clientappio-api-address", &a.clientappio_api_address)?,
        health_address: a
            .health_server_address
            .as_deref()
            .map(|h| address("--health-server-address", h))
            .transpose()?,
        shutdown_grace,
        trusted_entities: a.trusted_entities.clone(),
        metrics_address: a
            .metrics_address
            .as_deref()
            .map(|m| address("--metrics-address", m))
            .transpose()?,
        clientappio_allow: a
            .clientappio_api_allowed_networks
            .as_deref()
            .map(|list| PeerFilter::parse("--clientappio-api-allowed-networks", list))
            .transpose()?
            .map(Arc::new),
    };
    Ok((config, warnings))
}
