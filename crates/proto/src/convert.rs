//! Conversions between the wire types and the object model that both daemons' service layers
//! use. Errors are the texts Flower's Python side would raise (both daemons answer them with
//! UNKNOWN, as Flower does).

use std::collections::HashMap;

use bytes::Bytes;
use flwr_objects::message::{valid_message_type, MessageError, MessageMeta};
use flwr_objects::store::Lookup;
use flwr_objects::{ConfigValue, ObjectId, ObjectTree};

use crate::proto as pb;

/// Depth limit for object trees from the wire (real ones are about five deep).
const MAX_TREE_DEPTH: usize = 32;

/// A wire message to domain metadata; the error is Flower's exception text.
pub fn message_from_pb(m: &pb::Message) -> Result<MessageMeta, String> {
    let md = m.metadata.clone().unwrap_or_default();
    if !valid_message_type(&md.message_type) {
        return Err(format!(
            "Invalid message type: '{}'. Expected format: '<category>' or '<category>.<action>', where <category> must be 'train', 'evaluate', or 'query', and <action> must be a valid Python identifier.",
            md.message_type
        ));
    }
    if m.content.is_none() && m.error.is_none() {
        return Err(
            "Invalid arguments for Message. Expected one of the documented signatures.".into(),
        );
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

/// A wire tree; every id must be 64 hex characters ("Invalid object ID format: <id>").
pub fn tree_from_pb(t: &pb::ObjectTree) -> Result<ObjectTree, String> {
    fn go(t: &pb::ObjectTree, depth: usize) -> Result<ObjectTree, String> {
        if depth > MAX_TREE_DEPTH {
            return Err("object tree too deep".into());
        }
        let id = ObjectId::parse(&t.object_id).map_err(|e| e.to_string())?;
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

/// A `PullObject` answer read back (the inverse of [`pull_object_response`]).
pub fn lookup_from_pb(r: pb::PullObjectResponse) -> Lookup {
    match (r.object_found, r.object_available) {
        (_, true) => Lookup::Available(r.object_content),
        (true, false) => Lookup::Pending,
        (false, false) => Lookup::Unknown,
    }
}

/// An app's context, encoded (`flwr.proto.Context`) with an empty state: the one a ServerApp
/// starts from (node 1, no configs), or a ClientApp on a SuperNode.
pub fn context_bytes(
    run_id: u64,
    node_id: u64,
    node_config: &[(String, ConfigValue)],
    run_config: &[(String, ConfigValue)],
) -> Bytes {
    use prost::Message as _;
    let ctx = pb::Context {
        run_id,
        node_id,
        node_config: config_to_pb(node_config),
        state: Some(pb::RecordDict::default()),
        run_config: config_to_pb(run_config),
    };
    Bytes::from(ctx.encode_to_vec())
}

/// A config value from the wire (`None` for an unset scalar).
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

/// A config map from the wire, sorted by key.
pub fn config_from_pb(
    m: &HashMap<String, pb::Scalar>,
) -> Result<Vec<(String, ConfigValue)>, String> {
    let mut out = Vec::with_capacity(m.len());
    for (k, v) in m {
        out.push((
            k.clone(),
            scalar_from_pb(v).ok_or_else(|| format!("the value of `{k}` is not set"))?,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A config map on the wire.
pub fn config_to_pb(items: &[(String, ConfigValue)]) -> HashMap<String, pb::Scalar> {
    items
        .iter()
        .map(|(k, v)| (k.clone(), scalar_to_pb(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn pull_object_answers_read_back() {
        for lookup in [
            Lookup::Unknown,
            Lookup::Pending,
            Lookup::Available(Bytes::from_static(b"x")),
        ] {
            assert_eq!(lookup_from_pb(pull_object_response(lookup.clone())), lookup);
        }
    }

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
            tree_from_pb(&bad).unwrap_err(),
            "Invalid object ID format: zz"
        );
    }

    #[test]
    fn config_round_trips() {
        let items = vec![
            ("a".to_owned(), ConfigValue::Int(-1)),
            ("b".to_owned(), ConfigValue::Str("x".into())),
        ];
        assert_eq!(config_from_pb(&config_to_pb(&items)).unwrap(), items);
    }
}
