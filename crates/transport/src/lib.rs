//! What both Flower daemons share on the wire, and nothing about state.
//!
//! * [`address`]: Flower's `host:port` addresses.
//! * [`cli`]: command-line plumbing (explicitly given flags, the version line).
//! * [`connections`]: the open-file limit and the default connection cap.
//! * [`files`]: reading files named by flags, with errors that name the flag and the fix.
//! * [`tls`]: rustls server and client configurations from PEM files, with Flower's flag rules.
//! * [`grpc`]: shared gRPC limits and keepalive, binding, client channels.
//! * [`server`]: serving gRPC services (plaintext or TLS) with bounded connections, idle
//!   timeouts, peer allow-lists and per-connection body budgets.
//! * [`health`]: the plaintext `grpc.health.v1.Health` service.
//! * [`signals`]: SIGINT/SIGTERM/SIGQUIT for graceful shutdown.
//! * [`tasks`]: the panic policy (a task that panics or ends early stops the daemon).
//! * [`process`]: child processes (ServerApps, ClientApps) in their own process groups, logged
//!   and reaped.
//! * [`node_auth`]: SuperNode signatures (ECDSA over SHA-256, PEM keys, Flower's timestamps).
//! * [`metrics`]: Prometheus metrics on `--metrics-address` (recorder, `/metrics`, gRPC timing).
//! * [`logging`], [`logfile`]: `tracing` set up from `RUST_LOG` / `FLWR_LOG_LEVEL`, and the
//!   rotated `--log-file`.

pub mod address;
pub mod cli;
pub mod connections;
pub mod files;
pub mod grpc;
pub mod health;
pub mod logfile;
pub mod logging;
pub mod metrics;
pub mod node_auth;
pub mod process;
pub mod server;
pub mod signals;
pub mod tasks;
pub mod tls;

/// The Flower release whose wire protocol and command lines these daemons follow.
pub const FLOWER_VERSION: &str = "1.28.0";
