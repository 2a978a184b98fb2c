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

/// The allocator of both daemons (`#[global_allocator]` in each `main.rs`): mimalloc 2.x, which
/// gives memory freed by the many short-lived allocations of a busy server (TLS handshakes,
/// requests) back to the system, where glibc's malloc keeps it fragmented and resident: with
/// 10,000 idle TLS nodes the SuperLink settles at about 190 MiB instead of 440-470 (README,
/// "Benchmarks"). Its arenas are committed on demand (`.cargo/config.toml`). One rule comes
/// with it: a block of more than 16 MiB is best allocated on a thread that keeps allocating (a
/// runtime thread, not the blocking pool's), because a large block freed by another thread is
/// only given back once the thread that allocated it allocates again (see
/// `flwr_state::spill`). The 2.x series, not 3.x: 3.x keeps the idle fleet's memory.
pub type Allocator = mimalloc::MiMalloc;

/// The Flower release whose wire protocol and command lines these daemons follow.
pub const FLOWER_VERSION: &str = "1.28.0";
