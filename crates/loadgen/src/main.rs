//! `flwr-bench`: drives a SuperLink with simulated SuperNodes and a simulated ServerApp.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use flwr_loadgen::workload::{fan_out, FanOut, Target};
use flwr_transport::tls::{load_client_config, ClientTlsChoice};

#[derive(Parser)]
#[command(
    name = "flwr-bench",
    about = "Load generator for Flower 1.28 SuperLinks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fan-out rounds: one instruction per node per round, replies of the same size.
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
        /// Simulated nodes.
        #[arg(long, default_value = "10")]
        nodes: usize,
        /// Payload bytes per message.
        #[arg(long, default_value = "1024")]
        bytes: usize,
        /// Rounds.
        #[arg(long, default_value = "5")]
        rounds: u32,
        /// Milliseconds between a node's empty pulls.
        #[arg(long, default_value = "50")]
        poll_ms: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    flwr_transport::logging::init();
    match Cli::parse().command {
        Command::Fanout {
            control,
            fleet,
            serverappio,
            ca,
            nodes,
            bytes,
            rounds,
            poll_ms,
        } => {
            let tls = match ca {
                Some(ca) => {
                    load_client_config(&ClientTlsChoice::RootCertificates(ca))?.map(|l| l.config)
                }
                None => None,
            };
            let target = Target {
                control: control.parse()?,
                fleet: fleet.parse()?,
                serverappio: serverappio.parse()?,
                tls,
            };
            let w = FanOut {
                nodes,
                bytes,
                rounds,
                node_poll: Duration::from_millis(poll_ms),
            };
            let results = fan_out(&target, w).await?;
            for (i, r) in results.iter().enumerate() {
                println!(
                    "round {}: {:.3} s, {} messages, {:.1} MB",
                    i + 1,
                    r.latency.as_secs_f64(),
                    r.messages,
                    r.payload_bytes as f64 / 1e6
                );
            }
        }
    }
    Ok(())
}
