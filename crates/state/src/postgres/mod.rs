//! The PostgreSQL engine (`--database postgresql://...`): the state and the objects of every
//! SuperLink replica of a federation in one database, so that any replica can serve any request.
//!
//! Every method is one transaction (READ COMMITTED, with row locks where two replicas could race:
//! a pending run is claimed once (its row locked, its one token unique), an instruction is
//! delivered once (`FOR UPDATE SKIP LOCKED`), an object is inserted once), retried when
//! PostgreSQL reports a deadlock or a serialization failure. A replica killed in the middle of a
//! call leaves nothing half-written.
//!
//! Connections come from a bounded pool. When the database cannot be reached the calls fail with
//! [`StateError::Unavailable`], which the SuperLink answers with UNAVAILABLE (clients retry) and
//! reports on its health service.
//!
//! The schema is created on first start under an advisory lock (replicas starting together make
//! it once) and versioned in `flwr_schema`; a replica refuses a database whose schema is newer
//! than it knows. u64 ids are stored bit-cast to BIGINT.

mod listen;
mod target;
mod usage;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use flwr_objects::message::{error_code, MessageError, MessageMeta, SUPERLINK_NODE_ID};
use flwr_objects::store::{Lookup, StoreError};
use flwr_objects::{ObjectId, ObjectTree};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub use target::{is_postgres_url, PgTarget, PgTargetError, SslMode};

use crate::codec::{decode_config, encode_config};
use crate::memory::{
    effective_node, error_reply_for, message_unavailable, random_id, random_token,
};
use crate::*;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 1;
/// The advisory lock taken while the schema is created or checked.
const SCHEMA_LOCK: i64 = 0x666c_7772_5f73_6368; // "flwr_sch"
/// Attempts of a transaction that PostgreSQL aborted for a deadlock or a serialization failure.
const ATTEMPTS: usize = 5;

/// Columns added to schema version 1 since it was first written, applied at a start that finds
/// one missing (each statement is a no-op once applied). Replicas that predate them never name
/// them, so old and new replicas can share a database during a rolling upgrade.
///
/// Object and FAB bytes are stored uncompressed (`STORAGE EXTERNAL`): model weights hardly
/// compress, and PostgreSQL's default compression (pglz) cost about 2.5 times the CPU of the
/// whole insert on a 1 MB object, for objects that live only until they are delivered.
const SCHEMA_ADDITIONS: &str = r#"
ALTER TABLE message_ins ADD COLUMN IF NOT EXISTS delivered_at DOUBLE PRECISION;
ALTER TABLE message_ins ADD COLUMN IF NOT EXISTS confirmed BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX IF NOT EXISTS message_res_by_id ON message_res (message_id);
ALTER TABLE token ADD COLUMN IF NOT EXISTS launcher TEXT;
ALTER TABLE object ALTER COLUMN content SET STORAGE EXTERNAL;
ALTER TABLE fab ALTER COLUMN content SET STORAGE EXTERNAL;
ALTER TABLE fab ADD COLUMN IF NOT EXISTS verifications TEXT NOT NULL DEFAULT '{}';
CREATE TABLE IF NOT EXISTS federation (
    name TEXT PRIMARY KEY,
    simulation_config BYTEA NOT NULL
);
"#;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS node (
    node_id BIGINT PRIMARY KEY,
    owner_aid TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    status TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL,
    last_activated_at DOUBLE PRECISION,
    last_deactivated_at DOUBLE PRECISION,
    unregistered_at DOUBLE PRECISION,
    online_until DOUBLE PRECISION,
    heartbeat_interval DOUBLE PRECISION NOT NULL,
    public_key BYTEA NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS run (
    run_id BIGINT PRIMARY KEY,
    seq BIGSERIAL,
    fab_id TEXT NOT NULL,
    fab_version TEXT NOT NULL,
    fab_hash TEXT NOT NULL,
    override_config BYTEA NOT NULL,
    pending_at DOUBLE PRECISION,
    starting_at DOUBLE PRECISION,
    running_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    status TEXT NOT NULL,
    sub_status TEXT NOT NULL,
    details TEXT NOT NULL,
    flwr_aid TEXT NOT NULL,
    federation TEXT NOT NULL,
    bytes_sent BIGINT NOT NULL DEFAULT 0,
    bytes_recv BIGINT NOT NULL DEFAULT 0,
    clientapp_runtime DOUBLE PRECISION NOT NULL DEFAULT 0,
    run_type TEXT NOT NULL,
    federation_config BYTEA,
    context BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS run_by_status ON run (status, seq);
CREATE INDEX IF NOT EXISTS run_by_aid ON run (flwr_aid);
CREATE TABLE IF NOT EXISTS token (
    token TEXT PRIMARY KEY,
    run_id BIGINT NOT NULL UNIQUE,
    active_until DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    id BIGSERIAL PRIMARY KEY,
    run_id BIGINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_run ON log (run_id, ts);
CREATE TABLE IF NOT EXISTS message_ins (
    seq BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    delivered BOOLEAN NOT NULL DEFAULT FALSE,
    run_id BIGINT NOT NULL,
    src_node_id BIGINT NOT NULL,
    dst_node_id BIGINT NOT NULL,
    reply_to TEXT NOT NULL,
    group_id TEXT NOT NULL,
    ttl DOUBLE PRECISION NOT NULL,
    message_type TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    error_code BIGINT,
    error_reason TEXT,
    has_content BOOLEAN NOT NULL
);
CREATE INDEX IF NOT EXISTS message_ins_queue ON message_ins (dst_node_id, delivered, seq);
CREATE INDEX IF NOT EXISTS message_ins_run ON message_ins (run_id);
CREATE TABLE IF NOT EXISTS message_res (
    ins_id TEXT PRIMARY KEY,
    delivered BOOLEAN NOT NULL DEFAULT FALSE,
    run_id BIGINT NOT NULL,
    message_id TEXT NOT NULL,
    src_node_id BIGINT NOT NULL,
    dst_node_id BIGINT NOT NULL,
    reply_to TEXT NOT NULL,
    group_id TEXT NOT NULL,
    ttl DOUBLE PRECISION NOT NULL,
    message_type TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    error_code BIGINT,
    error_reason TEXT,
    has_content BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS object (
    object_id BYTEA PRIMARY KEY,
    content BYTEA,
    children BYTEA NOT NULL,
    ref_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS object_run (
    object_id BYTEA NOT NULL,
    run_id BIGINT NOT NULL,
    PRIMARY KEY (object_id, run_id)
);
CREATE INDEX IF NOT EXISTS object_run_by_run ON object_run (run_id);
CREATE TABLE IF NOT EXISTS fab (
    hash TEXT PRIMARY KEY,
    content BYTEA NOT NULL,
    verifications TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS federation (
    name TEXT PRIMARY KEY,
    simulation_config BYTEA NOT NULL
);
"#;

/// How to reach the database and how many connections to keep.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The server, database, credentials and TLS settings.
    pub target: PgTarget,
    /// Connections in the pool at most.
    pub pool_size: usize,
    /// How long a call waits for a connection (or to make one) before it fails as unavailable.
    pub wait: Duration,
}

impl PgOptions {
    /// Defaults for a target: 16 connections, 5 s to get one.
    pub fn new(target: PgTarget) -> Self {
        Self {
            target,
            pool_size: 16,
            wait: Duration::from_secs(5),
        }
    }
}

/// What both engines share: the pool and the clock.
struct Shared {
    pool: Pool,
    clock: Arc<dyn Clock>,
    /// The target, password masked, for messages.
    name: String,
    /// What the other replicas tell through notifications.
    hints: Arc<listen::Hints>,
    /// The task that listens for them (started once the schema is there; aborted with the
    /// engines).
    listener: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
    /// Traffic and runtime counted here, not yet added to the run rows.
    usage: usage::PendingUsage,
    /// The task that adds them every second (aborted with the engines).
    flusher: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in [self.listener.get(), self.flusher.get()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// Every [`usage::FLUSH_EVERY`], while the engines live: adds the counted usage to the run rows
/// and ends the ServerApp tokens that expired.
fn spawn_flusher(shared: Weak<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(usage::FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if let Err(e) = shared.flush_usage().await {
                tracing::debug!("run usage kept for the next try: {e}");
            }
            if let Err(e) = shared.expire_tokens().await {
                tracing::debug!("expired tokens left for the next sweep: {e}");
            }
        }
    })
}

/// Sends a notification to every replica (delivered when the transaction commits).
async fn notify(tx: &Tx<'_>, kind: char, id: u64) -> PgResult<()> {
    let stmt = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    tx.execute(&stmt, &[&listen::CHANNEL, &format!("{kind}{id}")])
        .await?;
    Ok(())
}

/// Connects, creates or checks the schema, and returns both engines. Fails with a message that
/// names the problem (unreachable server, wrong password, newer schema) and the target (password
/// masked).
pub async fn connect(options: PgOptions, clock: Arc<dyn Clock>) -> Result<Stores, StateError> {
    let name = options.target.masked();
    let (config, tls) = options
        .target
        .client_config()
        .map_err(|e| StateError::Database {
            target: name.clone(),
            detail: e.to_string(),
            source: Box::new(e),
        })?;
    let hints = Arc::new(listen::Hints::default());
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    type StartListener = Box<dyn FnOnce() -> tokio::task::JoinHandle<()> + Send>;
    let (manager, start_listener): (Manager, StartListener) = match tls {
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (hints, name) = (hints.clone(), name.clone());
            (
                Manager::from_config(config.clone(), tls.clone(), manager_config),
                Box::new(move || tokio::spawn(listen::run(config, tls, hints, name))),
            )
        }
        None => {
            let (hints, name) = (hints.clone(), name.clone());
            (
                Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config),
                Box::new(move || {
                    tokio::spawn(listen::run(config, tokio_postgres::NoTls, hints, name))
                }),
            )
        }
    };
    let pool = Pool::builder(manager)
        .max_size(options.pool_size.max(1))
        .wait_timeout(Some(options.wait))
        .create_timeout(Some(options.wait))
        .recycle_timeout(Some(options.wait))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build();
    let pool = pool.map_err(|e| StateError::Database {
        target: name.clone(),
        detail: e.to_string(),
        source: Box::new(e),
    })?;
    let shared = Arc::new(Shared {
        pool,
        clock,
        name,
        hints,
        listener: std::sync::OnceLock::new(),
        usage: usage::PendingUsage::default(),
        flusher: std::sync::OnceLock::new(),
    });
    shared.migrate().await?;
    // Notifications are listened for once there are tables to rebuild the hints from.
    let _ = shared.listener.set(start_listener());
    let _ = shared.flusher.set(spawn_flusher(Arc::downgrade(&shared)));
    Ok(Stores {
        state: Arc::new(PgLinkState {
            shared: shared.clone(),
        }),
        objects: Arc::new(PgObjects {
            shared: shared.clone(),
        }),
        fabs: Some(Arc::new(PgFabs { shared })),
    })
}

/// A PostgreSQL error as the state reports it: connection trouble is [`StateError::Unavailable`].
fn pg_error(name: &str, e: tokio_postgres::Error) -> StateError {
    use std::error::Error as _;
    let unavailable = e.is_closed()
        || e.code().is_some_and(|c| {
            c.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(c)
        })
        || (e.code().is_none() && e.source().is_some_and(|s| s.is::<std::io::Error>()));
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match e.source() {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    };
    let detail = match fix_for(&e) {
        Some(fix) => format!("{detail} ({fix})"),
        None => detail,
    };
    let (target, source) = (name.to_owned(), Box::new(e));
    if unavailable {
        StateError::Unavailable {
            target,
            detail,
            source,
        }
    } else {
        StateError::Database {
            target,
            detail,
            source,
        }
    }
}

/// What the operator can do about a refused connection, when the error says enough.
fn fix_for(e: &tokio_postgres::Error) -> Option<&'static str> {
    use rustls::CertificateError as C;
    if let Some(db) = e.as_db_error() {
        return match *db.code() {
            SqlState::INVALID_PASSWORD => {
                Some("check the user and password: the URL, --database-password-file or PGPASSWORD")
            }
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                if db.message().contains("no encryption") =>
            {
                Some(
                    "the server takes encrypted connections only: add sslmode=require, or \
                 sslmode=verify-full&sslrootcert=CA-FILE, to the URL",
                )
            }
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION => Some(
                "the server does not let this user in to this database from here: check the \
                 user, the password and the server's pg_hba.conf",
            ),
            _ => None,
        };
    }
    let tls = tls_error(e)?;
    Some(match tls {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the database server's certificate is not signed by a CA in sslrootcert (or in the \
             system's roots when sslrootcert is not given): give its CA as sslrootcert=FILE"
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            "the database server's certificate does not name the host of the URL: connect by a \
             name or address the certificate has, or use sslmode=verify-ca to check the CA only"
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the database server's certificate has expired: renew it on the server"
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the database server's certificate is not valid yet: check the clocks"
        }
        _ => "TLS with the database server failed: check sslmode and sslrootcert in the URL",
    })
}

/// The TLS error under a connection error, if that is what it is.
fn tls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        source = s.source();
    }
    None
}

fn pool_error(name: &str, e: deadpool_postgres::PoolError) -> StateError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(name, e),
        other => StateError::Unavailable {
            target: name.to_owned(),
            detail: format!("no database connection ({other})"),
            source: Box::new(other),
        },
    }
}

/// How long to wait before attempt `attempt + 1` of an aborted transaction: a random time up
/// to 50 ms, doubled after each attempt ("full jitter").
fn retry_pause(attempt: usize) -> std::time::Duration {
    use rand_core::RngCore;
    let cap_ms = 50u64 << attempt.saturating_sub(1).min(6);
    std::time::Duration::from_millis(u64::from(rand_core::OsRng.next_u32()) % (cap_ms + 1))
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Runs `$body` (an expression of type `Result<T, tokio_postgres::Error>` that may use `$tx`, a
/// transaction, and `$now`, the clock's time) in one transaction, retried on deadlocks and
/// serialization failures; evaluates to `Result<T, StateError>`.
macro_rules! in_tx {
    ($shared:expr, |$tx:ident, $now:ident| $body:expr) => {{
        let shared: &Shared = $shared;
        let mut attempt = 0;
        let started = std::time::Instant::now();
        let result = loop {
            attempt += 1;
            let mut client = match shared.pool.get().await {
                Ok(c) => c,
                Err(e) => break Err(pool_error(&shared.name, e)),
            };
            let $now = shared.clock.now();
            let outcome: Result<_, tokio_postgres::Error> = async {
                let transaction = client.transaction().await?;
                let value = {
                    let $tx = &transaction;
                    $body
                }?;
                transaction.commit().await?;
                Ok(value)
            }
            .await;
            match outcome {
                Ok(v) => break Ok(v),
                Err(e) if retryable(&e) && attempt < ATTEMPTS => {
                    // The transaction that won goes on; retried at once, this one can take the
                    // same locks first again and deadlock with it again (seen five times in a
                    // row on a loaded machine). A random pause, longer after each attempt,
                    // lets the winner finish; the connection goes back to the pool meanwhile.
                    drop(client);
                    tokio::time::sleep(retry_pause(attempt)).await;
                    continue;
                }
                Err(e) => break Err(pg_error(&shared.name, e)),
            }
        };
        $crate::record_call("postgresql", started, result.is_ok());
        result
    }};
}

/// Runs `$body` on a pooled connection without a transaction: for reads of one statement, or
/// of several whose answers need not be one snapshot (each statement of a READ COMMITTED
/// transaction sees its own snapshot anyway). Two round trips fewer than [`in_tx!`].
macro_rules! read {
    ($shared:expr, |$client:ident| $body:expr) => {{
        let shared: &Shared = $shared;
        let started = std::time::Instant::now();
        let result = match shared.pool.get().await {
            Err(e) => Err(pool_error(&shared.name, e)),
            Ok(client) => {
                let $client = &client;
                let outcome: Result<_, tokio_postgres::Error> = $body;
                outcome.map_err(|e| pg_error(&shared.name, e))
            }
        };
        $crate::record_call("postgresql", started, result.is_ok());
        result
    }};
}

impl Shared {
    /// Ends the ServerApp tokens that expired (and fails their runs), whoever reads them.
    async fn expire_tokens(&self) -> Result<(), StateError> {
        in_tx!(self, |tx, now| async { expire_tokens(tx, now).await }.await)
    }

    /// Adds the usage counted here to the run rows, in one statement; on failure the counts are
    /// kept for the next try.
    async fn flush_usage(&self) -> Result<(), StateError> {
        let taken = self.usage.take();
        if taken.is_empty() {
            return Ok(());
        }
        // In run order, so that two replicas flushing the same runs take the row locks alike.
        let mut rows: Vec<(&RunId, &usage::Usage)> = taken.iter().collect();
        rows.sort_by_key(|(run_id, _)| **run_id);
        let run_ids: Vec<i64> = rows.iter().map(|(r, _)| id(**r)).collect();
        let sent: Vec<i64> = rows.iter().map(|(_, u)| id(u.sent)).collect();
        let recv: Vec<i64> = rows.iter().map(|(_, u)| id(u.recv)).collect();
        let runtime: Vec<f64> = rows.iter().map(|(_, u)| u.runtime).collect();
        let written = in_tx!(self, |tx, _now| async {
            let stmt = tx
                .prepare_cached(
                    "UPDATE run SET bytes_sent = run.bytes_sent + u.sent, \
                     bytes_recv = run.bytes_recv + u.recv, \
                     clientapp_runtime = run.clientapp_runtime + u.runtime \
                     FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::DOUBLE PRECISION[]) \
                     AS u(run_id, sent, recv, runtime) WHERE run.run_id = u.run_id",
                )
                .await?;
            tx.execute(&stmt, &[&run_ids, &sent, &recv, &runtime])
                .await
                .map(|_| ())
        }
        .await);
        if written.is_err() {
            self.usage.restore(taken);
        }
        written
    }

    /// Creates the schema, or checks the one there, under the advisory lock.
    async fn migrate(&self) -> Result<(), StateError> {
        let version = in_tx!(self, |tx, _now| {
            async {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS flwr_schema (version INTEGER NOT NULL)")
                .await?;
            let found: Option<i32> = tx
                .query_opt("SELECT MAX(version) FROM flwr_schema", &[])
                .await?
                .and_then(|r| r.get::<_, Option<i32>>(0));
            if found.is_none() {
                tx.batch_execute(SCHEMA).await?;
                tx.execute(
                    "INSERT INTO flwr_schema (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )
                .await?;
            }
            // ALTER TABLE locks the table even when it changes nothing: look first.
            let missing: bool = tx
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() \
                     AND (table_name, column_name) IN (('message_ins', 'delivered_at'), ('message_ins', 'confirmed'), \
                     ('token', 'launcher'), ('fab', 'verifications'))) < 4 \
                     OR to_regclass('message_res_by_id') IS NULL OR to_regclass('federation') IS NULL \
                     OR EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'content' AND attstorage <> 'e' \
                     AND attrelid IN (to_regclass('object'), to_regclass('fab')))",
                    &[],
                )
                .await?
                .get(0);
            if missing && found.is_none_or(|v| v <= SCHEMA_VERSION) {
                tx.batch_execute(SCHEMA_ADDITIONS).await?;
            }
            Ok(found.unwrap_or(SCHEMA_VERSION))
        }
        .await
        })?;
        if version > SCHEMA_VERSION {
            return Err(StateError::SchemaVersion {
                target: self.name.clone(),
                found: version.into(),
                fix: format!(
                    "newer than this SuperLink knows ({SCHEMA_VERSION}): upgrade this SuperLink, \
                     or point it to another database"
                ),
            });
        }
        Ok(())
    }
}

fn id(v: u64) -> i64 {
    v as i64
}

fn uid(v: i64) -> u64 {
    v as u64
}

const NODE_COLS: &str = "node_id, owner_aid, owner_name, status, registered_at, last_activated_at, last_deactivated_at, unregistered_at, online_until, heartbeat_interval, public_key";

fn node_from_row(r: &Row) -> Node {
    let status: &str = r.get(3);
    Node {
        node_id: uid(r.get(0)),
        owner_aid: r.get(1),
        owner_name: r.get(2),
        status: NodeStatus::from_stored(status),
        registered_at: r.get(4),
        last_activated_at: r.get(5),
        last_deactivated_at: r.get(6),
        unregistered_at: r.get(7),
        online_until: r.get(8),
        heartbeat_interval: r.get(9),
        public_key: Bytes::from(r.get::<_, Vec<u8>>(10)),
    }
}

const RUN_COLS: &str = "run_id, fab_id, fab_version, fab_hash, override_config, pending_at, starting_at, running_at, finished_at, status, sub_status, details, flwr_aid, federation, bytes_sent, bytes_recv, clientapp_runtime, run_type, federation_config";
/// The number of [`RUN_COLS`].
const RUN_COLS_LEN: usize = 19;

fn run_from_row(r: &Row) -> Run {
    let status: &str = r.get(9);
    let sub: &str = r.get(10);
    let cfg: &[u8] = r.get(4);
    let run_type: &str = r.get(17);
    Run {
        run_id: uid(r.get(0)),
        fab_id: r.get(1),
        fab_version: r.get(2),
        fab_hash: r.get(3),
        override_config: decode_config(cfg).unwrap_or_default(),
        pending_at: r.get(5),
        starting_at: r.get(6),
        running_at: r.get(7),
        finished_at: r.get(8),
        status: RunStatus {
            status: Status::parse(status).unwrap_or(Status::Pending),
            sub_status: SubStatus::parse(sub).unwrap_or(SubStatus::None),
            details: r.get(11),
        },
        flwr_aid: r.get(12),
        federation: r.get(13),
        bytes_sent: uid(r.get(14)),
        bytes_recv: uid(r.get(15)),
        clientapp_runtime: r.get(16),
        run_type: if run_type == "simulation" {
            RunType::Simulation
        } else {
            RunType::ServerApp
        },
        federation_config: r.get::<_, Option<Vec<u8>>>(18).map(Bytes::from),
    }
}

const META_COLS: &str = "run_id, message_id, src_node_id, dst_node_id, reply_to, group_id, ttl, message_type, created_at, error_code, error_reason, has_content";

fn meta_from_row(r: &Row, o: usize) -> MessageMeta {
    let code: Option<i64> = r.get(o + 9);
    let reason: Option<String> = r.get(o + 10);
    MessageMeta {
        run_id: uid(r.get(o)),
        message_id: r.get(o + 1),
        src_node_id: uid(r.get(o + 2)),
        dst_node_id: uid(r.get(o + 3)),
        reply_to_message_id: r.get(o + 4),
        group_id: r.get(o + 5),
        ttl: r.get(o + 6),
        message_type: r.get(o + 7),
        created_at: r.get(o + 8),
        error: code.map(|code| MessageError {
            code,
            reason: reason.unwrap_or_default(),
        }),
        has_content: r.get(o + 11),
    }
}

/// A message's columns (`META_COLS`) as query parameters.
struct MetaRow<'a> {
    message: &'a MessageMeta,
    run_id: i64,
    src: i64,
    dst: i64,
    code: Option<i64>,
    reason: Option<&'a str>,
}

impl<'a> MetaRow<'a> {
    fn new(message: &'a MessageMeta) -> Self {
        Self {
            message,
            run_id: id(message.run_id),
            src: id(message.src_node_id),
            dst: id(message.dst_node_id),
            code: message.error.as_ref().map(|e| e.code),
            reason: message.error.as_ref().map(|e| e.reason.as_str()),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        let m = self.message;
        [
            &self.run_id,
            &m.message_id,
            &self.src,
            &self.dst,
            &m.reply_to_message_id,
            &m.group_id,
            &m.ttl,
            &m.message_type,
            &m.created_at,
            &self.code,
            &self.reason,
            &m.has_content,
        ]
    }
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;
type PgResult<T> = Result<T, tokio_postgres::Error>;

async fn get_node(tx: &Tx<'_>, node_id: NodeId, lock: bool) -> PgResult<Option<Node>> {
    let sql = format!(
        "SELECT {NODE_COLS} FROM node WHERE node_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let stmt = tx.prepare_cached(&sql).await?;
    Ok(tx
        .query_opt(&stmt, &[&id(node_id)])
        .await?
        .map(|r| node_from_row(&r)))
}

async fn save_node(tx: &Tx<'_>, n: &Node) -> PgResult<()> {
    let stmt = tx
        .prepare_cached(
            "UPDATE node SET status = $2, last_activated_at = $3, last_deactivated_at = $4, \
             unregistered_at = $5, online_until = $6, heartbeat_interval = $7 WHERE node_id = $1",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &id(n.node_id),
            &n.status.as_str(),
            &n.last_activated_at,
            &n.last_deactivated_at,
            &n.unregistered_at,
            &n.online_until,
            &n.heartbeat_interval,
        ],
    )
    .await?;
    Ok(())
}

async fn get_run(tx: &Tx<'_>, run_id: RunId, lock: bool) -> PgResult<Option<Run>> {
    let sql = format!(
        "SELECT {RUN_COLS} FROM run WHERE run_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let stmt = tx.prepare_cached(&sql).await?;
    Ok(tx
        .query_opt(&stmt, &[&id(run_id)])
        .await?
        .map(|r| run_from_row(&r)))
}

/// Ends the tokens whose app stopped sending heartbeats, and their runs (failed), once: the
/// token rows are deleted under their lock, so two replicas never both end one.
/// Writes a run's new status and when it was reached (the transition is checked by the caller),
/// and tells the other replicas: they forget it was running, log streams end when it finishes.
async fn write_status(tx: &Tx<'_>, run_id: RunId, status: &RunStatus, now: f64) -> PgResult<()> {
    let column = crate::status_column(status.status);
    let stmt = tx
        .prepare_cached(&format!(
            "UPDATE run SET status = $2, sub_status = $3, details = $4, {column} = $5 WHERE run_id = $1"
        ))
        .await?;
    tx.execute(
        &stmt,
        &[
            &id(run_id),
            &status.status.as_str(),
            &status.sub_status.as_str(),
            &status.details,
            &now,
        ],
    )
    .await?;
    notify(tx, listen::RUN_STATUS, run_id).await
}

async fn expire_tokens(tx: &Tx<'_>, now: f64) -> PgResult<()> {
    let stmt = tx
        .prepare_cached(
            "DELETE FROM token WHERE active_until < $1 RETURNING run_id, active_until, launcher",
        )
        .await?;
    for row in tx.query(&stmt, &[&now]).await? {
        let (run_id, until): (i64, f64) = (row.get(0), row.get(1));
        let details = no_heartbeat_details(row.get(2));
        let stmt = tx
            .prepare_cached(
                "UPDATE run SET status = 'finished', sub_status = 'failed', details = $2, \
                 finished_at = $3 WHERE run_id = $1 AND status != 'finished'",
            )
            .await?;
        if tx.execute(&stmt, &[&run_id, &details, &until]).await? > 0 {
            notify(tx, listen::RUN_STATUS, uid(run_id)).await?;
        }
    }
    Ok(())
}

/// What a pull found in one transaction.
enum Pulled {
    Message(MessageMeta),
    /// Something for the node that is not to be delivered now (a delivery not yet confirmed,
    /// too recent to repeat, or a row another transaction holds): the node keeps its hint.
    NotYet,
    Nothing,
}

fn expired(m: &MessageMeta, now: f64) -> bool {
    m.created_at + m.ttl < now
}

async fn delete_message(tx: &Tx<'_>, message_id: &str) -> PgResult<()> {
    let stmt = tx
        .prepare_cached("DELETE FROM message_ins WHERE message_id = $1")
        .await?;
    tx.execute(&stmt, &[&message_id]).await?;
    let stmt = tx
        .prepare_cached("DELETE FROM message_res WHERE ins_id = $1")
        .await?;
    tx.execute(&stmt, &[&message_id]).await?;
    Ok(())
}

async fn instruction(tx: &Tx<'_>, message_id: &str, lock: bool) -> PgResult<Option<MessageMeta>> {
    let sql = format!(
        "SELECT {META_COLS} FROM message_ins WHERE message_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let stmt = tx.prepare_cached(&sql).await?;
    Ok(tx
        .query_opt(&stmt, &[&message_id])
        .await?
        .map(|r| meta_from_row(&r, 0)))
}

/// The PostgreSQL state engine.
pub struct PgLinkState {
    shared: Arc<Shared>,
}

#[async_trait]
impl LinkState for PgLinkState {
    async fn ping(&self) -> Result<(), StateError> {
        in_tx!(&self.shared, |tx, _now| async {
            tx.query_one("SELECT 1", &[]).await.map(|_| ())
        }
        .await)
    }

    async fn create_node(&self, node: NewNode) -> Result<NodeId, StateError> {
        let created = in_tx!(&self.shared, |tx, now| {
            async {
            let taken = tx
                .query_opt("SELECT 1 FROM node WHERE public_key = $1", &[&node.public_key.as_ref()])
                .await?
                .is_some();
            if taken {
                return Ok(None);
            }
            loop {
                let node_id = random_id();
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO node (node_id, owner_aid, owner_name, status, registered_at, \
                         heartbeat_interval, public_key) VALUES ($1, $2, $3, 'registered', $4, $5, $6) \
                         ON CONFLICT DO NOTHING",
                    )
                    .await?;
                let inserted = tx
                    .execute(
                        &stmt,
                        &[
                            &id(node_id),
                            &node.owner_aid,
                            &node.owner_name,
                            &now,
                            &node.heartbeat_interval,
                            &node.public_key.as_ref(),
                        ],
                    )
                    .await?;
                if inserted == 1 {
                    return Ok(Some(node_id));
                }
                // A node id taken, or the key registered by another replica meanwhile.
                let taken = tx
                    .query_opt("SELECT 1 FROM node WHERE public_key = $1", &[&node.public_key.as_ref()])
                    .await?
                    .is_some();
                if taken {
                    return Ok(None);
                }
            }
        }
        .await
        })?;
        created.ok_or(StateError::PublicKeyInUse)
    }

    async fn node_id_by_public_key(&self, public_key: &[u8]) -> Result<Option<NodeId>, StateError> {
        let mark = self.shared.hints.mark();
        let found = in_tx!(&self.shared, |tx, _now| async {
            let stmt = tx
                .prepare_cached(
                    "SELECT node_id FROM node WHERE public_key = $1 AND status != 'unregistered'",
                )
                .await?;
            Ok(tx
                .query_opt(&stmt, &[&public_key])
                .await?
                .map(|r| uid(r.get(0))))
        }
        .await)?;
        if let Some(node) = found {
            self.shared.hints.remember_key(public_key, node, mark);
        }
        Ok(found)
    }

    fn cached_node_id(&self, public_key: &[u8]) -> Option<NodeId> {
        self.shared.hints.node_of_key(public_key)
    }

    fn cached_running(&self, run_id: RunId) -> bool {
        self.shared
            .hints
            .is_running(run_id, self.shared.clock.now())
    }

    fn may_have_instruction(&self, node_id: NodeId) -> bool {
        self.shared.hints.may_have_instruction(node_id)
    }

    fn log_events(&self) -> Option<tokio::sync::broadcast::Receiver<RunId>> {
        self.shared.hints.log_events()
    }

    fn arrivals_elsewhere(&self) -> crate::Arrivals {
        match self.shared.hints.arrival_events() {
            Some(events) => crate::Arrivals::Announced(events),
            None => crate::Arrivals::Unannounced,
        }
    }

    fn attach_doorbells(&self, bells: Arc<crate::Doorbells>) {
        self.shared.hints.attach_doorbells(bells);
    }

    async fn activate_node(
        &self,
        public_key: &[u8],
        heartbeat_interval: f64,
    ) -> Result<Result<NodeId, NodeRefusal>, StateError> {
        in_tx!(&self.shared, |tx, now| async {
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {NODE_COLS} FROM node WHERE public_key = $1 FOR UPDATE"
                ))
                .await?;
            let Some(row) = tx.query_opt(&stmt, &[&public_key]).await? else {
                return Ok(Err(NodeRefusal::UnknownKey));
            };
            let mut n = effective_node(node_from_row(&row), now);
            match n.status {
                NodeStatus::Unregistered => Ok(Err(NodeRefusal::UnknownKey)),
                NodeStatus::Online => Ok(Err(NodeRefusal::AlreadyOnline(n.node_id))),
                NodeStatus::Registered | NodeStatus::Offline => {
                    n.status = NodeStatus::Online;
                    n.last_activated_at = Some(now);
                    n.online_until = Some(now + heartbeat::PATIENCE * heartbeat_interval);
                    n.heartbeat_interval = heartbeat_interval;
                    save_node(tx, &n).await?;
                    Ok(Ok(n.node_id))
                }
            }
        }
        .await)
    }

    async fn deactivate_node(
        &self,
        node_id: NodeId,
    ) -> Result<Result<(), NodeRefusal>, StateError> {
        in_tx!(&self.shared, |tx, now| async {
            let Some(node) = get_node(tx, node_id, true).await? else {
                return Ok(Err(NodeRefusal::NotOnline(node_id)));
            };
            let mut n = effective_node(node, now);
            if n.status != NodeStatus::Online {
                return Ok(Err(NodeRefusal::NotOnline(node_id)));
            }
            n.status = NodeStatus::Offline;
            n.last_deactivated_at = Some(now);
            n.online_until = Some(now);
            save_node(tx, &n).await?;
            Ok(Ok(()))
        }
        .await)
    }

    async fn unregister_node(
        &self,
        node_id: NodeId,
        owner_aid: Option<&str>,
    ) -> Result<Result<(), NodeRefusal>, StateError> {
        let unregistered = in_tx!(&self.shared, |tx, now| async {
            let Some(node) = get_node(tx, node_id, true).await? else {
                return Ok(Err(NodeRefusal::NotFound(node_id)));
            };
            if node.status == NodeStatus::Unregistered
                || owner_aid.is_some_and(|o| o != node.owner_aid)
            {
                return Ok(Err(NodeRefusal::NotFound(node_id)));
            }
            let mut n = effective_node(node, now);
            n.status = NodeStatus::Unregistered;
            n.unregistered_at = Some(now);
            n.online_until = Some(n.online_until.map_or(now, |t| t.min(now)));
            save_node(tx, &n).await?;
            notify(tx, listen::UNREGISTERED, node_id).await?;
            Ok(Ok(()))
        }
        .await)?;
        if unregistered.is_ok() {
            // Forgotten here at once; the other replicas hear of it a moment later.
            self.shared.hints.forget_node(node_id);
        }
        Ok(unregistered)
    }

    async fn heartbeat(
        &self,
        node_id: NodeId,
        heartbeat_interval: f64,
    ) -> Result<bool, StateError> {
        in_tx!(&self.shared, |tx, now| async {
            let Some(node) = get_node(tx, node_id, true).await? else {
                return Ok(false);
            };
            if node.status == NodeStatus::Unregistered {
                return Ok(false);
            }
            let mut n = effective_node(node, now);
            if n.status != NodeStatus::Online {
                n.status = NodeStatus::Online;
                n.last_activated_at = Some(now);
            }
            n.online_until = Some(now + heartbeat::PATIENCE * heartbeat_interval);
            n.heartbeat_interval = heartbeat_interval;
            save_node(tx, &n).await?;
            Ok(true)
        }
        .await)
    }

    async fn node(&self, node_id: NodeId) -> Result<Option<Node>, StateError> {
        in_tx!(&self.shared, |tx, now| async {
            Ok(get_node(tx, node_id, false)
                .await?
                .map(|n| effective_node(n, now)))
        }
        .await)
    }

    async fn nodes_of(&self, owner_aid: &str) -> Result<Vec<Node>, StateError> {
        in_tx!(&self.shared, |tx, now| async {
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {NODE_COLS} FROM node WHERE owner_aid = $1 ORDER BY registered_at"
                ))
                .await?;
            Ok(tx
                .query(&stmt, &[&owner_aid])
                .await?
                .iter()
                .map(|r| effective_node(node_from_row(r), now))
                .collect())
        }
        .await)
    }

    async fn census(&self) -> Result<Census, StateError> {
        in_tx!(&self.shared, |tx, now| {
            async {
                let mut census = Census::default();
                let stmt = tx
                    .prepare_cached("SELECT status, online_until FROM node")
                    .await?;
                for r in tx.query(&stmt, &[]).await? {
                    let status: &str = r.get(0);
                    census.count_node(NodeStatus::from_stored(status), r.get(1), now);
                }
                let stmt = tx
                    .prepare_cached(
                        "SELECT status, sub_status, COUNT(*) FROM run GROUP BY status, sub_status",
                    )
                    .await?;
                for r in tx.query(&stmt, &[]).await? {
                    let n: i64 = r.get(2);
                    census
                        .runs
                        .insert((r.get(0), r.get(1)), u64::try_from(n).unwrap_or(0));
                }
                Ok(census)
            }
            .await
        })
    }

    async fn online_node_ids(&self) -> Result<Vec<NodeId>, StateError> {
        in_tx!(&self.shared, |tx, now| {
            async {
            let stmt = tx
                .prepare_cached(
                    "SELECT node_id FROM node WHERE status = 'online' AND online_until > $1 ORDER BY node_id",
                )
                .await?;
            Ok(tx
                .query(&stmt, &[&now])
                .await?
                .iter()
                .map(|r| uid(r.get(0)))
                .collect())
        }
        .await
        })
    }

    async fn create_run(&self, new: NewRun) -> Result<RunId, StateError> {
        let config = encode_config(&new.override_config);
        in_tx!(&self.shared, |tx, now| {
            async {
            loop {
                let run_id = random_id();
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO run (run_id, fab_id, fab_version, fab_hash, override_config, \
                         pending_at, status, sub_status, details, flwr_aid, federation, run_type, \
                         federation_config, context) VALUES ($1, $2, $3, $4, $5, $6, 'pending', '', '', \
                         $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                    )
                    .await?;
                let inserted = tx
                    .execute(
                        &stmt,
                        &[
                            &id(run_id),
                            &new.fab_id,
                            &new.fab_version,
                            &new.fab_hash,
                            &config,
                            &now,
                            &new.flwr_aid,
                            &new.federation,
                            &new.run_type.as_str(),
                            &new.federation_config.as_deref(),
                            &new.context.as_ref(),
                        ],
                    )
                    .await?;
                if inserted == 1 {
                    return Ok(run_id);
                }
            }
        }
        .await
        })
    }

    async fn run(&self, run_id: RunId) -> Result<Option<Run>, StateError> {
        // One statement: the run and its token's deadline. Only when that deadline has passed
        // does the token expire (in a transaction) before the run is read again.
        let mark = self.shared.hints.mark();
        let found = read!(&self.shared, |c| {
            async {
            let stmt = c
                .prepare_cached(&format!(
                    "SELECT {RUN_COLS}, (SELECT active_until FROM token t WHERE t.run_id = run.run_id) \
                     FROM run WHERE run_id = $1"
                ))
                .await?;
            Ok(c.query_opt(&stmt, &[&id(run_id)])
                .await?
                .map(|r| (run_from_row(&r), r.get::<_, Option<f64>>(RUN_COLS_LEN))))
        }
        .await
        })?;
        let mut run = match found {
            Some((_, Some(until))) if until < self.shared.clock.now() => {
                in_tx!(&self.shared, |tx, now| async {
                    expire_tokens(tx, now).await?;
                    get_run(tx, run_id, false).await
                }
                .await)?
            }
            found => found.map(|(run, until)| {
                if run.status.status == Status::Running {
                    self.shared.hints.remember_running(run_id, until, mark);
                }
                run
            }),
        };
        if let Some(run) = &mut run {
            self.shared.usage.apply(run);
        }
        Ok(run)
    }

    async fn runs_of(&self, flwr_aid: &str) -> Result<Vec<Run>, StateError> {
        in_tx!(&self.shared, |tx, now| async {
            expire_tokens(tx, now).await?;
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {RUN_COLS} FROM run WHERE flwr_aid = $1 ORDER BY pending_at DESC"
                ))
                .await?;
            Ok(tx
                .query(&stmt, &[&flwr_aid])
                .await?
                .iter()
                .map(run_from_row)
                .collect::<Vec<_>>())
        }
        .await)
        .map(|mut runs| {
            for run in &mut runs {
                self.shared.usage.apply(run);
            }
            runs
        })
    }

    async fn pending_run_ids(&self) -> Result<Vec<RunId>, StateError> {
        in_tx!(&self.shared, |tx, now| async {
            expire_tokens(tx, now).await?;
            let stmt = tx
                .prepare_cached("SELECT run_id FROM run WHERE status = 'pending' ORDER BY seq")
                .await?;
            Ok(tx
                .query(&stmt, &[])
                .await?
                .iter()
                .map(|r| uid(r.get(0)))
                .collect())
        }
        .await)
    }

    async fn update_run_status(
        &self,
        run_id: RunId,
        status: RunStatus,
    ) -> Result<bool, StateError> {
        let applied = in_tx!(&self.shared, |tx, now| {
            async {
                expire_tokens(tx, now).await?;
                let Some(run) = get_run(tx, run_id, true).await? else {
                    return Ok(None);
                };
                if !run.status.is_valid_transition(&status) {
                    return Ok(Some(false));
                }
                write_status(tx, run_id, &status, now).await?;
                Ok(Some(true))
            }
            .await
        })?;
        if applied == Some(true) {
            self.shared.hints.forget_run(run_id);
        }
        applied.ok_or(StateError::RunNotFound(run_id))
    }

    async fn add_run_usage(
        &self,
        run_id: RunId,
        sent: u64,
        recv: u64,
        clientapp_runtime: f64,
    ) -> Result<(), StateError> {
        let usage = usage::Usage {
            sent,
            recv,
            runtime: clientapp_runtime,
        };
        if self.shared.usage.add(run_id, usage) {
            self.shared.flush_usage().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), StateError> {
        self.shared.flush_usage().await
    }

    async fn context(&self, run_id: RunId) -> Result<Option<Bytes>, StateError> {
        in_tx!(&self.shared, |tx, _now| async {
            let stmt = tx
                .prepare_cached("SELECT context FROM run WHERE run_id = $1")
                .await?;
            Ok(tx
                .query_opt(&stmt, &[&id(run_id)])
                .await?
                .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
        }
        .await)
    }

    async fn simulation_config(&self, federation: &str) -> Result<Option<Bytes>, StateError> {
        in_tx!(&self.shared, |tx, _now| async {
            let stmt = tx
                .prepare_cached("SELECT simulation_config FROM federation WHERE name = $1")
                .await?;
            Ok(tx
                .query_opt(&stmt, &[&federation])
                .await?
                .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
        }
        .await)
    }

    async fn set_simulation_config(
        &self,
        federation: &str,
        config: Bytes,
    ) -> Result<(), StateError> {
        in_tx!(&self.shared, |tx, _now| {
            async {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO federation (name, simulation_config) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET simulation_config = excluded.simulation_config",
                )
                .await?;
            tx.execute(&stmt, &[&federation, &config.as_ref()]).await
        }
        .await
        })?;
        Ok(())
    }

    async fn set_context(&self, run_id: RunId, context: Bytes) -> Result<(), StateError> {
        let n = in_tx!(&self.shared, |tx, _now| async {
            let stmt = tx
                .prepare_cached("UPDATE run SET context = $2 WHERE run_id = $1")
                .await?;
            tx.execute(&stmt, &[&id(run_id), &context.as_ref()]).await
        }
        .await)?;
        if n == 0 {
            return Err(StateError::RunNotFound(run_id));
        }
        Ok(())
    }

    async fn claim_run(
        &self,
        run_id: RunId,
        launcher: Option<&str>,
    ) -> Result<Option<String>, StateError> {
        let claimed = in_tx!(&self.shared, |tx, now| {
            async {
            expire_tokens(tx, now).await?;
            // Racing replicas wait for each other on the run's row; the second finds it
            // starting.
            let starting = RunStatus::new(Status::Starting);
            match get_run(tx, run_id, true).await? {
                Some(run) if run.status.is_valid_transition(&starting) => {}
                _ => return Ok(None),
            }
            let token = random_token();
            // One token per run (a unique run id).
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO token (token, run_id, active_until, launcher) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                )
                .await?;
            let inserted = tx
                .execute(
                    &stmt,
                    &[&token, &id(run_id), &(now + heartbeat::DEFAULT_INTERVAL), &launcher],
                )
                .await?;
            if inserted != 1 {
                return Ok(None);
            }
            write_status(tx, run_id, &starting, now).await?;
            Ok(Some(token))
        }
        .await
        })?;
        if claimed.is_some() {
            self.shared.hints.forget_run(run_id);
        }
        Ok(claimed)
    }

    async fn run_id_by_token(&self, token: &str) -> Result<Option<RunId>, StateError> {
        let found = read!(&self.shared, |c| async {
            let stmt = c
                .prepare_cached("SELECT run_id, active_until FROM token WHERE token = $1")
                .await?;
            Ok(c.query_opt(&stmt, &[&token])
                .await?
                .map(|r| (uid(r.get(0)), r.get::<_, f64>(1))))
        }
        .await)?;
        match found {
            Some((run_id, until)) if until >= self.shared.clock.now() => return Ok(Some(run_id)),
            None => return Ok(None),
            Some(_) => {}
        }
        // Expired: it ends here (with its run) unless another replica got there first.
        in_tx!(&self.shared, |tx, now| async {
            expire_tokens(tx, now).await?;
            let stmt = tx
                .prepare_cached("SELECT run_id FROM token WHERE token = $1")
                .await?;
            Ok(tx.query_opt(&stmt, &[&token]).await?.map(|r| uid(r.get(0))))
        }
        .await)
    }

    async fn delete_token(&self, run_id: RunId) -> Result<(), StateError> {
        in_tx!(&self.shared, |tx, _now| async {
            let stmt = tx
                .prepare_cached("DELETE FROM token WHERE run_id = $1")
                .await?;
            tx.execute(&stmt, &[&id(run_id)]).await.map(|_| ())
        }
        .await)
    }

    async fn app_heartbeat(&self, token: &str) -> Result<bool, StateError> {
        in_tx!(&self.shared, |tx, now| async {
            expire_tokens(tx, now).await?;
            let stmt = tx
                .prepare_cached("UPDATE token SET active_until = $2 WHERE token = $1")
                .await?;
            let n = tx
                .execute(
                    &stmt,
                    &[
                        &token,
                        &(now + heartbeat::PATIENCE * heartbeat::DEFAULT_INTERVAL),
                    ],
                )
                .await?;
            Ok(n > 0)
        }
        .await)
    }

    async fn add_log(&self, run_id: RunId, text: &str) -> Result<(), StateError> {
        let found = in_tx!(&self.shared, |tx, now| async {
            // The run's row lock orders its log entries across replicas.
            if get_run(tx, run_id, true).await?.is_none() {
                return Ok(false);
            }
            let last: Option<f64> = tx
                .query_one("SELECT MAX(ts) FROM log WHERE run_id = $1", &[&id(run_id)])
                .await?
                .get(0);
            let ts = crate::log_time(last, now);
            let stmt = tx
                .prepare_cached("INSERT INTO log (run_id, ts, text) VALUES ($1, $2, $3)")
                .await?;
            tx.execute(&stmt, &[&id(run_id), &ts, &text]).await?;
            notify(tx, listen::LOG, run_id).await?;
            Ok(true)
        }
        .await)?;
        if found {
            Ok(())
        } else {
            Err(StateError::RunNotFound(run_id))
        }
    }

    async fn logs_after(&self, run_id: RunId, after: f64) -> Result<(String, f64), StateError> {
        let r = in_tx!(&self.shared, |tx, _now| async {
            if get_run(tx, run_id, false).await?.is_none() {
                return Ok(None);
            }
            let stmt = tx
                .prepare_cached("SELECT text FROM log WHERE run_id = $1 AND ts > $2 ORDER BY ts")
                .await?;
            let parts: Vec<String> = tx
                .query(&stmt, &[&id(run_id), &after])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let latest: Option<f64> = tx
                .query_one("SELECT MAX(ts) FROM log WHERE run_id = $1", &[&id(run_id)])
                .await?
                .get(0);
            Ok(Some((parts.concat(), latest.unwrap_or(0.0))))
        }
        .await)?;
        r.ok_or(StateError::RunNotFound(run_id))
    }

    async fn store_instruction(&self, message: MessageMeta) -> Result<Option<String>, StateError> {
        if message.src_node_id != SUPERLINK_NODE_ID {
            return Ok(None);
        }
        let stored = in_tx!(&self.shared, |tx, _now| store_instruction_tx(tx, &message)
            .await)?;
        if stored.is_some() {
            // This replica's own hint turns at once; its notification arrives a moment later.
            self.shared.hints.queued_here(message.dst_node_id);
        }
        Ok(stored)
    }

    async fn store_instruction_with_objects(
        &self,
        _objects: &dyn ObjectStore,
        message: MessageMeta,
        tree: &ObjectTree,
    ) -> Result<(Option<String>, Vec<ObjectId>), StateError> {
        let ours = message.src_node_id == SUPERLINK_NODE_ID;
        let (stored, to_push) = in_tx!(&self.shared, |tx, _now| {
            async {
                let to_push =
                    preregister_all_tx(tx, message.run_id, std::slice::from_ref(tree)).await?;
                let stored = match ours {
                    true => store_instruction_tx(tx, &message).await?,
                    false => None,
                };
                Ok((stored, to_push))
            }
            .await
        })?;
        if stored.is_some() {
            self.shared.hints.queued_here(message.dst_node_id);
        }
        Ok((stored, to_push))
    }

    async fn pull_instruction(&self, node_id: NodeId) -> Result<Option<MessageMeta>, StateError> {
        let mark = self.shared.hints.mark();
        let pulled = in_tx!(&self.shared, |tx, now| {
            async {
            loop {
                // Delivered once across replicas: the row is locked, and a replica that finds
                // it locked takes the next one.
                let stmt = tx
                    .prepare_cached(&format!(
                        "SELECT seq, {META_COLS} FROM message_ins WHERE dst_node_id = $1 AND NOT delivered \
                         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
                    ))
                    .await?;
                if let Some(row) = tx.query_opt(&stmt, &[&id(node_id)]).await? {
                    let seq: i64 = row.get(0);
                    let meta = meta_from_row(&row, 1);
                    if expired(&meta, now) {
                        delete_message(tx, &meta.message_id).await?;
                        continue;
                    }
                    let stmt = tx
                        .prepare_cached(
                            "UPDATE message_ins SET delivered = TRUE, delivered_at = $2 WHERE seq = $1",
                        )
                        .await?;
                    tx.execute(&stmt, &[&seq, &now]).await?;
                    return Ok(Pulled::Message(meta));
                }
                // Nothing new: a delivery that was lost, if any (any replica may have made it).
                let stmt = tx
                    .prepare_cached(&format!(
                        "SELECT seq, delivered_at, {META_COLS} FROM message_ins i WHERE dst_node_id = $1 \
                         AND delivered AND NOT confirmed AND delivered_at IS NOT NULL AND created_at + ttl > $2 \
                         AND NOT EXISTS (SELECT 1 FROM message_res r WHERE r.ins_id = i.message_id) \
                         ORDER BY seq FOR UPDATE SKIP LOCKED"
                    ))
                    .await?;
                let waiting = tx.query(&stmt, &[&id(node_id), &now]).await?;
                if waiting.is_empty() {
                    // Both queries skip rows another transaction holds (a ServerApp's pull
                    // locks the instructions it waits on, on any replica). Such a row is not
                    // "nothing": dropping the hint for it would leave the node polling an
                    // empty cache until its next notification, which may never come.
                    let stmt = tx
                        .prepare_cached(
                            "SELECT EXISTS (SELECT 1 FROM message_ins i WHERE dst_node_id = $1 \
                             AND (NOT delivered OR (NOT confirmed \
                             AND NOT EXISTS (SELECT 1 FROM message_res r WHERE r.ins_id = i.message_id))))",
                        )
                        .await?;
                    let held: bool = tx.query_one(&stmt, &[&id(node_id)]).await?.get(0);
                    return Ok(if held { Pulled::NotYet } else { Pulled::Nothing });
                }
                let Some(row) = waiting
                    .iter()
                    .find(|r| r.get::<_, f64>(1) + REDELIVER_AFTER <= now)
                else {
                    return Ok(Pulled::NotYet);
                };
                let seq: i64 = row.get(0);
                let meta = meta_from_row(row, 2);
                tracing::info!(node_id, message_id = %meta.message_id, "delivering again an instruction its node did not confirm");
                let stmt = tx
                    .prepare_cached("UPDATE message_ins SET delivered_at = $2 WHERE seq = $1")
                    .await?;
                tx.execute(&stmt, &[&seq, &now]).await?;
                return Ok(Pulled::Message(meta));
            }
        }
        .await
        })?;
        Ok(match pulled {
            Pulled::Message(meta) => Some(meta),
            Pulled::NotYet => None,
            Pulled::Nothing => {
                self.shared.hints.found_nothing(node_id, mark);
                None
            }
        })
    }

    async fn confirm_instruction(
        &self,
        node_id: NodeId,
        message_id: &str,
    ) -> Result<(), StateError> {
        let message_id = message_id.to_owned();
        in_tx!(&self.shared, |tx, _now| {
            async {
            let stmt = tx
                .prepare_cached(
                    "UPDATE message_ins SET confirmed = TRUE WHERE message_id = $1 AND dst_node_id = $2 AND delivered",
                )
                .await?;
            tx.execute(&stmt, &[&message_id, &id(node_id)]).await?;
            Ok(())
        }
        .await
        })
    }

    async fn delivered_instructions(
        &self,
        node_id: NodeId,
        run_id: RunId,
    ) -> Result<Vec<String>, StateError> {
        in_tx!(&self.shared, |tx, _now| {
            async {
            let stmt = tx
                .prepare_cached(
                    "SELECT message_id FROM message_ins WHERE dst_node_id = $1 AND run_id = $2 AND delivered",
                )
                .await?;
            Ok(tx
                .query(&stmt, &[&id(node_id), &id(run_id)])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
        }
        .await
        })
    }

    async fn store_reply(
        &self,
        message: MessageMeta,
    ) -> Result<Result<String, ReplyRejected>, StateError> {
        in_tx!(&self.shared, |tx, now| store_reply_tx(tx, &message, now)
            .await)
    }

    async fn store_reply_with_objects(
        &self,
        _objects: &dyn ObjectStore,
        message: MessageMeta,
        trees: &[ObjectTree],
        store: bool,
    ) -> Result<(Option<Result<String, ReplyRejected>>, Vec<ObjectId>), StateError> {
        in_tx!(&self.shared, |tx, now| {
            async {
                let to_push = preregister_all_tx(tx, message.run_id, trees).await?;
                let stored = match store {
                    true => Some(store_reply_tx(tx, &message, now).await?),
                    false => None,
                };
                Ok((stored, to_push))
            }
            .await
        })
    }

    async fn take_replies(&self, message_ids: &[String]) -> Result<Vec<PulledReply>, StateError> {
        let mut ids: Vec<&str> = Vec::new();
        let mut seen = HashSet::new();
        for message_id in message_ids {
            if seen.insert(message_id.as_str()) {
                ids.push(message_id);
            }
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // A few statements for the whole list, however long: the instructions (locked, in one
        // order so that replicas taking overlapping lists do not deadlock), their nodes, their
        // replies, then one update of the replies taken and one delete of everything answered
        // with an error.
        in_tx!(&self.shared, |tx, now| {
            async {
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT {META_COLS} FROM message_ins WHERE message_id = ANY($1) \
                     ORDER BY message_id FOR UPDATE"
                ))
                .await?;
            let instructions: HashMap<String, MessageMeta> = tx
                .query(&stmt, &[&ids])
                .await?
                .iter()
                .map(|r| {
                    let m = meta_from_row(r, 0);
                    (m.message_id.clone(), m)
                })
                .collect();
            let nodes: Vec<i64> = instructions.values().map(|m| id(m.dst_node_id)).collect();
            let stmt = tx
                .prepare_cached(
                    "SELECT node_id, online_until FROM node \
                     WHERE node_id = ANY($1) AND status != 'unregistered'",
                )
                .await?;
            let online_until: HashMap<NodeId, Option<f64>> = tx
                .query(&stmt, &[&nodes])
                .await?
                .iter()
                .map(|r| (uid(r.get(0)), r.get(1)))
                .collect();
            let stmt = tx
                .prepare_cached(&format!(
                    "SELECT ins_id, {META_COLS} FROM message_res WHERE ins_id = ANY($1)"
                ))
                .await?;
            let replies: HashMap<String, MessageMeta> = tx
                .query(&stmt, &[&ids])
                .await?
                .iter()
                .map(|r| (r.get(0), meta_from_row(r, 1)))
                .collect();
            let mut out = Vec::new();
            let mut answered: Vec<&str> = Vec::new();
            let mut taken: Vec<&str> = Vec::new();
            for message_id in &ids {
                let Some(ins) = instructions.get(*message_id) else {
                    out.push(PulledReply::Generated(message_unavailable(message_id, now)));
                    continue;
                };
                if expired(ins, now) {
                    answered.push(message_id);
                    out.push(PulledReply::Generated(message_unavailable(message_id, now)));
                    continue;
                }
                let online = online_until
                    .get(&ins.dst_node_id)
                    .copied()
                    .flatten()
                    .is_some_and(|t| t >= now);
                if !online {
                    answered.push(message_id);
                    out.push(PulledReply::Generated(error_reply_for(
                        ins,
                        error_code::NODE_UNAVAILABLE,
                        now,
                    )));
                    continue;
                }
                if let Some(reply) = replies.get(*message_id) {
                    if reply.created_at + reply.ttl < now {
                        answered.push(message_id);
                        out.push(PulledReply::Generated(error_reply_for(
                            ins,
                            error_code::REPLY_MESSAGE_UNAVAILABLE,
                            now,
                        )));
                    } else {
                        taken.push(message_id);
                        out.push(PulledReply::Stored(reply.clone()));
                    }
                }
            }
            if !taken.is_empty() {
                let stmt = tx
                    .prepare_cached(
                        "UPDATE message_res SET delivered = TRUE WHERE ins_id = ANY($1) AND NOT delivered",
                    )
                    .await?;
                tx.execute(&stmt, &[&taken]).await?;
            }
            if !answered.is_empty() {
                let stmt = tx
                    .prepare_cached("DELETE FROM message_ins WHERE message_id = ANY($1)")
                    .await?;
                tx.execute(&stmt, &[&answered]).await?;
                let stmt = tx
                    .prepare_cached("DELETE FROM message_res WHERE ins_id = ANY($1)")
                    .await?;
                tx.execute(&stmt, &[&answered]).await?;
            }
            Ok(out)
        }
        .await
        })
    }

    async fn confirm_reply(&self, run_id: RunId, reply_id: &str) -> Result<(), StateError> {
        in_tx!(&self.shared, |tx, _now| {
            async {
            let stmt = tx
                .prepare_cached(
                    "SELECT ins_id FROM message_res WHERE message_id = $1 AND run_id = $2 AND delivered",
                )
                .await?;
            if let Some(row) = tx.query_opt(&stmt, &[&reply_id, &id(run_id)]).await? {
                let ins: String = row.get(0);
                delete_message(tx, &ins).await?;
            }
            Ok(())
        }
        .await
        })
    }

    async fn delete_messages(&self, message_ids: &[String]) -> Result<(), StateError> {
        in_tx!(&self.shared, |tx, _now| async {
            for message_id in message_ids {
                delete_message(tx, message_id).await?;
            }
            Ok(())
        }
        .await)
    }

    async fn delete_run_messages(&self, run_id: RunId) -> Result<(), StateError> {
        in_tx!(&self.shared, |tx, _now| {
            async {
            tx.execute(
                "DELETE FROM message_res WHERE ins_id IN (SELECT message_id FROM message_ins WHERE run_id = $1)",
                &[&id(run_id)],
            )
            .await?;
            tx.execute("DELETE FROM message_ins WHERE run_id = $1", &[&id(run_id)])
                .await?;
            Ok(())
        }
        .await
        })
    }
}

/// [`LinkState::store_reply`] in `tx`.
async fn store_reply_tx(
    tx: &Tx<'_>,
    message: &MessageMeta,
    now: f64,
) -> PgResult<Result<String, ReplyRejected>> {
    let ins_id = message.reply_to_message_id.as_str();
    let ins = match instruction(tx, ins_id, true).await? {
        Some(i) if expired(&i, now) => {
            delete_message(tx, ins_id).await?;
            None
        }
        other => other,
    };
    let Some(ins) = ins else {
        return Ok(Err(ReplyRejected::NoInstruction(ins_id.to_owned())));
    };
    if let Err(why) = check_reply(&ins, message) {
        return Ok(Err(why));
    }
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO message_res (ins_id, {META_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (ins_id) DO UPDATE SET delivered = FALSE, run_id = $2, message_id = $3, \
             src_node_id = $4, dst_node_id = $5, reply_to = $6, group_id = $7, ttl = $8, \
             message_type = $9, created_at = $10, error_code = $11, error_reason = $12, has_content = $13"
        ))
        .await?;
    let row = MetaRow::new(message);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ins_id];
    params.extend(row.params());
    tx.execute(&stmt, &params).await?;
    notify(tx, listen::ARRIVAL, message.run_id).await?;
    Ok(Ok(message.message_id.clone()))
}

/// [`LinkState::store_instruction`] in `tx`, for an instruction from the SuperLink.
async fn store_instruction_tx(tx: &Tx<'_>, message: &MessageMeta) -> PgResult<Option<String>> {
    if get_run(tx, message.run_id, false).await?.is_none() {
        return Ok(None);
    }
    let dst_ok = get_node(tx, message.dst_node_id, false)
        .await?
        .is_some_and(|n| matches!(n.status, NodeStatus::Online | NodeStatus::Offline));
    if !dst_ok {
        return Ok(None);
    }
    delete_message(tx, &message.message_id).await?;
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO message_ins ({META_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .await?;
    tx.execute(&stmt, &MetaRow::new(message).params()).await?;
    notify(tx, listen::INSTRUCTION, message.dst_node_id).await?;
    Ok(Some(message.message_id.clone()))
}

/// Pre-registers every tree for `run_id` in `tx`; the ids to push, each once, in order.
async fn preregister_all_tx(
    tx: &Tx<'_>,
    run_id: RunId,
    trees: &[ObjectTree],
) -> PgResult<Vec<ObjectId>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for t in trees {
        for id in preregister_tx(tx, run_id, t).await? {
            if seen.insert(id) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// Pre-registers `tree` for `run_id` in `tx`; the ids still to push (deduplicated, in
/// post-order).
async fn preregister_tx(tx: &Tx<'_>, run_id: u64, tree: &ObjectTree) -> PgResult<Vec<ObjectId>> {
    // Each distinct object once, children before parents; then four statements for the
    // whole tree, however large.
    let mut seen = HashSet::new();
    let nodes: Vec<&ObjectTree> = tree
        .post_order()
        .into_iter()
        .filter(|n| seen.insert(n.id))
        .collect();
    let keys: Vec<&[u8]> = nodes.iter().map(|n| n.id.as_bytes().as_slice()).collect();
    let blobs: Vec<Vec<u8>> = nodes
        .iter()
        .map(|n| children_blob(&n.children.iter().map(|c| c.id).collect::<Vec<_>>()))
        .collect();
    // Keys in one order, so that replicas inserting overlapping trees wait rather than
    // deadlock.
    let mut sorted: Vec<(&[u8], &[u8])> = keys
        .iter()
        .copied()
        .zip(blobs.iter().map(Vec::as_slice))
        .collect();
    sorted.sort_unstable();
    let (sorted_keys, sorted_blobs): (Vec<&[u8]>, Vec<&[u8]>) = sorted.into_iter().unzip();
    {
        // The objects that are there already are locked first, in id order, so that a
        // concurrent release (a confirmed message whose tree shares them) cannot delete one
        // between our seeing it and our counting a reference to it: it waits, then sees our
        // count. The lock is the one the count's UPDATE takes: a shared lock, upgraded later,
        // would deadlock two pre-registrations that both add a reference to the same object.
        let stmt = tx
            .prepare_cached(
                "SELECT object_id FROM object WHERE object_id = ANY($1) \
             ORDER BY object_id FOR NO KEY UPDATE",
            )
            .await?;
        tx.execute(&stmt, &[&sorted_keys]).await?;
        // Inserted once across replicas: only the inserter counts the references.
        let stmt = tx
            .prepare_cached(
                "INSERT INTO object (object_id, content, children, ref_count) \
             SELECT k, NULL, c, 0 FROM unnest($1::BYTEA[], $2::BYTEA[]) AS u(k, c) \
             ON CONFLICT DO NOTHING RETURNING object_id",
            )
            .await?;
        let inserted: HashSet<Vec<u8>> = tx
            .query(&stmt, &[&sorted_keys, &sorted_blobs])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut references: HashMap<&[u8], i32> = HashMap::new();
        for node in nodes
            .iter()
            .filter(|n| inserted.contains(n.id.as_bytes().as_slice()))
        {
            for c in &node.children {
                *references.entry(c.id.as_bytes().as_slice()).or_default() += 1;
            }
        }
        if !references.is_empty() {
            let mut counts: Vec<(&[u8], i32)> = references.into_iter().collect();
            counts.sort_unstable();
            let (ids, n): (Vec<&[u8]>, Vec<i32>) = counts.into_iter().unzip();
            let stmt = tx
                .prepare_cached(
                    "UPDATE object SET ref_count = object.ref_count + u.n \
                 FROM unnest($1::BYTEA[], $2::INT[]) AS u(k, n) WHERE object_id = u.k",
                )
                .await?;
            tx.execute(&stmt, &[&ids, &n]).await?;
        }
        // Objects that were there already still need their content when it is missing.
        let stmt = tx
            .prepare_cached(
                "SELECT object_id FROM object WHERE object_id = ANY($1) AND content IS NOT NULL",
            )
            .await?;
        let available: HashSet<Vec<u8>> = tx
            .query(&stmt, &[&sorted_keys])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let stmt = tx
        .prepare_cached(
            "INSERT INTO object_run (object_id, run_id) SELECT k, $2 FROM unnest($1::BYTEA[]) AS k \
             ON CONFLICT DO NOTHING",
                )
        .await?;
        tx.execute(&stmt, &[&sorted_keys, &id(run_id)]).await?;
        Ok(nodes
            .iter()
            .filter(|n| {
                let key = n.id.as_bytes().as_slice();
                inserted.contains(key) || !available.contains(key)
            })
            .map(|n| n.id)
            .collect())
    }
}

fn children_blob(ids: &[ObjectId]) -> Vec<u8> {
    ids.iter()
        .flat_map(|i| i.as_bytes().iter().copied())
        .collect()
}

fn children_of(blob: &[u8]) -> Vec<ObjectId> {
    blob.chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .map(ObjectId::from_bytes)
        .collect()
}

/// Deletes `root` if nothing references it, then the children that become unreferenced: one
/// level of the tree at a time.
async fn delete_cascading(tx: &Tx<'_>, root: &ObjectId) -> PgResult<()> {
    // Every object the cascade may touch (the root, when nothing references it, and all its
    // descendants) is locked first, in object-id order: the order in which a pre-registration
    // locks the objects it finds. Locking level by level instead (parent, then children) meets
    // a pre-registration of a tree sharing a child whose id sorts before its parent's in a
    // deadlock, which PostgreSQL breaks only after `deadlock_timeout`.
    let stmt = tx
        .prepare_cached(
            "WITH RECURSIVE t(object_id, children, depth) AS ( \
               SELECT object_id, children, 0 FROM object WHERE object_id = $1 AND ref_count = 0 \
               UNION \
               SELECT o.object_id, o.children, t.depth + 1 FROM t \
               CROSS JOIN LATERAL generate_series(0, length(t.children) / 32 - 1) AS g(i) \
               JOIN object o ON o.object_id = substring(t.children FROM g.i * 32 + 1 FOR 32) \
               WHERE t.depth < 64) \
             SELECT object_id FROM object WHERE object_id IN (SELECT object_id FROM t) \
             ORDER BY object_id FOR NO KEY UPDATE",
        )
        .await?;
    if tx
        .query(&stmt, &[&root.as_bytes().as_slice()])
        .await?
        .is_empty()
    {
        return Ok(());
    }
    let mut level: Vec<Vec<u8>> = vec![root.as_bytes().to_vec()];
    for _ in 0..=64 {
        if level.is_empty() {
            break;
        }
        level.sort_unstable();
        level.dedup();
        // The unreferenced objects of this level go, with their run links, in one statement.
        let stmt = tx
            .prepare_cached(
                "WITH gone AS (DELETE FROM object WHERE object_id = ANY($1) AND ref_count = 0 \
                   RETURNING object_id, children), \
                 unlinked AS (DELETE FROM object_run WHERE object_id IN (SELECT object_id FROM gone)) \
                 SELECT object_id, children FROM gone",
            )
            .await?;
        let rows = tx.query(&stmt, &[&level]).await?;
        if rows.is_empty() {
            break;
        }
        let mut released: HashMap<Vec<u8>, i32> = HashMap::new();
        for row in &rows {
            for c in children_of(&row.get::<_, Vec<u8>>(1)) {
                *released.entry(c.as_bytes().to_vec()).or_default() += 1;
            }
        }
        if released.is_empty() {
            break;
        }
        let mut counts: Vec<(Vec<u8>, i32)> = released.into_iter().collect();
        counts.sort_unstable();
        let (ids, n): (Vec<Vec<u8>>, Vec<i32>) = counts.into_iter().unzip();
        let stmt = tx
            .prepare_cached(
                "UPDATE object SET ref_count = GREATEST(object.ref_count - u.n, 0) \
                 FROM unnest($1::BYTEA[], $2::INT[]) AS u(k, n) WHERE object_id = u.k",
            )
            .await?;
        tx.execute(&stmt, &[&ids, &n]).await?;
        level = ids;
    }
    Ok(())
}

/// The PostgreSQL object store engine.
pub struct PgObjects {
    shared: Arc<Shared>,
}

#[async_trait]
impl ObjectStore for PgObjects {
    async fn preregister(
        &self,
        run_id: u64,
        tree: &ObjectTree,
    ) -> Result<Vec<ObjectId>, StoreError> {
        in_tx!(&self.shared, |tx, _now| preregister_tx(tx, run_id, tree)
            .await)
        .map_err(StoreError::from)
    }

    async fn put(&self, oid: &ObjectId, content: Bytes) -> Result<bool, StoreError> {
        in_tx!(&self.shared, |tx, _now| async {
            let key = oid.as_bytes().as_slice();
            // Stored, and announced to every replica for each run the object belongs to (held
            // ServerApp pulls wait for the objects of replies), in one statement.
            let stmt = tx
                .prepare_cached(
                    "WITH stored AS (UPDATE object SET content = $2 \
                       WHERE object_id = $1 AND content IS NULL RETURNING object_id), \
                     announced AS (SELECT pg_notify($3, $4 || r.run_id::TEXT) \
                       FROM stored JOIN object_run r USING (object_id)) \
                     SELECT (SELECT COUNT(*) FROM stored), (SELECT COUNT(*) FROM announced)",
                )
                .await?;
            let arrival = listen::ARRIVAL.to_string();
            let row = tx
                .query_one(
                    &stmt,
                    &[&key, &content.as_ref(), &listen::CHANNEL, &arrival],
                )
                .await?;
            if row.get::<_, i64>(0) > 0 {
                return Ok(true);
            }
            let stmt = tx
                .prepare_cached("SELECT 1 FROM object WHERE object_id = $1")
                .await?;
            Ok(tx.query_opt(&stmt, &[&key]).await?.is_some())
        }
        .await)
        .map_err(StoreError::from)
    }

    async fn get(&self, oid: &ObjectId) -> Result<Lookup, StoreError> {
        read!(&self.shared, |c| async {
            let stmt = c
                .prepare_cached("SELECT content FROM object WHERE object_id = $1")
                .await?;
            Ok(
                match c.query_opt(&stmt, &[&oid.as_bytes().as_slice()]).await? {
                    None => Lookup::Unknown,
                    Some(r) => match r.get::<_, Option<Vec<u8>>>(0) {
                        None => Lookup::Pending,
                        Some(c) => Lookup::Available(Bytes::from(c)),
                    },
                },
            )
        }
        .await)
        .map_err(StoreError::from)
    }

    async fn unavailable(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, StoreError> {
        let keys: Vec<&[u8]> = ids.iter().map(|i| i.as_bytes().as_slice()).collect();
        let here: HashSet<Vec<u8>> = read!(&self.shared, |c| async {
            let stmt = c
                .prepare_cached(
                    "SELECT object_id FROM object WHERE object_id = ANY($1) \
                     AND content IS NOT NULL",
                )
                .await?;
            Ok(c.query(&stmt, &[&keys])
                .await?
                .iter()
                .map(|r| r.get::<_, Vec<u8>>(0))
                .collect())
        }
        .await)
        .map_err(StoreError::from)?;
        Ok(ids
            .iter()
            .filter(|i| !here.contains(i.as_bytes().as_slice()))
            .copied()
            .collect())
    }

    async fn delete(&self, oid: &ObjectId) -> Result<(), StoreError> {
        in_tx!(&self.shared, |tx, _now| async {
            delete_cascading(tx, oid).await
        }
        .await)
        .map_err(StoreError::from)
    }

    async fn delete_objects_in_run(&self, run_id: u64) -> Result<(), StoreError> {
        in_tx!(&self.shared, |tx, _now| async {
            let rows = tx
                .query(
                    "DELETE FROM object_run WHERE run_id = $1 RETURNING object_id",
                    &[&id(run_id)],
                )
                .await?;
            for row in rows {
                let raw: Vec<u8> = row.get(0);
                if let Ok(b) = <[u8; 32]>::try_from(raw.as_slice()) {
                    delete_cascading(tx, &ObjectId::from_bytes(b)).await?;
                }
            }
            Ok(())
        }
        .await)
        .map_err(StoreError::from)
    }

    async fn tree(&self, root: &ObjectId) -> Result<Option<ObjectTree>, StoreError> {
        read!(&self.shared, |tx| async {
            // The whole tree in one query: each object's children are its 32-byte ids one
            // after the other. UNION keeps one row per object and depth, so a tree that shares
            // subtrees costs its objects times its depth at most, never its paths.
            let stmt = tx
                .prepare_cached(
                    "WITH RECURSIVE t(object_id, children, depth) AS ( \
                       SELECT object_id, children, 0 FROM object WHERE object_id = $1 \
                       UNION \
                       SELECT o.object_id, o.children, t.depth + 1 FROM t \
                       CROSS JOIN LATERAL generate_series(0, length(t.children) / 32 - 1) AS g(i) \
                       JOIN object o ON o.object_id = substring(t.children FROM g.i * 32 + 1 FOR 32) \
                       WHERE t.depth < 64) \
                     SELECT DISTINCT object_id, children FROM t",
                )
                .await?;
            let rows = tx.query(&stmt, &[&root.as_bytes().as_slice()]).await?;
            let mut children: HashMap<ObjectId, Vec<ObjectId>> = HashMap::new();
            for row in rows {
                let raw: Vec<u8> = row.get(0);
                let Ok(b) = <[u8; 32]>::try_from(raw.as_slice()) else {
                    continue;
                };
                children.insert(ObjectId::from_bytes(b), children_of(&row.get::<_, Vec<u8>>(1)));
            }
            fn build(
                id: &ObjectId,
                children: &HashMap<ObjectId, Vec<ObjectId>>,
                depth: usize,
            ) -> Option<ObjectTree> {
                if depth > 64 {
                    return None;
                }
                let kids = children.get(id)?;
                let subtrees = kids
                    .iter()
                    .map(|k| build(k, children, depth + 1))
                    .collect::<Option<Vec<_>>>()?;
                Some(ObjectTree {
                    id: *id,
                    children: subtrees,
                })
            }
            Ok(build(root, &children, 0))
        }
        .await)
        .map_err(StoreError::from)
    }

    async fn len(&self) -> Result<usize, StoreError> {
        in_tx!(&self.shared, |tx, _now| async {
            let n: i64 = tx
                .query_one("SELECT COUNT(*) FROM object", &[])
                .await?
                .get(0);
            Ok(usize::try_from(n).unwrap_or(0))
        }
        .await)
        .map_err(StoreError::from)
    }

    async fn content_bytes(&self) -> Result<u64, StoreError> {
        in_tx!(&self.shared, |tx, _now| async {
            let n: i64 = tx
                .query_one(
                    "SELECT COALESCE(SUM(octet_length(content)), 0)::BIGINT FROM object",
                    &[],
                )
                .await?
                .get(0);
            Ok(u64::try_from(n).unwrap_or(0))
        }
        .await)
        .map_err(StoreError::from)
    }
}

/// FABs in the database, so that every replica serves every FAB.
pub struct PgFabs {
    shared: Arc<Shared>,
}

#[async_trait]
impl FabStore for PgFabs {
    async fn put(
        &self,
        content: Bytes,
        verifications: Verifications,
    ) -> Result<String, StateError> {
        let hash = crate::fabs::fab_hash(&content);
        let json = serde_json::to_string(&verifications).unwrap_or_else(|_| "{}".to_owned());
        let signed = !verifications.is_empty();
        in_tx!(&self.shared, |tx, _now| async {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO fab (hash, content, verifications) VALUES ($1, $2, $3) \
                     ON CONFLICT (hash) DO UPDATE SET verifications = excluded.verifications \
                     WHERE $4",
                )
                .await?;
            tx.execute(&stmt, &[&hash, &content.as_ref(), &json, &signed])
                .await?;
            Ok(())
        }
        .await)?;
        Ok(hash)
    }

    async fn get(&self, hash: &str) -> Result<Option<StoredFab>, StateError> {
        let row = in_tx!(&self.shared, |tx, _now| async {
            let stmt = tx
                .prepare_cached("SELECT content, verifications FROM fab WHERE hash = $1")
                .await?;
            Ok(tx
                .query_opt(&stmt, &[&hash])
                .await?
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, String>(1))))
        }
        .await)?;
        Ok(row.map(|(content, json)| StoredFab {
            content: Bytes::from(content),
            verifications: serde_json::from_str(&json).unwrap_or_else(|e| {
                tracing::warn!(hash, error = %e, "the verifications of a FAB cannot be read");
                Verifications::new()
            }),
        }))
    }
}
