//! The in-memory engine (`--database :flwr-in-memory:`).
//!
//! Three independent locks, never held across `.await` (no method awaits anything): nodes (hot:
//! every Fleet call authenticates against it, every heartbeat writes it), runs (with tokens,
//! contexts and logs), and messages. Lock order, where two are needed: messages, then nodes.
//! Each node has a FIFO of undelivered instruction ids, so an empty poll is a map lookup.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use flwr_objects::message::{error_code, MessageError, MessageMeta, SUPERLINK_NODE_ID};
use parking_lot::{Mutex, RwLock};

use super::*;
use crate::clock::Clock;

#[derive(Default)]
struct Nodes {
    by_id: HashMap<NodeId, Node>,
    by_key: HashMap<Bytes, NodeId>,
}

struct RunEntry {
    run: Run,
    context: Bytes,
    logs: Vec<(f64, String)>,
}

#[derive(Default)]
struct Runs {
    runs: HashMap<RunId, RunEntry>,
    /// token → (run, active until).
    tokens: HashMap<String, Token>,
    token_of_run: HashMap<RunId, String>,
    /// Run ids in creation order (for "oldest pending first").
    order: Vec<RunId>,
}

struct Instruction {
    meta: MessageMeta,
    /// When it was last delivered (`None`: never).
    delivered_at: Option<f64>,
    confirmed: bool,
    /// The reply, and whether the ServerApp has taken it (then it waits for its confirm).
    reply: Option<(MessageMeta, bool)>,
}

impl Instruction {
    /// Delivered, and neither confirmed nor answered: its delivery may have been lost.
    fn unconfirmed(&self) -> bool {
        self.delivered_at.is_some() && !self.confirmed && self.reply.is_none()
    }
}

#[derive(Default)]
struct Messages {
    by_id: HashMap<String, Instruction>,
    queues: HashMap<NodeId, VecDeque<String>>,
    /// Per node, instructions delivered and possibly not yet confirmed, oldest first (a superset:
    /// entries whose instruction was confirmed, answered or deleted go at the node's next pull).
    unconfirmed: HashMap<NodeId, VecDeque<String>>,
    /// Reply id → its instruction, for replies taken and not yet confirmed.
    taken: HashMap<String, String>,
}

/// The in-memory engine.
pub struct MemoryLinkState {
    clock: Arc<dyn Clock>,
    nodes: RwLock<Nodes>,
    runs: Mutex<Runs>,
    messages: Mutex<Messages>,
    /// Simulation settings by federation.
    federations: Mutex<HashMap<String, Bytes>>,
}

/// Reason texts of the errors the SuperLink makes (Flower's, byte for byte).
pub mod reasons {
    /// MESSAGE_UNAVAILABLE.
    pub const MESSAGE_UNAVAILABLE: &str = "Error: Message Unavailable - The requested message could not be found in the database. It may have expired due to its TTL, been deleted because the destination SuperNode was removed from the federation, or never existed.";
    /// REPLY_MESSAGE_UNAVAILABLE.
    pub const REPLY_MESSAGE_UNAVAILABLE: &str =
        "Error: Reply Message Unavailable - The reply message has expired.";
    /// NODE_UNAVAILABLE.
    pub const NODE_UNAVAILABLE: &str = "Error: Node Unavailable — The destination node failed to report a heartbeat within 2 × its expected interval.";
}

/// A random id that is neither 0 nor the SuperLink's 1.
pub fn random_id() -> u64 {
    use rand_core::RngCore;
    loop {
        let v = rand_core::OsRng.next_u64();
        if v > SUPERLINK_NODE_ID {
            return v;
        }
    }
}

/// 128 random bytes as 256 lowercase hex characters.
pub fn random_token() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 128];
    rand_core::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The status a stored node has at `now` (online nodes past their deadline are offline since
/// that deadline).
pub fn effective_node(mut node: Node, now: f64) -> Node {
    if node.status == NodeStatus::Online && node.online_until.is_some_and(|t| t <= now) {
        node.status = NodeStatus::Offline;
        node.last_deactivated_at = node.online_until;
    }
    node
}

/// An error reply the SuperLink makes for an instruction (NODE_UNAVAILABLE or
/// REPLY_MESSAGE_UNAVAILABLE): it copies the instruction's run, group and type, and lives as
/// long as the instruction had left.
pub fn error_reply_for(ins: &MessageMeta, code: i64, now: f64) -> MessageMeta {
    let reason = if code == error_code::REPLY_MESSAGE_UNAVAILABLE {
        reasons::REPLY_MESSAGE_UNAVAILABLE
    } else {
        reasons::NODE_UNAVAILABLE
    };
    MessageMeta {
        run_id: ins.run_id,
        message_id: String::new(),
        src_node_id: SUPERLINK_NODE_ID,
        dst_node_id: SUPERLINK_NODE_ID,
        reply_to_message_id: ins.message_id.clone(),
        group_id: ins.group_id.clone(),
        ttl: (ins.ttl - (now - ins.created_at)).max(0.0),
        message_type: ins.message_type.clone(),
        created_at: now,
        error: Some(MessageError {
            code,
            reason: reason.to_owned(),
        }),
        has_content: false,
    }
}

/// The MESSAGE_UNAVAILABLE reply for an unknown or expired instruction id.
pub fn message_unavailable(reply_to: &str, now: f64) -> MessageMeta {
    MessageMeta {
        run_id: 0,
        message_id: String::new(),
        src_node_id: SUPERLINK_NODE_ID,
        dst_node_id: SUPERLINK_NODE_ID,
        reply_to_message_id: reply_to.to_owned(),
        group_id: String::new(),
        ttl: 0.0,
        message_type: "system".to_owned(),
        created_at: now,
        error: Some(MessageError {
            code: error_code::MESSAGE_UNAVAILABLE,
            reason: reasons::MESSAGE_UNAVAILABLE.to_owned(),
        }),
        has_content: false,
    }
}

impl MemoryLinkState {
    /// An empty state.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            nodes: RwLock::new(Nodes::default()),
            runs: Mutex::new(Runs::default()),
            messages: Mutex::new(Messages::default()),
            federations: Mutex::default(),
        }
    }
}

/// A ServerApp token's run, deadline and launching SuperLink.
struct Token {
    run_id: RunId,
    active_until: f64,
    launcher: Option<String>,
}

impl Runs {
    /// Expired tokens fail their runs (finished at the token's deadline) and disappear.
    fn expire_tokens(&mut self, now: f64) {
        let expired: Vec<String> = self
            .tokens
            .iter()
            .filter(|(_, t)| t.active_until < now)
            .map(|(token, _)| token.clone())
            .collect();
        for token in expired {
            let Some(t) = self.tokens.remove(&token) else {
                continue;
            };
            self.token_of_run.remove(&t.run_id);
            if let Some(e) = self.runs.get_mut(&t.run_id) {
                if e.run.finished_at.is_none() && e.run.status.status != Status::Finished {
                    e.run.status = RunStatus::finished(
                        SubStatus::Failed,
                        no_heartbeat_details(t.launcher.as_deref()),
                    );
                    e.run.finished_at = Some(t.active_until);
                }
            }
        }
    }

    fn remove_token_of(&mut self, run_id: RunId) {
        if let Some(t) = self.token_of_run.remove(&run_id) {
            self.tokens.remove(&t);
        }
    }
}

/// A run's new status and when it was reached (the transition is checked by the caller).
fn write_status(run: &mut Run, status: RunStatus, now: f64) {
    match status.status {
        Status::Starting => run.starting_at = Some(now),
        Status::Running => run.running_at = Some(now),
        Status::Finished => run.finished_at = Some(now),
        Status::Pending => {}
    }
    run.status = status;
}

fn expired(meta: &MessageMeta, now: f64) -> bool {
    meta.created_at + meta.ttl <= now
}

impl Messages {
    fn delete(&mut self, id: &str) {
        if let Some(Instruction {
            reply: Some((reply, true)),
            ..
        }) = self.by_id.remove(id)
        {
            self.taken.remove(&reply.message_id);
        }
    }
}

#[async_trait::async_trait]
impl LinkState for MemoryLinkState {
    /// Written by this process's memory only.
    fn arrivals_elsewhere(&self) -> crate::Arrivals {
        crate::Arrivals::NoneElsewhere
    }
    async fn create_node(&self, node: NewNode) -> Result<NodeId, StateError> {
        let now = self.clock.now();
        let mut nodes = self.nodes.write();
        if nodes.by_key.contains_key(&node.public_key) {
            return Err(StateError::PublicKeyInUse);
        }
        let mut id = random_id();
        while nodes.by_id.contains_key(&id) {
            id = random_id();
        }
        nodes.by_key.insert(node.public_key.clone(), id);
        nodes.by_id.insert(
            id,
            Node {
                node_id: id,
                owner_aid: node.owner_aid,
                owner_name: node.owner_name,
                status: NodeStatus::Registered,
                registered_at: now,
                last_activated_at: None,
                last_deactivated_at: None,
                unregistered_at: None,
                online_until: None,
                heartbeat_interval: node.heartbeat_interval,
                public_key: node.public_key,
            },
        );
        Ok(id)
    }

    async fn node_id_by_public_key(&self, public_key: &[u8]) -> Result<Option<NodeId>, StateError> {
        let nodes = self.nodes.read();
        Ok(nodes
            .by_key
            .get(public_key)
            .filter(|id| {
                nodes
                    .by_id
                    .get(id)
                    .is_some_and(|n| n.status != NodeStatus::Unregistered)
            })
            .copied())
    }

    async fn activate_node(
        &self,
        public_key: &[u8],
        heartbeat_interval: f64,
    ) -> Result<Result<NodeId, NodeRefusal>, StateError> {
        let now = self.clock.now();
        let mut nodes = self.nodes.write();
        let Some(id) = nodes.by_key.get(public_key).copied() else {
            return Ok(Err(NodeRefusal::UnknownKey));
        };
        let Some(node) = nodes.by_id.get_mut(&id) else {
            return Ok(Err(NodeRefusal::UnknownKey));
        };
        let current = effective_node(node.clone(), now);
        match current.status {
            NodeStatus::Unregistered => Ok(Err(NodeRefusal::UnknownKey)),
            NodeStatus::Online => Ok(Err(NodeRefusal::AlreadyOnline(id))),
            NodeStatus::Registered | NodeStatus::Offline => {
                *node = current;
                node.status = NodeStatus::Online;
                node.last_activated_at = Some(now);
                node.online_until = Some(now + heartbeat::PATIENCE * heartbeat_interval);
                node.heartbeat_interval = heartbeat_interval;
                Ok(Ok(id))
            }
        }
    }

    async fn deactivate_node(
        &self,
        node_id: NodeId,
    ) -> Result<Result<(), NodeRefusal>, StateError> {
        let now = self.clock.now();
        let mut nodes = self.nodes.write();
        let Some(node) = nodes.by_id.get_mut(&node_id) else {
            return Ok(Err(NodeRefusal::NotOnline(node_id)));
        };
        let current = effective_node(node.clone(), now);
        if current.status != NodeStatus::Online {
            return Ok(Err(NodeRefusal::NotOnline(node_id)));
        }
        node.status = NodeStatus::Offline;
        node.last_deactivated_at = Some(now);
        node.online_until = Some(now);
        Ok(Ok(()))
    }

    async fn unregister_node(
        &self,
        node_id: NodeId,
        owner_aid: Option<&str>,
    ) -> Result<Result<(), NodeRefusal>, StateError> {
        let now = self.clock.now();
        let mut nodes = self.nodes.write();
        let Some(node) = nodes.by_id.get_mut(&node_id) else {
            return Ok(Err(NodeRefusal::NotFound(node_id)));
        };
        if node.status == NodeStatus::Unregistered || owner_aid.is_some_and(|o| o != node.owner_aid)
        {
            return Ok(Err(NodeRefusal::NotFound(node_id)));
        }
        *node = effective_node(node.clone(), now);
        node.status = NodeStatus::Unregistered;
        node.unregistered_at = Some(now);
        node.online_until = Some(node.online_until.map_or(now, |t| t.min(now)));
        Ok(Ok(()))
    }

    async fn heartbeat(
        &self,
        node_id: NodeId,
        heartbeat_interval: f64,
    ) -> Result<bool, StateError> {
        let now = self.clock.now();
        let mut nodes = self.nodes.write();
        let Some(node) = nodes.by_id.get_mut(&node_id) else {
            return Ok(false);
        };
        if node.status == NodeStatus::Unregistered {
            return Ok(false);
        }
        let current = effective_node(node.clone(), now);
        if current.status != NodeStatus::Online {
            *node = current;
            node.status = NodeStatus::Online;
            node.last_activated_at = Some(now);
        }
        node.online_until = Some(now + heartbeat::PATIENCE * heartbeat_interval);
        node.heartbeat_interval = heartbeat_interval;
        Ok(true)
    }

    async fn node(&self, node_id: NodeId) -> Result<Option<Node>, StateError> {
        let now = self.clock.now();
        Ok(self
            .nodes
            .read()
            .by_id
            .get(&node_id)
            .map(|n| effective_node(n.clone(), now)))
    }

    async fn nodes_of(&self, owner_aid: &str) -> Result<Vec<Node>, StateError> {
        let now = self.clock.now();
        let nodes = self.nodes.read();
        let mut out: Vec<Node> = nodes
            .by_id
            .values()
            .filter(|n| n.owner_aid == owner_aid)
            .map(|n| effective_node(n.clone(), now))
            .collect();
        out.sort_by(|a, b| a.registered_at.total_cmp(&b.registered_at));
        Ok(out)
    }

    async fn census(&self) -> Result<Census, StateError> {
        let now = self.clock.now();
        let mut census = Census::default();
        for n in self.nodes.read().by_id.values() {
            census.count_node(n.status, n.online_until, now);
        }
        for e in self.runs.lock().runs.values() {
            let s = &e.run.status;
            *census
                .runs
                .entry((
                    s.status.as_str().to_owned(),
                    s.sub_status.as_str().to_owned(),
                ))
                .or_default() += 1;
        }
        Ok(census)
    }

    async fn online_node_ids(&self) -> Result<Vec<NodeId>, StateError> {
        let now = self.clock.now();
        let nodes = self.nodes.read();
        let mut ids: Vec<NodeId> = nodes
            .by_id
            .values()
            .filter(|n| n.status == NodeStatus::Online && n.online_until.is_some_and(|t| t > now))
            .map(|n| n.node_id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn create_run(&self, new: NewRun) -> Result<RunId, StateError> {
        let now = self.clock.now();
        let mut runs = self.runs.lock();
        let mut id = random_id();
        while runs.runs.contains_key(&id) {
            id = random_id();
        }
        let run = Run {
            run_id: id,
            fab_id: new.fab_id,
            fab_version: new.fab_version,
            fab_hash: new.fab_hash,
            override_config: new.override_config,
            pending_at: Some(now),
            starting_at: None,
            running_at: None,
            finished_at: None,
            status: RunStatus::new(Status::Pending),
            flwr_aid: new.flwr_aid,
            federation: new.federation,
            bytes_sent: 0,
            bytes_recv: 0,
            clientapp_runtime: 0.0,
            run_type: new.run_type,
            federation_config: new.federation_config,
        };
        runs.runs.insert(
            id,
            RunEntry {
                run,
                context: new.context,
                logs: Vec::new(),
            },
        );
        runs.order.push(id);
        Ok(id)
    }

    async fn run(&self, run_id: RunId) -> Result<Option<Run>, StateError> {
        let now = self.clock.now();
        let mut runs = self.runs.lock();
        runs.expire_tokens(now);
        Ok(runs.runs.get(&run_id).map(|e| e.run.clone()))
    }

    async fn runs_of(&self, flwr_aid: &str) -> Result<Vec<Run>, StateError> {
        let now = self.clock.now();
        let mut runs = self.runs.lock();
        runs.expire_tokens(now);
        let mut out: Vec<Run> = runs
            .runs
            .values()
            .filter(|e| e.run.flwr_aid == flwr_aid)
            .map(|e| e.run.clone())
            .collect();
        out.sort_by(|a, b| {
            b.pending_at
                .unwrap_or(0.0)
                .total_cmp(&a.pending_at.unwrap_or(0.0))
        });
        Ok(out)
    }

    async fn pending_run_ids(&self) -> Result<Vec<RunId>, StateError> {
        let now = self.clock.now();
        let mut runs = self.runs.lock();
        runs.expire_tokens(now);
        Ok(runs
            .order
            .iter()
            .filter(|id| {
                runs.runs
                    .get(id)
                    .is_some_and(|e| e.run.status.status == Status::Pending)
            })
            .copied()
            .collect())
    }

    async fn update_run_status(
        &self,
        run_id: RunId,
        status: RunStatus,
    ) -> Result<bool, StateError> {
        let now = self.clock.now();
        let mut runs = self.runs.lock();
        runs.expire_tokens(now);
        let Some(e) = runs.runs.get_mut(&run_id) else {
            return Err(StateError::RunNotFound(run_id));
        };
        if !e.run.status.is_valid_transition(&status) {
            return Ok(false);
        }
        write_status(&mut e.run, status, now);
        Ok(true)
    }

    async fn add_run_usage(
        &self,
        run_id: RunId,
        sent: u64,
        recv: u64,
        clientapp_runtime: f64,
    ) -> Result<(), StateError> {
        let mut runs = self.runs.lock();
        if let Some(e) = runs.runs.get_mut(&run_id) {
            e.run.bytes_sent = e.run.bytes_sent.saturating_add(sent);
            e.run.bytes_recv = e.run.bytes_recv.saturating_add(recv);
            e.run.clientapp_runtime += clientapp_runtime;
        }
        Ok(())
    }

    async fn context(&self, run_id: RunId) -> Result<Option<Bytes>, StateError> {
        Ok(self
            .runs
            .lock()
            .runs
            .get(&run_id)
            .map(|e| e.context.clone()))
    }

    async fn simulation_config(&self, federation: &str) -> Result<Option<Bytes>, StateError> {
        Ok(self.federations.lock().get(federation).cloned())
    }

    async fn set_simulation_config(
        &self,
        federation: &str,
        config: Bytes,
    ) -> Result<(), StateError> {
        self.federations
            .lock()
            .insert(federation.to_owned(), config);
        Ok(())
    }

    async fn set_context(&self, run_id: RunId, context: Bytes) -> Result<(), StateError> {
        let mut runs = self.runs.lock();
        let e = runs
            .runs
            .get_mut(&run_id)
            .ok_or(StateError::RunNotFound(run_id))?;
        e.context = context;
        Ok(())
    }

    async fn claim_run(
        &self,
        run_id: RunId,
        launcher: Option<&str>,
    ) -> Result<Option<String>, StateError> {
        let now = self.clock.now();
        let mut runs = self.runs.lock();
        runs.expire_tokens(now);
        if runs.token_of_run.contains_key(&run_id) {
            return Ok(None);
        }
        let starting = RunStatus::new(Status::Starting);
        let Some(e) = runs.runs.get_mut(&run_id) else {
            return Ok(None);
        };
        if !e.run.status.is_valid_transition(&starting) {
            return Ok(None);
        }
        write_status(&mut e.run, starting, now);
        let token = random_token();
        runs.tokens.insert(
            token.clone(),
            Token {
                run_id,
                active_until: now + heartbeat::DEFAULT_INTERVAL,
                launcher: launcher.map(str::to_owned),
            },
        );
        runs.token_of_run.insert(run_id, token.clone());
        Ok(Some(token))
    }

    async fn run_id_by_token(&self, token: &str) -> Result<Option<RunId>, StateError> {
        let now = self.clock.now();
        let mut runs = self.runs.lock();
        runs.expire_tokens(now);
        Ok(runs
            .tokens
            .get(token)
            .map(|t| t.run_id)
            .filter(|r| runs.token_of_run.get(r).is_some_and(|t| t == token)))
    }

    async fn delete_token(&self, run_id: RunId) -> Result<(), StateError> {
        self.runs.lock().remove_token_of(run_id);
        Ok(())
    }

    async fn app_heartbeat(&self, token: &str) -> Result<bool, StateError> {
        let now = self.clock.now();
        let mut runs = self.runs.lock();
        runs.expire_tokens(now);
        match runs.tokens.get_mut(token) {
            Some(t) => {
                t.active_until = now + heartbeat::PATIENCE * heartbeat::DEFAULT_INTERVAL;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn add_log(&self, run_id: RunId, text: &str) -> Result<(), StateError> {
        let now = self.clock.now();
        let mut runs = self.runs.lock();
        let e = runs
            .runs
            .get_mut(&run_id)
            .ok_or(StateError::RunNotFound(run_id))?;
        // Keep timestamps strictly increasing, so that "after the last one" never skips text.
        let ts = log_time(e.logs.last().map(|(last, _)| *last), now);
        e.logs.push((ts, text.to_owned()));
        Ok(())
    }

    async fn logs_after(&self, run_id: RunId, after: f64) -> Result<(String, f64), StateError> {
        let runs = self.runs.lock();
        let e = runs
            .runs
            .get(&run_id)
            .ok_or(StateError::RunNotFound(run_id))?;
        let start = e.logs.partition_point(|(ts, _)| *ts <= after);
        let text: String = e.logs[start..].iter().map(|(_, t)| t.as_str()).collect();
        let latest = e.logs.last().map(|(ts, _)| *ts).unwrap_or(0.0);
        Ok((text, latest))
    }

    async fn store_instruction(&self, message: MessageMeta) -> Result<Option<String>, StateError> {
        if message.src_node_id != SUPERLINK_NODE_ID {
            return Ok(None);
        }
        if !self.runs.lock().runs.contains_key(&message.run_id) {
            return Ok(None);
        }
        let dst_ok = self
            .nodes
            .read()
            .by_id
            .get(&message.dst_node_id)
            .is_some_and(|n| matches!(n.status, NodeStatus::Online | NodeStatus::Offline));
        if !dst_ok {
            return Ok(None);
        }
        let id = message.message_id.clone();
        let dst = message.dst_node_id;
        let mut msgs = self.messages.lock();
        msgs.by_id.insert(
            id.clone(),
            Instruction {
                meta: message,
                delivered_at: None,
                confirmed: false,
                reply: None,
            },
        );
        msgs.queues.entry(dst).or_default().push_back(id.clone());
        Ok(Some(id))
    }

    async fn pull_instruction(&self, node_id: NodeId) -> Result<Option<MessageMeta>, StateError> {
        let now = self.clock.now();
        let mut guard = self.messages.lock();
        let msgs = &mut *guard;
        let mut found = None;
        if let Some(queue) = msgs.queues.get_mut(&node_id) {
            while let Some(id) = queue.pop_front() {
                let Some(ins) = msgs.by_id.get_mut(&id) else {
                    continue;
                };
                if ins.delivered_at.is_some() {
                    continue;
                }
                if expired(&ins.meta, now) {
                    msgs.by_id.remove(&id);
                    continue;
                }
                ins.delivered_at = Some(now);
                found = Some(ins.meta.clone());
                msgs.unconfirmed.entry(node_id).or_default().push_back(id);
                break;
            }
            if queue.is_empty() {
                msgs.queues.remove(&node_id);
            }
        }
        if found.is_some() {
            return Ok(found);
        }
        // Nothing new: a delivery that was lost, if any.
        let Some(waiting) = msgs.unconfirmed.get_mut(&node_id) else {
            return Ok(None);
        };
        waiting.retain(|id| {
            msgs.by_id
                .get(id)
                .is_some_and(|i| i.unconfirmed() && !expired(&i.meta, now))
        });
        for id in waiting.iter() {
            let Some(ins) = msgs.by_id.get_mut(id) else {
                continue;
            };
            if ins.delivered_at.is_some_and(|t| t + REDELIVER_AFTER <= now) {
                tracing::info!(node_id, message_id = %id, "delivering again an instruction its node did not confirm");
                ins.delivered_at = Some(now);
                found = Some(ins.meta.clone());
                break;
            }
        }
        if waiting.is_empty() {
            msgs.unconfirmed.remove(&node_id);
        }
        Ok(found)
    }

    async fn confirm_instruction(
        &self,
        node_id: NodeId,
        message_id: &str,
    ) -> Result<(), StateError> {
        if let Some(ins) = self.messages.lock().by_id.get_mut(message_id) {
            if ins.meta.dst_node_id == node_id && ins.delivered_at.is_some() {
                ins.confirmed = true;
            }
        }
        Ok(())
    }

    async fn delivered_instructions(
        &self,
        node_id: NodeId,
        run_id: RunId,
    ) -> Result<Vec<String>, StateError> {
        Ok(self
            .messages
            .lock()
            .by_id
            .iter()
            .filter(|(_, i)| {
                i.delivered_at.is_some() && i.meta.dst_node_id == node_id && i.meta.run_id == run_id
            })
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn store_reply(
        &self,
        message: MessageMeta,
    ) -> Result<Result<String, ReplyRejected>, StateError> {
        let now = self.clock.now();
        let mut msgs = self.messages.lock();
        let ins_id = message.reply_to_message_id.clone();
        if msgs
            .by_id
            .get(&ins_id)
            .is_some_and(|i| expired(&i.meta, now))
        {
            msgs.delete(&ins_id);
        }
        let Some(ins) = msgs.by_id.get_mut(&ins_id) else {
            return Ok(Err(ReplyRejected::NoInstruction(ins_id)));
        };
        if let Err(why) = check_reply(&ins.meta, &message) {
            return Ok(Err(why));
        }
        let id = message.message_id.clone();
        if let Some((old, true)) = ins.reply.replace((message, false)) {
            msgs.taken.remove(&old.message_id);
        }
        Ok(Ok(id))
    }

    async fn take_replies(&self, message_ids: &[String]) -> Result<Vec<PulledReply>, StateError> {
        let now = self.clock.now();
        let mut msgs = self.messages.lock();
        let mut out = Vec::new();
        let mut answered = Vec::new();
        let mut taken = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in message_ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            let Some(ins) = msgs.by_id.get(id) else {
                out.push(PulledReply::Generated(message_unavailable(id, now)));
                continue;
            };
            if expired(&ins.meta, now) {
                msgs.delete(id);
                out.push(PulledReply::Generated(message_unavailable(id, now)));
                continue;
            }
            // Is the destination alive? Lock order: messages, then nodes.
            let online_until = {
                let nodes = self.nodes.read();
                nodes
                    .by_id
                    .get(&ins.meta.dst_node_id)
                    .filter(|n| n.status != NodeStatus::Unregistered)
                    .and_then(|n| n.online_until)
            };
            if online_until.is_none_or(|t| t < now) {
                out.push(PulledReply::Generated(error_reply_for(
                    &ins.meta,
                    error_code::NODE_UNAVAILABLE,
                    now,
                )));
                answered.push(id.clone());
                continue;
            }
            if let Some((reply, _)) = &ins.reply {
                if reply.created_at + reply.ttl < now {
                    out.push(PulledReply::Generated(error_reply_for(
                        &ins.meta,
                        error_code::REPLY_MESSAGE_UNAVAILABLE,
                        now,
                    )));
                    answered.push(id.clone());
                } else {
                    out.push(PulledReply::Stored(reply.clone()));
                    taken.push(id.clone());
                }
            }
        }
        for id in answered {
            msgs.delete(&id);
        }
        for id in taken {
            if let Some(Instruction {
                reply: Some((reply, taken)),
                ..
            }) = msgs.by_id.get_mut(&id)
            {
                *taken = true;
                let reply_id = reply.message_id.clone();
                msgs.taken.insert(reply_id, id);
            }
        }
        Ok(out)
    }

    async fn confirm_reply(&self, run_id: RunId, reply_id: &str) -> Result<(), StateError> {
        let mut msgs = self.messages.lock();
        let Some(ins_id) = msgs.taken.get(reply_id).cloned() else {
            return Ok(());
        };
        if msgs
            .by_id
            .get(&ins_id)
            .is_some_and(|i| i.meta.run_id == run_id)
        {
            msgs.delete(&ins_id);
        }
        Ok(())
    }

    async fn delete_messages(&self, message_ids: &[String]) -> Result<(), StateError> {
        let mut msgs = self.messages.lock();
        for id in message_ids {
            msgs.delete(id);
        }
        Ok(())
    }

    async fn delete_run_messages(&self, run_id: RunId) -> Result<(), StateError> {
        let mut msgs = self.messages.lock();
        let ids: Vec<String> = msgs
            .by_id
            .iter()
            .filter(|(_, i)| i.meta.run_id == run_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            msgs.delete(&id);
        }
        Ok(())
    }
}
