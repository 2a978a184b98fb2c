//! Serialized objects: `<Type> <child ids joined by ","> <body length>` + `0x00` + body.

use crate::id::ObjectId;

/// The object types Flower registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectType {
    /// A message (its body is the protobuf `Message` without content and message id).
    Message,
    /// A record dictionary (JSON body naming its records).
    RecordDict,
    /// Arrays by name.
    ArrayRecord,
    /// Configuration values.
    ConfigRecord,
    /// Metrics.
    MetricRecord,
    /// One array (JSON body: dtype, shape, stype and chunk indices).
    Array,
    /// Raw bytes of an array, at most 5 MiB by default.
    ArrayChunk,
}

impl ObjectType {
    /// Parses a type name as it appears in a head.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "Message" => Self::Message,
            "RecordDict" => Self::RecordDict,
            "ArrayRecord" => Self::ArrayRecord,
            "ConfigRecord" => Self::ConfigRecord,
            "MetricRecord" => Self::MetricRecord,
            "Array" => Self::Array,
            "ArrayChunk" => Self::ArrayChunk,
            _ => return None,
        })
    }

    /// The name written in heads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Message => "Message",
            Self::RecordDict => "RecordDict",
            Self::ArrayRecord => "ArrayRecord",
            Self::ConfigRecord => "ConfigRecord",
            Self::MetricRecord => "MetricRecord",
            Self::Array => "Array",
            Self::ArrayChunk => "ArrayChunk",
        }
    }
}

/// A parsed head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The type.
    pub object_type: ObjectType,
    /// Child ids, in head order.
    pub children: Vec<ObjectId>,
    /// Where the body starts in the serialized bytes.
    pub body_offset: usize,
}

/// Why serialized bytes are not a well-formed object. The text follows Flower's, which reports
/// "Object with ID '<id>' has an unexpected structure. <reason>".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StructureError {
    /// No 0x00 divider.
    #[error("Unexpected format for object content. Head and body could not be split.")]
    NoDivider,
    /// The head is not three space-separated UTF-8 fields.
    #[error("Unexpected format for object head.")]
    BadHead,
    /// A child id is not 64 hex characters.
    #[error("Detected invalid object ID ({0}) in children.")]
    BadChildId(String),
    /// The type is not one of Flower's.
    #[error("Object of type {0} is not supported.")]
    UnknownType(String),
    /// The body length in the head is wrong.
    #[error("Object content length expected {expected} bytes but got {actual} bytes.")]
    BodyLength {
        /// What the head says.
        expected: String,
        /// What there is.
        actual: usize,
    },
}

/// Parses and checks the head of serialized object bytes, with Flower's rules.
pub fn parse(content: &[u8]) -> Result<Head, StructureError> {
    let divider = content
        .iter()
        .position(|b| *b == 0)
        .ok_or(StructureError::NoDivider)?;
    let head = std::str::from_utf8(&content[..divider]).map_err(|_| StructureError::BadHead)?;
    let mut parts = head.split(' ');
    let (Some(type_name), Some(children), Some(body_len), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(StructureError::BadHead);
    };
    let mut child_ids = Vec::new();
    if !children.is_empty() {
        for c in children.split(',') {
            if c.is_empty() {
                continue;
            }
            child_ids
                .push(ObjectId::parse(c).map_err(|_| StructureError::BadChildId(c.to_owned()))?);
        }
    }
    let object_type = ObjectType::from_name(type_name)
        .ok_or_else(|| StructureError::UnknownType(type_name.to_owned()))?;
    let actual = content.len() - divider - 1;
    if body_len.trim().parse::<usize>().ok() != Some(actual) {
        return Err(StructureError::BodyLength {
            expected: body_len.to_owned(),
            actual,
        });
    }
    Ok(Head {
        object_type,
        children: child_ids,
        body_offset: divider + 1,
    })
}

/// Serializes an object from its parts.
pub fn serialize(object_type: ObjectType, children: &[ObjectId], body: &[u8]) -> Vec<u8> {
    let ids: Vec<String> = children.iter().map(ObjectId::to_hex).collect();
    let head = format!("{} {} {}", object_type.name(), ids.join(","), body.len());
    let mut out = Vec::with_capacity(head.len() + 1 + body.len());
    out.extend_from_slice(head.as_bytes());
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// Why pushed bytes are refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The bytes do not hash to the id they were pushed under.
    #[error("Object ID {claimed} does not match content hash")]
    HashMismatch {
        /// The id given.
        claimed: ObjectId,
    },
    /// The bytes hash right but are not a well-formed object.
    #[error("Object with ID '{id}' has an unexpected structure. {reason}")]
    Structure {
        /// The content's id.
        id: ObjectId,
        /// Why.
        reason: StructureError,
    },
    /// The check could not finish (the runtime is shutting down).
    #[error("the object check was interrupted")]
    Interrupted,
}

/// Checks pushed bytes as Flower does: the hash first, then the structure. CPU-bound for large
/// objects: call it off the async threads for big bodies.
pub fn verify(claimed: &ObjectId, content: &[u8]) -> Result<Head, VerifyError> {
    let actual = ObjectId::of(content);
    if actual != *claimed {
        return Err(VerifyError::HashMismatch { claimed: *claimed });
    }
    parse(content).map_err(|reason| VerifyError::Structure { id: actual, reason })
}

/// Objects at least this large are checked on the blocking pool.
pub const OFFLOAD_BYTES: usize = 64 * 1024;

/// [`verify`] for bytes that arrived over the network, without holding an async thread while a
/// large object is hashed (a 5 MiB chunk takes milliseconds). The bytes are shared, not copied.
pub async fn verify_shared(claimed: ObjectId, content: &bytes::Bytes) -> Result<(), VerifyError> {
    if content.len() < OFFLOAD_BYTES {
        return verify(&claimed, content).map(|_| ());
    }
    let c = content.clone();
    match tokio::task::spawn_blocking(move || verify(&claimed, &c).map(|_| ())).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(VerifyError::Interrupted),
    }
}

/// What a `PushObject` (ServerAppIo, Fleet or ClientAppIo) may store, decided as Flower
/// decides it: `Some(id)` when the bytes are the object `claimed` names; `None` when the id is
/// not one or the bytes hash to another (Flower answers `stored: false`, no error); an error
/// when the bytes hash right but are not an object.
pub async fn admit(claimed: &str, content: &bytes::Bytes) -> Result<Option<ObjectId>, VerifyError> {
    let Ok(id) = ObjectId::parse(claimed) else {
        return Ok(None);
    };
    match verify_shared(id, content).await {
        Ok(()) => Ok(Some(id)),
        Err(VerifyError::HashMismatch { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_like_flower() {
        let chunk = serialize(ObjectType::ArrayChunk, &[], b"\x93NUMPY");
        assert!(chunk.starts_with(b"ArrayChunk  6\0"));
        let h = parse(&chunk).unwrap();
        assert_eq!(
            (h.object_type, h.children.len(), h.body_offset),
            (ObjectType::ArrayChunk, 0, 14)
        );

        let id = ObjectId::of(&chunk);
        let arr = serialize(ObjectType::Array, &[id, id], b"{}");
        assert_eq!(parse(&arr).unwrap().children, vec![id, id]);

        assert_eq!(parse(b"no divider"), Err(StructureError::NoDivider));
        assert_eq!(parse(b"Array 2\0ab"), Err(StructureError::BadHead));
        assert_eq!(parse(b"Array  2 x\0ab"), Err(StructureError::BadHead));
        assert_eq!(
            parse(b"Weird  2\0ab"),
            Err(StructureError::UnknownType("Weird".into()))
        );
        assert_eq!(
            parse(b"Array zz 2\0ab"),
            Err(StructureError::BadChildId("zz".into()))
        );
        assert_eq!(
            parse(b"Array  3\0ab"),
            Err(StructureError::BodyLength {
                expected: "3".into(),
                actual: 2
            })
        );
        assert_eq!(
            parse(b"Array  3\0ab").unwrap_err().to_string(),
            "Object content length expected 3 bytes but got 2 bytes."
        );
    }

    #[test]
    fn verify_checks_hash_before_structure() {
        let bad = b"Array  3\0ab".to_vec();
        let id = ObjectId::of(&bad);
        let other = ObjectId::of(b"x");
        assert!(matches!(
            verify(&other, &bad),
            Err(VerifyError::HashMismatch { .. })
        ));
        let e = verify(&id, &bad).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "Object with ID '{id}' has an unexpected structure."
            )),
            "{e}"
        );
    }
}
