//! Daemon plumbing both daemons share, apart from the wire (`flwr-transport`): nothing here
//! speaks gRPC or TLS.
//!
//! * [`cli`]: command-line plumbing (explicitly given flags, the version line).
//! * [`connections`]: the open-file limit and the default connection cap.
//! * [`tasks`]: the panic policy (a task that panics or ends early stops the daemon).
//! * [`process`]: child processes (ServerApps, ClientApps) in their own process groups, logged
//!   and reaped.
//! * [`logging`], [`logfile`]: `tracing` set up from `RUST_LOG` / `FLWR_LOG_LEVEL`, JSON lines
//!   or text, OTLP export, and the rotated `--log-file`.
//! * [`Allocator`]: the memory allocator both daemons run on.

pub mod cli;
pub mod connections;
pub mod logfile;
pub mod logging;
pub mod process;
pub mod tasks;

/// The allocator of both daemons (`#[global_allocator]` in each `main.rs`): mimalloc, which
/// gives memory freed by the many short-lived allocations of a busy server (TLS handshakes,
/// requests) back to the system, where the system allocator keeps it fragmented and resident.
/// With 10,000 idle TLS nodes the SuperLink's resident memory settles at about half of what it
/// is on glibc's malloc (README, "Benchmarks").
pub type Allocator = mimalloc::MiMalloc;

/// The Flower release whose wire protocol and command lines these daemons follow.
pub const FLOWER_VERSION: &str = "1.28.0";
