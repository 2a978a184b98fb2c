//! Workloads: fan-out rounds over N simulated nodes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use flwr_transport::address::Address;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sim::{Driver, NodeBehaviour, Round, SimNode};

/// Where the SuperLink listens and how to reach it.
#[derive(Clone)]
pub struct Target {
    /// Control API.
    pub control: Address,
    /// Fleet API.
    pub fleet: Address,
    /// ServerAppIo API (plaintext).
    pub serverappio: Address,
    /// TLS for Control and Fleet (`None`: plaintext).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A fan-out workload.
#[derive(Clone, Copy, Debug)]
pub struct FanOut {
    /// Simulated nodes.
    pub nodes: usize,
    /// Payload bytes per instruction and per reply.
    pub bytes: usize,
    /// Rounds.
    pub rounds: u32,
    /// Wait between a node's empty pulls.
    pub node_poll: Duration,
}

/// Runs `w` against `t`: joins the nodes, starts a run, drives the rounds, finishes the run.
pub async fn fan_out(t: &Target, w: FanOut) -> Result<Vec<Round>> {
    let stop = CancellationToken::new();
    let mut joined = Vec::with_capacity(w.nodes);
    let mut joins = JoinSet::new();
    for _ in 0..w.nodes {
        let channel = flwr_transport::grpc::channel(&t.fleet, t.tls.clone());
        let s = stop.clone();
        joins.spawn(async move { SimNode::join(channel, 30.0, s).await });
        while joins.len() >= 32 {
            if let Some(r) = joins.join_next().await {
                joined.push(r.context("join task")??);
            }
        }
    }
    while let Some(r) = joins.join_next().await {
        joined.push(r.context("join task")??);
    }
    let behaviour = NodeBehaviour {
        heartbeat_interval: 30.0,
        poll: w.node_poll,
        reply_bytes: w.bytes,
        pull: true,
    };
    let mut running = JoinSet::new();
    for node in joined {
        running.spawn(node.run(behaviour, stop.clone()));
    }
    let result = async {
        let control = flwr_transport::grpc::channel(&t.control, t.tls.clone());
        let appio = flwr_transport::grpc::channel(&t.serverappio, None);
        let mut driver = Driver::start(control, appio).await?;
        let ids = driver
            .wait_for_nodes(w.nodes, Duration::from_secs(120))
            .await?;
        let mut rounds = Vec::with_capacity(w.rounds as usize);
        for r in 1..=w.rounds {
            rounds.push(
                driver
                    .round(&ids, w.bytes, r)
                    .await
                    .with_context(|| format!("round {r}"))?,
            );
        }
        driver.finish().await?;
        Ok(rounds)
    }
    .await;
    stop.cancel();
    while running.join_next().await.is_some() {}
    result
}
