//! The SuperLink's state: runs, nodes, tokens, logs and messages ([`LinkState`]) and the
//! content-addressed objects of messages ([`ObjectStore`]), each behind an async trait with
//! engines in memory, in SQLite and in PostgreSQL.
//!
//! Each method is atomic (locks taken with no `.await` between them in memory, one transaction
//! in SQLite and PostgreSQL), so a cancelled RPC never leaves half a change behind, and each
//! engine does its own scheduling: the in-memory engine answers at once, the SQLite engine runs
//! every call on its connection's [`lane`] (one thread with a queue), never on the caller's
//! thread, and PostgreSQL awaits a pooled connection. This crate knows nothing of protobuf or
//! gRPC.
//!
//! Time comes from a [`Clock`]; statuses that Flower evaluates lazily (a node going offline, an
//! app token expiring) are evaluated here on every read, in the same way.

pub mod clock;
pub mod codec;
pub mod conformance;
pub mod doorbell;
pub mod fabs;
pub mod lane;
pub mod memory;
pub mod objects;
pub mod postgres;
mod reads;
pub mod spill;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use flwr_objects::message::MessageMeta;
use flwr_objects::{ObjectId, ObjectTree};

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::doorbell::{Doorbell, Doorbells};
pub use crate::fabs::{FabStore, StoredFab, Verifications};
pub use crate::objects::ObjectStore;
pub use flwr_objects::store::{DriverError, Lookup, StoreError};

/// Run ids and node ids are unsigned 64-bit on the wire.
pub type RunId = u64;
/// See [`RunId`].
pub type NodeId = u64;

/// `Run.status.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Created by `StartRun`, waiting for a ServerApp.
    Pending,
    /// A token was issued.
    Starting,
    /// The ServerApp pulled its inputs.
    Running,
    /// Done (see the sub-status).
    Finished,
}

impl Status {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Finished => "finished",
        }
    }

    /// Parses a wire string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "starting" => Self::Starting,
            "running" => Self::Running,
            "finished" => Self::Finished,
            _ => return None,
        })
    }
}

/// `Run.status.sub_status` of a finished run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubStatus {
    /// Not finished.
    None,
    /// The ServerApp completed.
    Completed,
    /// The ServerApp failed, or stopped sending heartbeats.
    Failed,
    /// `flwr stop`.
    Stopped,
}

impl SubStatus {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }

    /// Parses a wire string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" => Self::None,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "stopped" => Self::Stopped,
            _ => return None,
        })
    }
}

/// A run's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStatus {
    /// Status.
    pub status: Status,
    /// Sub-status (finished runs only).
    pub sub_status: SubStatus,
    /// Free text (the failure reason).
    pub details: String,
}

impl RunStatus {
    /// A status without sub-status or details.
    pub fn new(status: Status) -> Self {
        Self {
            status,
            sub_status: SubStatus::None,
            details: String::new(),
        }
    }

    /// A finished status.
    pub fn finished(sub_status: SubStatus, details: impl Into<String>) -> Self {
        Self {
            status: Status::Finished,
            sub_status,
            details: details.into(),
        }
    }

    /// Flower's transition rule: pending→starting→running→finished, and pending or starting may
    /// also end as failed or stopped (never completed). A finished status needs a sub-status;
    /// others must not have one.
    pub fn is_valid_transition(&self, to: &RunStatus) -> bool {
        let sub_ok = match to.status {
            Status::Finished => to.sub_status != SubStatus::None,
            _ => to.sub_status == SubStatus::None,
        };
        if !sub_ok {
            return false;
        }
        match (self.status, to.status) {
            (Status::Pending, Status::Starting) | (Status::Starting, Status::Running) => true,
            (Status::Running, Status::Finished) => true,
            (Status::Pending | Status::Starting, Status::Finished) => {
                matches!(to.sub_status, SubStatus::Failed | SubStatus::Stopped)
            }
            _ => false,
        }
    }

    /// The text a gated RPC answers with when the run is not running, or `None` when it runs.
    pub fn not_running_message(&self) -> Option<String> {
        let mut msg = match self.status {
            Status::Running => return None,
            Status::Pending => "Run is pending.".to_owned(),
            Status::Starting => "Run is starting.".to_owned(),
            Status::Finished => "Run is finished.".to_owned(),
        };
        if self.sub_status == SubStatus::Stopped {
            msg.push_str(" Stopped by user.");
        }
        Some(msg)
    }
}

pub use flwr_objects::ConfigValue;

/// `ServerApp` or simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunType {
    /// Deployment: run by `flwr-serverapp` against SuperNodes.
    ServerApp,
    /// Simulation: run by `flwr-simulation`.
    Simulation,
}

impl RunType {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServerApp => "serverapp",
            Self::Simulation => "simulation",
        }
    }
}

/// A run as the state keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Id.
    pub run_id: RunId,
    /// `<publisher>/<name>`.
    pub fab_id: String,
    /// The app's version.
    pub fab_version: String,
    /// SHA-256 of the FAB.
    pub fab_hash: String,
    /// Run config overrides, as given.
    pub override_config: Vec<(String, ConfigValue)>,
    /// Timestamps (Unix seconds).
    pub pending_at: Option<f64>,
    /// See `pending_at`.
    pub starting_at: Option<f64>,
    /// See `pending_at`.
    pub running_at: Option<f64>,
    /// See `pending_at`.
    pub finished_at: Option<f64>,
    /// Status.
    pub status: RunStatus,
    /// The account that started it.
    pub flwr_aid: String,
    /// Federation name.
    pub federation: String,
    /// Bytes the SuperLink sent to SuperNodes for this run.
    pub bytes_sent: u64,
    /// Bytes received from SuperNodes.
    pub bytes_recv: u64,
    /// Sum of ClientApp runtimes reported by SuperNodes, seconds.
    pub clientapp_runtime: f64,
    /// Deployment or simulation.
    pub run_type: RunType,
    /// The simulation federation config (encoded `SimulationConfig`), simulation runs only.
    pub federation_config: Option<Bytes>,
}

/// What `StartRun` creates.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    /// See [`Run`].
    pub fab_id: String,
    /// See [`Run`].
    pub fab_version: String,
    /// See [`Run`].
    pub fab_hash: String,
    /// See [`Run`].
    pub override_config: Vec<(String, ConfigValue)>,
    /// See [`Run`].
    pub flwr_aid: String,
    /// See [`Run`].
    pub federation: String,
    /// See [`Run`].
    pub run_type: RunType,
    /// See [`Run`].
    pub federation_config: Option<Bytes>,
    /// The ServerApp's initial context (encoded `flwr.proto.Context`).
    pub context: Bytes,
}

/// A node's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    /// Known (registered), never activated.
    Registered,
    /// Sending heartbeats.
    Online,
    /// Missed its heartbeats or deactivated.
    Offline,
    /// Gone for good.
    Unregistered,
}

impl NodeStatus {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Unregistered => "unregistered",
        }
    }

    /// From a stored string (the database engines); anything unknown is `registered`.
    pub fn from_stored(s: &str) -> Self {
        match s {
            "online" => Self::Online,
            "offline" => Self::Offline,
            "unregistered" => Self::Unregistered,
            _ => Self::Registered,
        }
    }
}

/// A node as the state keeps it (statuses already refreshed for "now").
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Id.
    pub node_id: NodeId,
    /// Owner account id.
    pub owner_aid: String,
    /// Owner account name.
    pub owner_name: String,
    /// Status.
    pub status: NodeStatus,
    /// Timestamps (Unix seconds).
    pub registered_at: f64,
    /// See `registered_at`.
    pub last_activated_at: Option<f64>,
    /// See `registered_at`.
    pub last_deactivated_at: Option<f64>,
    /// See `registered_at`.
    pub unregistered_at: Option<f64>,
    /// Online until this time.
    pub online_until: Option<f64>,
    /// Seconds between heartbeats.
    pub heartbeat_interval: f64,
    /// The public key (PEM bytes, as sent).
    pub public_key: Bytes,
}

/// How a node joins.
#[derive(Clone, Debug, PartialEq)]
pub struct NewNode {
    /// Owner account id.
    pub owner_aid: String,
    /// Owner account name.
    pub owner_name: String,
    /// PEM bytes.
    pub public_key: Bytes,
    /// Initial interval (0 for Fleet registration, 30 for the CLI).
    pub heartbeat_interval: f64,
}

/// One pulled reply: one the SuperNode sent, or one the SuperLink makes (an error).
#[derive(Clone, Debug, PartialEq)]
pub enum PulledReply {
    /// Sent by a SuperNode; its objects are in the store.
    Stored(MessageMeta),
    /// Made by the SuperLink (MESSAGE_UNAVAILABLE, NODE_UNAVAILABLE, REPLY_MESSAGE_UNAVAILABLE);
    /// the message id is not set yet.
    Generated(MessageMeta),
}

/// Why a reply was not stored (Flower then answers `{"None": 0}`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReplyRejected {
    /// The instruction is gone or expired.
    #[error("Message with ID {0} does not exist.")]
    NoInstruction(String),
    /// The reply comes from another node than the instruction's destination.
    #[error("the reply's source is not the instruction's destination")]
    WrongNode,
    /// The reply would outlive its instruction.
    #[error("Received Message with TTL {ttl:.2} exceeding the allowed maximum TTL {max:.2}.")]
    TtlTooLong {
        /// The reply's TTL.
        ttl: f64,
        /// The maximum.
        max: f64,
    },
    /// The reply's run is not the instruction's.
    #[error("`metadata.run_id` is invalid")]
    WrongRun,
    /// The reply is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// A reply may outlive its instruction by at most this many seconds.
pub const MESSAGE_TTL_TOLERANCE: f64 = 0.1;

/// Flower's checks of a reply against its (live) instruction, the same for every engine.
pub fn check_reply(instruction: &MessageMeta, reply: &MessageMeta) -> Result<(), ReplyRejected> {
    if instruction.dst_node_id != reply.src_node_id {
        return Err(ReplyRejected::WrongNode);
    }
    let max = instruction.created_at + instruction.ttl - reply.created_at;
    if reply.ttl != 0.0 && reply.ttl - max > MESSAGE_TTL_TOLERANCE {
        return Err(ReplyRejected::TtlTooLong {
            ttl: reply.ttl,
            max,
        });
    }
    if reply.run_id != instruction.run_id {
        return Err(ReplyRejected::WrongRun);
    }
    Ok(())
}

/// State failures that are not answers (the backend broke).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No such run.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// The public key is registered already (keys are unique forever).
    #[error("Public key already in use")]
    PublicKeyInUse,
    /// The database failed an operation (a broken constraint, a full disk, a read-only file, a
    /// refused login, a bad URL); `detail` says what, and the fix when there is one.
    #[error("{target}: {detail}")]
    Database {
        /// The database: a file's path, or a URL with its password masked.
        target: String,
        /// What went wrong, in words an operator can act on.
        detail: String,
        /// The driver's error.
        #[source]
        source: DriverError,
    },
    /// The database cannot be reached now (a lost connection, a restarting server); callers may
    /// retry.
    #[error("state database unavailable: {target}: {detail}")]
    Unavailable {
        /// The database (password masked).
        target: String,
        /// What went wrong.
        detail: String,
        /// The driver's error.
        #[source]
        source: DriverError,
    },
    /// The database holds a schema this SuperLink cannot use.
    #[error("{target}: the database has schema version {found}, {fix}")]
    SchemaVersion {
        /// The database.
        target: String,
        /// The version it holds.
        found: i64,
        /// What this SuperLink knows, and what to do.
        fix: String,
    },
    /// A file or directory of the state cannot be used.
    #[error("{}: {action}: {source}", path.display())]
    File {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What was tried.
        action: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The FAB storage directory failed.
    #[error(transparent)]
    FabStorage(#[from] crate::fabs::FfsError),
    /// The object store failed (in a call that used both).
    #[error(transparent)]
    Objects(#[from] StoreError),
    /// A worker of the engine could not start or ended early (its thread, a blocking task).
    #[error("{what}: {source}")]
    Worker {
        /// The worker.
        what: &'static str,
        /// Why.
        #[source]
        source: DriverError,
    },
}

impl StateError {
    /// True when the database cannot be reached now (callers may retry).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StateError::Unavailable { .. } | StateError::Objects(StoreError::Unavailable(_))
        )
    }
}

impl From<StateError> for StoreError {
    fn from(e: StateError) -> Self {
        if let StateError::Objects(inner) = e {
            return inner;
        }
        if e.is_unavailable() {
            StoreError::Unavailable(Box::new(e))
        } else {
            StoreError::Backend(Box::new(e))
        }
    }
}

/// Why a node lifecycle call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRefusal {
    /// No usable node has this key.
    UnknownKey,
    /// The node is already online.
    AlreadyOnline(NodeId),
    /// The node is not online.
    NotOnline(NodeId),
    /// Unknown, unregistered, or owned by someone else.
    NotFound(NodeId),
}

/// How many nodes and runs the state holds, by status (what the SuperLink's metrics read at
/// each scrape).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Nodes by status: `registered`, `online` (with a heartbeat in time), `offline` (also an
    /// online node whose heartbeat is late), `unregistered`.
    pub nodes: std::collections::BTreeMap<&'static str, u64>,
    /// Runs by status and sub-status (`("finished", "completed")`; the sub-status is empty
    /// before the end).
    pub runs: std::collections::BTreeMap<(String, String), u64>,
}

impl Census {
    /// Counts a node whose stored status is `status`, online until `online_until`, at `now`.
    pub fn count_node(&mut self, status: NodeStatus, online_until: Option<f64>, now: f64) {
        let status = match status {
            NodeStatus::Online if online_until.is_none_or(|t| t <= now) => NodeStatus::Offline,
            s => s,
        };
        *self.nodes.entry(status.as_str()).or_default() += 1;
    }
}

/// Records one call of a database engine (queue or pool wait included) in the histogram
/// `flwr_state_call_duration_seconds{engine, outcome}` (a no-op without a metrics recorder).
pub fn record_call(engine: &'static str, started: std::time::Instant, ok: bool) {
    metrics::histogram!(
        "flwr_state_call_duration_seconds",
        "engine" => engine,
        "outcome" => if ok { "ok" } else { "error" },
    )
    .record(started.elapsed().as_secs_f64());
}

/// What a SuperLink learns of the replies and reply objects that other SuperLinks sharing its
/// state store (for held ServerApp pulls, which wait for them).
pub enum Arrivals {
    /// No other process writes this state: the SuperLink's own arrivals are all there are.
    NoneElsewhere,
    /// Runs with new replies or reply objects, stored by any SuperLink sharing the state (its
    /// own included); `None` when some may have been missed (the announcements stopped for a
    /// while), so that waiters look again.
    Announced(tokio::sync::broadcast::Receiver<Option<RunId>>),
    /// Others may write, and this engine cannot tell when (now): waiters must look from time to
    /// time.
    Unannounced,
}

/// Pre-registers every tree for `run_id`; the ids to push, each once, in order.
pub async fn preregister_all(
    objects: &dyn ObjectStore,
    run_id: RunId,
    trees: &[ObjectTree],
) -> Result<Vec<ObjectId>, StateError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in trees {
        for id in objects.preregister(run_id, t).await? {
            if seen.insert(id) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// The SuperLink's state.
#[async_trait]
pub trait LinkState: Send + Sync {
    /// Checks that the engine can do its work now (the database answers); the in-memory and
    /// SQLite engines always can.
    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }

    /// Writes what the engine holds back to spare the database (PostgreSQL's run usage
    /// counters); called at shutdown. The other engines hold nothing back.
    async fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }

    /// Nodes and runs by status.
    async fn census(&self) -> Result<Census, StateError>;

    // ----- nodes -----
    /// Creates a node with a fresh random id (not 0 or 1), status `registered`.
    async fn create_node(&self, node: NewNode) -> Result<NodeId, StateError>;
    /// The id of the node with exactly these key bytes, unless it was unregistered.
    async fn node_id_by_public_key(&self, public_key: &[u8]) -> Result<Option<NodeId>, StateError>;
    /// Activates the node with this key (from `registered` or `offline`), online for
    /// 2 × interval.
    async fn activate_node(
        &self,
        public_key: &[u8],
        heartbeat_interval: f64,
    ) -> Result<Result<NodeId, NodeRefusal>, StateError>;
    /// Deactivates an online node.
    async fn deactivate_node(&self, node_id: NodeId)
        -> Result<Result<(), NodeRefusal>, StateError>;
    /// Unregisters a node (for `owner_aid` when given). The row stays; the key stays taken.
    async fn unregister_node(
        &self,
        node_id: NodeId,
        owner_aid: Option<&str>,
    ) -> Result<Result<(), NodeRefusal>, StateError>;
    /// A heartbeat: online for 2 × interval. False for unknown or unregistered nodes.
    async fn heartbeat(&self, node_id: NodeId, heartbeat_interval: f64)
        -> Result<bool, StateError>;
    /// One node.
    async fn node(&self, node_id: NodeId) -> Result<Option<Node>, StateError>;
    /// Nodes owned by `owner_aid`, every status.
    async fn nodes_of(&self, owner_aid: &str) -> Result<Vec<Node>, StateError>;
    /// Ids of online nodes.
    async fn online_node_ids(&self) -> Result<Vec<NodeId>, StateError>;
    /// `node_id_by_public_key` answered from memory, without blocking, when the engine knows the
    /// answer is current: `Some(id)` for a registered key, `None` when it must be asked.
    fn cached_node_id(&self, _public_key: &[u8]) -> Option<NodeId> {
        None
    }

    // ----- runs -----
    /// True when the engine knows without asking that the run is `running` (and its ServerApp
    /// token, if any, has not expired); false when it must be asked with [`LinkState::run`].
    fn cached_running(&self, _run_id: RunId) -> bool {
        false
    }
    /// Creates a `pending` run and stores its initial context.
    async fn create_run(&self, run: NewRun) -> Result<RunId, StateError>;
    /// One run (after token expiry is applied).
    async fn run(&self, run_id: RunId) -> Result<Option<Run>, StateError>;
    /// Runs started by `flwr_aid`, newest first.
    async fn runs_of(&self, flwr_aid: &str) -> Result<Vec<Run>, StateError>;
    /// Ids of pending runs, oldest first.
    async fn pending_run_ids(&self) -> Result<Vec<RunId>, StateError>;
    /// Applies a status transition if it is valid; returns whether it was.
    async fn update_run_status(&self, run_id: RunId, status: RunStatus)
        -> Result<bool, StateError>;
    /// Adds traffic and ClientApp runtime to a run.
    async fn add_run_usage(
        &self,
        run_id: RunId,
        sent: u64,
        recv: u64,
        clientapp_runtime: f64,
    ) -> Result<(), StateError>;
    /// The stored context of a run (encoded `Context`).
    async fn context(&self, run_id: RunId) -> Result<Option<Bytes>, StateError>;
    /// Replaces the stored context.
    async fn set_context(&self, run_id: RunId, context: Bytes) -> Result<(), StateError>;

    // ----- federations -----
    /// The simulation settings of `federation` (an encoded `SimulationConfig`) as last set, or
    /// `None` if they never were. Shared by every SuperLink on the same database, and kept
    /// across restarts by the durable engines.
    async fn simulation_config(&self, federation: &str) -> Result<Option<Bytes>, StateError>;
    /// Replaces the simulation settings of `federation`.
    async fn set_simulation_config(
        &self,
        federation: &str,
        config: Bytes,
    ) -> Result<(), StateError>;

    // ----- app tokens -----
    /// `RequestToken`, in one step: a token for a `pending` run (256 hex characters, valid for
    /// 30 s), and the run turned `starting`. `None` when the run is unknown, not pending, or has
    /// a token already (so replicas racing for a run start it once, and none can leave it with
    /// a token but still pending). `launcher` names the SuperLink that starts the ServerApp as
    /// its own child process (`--isolation subprocess`); should the token expire, the run's
    /// reason names it.
    async fn claim_run(
        &self,
        run_id: RunId,
        launcher: Option<&str>,
    ) -> Result<Option<String>, StateError>;
    /// The run of a live token.
    async fn run_id_by_token(&self, token: &str) -> Result<Option<RunId>, StateError>;
    /// Deletes the run's token.
    async fn delete_token(&self, run_id: RunId) -> Result<(), StateError>;
    /// An app heartbeat: extends a live token to now + 60 s. False for unknown or expired tokens.
    async fn app_heartbeat(&self, token: &str) -> Result<bool, StateError>;

    // ----- logs -----
    /// Appends ServerApp output, stamped with the server's time, and at least [`LOG_STEP`]
    /// after the run's last entry.
    async fn add_log(&self, run_id: RunId, text: &str) -> Result<(), StateError>;
    /// Everything logged after `after` (Unix seconds), and the time of the last entry (0 if none).
    async fn logs_after(&self, run_id: RunId, after: f64) -> Result<(String, f64), StateError>;

    // ----- messages -----
    /// Stores a validated instruction. `None` when its run is unknown, its source is not the
    /// SuperLink, or its destination is not a registered-and-activated (online or offline) node.
    async fn store_instruction(&self, message: MessageMeta) -> Result<Option<String>, StateError>;
    /// The oldest undelivered, unexpired instruction for a node, now marked delivered. When
    /// there is none: the oldest one delivered at least [`REDELIVER_AFTER`] seconds ago that the
    /// node has neither confirmed nor answered, delivered again (the answer that carried it was
    /// lost: a replica died after its commit, a connection broke). A node pulls one message at
    /// a time and confirms it before it pulls again, so a pull without a confirm means it never
    /// got it.
    async fn pull_instruction(&self, node_id: NodeId) -> Result<Option<MessageMeta>, StateError>;
    /// The node confirmed that it received this instruction of its own (`ConfirmMessageReceived`):
    /// it is never delivered again. Ids of other nodes' instructions, or unknown ones, change
    /// nothing.
    async fn confirm_instruction(
        &self,
        node_id: NodeId,
        message_id: &str,
    ) -> Result<(), StateError>;
    /// False only when the node certainly has nothing to pull (no undelivered instruction, none
    /// delivered and unconfirmed), answered from memory without blocking: most pulls find
    /// nothing, and then need no call to `pull_instruction`.
    fn may_have_instruction(&self, _node_id: NodeId) -> bool {
        true
    }
    /// Ids of the instructions of `run_id` that were delivered to `node_id` and are still kept
    /// (a node may pull their objects and confirm them; no other node may).
    async fn delivered_instructions(
        &self,
        node_id: NodeId,
        run_id: RunId,
    ) -> Result<Vec<String>, StateError>;
    /// Announces the runs that get new log output, for engines that can tell (so that log
    /// streams wait for output instead of polling); `None` when the caller must poll.
    fn log_events(&self) -> Option<tokio::sync::broadcast::Receiver<RunId>> {
        None
    }
    /// How a held ServerApp pull learns of replies and reply objects that did not pass through
    /// its own SuperLink process (see [`Arrivals`]).
    fn arrivals_elsewhere(&self) -> Arrivals {
        Arrivals::Unannounced
    }
    /// Gives the engine the bells of the nodes whose Fleet pulls wait in this process, for the
    /// instructions stored through other processes sharing the state (PostgreSQL rings a node's
    /// bell when another replica announces an instruction for it, and every bell when it may
    /// have missed announcements). Engines that no other process writes keep nothing: the
    /// caller rings for what it stores itself.
    fn attach_doorbells(&self, _bells: std::sync::Arc<Doorbells>) {}
    /// Stores a validated reply after checking it against its instruction.
    async fn store_reply(
        &self,
        message: MessageMeta,
    ) -> Result<Result<String, ReplyRejected>, StateError>;
    /// A Fleet `PushMessages` in one step: pre-registers `trees` for the reply's run in
    /// `objects` ([`preregister_all`]), then stores the reply when `store` is true (it passed the
    /// caller's checks). Returns the reply's outcome (`None` when not stored) and the objects to
    /// push. An engine that keeps objects in its own database (PostgreSQL) does both in one
    /// transaction, with its own object store, which must be the one given.
    async fn store_reply_with_objects(
        &self,
        objects: &dyn ObjectStore,
        message: MessageMeta,
        trees: &[ObjectTree],
        store: bool,
    ) -> Result<(Option<Result<String, ReplyRejected>>, Vec<ObjectId>), StateError> {
        let to_push = preregister_all(objects, message.run_id, trees).await?;
        let stored = match store {
            true => Some(self.store_reply(message).await?),
            false => None,
        };
        Ok((stored, to_push))
    }
    /// A ServerAppIo `PushMessages` of one instruction in one step: pre-registers `tree` for its
    /// run, then stores the instruction ([`LinkState::store_instruction`]). Returns the stored id
    /// and the objects to push; in one transaction where the engine can, as
    /// [`LinkState::store_reply_with_objects`].
    async fn store_instruction_with_objects(
        &self,
        objects: &dyn ObjectStore,
        message: MessageMeta,
        tree: &ObjectTree,
    ) -> Result<(Option<String>, Vec<ObjectId>), StateError> {
        let to_push = preregister_all(objects, message.run_id, std::slice::from_ref(tree)).await?;
        Ok((self.store_instruction(message).await?, to_push))
    }
    /// The replies to these instructions (or errors the SuperLink makes for them). An
    /// instruction answered with an error the SuperLink makes is deleted. One answered with its
    /// node's reply stays, the reply marked taken, until the ServerApp confirms the reply
    /// ([`LinkState::confirm_reply`]) or the run ends: a request that asks for it again (the
    /// answer that carried it was lost) gets it again.
    async fn take_replies(&self, message_ids: &[String]) -> Result<Vec<PulledReply>, StateError>;
    /// The ServerApp of `run_id` confirmed that it received the reply `reply_id`: the reply and
    /// its instruction go. Ids of replies not taken, or of other runs, change nothing.
    async fn confirm_reply(&self, run_id: RunId, reply_id: &str) -> Result<(), StateError>;
    /// Deletes these instructions and their replies.
    async fn delete_messages(&self, message_ids: &[String]) -> Result<(), StateError>;
    /// Deletes every instruction (and reply) of a run.
    async fn delete_run_messages(&self, run_id: RunId) -> Result<(), StateError>;
}

/// Seconds after which a delivered instruction that its node has neither confirmed nor answered
/// may be delivered again (see [`LinkState::pull_instruction`]): a margin against repeating a
/// delivery whose answer is only slow.
pub const REDELIVER_AFTER: f64 = 3.0;

/// How far apart two log entries of a run are at least (when the clock moved less between them,
/// or went back): more than the 1e-6 s past its last entry from which a log stream (ours,
/// Flower's) asks for more, so that the later entry is never skipped.
pub const LOG_STEP: f64 = 2e-6;

/// The time of a run's next log entry made `now`, after its last one at `last` (every engine's).
pub(crate) fn log_time(last: Option<f64>, now: f64) -> f64 {
    last.map_or(now, |l| now.max(l + LOG_STEP))
}

/// Heartbeat constants (Flower's).
pub mod heartbeat {
    /// Default interval, seconds.
    pub const DEFAULT_INTERVAL: f64 = 30.0;
    /// Smallest allowed interval.
    pub const MIN_INTERVAL: f64 = 10.0;
    /// Largest allowed interval.
    pub const MAX_INTERVAL: f64 = 1800.0;
    /// Missed intervals before a node or app counts as gone.
    pub const PATIENCE: f64 = 2.0;
}

/// The reason of a run that stopped sending heartbeats (Flower's words).
pub const NO_HEARTBEAT_DETAILS: &str = "No heartbeat received from the run.";

/// The reason of a run that stopped sending heartbeats, naming the SuperLink whose child process
/// its ServerApp was, if one launched it: with several replicas, that replica may be the one that
/// died.
pub fn no_heartbeat_details(launcher: Option<&str>) -> String {
    match launcher {
        None => NO_HEARTBEAT_DETAILS.to_owned(),
        Some(launcher) => format!(
            "{NO_HEARTBEAT_DETAILS} Its ServerApp was a child process of SuperLink {launcher}: \
             that SuperLink or the ServerApp stopped. Runs outlive a SuperLink replica only with \
             --isolation process."
        ),
    }
}

/// The column of the `run` table that records when a run reached `status` (the SQL engines').
pub(crate) fn status_column(status: Status) -> &'static str {
    match status {
        Status::Starting => "starting_at",
        Status::Running => "running_at",
        Status::Finished => "finished_at",
        Status::Pending => "pending_at",
    }
}

/// The engines of one database.
#[derive(Clone)]
pub struct Stores {
    /// Runs, nodes, tokens, logs, messages.
    pub state: Arc<dyn LinkState>,
    /// Objects.
    pub objects: Arc<dyn ObjectStore>,
    /// FABs, when the database keeps them (PostgreSQL); otherwise they go to `--storage-dir`.
    pub fabs: Option<Arc<dyn FabStore>>,
}

/// Both engines in memory (`--database :flwr-in-memory:`); the clock is shared.
pub fn in_memory(clock: Arc<dyn Clock>) -> Stores {
    in_memory_spilling(clock, None)
}

/// Both engines in memory, large objects' bytes in files as `spill` says (none: all in memory).
pub fn in_memory_spilling(clock: Arc<dyn Clock>, spill: Option<spill::SpillPolicy>) -> Stores {
    Stores {
        state: Arc::new(memory::MemoryLinkState::new(clock)),
        objects: Arc::new(objects::MemoryObjects::new(spill)),
        fabs: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_flower() {
        let p = RunStatus::new(Status::Pending);
        let s = RunStatus::new(Status::Starting);
        let r = RunStatus::new(Status::Running);
        let done = RunStatus::finished(SubStatus::Completed, "");
        let failed = RunStatus::finished(SubStatus::Failed, "x");
        let stopped = RunStatus::finished(SubStatus::Stopped, "");
        assert!(
            p.is_valid_transition(&s) && s.is_valid_transition(&r) && r.is_valid_transition(&done)
        );
        assert!(p.is_valid_transition(&failed) && s.is_valid_transition(&stopped));
        assert!(!p.is_valid_transition(&done) && !s.is_valid_transition(&done));
        assert!(
            !p.is_valid_transition(&r)
                && !r.is_valid_transition(&r)
                && !done.is_valid_transition(&failed)
        );
        assert!(
            !r.is_valid_transition(&RunStatus::new(Status::Finished)),
            "finished needs a sub-status"
        );
        assert_eq!(
            stopped.not_running_message().as_deref(),
            Some("Run is finished. Stopped by user.")
        );
        assert_eq!(r.not_running_message(), None);
    }
}
