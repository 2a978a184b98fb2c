//! The SuperLink's domain operations, shared by the three APIs. Everything here works on domain
//! types; the service layer converts from and to protobuf and maps [`Error`] to gRPC statuses.
//!
//! State and object calls go through the engines' async traits; each engine does its own
//! scheduling (see `flwr-state`). Large objects are hashed off the async threads.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use flwr_objects::content;
use flwr_objects::message::MessageMeta;
use flwr_objects::store::Lookup;
use flwr_objects::{ObjectId, ObjectTree};
use flwr_transport::node_auth::NodePublicKey;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use flwr_state::{
    heartbeat, Clock, ConfigValue, Doorbells, FabStore, LinkState, NewNode, NewRun, Node, NodeId,
    NodeRefusal, ObjectStore, PulledReply, Run, RunId, RunStatus, RunType, Status, StoredFab,
    SubStatus, Verifications,
};

use crate::error::{Error, Result};
use crate::hub::Hub;

use flwr_fab as fab;

/// The account every caller is without account authentication (Flower's no-op plugin).
pub const NOOP_ACCOUNT_ID: &str = "<id:none>";
/// Its name.
pub const NOOP_ACCOUNT_NAME: &str = "none";
/// The only federation without a federation manager.
pub const DEFAULT_FEDERATION: &str = "@none/default";
/// Its description.
pub const DEFAULT_FEDERATION_DESCRIPTION: &str =
    "A federation for testing and development purposes.";

/// What the ServerApp launcher is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchEvent {
    /// A run became pending.
    RunPending,
    /// A run was stopped by the user: end its ServerApp.
    RunStopped(RunId),
}

/// Settings of the domain.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Only CLI-registered SuperNodes.
    pub enable_supernode_auth: bool,
    /// Simulation runtime.
    pub simulation: bool,
    /// The Fleet API is on the grpc-adapter transport, over which Flower serves no Flower Hub
    /// runs.
    pub fleet_adapter: bool,
    /// `--fleet-auth-per-connection`: how long a signature verified on a connection vouches for
    /// its key on that connection (`None`: every call is verified).
    pub proof_per_connection: Option<std::time::Duration>,
    /// `--serverappio-pull-hold`: how long a ServerApp's PullMessages waits for the replies it
    /// asks for (`None`: it is answered at once).
    pub pull_hold: Option<std::time::Duration>,
    /// `--fleet-pull-hold`: the longest a SuperNode's PullMessages waits for an instruction when
    /// the SuperNode asks to (`None`: every pull is answered at once).
    pub fleet_pull_hold: Option<std::time::Duration>,
}

/// Where a run's FAB comes from.
#[derive(Clone, Debug)]
pub enum FabSource {
    /// Sent with `StartRun` (`flwr run <dir>`).
    Uploaded(Bytes),
    /// Fetched from Flower Hub (`flwr run @account/app[==x.y.z]`).
    Hub(String),
}

/// The inputs a ServerApp pulls with its token.
#[derive(Clone, Debug)]
pub struct AppInputs {
    /// Encoded `Context`.
    pub context: Bytes,
    /// The run as it was before it turned `running`.
    pub run: Run,
    /// The FAB and its verifications.
    pub fab: StoredFab,
}

/// The SuperLink's domain, shared by all services (cheap to clone).
#[derive(Clone)]
pub struct Core {
    state: Arc<dyn LinkState>,
    objects: Arc<dyn ObjectStore>,
    fabs: Arc<dyn FabStore>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    launcher: Option<mpsc::UnboundedSender<LaunchEvent>>,
    keys: Arc<RwLock<HashMap<Bytes, Arc<NodePublicKey>>>>,
    /// What each node may pull and confirm: the instruction last delivered to it here.
    scopes: Arc<parking_lot::Mutex<HashMap<NodeId, Scope>>>,
    /// The run of each reply and object stored through this SuperLink, for held ServerApp
    /// pulls.
    replies: tokio::sync::broadcast::Sender<RunId>,
    /// Node signatures verified lately.
    verified: Arc<flwr_transport::node_auth::VerifiedSignatures>,
    /// Where Flower Hub runs come from.
    hub: Arc<Hub>,
    /// The bells of the nodes whose Fleet pulls are held here.
    doorbells: Arc<Doorbells>,
    /// The bells of the objects that held Fleet pulls wait for.
    object_bells: Arc<Doorbells<ObjectId>>,
    /// Cancelled when the SuperLink shuts down: held pulls answer what they have.
    closing: CancellationToken,
}

/// While a ServerApp's pull is held, how often it looks again without news when replies stored
/// by other replicas are not announced here (PostgreSQL while its notifications are down).
const HELD_PULL_POLL: std::time::Duration = std::time::Duration::from_millis(500);
/// While a ServerApp's pull is held and arrivals are announced, how often it still looks again:
/// for the replies the SuperLink makes itself as time passes (a node gone offline or
/// unregistered, an instruction expired), which nothing announces. Nodes go offline after tens of
/// seconds without a heartbeat, so this adds little to when such a reply is seen.
const HELD_PULL_TIMER: std::time::Duration = std::time::Duration::from_secs(5);
/// While a ServerApp's pull is held, the least time between two of its looks.
const HELD_PULL_GAP: std::time::Duration = std::time::Duration::from_millis(100);
/// While a SuperNode's pull is held and instructions stored by other replicas are not announced
/// here, how often it looks again (a SuperNode that does not hold polls every second).
const HELD_FLEET_PULL_POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// While a held SuperNode pull waits for its instruction's objects, the least time between two
/// looks woken by objects announced through other replicas (announced by run, not by object).
const HELD_FLEET_OBJECT_GAP: std::time::Duration = std::time::Duration::from_millis(250);
/// While a SuperNode's pull is held and instructions are announced, how often it still looks
/// again (a safety net; a ring is what normally ends the wait).
const HELD_FLEET_PULL_TIMER: std::time::Duration = std::time::Duration::from_secs(10);

/// Parsed keys kept at most (the cache is cleared when it grows past this).
const KEY_CACHE_LIMIT: usize = 100_000;
/// Verified node signatures remembered at most (about 60 bytes each).
const VERIFIED_SIGNATURES_LIMIT: usize = 100_000;
/// Node scopes kept at most (likewise).
const SCOPE_CACHE_LIMIT: usize = 100_000;

/// An instruction delivered to a node: the node may pull its objects and confirm it; no other
/// node may.
struct Scope {
    run_id: RunId,
    message_id: String,
    objects: std::collections::HashSet<ObjectId>,
}

impl Scope {
    fn of(run_id: RunId, message_id: String, tree: &ObjectTree) -> Self {
        Self {
            run_id,
            message_id,
            objects: tree.post_order().iter().map(|n| n.id).collect(),
        }
    }
}

fn check_interval(interval: f64) -> Result<()> {
    if (heartbeat::MIN_INTERVAL..=heartbeat::MAX_INTERVAL).contains(&interval) {
        Ok(())
    } else {
        Err(Error::InvalidHeartbeatInterval)
    }
}

impl Core {
    /// A domain over these engines.
    pub fn new(
        state: Arc<dyn LinkState>,
        objects: Arc<dyn ObjectStore>,
        fabs: Arc<dyn FabStore>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        launcher: Option<mpsc::UnboundedSender<LaunchEvent>>,
    ) -> Self {
        let doorbells = Doorbells::<NodeId>::new();
        state.attach_doorbells(doorbells.clone());
        Self {
            state,
            objects,
            fabs,
            clock,
            settings,
            launcher,
            keys: Arc::new(RwLock::new(HashMap::new())),
            scopes: Arc::new(parking_lot::Mutex::new(HashMap::new())),
            replies: tokio::sync::broadcast::channel(1024).0,
            verified: Arc::new(flwr_transport::node_auth::VerifiedSignatures::new(
                VERIFIED_SIGNATURES_LIMIT,
            )),
            hub: Arc::new(Hub::new(crate::hub::DEFAULT_PLATFORM_API_URL)),
            doorbells,
            object_bells: Doorbells::new(),
            closing: CancellationToken::new(),
        }
    }

    /// This domain ending its held pulls when `closing` is cancelled (the SuperLink's shutdown).
    pub fn closing_with(mut self, closing: CancellationToken) -> Self {
        self.closing = closing;
        self
    }

    /// This domain fetching Flower Hub runs from `hub` (`--platform-api-url`).
    pub fn with_hub(mut self, hub: Hub) -> Self {
        self.hub = Arc::new(hub);
        self
    }

    /// Node signatures verified lately (a signature presented again is not verified again).
    pub fn verified(&self) -> &flwr_transport::node_auth::VerifiedSignatures {
        &self.verified
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn notify(&self, e: LaunchEvent) {
        if let Some(tx) = &self.launcher {
            let _ = tx.send(e);
        }
    }

    // ------------------------------------------------------------------ node authentication

    /// The parsed key for these PEM bytes (cached by the exact bytes).
    pub fn parse_key(&self, pem: &Bytes) -> Option<Arc<NodePublicKey>> {
        if let Some(k) = self.keys.read().get(pem) {
            return Some(k.clone());
        }
        let key = Arc::new(NodePublicKey::from_pem(pem).ok()?);
        let mut keys = self.keys.write();
        if keys.len() >= KEY_CACHE_LIMIT {
            keys.clear();
        }
        keys.insert(pem.clone(), key.clone());
        Some(key)
    }

    /// The node a verified key belongs to (None for unknown or unregistered keys).
    pub async fn node_for_key(&self, pem: Bytes) -> Result<Option<NodeId>> {
        if let Some(id) = self.state.cached_node_id(&pem) {
            return Ok(Some(id));
        }
        self.state
            .node_id_by_public_key(&pem)
            .await
            .map_err(Error::from)
    }

    // ------------------------------------------------------------------ run gate

    /// Passes for a running run (answered from the state's cache when it can); otherwise the
    /// error a gated RPC gives: UNKNOWN for unknown runs, PERMISSION_DENIED for runs that are not
    /// running.
    pub async fn gate(&self, run_id: RunId) -> Result<()> {
        // The run of the call being served, in its log span (see flwr_transport::metrics).
        tracing::Span::current().record("run_id", run_id);
        if self.state.cached_running(run_id) {
            return Ok(());
        }
        let run = self
            .state
            .run(run_id)
            .await?
            .ok_or(Error::UnknownRun(run_id))?;
        match run.status.not_running_message() {
            Some(msg) => Err(Error::NotRunning(msg)),
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------------ Fleet

    /// Fleet `RegisterNode`.
    pub async fn register_node(&self, public_key: Bytes) -> Result<NodeId> {
        if self.settings.enable_supernode_auth {
            return Err(Error::RegisterThroughCli);
        }
        let node = NewNode {
            owner_aid: NOOP_ACCOUNT_ID.into(),
            owner_name: NOOP_ACCOUNT_NAME.into(),
            public_key,
            heartbeat_interval: 0.0,
        };
        self.state.create_node(node).await.map_err(Error::from)
    }

    /// Fleet `ActivateNode`.
    pub async fn activate_node(&self, public_key: Bytes, interval: f64) -> Result<NodeId> {
        check_interval(interval)?;
        match self.state.activate_node(&public_key, interval).await? {
            Ok(id) => Ok(id),
            Err(NodeRefusal::AlreadyOnline(id)) => Err(Error::NodeAlreadyOnline(id)),
            Err(_) => Err(Error::NoNodeForKey),
        }
    }

    /// Fleet `DeactivateNode`.
    pub async fn deactivate_node(&self, node_id: NodeId) -> Result<()> {
        match self.state.deactivate_node(node_id).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::NodeNotOnline(node_id)),
        }
    }

    /// Fleet `UnregisterNode`.
    pub async fn unregister_node_fleet(&self, node_id: NodeId) -> Result<()> {
        if self.settings.enable_supernode_auth {
            return Err(Error::UnregisterThroughCli);
        }
        match self
            .state
            .unregister_node(node_id, Some(NOOP_ACCOUNT_ID))
            .await?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::NodeNotUnregistered(node_id)),
        }
    }

    /// Fleet `SendNodeHeartbeat`.
    pub async fn node_heartbeat(&self, node_id: NodeId, interval: f64) -> Result<bool> {
        check_interval(interval)?;
        self.state
            .heartbeat(node_id, interval)
            .await
            .map_err(Error::from)
    }

    /// Fleet `PullMessages`: at most one instruction, with its object tree.
    pub async fn pull_instruction(
        &self,
        node_id: NodeId,
    ) -> Result<Option<(MessageMeta, ObjectTree)>> {
        loop {
            if !self.state.may_have_instruction(node_id) {
                return Ok(None);
            }
            let Some(meta) = self.state.pull_instruction(node_id).await? else {
                return Ok(None);
            };
            let tree = match ObjectId::parse(&meta.message_id) {
                Ok(id) => self.objects.tree(&id).await?,
                Err(_) => None,
            };
            match tree {
                Some(t) => {
                    self.remember_scope(
                        node_id,
                        Scope::of(meta.run_id, meta.message_id.clone(), &t),
                    );
                    metrics::counter!("flwr_messages_delivered_total", "kind" => "instruction")
                        .increment(1);
                    tracing::Span::current().record("run_id", meta.run_id);
                    return Ok(Some((meta, t)));
                }
                None => {
                    tracing::warn!(message_id = %meta.message_id, "instruction without objects in the store; dropped");
                    self.state.delete_messages(&[meta.message_id]).await?;
                }
            }
        }
    }

    /// Fleet `PullMessages` from a SuperNode that asked to wait up to `wait` (ours do, Flower's
    /// never ask): with nothing to pull, the call is held (up to `wait` and `--fleet-pull-hold`)
    /// until an instruction for the node is stored, through this SuperLink or another replica,
    /// and then until its objects are all in (as they are pushed after the instruction), so the
    /// node's object pulls need no retry. Without `wait`, or without `--fleet-pull-hold`, it is
    /// [`Core::pull_instruction`]. Returns the instruction, if any, and whether the call was held
    /// (so the caller can tell the SuperNode that it may pull again at once).
    pub async fn pull_instruction_held(
        &self,
        node_id: NodeId,
        wait: Option<std::time::Duration>,
    ) -> Result<(
        Option<(MessageMeta, ObjectTree)>,
        Option<std::time::Duration>,
    )> {
        let hold = match (wait, self.settings.fleet_pull_hold) {
            (Some(w), Some(cap)) if !w.is_zero() => w.min(cap),
            _ => return Ok((self.pull_instruction(node_id).await?, None)),
        };
        let deadline = tokio::time::Instant::now() + hold;
        let bell = self.doorbells.bell(node_id);
        let outcome = loop {
            // Armed before the look: an instruction stored between the look and the wait rings
            // this bell.
            let rung = bell.rung();
            tokio::pin!(rung);
            rung.as_mut().enable();
            if let Some((meta, tree)) = self.pull_instruction(node_id).await? {
                self.await_objects(meta.run_id, &tree, deadline).await?;
                break Some((meta, tree));
            }
            let every = match self.state.arrivals_elsewhere() {
                flwr_state::Arrivals::Unannounced => HELD_FLEET_PULL_POLL,
                _ => HELD_FLEET_PULL_TIMER,
            };
            let wake = deadline.min(tokio::time::Instant::now() + every);
            tokio::select! {
                () = rung => {}
                () = tokio::time::sleep_until(wake) => {}
                () = self.closing.cancelled() => break None,
            }
            if tokio::time::Instant::now() >= deadline {
                // One last look, so that nothing stored at the deadline waits for the next pull.
                break self.pull_instruction(node_id).await?;
            }
        };
        let label = if outcome.is_some() {
            "instruction"
        } else {
            "empty"
        };
        metrics::counter!("flwr_fleet_held_pulls_total", "outcome" => label).increment(1);
        Ok((outcome, Some(hold)))
    }

    /// Waits (up to `deadline`, or the shutdown) until every object of `tree` is in the store.
    /// It waits for one missing object at a time, on that object's bell (rung when it is stored
    /// through this SuperLink), so a fan-out whose instructions all wait for their objects costs
    /// each of them a look per object, not a look per object pushed. Objects stored through
    /// other replicas are announced by run only: those wake it at most every
    /// [`HELD_FLEET_OBJECT_GAP`].
    async fn await_objects(
        &self,
        run_id: RunId,
        tree: &ObjectTree,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        let mut missing: Vec<ObjectId> = tree.post_order().into_iter().map(|n| n.id).collect();
        let mut elsewhere = self.state.arrivals_elsewhere();
        loop {
            let Some(&next) = missing.first() else {
                return Ok(());
            };
            // Armed before the look: an object stored after the look rings, one stored before is
            // seen by it.
            let bell = self.object_bells.bell(next);
            let rung = bell.rung();
            tokio::pin!(rung);
            rung.as_mut().enable();
            missing = self.objects.unavailable(&missing).await?;
            if !missing.contains(&next) {
                // In: wait on the next missing one, if any.
                continue;
            }
            let looked = tokio::time::Instant::now();
            let every = match elsewhere {
                flwr_state::Arrivals::Unannounced => HELD_PULL_POLL,
                _ => HELD_PULL_TIMER,
            };
            let wake = deadline.min(looked + every);
            let remote = async {
                // Announced by run, maybe by another replica: look again, not too often.
                arrival_elsewhere(run_id, &mut elsewhere).await;
                tokio::time::sleep_until(looked + HELD_FLEET_OBJECT_GAP).await;
            };
            tokio::select! {
                () = rung => {}
                () = remote => {}
                () = tokio::time::sleep_until(wake) => {}
                () = self.closing.cancelled() => return Ok(()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// Fleet `PushMessages`: the first message is the reply. Returns its id (or `None` when
    /// Flower would answer `{"None": 0}`) and the objects to push. Stricter than Flower, a node
    /// may only reply as itself (`src_node_id` = the caller).
    pub async fn push_reply(
        &self,
        caller: NodeId,
        reply: MessageMeta,
        trees: Vec<ObjectTree>,
        runtime: f64,
    ) -> Result<(Option<String>, Vec<ObjectId>)> {
        let run_id = reply.run_id;
        self.gate(run_id).await?;
        let now = self.clock.now();
        let mut errors = reply.validate(true, now);
        if reply.src_node_id != caller {
            errors.push(format!(
                "`metadata.src_node_id` is not the calling node {caller}"
            ));
        }
        // The objects are pre-registered either way (Flower does too); with PostgreSQL, in the
        // reply's transaction.
        let (outcome, to_push) = self
            .state
            .store_reply_with_objects(&*self.objects, reply, &trees, errors.is_empty())
            .await?;
        let stored = match outcome {
            Some(Ok(id)) => {
                let _ = self.replies.send(run_id);
                metrics::counter!("flwr_messages_stored_total", "kind" => "reply").increment(1);
                Some(id)
            }
            Some(Err(why)) => {
                tracing::warn!(%why, "reply refused");
                None
            }
            None => {
                tracing::warn!(errors = ?errors, "reply refused");
                None
            }
        };
        // A number no engine should store (NaN, infinite, negative) counts as nothing.
        let runtime = if runtime.is_finite() && runtime >= 0.0 {
            runtime
        } else {
            tracing::debug!(
                node_id = caller,
                run_id,
                runtime,
                "ClientApp runtime ignored"
            );
            0.0
        };
        self.state.add_run_usage(run_id, 0, 0, runtime).await?;
        Ok((stored, to_push))
    }

    /// Adds traffic to a run.
    pub async fn add_traffic(&self, run_id: RunId, sent: u64, recv: u64) -> Result<()> {
        self.state
            .add_run_usage(run_id, sent, recv, 0.0)
            .await
            .map_err(Error::from)
    }

    /// Fleet `GetRun`: the run, if it exists and runs.
    pub async fn fleet_get_run(&self, run_id: RunId) -> Result<Run> {
        let run = self
            .state
            .run(run_id)
            .await?
            .ok_or(Error::NoSuchRunForNode(run_id))?;
        if let Some(msg) = run.status.not_running_message() {
            return Err(Error::NotRunning(msg));
        }
        Ok(run)
    }

    /// Fleet `GetFab`.
    pub async fn fleet_get_fab(&self, run_id: RunId, hash: String) -> Result<StoredFab> {
        self.fleet_get_run(run_id).await?;
        self.read_fab(hash).await
    }

    async fn read_fab(&self, hash: String) -> Result<StoredFab> {
        self.fabs.get(&hash).await?.ok_or(Error::NoSuchFab(hash))
    }

    /// `PushObject` (both APIs, after their gate and checks). Returns `stored`.
    pub async fn push_object(&self, run_id: RunId, id: String, content: Bytes) -> Result<bool> {
        let Some(id) = content::admit(&id, &content)
            .await
            .map_err(Error::BadObject)?
        else {
            return Ok(false);
        };
        let bytes = content.len() as u64;
        let stored = self.objects.put(&id, content).await?;
        if stored {
            metrics::counter!("flwr_object_bytes_total", "direction" => "in").increment(bytes);
            // A held ServerApp pull may be waiting for this object, or a held Fleet pull.
            let _ = self.replies.send(run_id);
            self.object_bells.ring(id);
        }
        Ok(stored)
    }

    fn remember_scope(&self, node_id: NodeId, scope: Scope) {
        let mut scopes = self.scopes.lock();
        if scopes.len() >= SCOPE_CACHE_LIMIT {
            scopes.clear();
        }
        scopes.insert(node_id, scope);
    }

    /// True when `node` may touch something of `run_id` that `allowed` accepts in the scope of
    /// an instruction delivered to it: the one remembered here, else (delivered by another
    /// replica, or an older one) each instruction the state says it holds.
    async fn in_scope(
        &self,
        node: NodeId,
        run_id: RunId,
        allowed: impl Fn(&Scope) -> bool,
    ) -> Result<bool> {
        if let Some(scope) = self.scopes.lock().get(&node) {
            if scope.run_id == run_id && allowed(scope) {
                return Ok(true);
            }
        }
        for message_id in self.state.delivered_instructions(node, run_id).await? {
            let Ok(root) = ObjectId::parse(&message_id) else {
                continue;
            };
            let tree = self.objects.tree(&root).await?;
            let scope = match tree {
                Some(t) => Scope::of(run_id, message_id, &t),
                None => Scope {
                    run_id,
                    message_id,
                    objects: Default::default(),
                },
            };
            if allowed(&scope) {
                self.remember_scope(node, scope);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Fleet `PullObject` (after the gate): only objects of an instruction delivered to `node`;
    /// any other object looks unknown, as if it did not exist.
    pub async fn fleet_pull_object(
        &self,
        node: NodeId,
        run_id: RunId,
        id: String,
    ) -> Result<Lookup> {
        let Ok(oid) = ObjectId::parse(&id) else {
            return Ok(Lookup::Unknown);
        };
        if !self
            .in_scope(node, run_id, |s| s.objects.contains(&oid))
            .await?
        {
            tracing::debug!(node_id = node, run_id, object_id = %id, "object outside the node's instructions: answered as unknown");
            return Ok(Lookup::Unknown);
        }
        self.pull_object(id).await
    }

    /// Fleet `ConfirmMessageReceived` (after the gate): only for an instruction delivered to
    /// `node`. Any other id changes nothing and is answered as Flower answers every confirm, so
    /// that a node can neither delete another's instruction nor learn that it exists.
    pub async fn fleet_confirm(
        &self,
        node: NodeId,
        run_id: RunId,
        message_id: String,
    ) -> Result<()> {
        let m = message_id.clone();
        if !self.in_scope(node, run_id, |s| s.message_id == m).await? {
            tracing::warn!(node_id = node, run_id, %message_id, "confirm of an instruction not delivered to this node: ignored");
            return Ok(());
        }
        {
            let mut scopes = self.scopes.lock();
            if scopes
                .get(&node)
                .is_some_and(|s| s.message_id == message_id)
            {
                scopes.remove(&node);
            }
        }
        // Marked confirmed before its objects go: an instruction is delivered again only while
        // it is unconfirmed, and then its objects must still be there.
        self.state.confirm_instruction(node, &message_id).await?;
        self.confirm(message_id).await
    }

    /// `PullObject` (ServerAppIo, after its gate).
    pub async fn pull_object(&self, id: String) -> Result<Lookup> {
        let Ok(id) = ObjectId::parse(&id) else {
            return Ok(Lookup::Unknown);
        };
        let found = self.objects.get(&id).await?;
        if let Lookup::Available(bytes) = &found {
            metrics::counter!("flwr_object_bytes_total", "direction" => "out")
                .increment(bytes.len() as u64);
        }
        Ok(found)
    }

    /// ServerAppIo `ConfirmMessageReceived` (after its gate): the ServerApp has the reply, so the
    /// reply and its instruction go (until then a lost answer can be asked for again), then its
    /// objects.
    pub async fn serverapp_confirm(&self, run_id: RunId, message_object_id: String) -> Result<()> {
        self.state.confirm_reply(run_id, &message_object_id).await?;
        self.confirm(message_object_id).await
    }

    /// The objects of a confirmed message go, shared ones stay.
    async fn confirm(&self, message_object_id: String) -> Result<()> {
        if let Ok(id) = ObjectId::parse(&message_object_id) {
            self.objects.delete(&id).await?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ ServerAppIo

    /// `ListAppsToLaunch`.
    pub async fn pending_runs(&self) -> Result<Vec<RunId>> {
        self.state.pending_run_ids().await.map_err(Error::from)
    }

    /// `RequestToken`: a token and `pending → starting`, or `""` when the run has a token, is
    /// unknown, or cannot start. `launcher` names this SuperLink when it starts the ServerApp
    /// itself (`--isolation subprocess`).
    pub async fn request_token(&self, run_id: RunId, launcher: Option<&str>) -> Result<String> {
        let Some(token) = self.state.claim_run(run_id, launcher).await? else {
            return Ok(String::new());
        };
        count_status_change(Status::Starting, SubStatus::None);
        Ok(token)
    }

    /// `GetRun` (ServerAppIo): no gate, `None` for unknown runs.
    pub async fn get_run(&self, run_id: RunId) -> Result<Option<Run>> {
        self.state.run(run_id).await.map_err(Error::from)
    }

    async fn run_of_token(&self, token: String) -> Result<RunId> {
        let run_id = self
            .state
            .run_id_by_token(&token)
            .await?
            .ok_or(Error::InvalidToken)?;
        tracing::Span::current().record("run_id", run_id);
        Ok(run_id)
    }

    /// `PullAppInputs`: context, run (still `starting`) and FAB; the run turns `running`.
    pub async fn pull_app_inputs(&self, token: String) -> Result<AppInputs> {
        let run_id = self.run_of_token(token).await?;
        let failed = || Error::RunNotStarted(run_id);
        let run = self.state.run(run_id).await?.ok_or_else(failed)?;
        let context = self.state.context(run_id).await?.ok_or_else(failed)?;
        let fab = match self.read_fab(run.fab_hash.clone()).await {
            Ok(f) => f,
            Err(Error::NoSuchFab(_)) => return Err(failed()),
            Err(e) => return Err(e),
        };
        if !self
            .set_run_status(run_id, RunStatus::new(Status::Running))
            .await?
        {
            return Err(failed());
        }
        Ok(AppInputs { context, run, fab })
    }

    /// `PushAppOutputs`: stores the context and ends the token.
    pub async fn push_app_outputs(
        &self,
        token: String,
        run_id: RunId,
        context: Bytes,
    ) -> Result<()> {
        self.run_of_token(token).await?;
        self.gate(run_id).await?;
        self.state.set_context(run_id, context).await?;
        Ok(self.state.delete_token(run_id).await?)
    }

    /// `UpdateRunStatus`: refused for finished runs; invalid transitions, and statuses this
    /// SuperLink does not know (`None`), are ignored.
    pub async fn update_run_status(&self, run_id: RunId, status: Option<RunStatus>) -> Result<()> {
        let run = self
            .state
            .run(run_id)
            .await?
            .ok_or(Error::UnknownRun(run_id))?;
        if run.status.status == Status::Finished {
            return Err(Error::NotRunning(
                run.status.not_running_message().unwrap_or_default(),
            ));
        }
        let Some(status) = status else {
            tracing::debug!(run_id, "ignored a run status this SuperLink does not know");
            return Ok(());
        };
        let finishing = status.status == Status::Finished;
        let applied = self.set_run_status(run_id, status).await?;
        if finishing {
            self.objects.delete_objects_in_run(run_id).await?;
        }
        if !applied {
            tracing::debug!(run_id, "ignored an invalid run status transition");
        }
        Ok(())
    }

    /// Every status change this SuperLink makes goes through here, counted when applied.
    async fn set_run_status(&self, run_id: RunId, status: RunStatus) -> Result<bool> {
        let (to, sub) = (status.status, status.sub_status);
        let applied = self.state.update_run_status(run_id, status).await?;
        if applied {
            count_status_change(to, sub);
        }
        Ok(applied)
    }

    /// `PushLogs`: accepted whatever the run's status.
    pub async fn push_logs(&self, run_id: RunId, text: String) -> Result<()> {
        match self.state.add_log(run_id, &text).await.map_err(Error::from) {
            Err(Error::UnknownRun(id)) => Err(Error::LogsForUnknownRun(id)),
            other => other,
        }
    }

    /// `SendAppHeartbeat`.
    pub async fn app_heartbeat(&self, token: String) -> Result<bool> {
        self.state.app_heartbeat(&token).await.map_err(Error::from)
    }

    /// `GetNodes`: online nodes.
    pub async fn get_nodes(&self, run_id: RunId) -> Result<Vec<NodeId>> {
        self.gate(run_id).await?;
        self.state.online_node_ids().await.map_err(Error::from)
    }

    /// `PushMessages` (ServerAppIo): stores instructions; returns per message its id or `""`,
    /// and the objects to push.
    pub async fn push_instructions(
        &self,
        run_id: RunId,
        messages: Vec<(MessageMeta, ObjectTree)>,
    ) -> Result<(Vec<String>, Vec<ObjectId>)> {
        self.gate(run_id).await?;
        if messages.is_empty() {
            return Err(Error::Malformed(
                "Malformed PushMessages: `messages_list` must not be empty".into(),
            ));
        }
        let now = self.clock.now();
        let mut ids = Vec::with_capacity(messages.len());
        let mut to_push = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (meta, tree) in messages {
            let errors = meta.validate(false, now);
            if !errors.is_empty() {
                return Err(Error::Malformed(format!(
                    "Malformed PushMessages: {}",
                    errors.join(", ")
                )));
            }
            if meta.run_id != run_id {
                return Err(Error::Malformed(
                    "Malformed PushMessages: `Message.metadata` has mismatched `run_id`".into(),
                ));
            }
            let dst = meta.dst_node_id;
            let (stored, pushable) = self
                .state
                .store_instruction_with_objects(&*self.objects, meta, &tree)
                .await?;
            if stored.is_some() {
                // A pull held for this node takes it now.
                self.doorbells.ring(dst);
            }
            for id in pushable {
                if seen.insert(id) {
                    to_push.push(id);
                }
            }
            if stored.is_some() {
                metrics::counter!("flwr_messages_stored_total", "kind" => "instruction")
                    .increment(1);
            }
            ids.push(stored.unwrap_or_default());
        }
        Ok((ids, to_push))
    }

    /// `PullMessages` (ServerAppIo) with `--serverappio-pull-hold`: while some of the asked-for
    /// replies are missing, or have objects not pushed yet, waits (up to the hold) for replies
    /// and objects of the run to arrive, then answers everything it took. A ServerApp sees the
    /// same replies as from [`Core::pull_replies`], only sooner than after its own sleep, and
    /// complete, so that its object pulls need no retry. Replies taken but not answered (their
    /// objects were late) are given again by the next pull, as unconfirmed replies always are.
    /// An error after the first pull ends the wait with what was taken.
    pub async fn pull_replies_held(
        &self,
        run_id: RunId,
        message_ids: Vec<String>,
    ) -> Result<Vec<(MessageMeta, ObjectTree)>> {
        let Some(hold) = self.settings.pull_hold.filter(|_| !message_ids.is_empty()) else {
            let out = self.pull_replies(run_id, message_ids).await?;
            count_delivered_replies(&out);
            return Ok(out);
        };
        let mut arrivals = self.replies.subscribe();
        let mut elsewhere = self.state.arrivals_elsewhere();
        let deadline = tokio::time::Instant::now() + hold;
        let mut missing = message_ids;
        let mut out = Vec::new();
        let mut first = true;
        loop {
            let pulled_at = tokio::time::Instant::now();
            let last = pulled_at >= deadline;
            let pulled = match self.pull_replies(run_id, missing.clone()).await {
                Ok(p) => p,
                Err(e) if first => return Err(e),
                Err(e) => {
                    tracing::debug!(run_id, error = %e, "a held pull ends early");
                    break;
                }
            };
            first = false;
            if last {
                out.extend(pulled);
            } else {
                // One look at the store for every object of every reply taken.
                let ids: Vec<ObjectId> = pulled
                    .iter()
                    .flat_map(|(_, t)| t.post_order().into_iter().map(|n| n.id))
                    .collect();
                let late: std::collections::HashSet<ObjectId> =
                    self.objects.unavailable(&ids).await?.into_iter().collect();
                out.extend(
                    pulled
                        .into_iter()
                        .filter(|(_, t)| t.post_order().iter().all(|n| !late.contains(&n.id))),
                );
            }
            let answered: std::collections::HashSet<&str> = out
                .iter()
                .map(|(m, _)| m.reply_to_message_id.as_str())
                .collect();
            missing.retain(|id| !answered.contains(id.as_str()));
            if missing.is_empty() || last {
                break;
            }
            let (every, cause) = match elsewhere {
                flwr_state::Arrivals::Unannounced => (HELD_PULL_POLL, "poll"),
                _ => (HELD_PULL_TIMER, "timer"),
            };
            let wake = deadline.min(tokio::time::Instant::now() + every);
            let woke =
                tokio::time::timeout_at(wake, next_arrival(run_id, &mut arrivals, &mut elsewhere))
                    .await;
            let cause = match woke {
                Ok(()) => "arrival",
                Err(_) if wake < deadline => cause,
                Err(_) => "hold_ended",
            };
            metrics::counter!("flwr_held_pull_wakeups_total", "cause" => cause).increment(1);
            // Arrivals come in bursts (a reply, then its objects; many nodes at once): pull
            // again at most every HELD_PULL_GAP, so a large fan-out costs a few pulls, not one
            // per arrival.
            tokio::time::sleep_until(deadline.min(pulled_at + HELD_PULL_GAP)).await;
        }
        count_delivered_replies(&out);
        Ok(out)
    }

    /// `PullMessages` (ServerAppIo): the replies available for these instructions, with their
    /// trees; error replies made here are stored as objects under `run_id`.
    pub async fn pull_replies(
        &self,
        run_id: RunId,
        message_ids: Vec<String>,
    ) -> Result<Vec<(MessageMeta, ObjectTree)>> {
        self.gate(run_id).await?;
        let pulled = self.state.take_replies(&message_ids).await?;
        let mut out = Vec::with_capacity(pulled.len());
        for p in pulled {
            match p {
                PulledReply::Generated(mut meta) => {
                    let (bytes, id) = meta.seal_error_message();
                    let tree = ObjectTree::leaf(id);
                    self.objects.preregister(run_id, &tree).await?;
                    self.objects.put(&id, Bytes::from(bytes)).await?;
                    out.push((meta, tree));
                }
                PulledReply::Stored(meta) => {
                    if meta.run_id != run_id {
                        return Err(Error::Malformed(
                            "Malformed PullMessages: `message.metadata` has mismatched `run_id`"
                                .into(),
                        ));
                    }
                    let tree = match ObjectId::parse(&meta.message_id) {
                        Ok(id) => self.objects.tree(&id).await?,
                        Err(_) => None,
                    };
                    match tree {
                        Some(t) => out.push((meta, t)),
                        None => {
                            tracing::warn!(message_id = %meta.message_id, "reply without objects; dropped")
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ Control

    /// `StartRun`: `Ok(None)` for an oversized FAB (Flower answers without a run id).
    #[allow(clippy::too_many_arguments)]
    pub async fn start_run(
        &self,
        source: FabSource,
        overrides: Vec<(String, ConfigValue)>,
        federation: String,
        federation_config: Option<Bytes>,
        context_for: impl FnOnce(RunId) -> Bytes,
        flwr_aid: &str,
    ) -> Result<Option<RunId>> {
        let (fab, verifications) = match source {
            FabSource::Uploaded(fab) => (fab, Verifications::new()),
            FabSource::Hub(app_spec) => {
                if self.settings.fleet_adapter {
                    return Err(Error::HubOverAdapter);
                }
                self.hub.fetch(&app_spec).await?
            }
        };
        if fab.len() > fab::FAB_MAX_SIZE {
            tracing::error!(size = fab.len(), "FAB larger than 10 MiB refused");
            return Ok(None);
        }
        let federation = if federation.is_empty() {
            DEFAULT_FEDERATION.to_owned()
        } else {
            federation
        };
        if federation != DEFAULT_FEDERATION {
            return Err(Error::FederationNotFound);
        }
        let f = fab.clone();
        let info = tokio::task::spawn_blocking(move || fab::inspect(&f))
            .await
            .map_err(|source| Error::TaskLost {
                what: "FAB inspection",
                source,
            })??;
        fab::check_overrides(&info, overrides.iter().map(|(k, _)| k.as_str()))?;
        let hash = self.fabs.put(fab.clone(), verifications).await?;
        let (run_type, federation_config) = if self.settings.simulation {
            (RunType::Simulation, federation_config)
        } else {
            (RunType::ServerApp, None)
        };
        let run = NewRun {
            fab_id: info.fab_id,
            fab_version: info.fab_version,
            fab_hash: hash,
            override_config: overrides,
            flwr_aid: flwr_aid.to_owned(),
            federation,
            run_type,
            federation_config,
            context: Bytes::new(),
        };
        let run_id = self.state.create_run(run).await?;
        metrics::counter!("flwr_run_status_changes_total", "status" => "pending", "sub_status" => "")
            .increment(1);
        let context = context_for(run_id);
        self.state.set_context(run_id, context).await?;
        self.notify(LaunchEvent::RunPending);
        Ok(Some(run_id))
    }

    /// The default federation's simulation settings (an encoded `SimulationConfig`) as last
    /// set through any SuperLink sharing the state; `None` if they never were.
    pub async fn simulation_config(&self) -> Result<Option<Bytes>> {
        Ok(self.state.simulation_config(DEFAULT_FEDERATION).await?)
    }

    /// Replaces the default federation's simulation settings.
    pub async fn set_simulation_config(&self, config: Bytes) -> Result<()> {
        Ok(self
            .state
            .set_simulation_config(DEFAULT_FEDERATION, config)
            .await?)
    }

    /// A run the caller owns, or Flower's Control errors.
    pub async fn owned_run(&self, run_id: RunId, flwr_aid: &str) -> Result<Run> {
        let run = self.state.run(run_id).await?.ok_or(Error::NoSuchRun)?;
        if run.flwr_aid.is_empty() {
            return Err(Error::RunWithoutOwner);
        }
        if run.flwr_aid != flwr_aid {
            return Err(Error::RunOfAnotherAccount);
        }
        Ok(run)
    }

    /// `StopRun`.
    pub async fn stop_run(&self, run_id: RunId, flwr_aid: &str) -> Result<bool> {
        let run = self.owned_run(run_id, flwr_aid).await?;
        if run.status.status == Status::Finished {
            return Err(Error::RunAlreadyFinished(run_id));
        }
        let stopped = self
            .set_run_status(run_id, RunStatus::finished(SubStatus::Stopped, ""))
            .await?;
        self.state.delete_token(run_id).await?;
        if stopped {
            self.state.delete_run_messages(run_id).await?;
        }
        if stopped {
            self.objects.delete_objects_in_run(run_id).await?;
            self.notify(LaunchEvent::RunStopped(run_id));
        }
        Ok(stopped)
    }

    /// Purges a finished run's objects (Flower does it when listing or streaming it).
    pub async fn purge_if_finished(&self, run: &Run) -> Result<()> {
        if run.status.status == Status::Finished {
            let run_id = run.run_id;
            self.objects.delete_objects_in_run(run_id).await?;
        }
        Ok(())
    }

    /// Runs of the caller, newest first.
    pub async fn runs_of(&self, flwr_aid: &str) -> Result<Vec<Run>> {
        self.state.runs_of(flwr_aid).await.map_err(Error::from)
    }

    /// Announcements of runs with new log output or a new status, when the engine makes them.
    pub fn log_events(&self) -> Option<tokio::sync::broadcast::Receiver<RunId>> {
        self.state.log_events()
    }

    /// Logs after `after` and the time of the last entry.
    pub async fn logs_after(&self, run_id: RunId, after: f64) -> Result<(String, f64)> {
        self.state
            .logs_after(run_id, after)
            .await
            .map_err(Error::from)
    }

    /// Control `RegisterNode`: a CLI-registered node (heartbeat interval 30).
    pub async fn register_node_cli(
        &self,
        public_key: Bytes,
        owner_aid: &str,
        owner_name: &str,
    ) -> Result<NodeId> {
        if NodePublicKey::from_pem(&public_key).is_err() {
            return Err(Error::InvalidPublicKey);
        }
        let node = NewNode {
            owner_aid: owner_aid.to_owned(),
            owner_name: owner_name.to_owned(),
            public_key,
            heartbeat_interval: heartbeat::DEFAULT_INTERVAL,
        };
        self.state.create_node(node).await.map_err(Error::from)
    }

    /// Control `UnregisterNode`.
    pub async fn unregister_node_cli(&self, node_id: NodeId, owner_aid: &str) -> Result<()> {
        match self.state.unregister_node(node_id, Some(owner_aid)).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::NodeNotOwned),
        }
    }

    /// Nodes of the caller.
    pub async fn nodes_of(&self, owner_aid: &str) -> Result<Vec<Node>> {
        self.state.nodes_of(owner_aid).await.map_err(Error::from)
    }

    /// One node.
    pub async fn node(&self, node_id: NodeId) -> Result<Option<Node>> {
        self.state.node(node_id).await.map_err(Error::from)
    }
}

/// Waits for news of `run_id`: a reply or object stored through this SuperLink, or one stored
/// through another that shares the state (or word that such news may have been missed). A lag
/// counts as news; a channel that closed never wakes.
async fn next_arrival(
    run_id: RunId,
    here: &mut tokio::sync::broadcast::Receiver<RunId>,
    elsewhere: &mut flwr_state::Arrivals,
) {
    use tokio::sync::broadcast::error::RecvError;
    let local = async {
        loop {
            match here.recv().await {
                Ok(run) if run != run_id => continue,
                Err(RecvError::Closed) => std::future::pending::<()>().await,
                _ => return,
            }
        }
    };
    tokio::select! {
        () = local => {}
        () = arrival_elsewhere(run_id, elsewhere) => {}
    }
}

/// Resolves when `elsewhere` announces an arrival for `run_id` (or may have missed one); never
/// when arrivals are not announced.
async fn arrival_elsewhere(run_id: RunId, elsewhere: &mut flwr_state::Arrivals) {
    use tokio::sync::broadcast::error::RecvError;
    let flwr_state::Arrivals::Announced(events) = elsewhere else {
        return std::future::pending::<()>().await;
    };
    loop {
        match events.recv().await {
            Ok(Some(run)) if run != run_id => continue,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
            _ => return,
        }
    }
}

fn count_status_change(to: Status, sub: SubStatus) {
    metrics::counter!("flwr_run_status_changes_total", "status" => to.as_str(), "sub_status" => sub.as_str())
        .increment(1);
}

fn count_delivered_replies(out: &[(MessageMeta, ObjectTree)]) {
    metrics::counter!("flwr_messages_delivered_total", "kind" => "reply")
        .increment(out.len() as u64);
}
