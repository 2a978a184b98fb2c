//! The validated configuration of a SuperLink, built from the command line with Flower's rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flwr_transport::address::{Address, AddressError};
use flwr_transport::server::{PeerFilter, PeerFilterError};
use flwr_transport::tls::{self, ServerTlsFiles, TlsError};

use crate::cli::{self, FleetApiType, Isolation, Parsed};

/// Where state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// In memory, lost at exit (`:flwr-in-memory:`).
    InMemory,
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, which replicas may share.
    Postgres(flwr_state::postgres::PgTarget),
}

/// Everything a SuperLink needs to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// TLS files for the Fleet and Control APIs; `None` with `--insecure`.
    pub tls: Option<ServerTlsFiles>,
    /// How ServerApps run.
    pub isolation: Isolation,
    /// Where state lives.
    pub database: Database,
    /// Where FABs are stored.
    pub storage_dir: PathBuf,
    /// Only CLI-registered SuperNodes may join.
    pub enable_supernode_auth: bool,
    /// ServerAppIo API address.
    pub serverappio_address: Address,
    /// Fleet API address; `None` in simulation mode (no Fleet API).
    pub fleet_address: Option<Address>,
    /// The Fleet API's transport (grpc-rere or grpc-adapter).
    pub fleet_api_type: FleetApiType,
    /// Control API address.
    pub control_address: Address,
    /// Simulation runtime.
    pub simulation: bool,
    /// Health service address.
    pub health_address: Option<Address>,
    /// `--metrics-address`: Prometheus metrics over plaintext HTTP (not in Flower).
    pub metrics_address: Option<Address>,
    /// Peers allowed on the ServerAppIo API; `None`: every peer.
    pub serverappio_allow: Option<Arc<PeerFilter>>,
    /// Close connections idle this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Connections per API; `None`: from the open-file limit.
    pub max_connections: Option<usize>,
    /// With `--fleet-auth-per-connection`: how long a signature verified on a Fleet connection
    /// vouches for its key on that connection.
    pub fleet_auth_per_connection: Option<Duration>,
    /// `--platform-api-url`: where Flower Hub runs come from.
    pub platform_api_url: String,
    /// `--serverappio-pull-hold`: how long a ServerApp's PullMessages waits for missing replies
    /// (`None`: not at all).
    pub pull_hold: Option<Duration>,
    /// `--fleet-pull-hold`: the longest a SuperNode's PullMessages waits for an instruction when
    /// it asks to (`None`: not at all).
    pub fleet_pull_hold: Option<Duration>,
    /// `--shutdown-grace-seconds`: how long a shutdown lets calls in flight finish.
    pub shutdown_grace: Duration,
}

/// With `--fleet-auth-per-connection`, how long one verified signature vouches for its key on
/// its connection before the next call's signature is verified again.
pub const PROOF_PER_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// The longest `--serverappio-pull-hold` and `--fleet-pull-hold` (a held call must end well
/// before any client's deadline).
pub const MAX_PULL_HOLD: Duration = Duration::from_secs(60);

/// Why the command line cannot start a SuperLink. Each message names the flag and the fix.
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
    /// `--executor*` were given.
    #[error(
        "The arguments `--executor`, `--executor-dir`, and `--executor-config` are deprecated \
         and no longer supported. To run the SuperLink with the simulation runtime, use \
         `--simulation`."
    )]
    Executor,
    /// Both control address flags were given.
    #[error(
        "Both `--control-api-address` and `--exec-api-address` are set. Use only \
         `--control-api-address`; `--exec-api-address` is deprecated."
    )]
    ControlAndExec,
    /// `--auth-list-public-keys` was given.
    #[error(
        "The `--auth-list-public-keys` argument is no longer supported. To enable SuperNode \
         authentication, use the `--enable-supernode-auth` flag and register SuperNodes with \
         `flwr supernode register <public-key-file>`."
    )]
    AuthListPublicKeys,
    /// `--enable-supernode-auth` without TLS.
    #[error(
        "The `--enable-supernode-auth` flag requires TLS. Provide the certificates with \
         `--ssl-certfile`, `--ssl-keyfile` and `--ssl-ca-certfile` instead of `--insecure`."
    )]
    AuthNeedsTls,
    /// An allow-list does not parse.
    #[error(transparent)]
    Networks(#[from] PeerFilterError),
    /// A number of seconds does not parse.
    #[error("`{flag}`: `{value}` is not a number of seconds (write for example `3600`, or `0` for never)")]
    Seconds {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
    },
    /// A `--database` URL that is not PostgreSQL's.
    #[error(
        "`--database {0}`: this scheme is not supported. Use `:flwr-in-memory:`, the path of an \
         SQLite file, or postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME."
    )]
    DatabaseScheme(String),
    /// A PostgreSQL URL or password file that cannot be used.
    #[error(transparent)]
    Postgres(#[from] flwr_state::postgres::PgTargetError),
    /// `--platform-api-url` is not an `http(s)://` URL.
    #[error("`--platform-api-url {0}`: expected an `https://` (or `http://`) URL, like the default https://api.flower.ai/v1")]
    PlatformApiUrl(String),
    /// `--database-password-file` without a PostgreSQL database.
    #[error("`--database-password-file` is only used with `--database postgresql://...`")]
    PasswordFileWithoutPostgres,
}

/// Where FABs go by default: `$FLWR_HOME/superlink/ffs`, `FLWR_HOME` defaulting to `~/.flwr`.
pub fn default_storage_dir() -> PathBuf {
    flwr_home().join("superlink").join("ffs")
}

/// Flower's home directory: `$FLWR_HOME`, else `~/.flwr`.
pub fn flwr_home() -> PathBuf {
    match std::env::var_os("FLWR_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".flwr"),
    }
}

/// Seconds given to `flag`, `0` meaning never (`None`).
fn seconds_or_never(flag: &'static str, value: &str) -> Result<Option<Duration>, ConfigError> {
    let bad = || ConfigError::Seconds {
        flag,
        value: value.to_owned(),
    };
    let secs: f64 = value.trim().parse().map_err(|_| bad())?;
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| bad())
}

fn address(flag: &'static str, value: &str) -> Result<Address, ConfigError> {
    value
        .parse()
        .map_err(|source| ConfigError::Address { flag, source })
}

/// The validated configuration, and warnings to log (deprecated or ignored flags).
pub fn from_parsed(parsed: &Parsed) -> Result<(Config, Vec<String>), ConfigError> {
    let a = &parsed.args;
    let mut warnings = Vec::new();

    if a.executor.is_some() || a.executor_dir.is_some() || a.executor_config.is_some() {
        return Err(ConfigError::Executor);
    }
    if parsed.given("control-api-address") && parsed.given("exec-api-address") {
        return Err(ConfigError::ControlAndExec);
    }
    let control = match &a.exec_api_address {
        Some(exec) => {
            warnings.push(
                "The `--exec-api-address` argument is deprecated; use `--control-api-address`."
                    .to_owned(),
            );
            address("--exec-api-address", exec)?
        }
        None => address("--control-api-address", &a.control_api_address)?,
    };
    let serverappio = address("--serverappio-api-address", &a.serverappio_api_address)?;
    let health = a
        .health_server_address
        .as_deref()
        .map(|h| address("--health-server-address", h))
        .transpose()?;
    let metrics = a
        .metrics_address
        .as_deref()
        .map(|m| address("--metrics-address", m))
        .transpose()?;

    let tls = tls::server_tls_choice(
        a.insecure,
        a.ssl_ca_certfile.as_deref(),
        a.ssl_certfile.as_deref(),
        a.ssl_keyfile.as_deref(),
    )?;
    if tls.is_none() {
        warnings.push(
            "Option `--insecure` was set: the Control and Fleet APIs run without TLS and traffic is \
             not encrypted."
                .to_owned(),
        );
    }

    if a.enable_supernode_auth {
        if a.insecure {
            return Err(ConfigError::AuthNeedsTls);
        }
    } else if !a.simulation {
        warnings.push(
            "SuperNode authentication is disabled: the SuperLink accepts any SuperNode that signs \
             its requests."
                .to_owned(),
        );
    }
    if a.fleet_auth_per_connection {
        warnings.push(
            "`--fleet-auth-per-connection`: a SuperNode's signature is verified once per \
             connection (again every 60 s). This is safe only if no proxy in front of the Fleet API \
             terminates TLS or HTTP/2 and mixes several SuperNodes' calls on one connection."
                .to_owned(),
        );
    }
    if a.auth_list_public_keys.is_some() {
        return Err(ConfigError::AuthListPublicKeys);
    }

    let fleet_address = if a.simulation {
        None
    } else {
        let default = match a.fleet_api_type {
            FleetApiType::GrpcRere | FleetApiType::GrpcAdapter => cli::FLEET_GRPC_DEFAULT,
            FleetApiType::Rest => cli::FLEET_REST_DEFAULT,
        };
        let value = a.fleet_api_address.as_deref().unwrap_or(default);
        Some(address("--fleet-api-address", value)?)
    };
    if a.fleet_api_type == FleetApiType::Rest && !a.simulation && !a.enable_supernode_auth {
        warnings.push(
            "The REST Fleet API accepts unsigned calls (Flower's REST SuperNode signs none) and \
             takes them to come from the node their body names: start with \
             `--enable-supernode-auth` to accept only signed calls (our SuperNode signs its REST \
             calls)."
                .to_owned(),
        );
    }
    if a.fleet_api_num_workers != 1 {
        warnings.push(format!(
            "`--fleet-api-num-workers {}` is ignored: this SuperLink serves the Fleet API on all \
             cores with one server.",
            a.fleet_api_num_workers
        ));
    }

    let database = if a.database == cli::IN_MEMORY_DATABASE {
        Database::InMemory
    } else if flwr_state::postgres::is_postgres_url(&a.database) {
        let mut target = flwr_state::postgres::PgTarget::parse(&a.database)?;
        if let Some(file) = &a.database_password_file {
            target = target.with_password_file(file)?;
        }
        Database::Postgres(target)
    } else if let Some((scheme, _)) = a.database.split_once("://") {
        // Anything else with a scheme is not a file path: never make an SQLite file of it.
        return Err(ConfigError::DatabaseScheme(format!("{scheme}://...")));
    } else {
        // `:memory:` is SQLite in RAM, as in Flower; anything else is a file path.
        let path = Path::new(&a.database);
        Database::Sqlite(if a.database == ":memory:" {
            path.to_path_buf()
        } else {
            absolute(path)
        })
    };
    if a.database_password_file.is_some() && !matches!(database, Database::Postgres(_)) {
        return Err(ConfigError::PasswordFileWithoutPostgres);
    }
    let serverappio_allow = a
        .serverappio_api_allowed_networks
        .as_deref()
        .map(|list| PeerFilter::parse("--serverappio-api-allowed-networks", list))
        .transpose()?
        .map(Arc::new);
    let idle_timeout = seconds_or_never("--connection-idle-timeout", &a.connection_idle_timeout)?;
    let pull_hold = seconds_or_never("--serverappio-pull-hold", &a.serverappio_pull_hold)?;
    let shutdown_grace = seconds_or_never("--shutdown-grace-seconds", &a.shutdown_grace_seconds)?
        .unwrap_or_default();
    if pull_hold.is_some_and(|h| h > MAX_PULL_HOLD) {
        return Err(ConfigError::Seconds {
            flag: "--serverappio-pull-hold",
            value: a.serverappio_pull_hold.clone(),
        });
    }
    let fleet_pull_hold = seconds_or_never("--fleet-pull-hold", &a.fleet_pull_hold)?;
    if fleet_pull_hold.is_some_and(|h| h > MAX_PULL_HOLD) {
        return Err(ConfigError::Seconds {
            flag: "--fleet-pull-hold",
            value: a.fleet_pull_hold.clone(),
        });
    }
    let config = Config {
        tls,
        isolation: a.isolation,
        database,
        storage_dir: a.storage_dir.clone().unwrap_or_else(default_storage_dir),
        enable_supernode_auth: a.enable_supernode_auth,
        serverappio_address: serverappio,
        fleet_address,
        fleet_api_type: a.fleet_api_type,
        control_address: control,
        simulation: a.simulation,
        health_address: health,
        metrics_address: metrics,
        serverappio_allow,
        idle_timeout,
        max_connections: a.max_connections.map(|n| n as usize),
        fleet_auth_per_connection: a
            .fleet_auth_per_connection
            .then_some(PROOF_PER_CONNECTION_AGE),
        platform_api_url: {
            let url = a.platform_api_url.as_str();
            let scheme = url.starts_with("https://") || url.starts_with("http://");
            if !scheme || url.parse::<http::Uri>().is_err() {
                return Err(ConfigError::PlatformApiUrl(url.to_owned()));
            }
            url.to_owned()
        },
        pull_hold,
        fleet_pull_hold,
        shutdown_grace,
    };
    Ok((config, warnings))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
