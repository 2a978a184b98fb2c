//! Protobuf ↔ domain conversions.

use std::collections::HashMap;

use bytes::Bytes;
use flwr_objects::message::{MessageError, MessageMeta};
use flwr_objects::store::Lookup;
use flwr_objects::{ObjectId, ObjectTree};
use flwr_proto::proto as pb;
use prost::Message as _;

use crate::clock::isoformat;
use crate::error::Error;
use crate::state::{ConfigValue, Node, Run, RunStatus, Status, SubStatus};

/// Depth limit for object trees from the wire (real ones are about five deep).
const MAX_TREE_DEPTH: usize = 32;

/// A wire message to domain metadata. Flower fails such requests with UNKNOWN, so errors are
/// [`Error::Malformed`].
pub fn message_from_pb(m: &pb::Message) -> Result<MessageMeta, Error> {
    let md = m.metadata.clone().unwrap_or_default();
    if !flwr_objects::message::valid_message_type(&md.message_type) {
        return Err(Error::Malformed(format!(
            "Invalid message type: '{}'. Expected format: '<category>' or '<category>.<action>', where <category> must be 'train', 'evaluate', or 'query', and <action> must be a valid Python identifier.",
            md.message_type
        )));
    }
    if m.content.is_none() && m.error.is_none() {
        return Err(Error::Malformed(
            "Invalid arguments for Message. Expected one of the documented signatures.".into(),
        ));
    }
    Ok(MessageMeta {
        run_id: md.run_id,
        message_id: md.message_id,
        src_node_id: md.src_node_id,
        dst_node_id: md.dst_node_id,
        reply_to_message_id: md.reply_to_message_id,
        group_id: md.group_id,
        ttl: md.ttl,
        message_type: md.message_type,
        created_at: md.created_at,
        error: m.error.as_ref().map(|e| MessageError {
            code: e.code,
            reason: e.reason.clone(),
        }),
        has_content: m.content.is_some(),
    })
}

/// Domain metadata to a wire message: content present but empty (payloads travel as objects),
/// or the error.
pub fn message_to_pb(m: &MessageMeta) -> pb::Message {
    pb::Message {
        metadata: Some(pb::Metadata {
            run_id: m.run_id,
            message_id: m.message_id.clone(),
            src_node_id: m.src_node_id,
            dst_node_id: m.dst_node_id,
            reply_to_message_id: m.reply_to_message_id.clone(),
            group_id: m.group_id.clone(),
            ttl: m.ttl,
            message_type: m.message_type.clone(),
            created_at: m.created_at,
        }),
        content: if m.error.is_none() {
            Some(pb::RecordDict::default())
        } else {
            None
        },
        error: m.error.as_ref().map(|e| pb::Error {
            code: e.code,
            reason: e.reason.clone(),
        }),
    }
}

/// A wire tree; ids must be 64 hex characters ("Invalid object ID format: <id>" otherwise).
pub fn tree_from_pb(t: &pb::ObjectTree) -> Result<ObjectTree, Error> {
    fn go(t: &pb::ObjectTree, depth: usize) -> Result<ObjectTree, Error> {
        if depth > MAX_TREE_DEPTH {
            return Err(Error::Malformed("object tree too deep".into()));
        }
        let id = ObjectId::parse(&t.object_id).map_err(|e| Error::Malformed(e.to_string()))?;
        let children = t
            .children
            .iter()
            .map(|c| go(c, depth + 1))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ObjectTree { id, children })
    }
    go(t, 0)
}

/// A domain tree on the wire.
pub fn tree_to_pb(t: &ObjectTree) -> pb::ObjectTree {
    pb::ObjectTree {
        object_id: t.id.to_hex(),
        children: t.children.iter().map(tree_to_pb).collect(),
    }
}

/// A `PullObject` answer: unknown, registered but not pushed yet, or the bytes.
pub fn pull_object_response(lookup: Lookup) -> pb::PullObjectResponse {
    let (object_found, object_available, object_content) = match lookup {
        Lookup::Unknown => (false, false, Bytes::new()),
        Lookup::Pending => (true, false, Bytes::new()),
        Lookup::Available(c) => (true, true, c),
    };
    pb::PullObjectResponse {
        object_found,
        object_available,
        object_content,
    }
}

/// A config value from the wire (an unset scalar is refused).
pub fn scalar_from_pb(s: &pb::Scalar) -> Option<ConfigValue> {
    use pb::scalar::Scalar as S;
    Some(match s.scalar.as_ref()? {
        S::Double(v) => ConfigValue::Double(*v),
        S::Sint64(v) => ConfigValue::Int(*v),
        S::Uint64(v) => ConfigValue::UInt(*v),
        S::Bool(v) => ConfigValue::Bool(*v),
        S::String(v) => ConfigValue::Str(v.clone()),
        S::Bytes(v) => ConfigValue::Bytes(v.to_vec()),
    })
}

/// A config value on the wire.
pub fn scalar_to_pb(v: &ConfigValue) -> pb::Scalar {
    use pb::scalar::Scalar as S;
    let s = match v {
        ConfigValue::Double(v) => S::Double(*v),
        ConfigValue::Int(v) => S::Sint64(*v),
        ConfigValue::UInt(v) => S::Uint64(*v),
        ConfigValue::Bool(v) => S::Bool(*v),
        ConfigValue::Str(v) => S::String(v.clone()),
        ConfigValue::Bytes(v) => S::Bytes(Bytes::from(v.clone())),
    };
    pb::Scalar { scalar: Some(s) }
}

/// Overrides from the wire, sorted by key.
pub fn config_from_pb(
    m: &HashMap<String, pb::Scalar>,
) -> Result<Vec<(String, ConfigValue)>, Error> {
    let mut out = Vec::with_capacity(m.len());
    for (k, v) in m {
        let v = scalar_from_pb(v)
            .ok_or_else(|| Error::Malformed(format!("the value of `{k}` is not set")))?;
        out.push((k.clone(), v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
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
    let ctx = pb::Context {
        run_id,
        node_id: 1,
        node_config: HashMap::new(),
        state: Some(pb::RecordDict::default()),
        run_config: HashMap::new(),
    };
    Bytes::from(ctx.encode_to_vec())
}

/// A stored context back on the wire.
pub fn context_from_bytes(b: &[u8]) -> Result<pb::Context, Error> {
    pb::Context::decode(b).map_err(|e| Error::Internal(format!("stored context is corrupt: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_encoded_message_bodies_equal_prost() {
        let meta = MessageMeta {
            run_id: u64::MAX - 3,
            message_id: "ignored".into(),
            src_node_id: 1,
            dst_node_id: 1,
            reply_to_message_id: "abc".into(),
            group_id: "3".into(),
            ttl: 12.5,
            message_type: "train".into(),
            created_at: 1_764_000_000.25,
            error: Some(MessageError {
                code: -5,
                reason: "Error: Node Unavailable — x".into(),
            }),
            has_content: false,
        };
        let mut wire = message_to_pb(&meta);
        if let Some(m) = wire.metadata.as_mut() {
            m.message_id.clear();
        }
        assert_eq!(meta.object_body(), wire.encode_to_vec());
    }

    #[test]
    fn trees_round_trip_and_bad_ids_fail() {
        let t = ObjectTree {
            id: ObjectId::of(b"a"),
            children: vec![ObjectTree::leaf(ObjectId::of(b"b"))],
        };
        assert_eq!(tree_from_pb(&tree_to_pb(&t)).unwrap(), t);
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
