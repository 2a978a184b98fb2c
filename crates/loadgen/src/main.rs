//! `flwr-bench`: drives SuperLinks with simulated SuperNodes and a simulated ServerApp, and
//! compares our daemons with Flower 1.28.0's side by side.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use flwr_loadgen::compare::{Comparison, Plan, Programs, Sections};
use flwr_loadgen::workload::{fan_out, FanOut, IdleFleet, Target};
use flwr_transport::tls::{
    load_client_config, load_server_config, ClientTlsChoice, ServerTlsFiles,
};

// The daemons' allocator, so that the echo service's floors (CPU, memory) are measured on it.
#[global_allocator]
static ALLOCATOR: flwr_daemon::Allocator = flwr_daemon::Allocator {};

#[derive(Parser)]
#[command(
    name = "flwr-bench",
    about = "Benchmarks for Flower 1.28 SuperLinks and SuperNodes, ours against Flower's"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Section {
    Startup,
    /// Fan-out on the in-memory engine (and the echo ceiling).
    Fanout,
    /// Alternated 50 MB runs: ours with files, with every object in memory, keeping freed
    /// memory, and the echo service (what the files cost, and ours against the echo ceiling).
    Spill,
    /// Fan-out on SQLite.
    Sqlite,
    Idle,
    Supernode,
    /// A whole federation: `flwr run` of the example app on two SuperNodes.
    Federation,
    /// Our replicas on PostgreSQL behind HAProxy (needs Debian's postgresql and haproxy).
    Postgres,
}

/// The rounds of `fanout` and `echo`.
#[derive(clap::Args)]
struct Shape {
    /// Simulated nodes (for `echo`: clients, each on its own connection).
    #[arg(long, default_value = "10")]
    nodes: usize,
    /// Payload bytes per message.
    #[arg(long, default_value = "1000")]
    bytes: usize,
    /// Rounds.
    #[arg(long, default_value = "5")]
    rounds: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Starts our daemons and Flower 1.28.0's in turn, drives both with the same workloads and
    /// prints one table (Markdown) with both figures and their ratio.
    Compare {
        /// Tiny sizes (a smoke run of every code path, about a minute).
        #[arg(long)]
        smoke: bool,
        /// Only these sections (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<Section>,
        /// Also write the rows as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Our superlink (default: next to this program).
        #[arg(long)]
        superlink: Option<PathBuf>,
        /// Our supernode (default: next to this program).
        #[arg(long)]
        supernode: Option<PathBuf>,
        /// A venv with flwr==1.28.0 (as made by scripts/python-env.sh).
        #[arg(long, env = "FLWR_VENV", default_value = ".venv")]
        venv: PathBuf,
        /// Seconds after which a fan-out's rounds (or an idle fleet's joining) count as failed.
        #[arg(long)]
        row_timeout: Option<u64>,
    },
    /// Fan-out rounds against a running SuperLink (started with `--isolation process`).
    Fanout {
        /// Control API address.
        #[arg(long, default_value = "127.0.0.1:9093")]
        control: String,
        /// Fleet API address.
        #[arg(long, default_value = "127.0.0.1:9092")]
        fleet: String,
        /// ServerAppIo API address.
        #[arg(long, default_value = "127.0.0.1:9091")]
        serverappio: String,
        /// CA certificate of the SuperLink (omit for a plaintext SuperLink).
        #[arg(long)]
        ca: Option<PathBuf>,
        #[command(flatten)]
        shape: Shape,
        /// Milliseconds between a node's empty pulls (default: 2,000 pulls a second in all, at
        /// most one per node every 50 ms).
        #[arg(long)]
        poll_ms: Option<u64>,
    },
    /// An idle fleet against a running SuperLink: nodes join, heartbeat, and are counted.
    Idle {
        /// Control API address.
        #[arg(long, default_value = "127.0.0.1:9093")]
        control: String,
        /// Fleet API address.
        #[arg(long, default_value = "127.0.0.1:9092")]
        fleet: String,
        /// CA certificate of the SuperLink (omit for a plaintext SuperLink).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Simulated nodes.
        #[arg(long, default_value = "1000")]
        nodes: usize,
        /// Heartbeat interval announced (seconds).
        #[arg(long, default_value = "10")]
        interval: f64,
        /// Seconds measured once every node has joined.
        #[arg(long, default_value = "60")]
        seconds: u64,
    },
    /// Ceiling rounds against a running echo server (`flwr-bench echo-server`): each client
    /// sends what a node and its reply would move through a SuperLink in one round.
    Echo {
        /// The echo service's address.
        #[arg(long)]
        address: String,
        /// CA certificate of the echo server (omit for a plaintext one).
        #[arg(long)]
        ca: Option<PathBuf>,
        #[command(flatten)]
        shape: Shape,
    },
    /// The bare echo service of the ceiling (the comparison starts it itself).
    EchoServer {
        /// Where the echo service listens.
        #[arg(long)]
        address: String,
        /// Where the plaintext health service listens.
        #[arg(long)]
        health_server_address: String,
        /// CA certificate (PEM).
        #[arg(long)]
        ssl_ca_certfile: PathBuf,
        /// Server certificate chain (PEM).
        #[arg(long)]
        ssl_certfile: PathBuf,
        /// Server private key (PEM).
        #[arg(long)]
        ssl_keyfile: PathBuf,
    },
}

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating flwr-bench")?;
    Ok(me.with_file_name(name))
}

/// A running SuperLink's addresses, with TLS from its CA certificate (plaintext without one).
fn target(control: &str, fleet: &str, serverappio: &str, ca: Option<PathBuf>) -> Result<Target> {
    let tls = match ca {
        Some(ca) => load_client_config(&ClientTlsChoice::RootCertificates(ca))?.map(|l| l.config),
        None => None,
    };
    Ok(Target {
        control: control.parse()?,
        fleet: fleet.parse()?,
        serverappio: serverappio.parse()?,
        tls,
    })
}

/// mimalloc's option: milliseconds before memory freed goes back to the system (-1: never).
const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";
/// Set in the load generator's process once it runs with [`PURGE_DELAY`] (see
/// [`keep_freed_memory`]).
const KEEPS_FREED_MEMORY: &str = "FLWR_BENCH_KEEPS_FREED_MEMORY";

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::EchoServer { .. }) {
        keep_freed_memory()?;
    }
    if let Command::Compare { venv, .. } = &cli.command {
        // The whole-federation row's helpers find the venv as the tests do, by FLWR_VENV (set
        // here, before any other thread exists, when only `--venv` named it).
        if std::env::var_os("FLWR_VENV").is_none() {
            let venv = std::fs::canonicalize(venv)
                .with_context(|| format!("--venv {}", venv.display()))?;
            std::env::set_var("FLWR_VENV", venv);
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

/// The load generator is the client of every row, on the cores of the server it measures: it
/// keeps the memory it frees for its next messages instead of giving it back to the system at
/// once, as the allocator does by default (at 50 MB messages the first touch of memory given
/// back and taken again, page faults and zeroing, was half of its CPU). The allocator reads its
/// options when the process starts, so the program runs itself again with the option set, then
/// takes it out of its environment: the servers it starts (ours, Flower's, the echo service) run
/// with the defaults, as deployed.
fn keep_freed_memory() -> Result<()> {
    if std::env::var_os(KEEPS_FREED_MEMORY).is_some() {
        // Before any other thread exists.
        std::env::remove_var(PURGE_DELAY);
        std::env::remove_var(KEEPS_FREED_MEMORY);
        return Ok(());
    }
    use std::os::unix::process::CommandExt as _;
    // Not a child: this process becomes the program again (nothing to own or reap).
    #[allow(clippy::disallowed_methods)]
    let failed = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(PURGE_DELAY, "-1")
        .env(KEEPS_FREED_MEMORY, "1")
        .exec();
    Err(failed).context("running flwr-bench again with its allocator's option")
}

async fn run(cli: Cli) -> Result<()> {
    let _logging = flwr_daemon::logging::init(Default::default())?;
    match cli.command {
        Command::Compare {
            smoke,
            only,
            json,
            superlink,
            supernode,
            venv,
            row_timeout,
        } => {
            let programs = Programs {
                superlink: superlink.map_or_else(|| sibling("superlink"), Ok)?,
                supernode: supernode.map_or_else(|| sibling("supernode"), Ok)?,
                bench: std::env::current_exe()?,
                venv_bin: venv.join("bin"),
            };
            let mut plan = if smoke { Plan::smoke() } else { Plan::full() };
            if let Some(s) = row_timeout {
                plan.row_timeout = Duration::from_secs(s);
            }
            let all = only.is_empty();
            let sections = Sections {
                startup: all || only.contains(&Section::Startup),
                fanout: all || only.contains(&Section::Fanout),
                spill: all || only.contains(&Section::Spill),
                sqlite: all || only.contains(&Section::Sqlite),
                idle: all || only.contains(&Section::Idle),
                supernode: all || only.contains(&Section::Supernode),
                federation: all || only.contains(&Section::Federation),
                postgres: all || only.contains(&Section::Postgres),
            };
            let mut cmp = Comparison::new(programs, plan)?;
            let result = cmp.run(sections).await;
            println!("Machine: {}\n", flwr_loadgen::compare::machine());
            println!("{}", cmp.table());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&cmp.json())?;
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Err(e) = result {
                let logs = cmp.keep();
                eprintln!(
                    "the comparison stopped early; the logs of every daemon are in {}",
                    logs.display()
                );
                return Err(e);
            }
        }
        Command::Fanout {
            control,
            fleet,
            serverappio,
            ca,
            shape,
            poll_ms,
        } => {
            let target = target(&control, &fleet, &serverappio, ca)?;
            let mut w = FanOut::new(shape.nodes, shape.bytes, shape.rounds);
            if let Some(ms) = poll_ms {
                w.node_poll = Duration::from_millis(ms);
            }
            let results = fan_out(&target, w).await?;
            for (i, r) in results.iter().enumerate() {
                println!(
                    "round {}: {:.3} s, {} messages, {:.1} MB, {} error replies",
                    i + 1,
                    r.latency.as_secs_f64(),
                    r.messages,
                    r.payload_bytes as f64 / 1e6,
                    r.errors
                );
            }
        }
        Command::Echo {
            address,
            ca,
            shape:
                Shape {
                    nodes,
                    bytes,
                    rounds,
                },
        } => {
            let t = target(&address, &address, &address, ca)?;
            let channels: Vec<_> = (0..nodes)
                .map(|_| flwr_transport::grpc::channel(&t.fleet, t.tls.clone()))
                .collect();
            for i in 0..rounds {
                let (moved, took) = flwr_loadgen::echo::round(&channels, bytes).await?;
                println!(
                    "round {}: {:.3} s, {:.1} MB, {:.0} MB/s",
                    i + 1,
                    took.as_secs_f64(),
                    moved as f64 / 1e6,
                    moved as f64 / 1e6 / took.as_secs_f64()
                );
            }
        }
        Command::Idle {
            control,
            fleet,
            ca,
            nodes,
            interval,
            seconds,
        } => {
            // An idle fleet never uses ServerAppIo.
            let target = target(&control, &fleet, &fleet, ca)?;
            let started = std::time::Instant::now();
            let fleet =
                IdleFleet::start(&target, nodes, interval, Some(Duration::from_secs(30))).await?;
            println!(
                "{nodes} nodes joined in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let o = fleet.measure(Duration::from_secs(seconds)).await?;
            println!(
                "{} heartbeats accepted ({:.0}/s), {} failed, {} of {} online at the end",
                o.heartbeats,
                o.heartbeats as f64 / seconds as f64,
                o.failed_heartbeats,
                o.online_at_end,
                o.nodes
            );
        }
        Command::EchoServer {
            address,
            health_server_address,
            ssl_ca_certfile,
            ssl_certfile,
            ssl_keyfile,
        } => {
            let files = ServerTlsFiles {
                ca_certfile: ssl_ca_certfile,
                certfile: ssl_certfile,
                keyfile: ssl_keyfile,
            };
            let tls = load_server_config(&files)?.config;
            flwr_loadgen::echo::serve(
                &address.parse()?,
                &health_server_address.parse()?,
                Some(tls),
            )
            .await?;
        }
    }
    Ok(())
}
