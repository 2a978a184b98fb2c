//! The SuperNode's work: join the SuperLink, keep heartbeats going, and handle one instruction
//! at a time (pull it and its objects, hand it to a ClientApp, push the reply and its objects).
//!
//! Beyond Flower 1.28: a SuperLink that forgot the node ("Invalid node ID" after a restart without
//! its database) is joined again instead of exiting; replies the SuperNode makes itself (a
//! ClientApp that crashed or stopped sending heartbeats) reach the SuperLink.

use std::ffi::OsString;

use std::time::{Duration, Instant};

use bytes::Bytes;
use flwr_daemon::process::{self, CommandLine};
use flwr_objects::content;
use flwr_objects::message::{error_code, MessageError, MessageMeta, SUPERLINK_NODE_ID};
use flwr_objects::store::{Lookup, StoreError};
use flwr_objects::{ConfigValue, ObjectId, ObjectTree};
use flwr_proto::convert::context_bytes;
use nix::sys::signal::Signal;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::fleet::{rand_unit, Fleet, FleetError, Pulled, Pushed, RetryPolicy};
use crate::state::{NodeState, RunEntry};
use crate::trusted::Unverified;

/// The heartbeat interval the node announces (Flower's default).
pub const HEARTBEAT_INTERVAL: f64 = 30.0;
/// How long to wait between empty pulls (the least, when the SuperLink holds them).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a pull asks the SuperLink to hold it until an instruction comes (our SuperLinks
/// do, up to their `--fleet-pull-hold`; Flower's answer at once, and then the node polls every
/// [`POLL_INTERVAL`]).
pub const PULL_WAIT: Duration = Duration::from_secs(20);
/// Environment variable naming the ClientApp program (default `flwr-clientapp` on `PATH`).
pub const CLIENTAPP_COMMAND_ENV: &str = "FLWR_CLIENTAPP_COMMAND";
/// Object pulls that may run at once.
const PULL_CONCURRENCY: usize = 4;
/// Longest wait between pulls of an object that is not there yet.
const PULL_BACKOFF_CAP: f64 = 10.0;
/// Give up on an object after this long.
const PULL_MAX_TIME: Duration = Duration::from_secs(7200);
/// The reason of CLIENT_APP_CRASHED replies.
const CRASHED_REASON: &str = "ClientApp stopped responding.";
const SHUTDOWN_REASON: &str =
    "The SuperNode shut down before its ClientApp replied (--shutdown-grace-seconds).";

/// How the node runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The node registers (and unregisters) itself: it made its own key.
    pub own_key: bool,
    /// `--node-config`.
    pub node_config: Vec<(String, ConfigValue)>,
    /// Start `flwr-clientapp` per message (`--isolation subprocess`).
    pub launch_apps: bool,
    /// The ClientAppIo address ClientApps connect to.
    pub clientappio: String,
    /// Fork ClientApps from a launcher that imported `flwr` once (`--clientapp-launch fork`).
    pub fork_apps: bool,
    /// The ClientApp program.
    pub clientapp_program: OsString,
    /// At shutdown, how long the message in hand may take to be answered by its ClientApp.
    pub shutdown_grace: Duration,
    /// `--trusted-entities`: when set, a run's FAB must be signed by one of them.
    pub trusted: Option<std::sync::Arc<crate::trusted::TrustedEntities>>,
}

/// Why the node stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The SuperLink could not be reached or refused the node.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The task that sends heartbeats panicked: the SuperLink would soon take the node for
    /// offline, so the node stops rather than serve unseen.
    #[error("the heartbeat task failed: {0}")]
    Heartbeats(#[source] tokio::task::JoinError),
}

/// Why one message could not be handled (the node goes on with the next).
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The instruction the SuperLink sent cannot be read.
    #[error("the instruction from the SuperLink cannot be read: {0}")]
    UnreadableInstruction(String),
    /// The node's own object store failed.
    #[error("the node's object store: {0}")]
    Store(#[from] StoreError),
    /// The SuperLink answered a pull with "no such object".
    #[error("the SuperLink does not know object {0}")]
    UnknownObject(ObjectId),
    /// An object's bytes are not what its id says.
    #[error("object {id} from the SuperLink refused: {source}")]
    ObjectRefused {
        /// The object.
        id: ObjectId,
        /// What is wrong with it.
        #[source]
        source: content::VerifyError,
    },
    /// An object stayed announced but absent for [`PULL_MAX_TIME`].
    #[error("object {0} did not become available within two hours")]
    ObjectNeverAvailable(ObjectId),
    /// A reply's object vanished from the node's store before it was pushed.
    #[error("reply object {0} is missing locally")]
    ReplyObjectMissing(ObjectId),
    /// A task of the node's own (an object pull, a FAB inspection) panicked or was cancelled.
    #[error("a task of this node failed: {0}")]
    TaskLost(#[from] tokio::task::JoinError),
    /// The run's FAB or configuration cannot be used: no message of the run ever can be.
    #[error(transparent)]
    UnusableRun(#[from] UnusableRun),
}

/// Why a run's FAB or configuration cannot be used.
#[derive(Debug, thiserror::Error)]
enum UnusableRun {
    #[error("the FAB of run {run_id} does not match its hash {hash}")]
    HashMismatch { run_id: u64, hash: String },
    #[error("run {run_id}: {source}")]
    Untrusted {
        run_id: u64,
        #[source]
        source: Unverified,
    },
    #[error("the FAB of run {run_id} is not usable: {source}")]
    BadFab {
        run_id: u64,
        #[source]
        source: flwr_fab::FabError,
    },
    #[error("the run config of run {run_id} is not usable: {reason}")]
    BadConfig { run_id: u64, reason: String },
}

/// Records in `flwr_clientapp_duration_seconds` how long a ClientApp this node launched took to
/// answer, when dropped.
struct ClientAppTimer(Instant);

impl Drop for ClientAppTimer {
    fn drop(&mut self) {
        metrics::histogram!("flwr_clientapp_duration_seconds")
            .record(self.0.elapsed().as_secs_f64());
    }
}

/// What a handled instruction was answered with.
enum Replied {
    /// The ClientApp's reply.
    Reply,
    /// An error reply made by the node.
    Error,
}

/// The node.
pub struct Node {
    fleet: Fleet,
    state: NodeState,
    settings: Settings,
    stop: CancellationToken,
    /// When `stop` was cancelled.
    stop_seen: std::sync::Arc<std::sync::OnceLock<tokio::time::Instant>>,
    /// The ClientApp fork launcher (`--clientapp-launch fork`).
    forker: Option<crate::forker::Forker>,
}

impl Node {
    /// A node that talks to the SuperLink through `fleet`.
    pub fn new(
        fleet: Fleet,
        state: NodeState,
        settings: Settings,
        stop: CancellationToken,
    ) -> Self {
        let forker = (settings.launch_apps && settings.fork_apps)
            .then(|| crate::forker::Forker::new(settings.clientapp_program.clone()));
        Self {
            fleet,
            state,
            settings,
            stop,
            stop_seen: Default::default(),
            forker,
        }
    }

    async fn join(&self) -> Result<u64, FleetError> {
        if self.settings.own_key {
            let id = self.fleet.register().await?;
            tracing::info!(node_id = id, "registered with the SuperLink");
        }
        let id = self.fleet.activate(HEARTBEAT_INTERVAL).await?;
        tracing::info!(node_id = id, "activated; pulling messages");
        Ok(id)
    }

    /// Runs until `stop` is cancelled (then leaves the SuperLink) or the SuperLink is lost.
    pub async fn run(self) -> Result<(), NodeError> {
        // The moment of the signal: the message in hand has the grace from then on.
        let watcher = tokio::spawn({
            let (stop, seen) = (self.stop.clone(), self.stop_seen.clone());
            async move {
                stop.cancelled().await;
                let _ = seen.set(tokio::time::Instant::now());
            }
        });
        let joined = tokio::select! {
            r = self.join() => r,
            () = self.stop.cancelled() => Err(FleetError::Cancelled),
        };
        let result = self.serve_joined(joined).await;
        watcher.abort();
        result
    }

    async fn serve_joined(&self, joined: Result<u64, FleetError>) -> Result<(), NodeError> {
        match joined {
            Ok(_) => {}
            Err(FleetError::Cancelled) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let mut heartbeat = tokio::spawn(heartbeats(self.fleet.clone()));
        let result = tokio::select! {
            r = self.serve() => r,
            // It ends by itself only when the node stops, and serving ends then too.
            Err(e) = &mut heartbeat => Err(NodeError::Heartbeats(e)),
        };
        if !heartbeat.is_finished() {
            heartbeat.abort();
            let _ = heartbeat.await;
        }
        self.leave().await;
        result
    }

    async fn serve(&self) -> Result<(), NodeError> {
        loop {
            let asked = tokio::time::Instant::now();
            let pulled = tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                r = self.fleet.pull_message_waiting(Some(PULL_WAIT)) => r,
            };
            // After an empty answer the next pull goes a POLL_INTERVAL after this one was asked:
            // at once after a pull our SuperLink held, a second later after Flower's SuperLink
            // answered at once (or a SuperLink ended its hold early).
            let pulled = pulled.map(|(p, held)| {
                if held {
                    metrics::counter!("flwr_held_pulls_total").increment(1);
                }
                p
            });
            match pulled {
                Ok(Some(pulled)) => match self.handle(pulled).await {
                    Ok(()) => {}
                    Err(HandleError::Fleet(FleetError::Cancelled)) => return Ok(()),
                    Err(HandleError::Fleet(FleetError::InvalidNodeId)) => self.rejoin().await?,
                    Err(HandleError::Fleet(
                        e @ (FleetError::Handshake(_) | FleetError::GaveUp { .. }),
                    )) => return Err(e.into()),
                    Err(e) => tracing::warn!("message dropped: {e}"),
                },
                Ok(None) => {
                    tokio::select! {
                        () = self.stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep_until(asked + POLL_INTERVAL) => {}
                    }
                }
                Err(FleetError::Cancelled) => return Ok(()),
                Err(FleetError::InvalidNodeId) => self.rejoin().await?,
                Err(FleetError::RunNotRunning(m)) => tracing::debug!("pull refused: {m}"),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The SuperLink forgot this node (it restarted without state): join again.
    async fn rejoin(&self) -> Result<(), NodeError> {
        tracing::warn!("the SuperLink no longer knows this node (it restarted without its state); joining again");
        match self.join().await {
            Ok(_) | Err(FleetError::Cancelled) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn leave(&self) {
        // One attempt each, as Flower: the process is ending.
        let once = self.fleet.clone().with_retry(RetryPolicy {
            max_tries: Some(1),
            max_time: None,
        });
        match once.deactivate().await {
            Ok(()) => tracing::info!("deactivated"),
            Err(e) => tracing::warn!("could not deactivate: {e}"),
        }
        if self.settings.own_key {
            match once.unregister().await {
                Ok(()) => tracing::info!("unregistered"),
                Err(e) => tracing::warn!("could not unregister: {e}"),
            }
        }
    }

    async fn handle(&self, pulled: Pulled) -> Result<(), HandleError> {
        let (meta, tree) = pulled.map_err(HandleError::UnreadableInstruction)?;
        let run_id = meta.run_id;
        tracing::info!(run_id, message_id = %meta.message_id, message_type = %meta.message_type, "received a message");
        let arrived = Instant::now();
        let outcome = self.process(&meta, tree).await;
        let (label, outcome) = match outcome {
            Ok(Replied::Reply) => ("replied", Ok(())),
            Ok(Replied::Error) => ("error_reply", Ok(())),
            Err(HandleError::Fleet(FleetError::RunNotRunning(why))) => {
                tracing::info!(run_id, "run not running ({why}); message ignored");
                ("ignored", Ok(()))
            }
            Err(e) => ("failed", Err(e)),
        };
        metrics::counter!("flwr_messages_handled_total", "outcome" => label).increment(1);
        if label == "replied" || label == "error_reply" {
            metrics::histogram!("flwr_message_handling_seconds")
                .record(arrived.elapsed().as_secs_f64());
        }
        outcome
    }

    async fn process(&self, ins: &MessageMeta, tree: ObjectTree) -> Result<Replied, HandleError> {
        let run_id = ins.run_id;
        let (reply, reply_tree, runtime) = match self.ensure_run(run_id).await {
            // Left unconfirmed, the instruction would come back every few seconds until its
            // TTL, and the ServerApp would wait that long: it gets the reason now instead.
            Err(HandleError::UnusableRun(unusable)) => {
                let reason = unusable.to_string();
                tracing::error!(run_id, "{reason}: answering with an error");
                self.fleet.confirm(run_id, ins.message_id.clone()).await?;
                self.error_reply(ins, error_code::INVALID_FAB, &reason)?
            }
            Err(e) => return Err(e),
            Ok(()) => {
                self.pull_tree(run_id, &tree).await?;
                self.fleet.confirm(run_id, ins.message_id.clone()).await?;
                self.state.add_instruction(ins.clone(), tree);
                let reply = self.wait_for_reply(ins).await;
                self.state.remove_instruction(&ins.message_id);
                reply?
            }
        };
        let replied = if reply.error.is_some() {
            Replied::Error
        } else {
            Replied::Reply
        };
        let pushed = self.push_reply(&reply, &reply_tree, runtime).await;
        let _ = self.state.objects().delete(&reply_tree.id);
        pushed.map(|()| replied)
    }

    /// Fetches the run and its FAB the first time the node sees the run, and builds the context
    /// its ClientApps start from.
    async fn ensure_run(&self, run_id: u64) -> Result<(), HandleError> {
        if self.state.run(run_id).is_some() {
            return Ok(());
        }
        let run = self.fleet.get_run(run_id).await?;
        let fab = self.fleet.get_fab(run_id, &run.fab_hash).await?;
        let hash = hex::encode(sha2::Sha256::digest(&fab.content));
        if hash != run.fab_hash {
            return Err(UnusableRun::HashMismatch {
                run_id,
                hash: run.fab_hash,
            }
            .into());
        }
        if let Some(trusted) = &self.settings.trusted {
            trusted
                .verify(&fab.content, &fab.verifications)
                .map_err(|source| UnusableRun::Untrusted { run_id, source })?;
            tracing::info!(run_id, "the FAB is signed by a trusted entity");
        }
        let content = fab.content.clone();
        let info = tokio::task::spawn_blocking(move || flwr_fab::inspect(&content))
            .await?
            .map_err(|source| UnusableRun::BadFab { run_id, source })?;
        let overrides = run
            .override_config
            .map_err(|reason| UnusableRun::BadConfig { run_id, reason })?;
        let run_config = flwr_fab::run_config(&info, &overrides);
        let context = context_bytes(
            run_id,
            self.fleet.node_id(),
            &self.settings.node_config,
            &run_config,
        );
        self.state.add_run(
            run_id,
            RunEntry {
                run: run.encoded,
                fab: fab.content,
                fab_hash: run.fab_hash.clone(),
                context,
            },
        );
        tracing::info!(run_id, fab_id = %run.fab_id, "new run");
        Ok(())
    }

    /// Pulls every object of the tree the node does not have yet, checking each one.
    async fn pull_tree(&self, run_id: u64, tree: &ObjectTree) -> Result<(), HandleError> {
        let missing = self.state.objects().preregister(run_id, tree)?;
        let mut pending = missing.into_iter();
        let mut set = tokio::task::JoinSet::new();
        loop {
            while set.len() < PULL_CONCURRENCY {
                let Some(id) = pending.next() else { break };
                set.spawn(pull_one(self.fleet.clone(), self.state.clone(), run_id, id));
            }
            match set.join_next().await {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Waits for the ClientApp's reply, launching the ClientApp when the node does so itself. A
    /// ClientApp that exits without replying, or whose token expires, gets a CLIENT_APP_CRASHED
    /// reply made here. At shutdown the ClientApp has `shutdown_grace` to reply; then it is
    /// stopped and the message is answered NODE_UNAVAILABLE, so that the ServerApp does not
    /// wait for its TTL.
    async fn wait_for_reply(
        &self,
        ins: &MessageMeta,
    ) -> Result<(MessageMeta, ObjectTree, f64), HandleError> {
        let run_id = ins.run_id;
        let mut child = None;
        if self.settings.launch_apps {
            match self.state.create_token(run_id) {
                Some(token) => match self.launch(run_id, token).await {
                    Ok(c) => {
                        metrics::counter!("flwr_clientapp_launches_total", "outcome" => "started")
                            .increment(1);
                        child = Some(c);
                    }
                    Err(e) => {
                        metrics::counter!("flwr_clientapp_launches_total", "outcome" => "not_started")
                            .increment(1);
                        tracing::error!(run_id, "{e}");
                        self.state.end_token(run_id);
                        return self.crashed_reply(ins);
                    }
                },
                None => tracing::debug!(run_id, "a ClientApp already serves this run"),
            }
        }
        // From the launch to the reply (or the error reply made here), however this call ends.
        let _timed = child.as_ref().map(|_| ClientAppTimer(Instant::now()));
        let mut token_seen = false;
        let mut exited_at: Option<Instant> = None;
        let mut shutdown_by: Option<tokio::time::Instant> = None;
        loop {
            if let Some((reply, tree, runtime)) = self.state.reply_to(&ins.message_id) {
                if self.all_available(&tree) {
                    return Ok((reply, tree, runtime));
                }
            }
            let has_token = self.state.has_token(run_id);
            token_seen |= has_token;
            if token_seen && !has_token && self.state.reply_to(&ins.message_id).is_none() {
                tracing::warn!(
                    run_id,
                    "the ClientApp stopped responding (its token expired)"
                );
                return self.crashed_reply(ins);
            }
            if let Some(c) = &child {
                if c.done.is_finished() && exited_at.is_none() {
                    exited_at = Some(Instant::now());
                }
            }
            if exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2))
                && self.state.reply_to(&ins.message_id).is_none()
            {
                tracing::warn!(run_id, "the ClientApp exited without replying");
                self.state.end_token(run_id);
                return self.crashed_reply(ins);
            }
            if shutdown_by.is_some_and(|t| tokio::time::Instant::now() >= t) {
                tracing::warn!(
                    run_id,
                    "shutting down: the ClientApp did not reply in time; the message is answered with an error"
                );
                if let Some(c) = &child {
                    c.group.signal(Signal::SIGTERM);
                }
                self.state.end_token(run_id);
                return self.error_reply(ins, error_code::NODE_UNAVAILABLE, SHUTDOWN_REASON);
            }
            let poll = tokio::time::sleep(Duration::from_millis(250));
            tokio::select! {
                () = self.stop.cancelled(), if shutdown_by.is_none() => {
                    let grace = self.settings.shutdown_grace;
                    tracing::info!(run_id, "shutting down: the message in hand has {grace:?} to be answered");
                    let since = *self.stop_seen.get_or_init(tokio::time::Instant::now);
                    shutdown_by = Some(
                        since
                            .checked_add(grace)
                            .unwrap_or_else(|| since + Duration::from_secs(86_400 * 365)),
                    );
                }
                () = self.state.changed() => {}
                () = poll => {}
            }
        }
    }

    fn all_available(&self, tree: &ObjectTree) -> bool {
        tree.post_order()
            .iter()
            .all(|n| matches!(self.state.objects().get(&n.id), Ok(Lookup::Available(_))))
    }

    async fn launch(&self, run_id: u64, token: String) -> std::io::Result<process::Spawned> {
        let cmd = CommandLine {
            program: self.settings.clientapp_program.clone(),
            args: vec![
                "--insecure".into(),
                "--clientappio-api-address".into(),
                self.settings.clientappio.clone().into(),
                "--token".into(),
                token.into(),
                "--parent-pid".into(),
                std::process::id().to_string().into(),
            ],
        };
        let label = format!("clientapp run {run_id}");
        if let Some(forker) = &self.forker {
            match forker.launch(&cmd.args).await {
                Ok(forked) => {
                    tracing::info!(
                        run_id,
                        pid = forked.group.pid(),
                        "ClientApp process started (forked)"
                    );
                    return Ok(forked);
                }
                Err(e) => tracing::warn!(
                    run_id,
                    "{e}; starting {} instead",
                    self.settings.clientapp_program.to_string_lossy()
                ),
            }
        }
        let spawned = process::spawn(&cmd, label)?;
        tracing::info!(
            run_id,
            pid = spawned.group.pid(),
            "ClientApp process started"
        );
        Ok(spawned)
    }

    /// A CLIENT_APP_CRASHED reply to `ins`, stored as an object like any reply.
    fn crashed_reply(
        &self,
        ins: &MessageMeta,
    ) -> Result<(MessageMeta, ObjectTree, f64), HandleError> {
        metrics::counter!("flwr_clientapp_crashes_total").increment(1);
        self.error_reply(ins, error_code::CLIENT_APP_CRASHED, CRASHED_REASON)
    }

    /// An error reply to `ins`, its one object stored for pushing.
    fn error_reply(
        &self,
        ins: &MessageMeta,
        code: i64,
        reason: &str,
    ) -> Result<(MessageMeta, ObjectTree, f64), HandleError> {
        let now = now();
        let mut reply = MessageMeta {
            run_id: ins.run_id,
            message_id: String::new(),
            src_node_id: self.fleet.node_id(),
            dst_node_id: SUPERLINK_NODE_ID,
            reply_to_message_id: ins.message_id.clone(),
            group_id: ins.group_id.clone(),
            ttl: (ins.created_at + ins.ttl - now).max(0.001),
            message_type: ins.message_type.clone(),
            created_at: now,
            error: Some(MessageError {
                code,
                reason: reason.to_owned(),
            }),
            has_content: false,
        };
        let (bytes, id) = reply.seal_error_message();
        let tree = ObjectTree::leaf(id);
        let store = self.state.objects();
        store.preregister(ins.run_id, &tree)?;
        store.put(&id, Bytes::from(bytes))?;
        Ok((reply, tree, 0.0))
    }

    async fn push_reply(
        &self,
        reply: &MessageMeta,
        tree: &ObjectTree,
        runtime: f64,
    ) -> Result<(), HandleError> {
        let Pushed {
            accepted,
            objects_to_push: wanted,
        } = self.fleet.push_reply(reply, tree, runtime).await?;
        for node in tree.post_order() {
            let hex = node.id.to_hex();
            if !wanted.contains(&hex) {
                continue;
            }
            let Ok(Lookup::Available(bytes)) = self.state.objects().get(&node.id) else {
                return Err(HandleError::ReplyObjectMissing(node.id));
            };
            self.fleet.push_object(reply.run_id, hex, bytes).await?;
        }
        if accepted {
            tracing::info!(run_id = reply.run_id, reply_to = %reply.reply_to_message_id, "reply sent");
        } else {
            tracing::warn!(
                run_id = reply.run_id,
                "the SuperLink did not accept the reply (instruction gone or expired)"
            );
        }
        Ok(())
    }
}

/// Pulls one object until it is available, checks it, stores it.
async fn pull_one(
    fleet: Fleet,
    state: NodeState,
    run_id: u64,
    id: ObjectId,
) -> Result<(), HandleError> {
    let start = Instant::now();
    let mut delay = 1.0f64;
    loop {
        let found = match fleet.pull_object(run_id, id.to_hex()).await? {
            Lookup::Available(content) => Some(content),
            Lookup::Pending => None,
            Lookup::Unknown => return Err(HandleError::UnknownObject(id)),
        };
        if let Some(content) = found {
            content::verify_shared(id, &content)
                .await
                .map_err(|source| HandleError::ObjectRefused { id, source })?;
            state.objects().put(&id, content)?;
            return Ok(());
        }
        if start.elapsed() > PULL_MAX_TIME {
            return Err(HandleError::ObjectNeverAvailable(id));
        }
        let wait = delay * (0.8 + 0.4 * rand_unit());
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        delay = (delay * 2.0).min(PULL_BACKOFF_CAP);
    }
}

/// Heartbeats on Flower's schedule: at once, then every (interval − 5 s) × U(0.7, 0.9).
/// Heartbeats until aborted by its owner: they go on while a message in hand is finished at
/// shutdown, so that the SuperLink does not take the node for gone meanwhile.
async fn heartbeats(fleet: Fleet) {
    loop {
        match fleet.heartbeat(HEARTBEAT_INTERVAL).await {
            Ok(true) => tracing::debug!("heartbeat sent"),
            Ok(false) => tracing::warn!("the SuperLink refused a heartbeat"),
            Err(FleetError::Cancelled) => return,
            Err(e) => tracing::warn!("heartbeat failed: {e}"),
        }
        let wait = (HEARTBEAT_INTERVAL - 5.0) * (0.7 + 0.2 * rand_unit());
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
