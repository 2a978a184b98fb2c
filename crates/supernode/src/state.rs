//! What a SuperNode keeps while it works: runs it has seen (run, FAB, ClientApp context),
//! instructions waiting for a ClientApp, their replies, and the ClientApps' tokens. Objects live
//! in a [`MemoryObjectStore`]. Runs and contexts are kept as the encoded protobuf the ClientApp
//! gets back; this module never looks inside them.
//!
//! Flower's ClientAppIo rules: one token per run, 256 hex characters, valid 30 s and extended to
//! 60 s by each app heartbeat; a run is "to launch" while it has an instruction no ClientApp took
//! and no token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flwr_objects::message::MessageMeta;
use flwr_objects::store::MemoryObjectStore;
use flwr_objects::ObjectTree;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A token's first life.
pub const TOKEN_TTL: Duration = Duration::from_secs(30);
/// What an app heartbeat extends a token to.
pub const TOKEN_HEARTBEAT_TTL: Duration = Duration::from_secs(60);

/// A run as the node caches it.
#[derive(Clone, Debug)]
pub struct RunEntry {
    /// Encoded `flwr.proto.Run`.
    pub run: Bytes,
    /// The FAB.
    pub fab: Bytes,
    /// Its hash.
    pub fab_hash: String,
    /// Encoded `flwr.proto.Context` of this node for the run (state persists between messages).
    pub context: Bytes,
}

#[derive(Debug)]
struct Instruction {
    meta: MessageMeta,
    tree: ObjectTree,
    retrieved: bool,
    started: Option<Instant>,
    finished: Option<Instant>,
    reply: Option<(MessageMeta, ObjectTree)>,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<u64, RunEntry>,
    /// In arrival order.
    instructions: Vec<Instruction>,
    tokens: HashMap<String, (u64, Instant)>,
    token_of_run: HashMap<u64, String>,
}

/// Why a ClientAppIo call is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// Unknown or expired token.
    #[error("Invalid token.")]
    InvalidToken,
    /// No FAB for the run.
    #[error("No FAB found for the run.")]
    NoFab,
    /// No instruction left for the run.
    #[error("list index out of range")]
    NoMessage,
    /// The reply does not answer a known instruction.
    #[error("the reply does not answer an instruction of this node")]
    UnknownInstruction,
}

/// The node's state; cheap to share.
#[derive(Clone)]
pub struct NodeState {
    inner: Arc<Mutex<Inner>>,
    objects: Arc<MemoryObjectStore>,
    changed: Arc<Notify>,
}

impl Default for NodeState {
    fn default() -> Self {
        Self::new()
    }
}

fn new_token() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 128];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        let dead: Vec<(String, u64)> = self
            .tokens
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(t, (r, _))| (t.clone(), *r))
            .collect();
        for (t, r) in dead {
            self.tokens.remove(&t);
            if self.token_of_run.get(&r) == Some(&t) {
                self.token_of_run.remove(&r);
            }
        }
    }

    fn run_of(&mut self, token: &str) -> Result<u64, AppError> {
        self.expire(Instant::now());
        self.tokens
            .get(token)
            .map(|(r, _)| *r)
            .ok_or(AppError::InvalidToken)
    }
}

impl NodeState {
    /// An empty state.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            objects: Arc::new(MemoryObjectStore::new()),
            changed: Arc::new(Notify::new()),
        }
    }

    /// The object store.
    pub fn objects(&self) -> &Arc<MemoryObjectStore> {
        &self.objects
    }

    /// Resolves when a reply, an output or a token changes.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Caches a run.
    pub fn add_run(&self, run_id: u64, entry: RunEntry) {
        self.inner.lock().runs.insert(run_id, entry);
    }

    /// The cached run, if any.
    pub fn run(&self, run_id: u64) -> Option<RunEntry> {
        self.inner.lock().runs.get(&run_id).cloned()
    }

    /// Makes an instruction available to ClientApps.
    pub fn add_instruction(&self, meta: MessageMeta, tree: ObjectTree) {
        self.inner.lock().instructions.push(Instruction {
            meta,
            tree,
            retrieved: false,
            started: None,
            finished: None,
            reply: None,
        });
        self.changed.notify_waiters();
    }

    /// Runs with an instruction no ClientApp took, and no token.
    pub fn runs_to_launch(&self) -> Vec<u64> {
        let mut inner = self.inner.lock();
        inner.expire(Instant::now());
        let mut out: Vec<u64> = Vec::new();
        for i in &inner.instructions {
            if !i.retrieved
                && !inner.token_of_run.contains_key(&i.meta.run_id)
                && !out.contains(&i.meta.run_id)
            {
                out.push(i.meta.run_id);
            }
        }
        out
    }

    /// A token for the run, or `None` if it has one.
    pub fn create_token(&self, run_id: u64) -> Option<String> {
        let mut inner = self.inner.lock();
        inner.expire(Instant::now());
        if inner.token_of_run.contains_key(&run_id) {
            return None;
        }
        let t = new_token();
        inner
            .tokens
            .insert(t.clone(), (run_id, Instant::now() + TOKEN_TTL));
        inner.token_of_run.insert(run_id, t.clone());
        Some(t)
    }

    /// The run of a live token, or [`AppError::InvalidToken`].
    pub fn run_of_token(&self, token: &str) -> Result<u64, AppError> {
        self.inner.lock().run_of(token)
    }

    /// True while the run has a live token.
    pub fn has_token(&self, run_id: u64) -> bool {
        let mut inner = self.inner.lock();
        inner.expire(Instant::now());
        inner.token_of_run.contains_key(&run_id)
    }

    /// An app heartbeat: true if the token lives (and now lives 60 s more).
    pub fn app_heartbeat(&self, token: &str) -> bool {
        let mut inner = self.inner.lock();
        inner.expire(Instant::now());
        match inner.tokens.get_mut(token) {
            Some((_, until)) => {
                *until = Instant::now() + TOKEN_HEARTBEAT_TTL;
                true
            }
            None => false,
        }
    }

    /// The run, FAB and context a ClientApp starts with.
    pub fn app_inputs(&self, token: &str) -> Result<(u64, RunEntry), AppError> {
        let mut inner = self.inner.lock();
        let run_id = inner.run_of(token)?;
        inner
            .runs
            .get(&run_id)
            .cloned()
            .map(|e| (run_id, e))
            .ok_or(AppError::NoFab)
    }

    /// The next instruction of the token's run; it is now taken.
    pub fn take_instruction(&self, token: &str) -> Result<(MessageMeta, ObjectTree), AppError> {
        let mut inner = self.inner.lock();
        let run_id = inner.run_of(token)?;
        let ins = inner
            .instructions
            .iter_mut()
            .find(|i| i.meta.run_id == run_id && !i.retrieved)
            .ok_or(AppError::NoMessage)?;
        ins.retrieved = true;
        ins.started = Some(Instant::now());
        Ok((ins.meta.clone(), ins.tree.clone()))
    }

    /// Stores a ClientApp's reply to one of its run's instructions.
    pub fn put_reply(
        &self,
        token: &str,
        reply: MessageMeta,
        tree: ObjectTree,
    ) -> Result<(), AppError> {
        {
            let mut inner = self.inner.lock();
            inner.run_of(token)?;
            let ins = inner
                .instructions
                .iter_mut()
                .find(|i| i.meta.message_id == reply.reply_to_message_id)
                .ok_or(AppError::UnknownInstruction)?;
            ins.finished = Some(Instant::now());
            ins.reply = Some((reply, tree));
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Stores the context a ClientApp leaves for the next message of the run, and ends its token.
    pub fn put_outputs(&self, token: &str, run_id: u64, context: Bytes) -> Result<(), AppError> {
        {
            let mut inner = self.inner.lock();
            let token_run = inner.run_of(token)?;
            let target = if inner.runs.contains_key(&run_id) {
                run_id
            } else {
                token_run
            };
            if let Some(e) = inner.runs.get_mut(&target) {
                e.context = context;
            }
            inner.tokens.remove(token);
            inner.token_of_run.remove(&token_run);
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// The reply to an instruction, once a ClientApp pushed it, with the ClientApp's runtime.
    pub fn reply_to(&self, instruction_id: &str) -> Option<(MessageMeta, ObjectTree, f64)> {
        let inner = self.inner.lock();
        let ins = inner
            .instructions
            .iter()
            .find(|i| i.meta.message_id == instruction_id)?;
        let (meta, tree) = ins.reply.clone()?;
        let runtime = match (ins.started, ins.finished) {
            (Some(s), Some(f)) => f.duration_since(s).as_secs_f64(),
            _ => 0.0,
        };
        Some((meta, tree, runtime))
    }

    /// Forgets an instruction (and its reply).
    pub fn remove_instruction(&self, instruction_id: &str) {
        self.inner
            .lock()
            .instructions
            .retain(|i| i.meta.message_id != instruction_id);
    }

    /// Ends a run's token (its ClientApp is gone).
    pub fn end_token(&self, run_id: u64) {
        let mut inner = self.inner.lock();
        if let Some(t) = inner.token_of_run.remove(&run_id) {
            inner.tokens.remove(&t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flwr_objects::ObjectId;

    fn meta(run: u64, id: &str) -> MessageMeta {
        MessageMeta {
            run_id: run,
            message_id: id.into(),
            src_node_id: 1,
            dst_node_id: 9,
            reply_to_message_id: String::new(),
            group_id: String::new(),
            ttl: 60.0,
            message_type: "train".into(),
            created_at: 0.0,
            error: None,
            has_content: true,
        }
    }

    #[test]
    fn clientappio_flow() {
        let s = NodeState::new();
        let tree = ObjectTree::leaf(ObjectId::of(b"m"));
        s.add_run(
            7,
            RunEntry {
                run: Bytes::new(),
                fab: Bytes::from_static(b"fab"),
                fab_hash: "h".into(),
                context: Bytes::new(),
            },
        );
        s.add_instruction(meta(7, "m1"), tree.clone());
        assert_eq!(s.runs_to_launch(), vec![7]);
        let token = s.create_token(7).unwrap();
        assert_eq!(token.len(), 256);
        assert_eq!(s.create_token(7), None, "one token per run");
        assert!(
            s.runs_to_launch().is_empty(),
            "a run with a token is not launched again"
        );
        assert_eq!(s.app_inputs("nope").unwrap_err(), AppError::InvalidToken);
        assert_eq!(
            s.app_inputs(&token).unwrap().1.fab,
            Bytes::from_static(b"fab")
        );
        assert_eq!(s.take_instruction(&token).unwrap().0.message_id, "m1");
        assert_eq!(s.take_instruction(&token).unwrap_err(), AppError::NoMessage);
        let mut reply = meta(7, "r1");
        reply.reply_to_message_id = "m1".into();
        s.put_reply(&token, reply, tree).unwrap();
        assert!(s.reply_to("m1").is_some());
        assert!(s.app_heartbeat(&token));
        s.put_outputs(&token, 7, Bytes::from_static(b"ctx"))
            .unwrap();
        assert!(!s.app_heartbeat(&token), "outputs end the token");
        assert_eq!(s.run(7).unwrap().context, Bytes::from_static(b"ctx"));
        s.remove_instruction("m1");
        assert!(s.reply_to("m1").is_none());
    }
}
