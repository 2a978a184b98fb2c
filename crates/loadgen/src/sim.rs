//! Simulated Flower peers that speak the real protocol to any SuperLink (ours or Flower's):
//! [`SimNode`] is a SuperNode on the Fleet API (signed calls, heartbeats, pull → objects →
//! confirm → reply → objects); [`Driver`] is a ServerApp on ServerAppIo (token, nodes, pushed
//! instructions with objects, pulled replies and objects).

use std::collections::HashMap;
use std::io::Write;

use sha2::Digest as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use flwr_objects::message::{MessageMeta, SUPERLINK_NODE_ID};
use flwr_objects::store::Lookup;
use flwr_objects::{ObjectId, ObjectTree};
use flwr_proto::convert::{message_from_pb, message_to_pb, tree_from_pb, tree_to_pb};
use flwr_proto::proto as pb;
use flwr_supernode::fleet::{Fleet, FleetError, Pulled, RetryPolicy};
use flwr_transport::node_auth::NodeSigningKey;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::payload::{self, Built};

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The ClientApp of [`bench_fab`]: answers every instruction with its own content.
const ECHO_APP: &str = "\"\"\"Answers each instruction with its own content (flwr-bench).\"\"\"

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return Message(content=msg.content, reply_to=msg)
";

/// A FAB the SuperLinks accept (`StartRun` reads its `pyproject.toml`). Its ClientApp echoes
/// every instruction, for SuperNode measurements with real `flwr-clientapp` processes; the
/// ServerApp side is this load generator.
pub fn bench_fab() -> Bytes {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        let pyproject = "[build-system]\nrequires = [\"hatchling\"]\nbuild-backend = \"hatchling.build\"\n\n\
                         [project]\nname = \"flwrbench\"\nversion = \"1.0.0\"\ndependencies = [\"flwr==1.28.0\"]\n\n\
                         [tool.hatch.build.targets.wheel]\npackages = [\".\"]\n\n\
                         [tool.flwr.app]\npublisher = \"flower-rs\"\n\n\
                         [tool.flwr.app.components]\nserverapp = \"flwrbench.app:app\"\nclientapp = \"flwrbench.app:app\"\n";
        // `flwr-clientapp` installs a FAB only with its `.info/CONTENT` manifest: one
        // "path,sha256,size in bits" line per file, as `flwr build` writes it.
        let mut manifest = Vec::new();
        for (name, text) in [
            ("pyproject.toml", pyproject),
            ("flwrbench/__init__.py", ""),
            ("flwrbench/app.py", ECHO_APP),
        ] {
            if z.start_file(name, opts).is_ok() {
                let _ = z.write_all(text.as_bytes());
            }
            let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
            manifest.push(format!("{name},{digest},{}", text.len() * 8));
        }
        if z.start_file(".info/CONTENT", opts).is_ok() {
            let _ = z.write_all(manifest.join("\n").as_bytes());
        }
        let _ = z.finish();
    }
    Bytes::from(buf.into_inner())
}

/// Counters a node keeps.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Replies sent.
    pub replies: AtomicU64,
    /// Heartbeats that failed.
    pub failed_heartbeats: AtomicU64,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Instructions the node could not answer (a stalled benchmark says what its nodes saw).
    pub failed_answers: AtomicU64,
    /// The reason of the last of those.
    pub last_failure: std::sync::Mutex<Option<String>>,
}

/// How a simulated node behaves.
#[derive(Clone, Copy, Debug)]
pub struct NodeBehaviour {
    /// Seconds between heartbeats (also announced).
    pub heartbeat_interval: f64,
    /// Wait between empty pulls.
    pub poll: Duration,
    /// Bytes of float32 data in each reply.
    pub reply_bytes: usize,
    /// Pull messages at all (false for an idle fleet).
    pub pull: bool,
}

/// A simulated SuperNode.
pub struct SimNode {
    fleet: Fleet,
    /// Its counters.
    pub stats: Arc<NodeStats>,
    /// The content of its replies, when built ahead (see [`SimNode::build_reply`]).
    reply: Option<payload::Content>,
}

impl SimNode {
    /// Registers and activates a node with a fresh P-384 key. With `sig_reuse`, the node signs
    /// once per that time instead of on every call (see [`Fleet::with_signature_reuse`]).
    pub async fn join(
        channel: Channel,
        heartbeat_interval: f64,
        sig_reuse: Option<Duration>,
        stop: CancellationToken,
    ) -> Result<SimNode> {
        let key = Arc::new(NodeSigningKey::generate());
        let mut fleet = Fleet::new(
            channel,
            key,
            RetryPolicy {
                max_tries: Some(5),
                max_time: None,
            },
            stop,
        );
        if let Some(d) = sig_reuse {
            fleet = fleet.with_signature_reuse(d);
        }
        fleet.register().await.context("RegisterNode")?;
        fleet
            .activate(heartbeat_interval)
            .await
            .context("ActivateNode")?;
        Ok(SimNode {
            fleet,
            stats: Arc::default(),
            reply: None,
        })
    }

    /// Builds the content of this node's replies (`bytes` of float32 data, the same every
    /// round) now rather than at its first answer: before the rounds start, as a ServerApp
    /// builds its instructions before a round's clock starts, so that the node's payload work
    /// does not take the machine's CPU from the server during a round.
    pub fn build_reply(&mut self, bytes: usize) {
        self.reply = Some(self.reply_content(bytes));
    }

    fn reply_content(&self, bytes: usize) -> payload::Content {
        payload::Content::of(&payload::floats(bytes, self.node_id() as u32))
    }

    /// The node id.
    pub fn node_id(&self) -> u64 {
        self.fleet.node_id()
    }

    /// Heartbeats (jittered like Flower's: at once, then (interval − 5 s) × U(0.7, 0.9), at least
    /// 1 s) and, if asked, the message loop, until `stop`.
    pub async fn run(self, behaviour: NodeBehaviour, stop: CancellationToken) {
        let hb_fleet = self.fleet.clone();
        let hb_stats = self.stats.clone();
        let hb_stop = stop.clone();
        let heartbeats = async move {
            loop {
                match hb_fleet.heartbeat(behaviour.heartbeat_interval).await {
                    Ok(true) => hb_stats.heartbeats.fetch_add(1, Ordering::Relaxed),
                    _ => hb_stats.failed_heartbeats.fetch_add(1, Ordering::Relaxed),
                };
                tokio::select! {
                    () = hb_stop.cancelled() => return,
                    () = tokio::time::sleep(heartbeat_wait(behaviour.heartbeat_interval)) => {}
                }
            }
        };
        let work = async {
            if !behaviour.pull {
                stop.cancelled().await;
                return;
            }
            let reply = match &self.reply {
                Some(r) => r.clone(),
                None => self.reply_content(behaviour.reply_bytes),
            };
            loop {
                let got = tokio::select! {
                    () = stop.cancelled() => return,
                    r = self.fleet.pull_message() => r,
                };
                match got {
                    Ok(Some(pulled)) => {
                        let answered = tokio::select! {
                            () = stop.cancelled() => return,
                            r = self.answer(pulled, &reply) => r,
                        };
                        if let Err(e) = answered {
                            tracing::warn!(node_id = self.node_id(), "answering failed: {e:#}");
                            self.stats.failed_answers.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut last) = self.stats.last_failure.lock() {
                                *last = Some(format!("{e:#}"));
                            }
                        }
                    }
                    Ok(None) => {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(behaviour.poll) => {}
                        }
                    }
                    Err(FleetError::Cancelled) => return,
                    Err(e) => {
                        tracing::warn!(node_id = self.node_id(), "pull failed: {e}");
                        tokio::time::sleep(behaviour.poll).await;
                    }
                }
            }
        };
        tokio::join!(heartbeats, work);
    }

    async fn answer(&self, pulled: Pulled, content: &payload::Content) -> Result<()> {
        let (ins, tree) = pulled.map_err(|e| anyhow!(e))?;
        // One object at a time: an instruction reaches the node before the ServerApp has pushed
        // its objects, and pulling ahead only multiplies the retries.
        for node in tree.post_order() {
            pull_instruction_object(&self.fleet, ins.run_id, node.id).await?;
        }
        self.fleet
            .confirm(ins.run_id, ins.message_id.clone())
            .await?;
        let created = now();
        let reply = MessageMeta {
            run_id: ins.run_id,
            message_id: String::new(),
            src_node_id: self.node_id(),
            dst_node_id: SUPERLINK_NODE_ID,
            reply_to_message_id: ins.message_id.clone(),
            group_id: ins.group_id.clone(),
            ttl: ins.created_at + ins.ttl - created,
            message_type: ins.message_type.clone(),
            created_at: created,
            error: None,
            has_content: true,
        };
        let built = content.message(reply);
        let pushed = self.fleet.push_reply(&built.meta, &built.tree, 0.0).await?;
        if !pushed.accepted {
            bail!("the SuperLink refused the reply");
        }
        let objects: HashMap<String, Bytes> = built
            .objects
            .iter()
            .map(|(id, b)| (id.to_hex(), b.clone()))
            .collect();
        for id in pushed.objects_to_push {
            let bytes = objects
                .get(&id)
                .cloned()
                .ok_or_else(|| anyhow!("asked for unknown object {id}"))?;
            self.fleet.push_object(ins.run_id, id, bytes).await?;
        }
        self.stats.replies.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Pulls one object of an instruction and checks it. Backs off as Flower's SuperNode does
/// (doubling, jittered) while the ServerApp has not pushed it yet, but from 20 ms up to 1 s
/// instead of from 1 s up to 10 s, so that the waits do not hide the server's speed.
async fn pull_instruction_object(fleet: &Fleet, run_id: u64, id: ObjectId) -> Result<()> {
    let mut delay = OBJECT_RETRY_FIRST;
    loop {
        match fleet.pull_object(run_id, id.to_hex()).await? {
            Lookup::Available(content) => {
                flwr_objects::content::verify_shared(id, &content).await?;
                return Ok(());
            }
            Lookup::Unknown => bail!("object {id} unknown to the SuperLink"),
            Lookup::Pending => {}
        }
        let jitter = 0.8 + 0.4 * flwr_supernode::fleet::rand_unit();
        tokio::time::sleep(delay.mul_f64(jitter)).await;
        delay = (delay * 2).min(OBJECT_RETRY_CAP);
    }
}

/// First wait before asking again for an object the ServerApp has not pushed yet.
const OBJECT_RETRY_FIRST: Duration = Duration::from_millis(20);
/// Longest wait between such requests.
const OBJECT_RETRY_CAP: Duration = Duration::from_secs(1);

/// What one round took.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    /// From the first instruction pushed (its payload built beforehand) to the last reply
    /// pulled with its objects.
    pub latency: Duration,
    /// Instructions and replies moved.
    pub messages: usize,
    /// Payload bytes moved (instructions and replies).
    pub payload_bytes: u64,
    /// Replies that carried an error (NODE_UNAVAILABLE from an overloaded SuperLink, say).
    pub errors: usize,
}

/// A simulated ServerApp with a running run.
pub struct Driver {
    appio: pb::server_app_io_client::ServerAppIoClient<Channel>,
    token: String,
    /// The run.
    pub run_id: u64,
    /// Wait between polls for replies.
    pub poll: Duration,
    /// Replies (not error replies) pulled with their objects so far, over every round, an
    /// unfinished one included.
    pub replies_delivered: usize,
    /// Keeps the token alive, as a ServerApp does (aborted when the driver is dropped).
    _heartbeat: AbortOnDrop,
}

/// Seconds between the simulated ServerApp's heartbeats (the SuperLink expires a token after
/// 30 s without one).
const APP_HEARTBEAT_SECS: u64 = 10;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Driver {
    /// Starts a run through the Control API and takes it over on ServerAppIo (the SuperLink must
    /// run with `--isolation process`, so that nothing else does).
    pub async fn start(control: Channel, appio: Channel) -> Result<Driver> {
        let mut control = flwr_transport::limits!(pb::control_client::ControlClient::new(control));
        let mut appio =
            flwr_transport::limits!(pb::server_app_io_client::ServerAppIoClient::new(appio));
        let started = control
            .start_run(pb::StartRunRequest {
                fab: Some(pb::Fab {
                    content: bench_fab(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .context("StartRun")?
            .into_inner();
        let run_id = started
            .run_id
            .ok_or_else(|| anyhow!("StartRun returned no run id"))?;
        let token = appio
            .request_token(pb::RequestTokenRequest { run_id })
            .await
            .context("RequestToken")?
            .into_inner()
            .token;
        if token.is_empty() {
            bail!("no token for run {run_id}: is the SuperLink in --isolation process?");
        }
        appio
            .pull_app_inputs(pb::PullAppInputsRequest {
                token: token.clone(),
            })
            .await
            .context("PullAppInputs")?;
        let heartbeat = {
            let mut appio = appio.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(APP_HEARTBEAT_SECS));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let sent = appio
                        .send_app_heartbeat(pb::SendAppHeartbeatRequest {
                            token: token.clone(),
                        })
                        .await;
                    if let Err(e) = sent {
                        tracing::warn!("ServerApp heartbeat failed: {e}");
                    }
                }
            })
        };
        Ok(Driver {
            appio,
            token,
            run_id,
            poll: Duration::from_millis(20),
            replies_delivered: 0,
            _heartbeat: AbortOnDrop(heartbeat),
        })
    }

    /// Waits until `n` nodes are online.
    pub async fn wait_for_nodes(&mut self, n: usize, timeout: Duration) -> Result<Vec<u64>> {
        let start = Instant::now();
        loop {
            let nodes = self
                .appio
                .get_nodes(pb::GetNodesRequest {
                    run_id: self.run_id,
                })
                .await?
                .into_inner()
                .nodes;
            if nodes.len() >= n {
                return Ok(nodes.into_iter().map(|n| n.node_id).collect());
            }
            if start.elapsed() > timeout {
                bail!(
                    "only {} of {n} nodes came online within {timeout:?}",
                    nodes.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One round: an instruction of `bytes` payload to every node, then every reply and its
    /// objects back.
    pub async fn round(&mut self, nodes: &[u64], bytes: usize, round: u32) -> Result<Round> {
        let created = now();
        let mut built: Vec<Built> = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let meta = MessageMeta {
                run_id: self.run_id,
                message_id: String::new(),
                src_node_id: SUPERLINK_NODE_ID,
                dst_node_id: *node,
                reply_to_message_id: String::new(),
                group_id: round.to_string(),
                ttl: 3600.0,
                message_type: "train".into(),
                created_at: created,
                error: None,
                has_content: true,
            };
            built.push(payload::build(
                meta,
                &payload::floats(bytes, round.wrapping_mul(100_003) ^ i as u32),
            ));
        }
        // The clock starts once the payloads are built, as a ServerApp's would be by then.
        let started = Instant::now();
        let req = pb::PushAppMessagesRequest {
            token: self.token.clone(),
            messages_list: built.iter().map(|b| message_to_pb(&b.meta)).collect(),
            run_id: self.run_id,
            message_object_trees: built.iter().map(|b| tree_to_pb(&b.tree)).collect(),
        };
        let pushed = self
            .appio
            .push_messages(req)
            .await
            .context("PushMessages")?
            .into_inner();
        if pushed.message_ids.iter().any(String::is_empty) {
            bail!("the SuperLink refused some instructions");
        }
        let objects: HashMap<String, Bytes> = built
            .iter()
            .flat_map(|b| b.objects.iter().map(|(id, o)| (id.to_hex(), o.clone())))
            .collect();
        self.push_objects(pushed.objects_to_push, &objects).await?;

        let mut waiting: Vec<String> = pushed.message_ids;
        let mut received = 0usize;
        let mut errors = 0usize;
        let mut reply_bytes = 0u64;
        while !waiting.is_empty() {
            let resp = self
                .appio
                .pull_messages(pb::PullAppMessagesRequest {
                    token: self.token.clone(),
                    message_ids: waiting.clone(),
                    run_id: self.run_id,
                })
                .await
                .context("PullMessages")?
                .into_inner();
            if resp.messages_list.is_empty() {
                tokio::time::sleep(self.poll).await;
                continue;
            }
            for (m, t) in resp.messages_list.iter().zip(&resp.message_object_trees) {
                let meta = message_from_pb(m).map_err(|e| anyhow!(e))?;
                if let Some(e) = &meta.error {
                    tracing::debug!(
                        node_id = meta.src_node_id,
                        "error reply {}: {}",
                        e.code,
                        e.reason
                    );
                    errors += 1;
                } else {
                    let tree = tree_from_pb(t).map_err(|e| anyhow!(e))?;
                    reply_bytes += self.pull_objects(&tree).await?;
                    self.replies_delivered += 1;
                }
                let node1 = Some(pb::Node {
                    node_id: SUPERLINK_NODE_ID,
                });
                self.appio
                    .confirm_message_received(pb::ConfirmMessageReceivedRequest {
                        node: node1,
                        run_id: self.run_id,
                        message_object_id: meta.message_id.clone(),
                    })
                    .await?;
                waiting.retain(|id| *id != meta.reply_to_message_id);
                received += 1;
            }
        }
        let sent: u64 = built
            .iter()
            .map(|b| b.objects.iter().map(|(_, o)| o.len() as u64).sum::<u64>())
            .sum();
        Ok(Round {
            latency: started.elapsed(),
            messages: nodes.len() + received - errors,
            payload_bytes: sent + reply_bytes,
            errors,
        })
    }

    async fn push_objects(
        &mut self,
        ids: Vec<String>,
        objects: &HashMap<String, Bytes>,
    ) -> Result<()> {
        let mut set = JoinSet::new();
        for id in ids {
            let bytes = objects
                .get(&id)
                .cloned()
                .ok_or_else(|| anyhow!("asked for unknown object {id}"))?;
            let mut client = self.appio.clone();
            let run_id = self.run_id;
            set.spawn(async move {
                let node = Some(pb::Node {
                    node_id: SUPERLINK_NODE_ID,
                });
                client
                    .push_object(pb::PushObjectRequest {
                        node,
                        run_id,
                        object_id: id,
                        object_content: bytes,
                    })
                    .await
            });
            while set.len() >= 8 {
                if let Some(r) = set.join_next().await {
                    r??;
                }
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok(())
    }

    /// Pulls and checks a reply's objects, up to 8 at once (as the ServerApp's pushes).
    async fn pull_objects(&mut self, tree: &ObjectTree) -> Result<u64> {
        let mut total = 0;
        let mut pulls = JoinSet::new();
        for node in tree.post_order() {
            let (mut appio, run_id, id, poll) =
                (self.appio.clone(), self.run_id, node.id, self.poll);
            pulls.spawn(async move {
                loop {
                    let r = appio
                        .pull_object(pb::PullObjectRequest {
                            node: Some(pb::Node {
                                node_id: SUPERLINK_NODE_ID,
                            }),
                            run_id,
                            object_id: id.to_hex(),
                        })
                        .await?
                        .into_inner();
                    if r.object_available {
                        flwr_objects::content::verify_shared(id, &r.object_content).await?;
                        return anyhow::Ok(r.object_content.len() as u64);
                    }
                    if !r.object_found {
                        bail!("reply object {id} unknown");
                    }
                    tokio::time::sleep(poll).await;
                }
            });
            while pulls.len() >= 8 {
                if let Some(r) = pulls.join_next().await {
                    total += r.context("object pull task")??;
                }
            }
        }
        while let Some(r) = pulls.join_next().await {
            total += r.context("object pull task")??;
        }
        Ok(total)
    }

    /// Ends the run as a completed one.
    pub async fn finish(mut self) -> Result<()> {
        self.appio
            .push_app_outputs(pb::PushAppOutputsRequest {
                token: self.token.clone(),
                run_id: self.run_id,
                context: Some(pb::Context::default()),
            })
            .await?;
        let status = pb::RunStatus {
            status: "finished".into(),
            sub_status: "completed".into(),
            details: String::new(),
        };
        self.appio
            .update_run_status(pb::UpdateRunStatusRequest {
                run_id: self.run_id,
                run_status: Some(status),
            })
            .await?;
        Ok(())
    }
}

/// How long a simulated node waits between heartbeats announced every `interval` seconds:
/// 0.7–0.9 × (interval − 5 s), jittered, at least 1 s, as Flower's SuperNode sends them.
pub fn heartbeat_wait(interval: f64) -> Duration {
    Duration::from_secs_f64(
        ((interval - 5.0) * (0.7 + 0.2 * flwr_supernode::fleet::rand_unit())).max(1.0),
    )
}
