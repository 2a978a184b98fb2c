//! Protobuf ↔ domain conversions.

use std::collections::HashMap;

use bytes::Bytes;
use flwr_objects::message::MessageMeta;

use flwr_objects::ObjectTree;
use flwr_proto::proto as pb;
use prost::Message as _;

use crate::error::Error;
use flwr_state::{ConfigValue, Node, Run, RunStatus, Status, SubStatus};

pub use flwr_proto::convert::{message_to_pb, pull_object_response, scalar_to_pb, tree_to_pb};

/// A wire message to domain metadata; Flower fails such requests with UNKNOWN.
pub fn message_from_pb(m: &pb::Message) -> Result<MessageMeta, Error> {
    flwr_proto::convert::message_from_pb(m).map_err(Error::Malformed)
}

/// A wire tree ("Invalid object ID format: <id>" otherwise).
pub fn tree_from_pb(t: &pb::ObjectTree) -> Result<ObjectTree, Error> {
    flwr_proto::convert::tree_from_pb(t).map_err(Error::Malformed)
}

/// Overrides from the wire, sorted by key.
pub fn config_from_pb(
    m: &HashMap<String, pb::Scalar>,
) -> Result<Vec<(String, ConfigValue)>, Error> {
    flwr_proto::convert::config_from_pb(m).map_err(Error::Malformed)
}

/// Formats Unix seconds as Python's `datetime.isoformat()` writes an aware UTC time
/// (`2026-11-26T08:30:43.561965+00:00`; no fraction when it is zero).
pub fn isoformat(unix_seconds: f64) -> String {
    let micros = (unix_seconds * 1e6).round() as i64;
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros).unwrap_or_default();
    flwr_transport::node_auth::format_timestamp(t)
}

fn iso(t: Option<f64>) -> String {
    t.map(isoformat).unwrap_or_default()
}

/// A run on the wire.
pub fn run_to_pb(r: &Run) -> pb::Run {
    pb::Run {
        run_id: r.run_id,
        fab_id: r.fab_id.clone(),
        fab_version: r.fab_version.clone(),
        override_config: r
            .override_config
            .iter()
            .map(|(k, v)| (k.clone(), scalar_to_pb(v)))
            .collect(),
        fab_hash: r.fab_hash.clone(),
        pending_at: iso(r.pending_at),
        starting_at: iso(r.starting_at),
        running_at: iso(r.running_at),
        finished_at: iso(r.finished_at),
        status: Some(pb::RunStatus {
            status: r.status.status.as_str().to_owned(),
            sub_status: r.status.sub_status.as_str().to_owned(),
            details: r.status.details.clone(),
        }),
        flwr_aid: r.flwr_aid.clone(),
        federation: r.federation.clone(),
        bytes_sent: r.bytes_sent,
        bytes_recv: r.bytes_recv,
        clientapp_runtime: r.clientapp_runtime,
        run_type: r.run_type.as_str().to_owned(),
    }
}

/// A status from the wire; `None` for strings Flower does not know (such a transition is
/// invalid and ignored).
pub fn run_status_from_pb(s: &pb::RunStatus) -> Option<RunStatus> {
    Some(RunStatus {
        status: Status::parse(&s.status)?,
        sub_status: SubStatus::parse(&s.sub_status)?,
        details: s.details.clone(),
    })
}

/// A node on the wire.
pub fn node_to_pb(n: &Node) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: n.node_id,
        owner_aid: n.owner_aid.clone(),
        owner_name: n.owner_name.clone(),
        status: n.status.as_str().to_owned(),
        registered_at: isoformat(n.registered_at),
        last_activated_at: n.last_activated_at.map(isoformat),
        last_deactivated_at: n.last_deactivated_at.map(isoformat),
        unregistered_at: n.unregistered_at.map(isoformat),
        online_until: n.online_until,
        heartbeat_interval: n.heartbeat_interval,
        public_key: n.public_key.clone(),
    }
}

/// The ServerApp's initial context: node 1, empty state and configs.
pub fn initial_context(run_id: u64) -> Bytes {
    flwr_proto::convert::context_bytes(run_id, 1, &[], &[])
}

/// A stored context back on the wire.
pub fn context_from_bytes(b: &[u8]) -> Result<pb::Context, Error> {
    pb::Context::decode(b).map_err(|source| Error::Corrupt {
        what: "context",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isoformat_is_pythons() {
        assert_eq!(isoformat(0.0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            isoformat(1_764_145_843.561_965),
            "2025-11-26T08:30:43.561965+00:00"
        );
    }

    #[test]
    fn bad_trees_are_malformed_requests() {
        let bad = pb::ObjectTree {
            object_id: "zz".into(),
            children: vec![],
        };
        assert_eq!(
            tree_from_pb(&bad).unwrap_err().to_string(),
            "Exception calling application: Invalid object ID format: zz"
        );
    }
}
