//! Message metadata, and the messages a daemon authors itself (error replies).
//!
//! A message's object body is the deterministic protobuf encoding of `flwr.proto.Message` with
//! its metadata (message id cleared), no content, and the error if any. Daemons that create
//! messages (the SuperLink's NODE_UNAVAILABLE replies, the SuperNode's CLIENT_APP_CRASHED) must
//! produce exactly those bytes, because the message id is their hash. The encoding is written here
//! by hand (it is small and fixed) so that the domain stays free of generated types.

use crate::content::{serialize, ObjectType};
use crate::id::ObjectId;

/// The SuperLink's node id in message metadata.
pub const SUPERLINK_NODE_ID: u64 = 1;

/// Flower's `ErrorCode` values.
pub mod error_code {
    /// Unknown.
    pub const UNKNOWN: i64 = 0;
    /// The ClientApp could not be loaded.
    pub const LOAD_CLIENT_APP_EXCEPTION: i64 = 1;
    /// The ClientApp raised.
    pub const CLIENT_APP_RAISED_EXCEPTION: i64 = 2;
    /// The instruction does not exist (any more).
    pub const MESSAGE_UNAVAILABLE: i64 = 3;
    /// The reply expired.
    pub const REPLY_MESSAGE_UNAVAILABLE: i64 = 4;
    /// The destination node is offline.
    pub const NODE_UNAVAILABLE: i64 = 5;
    /// A mod's precondition failed.
    pub const MOD_FAILED_PRECONDITION: i64 = 6;
    /// The FAB could not be verified.
    pub const INVALID_FAB: i64 = 7;
    /// The ClientApp stopped responding.
    pub const CLIENT_APP_CRASHED: i64 = 8;
}

/// A message error (`flwr.proto.Error`).
#[derive(Clone, Debug, PartialEq)]
pub struct MessageError {
    /// `error_code` value.
    pub code: i64,
    /// Human-readable reason.
    pub reason: String,
}

/// The metadata of a message, plus whether it carries content or an error. Payloads live in the
/// object store, never here.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageMeta {
    /// Run.
    pub run_id: u64,
    /// The message's object id (hex), `""` before it is known.
    pub message_id: String,
    /// Sender node (1 = SuperLink).
    pub src_node_id: u64,
    /// Receiver node.
    pub dst_node_id: u64,
    /// For replies: the instruction's id.
    pub reply_to_message_id: String,
    /// Free text (the round).
    pub group_id: String,
    /// Time to live, seconds.
    pub ttl: f64,
    /// `train`, `evaluate`, `query`, `system`, or `<that>.<name>`.
    pub message_type: String,
    /// Creation time, Unix seconds.
    pub created_at: f64,
    /// The error, for error messages.
    pub error: Option<MessageError>,
    /// True when the message has content (a RecordDict); exactly one of content or error.
    pub has_content: bool,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_u64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, 0);
        varint(out, v);
    }
}

fn put_sint64(out: &mut Vec<u8>, field: u32, v: i64) {
    if v != 0 {
        tag(out, field, 0);
        varint(out, ((v << 1) ^ (v >> 63)) as u64);
    }
}

fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        tag(out, field, 2);
        varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    // proto3 leaves out +0.0 only; -0.0 has other bits and is written.
    if v.to_bits() != 0 {
        tag(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_message(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    tag(out, field, 2);
    varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

impl MessageMeta {
    /// The deterministic protobuf encoding of `Metadata` (with this message id).
    pub fn encode_metadata(&self, message_id: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        put_u64(&mut m, 1, self.run_id);
        put_str(&mut m, 2, message_id);
        put_u64(&mut m, 3, self.src_node_id);
        put_u64(&mut m, 4, self.dst_node_id);
        put_str(&mut m, 5, &self.reply_to_message_id);
        put_str(&mut m, 6, &self.group_id);
        put_double(&mut m, 7, self.ttl);
        put_str(&mut m, 8, &self.message_type);
        put_double(&mut m, 9, self.created_at);
        m
    }

    /// The body of the `Message` object: `Message{metadata (message id cleared), error?}`.
    pub fn object_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        put_message(&mut out, 1, &self.encode_metadata(""));
        if let Some(e) = &self.error {
            let mut eb = Vec::new();
            put_sint64(&mut eb, 1, e.code);
            put_str(&mut eb, 2, &e.reason);
            put_message(&mut out, 3, &eb);
        }
        out
    }

    /// Serializes an error message (no content, hence no children) and sets its message id.
    /// Returns the object bytes and id.
    pub fn seal_error_message(&mut self) -> (Vec<u8>, ObjectId) {
        let bytes = serialize(ObjectType::Message, &[], &self.object_body());
        let id = ObjectId::of(&bytes);
        self.message_id = id.to_hex();
        (bytes, id)
    }
}

/// Messages created before this instant are refused (28 February 2025, UTC).
pub const MIN_CREATED_AT: f64 = 1_740_700_800.0;

/// Flower's message types: `train`, `evaluate`, `query`, `system`, those followed by
/// `.<python identifier>`, and the legacy `get_parameters`, `get_properties`, `reconnect`.
pub fn valid_message_type(t: &str) -> bool {
    if matches!(t, "get_parameters" | "get_properties" | "reconnect") {
        return true;
    }
    let (category, action) = match t.split_once('.') {
        Some((c, a)) => (c, Some(a)),
        None => (t, None),
    };
    let category_ok = match action {
        None => matches!(category, "train" | "evaluate" | "query" | "system"),
        Some(_) => matches!(category, "train" | "evaluate" | "query"),
    };
    category_ok && action.is_none_or(is_identifier)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

impl MessageMeta {
    /// Flower's checks of an instruction (`is_reply = false`) or reply, at time `now`. Returns
    /// the problems, in Flower's words.
    pub fn validate(&self, is_reply: bool, now: f64) -> Vec<String> {
        let mut e = Vec::new();
        if self.message_id.is_empty() {
            e.push("empty `metadata.message_id`".to_owned());
        }
        // NaN and infinities compare false with everything: refuse them by name, so that no
        // engine ever sees them.
        if !self.created_at.is_finite() || self.created_at < MIN_CREATED_AT {
            e.push("`metadata.created_at` must be a float that records the unix timestamp in seconds when the message was created.".to_owned());
        }
        if !self.ttl.is_finite() {
            e.push("`metadata.ttl` must be a finite number of seconds".to_owned());
        } else if self.ttl <= 0.0 {
            e.push("`metadata.ttl` must be higher than zero".to_owned());
        }
        if self.created_at + self.ttl <= now {
            e.push("Message TTL has expired".to_owned());
        }
        if self.src_node_id == 0 {
            e.push("`metadata.src_node_id` is not set.".to_owned());
        }
        if self.dst_node_id == 0 {
            e.push("`metadata.dst_node_id` is not set.".to_owned());
        }
        if self.message_type.is_empty() {
            e.push("`metadata.message_type` MUST be set".to_owned());
        }
        if self.has_content == self.error.is_some() {
            e.push("Either message `content` or `error` MUST be set (but not both)".to_owned());
        }
        if !is_reply {
            if !self.reply_to_message_id.is_empty() {
                e.push("`metadata.reply_to_message_id` MUST not be set.".to_owned());
            }
            if self.src_node_id != SUPERLINK_NODE_ID {
                e.push(format!(
                    "`metadata.src_node_id` is not {SUPERLINK_NODE_ID} (SuperLink node ID)"
                ));
            }
            if self.dst_node_id == SUPERLINK_NODE_ID {
                e.push(format!(
                    "`metadata.dst_node_id` is {SUPERLINK_NODE_ID} (SuperLink node ID)"
                ));
            }
        } else {
            if self.reply_to_message_id.is_empty() {
                e.push("`metadata.reply_to_message_id` MUST be set.".to_owned());
            }
            if self.src_node_id == SUPERLINK_NODE_ID {
                e.push(format!(
                    "`metadata.src_node_id` is {SUPERLINK_NODE_ID} (SuperLink node ID)"
                ));
            }
            if self.dst_node_id != SUPERLINK_NODE_ID {
                e.push(format!(
                    "`metadata.dst_node_id` is not {SUPERLINK_NODE_ID} (SuperLink node ID)"
                ));
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_matches_flowers_observed_bytes() {
        // Flower's trace showed an error reply body ending in `\x1a\x08\x08\x04\x12\x04boom`:
        // field 3 (error), length 8, code 2 (zigzag 4), reason "boom".
        let mut m = MessageMeta {
            run_id: 7,
            message_id: String::new(),
            src_node_id: 1,
            dst_node_id: 1,
            reply_to_message_id: "r".into(),
            group_id: String::new(),
            ttl: 0.0,
            message_type: "system".into(),
            created_at: 1.5,
            error: Some(MessageError {
                code: 2,
                reason: "boom".into(),
            }),
            has_content: false,
        };
        let body = m.object_body();
        assert!(body.ends_with(b"\x1a\x08\x08\x04\x12\x04boom"), "{body:?}");
        let (bytes, id) = m.seal_error_message();
        assert!(bytes.starts_with(format!("Message  {}\0", body.len()).as_bytes()));
        assert_eq!(m.message_id, id.to_hex());
        assert!(m
            .validate(false, 2.0)
            .iter()
            .any(|e| e.contains("created_at")));
    }

    #[test]
    fn message_types() {
        for ok in [
            "train",
            "evaluate",
            "query",
            "system",
            "train.fit_x",
            "query._a1",
            "reconnect",
        ] {
            assert!(valid_message_type(ok), "{ok}");
        }
        for bad in [
            "",
            "fit",
            "train.",
            "train.1a",
            "system.x",
            "train.a.b",
            "train.a-b",
        ] {
            assert!(!valid_message_type(bad), "{bad}");
        }
    }
}
