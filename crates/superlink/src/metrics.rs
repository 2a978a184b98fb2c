//! The SuperLink's own metrics (see the README's table): what it records where things happen
//! (messages, object bytes, run status changes, signature checks, ServerApp launches), and what
//! it reads from its state at each scrape (nodes and runs by status, objects held).

use std::sync::Arc;

use flwr_state::{LinkState, ObjectStore};

/// Describes the SuperLink's metrics (once the recorder is installed).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(
        "flwr_messages_stored_total",
        "Messages stored, by kind (instruction: pushed by a ServerApp; reply: pushed by a SuperNode)"
    );
    describe_counter!(
        "flwr_messages_delivered_total",
        "Messages handed out, by kind (instruction: to a SuperNode; reply: to a ServerApp, error replies made by the SuperLink included)"
    );
    describe_counter!(
        "flwr_object_bytes_total",
        Unit::Bytes,
        "Object bytes, by direction (in: pushed and stored; out: pulled)"
    );
    describe_counter!(
        "flwr_run_status_changes_total",
        "Runs that entered a status (pending when created), by status and sub-status"
    );
    describe_counter!(
        "flwr_signature_checks_total",
        "SuperNode signatures, by outcome (valid, invalid; cached: the same key, timestamp and signature verified before; skipped: vouched for by the connection under --fleet-auth-per-connection)"
    );
    describe_counter!(
        "flwr_serverapp_launches_total",
        "ServerApp processes this SuperLink launched (isolation subprocess), by outcome (started, not_started)"
    );
    describe_counter!(
        "flwr_serverapp_exits_total",
        "ServerApp processes of this SuperLink that exited, by outcome (success, failure)"
    );
    describe_counter!(
        "flwr_fleet_held_pulls_total",
        "SuperNode pulls held (--fleet-pull-hold; only our SuperNodes ask), by outcome (instruction: answered as soon as an instruction and its objects were in; empty: the hold ended)"
    );
    describe_counter!(
        "flwr_held_pull_wakeups_total",
        "Held ServerApp pulls (--serverappio-pull-hold) that looked again, by cause (arrival: a reply or object of the run was stored, through this replica or another; timer: 5 s without news, for the replies the SuperLink makes itself; poll: 500 ms without news while other replicas' arrivals were not announced; hold_ended: the last look)"
    );
    metrics::describe_histogram!(
        "flwr_state_call_duration_seconds",
        Unit::Seconds,
        "Calls of the state engine, by engine (sqlite, postgresql) and outcome, waiting for the SQLite lane or a PostgreSQL connection included"
    );
    describe_gauge!(
        "flwr_nodes",
        "SuperNodes by status (registered, online, offline, unregistered), read from the state at each scrape: the same on every replica"
    );
    describe_gauge!(
        "flwr_runs",
        "Runs by status and sub-status, read from the state at each scrape"
    );
    describe_gauge!(
        "flwr_objects_stored",
        "Objects held (pre-registered or pushed), read from the state at each scrape"
    );
    describe_gauge!(
        "flwr_object_content_bytes",
        Unit::Bytes,
        "Bytes of the object contents held, read from the state at each scrape"
    );
}

/// The statuses a run can be in, with their sub-statuses.
const RUN_STATUSES: [(&str, &str); 6] = [
    ("pending", ""),
    ("starting", ""),
    ("running", ""),
    ("finished", "completed"),
    ("finished", "failed"),
    ("finished", "stopped"),
];

/// What a scrape reads from the state first.
pub async fn refresh(state: Arc<dyn LinkState>, objects: Arc<dyn ObjectStore>) {
    match state.census().await {
        Ok(census) => {
            for status in ["registered", "online", "offline", "unregistered"] {
                let n = census.nodes.get(status).copied().unwrap_or(0);
                metrics::gauge!("flwr_nodes", "status" => status).set(n as f64);
            }
            // Every pair each time, so that a pair no run is in any more reads 0.
            for (status, sub_status) in RUN_STATUSES {
                let n = census
                    .runs
                    .get(&(status.to_owned(), sub_status.to_owned()))
                    .copied()
                    .unwrap_or(0);
                metrics::gauge!("flwr_runs", "status" => status, "sub_status" => sub_status)
                    .set(n as f64);
            }
        }
        Err(e) => tracing::debug!(error = %e, "metrics: cannot count nodes and runs"),
    }
    match (objects.len().await, objects.content_bytes().await) {
        (Ok(n), Ok(bytes)) => {
            metrics::gauge!("flwr_objects_stored").set(n as f64);
            metrics::gauge!("flwr_object_content_bytes").set(bytes as f64);
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "metrics: cannot count the objects")
        }
    }
}
