//! The SQLite engine (`--database PATH`): the same semantics as the in-memory engine, persisted.
//! Runs, logs, nodes, tokens, messages, FAB metadata (in the FAB store) and objects survive a
//! restart.
//!
//! WAL journal, `synchronous=NORMAL`. The state and the object store use two connections to the
//! same file, so that reading either never waits for the other. SQLite lets one connection write
//! at a time and makes the others sleep and retry (milliseconds) when they collide; the two take
//! turns on a shared [`Writer`] lock instead, which hands over at once. Every method is one
//! transaction: a failure (a full disk) rolls back and loses nothing stored. u64 ids are stored
//! bit-cast to SQLite's signed integers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use flwr_objects::message::{error_code, MessageError, MessageMeta, SUPERLINK_NODE_ID};
use flwr_objects::store::{Lookup, StoreError};
use flwr_objects::{ObjectId, ObjectTree};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::*;
use crate::clock::Clock;
use crate::codec::{decode_config, encode_config};
use crate::lane::Lane;
use crate::memory::{error_reply_for, message_unavailable, random_id, random_token};
use crate::reads::{ReadBuffers, RecentReads};

/// The schema version this build writes (`PRAGMA user_version`). Version 2 moved objects'
/// bytes out of `object` into `object_content`; a file of version 1 is moved on when opened.
const SCHEMA_VERSION: i64 = 2;

/// Keys remembered by the node-key hint before it starts over (a bound on its memory).
const KEY_HINT_LIMIT: usize = 100_000;

const STATE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS node (
    node_id INTEGER PRIMARY KEY,
    owner_aid TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    status TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_activated_at REAL,
    last_deactivated_at REAL,
    unregistered_at REAL,
    online_until REAL,
    heartbeat_interval REAL NOT NULL,
    public_key BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS run (
    run_id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    fab_id TEXT NOT NULL,
    fab_version TEXT NOT NULL,
    fab_hash TEXT NOT NULL,
    override_config BLOB NOT NULL,
    pending_at REAL,
    starting_at REAL,
    running_at REAL,
    finished_at REAL,
    status TEXT NOT NULL,
    sub_status TEXT NOT NULL,
    details TEXT NOT NULL,
    flwr_aid TEXT NOT NULL,
    federation TEXT NOT NULL,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    bytes_recv INTEGER NOT NULL DEFAULT 0,
    clientapp_runtime REAL NOT NULL DEFAULT 0,
    run_type TEXT NOT NULL,
    federation_config BLOB,
    context BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS federation (
    name TEXT PRIMARY KEY,
    simulation_config BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS token (
    token TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL UNIQUE,
    active_until REAL NOT NULL,
    launcher TEXT
);
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_run ON log (run_id, ts);
CREATE TABLE IF NOT EXISTS message_ins (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    delivered INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER NOT NULL,
    src_node_id INTEGER NOT NULL,
    dst_node_id INTEGER NOT NULL,
    reply_to TEXT NOT NULL,
    group_id TEXT NOT NULL,
    ttl REAL NOT NULL,
    message_type TEXT NOT NULL,
    created_at REAL NOT NULL,
    error_code INTEGER,
    error_reason TEXT,
    has_content INTEGER NOT NULL,
    delivered_at REAL,
    confirmed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS message_ins_queue ON message_ins (dst_node_id, delivered, seq);
CREATE INDEX IF NOT EXISTS message_ins_run ON message_ins (run_id);
CREATE TABLE IF NOT EXISTS message_res (
    ins_id TEXT PRIMARY KEY,
    delivered INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    src_node_id INTEGER NOT NULL,
    dst_node_id INTEGER NOT NULL,
    reply_to TEXT NOT NULL,
    group_id TEXT NOT NULL,
    ttl REAL NOT NULL,
    message_type TEXT NOT NULL,
    created_at REAL NOT NULL,
    error_code INTEGER,
    error_reason TEXT,
    has_content INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS message_res_by_id ON message_res (message_id);
"#;

const OBJECT_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS object (
    object_id BLOB PRIMARY KEY,
    children BLOB NOT NULL,
    ref_count INTEGER NOT NULL
);
-- An object's bytes once pushed, in parts of at most a mebibyte (a registered object without a
-- part here is pending; an empty one has one empty part). A table of their own, so that no
-- statement ever holds a whole large object in memory and a reference count's update never
-- rewrites the bytes.
CREATE TABLE IF NOT EXISTS object_content (
    object_id BLOB NOT NULL,
    part INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (object_id, part)
);
CREATE TABLE IF NOT EXISTS object_run (
    object_id BLOB NOT NULL,
    run_id INTEGER NOT NULL,
    PRIMARY KEY (object_id, run_id)
);
CREATE INDEX IF NOT EXISTS object_run_by_run ON object_run (run_id);
"#;

fn backend(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |e| {
        let hint = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => {
                " (the disk is full: free space; nothing was lost)"
            }
            Some(rusqlite::ErrorCode::ReadOnly) => {
                " (the database is read-only: check its permissions)"
            }
            Some(rusqlite::ErrorCode::DatabaseBusy) => {
                " (the database is busy: is another SuperLink using it?)"
            }
            _ => "",
        };
        StateError::Database {
            target: path.display().to_string(),
            detail: format!("{e}{hint}"),
            source: Box::new(e),
        }
    }
}

/// Columns added to tables of schema version 1 since it was first written, as (table, column,
/// definition). A file written before them gets them when it is opened; builds that predate them
/// never name them, so they keep working on the same file.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("message_ins", "delivered_at", "REAL"),
    ("message_ins", "confirmed", "INTEGER NOT NULL DEFAULT 0"),
    ("token", "launcher", "TEXT"),
];

fn add_missing_columns(conn: &Connection, columns: &[(&str, &str, &str)]) -> rusqlite::Result<()> {
    for (table, column, definition) in columns {
        if !has_column(conn, table, column)? {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
        params![column],
        |r| r.get(0),
    )
}

/// Schema version 1 kept objects' bytes in `object.content`: they move to `object_content`, in
/// parts, one object in memory at a time. The file's freed pages are reused by later objects.
fn move_object_contents(conn: &Connection) -> rusqlite::Result<()> {
    if !has_column(conn, "object", "content")? {
        return Ok(());
    }
    let ids: Vec<Vec<u8>> = conn
        .prepare("SELECT object_id FROM object WHERE content IS NOT NULL")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    {
        let mut content = conn.prepare("SELECT content FROM object WHERE object_id = ?1")?;
        for id in ids {
            let bytes: Vec<u8> = content.query_row(params![id], |r| r.get(0))?;
            insert_parts(conn, &id, &bytes)?;
        }
    }
    conn.execute_batch("ALTER TABLE object DROP COLUMN content")
}

/// Stores an object's bytes as its parts (an empty object as one empty part).
fn insert_parts(conn: &Connection, key: &[u8], content: &[u8]) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO object_content (object_id, part, bytes) VALUES (?1, ?2, ?3)",
    )?;
    if content.is_empty() {
        insert.execute(params![key, 0, content])?;
    }
    for (part, bytes) in content.chunks(CONTENT_PART).enumerate() {
        insert.execute(params![key, part as i64, bytes])?;
    }
    Ok(())
}

fn open_connection(path: &Path) -> Result<Connection, StateError> {
    let err = backend(path);
    let conn = Connection::open(path).map_err(&err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(&err)?;
    // Every statement is prepared once per connection (`prepare_cached`); keep them all.
    conn.set_prepared_statement_cache_capacity(128);
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(&err)?;
    Ok(conn)
}

/// Creates the tables, or brings those of an older version up to this one, in one transaction
/// that holds the write lock (two processes opening one old file do not both move it on).
fn prepare_schema(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let err = backend(path);
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(&err)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&err)?;
    if !(0..=SCHEMA_VERSION).contains(&version) {
        return Err(StateError::SchemaVersion {
            target: path.display().to_string(),
            found: version,
            fix: format!(
                "this SuperLink knows versions up to {SCHEMA_VERSION}: upgrade this SuperLink, \
                 or use a new --database file"
            ),
        });
    }
    tx.execute_batch(STATE_SCHEMA).map_err(&err)?;
    tx.execute_batch(OBJECT_SCHEMA).map_err(&err)?;
    add_missing_columns(&tx, ADDED_COLUMNS).map_err(&err)?;
    move_object_contents(&tx).map_err(&err)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(&err)?;
    tx.commit().map_err(&err)
}

/// Opens (or creates) the database: the state engine and the object store engine, each on a
/// connection of its own served by its own lane. Blocking: call it off the async threads.
pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Stores, StateError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StateError::File {
            path: dir.to_path_buf(),
            action: "cannot create the directory",
            source,
        })?;
    }
    let state = open_connection(path)?;
    prepare_schema(&state, path)?;
    // Its own database when the path is `:memory:`.
    let objects = open_connection(path)?;
    prepare_schema(&objects, path)?;
    let writer = Writer::default();
    let hints = Hints::default();
    {
        let queued = state
            .prepare(
                "SELECT DISTINCT dst_node_id FROM message_ins WHERE delivered = 0 OR confirmed = 0",
            )
            .and_then(|mut q| {
                q.query_map([], |r| r.get::<_, i64>(0))?
                    .map(|r| r.map(|v| v as NodeId))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(backend(path))?;
        hints.queued.write().extend(queued);
    }
    let lane = |name| {
        Lane::start(name).map_err(|e| StateError::Worker {
            what: "cannot start a thread of the SQLite engine",
            source: Box::new(e),
        })
    };
    Ok(Stores {
        state: Arc::new(SqliteLinkState {
            db: Arc::new(StateDb {
                conn: Mutex::new(state),
                clock,
                path: path.to_path_buf(),
                hints,
                writer: writer.clone(),
            }),
            lane: lane("state-db")?,
        }),
        objects: Arc::new(SqliteObjects {
            db: Arc::new(ObjectDb {
                conn: Mutex::new(objects),
                path: path.to_path_buf(),
                writer,
            }),
            lane: lane("object-db")?,
            reads: RecentReads::default(),
            buffers: Arc::default(),
        }),
        fabs: None,
    })
}

/// The SQLite state engine: every call runs on the lane of its connection.
pub struct SqliteLinkState {
    db: Arc<StateDb>,
    lane: Lane,
}

/// Runs `f` with `db` on `lane` and waits for it without blocking the caller's thread.
async fn on_lane<D, R, E, F>(lane: &Lane, db: &Arc<D>, f: F) -> Result<R, E>
where
    D: Send + Sync + 'static,
    R: Send + 'static,
    E: Send + From<crate::lane::LaneClosed> + 'static,
    F: FnOnce(&D) -> Result<R, E> + Send + 'static,
{
    let db = db.clone();
    let started = std::time::Instant::now();
    let result = lane.run(move || f(&db)).await?;
    crate::record_call("sqlite", started, result.is_ok());
    result
}

impl From<crate::lane::LaneClosed> for StateError {
    fn from(e: crate::lane::LaneClosed) -> Self {
        StateError::Worker {
            what: "the SQLite engine",
            source: Box::new(e),
        }
    }
}

impl From<crate::lane::LaneClosed> for StoreError {
    fn from(e: crate::lane::LaneClosed) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

impl SqliteLinkState {
    async fn on_lane<R, F>(&self, f: F) -> Result<R, StateError>
    where
        R: Send + 'static,
        F: FnOnce(&StateDb) -> Result<R, StateError> + Send + 'static,
    {
        on_lane(&self.lane, &self.db, f).await
    }
}

#[async_trait::async_trait]
impl LinkState for SqliteLinkState {
    /// Written by one SuperLink process (the file is not shared by replicas) only.
    fn arrivals_elsewhere(&self) -> crate::Arrivals {
        crate::Arrivals::NoneElsewhere
    }
    async fn create_node(&self, node: NewNode) -> Result<NodeId, StateError> {
        self.on_lane(move |db| db.create_node(node)).await
    }
    async fn node_id_by_public_key(&self, public_key: &[u8]) -> Result<Option<NodeId>, StateError> {
        let key = public_key.to_vec();
        self.on_lane(move |db| db.node_id_by_public_key(&key)).await
    }
    fn cached_node_id(&self, public_key: &[u8]) -> Option<NodeId> {
        self.db.cached_node_id(public_key)
    }
    async fn activate_node(
        &self,
        public_key: &[u8],
        heartbeat_interval: f64,
    ) -> Result<Result<NodeId, NodeRefusal>, StateError> {
        let key = public_key.to_vec();
        self.on_lane(move |db| db.activate_node(&key, heartbeat_interval))
            .await
    }
    async fn deactivate_node(
        &self,
        node_id: NodeId,
    ) -> Result<Result<(), NodeRefusal>, StateError> {
        self.on_lane(move |db| db.deactivate_node(node_id)).await
    }
    async fn unregister_node(
        &self,
        node_id: NodeId,
        owner_aid: Option<&str>,
    ) -> Result<Result<(), NodeRefusal>, StateError> {
        let owner = owner_aid.map(str::to_owned);
        self.on_lane(move |db| db.unregister_node(node_id, owner.as_deref()))
            .await
    }
    async fn heartbeat(
        &self,
        node_id: NodeId,
        heartbeat_interval: f64,
    ) -> Result<bool, StateError> {
        self.on_lane(move |db| db.heartbeat(node_id, heartbeat_interval))
            .await
    }
    async fn node(&self, node_id: NodeId) -> Result<Option<Node>, StateError> {
        self.on_lane(move |db| db.node(node_id)).await
    }
    async fn nodes_of(&self, owner_aid: &str) -> Result<Vec<Node>, StateError> {
        let owner = owner_aid.to_owned();
        self.on_lane(move |db| db.nodes_of(&owner)).await
    }
    async fn online_node_ids(&self) -> Result<Vec<NodeId>, StateError> {
        self.on_lane(|db| db.online_node_ids()).await
    }
    async fn census(&self) -> Result<Census, StateError> {
        self.on_lane(|db| db.census()).await
    }
    async fn create_run(&self, run: NewRun) -> Result<RunId, StateError> {
        self.on_lane(move |db| db.create_run(run)).await
    }
    async fn run(&self, run_id: RunId) -> Result<Option<Run>, StateError> {
        self.on_lane(move |db| db.run(run_id)).await
    }
    async fn runs_of(&self, flwr_aid: &str) -> Result<Vec<Run>, StateError> {
        let aid = flwr_aid.to_owned();
        self.on_lane(move |db| db.runs_of(&aid)).await
    }
    async fn pending_run_ids(&self) -> Result<Vec<RunId>, StateError> {
        self.on_lane(|db| db.pending_run_ids()).await
    }
    async fn update_run_status(
        &self,
        run_id: RunId,
        status: RunStatus,
    ) -> Result<bool, StateError> {
        self.on_lane(move |db| db.update_run_status(run_id, status))
            .await
    }
    async fn add_run_usage(
        &self,
        run_id: RunId,
        sent: u64,
        recv: u64,
        clientapp_runtime: f64,
    ) -> Result<(), StateError> {
        self.on_lane(move |db| db.add_run_usage(run_id, sent, recv, clientapp_runtime))
            .await
    }
    async fn context(&self, run_id: RunId) -> Result<Option<Bytes>, StateError> {
        self.on_lane(move |db| db.context(run_id)).await
    }
    async fn set_context(&self, run_id: RunId, context: Bytes) -> Result<(), StateError> {
        self.on_lane(move |db| db.set_context(run_id, context))
            .await
    }
    async fn simulation_config(&self, federation: &str) -> Result<Option<Bytes>, StateError> {
        let federation = federation.to_owned();
        self.on_lane(move |db| db.simulation_config(&federation))
            .await
    }
    async fn set_simulation_config(
        &self,
        federation: &str,
        config: Bytes,
    ) -> Result<(), StateError> {
        let federation = federation.to_owned();
        self.on_lane(move |db| db.set_simulation_config(&federation, config))
            .await
    }
    async fn claim_run(
        &self,
        run_id: RunId,
        launcher: Option<&str>,
    ) -> Result<Option<String>, StateError> {
        let launcher = launcher.map(str::to_owned);
        self.on_lane(move |db| db.claim_run(run_id, launcher.as_deref()))
            .await
    }
    async fn run_id_by_token(&self, token: &str) -> Result<Option<RunId>, StateError> {
        let token = token.to_owned();
        self.on_lane(move |db| db.run_id_by_token(&token)).await
    }
    async fn delete_token(&self, run_id: RunId) -> Result<(), StateError> {
        self.on_lane(move |db| db.delete_token(run_id)).await
    }
    async fn app_heartbeat(&self, token: &str) -> Result<bool, StateError> {
        let token = token.to_owned();
        self.on_lane(move |db| db.app_heartbeat(&token)).await
    }
    async fn add_log(&self, run_id: RunId, text: &str) -> Result<(), StateError> {
        let text = text.to_owned();
        self.on_lane(move |db| db.add_log(run_id, &text)).await
    }
    async fn logs_after(&self, run_id: RunId, after: f64) -> Result<(String, f64), StateError> {
        self.on_lane(move |db| db.logs_after(run_id, after)).await
    }
    async fn store_instruction(&self, message: MessageMeta) -> Result<Option<String>, StateError> {
        self.on_lane(move |db| db.store_instruction(message)).await
    }
    fn may_have_instruction(&self, node_id: NodeId) -> bool {
        self.db.may_have_instruction(node_id)
    }
    async fn pull_instruction(&self, node_id: NodeId) -> Result<Option<MessageMeta>, StateError> {
        self.on_lane(move |db| db.pull_instruction(node_id)).await
    }
    async fn confirm_instruction(
        &self,
        node_id: NodeId,
        message_id: &str,
    ) -> Result<(), StateError> {
        let message_id = message_id.to_owned();
        self.on_lane(move |db| db.confirm_instruction(node_id, &message_id))
            .await
    }
    async fn delivered_instructions(
        &self,
        node_id: NodeId,
        run_id: RunId,
    ) -> Result<Vec<String>, StateError> {
        self.on_lane(move |db| db.delivered_instructions(node_id, run_id))
            .await
    }
    async fn store_reply(
        &self,
        message: MessageMeta,
    ) -> Result<Result<String, ReplyRejected>, StateError> {
        self.on_lane(move |db| db.store_reply(message)).await
    }
    async fn take_replies(&self, message_ids: &[String]) -> Result<Vec<PulledReply>, StateError> {
        let ids = message_ids.to_vec();
        self.on_lane(move |db| db.take_replies(&ids)).await
    }
    async fn confirm_reply(&self, run_id: RunId, reply_id: &str) -> Result<(), StateError> {
        let reply_id = reply_id.to_owned();
        self.on_lane(move |db| db.confirm_reply(run_id, &reply_id))
            .await
    }
    async fn delete_messages(&self, message_ids: &[String]) -> Result<(), StateError> {
        let ids = message_ids.to_vec();
        self.on_lane(move |db| db.delete_messages(&ids)).await
    }
    async fn delete_run_messages(&self, run_id: RunId) -> Result<(), StateError> {
        self.on_lane(move |db| db.delete_run_messages(run_id)).await
    }
}

/// The SQLite object store engine: every call runs on the lane of its connection.
pub struct SqliteObjects {
    db: Arc<ObjectDb>,
    lane: Lane,
    /// Readers of one object at about the same time share one read of it.
    reads: RecentReads<ObjectId>,
    /// Buffers for the reads.
    buffers: Arc<ReadBuffers>,
}

impl SqliteObjects {
    async fn on_lane<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&ObjectDb) -> Result<R, StoreError> + Send + 'static,
    {
        on_lane(&self.lane, &self.db, f).await
    }
}

#[async_trait::async_trait]
impl ObjectStore for SqliteObjects {
    async fn preregister(
        &self,
        run_id: u64,
        tree: &ObjectTree,
    ) -> Result<Vec<ObjectId>, StoreError> {
        let tree = tree.clone();
        self.on_lane(move |db| db.preregister(run_id, &tree)).await
    }
    async fn put(&self, id: &ObjectId, content: Bytes) -> Result<bool, StoreError> {
        let id = *id;
        self.on_lane(move |db| db.put(&id, content)).await
    }
    async fn get(&self, id: &ObjectId) -> Result<Lookup, StoreError> {
        let id = *id;
        let slot = self.reads.slot(&id);
        let mut last = slot.lock(&self.buffers).await;
        if let Some(held) = last.shared() {
            // Only whether it is still stored is left to ask: other readers need not wait.
            drop(last);
            return Ok(match self.on_lane(move |db| db.stored(&id)).await? {
                None => Lookup::Unknown,
                Some(false) => Lookup::Pending,
                Some(true) => Lookup::Available(held),
            });
        }
        let buffers = self.buffers.clone();
        Ok(match self.on_lane(move |db| db.get(&id, &buffers)).await? {
            Found::Unknown => Lookup::Unknown,
            Found::Pending => Lookup::Pending,
            Found::Read(buf) => Lookup::Available(last.keep(buf)),
        })
    }
    async fn unavailable(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, StoreError> {
        let ids = ids.to_vec();
        self.on_lane(move |db| db.unavailable(&ids)).await
    }
    async fn delete(&self, id: &ObjectId) -> Result<(), StoreError> {
        let id = *id;
        self.on_lane(move |db| db.delete(&id)).await
    }
    async fn delete_objects_in_run(&self, run_id: u64) -> Result<(), StoreError> {
        self.on_lane(move |db| db.delete_objects_in_run(run_id))
            .await
    }
    async fn tree(&self, id: &ObjectId) -> Result<Option<ObjectTree>, StoreError> {
        let id = *id;
        self.on_lane(move |db| db.tree(&id)).await
    }
    async fn len(&self) -> Result<usize, StoreError> {
        self.on_lane(|db| db.len()).await
    }
    async fn content_bytes(&self) -> Result<u64, StoreError> {
        self.on_lane(|db| db.content_bytes()).await
    }
}

/// The state database: one connection, used on its lane's thread only.
pub struct StateDb {
    conn: Mutex<Connection>,
    clock: Arc<dyn Clock>,
    path: PathBuf,
    /// Memory of the database that lets the Fleet API's most frequent calls (a poll that finds
    /// nothing, signed by a known key) skip the database. Written only while `conn` is locked,
    /// in the same critical section as the rows they describe, so they never run behind.
    hints: Hints,
    writer: Writer,
}

/// The right to write, shared by this process's connections to one database file. Taken after
/// the connection's own lock, before `BEGIN IMMEDIATE`, and held until the commit.
#[derive(Clone, Default)]
struct Writer(Arc<Mutex<()>>);

#[derive(Default)]
struct Hints {
    /// Keys of registered (not unregistered) nodes seen so far. A key's node never changes and
    /// an unregistered key is never registered again, so an entry is only ever removed.
    keys: parking_lot::RwLock<std::collections::HashMap<Vec<u8>, NodeId>>,
    /// Nodes that may have undelivered instructions: a superset of the truth (added when an
    /// instruction is stored, removed when a pull finds none).
    queued: parking_lot::RwLock<std::collections::HashSet<NodeId>>,
}

const META_COLS: &str =
    "run_id, message_id, src_node_id, dst_node_id, reply_to, group_id, ttl, message_type, created_at, error_code, error_reason, has_content";

fn meta_from_row(r: &Row<'_>, o: usize) -> rusqlite::Result<MessageMeta> {
    let code: Option<i64> = r.get(o + 9)?;
    let reason: Option<String> = r.get(o + 10)?;
    Ok(MessageMeta {
        run_id: r.get::<_, i64>(o)? as u64,
        message_id: r.get(o + 1)?,
        src_node_id: r.get::<_, i64>(o + 2)? as u64,
        dst_node_id: r.get::<_, i64>(o + 3)? as u64,
        reply_to_message_id: r.get(o + 4)?,
        group_id: r.get(o + 5)?,
        ttl: r.get(o + 6)?,
        message_type: r.get(o + 7)?,
        created_at: r.get(o + 8)?,
        error: code.map(|code| MessageError {
            code,
            reason: reason.unwrap_or_default(),
        }),
        has_content: r.get::<_, i64>(o + 11)? != 0,
    })
}

fn node_from_row(r: &Row<'_>) -> rusqlite::Result<Node> {
    let status: String = r.get(3)?;
    Ok(Node {
        node_id: r.get::<_, i64>(0)? as u64,
        owner_aid: r.get(1)?,
        owner_name: r.get(2)?,
        status: NodeStatus::from_stored(&status),
        registered_at: r.get(4)?,
        last_activated_at: r.get(5)?,
        last_deactivated_at: r.get(6)?,
        unregistered_at: r.get(7)?,
        online_until: r.get(8)?,
        heartbeat_interval: r.get(9)?,
        public_key: Bytes::from(r.get::<_, Vec<u8>>(10)?),
    })
}

const NODE_COLS: &str = "node_id, owner_aid, owner_name, status, registered_at, last_activated_at, last_deactivated_at, unregistered_at, online_until, heartbeat_interval, public_key";

const RUN_COLS: &str = "run_id, fab_id, fab_version, fab_hash, override_config, pending_at, starting_at, running_at, finished_at, status, sub_status, details, flwr_aid, federation, bytes_sent, bytes_recv, clientapp_runtime, run_type, federation_config";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<Run> {
    let status: String = r.get(9)?;
    let sub: String = r.get(10)?;
    let cfg: Vec<u8> = r.get(4)?;
    let run_type: String = r.get(17)?;
    Ok(Run {
        run_id: r.get::<_, i64>(0)? as u64,
        fab_id: r.get(1)?,
        fab_version: r.get(2)?,
        fab_hash: r.get(3)?,
        override_config: decode_config(&cfg).unwrap_or_default(),
        pending_at: r.get(5)?,
        starting_at: r.get(6)?,
        running_at: r.get(7)?,
        finished_at: r.get(8)?,
        status: RunStatus {
            status: Status::parse(&status).unwrap_or(Status::Pending),
            sub_status: SubStatus::parse(&sub).unwrap_or(SubStatus::None),
            details: r.get(11)?,
        },
        flwr_aid: r.get(12)?,
        federation: r.get(13)?,
        bytes_sent: r.get::<_, i64>(14)? as u64,
        bytes_recv: r.get::<_, i64>(15)? as u64,
        clientapp_runtime: r.get(16)?,
        run_type: if run_type == "simulation" {
            RunType::Simulation
        } else {
            RunType::ServerApp
        },
        federation_config: r.get::<_, Option<Vec<u8>>>(18)?.map(Bytes::from),
    })
}

fn expire_tokens(tx: &Transaction<'_>, now: f64) -> rusqlite::Result<()> {
    let expired: Vec<(i64, f64, Option<String>)> = tx
        .prepare_cached("SELECT run_id, active_until, launcher FROM token WHERE active_until < ?1")?
        .query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (run_id, until, launcher) in expired {
        tx.prepare_cached("DELETE FROM token WHERE run_id = ?1")?
            .execute(params![run_id])?;
        tx.prepare_cached("UPDATE run SET status = 'finished', sub_status = 'failed', details = ?2, finished_at = ?3 \
             WHERE run_id = ?1 AND finished_at IS NULL AND status != 'finished'")?.execute(
            params![run_id, no_heartbeat_details(launcher.as_deref()), until],
        )?;
    }
    Ok(())
}

fn get_run(tx: &Transaction<'_>, run_id: RunId) -> rusqlite::Result<Option<Run>> {
    tx.prepare_cached(&format!("SELECT {RUN_COLS} FROM run WHERE run_id = ?1"))?
        .query_row(params![run_id as i64], run_from_row)
        .optional()
}

fn get_node(tx: &Transaction<'_>, node_id: NodeId) -> rusqlite::Result<Option<Node>> {
    tx.prepare_cached(&format!("SELECT {NODE_COLS} FROM node WHERE node_id = ?1"))?
        .query_row(params![node_id as i64], node_from_row)
        .optional()
}

fn save_node(tx: &Transaction<'_>, n: &Node) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE node SET status = ?2, last_activated_at = ?3, last_deactivated_at = ?4, unregistered_at = ?5, \
         online_until = ?6, heartbeat_interval = ?7 WHERE node_id = ?1")?.execute(
        params![
            n.node_id as i64,
            n.status.as_str(),
            n.last_activated_at,
            n.last_deactivated_at,
            n.unregistered_at,
            n.online_until,
            n.heartbeat_interval
        ],
    )?;
    Ok(())
}

/// Stores (or replaces) the reply to instruction `ins_id`, not yet taken.
fn insert_reply(tx: &Transaction<'_>, ins_id: &str, m: &MessageMeta) -> rusqlite::Result<()> {
    let sql = format!(
        "INSERT OR REPLACE INTO message_res (ins_id, {META_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    );
    tx.prepare_cached(&sql)?.execute(params![
        ins_id,
        m.run_id as i64,
        m.message_id,
        m.src_node_id as i64,
        m.dst_node_id as i64,
        m.reply_to_message_id,
        m.group_id,
        m.ttl,
        m.message_type,
        m.created_at,
        m.error.as_ref().map(|e| e.code),
        m.error.as_ref().map(|e| e.reason.clone()),
        i64::from(m.has_content)
    ])?;
    Ok(())
}

fn expired(m: &MessageMeta, now: f64) -> bool {
    m.created_at + m.ttl <= now
}

fn delete_message(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM message_ins WHERE message_id = ?1")?
        .execute(params![id])?;
    tx.prepare_cached("DELETE FROM message_res WHERE ins_id = ?1")?
        .execute(params![id])?;
    Ok(())
}

/// Writes a run's new status and when it was reached (the transition is checked by the caller).
fn write_status(
    tx: &Transaction<'_>,
    run_id: RunId,
    status: &RunStatus,
    now: f64,
) -> rusqlite::Result<()> {
    let column = crate::status_column(status.status);
    tx.prepare_cached(&format!(
        "UPDATE run SET status = ?2, sub_status = ?3, details = ?4, {column} = ?5 WHERE run_id = ?1"
    ))?
    .execute(params![
        run_id as i64,
        status.status.as_str(),
        status.sub_status.as_str(),
        status.details,
        now
    ])?;
    Ok(())
}

/// Runs `f` in one transaction on `conn`. With `writer` (a write): `BEGIN IMMEDIATE`, holding
/// this process's right to write until the commit. Without (a read): a deferred transaction,
/// a consistent snapshot that takes no write lock (the Fleet API looks up the caller's node on
/// every call).
fn in_transaction<R>(
    conn: &Mutex<Connection>,
    writer: Option<&Writer>,
    path: &Path,
    f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<R>,
) -> Result<R, StateError> {
    let mut conn = conn.lock();
    let _writing = writer.map(|w| w.0.lock());
    let behavior = if writer.is_some() {
        TransactionBehavior::Immediate
    } else {
        TransactionBehavior::Deferred
    };
    let tx = conn
        .transaction_with_behavior(behavior)
        .map_err(backend(path))?;
    let r = f(&tx).map_err(backend(path))?;
    tx.commit().map_err(backend(path))?;
    Ok(r)
}

impl StateDb {
    /// Runs `f` in one immediate transaction, with the time it starts at.
    fn tx<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>, f64) -> rusqlite::Result<R>,
    ) -> Result<R, StateError> {
        let now = self.clock.now();
        in_transaction(&self.conn, Some(&self.writer), &self.path, |tx| f(tx, now))
    }
    /// Runs `f`, which only reads, in one deferred transaction.
    fn read<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>, f64) -> rusqlite::Result<R>,
    ) -> Result<R, StateError> {
        let now = self.clock.now();
        in_transaction(&self.conn, None, &self.path, |tx| f(tx, now))
    }
}

/// The state methods, synchronous: [`SqliteLinkState`] runs each on the lane.
impl StateDb {
    pub(crate) fn create_node(&self, node: NewNode) -> Result<NodeId, StateError> {
        self.tx(|tx, now| {
            let taken = tx
                .prepare_cached("SELECT 1 FROM node WHERE public_key = ?1")?
                .query_row(params![node.public_key.as_ref()], |_| Ok(()))
                .optional()?
                .is_some();
            if taken {
                return Ok(Err(StateError::PublicKeyInUse));
            }
            let mut id = random_id();
            while get_node(tx, id)?.is_some() {
                id = random_id();
            }
            tx.prepare_cached("INSERT INTO node (node_id, owner_aid, owner_name, status, registered_at, heartbeat_interval, public_key) \
                 VALUES (?1, ?2, ?3, 'registered', ?4, ?5, ?6)")?.execute(
                params![id as i64, node.owner_aid, node.owner_name, now, node.heartbeat_interval, node.public_key.as_ref()],
            )?;
            Ok(Ok(id))
        })?
    }

    pub(crate) fn node_id_by_public_key(
        &self,
        public_key: &[u8],
    ) -> Result<Option<NodeId>, StateError> {
        self.read(|tx, _| {
            let id = tx
                .prepare_cached(
                    "SELECT node_id FROM node WHERE public_key = ?1 AND status != 'unregistered'",
                )?
                .query_row(params![public_key], |r| r.get::<_, i64>(0))
                .optional()?
                .map(|v| v as NodeId);
            if let Some(id) = id {
                let mut keys = self.hints.keys.write();
                if keys.len() >= KEY_HINT_LIMIT {
                    keys.clear();
                }
                keys.insert(public_key.to_vec(), id);
            }
            Ok(id)
        })
    }

    pub(crate) fn cached_node_id(&self, public_key: &[u8]) -> Option<NodeId> {
        self.hints.keys.read().get(public_key).copied()
    }

    pub(crate) fn activate_node(
        &self,
        public_key: &[u8],
        heartbeat_interval: f64,
    ) -> Result<Result<NodeId, NodeRefusal>, StateError> {
        self.tx(|tx, now| {
            let node = tx
                .prepare_cached(&format!(
                    "SELECT {NODE_COLS} FROM node WHERE public_key = ?1"
                ))?
                .query_row(params![public_key], node_from_row)
                .optional()?;
            let Some(node) = node else {
                return Ok(Err(NodeRefusal::UnknownKey));
            };
            let mut n = memory::effective_node(node, now);
            match n.status {
                NodeStatus::Unregistered => Ok(Err(NodeRefusal::UnknownKey)),
                NodeStatus::Online => Ok(Err(NodeRefusal::AlreadyOnline(n.node_id))),
                NodeStatus::Registered | NodeStatus::Offline => {
                    n.status = NodeStatus::Online;
                    n.last_activated_at = Some(now);
                    n.online_until = Some(now + heartbeat::PATIENCE * heartbeat_interval);
                    n.heartbeat_interval = heartbeat_interval;
                    save_node(tx, &n)?;
                    Ok(Ok(n.node_id))
                }
            }
        })
    }

    pub(crate) fn deactivate_node(
        &self,
        node_id: NodeId,
    ) -> Result<Result<(), NodeRefusal>, StateError> {
        self.tx(|tx, now| {
            let Some(node) = get_node(tx, node_id)? else {
                return Ok(Err(NodeRefusal::NotOnline(node_id)));
            };
            let mut n = memory::effective_node(node, now);
            if n.status != NodeStatus::Online {
                return Ok(Err(NodeRefusal::NotOnline(node_id)));
            }
            n.status = NodeStatus::Offline;
            n.last_deactivated_at = Some(now);
            n.online_until = Some(now);
            save_node(tx, &n)?;
            Ok(Ok(()))
        })
    }

    pub(crate) fn unregister_node(
        &self,
        node_id: NodeId,
        owner_aid: Option<&str>,
    ) -> Result<Result<(), NodeRefusal>, StateError> {
        self.tx(|tx, now| {
            let Some(node) = get_node(tx, node_id)? else {
                return Ok(Err(NodeRefusal::NotFound(node_id)));
            };
            if node.status == NodeStatus::Unregistered
                || owner_aid.is_some_and(|o| o != node.owner_aid)
            {
                return Ok(Err(NodeRefusal::NotFound(node_id)));
            }
            let mut n = memory::effective_node(node, now);
            n.status = NodeStatus::Unregistered;
            n.unregistered_at = Some(now);
            n.online_until = Some(n.online_until.map_or(now, |t| t.min(now)));
            save_node(tx, &n)?;
            // Forgotten before the commit: a failed commit only costs a lookup later.
            self.hints.keys.write().retain(|_, id| *id != node_id);
            Ok(Ok(()))
        })
    }

    pub(crate) fn heartbeat(
        &self,
        node_id: NodeId,
        heartbeat_interval: f64,
    ) -> Result<bool, StateError> {
        self.tx(|tx, now| {
            let Some(node) = get_node(tx, node_id)? else {
                return Ok(false);
            };
            if node.status == NodeStatus::Unregistered {
                return Ok(false);
            }
            let mut n = memory::effective_node(node, now);
            if n.status != NodeStatus::Online {
                n.status = NodeStatus::Online;
                n.last_activated_at = Some(now);
            }
            n.online_until = Some(now + heartbeat::PATIENCE * heartbeat_interval);
            n.heartbeat_interval = heartbeat_interval;
            save_node(tx, &n)?;
            Ok(true)
        })
    }

    pub(crate) fn node(&self, node_id: NodeId) -> Result<Option<Node>, StateError> {
        self.read(|tx, now| Ok(get_node(tx, node_id)?.map(|n| memory::effective_node(n, now))))
    }

    pub(crate) fn nodes_of(&self, owner_aid: &str) -> Result<Vec<Node>, StateError> {
        self.read(|tx, now| {
            let nodes = tx
                .prepare_cached(&format!(
                    "SELECT {NODE_COLS} FROM node WHERE owner_aid = ?1 ORDER BY registered_at"
                ))?
                .query_map(params![owner_aid], node_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(nodes
                .into_iter()
                .map(|n| memory::effective_node(n, now))
                .collect())
        })
    }

    pub(crate) fn online_node_ids(&self) -> Result<Vec<NodeId>, StateError> {
        self.read(|tx, now| {
            tx.prepare_cached("SELECT node_id FROM node WHERE status = 'online' AND online_until > ?1 ORDER BY node_id")?
                .query_map(params![now], |r| r.get::<_, i64>(0).map(|v| v as u64))?
                .collect()
        })
    }

    pub(crate) fn census(&self) -> Result<Census, StateError> {
        self.read(|tx, now| {
            let mut census = Census::default();
            let mut nodes = tx.prepare_cached("SELECT status, online_until FROM node")?;
            let rows = nodes.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<f64>>(1)?))
            })?;
            for row in rows {
                let (status, until) = row?;
                census.count_node(NodeStatus::from_stored(&status), until, now);
            }
            let mut runs = tx.prepare_cached(
                "SELECT status, sub_status, COUNT(*) FROM run GROUP BY status, sub_status",
            )?;
            let rows = runs.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (status, sub, n) = row?;
                census.runs.insert((status, sub), n.max(0) as u64);
            }
            Ok(census)
        })
    }

    pub(crate) fn create_run(&self, new: NewRun) -> Result<RunId, StateError> {
        self.tx(|tx, now| {
            let mut id = random_id();
            while get_run(tx, id)?.is_some() {
                id = random_id();
            }
            let seq: i64 = tx.prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM run")?.query_row( [], |r| r.get(0))?;
            tx.prepare_cached("INSERT INTO run (run_id, seq, fab_id, fab_version, fab_hash, override_config, pending_at, status, sub_status, \
                 details, flwr_aid, federation, run_type, federation_config, context) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', '', '', ?8, ?9, ?10, ?11, ?12)")?.execute(
                params![
                    id as i64,
                    seq,
                    new.fab_id,
                    new.fab_version,
                    new.fab_hash,
                    encode_config(&new.override_config),
                    now,
                    new.flwr_aid,
                    new.federation,
                    new.run_type.as_str(),
                    new.federation_config.as_deref(),
                    new.context.as_ref()
                ],
            )?;
            Ok(id)
        })
    }

    pub(crate) fn run(&self, run_id: RunId) -> Result<Option<Run>, StateError> {
        self.tx(|tx, now| {
            expire_tokens(tx, now)?;
            get_run(tx, run_id)
        })
    }

    pub(crate) fn runs_of(&self, flwr_aid: &str) -> Result<Vec<Run>, StateError> {
        self.tx(|tx, now| {
            expire_tokens(tx, now)?;
            tx.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM run WHERE flwr_aid = ?1 ORDER BY pending_at DESC"
            ))?
            .query_map(params![flwr_aid], run_from_row)?
            .collect()
        })
    }

    pub(crate) fn pending_run_ids(&self) -> Result<Vec<RunId>, StateError> {
        self.tx(|tx, now| {
            expire_tokens(tx, now)?;
            tx.prepare_cached("SELECT run_id FROM run WHERE status = 'pending' ORDER BY seq")?
                .query_map([], |r| r.get::<_, i64>(0).map(|v| v as u64))?
                .collect()
        })
    }

    pub(crate) fn update_run_status(
        &self,
        run_id: RunId,
        status: RunStatus,
    ) -> Result<bool, StateError> {
        let r = self.tx(|tx, now| {
            expire_tokens(tx, now)?;
            let Some(run) = get_run(tx, run_id)? else {
                return Ok(None);
            };
            if !run.status.is_valid_transition(&status) {
                return Ok(Some(false));
            }
            write_status(tx, run_id, &status, now)?;
            Ok(Some(true))
        })?;
        r.ok_or(StateError::RunNotFound(run_id))
    }

    pub(crate) fn add_run_usage(
        &self,
        run_id: RunId,
        sent: u64,
        recv: u64,
        clientapp_runtime: f64,
    ) -> Result<(), StateError> {
        self.tx(|tx, _| {
            tx.prepare_cached(
                "UPDATE run SET bytes_sent = bytes_sent + ?2, bytes_recv = bytes_recv + ?3, \
                 clientapp_runtime = clientapp_runtime + ?4 WHERE run_id = ?1",
            )?
            .execute(params![
                run_id as i64,
                sent as i64,
                recv as i64,
                clientapp_runtime
            ])?;
            Ok(())
        })
    }

    pub(crate) fn context(&self, run_id: RunId) -> Result<Option<Bytes>, StateError> {
        self.read(|tx, _| {
            tx.prepare_cached("SELECT context FROM run WHERE run_id = ?1")?
                .query_row(params![run_id as i64], |r| r.get::<_, Vec<u8>>(0))
                .optional()
                .map(|o| o.map(Bytes::from))
        })
    }

    pub(crate) fn simulation_config(&self, federation: &str) -> Result<Option<Bytes>, StateError> {
        self.read(|tx, _| {
            tx.prepare_cached("SELECT simulation_config FROM federation WHERE name = ?1")?
                .query_row(params![federation], |r| r.get::<_, Vec<u8>>(0))
                .optional()
                .map(|o| o.map(Bytes::from))
        })
    }

    pub(crate) fn set_simulation_config(
        &self,
        federation: &str,
        config: Bytes,
    ) -> Result<(), StateError> {
        self.tx(|tx, _| {
            tx.prepare_cached(
                "INSERT INTO federation (name, simulation_config) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET simulation_config = excluded.simulation_config",
            )?
            .execute(params![federation, config.as_ref()])
        })?;
        Ok(())
    }

    pub(crate) fn set_context(&self, run_id: RunId, context: Bytes) -> Result<(), StateError> {
        let n = self.tx(|tx, _| {
            tx.prepare_cached("UPDATE run SET context = ?2 WHERE run_id = ?1")?
                .execute(params![run_id as i64, context.as_ref()])
        })?;
        if n == 0 {
            return Err(StateError::RunNotFound(run_id));
        }
        Ok(())
    }

    pub(crate) fn claim_run(
        &self,
        run_id: RunId,
        launcher: Option<&str>,
    ) -> Result<Option<String>, StateError> {
        self.tx(|tx, now| {
            expire_tokens(tx, now)?;
            if tx
                .prepare_cached("SELECT 1 FROM token WHERE run_id = ?1")?
                .query_row(params![run_id as i64], |_| Ok(()))
                .optional()?
                .is_some()
            {
                return Ok(None);
            }
            let starting = RunStatus::new(Status::Starting);
            match get_run(tx, run_id)? {
                Some(run) if run.status.is_valid_transition(&starting) => {}
                _ => return Ok(None),
            }
            write_status(tx, run_id, &starting, now)?;
            let token = random_token();
            tx.prepare_cached(
                "INSERT INTO token (token, run_id, active_until, launcher) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                token,
                run_id as i64,
                now + heartbeat::DEFAULT_INTERVAL,
                launcher
            ])?;
            Ok(Some(token))
        })
    }

    pub(crate) fn run_id_by_token(&self, token: &str) -> Result<Option<RunId>, StateError> {
        self.tx(|tx, now| {
            expire_tokens(tx, now)?;
            tx.prepare_cached("SELECT run_id FROM token WHERE token = ?1")?
                .query_row(params![token], |r| r.get::<_, i64>(0))
                .optional()
                .map(|o| o.map(|v| v as u64))
        })
    }

    pub(crate) fn delete_token(&self, run_id: RunId) -> Result<(), StateError> {
        self.tx(|tx, _| {
            tx.prepare_cached("DELETE FROM token WHERE run_id = ?1")?
                .execute(params![run_id as i64])
                .map(|_| ())
        })
    }

    pub(crate) fn app_heartbeat(&self, token: &str) -> Result<bool, StateError> {
        self.tx(|tx, now| {
            expire_tokens(tx, now)?;
            let n = tx
                .prepare_cached("UPDATE token SET active_until = ?2 WHERE token = ?1")?
                .execute(params![
                    token,
                    now + heartbeat::PATIENCE * heartbeat::DEFAULT_INTERVAL
                ])?;
            Ok(n > 0)
        })
    }

    pub(crate) fn add_log(&self, run_id: RunId, text: &str) -> Result<(), StateError> {
        let found = self.tx(|tx, now| {
            if get_run(tx, run_id)?.is_none() {
                return Ok(false);
            }
            let last: Option<f64> = tx
                .prepare_cached("SELECT MAX(ts) FROM log WHERE run_id = ?1")?
                .query_row(params![run_id as i64], |r| r.get(0))?;
            let ts = log_time(last, now);
            tx.prepare_cached("INSERT INTO log (run_id, ts, text) VALUES (?1, ?2, ?3)")?
                .execute(params![run_id as i64, ts, text])?;
            Ok(true)
        })?;
        if found {
            Ok(())
        } else {
            Err(StateError::RunNotFound(run_id))
        }
    }

    pub(crate) fn logs_after(
        &self,
        run_id: RunId,
        after: f64,
    ) -> Result<(String, f64), StateError> {
        let r = self.tx(|tx, _| {
            if get_run(tx, run_id)?.is_none() {
                return Ok(None);
            }
            let parts: Vec<String> = tx
                .prepare_cached("SELECT text FROM log WHERE run_id = ?1 AND ts > ?2 ORDER BY ts")?
                .query_map(params![run_id as i64, after], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let latest: Option<f64> = tx
                .prepare_cached("SELECT MAX(ts) FROM log WHERE run_id = ?1")?
                .query_row(params![run_id as i64], |r| r.get(0))?;
            Ok(Some((parts.concat(), latest.unwrap_or(0.0))))
        })?;
        r.ok_or(StateError::RunNotFound(run_id))
    }

    pub(crate) fn store_instruction(
        &self,
        message: MessageMeta,
    ) -> Result<Option<String>, StateError> {
        if message.src_node_id != SUPERLINK_NODE_ID {
            return Ok(None);
        }
        self.tx(|tx, _| {
            if get_run(tx, message.run_id)?.is_none() {
                return Ok(None);
            }
            let dst_ok = get_node(tx, message.dst_node_id)?.is_some_and(|n| matches!(n.status, NodeStatus::Online | NodeStatus::Offline));
            if !dst_ok {
                return Ok(None);
            }
            tx.prepare_cached(&format!("INSERT OR REPLACE INTO message_ins ({META_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"))?.execute(
                params![
                    message.run_id as i64,
                    message.message_id,
                    message.src_node_id as i64,
                    message.dst_node_id as i64,
                    message.reply_to_message_id,
                    message.group_id,
                    message.ttl,
                    message.message_type,
                    message.created_at,
                    message.error.as_ref().map(|e| e.code),
                    message.error.as_ref().map(|e| e.reason.clone()),
                    i64::from(message.has_content)
                ],
            )?;
            self.hints.queued.write().insert(message.dst_node_id);
            Ok(Some(message.message_id.clone()))
        })
    }

    pub(crate) fn may_have_instruction(&self, node_id: NodeId) -> bool {
        self.hints.queued.read().contains(&node_id)
    }

    pub(crate) fn pull_instruction(
        &self,
        node_id: NodeId,
    ) -> Result<Option<MessageMeta>, StateError> {
        self.tx(|tx, now| loop {
            let row = tx.prepare_cached(&format!("SELECT seq, {META_COLS} FROM message_ins WHERE dst_node_id = ?1 AND delivered = 0 ORDER BY seq LIMIT 1"))?.query_row(
                    params![node_id as i64],
                    |r| Ok((r.get::<_, i64>(0)?, meta_from_row(r, 1)?)),
                )
                .optional()?;
            if let Some((seq, meta)) = row {
                if expired(&meta, now) {
                    delete_message(tx, &meta.message_id)?;
                    continue;
                }
                tx.prepare_cached("UPDATE message_ins SET delivered = 1, delivered_at = ?2 WHERE seq = ?1")?
                    .execute(params![seq, now])?;
                return Ok(Some(meta));
            }
            // Nothing new: a delivery that was lost, if any.
            let waiting = tx
                .prepare_cached(&format!(
                    "SELECT seq, delivered_at, {META_COLS} FROM message_ins i WHERE dst_node_id = ?1 \
                     AND delivered = 1 AND confirmed = 0 AND delivered_at IS NOT NULL AND created_at + ttl > ?2 \
                     AND NOT EXISTS (SELECT 1 FROM message_res r WHERE r.ins_id = i.message_id) ORDER BY seq"
                ))?
                .query_map(params![node_id as i64, now], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?, meta_from_row(r, 2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if waiting.is_empty() {
                self.hints.queued.write().remove(&node_id);
                return Ok(None);
            }
            let Some((seq, _, meta)) = waiting
                .into_iter()
                .find(|(_, at, _)| at + REDELIVER_AFTER <= now)
            else {
                return Ok(None);
            };
            tracing::info!(node_id, message_id = %meta.message_id, "delivering again an instruction its node did not confirm");
            tx.prepare_cached("UPDATE message_ins SET delivered_at = ?2 WHERE seq = ?1")?
                .execute(params![seq, now])?;
            return Ok(Some(meta));
        })
    }

    pub(crate) fn confirm_instruction(
        &self,
        node_id: NodeId,
        message_id: &str,
    ) -> Result<(), StateError> {
        self.tx(|tx, _| {
            tx.prepare_cached(
                "UPDATE message_ins SET confirmed = 1 WHERE message_id = ?1 AND dst_node_id = ?2 AND delivered = 1",
            )?
            .execute(params![message_id, node_id as i64])?;
            Ok(())
        })
    }

    pub(crate) fn delivered_instructions(
        &self,
        node_id: NodeId,
        run_id: RunId,
    ) -> Result<Vec<String>, StateError> {
        self.read(|tx, _| {
            tx.prepare_cached(
                "SELECT message_id FROM message_ins WHERE dst_node_id = ?1 AND run_id = ?2 AND delivered = 1",
            )?
            .query_map(params![node_id as i64, run_id as i64], |r| r.get(0))?
            .collect()
        })
    }

    pub(crate) fn store_reply(
        &self,
        message: MessageMeta,
    ) -> Result<Result<String, ReplyRejected>, StateError> {
        self.tx(|tx, now| {
            let ins_id = message.reply_to_message_id.clone();
            let ins = tx
                .prepare_cached(&format!(
                    "SELECT {META_COLS} FROM message_ins WHERE message_id = ?1"
                ))?
                .query_row(params![ins_id], |r| meta_from_row(r, 0))
                .optional()?;
            let ins = match ins {
                Some(i) if expired(&i, now) => {
                    delete_message(tx, &ins_id)?;
                    None
                }
                other => other,
            };
            let Some(ins) = ins else {
                return Ok(Err(ReplyRejected::NoInstruction(ins_id)));
            };
            if let Err(why) = check_reply(&ins, &message) {
                return Ok(Err(why));
            }
            insert_reply(tx, &ins_id, &message)?;
            Ok(Ok(message.message_id.clone()))
        })
    }

    pub(crate) fn take_replies(
        &self,
        message_ids: &[String],
    ) -> Result<Vec<PulledReply>, StateError> {
        self.tx(|tx, now| {
            let mut out = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for id in message_ids {
                if !seen.insert(id.as_str()) {
                    continue;
                }
                let ins = tx
                    .prepare_cached(&format!(
                        "SELECT {META_COLS} FROM message_ins WHERE message_id = ?1"
                    ))?
                    .query_row(params![id], |r| meta_from_row(r, 0))
                    .optional()?;
                let Some(ins) = ins else {
                    out.push(PulledReply::Generated(message_unavailable(id, now)));
                    continue;
                };
                if expired(&ins, now) {
                    delete_message(tx, id)?;
                    out.push(PulledReply::Generated(message_unavailable(id, now)));
                    continue;
                }
                let online_until = get_node(tx, ins.dst_node_id)?
                    .filter(|n| n.status != NodeStatus::Unregistered)
                    .and_then(|n| n.online_until);
                if online_until.is_none_or(|t| t < now) {
                    out.push(PulledReply::Generated(error_reply_for(
                        &ins,
                        error_code::NODE_UNAVAILABLE,
                        now,
                    )));
                    delete_message(tx, id)?;
                    continue;
                }
                let reply = tx
                    .prepare_cached(&format!(
                        "SELECT {META_COLS} FROM message_res WHERE ins_id = ?1"
                    ))?
                    .query_row(params![id], |r| meta_from_row(r, 0))
                    .optional()?;
                if let Some(reply) = reply {
                    if reply.created_at + reply.ttl < now {
                        out.push(PulledReply::Generated(error_reply_for(
                            &ins,
                            error_code::REPLY_MESSAGE_UNAVAILABLE,
                            now,
                        )));
                        delete_message(tx, id)?;
                    } else {
                        out.push(PulledReply::Stored(reply));
                        tx.prepare_cached(
                            "UPDATE message_res SET delivered = 1 WHERE ins_id = ?1",
                        )?
                        .execute(params![id])?;
                    }
                }
            }
            Ok(out)
        })
    }

    pub(crate) fn confirm_reply(&self, run_id: RunId, reply_id: &str) -> Result<(), StateError> {
        self.tx(|tx, _| {
            let ins: Option<String> = tx
                .prepare_cached(
                    "SELECT ins_id FROM message_res WHERE message_id = ?1 AND run_id = ?2 AND delivered = 1",
                )?
                .query_row(params![reply_id, run_id as i64], |r| r.get(0))
                .optional()?;
            if let Some(ins) = ins {
                delete_message(tx, &ins)?;
            }
            Ok(())
        })
    }

    pub(crate) fn delete_messages(&self, message_ids: &[String]) -> Result<(), StateError> {
        self.tx(|tx, _| {
            for id in message_ids {
                delete_message(tx, id)?;
            }
            Ok(())
        })
    }

    pub(crate) fn delete_run_messages(&self, run_id: RunId) -> Result<(), StateError> {
        self.tx(|tx, _| {
            tx.prepare_cached("DELETE FROM message_res WHERE ins_id IN (SELECT message_id FROM message_ins WHERE run_id = ?1)")?.execute(
                params![run_id as i64],
            )?;
            tx.prepare_cached("DELETE FROM message_ins WHERE run_id = ?1")?.execute( params![run_id as i64])?;
            Ok(())
        })
    }
}

/// The object store engine.
/// The object database: one connection, used on its lane's thread only.
pub struct ObjectDb {
    conn: Mutex<Connection>,
    path: PathBuf,
    writer: Writer,
}

/// Of a registered object, whether its bytes are stored; `None` when it is not registered.
fn stored(tx: &Transaction<'_>, key: &[u8]) -> rusqlite::Result<Option<bool>> {
    tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM object_content WHERE object_id = ?1) \
         FROM object WHERE object_id = ?1",
    )?
    .query_row(params![key], |r| r.get(0))
    .optional()
}

/// The largest part of an object's bytes in one row: what a statement that writes or reads them
/// holds in memory at most (twice: SQLite copies a bound value, then builds the row).
const CONTENT_PART: usize = 1024 * 1024;

/// What [`ObjectDb::get`] found.
pub(crate) enum Found {
    /// No such object.
    Unknown,
    /// Registered, its bytes not pushed yet.
    Pending,
    /// Stored: its bytes, read now.
    Read(Vec<u8>),
}

fn children_blob(ids: &[ObjectId]) -> Vec<u8> {
    ids.iter()
        .flat_map(|i| i.as_bytes().iter().copied())
        .collect()
}

fn children_of(blob: &[u8]) -> Vec<ObjectId> {
    blob.chunks_exact(32)
        .filter_map(|c| c.try_into().ok().map(ObjectId::from_bytes))
        .collect()
}

impl ObjectDb {
    /// Runs `f` in one immediate transaction.
    fn tx<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        in_transaction(&self.conn, Some(&self.writer), &self.path, f).map_err(StoreError::from)
    }
    /// Runs `f`, which only reads, in one deferred transaction (no write lock).
    fn read<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        in_transaction(&self.conn, None, &self.path, f).map_err(StoreError::from)
    }
}

fn delete_cascading(tx: &Transaction<'_>, id: &ObjectId) -> rusqlite::Result<()> {
    let mut stack = vec![*id];
    while let Some(id) = stack.pop() {
        let row: Option<(i64, Vec<u8>)> = tx
            .prepare_cached("SELECT ref_count, children FROM object WHERE object_id = ?1")?
            .query_row(params![id.as_bytes().as_slice()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((refs, children)) = row else {
            continue;
        };
        if refs != 0 {
            continue;
        }
        tx.prepare_cached("DELETE FROM object WHERE object_id = ?1")?
            .execute(params![id.as_bytes().as_slice()])?;
        tx.prepare_cached("DELETE FROM object_content WHERE object_id = ?1")?
            .execute(params![id.as_bytes().as_slice()])?;
        tx.prepare_cached("DELETE FROM object_run WHERE object_id = ?1")?
            .execute(params![id.as_bytes().as_slice()])?;
        for c in children_of(&children) {
            tx.prepare_cached(
                "UPDATE object SET ref_count = MAX(ref_count - 1, 0) WHERE object_id = ?1",
            )?
            .execute(params![c.as_bytes().as_slice()])?;
            stack.push(c);
        }
    }
    Ok(())
}

/// The object store methods, synchronous: [`SqliteObjects`] runs each on the lane.
impl ObjectDb {
    pub(crate) fn preregister(
        &self,
        run_id: u64,
        tree: &ObjectTree,
    ) -> Result<Vec<ObjectId>, StoreError> {
        self.tx(|tx| {
            let mut to_push = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for node in tree.post_order() {
                let key = node.id.as_bytes().as_slice();
                match stored(tx, key)? {
                    None => {
                        let children: Vec<ObjectId> = node.children.iter().map(|c| c.id).collect();
                        for c in &children {
                            tx.prepare_cached("UPDATE object SET ref_count = ref_count + 1 WHERE object_id = ?1")?.execute( params![c.as_bytes().as_slice()])?;
                        }
                        tx.prepare_cached("INSERT INTO object (object_id, children, ref_count) VALUES (?1, ?2, 0)")?.execute(
                            params![key, children_blob(&children)],
                        )?;
                        if seen.insert(node.id) {
                            to_push.push(node.id);
                        }
                    }
                    Some(false) => {
                        if seen.insert(node.id) {
                            to_push.push(node.id);
                        }
                    }
                    Some(true) => {}
                }
                tx.prepare_cached("INSERT OR IGNORE INTO object_run (object_id, run_id) VALUES (?1, ?2)")?.execute( params![key, run_id as i64])?;
            }
            Ok(to_push)
        })
    }

    pub(crate) fn put(&self, id: &ObjectId, content: Bytes) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let key = id.as_bytes().as_slice();
            match stored(tx, key)? {
                None => return Ok(false),
                Some(true) => return Ok(true),
                Some(false) => {}
            }
            insert_parts(tx, key, &content)?;
            Ok(true)
        })
    }

    pub(crate) fn unavailable(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, StoreError> {
        self.read(|tx| {
            let mut here =
                tx.prepare_cached("SELECT 1 FROM object_content WHERE object_id = ?1")?;
            let mut out = Vec::new();
            for id in ids {
                if !here.exists(params![id.as_bytes().as_slice()])? {
                    out.push(*id);
                }
            }
            Ok(out)
        })
    }

    /// Of a registered object, whether its bytes are stored; `None` when it is not registered.
    pub(crate) fn stored(&self, id: &ObjectId) -> Result<Option<bool>, StoreError> {
        self.read(|tx| stored(tx, id.as_bytes().as_slice()))
    }

    /// The object's bytes, read part by part into a buffer from `buffers`.
    pub(crate) fn get(&self, id: &ObjectId, buffers: &ReadBuffers) -> Result<Found, StoreError> {
        self.read(|tx| {
            let key = id.as_bytes().as_slice();
            let len: Option<Option<i64>> = tx
                .prepare_cached(
                    "SELECT (SELECT SUM(LENGTH(bytes)) FROM object_content WHERE object_id = ?1) \
                     FROM object WHERE object_id = ?1",
                )?
                .query_row(params![key], |r| r.get(0))
                .optional()?;
            Ok(match len {
                None => Found::Unknown,
                Some(None) => Found::Pending,
                Some(Some(len)) => {
                    let mut buf = buffers.take_empty(usize::try_from(len).unwrap_or(0));
                    let mut parts = tx.prepare_cached(
                        "SELECT bytes FROM object_content WHERE object_id = ?1 ORDER BY part",
                    )?;
                    let mut rows = parts.query(params![key])?;
                    while let Some(row) = rows.next()? {
                        buf.extend_from_slice(row.get_ref(0)?.as_blob()?);
                    }
                    Found::Read(buf)
                }
            })
        })
    }

    pub(crate) fn delete(&self, id: &ObjectId) -> Result<(), StoreError> {
        self.tx(|tx| delete_cascading(tx, id))
    }

    pub(crate) fn delete_objects_in_run(&self, run_id: u64) -> Result<(), StoreError> {
        self.tx(|tx| {
            let ids: Vec<Vec<u8>> = tx
                .prepare_cached("SELECT object_id FROM object_run WHERE run_id = ?1")?
                .query_map(params![run_id as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            tx.prepare_cached("DELETE FROM object_run WHERE run_id = ?1")?
                .execute(params![run_id as i64])?;
            for raw in ids {
                if let Ok(b) = <[u8; 32]>::try_from(raw.as_slice()) {
                    delete_cascading(tx, &ObjectId::from_bytes(b))?;
                }
            }
            Ok(())
        })
    }

    pub(crate) fn tree(&self, id: &ObjectId) -> Result<Option<ObjectTree>, StoreError> {
        self.read(|tx| {
            fn build(
                tx: &Transaction<'_>,
                id: &ObjectId,
                depth: usize,
            ) -> rusqlite::Result<Option<ObjectTree>> {
                if depth > 64 {
                    return Ok(None);
                }
                let children: Option<Vec<u8>> = tx
                    .prepare_cached("SELECT children FROM object WHERE object_id = ?1")?
                    .query_row(params![id.as_bytes().as_slice()], |r| r.get(0))
                    .optional()?;
                let Some(children) = children else {
                    return Ok(None);
                };
                let mut out = Vec::new();
                for c in children_of(&children) {
                    match build(tx, &c, depth + 1)? {
                        Some(t) => out.push(t),
                        None => return Ok(None),
                    }
                }
                Ok(Some(ObjectTree {
                    id: *id,
                    children: out,
                }))
            }
            build(tx, id, 0)
        })
    }

    pub(crate) fn len(&self) -> Result<usize, StoreError> {
        self.read(|tx| {
            tx.prepare_cached("SELECT COUNT(*) FROM object")?
                .query_row([], |r| r.get::<_, i64>(0))
                .map(|n| n as usize)
        })
    }

    pub(crate) fn content_bytes(&self) -> Result<u64, StoreError> {
        self.read(|tx| {
            tx.prepare_cached("SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM object_content")?
                .query_row([], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::clock::ManualClock;

    /// The hints of a reopened database start from what it holds: an instruction stored before a
    /// restart is still pulled, and known keys are looked up again.
    #[tokio::test]
    async fn hints_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let clock = Arc::new(ManualClock::new());
        let (node, message) = {
            let s = open(&path, clock.clone()).unwrap().state;
            let node = s
                .create_node(NewNode {
                    owner_aid: "<id:none>".into(),
                    owner_name: "none".into(),
                    public_key: Bytes::from_static(b"key"),
                    heartbeat_interval: 30.0,
                })
                .await
                .unwrap();
            s.activate_node(b"key", 30.0).await.unwrap().unwrap();
            assert_eq!(s.node_id_by_public_key(b"key").await.unwrap(), Some(node));
            assert_eq!(s.cached_node_id(b"key"), Some(node));
            let run = s
                .create_run(NewRun {
                    fab_id: "p/app".into(),
                    fab_version: "1.0".into(),
                    fab_hash: "ab".repeat(32),
                    override_config: vec![],
                    flwr_aid: "<id:none>".into(),
                    federation: "@none/default".into(),
                    run_type: RunType::ServerApp,
                    federation_config: None,
                    context: Bytes::new(),
                })
                .await
                .unwrap();
            let message = MessageMeta {
                run_id: run,
                message_id: "a".repeat(64),
                src_node_id: SUPERLINK_NODE_ID,
                dst_node_id: node,
                reply_to_message_id: String::new(),
                group_id: "1".into(),
                ttl: 600.0,
                message_type: "train".into(),
                created_at: clock.now(),
                error: None,
                has_content: true,
            };
            assert!(s
                .store_instruction(message.clone())
                .await
                .unwrap()
                .is_some());
            (node, message)
        };
        let s = open(&path, clock.clone()).unwrap().state;
        assert_eq!(s.cached_node_id(b"key"), None, "a new process starts cold");
        assert_eq!(s.node_id_by_public_key(b"key").await.unwrap(), Some(node));
        assert!(s.may_have_instruction(node));
        assert!(!s.may_have_instruction(node + 1));
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            Some(message.clone())
        );
        assert_eq!(s.pull_instruction(node).await.unwrap(), None);
        assert!(
            s.may_have_instruction(node),
            "an unconfirmed delivery keeps the hint"
        );
        drop(s);
        let s = open(&path, clock.clone()).unwrap().state;
        assert!(
            s.may_have_instruction(node),
            "an unconfirmed delivery is hinted after a restart"
        );
        clock.advance(REDELIVER_AFTER);
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            Some(message.clone())
        );
        s.confirm_instruction(node, &message.message_id)
            .await
            .unwrap();
        assert_eq!(s.pull_instruction(node).await.unwrap(), None);
        assert!(
            !s.may_have_instruction(node),
            "an empty pull clears the hint"
        );
    }

    /// A file written before `delivered_at` and `confirmed` existed gets them when opened, and
    /// its delivered instructions are never repeated (nothing says when they went).
    #[tokio::test]
    async fn a_file_from_before_the_added_columns_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let clock = Arc::new(ManualClock::new());
        let (node, run) = {
            let s = open(&path, clock.clone()).unwrap().state;
            crate::conformance::link::setup(&*s, "key").await
        };
        let delivered = crate::conformance::link::instruction(run, node, "1", clock.now(), 600.0);
        let queued = crate::conformance::link::instruction(run, node, "2", clock.now(), 600.0);
        {
            let s = open(&path, clock.clone()).unwrap().state;
            s.store_instruction(delivered.clone()).await.unwrap();
            s.store_instruction(queued.clone()).await.unwrap();
            assert_eq!(s.pull_instruction(node).await.unwrap(), Some(delivered));
        }
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE message_ins DROP COLUMN confirmed; ALTER TABLE message_ins DROP COLUMN delivered_at; \
             ALTER TABLE token DROP COLUMN launcher;",
        )
        .unwrap();
        drop(conn);
        let s = open(&path, clock.clone()).unwrap().state;
        assert_eq!(
            s.pull_instruction(node).await.unwrap(),
            Some(queued.clone())
        );
        crate::conformance::link::repeated_until_confirmed(
            &*s,
            &clock,
            node,
            &queued,
            "delivered after the upgrade: repeated",
        )
        .await;
        let fresh = s
            .create_run(crate::conformance::link::new_run())
            .await
            .unwrap();
        assert!(s.claim_run(fresh, Some("here")).await.unwrap().is_some());
    }

    fn object(content: Vec<u8>) -> (ObjectId, Bytes, ObjectTree) {
        let id = ObjectId::of(&content);
        let tree = ObjectTree {
            id,
            children: vec![],
        };
        (id, Bytes::from(content), tree)
    }

    /// Readers of one object at about the same time share one read of its blob; once the
    /// object is deleted, later readers find nothing, even while earlier ones hold its bytes.
    #[tokio::test]
    async fn readers_of_one_object_share_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(&dir.path().join("state.db"), Arc::new(ManualClock::new()))
            .unwrap()
            .objects;
        let content = Bytes::from(vec![5u8; 3_000_000]);
        let id = ObjectId::of(&content);
        let tree = ObjectTree {
            id,
            children: vec![],
        };
        o.preregister(1, &tree).await.unwrap();
        assert!(o.put(&id, content.clone()).await.unwrap());
        let Lookup::Available(first) = o.get(&id).await.unwrap() else {
            panic!("stored")
        };
        assert_eq!(first, content);
        let Lookup::Available(second) = o.get(&id).await.unwrap() else {
            panic!("stored")
        };
        assert_eq!(first.as_ptr(), second.as_ptr(), "one copy in memory");
        o.delete(&id).await.unwrap();
        assert_eq!(o.get(&id).await.unwrap(), Lookup::Unknown);
        drop((first, second));
        o.preregister(1, &tree).await.unwrap();
        assert!(o.put(&id, content.clone()).await.unwrap());
        assert_eq!(o.get(&id).await.unwrap(), Lookup::Available(content));
    }

    /// A file of schema version 1 (objects' bytes in `object.content`) is moved on when
    /// opened: stored objects keep their bytes (in parts), empty ones included, pending ones
    /// stay pending. A file of a version this build does not know is refused, with what to do.
    #[tokio::test]
    async fn a_file_of_schema_version_1_is_moved_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let clock = Arc::new(ManualClock::new());
        let (stored, stored_bytes, stored_tree) = object(vec![3; 2 * CONTENT_PART + 10]);
        let (empty, empty_bytes, empty_tree) = object(vec![]);
        let (pending, pending_bytes, pending_tree) = object(b"pending".to_vec());
        {
            let o = open(&path, clock.clone()).unwrap().objects;
            for tree in [&stored_tree, &empty_tree, &pending_tree] {
                o.preregister(1, tree).await.unwrap();
            }
        }
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE object ADD COLUMN content BLOB; DROP TABLE object_content; \
             PRAGMA user_version = 1;",
        )
        .unwrap();
        for (id, bytes) in [(stored, &stored_bytes), (empty, &empty_bytes)] {
            conn.execute(
                "UPDATE object SET content = ?2 WHERE object_id = ?1",
                params![id.as_bytes().as_slice(), bytes.as_ref()],
            )
            .unwrap();
        }
        drop(conn);
        {
            let o = open(&path, clock.clone()).unwrap().objects;
            assert_eq!(
                o.get(&stored).await.unwrap(),
                Lookup::Available(stored_bytes)
            );
            assert_eq!(o.get(&empty).await.unwrap(), Lookup::Available(empty_bytes));
            assert_eq!(o.get(&pending).await.unwrap(), Lookup::Pending);
            assert_eq!(o.unavailable(&[stored, pending]).await.unwrap(), [pending]);
            assert!(o.put(&pending, pending_bytes.clone()).await.unwrap());
            assert_eq!(
                o.get(&pending).await.unwrap(),
                Lookup::Available(pending_bytes)
            );
        }
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert!(!has_column(&conn, "object", "content").unwrap());
        let parts: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM object_content WHERE object_id = ?1",
                params![stored.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(parts, 3, "moved in parts");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let Err(refused) = open(&path, clock) else {
            panic!("a newer file is refused")
        };
        let refused = refused.to_string();
        assert!(
            refused.contains("upgrade this SuperLink") && refused.contains("state.db"),
            "{refused}"
        );
    }
}
