//! Workloads: fan-out rounds over N simulated nodes, and an idle fleet that only heartbeats.
//! Each comes in phases (set up, measure, tear down) so that a caller can sample the server
//! around the measured phase alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use flwr_proto::proto as pb;
use flwr_transport::address::Address;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sim::{Driver, NodeBehaviour, NodeStats, Round, SimNode};

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
    /// Wait between the ServerApp's polls for replies.
    pub driver_poll: Duration,
    /// How long a simulated node reuses one signature (`None`: signs every call, as Flower's
    /// SuperNode does).
    pub sig_reuse: Option<Duration>,
}

impl FanOut {
    /// Defaults of the comparison: the fleet polls 2,000 times a second in all (every 50 ms up
    /// to 100 nodes, less often beyond: 500 ms for 1,000), the ServerApp every 20 ms; nodes sign
    /// once per 30 s (the server verifies every call regardless). Real SuperNodes poll every 1 s
    /// (ours) or 3 s (Flower's); the benchmark polls faster so that the polling interval does
    /// not hide the server's own latency, but not so fast that verifying polls is all it does.
    pub fn new(nodes: usize, bytes: usize, rounds: u32) -> Self {
        Self {
            nodes,
            bytes,
            rounds,
            node_poll: Duration::from_micros((nodes as u64 * 500).max(50_000)),
            driver_poll: Duration::from_millis(20),
            sig_reuse: Some(Duration::from_secs(30)),
        }
    }
}

/// Joins `n` nodes, at most 32 at a time, each on its own connection to one of `fleets` (in
/// turn).
pub async fn join_nodes(
    t: &Target,
    fleets: &[Address],
    n: usize,
    heartbeat_interval: f64,
    sig_reuse: Option<Duration>,
    stop: &CancellationToken,
) -> Result<Vec<SimNode>> {
    let mut joined = Vec::with_capacity(n);
    let mut joins = JoinSet::new();
    for i in 0..n {
        let fleet = fleets.get(i % fleets.len().max(1)).unwrap_or(&t.fleet);
        let channel = flwr_transport::grpc::channel(fleet, t.tls.clone());
        let s = stop.clone();
        joins.spawn(async move { SimNode::join(channel, heartbeat_interval, sig_reuse, s).await });
        while joins.len() >= 32 {
            if let Some(r) = joins.join_next().await {
                joined.push(r.context("join task")??);
            }
        }
    }
    while let Some(r) = joins.join_next().await {
        joined.push(r.context("join task")??);
    }
    Ok(joined)
}

/// A fan-out with its nodes online and its run started, ready for rounds.
pub struct FanOutSession {
    w: FanOut,
    stop: CancellationToken,
    running: JoinSet<()>,
    driver: Driver,
    ids: Vec<u64>,
    stats: Vec<Arc<NodeStats>>,
}

impl FanOutSession {
    /// Joins the nodes, starts their loops, starts a run and waits until every node is online.
    pub async fn prepare(t: &Target, w: FanOut) -> Result<FanOutSession> {
        let stop = CancellationToken::new();
        let joined = join_nodes(t, &[], w.nodes, 30.0, w.sig_reuse, &stop).await?;
        let behaviour = NodeBehaviour {
            heartbeat_interval: 30.0,
            poll: w.node_poll,
            reply_bytes: w.bytes,
            pull: true,
        };
        let mut running = JoinSet::new();
        let stats = joined.iter().map(|n| n.stats.clone()).collect();
        for mut node in joined {
            node.build_reply(w.bytes);
            running.spawn(node.run(behaviour, stop.clone()));
        }
        let control = flwr_transport::grpc::channel(&t.control, t.tls.clone());
        let appio = flwr_transport::grpc::channel(&t.serverappio, None);
        let prepared = async {
            let mut driver = Driver::start(control, appio).await?;
            driver.poll = w.driver_poll;
            let ids = driver
                .wait_for_nodes(w.nodes, Duration::from_secs(300))
                .await?;
            anyhow::Ok((driver, ids))
        }
        .await;
        match prepared {
            Ok((driver, ids)) => Ok(FanOutSession {
                w,
                stop,
                running,
                driver,
                ids,
                stats,
            }),
            Err(e) => {
                stop.cancel();
                while running.join_next().await.is_some() {}
                Err(e)
            }
        }
    }

    /// Drives the rounds, handing each one to `done` as it completes.
    pub async fn rounds(&mut self, mut done: impl FnMut(Round)) -> Result<()> {
        for r in 1..=self.w.rounds {
            let round = self
                .driver
                .round(&self.ids, self.w.bytes, r)
                .await
                .with_context(|| format!("round {r}"))?;
            done(round);
        }
        Ok(())
    }

    /// Messages delivered so far, an unfinished round's included: instructions answered by the
    /// nodes (a node answers every instruction it pulls) and replies pulled by the ServerApp.
    pub fn messages_delivered(&self) -> usize {
        self.summed(|s| &s.replies) as usize + self.driver.replies_delivered
    }

    /// A counter summed over the nodes.
    fn summed(&self, counter: impl Fn(&NodeStats) -> &AtomicU64) -> u64 {
        self.stats
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }

    /// What the nodes did: replies sent, answers that failed and the last reason.
    pub fn nodes_summary(&self) -> String {
        let replies = self.summed(|s| &s.replies);
        let failed = self.summed(|s| &s.failed_answers);
        let last = self
            .stats
            .iter()
            .find_map(|s| s.last_failure.lock().ok().and_then(|l| l.clone()))
            .unwrap_or_else(|| "none".into());
        format!("nodes sent {replies} replies, {failed} answers failed (one reason: {last})")
    }

    /// Stops the nodes, then ends the run (best effort): a node still answering when a row's
    /// time runs out is stopped, not told that the run has ended.
    pub async fn finish(mut self) {
        self.stop.cancel();
        while self.running.join_next().await.is_some() {}
        if let Err(e) = self.driver.finish().await {
            tracing::debug!("finishing the run: {e:#}");
        }
    }
}

/// Runs `w` against `t`: joins the nodes, starts a run, drives the rounds, finishes the run.
pub async fn fan_out(t: &Target, w: FanOut) -> Result<Vec<Round>> {
    let mut session = FanOutSession::prepare(t, w).await?;
    let mut rounds = Vec::with_capacity(w.rounds as usize);
    let result = session.rounds(|r| rounds.push(r)).await;
    session.finish().await;
    result.map(|()| rounds)
}

/// What an idle fleet saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdleOutcome {
    /// Heartbeats accepted during the measured time.
    pub heartbeats: u64,
    /// Heartbeats that failed (any error, or `success = false`).
    pub failed_heartbeats: u64,
    /// Nodes the SuperLink listed as online at the end (Control `ListNodes`).
    pub online_at_end: usize,
    /// Nodes that joined.
    pub nodes: usize,
}

/// An idle fleet, joined and heartbeating.
pub struct IdleFleet {
    stop: CancellationToken,
    running: JoinSet<()>,
    stats: Vec<Arc<NodeStats>>,
    target: Target,
}

impl IdleFleet {
    /// Joins `n` nodes that heartbeat every `interval` seconds (jittered as Flower's) and never
    /// pull.
    pub async fn start(
        t: &Target,
        n: usize,
        interval: f64,
        sig_reuse: Option<Duration>,
    ) -> Result<IdleFleet> {
        Self::start_spread(t, &[], n, interval, sig_reuse).await
    }

    /// Like [`IdleFleet::start`], with the nodes spread over `fleets` (SuperLink replicas that
    /// share one database) instead of all on `t`'s Fleet address; `t`'s Control API counts them.
    pub async fn start_spread(
        t: &Target,
        fleets: &[Address],
        n: usize,
        interval: f64,
        sig_reuse: Option<Duration>,
    ) -> Result<IdleFleet> {
        let stop = CancellationToken::new();
        let joined = join_nodes(t, fleets, n, interval, sig_reuse, &stop).await?;
        let behaviour = NodeBehaviour {
            heartbeat_interval: interval,
            poll: Duration::from_secs(1),
            reply_bytes: 0,
            pull: false,
        };
        let mut running = JoinSet::new();
        let mut stats = Vec::with_capacity(n);
        for node in joined {
            stats.push(node.stats.clone());
            running.spawn(node.run(behaviour, stop.clone()));
        }
        Ok(IdleFleet {
            stop,
            running,
            stats,
            target: t.clone(),
        })
    }

    fn counts(&self) -> (u64, u64) {
        self.stats.iter().fold((0, 0), |(ok, failed), s| {
            (
                ok + s.heartbeats.load(Ordering::Relaxed),
                failed + s.failed_heartbeats.load(Ordering::Relaxed),
            )
        })
    }

    /// Lets the fleet heartbeat for `duration`, then counts what happened in that time and
    /// stops the nodes.
    pub async fn measure(mut self, duration: Duration) -> Result<IdleOutcome> {
        let (ok0, failed0) = self.counts();
        let start = Instant::now();
        tokio::time::sleep(duration).await;
        let (ok1, failed1) = self.counts();
        let elapsed = start.elapsed();
        tracing::debug!(?elapsed, "idle fleet measured");
        let online = online_nodes(&self.target).await;
        self.stop.cancel();
        while self.running.join_next().await.is_some() {}
        Ok(IdleOutcome {
            heartbeats: ok1 - ok0,
            failed_heartbeats: failed1 - failed0,
            online_at_end: online?,
            nodes: self.stats.len(),
        })
    }
}

/// How many nodes the SuperLink lists as online (Control `ListNodes`).
pub async fn online_nodes(t: &Target) -> Result<usize> {
    let channel = flwr_transport::grpc::channel(&t.control, t.tls.clone());
    let mut control = flwr_transport::limits!(pb::control_client::ControlClient::new(channel));
    let nodes = control
        .list_nodes(pb::ListNodesRequest {})
        .await
        .context("ListNodes")?
        .into_inner()
        .nodes_info;
    Ok(nodes.iter().filter(|n| n.status == "online").count())
}
