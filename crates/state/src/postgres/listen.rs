//! What a replica learns from the others, through PostgreSQL's `LISTEN`/`NOTIFY`: which nodes may
//! have queued instructions, which node keys were unregistered, which runs changed status or have
//! new log output or new replies.
//!
//! The hints answer the most frequent questions (an empty poll, a known key, a running run)
//! without a database round trip. They may say "maybe" for nothing, never "no" for something: they are
//! used only while the listener is connected and has rebuilt them since it connected
//! (notifications sent while it was away are lost), and a hint is only removed when no
//! notification for it arrived since the query that found nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use crate::{NodeId, RunId};

/// The notification channel.
pub(crate) const CHANNEL: &str = "flwr_events";

/// Payload prefixes: a queued instruction for a node, an unregistered node, new log output, a
/// run's new status (which also wakes its log streams: they end when it finishes), a reply or
/// an object stored for a run (which wakes its held ServerApp pulls).
pub(crate) const INSTRUCTION: char = 'i';
pub(crate) const UNREGISTERED: char = 'u';
pub(crate) const LOG: char = 'l';
pub(crate) const RUN_STATUS: char = 'r';
pub(crate) const ARRIVAL: char = 'a';

/// Keys remembered before the cache starts over (a bound on its memory).
const KEY_LIMIT: usize = 100_000;
/// Running runs remembered before the cache starts over.
const RUN_LIMIT: usize = 10_000;

/// Taken before a query whose answer may be remembered: what was current then.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    seq: u64,
    keys_gen: u64,
    runs_gen: u64,
}

/// The hints, shared by the engines and the listener task.
pub(crate) struct Hints {
    /// Connected, and rebuilt since.
    live: AtomicBool,
    /// Bumped on every notification received.
    seq: AtomicU64,
    /// Nodes that may have queued instructions, with the `seq` of their latest notification.
    queued: Mutex<HashMap<NodeId, u64>>,
    /// Keys of registered nodes.
    keys: RwLock<HashMap<Vec<u8>, NodeId>>,
    /// Bumped on every unregistration.
    keys_gen: AtomicU64,
    /// Runs known to be running, with their ServerApp token's deadline (`None`: no token).
    running: Mutex<HashMap<RunId, Option<f64>>>,
    /// Bumped on every change of a run's status.
    runs_gen: AtomicU64,
    /// Runs with new log output.
    logs: broadcast::Sender<RunId>,
    /// Runs with new replies or objects; `None` after a reconnection (some may have been
    /// missed).
    arrivals: broadcast::Sender<Option<RunId>>,
    /// The bells of the nodes whose Fleet pulls wait in this process.
    doorbells: std::sync::OnceLock<Arc<crate::Doorbells>>,
}

impl Default for Hints {
    fn default() -> Self {
        Self {
            live: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            queued: Mutex::new(HashMap::new()),
            keys: RwLock::new(HashMap::new()),
            keys_gen: AtomicU64::new(0),
            running: Mutex::new(HashMap::new()),
            runs_gen: AtomicU64::new(0),
            logs: broadcast::channel(1024).0,
            arrivals: broadcast::channel(1024).0,
            doorbells: std::sync::OnceLock::new(),
        }
    }
}

impl Hints {
    fn live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Rings these bells from now on (the first bells given stay).
    pub(crate) fn attach_doorbells(&self, bells: Arc<crate::Doorbells>) {
        let _ = self.doorbells.set(bells);
    }

    fn ring(&self, node: NodeId) {
        if let Some(b) = self.doorbells.get() {
            b.ring(node);
        }
    }

    fn ring_all(&self) {
        if let Some(b) = self.doorbells.get() {
            b.ring_all();
        }
    }

    /// The notifications stopped: waiters can no longer count on them and look for themselves.
    fn went_deaf(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.ring_all();
    }

    /// False only when `node` certainly has no queued instruction.
    pub(crate) fn may_have_instruction(&self, node: NodeId) -> bool {
        !self.live() || self.queued.lock().contains_key(&node)
    }

    /// A mark to take before a query whose answer may change the hints.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            seq: self.seq.load(Ordering::SeqCst),
            keys_gen: self.keys_gen.load(Ordering::SeqCst),
            runs_gen: self.runs_gen.load(Ordering::SeqCst),
        }
    }

    /// A pull found nothing for `node`: forget its hint, unless a notification came since `mark`.
    pub(crate) fn found_nothing(&self, node: NodeId, mark: Mark) {
        let mut queued = self.queued.lock();
        if queued.get(&node).is_some_and(|seq| *seq <= mark.seq) {
            queued.remove(&node);
        }
    }

    /// An instruction for `node` was committed through this replica.
    pub(crate) fn queued_here(&self, node: NodeId) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.queued.lock().insert(node, seq);
        self.ring(node);
    }

    /// `node` was unregistered (through this replica or another): its key no longer names it.
    pub(crate) fn forget_node(&self, node: NodeId) {
        let mut keys = self.keys.write();
        self.keys_gen.fetch_add(1, Ordering::SeqCst);
        keys.retain(|_, n| *n != node);
    }

    /// The node of a key, if known here.
    pub(crate) fn node_of_key(&self, key: &[u8]) -> Option<NodeId> {
        if !self.live() {
            return None;
        }
        self.keys.read().get(key).copied()
    }

    /// Remembers a key's node, unless an unregistration came since `mark`.
    pub(crate) fn remember_key(&self, key: &[u8], node: NodeId, mark: Mark) {
        if !self.live() {
            return;
        }
        let mut keys = self.keys.write();
        if self.keys_gen.load(Ordering::SeqCst) != mark.keys_gen {
            return;
        }
        if keys.len() >= KEY_LIMIT {
            keys.clear();
        }
        keys.insert(key.to_vec(), node);
    }

    /// True only when `run` is certainly running at `now`: read as running since the last change
    /// of any run's status, and its ServerApp token (if any) not past its deadline.
    pub(crate) fn is_running(&self, run: RunId, now: f64) -> bool {
        self.live()
            && self
                .running
                .lock()
                .get(&run)
                .is_some_and(|until| until.is_none_or(|u| u >= now))
    }

    /// Remembers a run read as running, unless a run changed status since `mark`.
    pub(crate) fn remember_running(&self, run: RunId, token_until: Option<f64>, mark: Mark) {
        if !self.live() {
            return;
        }
        let mut running = self.running.lock();
        if self.runs_gen.load(Ordering::SeqCst) != mark.runs_gen {
            return;
        }
        if running.len() >= RUN_LIMIT {
            running.clear();
        }
        running.insert(run, token_until);
    }

    /// `run` changed status (through this replica or another).
    pub(crate) fn forget_run(&self, run: RunId) {
        let mut running = self.running.lock();
        self.runs_gen.fetch_add(1, Ordering::SeqCst);
        running.remove(&run);
    }

    /// Log events, while they are delivered.
    pub(crate) fn log_events(&self) -> Option<broadcast::Receiver<RunId>> {
        self.live().then(|| self.logs.subscribe())
    }

    /// Reply and object arrivals, while they are delivered.
    pub(crate) fn arrival_events(&self) -> Option<broadcast::Receiver<Option<RunId>>> {
        self.live().then(|| self.arrivals.subscribe())
    }

    fn apply(&self, payload: &str) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut chars = payload.chars();
        let kind = chars.next();
        // Ids come as Rust wrote them (u64), or as the database holds them (i64, from SQL).
        let text = chars.as_str();
        let Some(id) = text
            .parse::<u64>()
            .ok()
            .or_else(|| text.parse::<i64>().ok().map(|v| v as u64))
        else {
            return;
        };
        match kind {
            Some(INSTRUCTION) => {
                self.queued.lock().insert(id, seq);
                self.ring(id);
            }
            Some(UNREGISTERED) => self.forget_node(id),
            Some(RUN_STATUS) => {
                self.forget_run(id);
                let _ = self.logs.send(id);
            }
            Some(LOG) => {
                let _ = self.logs.send(id);
            }
            Some(ARRIVAL) => {
                let _ = self.arrivals.send(Some(id));
            }
            _ => {}
        }
    }

    /// Starts over from what the database holds (after a (re)connection).
    fn rebuild(&self, queued: Vec<NodeId>) {
        let seq = self.seq.load(Ordering::SeqCst);
        {
            let mut keys = self.keys.write();
            self.keys_gen.fetch_add(1, Ordering::SeqCst);
            keys.clear();
        }
        {
            let mut running = self.running.lock();
            self.runs_gen.fetch_add(1, Ordering::SeqCst);
            running.clear();
        }
        *self.queued.lock() = queued.into_iter().map(|n| (n, seq)).collect();
        self.live.store(true, Ordering::SeqCst);
        // Waiters that subscribed before the connection broke missed what came meanwhile.
        let _ = self.arrivals.send(None);
        self.ring_all();
    }
}

/// Keeps a `LISTEN` connection open (reconnecting after a second when it breaks) and applies the
/// notifications to `hints`. Runs until aborted.
pub(crate) async fn run<T>(config: tokio_postgres::Config, tls: T, hints: Arc<Hints>, name: String)
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Send + 'static,
    T::Stream: Send + 'static,
{
    let mut was_live = false;
    loop {
        match listen_once(&config, tls.clone(), &hints).await {
            Ok(()) => {}
            Err(e) if was_live || hints.live() => {
                tracing::warn!(
                    "{name}: notifications from the other replicas stopped ({e}); reconnecting"
                );
            }
            Err(e) => tracing::debug!("{name}: cannot listen for notifications yet: {e}"),
        }
        was_live = hints.live();
        hints.went_deaf();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    hints: &Hints,
) -> Result<(), tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Send,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The connection does the I/O; notifications come out of it in order.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let result = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        // Listening first, then reading: nothing committed in between is missed.
        let rows = client
            .query(
                "SELECT DISTINCT dst_node_id FROM message_ins WHERE NOT delivered OR NOT confirmed",
                &[],
            )
            .await?;
        hints.rebuild(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect());
        while let Some(payload) = rx.recv().await {
            hints.apply(&payload);
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_never_say_no_for_something() {
        let h = Hints::default();
        assert!(h.may_have_instruction(7), "not live: maybe");
        h.rebuild(vec![7]);
        assert!(h.may_have_instruction(7) && !h.may_have_instruction(8));
        // A pull that started before a notification must not clear it.
        let mark = h.mark();
        h.apply("i7");
        h.found_nothing(7, mark);
        assert!(h.may_have_instruction(7));
        let mark = h.mark();
        h.found_nothing(7, mark);
        assert!(!h.may_have_instruction(7));
        // Stored here: "maybe" at once, and a pull that started before does not clear it.
        let mark = h.mark();
        h.queued_here(7);
        h.found_nothing(7, mark);
        assert!(h.may_have_instruction(7));
        // Keys: an unregistration between the query and the insert wins.
        let mark = h.mark();
        h.apply("u5");
        h.remember_key(b"k", 5, mark);
        assert_eq!(h.node_of_key(b"k"), None);
        let mark = h.mark();
        h.remember_key(b"k", 5, mark);
        assert_eq!(h.node_of_key(b"k"), Some(5));
        h.apply("u5");
        assert_eq!(h.node_of_key(b"k"), None);
        // Runs: a status change between the read and the insert wins; a token's deadline ends it.
        let mark = h.mark();
        h.apply("r3");
        h.remember_running(3, None, mark);
        assert!(!h.is_running(3, 0.0));
        let mark = h.mark();
        h.remember_running(3, Some(100.0), mark);
        assert!(h.is_running(3, 100.0) && !h.is_running(3, 100.5));
        h.apply("r3");
        assert!(!h.is_running(3, 0.0));
        let mark = h.mark();
        h.remember_running(3, None, mark);
        h.rebuild(vec![]);
        assert!(
            !h.is_running(3, 0.0),
            "a reconnection forgets what it may have missed"
        );
        // Arrivals: ids as Rust writes them and as the database holds them (run ids past
        // i64::MAX are negative there); a reconnection says that some may have been missed.
        let mut arrivals = h.arrival_events().expect("live");
        h.apply("a18446744073709551615");
        h.apply("a-1");
        h.apply("a12");
        h.rebuild(vec![]);
        let got: Vec<Option<RunId>> = (0..4).map(|_| arrivals.try_recv().unwrap()).collect();
        assert_eq!(got, vec![Some(u64::MAX), Some(u64::MAX), Some(12), None]);
    }
}
