//! The SuperLink's own metrics (see the README's table): what it records where things happen
//! (messages, object bytes, run status changes, signature checks, ServerApp launches), and what
//! it reads from its state at each scrape (nodes online).

use std::sync::Arc;

use flwr_state::LinkState;

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
        "SuperNode signatures, by outcome (valid, invalid; skipped: vouched for by the connection under --fleet-auth-per-connection)"
    );
    describe_counter!(
        "flwr_serverapp_launches_total",
        "ServerApp processes this SuperLink launched (isolation subprocess), by outcome (started, not_started)"
    );
    describe_counter!(
        "flwr_serverapp_exits_total",
        "ServerApp processes of this SuperLink that exited, by outcome (success, failure)"
    );
    describe_gauge!(
        "flwr_nodes_online",
        "SuperNodes online (in the shared state: the same on every replica)"
    );
}

/// What a scrape reads from the state first.
pub async fn refresh(state: Arc<dyn LinkState>) {
    match state.online_node_ids().await {
        Ok(ids) => metrics::gauge!("flwr_nodes_online").set(ids.len() as f64),
        Err(e) => tracing::debug!(error = %e, "metrics: cannot count the online nodes"),
    }
}
