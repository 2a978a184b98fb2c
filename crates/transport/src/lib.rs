//! What both Flower daemons share on the wire, and nothing about state (the daemons' other
//! plumbing, logging and child processes among it, is `flwr-daemon`).
//!
//! * [`address`]: Flower's `host:port` addresses.
//! * [`files`]: reading files named by flags, with errors that name the flag and the fix.
//! * [`tls`]: rustls server and client configurations from PEM files, with Flower's flag rules.
//! * [`grpc`]: shared gRPC limits and keepalive, binding, client channels.
//! * [`server`]: serving gRPC services (plaintext or TLS) with bounded connections, idle
//!   timeouts, peer allow-lists and per-connection body budgets.
//! * [`health`]: the plaintext `grpc.health.v1.Health` service.
//! * [`signals`]: SIGINT/SIGTERM/SIGQUIT for graceful shutdown, SIGHUP for certificates.
//! * [`node_auth`]: SuperNode signatures (ECDSA over SHA-256, PEM keys, Flower's timestamps).
//! * [`metrics`]: Prometheus metrics on `--metrics-address` (recorder, `/metrics`, gRPC timing).

pub mod address;
pub mod files;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod node_auth;
pub mod rest;
pub mod server;
pub mod signals;
pub mod tls;
