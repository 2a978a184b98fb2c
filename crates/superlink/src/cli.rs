//! The `superlink` command line: every flag of `flower-superlink` 1.28.0, with the same names,
//! defaults and value syntax. Parsing only; [`crate::config`] turns the result into a validated
//! [`crate::config::Config`].

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Default ServerAppIo API address.
pub const SERVERAPPIO_DEFAULT: &str = "0.0.0.0:9091";
/// Default Fleet API address (grpc-rere and grpc-adapter).
pub const FLEET_GRPC_DEFAULT: &str = "0.0.0.0:9092";
/// Default Fleet API address (REST).
pub const FLEET_REST_DEFAULT: &str = "0.0.0.0:9095";
/// Default Control API address.
pub const CONTROL_DEFAULT: &str = "0.0.0.0:9093";
/// The `--database` value that selects in-memory state.
pub const IN_MEMORY_DATABASE: &str = ":flwr-in-memory:";

/// How ServerApps are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Isolation {
    /// The SuperLink starts one ServerApp process per run.
    Subprocess,
    /// An external process (`flwr-serverapp`, `flower-superexec`) picks runs up.
    Process,
}

/// The Fleet API transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FleetApiType {
    /// gRPC request-response (Flower's default).
    #[value(name = "grpc-rere")]
    GrpcRere,
    /// gRPC adapter.
    #[value(name = "grpc-adapter")]
    GrpcAdapter,
    /// REST (experimental in Flower).
    #[value(name = "rest")]
    Rest,
}

fn positive_int(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(v) if v >= 1 && v <= u32::MAX as i64 => Ok(v as u32),
        Ok(_) => Err("value must be >= 1".into()),
        Err(_) => Err(format!("invalid int value: '{s}'")),
    }
}

/// Flags of `superlink`, as `flower-superlink` 1.28.0 has them.
#[derive(Debug, Parser)]
#[command(
    name = "superlink",
    about = "Start a Flower SuperLink (a drop-in replacement for flower-superlink 1.28.0)",
    disable_version_flag = true
)]
pub struct Args {
    /// Print the version and exit.
    #[arg(short = 'V', long = "version", action = clap::ArgAction::SetTrue)]
    pub version: bool,

    /// Serve the Control and Fleet APIs without TLS, even if certificate files are given. Traffic
    /// is not encrypted: use only on trusted networks.
    #[arg(long)]
    pub insecure: bool,

    /// PEM certificate (chain) of the SuperLink, for the Fleet and Control APIs.
    #[arg(long, value_name = "SSL_CERTFILE")]
    pub ssl_certfile: Option<PathBuf>,

    /// PEM private key of the SuperLink (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(long, value_name = "SSL_KEYFILE")]
    pub ssl_keyfile: Option<PathBuf>,

    /// PEM certificate of the CA that signed the SuperLink's certificate.
    #[arg(long, value_name = "SSL_CA_CERTFILE")]
    pub ssl_ca_certfile: Option<PathBuf>,

    /// How ServerApps run: `subprocess` (the SuperLink starts them) or `process` (started
    /// elsewhere).
    #[arg(long, value_enum, default_value = "subprocess")]
    pub isolation: Isolation,

    /// State storage: `:flwr-in-memory:` (lost at exit), the path of an SQLite database file, or
    /// `postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?sslmode=...&sslrootcert=...]`, which
    /// several SuperLink replicas can share (high availability).
    #[arg(long, default_value = IN_MEMORY_DATABASE)]
    pub database: String,

    /// A file holding the PostgreSQL password (instead of the URL or `PGPASSWORD`). Not in
    /// Flower.
    #[arg(long, value_name = "FILE")]
    pub database_password_file: Option<PathBuf>,

    /// Directory where FABs are stored [default: $FLWR_HOME/superlink/ffs, FLWR_HOME defaulting
    /// to ~/.flwr].
    #[arg(long, value_name = "STORAGE_DIR")]
    pub storage_dir: Option<PathBuf>,

    /// Deprecated in Flower and no longer supported; use `--enable-supernode-auth` and
    /// `flwr supernode register`.
    #[arg(long, value_name = "AUTH_LIST_PUBLIC_KEYS")]
    pub auth_list_public_keys: Option<String>,

    /// Accept only SuperNodes whose public keys were registered with `flwr supernode register`
    /// (requires TLS).
    #[arg(long)]
    pub enable_supernode_auth: bool,

    /// Also write logs to this file, rotated on a fixed schedule.
    #[arg(long, value_name = "LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Rotate the log file every N hours.
    #[arg(long, value_name = "LOG_ROTATION_INTERVAL_HOURS", default_value = "24", value_parser = positive_int)]
    pub log_rotation_interval_hours: u32,

    /// Keep at most N rotated log files.
    #[arg(long, value_name = "LOG_ROTATION_BACKUP_COUNT", default_value = "7", value_parser = positive_int)]
    pub log_rotation_backup_count: u32,

    /// How log lines are written: `text`, or `json` (one object per line, with the RPC span:
    /// api, method, peer, node_id, run_id). Not in Flower.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: flwr_daemon::logging::LogFormat,

    /// Also export the spans (one per gRPC call, with its node and run) to an OpenTelemetry
    /// collector's OTLP/gRPC receiver, e.g. `http://127.0.0.1:4317`. Not in Flower.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// ServerAppIo API address (IPv4, IPv6 or name, with port; port 0 picks a free one).
    /// `--simulationio-api-address` is a deprecated alias.
    #[arg(long, visible_alias = "simulationio-api-address", default_value = SERVERAPPIO_DEFAULT, value_name = "SERVERAPPIO_API_ADDRESS")]
    pub serverappio_api_address: String,

    /// Fleet API transport. Only `grpc-rere` is supported by this SuperLink.
    #[arg(long, value_enum, default_value = "grpc-rere")]
    pub fleet_api_type: FleetApiType,

    /// Fleet API address (IPv4, IPv6 or name, with port) [default: 0.0.0.0:9092].
    #[arg(long, value_name = "FLEET_API_ADDRESS")]
    pub fleet_api_address: Option<String>,

    /// Number of Fleet API workers; accepted for compatibility (one server uses every core).
    #[arg(
        long,
        default_value = "1",
        value_name = "FLEET_API_NUM_WORKERS",
        allow_negative_numbers = true
    )]
    pub fleet_api_num_workers: i64,

    /// Control API address (IPv4, IPv6 or name, with port), used by the `flwr` CLI.
    #[arg(long, default_value = CONTROL_DEFAULT, value_name = "CONTROL_API_ADDRESS")]
    pub control_api_address: String,

    /// Deprecated alias of `--control-api-address`.
    #[arg(long, value_name = "EXEC_API_ADDRESS")]
    pub exec_api_address: Option<String>,

    /// Deprecated in Flower; refused (use `--simulation`).
    #[arg(long, value_name = "EXECUTOR")]
    pub executor: Option<String>,

    /// Deprecated in Flower; refused (use `--simulation`).
    #[arg(long, value_name = "EXECUTOR_DIR")]
    pub executor_dir: Option<String>,

    /// Deprecated in Flower; refused (use `--simulation`).
    #[arg(long, value_name = "EXECUTOR_CONFIG")]
    pub executor_config: Option<String>,

    /// Run the simulation runtime: no Fleet API; runs are executed by `flwr-simulation`.
    #[arg(long)]
    pub simulation: bool,

    /// Address of a plaintext gRPC health service (`grpc.health.v1.Health`); off when not set.
    #[arg(long, value_name = "HEALTH_SERVER_ADDRESS")]
    pub health_server_address: Option<String>,

    /// Only peers in these networks may connect to the ServerAppIo API, which has no
    /// authentication (comma-separated addresses or networks, e.g. `127.0.0.1,10.0.0.0/8`)
    /// [default: every peer]. Not in Flower.
    #[arg(long, value_name = "NETWORKS")]
    pub serverappio_api_allowed_networks: Option<String>,

    /// Close a client connection that has had no request in flight for this many seconds; 0
    /// never closes one. Not in Flower.
    #[arg(long, value_name = "SECONDS", default_value = "3600")]
    pub connection_idle_timeout: String,

    /// The most client connections each API holds at once; further ones are closed at once (a
    /// client sees UNAVAILABLE and retries) [default: from the open-file limit, at most 100000].
    /// Not in Flower.
    #[arg(long, value_name = "N", value_parser = positive_int)]
    pub max_connections: Option<u32>,

    /// Verify a SuperNode's signature once per connection (again every 60 seconds) instead of on
    /// every Fleet call; later calls on that connection with the same public key get the
    /// timestamp check only. Safe only when every Fleet connection belongs to one SuperNode:
    /// SuperNodes reach this SuperLink directly or through a TCP pass-through load balancer. NOT
    /// safe behind a proxy that terminates TLS or HTTP/2 and sends several SuperNodes' calls over
    /// one connection (public keys are not secret: another client there could act as a node
    /// verified on that connection). Not in Flower.
    #[arg(long)]
    pub fleet_auth_per_connection: bool,

    /// Flower's Platform API, from which `flwr run @account/app[==x.y.z]` fetches the app's FAB
    /// and its publisher signatures (Flower Hub). Not in Flower (which always uses the default).
    #[arg(long, value_name = "URL", default_value = crate::hub::DEFAULT_PLATFORM_API_URL)]
    pub platform_api_url: String,

    /// How long a ServerApp's PullMessages may wait for the replies it asks for that are not in
    /// yet; it is answered as soon as all are in (0: at once, as Flower). Flower's ServerApp
    /// sleeps 3 seconds after a pull that missed replies, so up to 3 seconds only replaces part
    /// of that sleep. Not in Flower.
    #[arg(long, value_name = "SECONDS", default_value = "3")]
    pub serverappio_pull_hold: String,

    /// The longest a SuperNode's PullMessages may wait for an instruction, when the SuperNode
    /// asks to wait (ours do, with a request header Flower's SuperNodes never send: theirs are
    /// answered at once, as by Flower). A held pull is answered as soon as an instruction for
    /// the node and its objects are in, so our SuperNodes start on a message without their
    /// 1-second poll (0: never hold). Not in Flower.
    #[arg(long, value_name = "SECONDS", default_value = "30")]
    pub fleet_pull_hold: String,

    /// On SIGTERM or SIGINT: how long calls in flight may take to finish while the SuperLink
    /// drains (its health service answers NOT_SERVING and it accepts no new connection) before
    /// it exits anyway. Not in Flower.
    #[arg(long, value_name = "SECONDS", default_value = "5")]
    pub shutdown_grace_seconds: String,

    /// Serve Prometheus metrics (plaintext HTTP, `GET /metrics`) on this address; off when not
    /// set. Not in Flower.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
}

/// Parsed `superlink` flags.
pub type Parsed = flwr_daemon::cli::Parsed<Args>;

/// Parses a command line (the first item is the program name).
pub fn parse_from<I, T>(argv: I) -> Result<Parsed, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Parsed::parse_from(argv)
}
