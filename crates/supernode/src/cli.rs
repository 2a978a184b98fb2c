//! The `supernode` command line: every flag of `flower-supernode` 1.28.0, with the same names,
//! defaults and value syntax.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgGroup, Parser, ValueEnum};

/// Default SuperLink (Fleet API) address: Flower reuses the server's bind address.
pub const SUPERLINK_DEFAULT: &str = "0.0.0.0:9092";
/// Default ClientAppIo API address.
pub const CLIENTAPPIO_DEFAULT: &str = "0.0.0.0:9094";

/// How ClientApps are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Isolation {
    /// The SuperNode starts one ClientApp process per run.
    Subprocess,
    /// An external process (`flwr-clientapp`, `flower-superexec`) picks runs up.
    Process,
}

/// How the SuperNode starts a ClientApp process per message (`--isolation subprocess`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClientAppLaunch {
    /// A Python process that imported `flwr` once forks a fresh process per message.
    Fork,
    /// `flwr-clientapp` is run afresh per message, as Flower's SuperNode does.
    Exec,
}

/// Flags of `supernode`, as `flower-supernode` 1.28.0 has them.
#[derive(Debug, Parser)]
#[command(
    name = "supernode",
    about = "Start a Flower SuperNode (a drop-in replacement for flower-supernode 1.28.0)",
    disable_version_flag = true,
    group(ArgGroup::new("transport").args(["grpc_rere", "grpc_adapter", "rest"]).multiple(false))
)]
pub struct Args {
    /// Print the version and exit.
    #[arg(short = 'V', long = "version", action = clap::ArgAction::SetTrue)]
    pub version: bool,

    /// Connect to the SuperLink without TLS. Traffic is not encrypted: use only on trusted
    /// networks.
    #[arg(long)]
    pub insecure: bool,

    /// Use gRPC request-response to reach the SuperLink (the default).
    #[arg(long)]
    pub grpc_rere: bool,

    /// Use the gRPC adapter transport: every Fleet call as `GrpcAdapter/SendReceive`.
    #[arg(long)]
    pub grpc_adapter: bool,

    /// Use the REST transport: HTTP/1.1 to a SuperLink started with `--fleet-api-type rest`;
    /// `--superlink` then starts with `http://` or `https://`.
    #[arg(long)]
    pub rest: bool,

    /// PEM bundle of CA certificates that verify the SuperLink. Without it (and without
    /// `--insecure`) the system trust store is used.
    #[arg(long, value_name = "ROOT_CERT")]
    pub root_certificates: Option<PathBuf>,

    /// Fleet API address of the SuperLink (IPv4, IPv6 or name, with port).
    #[arg(long, default_value = SUPERLINK_DEFAULT)]
    pub superlink: String,

    /// Give up after this many failed reconnection attempts [default: no limit].
    #[arg(long, value_name = "MAX_RETRIES", allow_negative_numbers = true)]
    pub max_retries: Option<i64>,

    /// Give up reconnecting after this many seconds [default: no limit].
    #[arg(long, value_name = "MAX_WAIT_TIME", allow_negative_numbers = true)]
    pub max_wait_time: Option<f64>,

    /// OpenSSH ECDSA private key of this SuperNode, registered beforehand with
    /// `flwr supernode register`.
    #[arg(long, value_name = "AUTH_SUPERNODE_PRIVATE_KEY")]
    pub auth_supernode_private_key: Option<PathBuf>,

    /// Deprecated and ignored: the public key is derived from the private key.
    #[arg(long, value_name = "AUTH_SUPERNODE_PUBLIC_KEY")]
    pub auth_supernode_public_key: Option<PathBuf>,

    /// Node configuration: space-separated `key=value` pairs with TOML values (for example
    /// 'partition-id=0 num-partitions=2 name="a b"'), or the path of a `.toml` file.
    #[arg(long, value_name = "NODE_CONFIG")]
    pub node_config: Option<String>,

    /// How ClientApps run: `subprocess` (the SuperNode starts them) or `process` (started
    /// elsewhere).
    #[arg(long, value_enum, default_value = "subprocess")]
    pub isolation: Isolation,

    /// With `--isolation subprocess`: how each message's ClientApp process starts. `fork`: from
    /// a Python process that has imported `flwr` (and numpy) once, so a message does not wait
    /// for those imports; each message still gets a fresh process that keeps nothing from the
    /// last. `exec`: `flwr-clientapp` afresh per message, as Flower. Not in Flower.
    #[arg(long, value_enum, default_value = "fork")]
    pub clientapp_launch: ClientAppLaunch,

    /// ClientAppIo API address (IPv4, IPv6 or name, with port), plaintext.
    #[arg(long, default_value = CLIENTAPPIO_DEFAULT, value_name = "CLIENTAPPIO_API_ADDRESS")]
    pub clientappio_api_address: String,

    /// YAML file mapping public key IDs to Ed25519 public keys that may sign FABs.
    #[arg(long, value_name = "YAML_FILE")]
    pub trusted_entities: Option<PathBuf>,

    /// Address of a plaintext gRPC health service (`grpc.health.v1.Health`); off when not set.
    #[arg(long, value_name = "HEALTH_SERVER_ADDRESS")]
    pub health_server_address: Option<String>,

    /// Serve Prometheus metrics (plaintext HTTP, `GET /metrics`) on this address; off when not
    /// set. Not in Flower.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,

    /// On SIGTERM or SIGINT: how long the ClientApp of the message in hand may take to reply
    /// before the SuperNode answers that message with an error (NODE_UNAVAILABLE) and leaves.
    /// Not in Flower.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "5",
        allow_negative_numbers = true
    )]
    pub shutdown_grace_seconds: f64,

    /// How log lines are written: `text`, or `json` (one object per line). Not in Flower.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: flwr_daemon::logging::LogFormat,

    /// Also export the spans to an OpenTelemetry collector's OTLP/gRPC receiver, e.g.
    /// `http://127.0.0.1:4317`. Not in Flower.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Only peers in these networks may connect to the ClientAppIo API, which has no
    /// authentication beyond its per-message tokens (comma-separated addresses or networks, e.g.
    /// `127.0.0.1,10.0.0.0/8`) [default: every peer]. Not in Flower.
    #[arg(long, value_name = "NETWORKS")]
    pub clientappio_api_allowed_networks: Option<String>,
}

/// Parsed `supernode` flags.
pub type Parsed = flwr_daemon::cli::Parsed<Args>;

/// Parses a command line (the first item is the program name).
pub fn parse_from<I, T>(argv: I) -> Result<Parsed, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Parsed::parse_from(argv)
}
