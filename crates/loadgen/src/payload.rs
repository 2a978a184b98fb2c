//! Messages with real payloads, deflated into objects exactly as Flower's Python does: a
//! float32 array saved as `.npy`, cut into chunks of at most 5 MiB, under an Array, an
//! ArrayRecord (`{"w": ...}`) and a RecordDict (`{"arrays": ...}`), topped by the Message.

use bytes::Bytes;
use flwr_objects::content::{serialize, ObjectType};
use flwr_objects::message::MessageMeta;
use flwr_objects::{ObjectId, ObjectTree};

/// Flower's default array chunk size (5 MiB).
pub const CHUNK_SIZE: usize = 5 * 1024 * 1024;

/// A message and its objects.
#[derive(Clone, Debug)]
pub struct Built {
    /// The metadata, with the message id set.
    pub meta: MessageMeta,
    /// The object tree.
    pub tree: ObjectTree,
    /// Every object (id, bytes), each once, children before parents.
    pub objects: Vec<(ObjectId, Bytes)>,
}

/// `np.save` of a 1-D float32 array whose data is `data` (format 1.0).
pub fn npy(data: &[u8]) -> Vec<u8> {
    let n = data.len() / 4;
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n},), }}");
    // Preamble (10 bytes) + dict + padding + newline, to a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(10 + header_len + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

/// Deterministic float32 data of about `bytes` bytes, seeded so that messages differ.
pub fn floats(bytes: usize, seed: u32) -> Vec<u8> {
    let n = (bytes / 4).max(1);
    let mut out = Vec::with_capacity(n * 4);
    for i in 0..n as u32 {
        out.extend_from_slice(
            &(((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32).to_le_bytes(),
        );
    }
    out
}

fn push(objects: &mut Vec<(ObjectId, Bytes)>, bytes: Vec<u8>) -> ObjectId {
    let id = ObjectId::of(&bytes);
    if !objects.iter().any(|(i, _)| *i == id) {
        objects.push((id, Bytes::from(bytes)));
    }
    id
}

/// Builds a message whose content holds one float32 array with these bytes of data.
pub fn build(meta: MessageMeta, data: &[u8]) -> Built {
    Content::of(data).message(meta)
}

/// A message's content without the message: the objects under its RecordDict (one float32
/// array), built once and sent under as many messages as wanted (a node's replies, each round).
#[derive(Clone, Debug)]
pub struct Content {
    /// The RecordDict's tree.
    tree: ObjectTree,
    /// Its objects, children before parents.
    objects: Vec<(ObjectId, Bytes)>,
}

impl Content {
    /// The content holding one float32 array whose data is `data`.
    pub fn of(data: &[u8]) -> Content {
        let mut objects = Vec::new();
        let npy = npy(data);
        let n = data.len() / 4;
        let mut chunk_ids: Vec<ObjectId> = Vec::new();
        let mut indices = Vec::new();
        for part in npy.chunks(CHUNK_SIZE) {
            let id = push(&mut objects, serialize(ObjectType::ArrayChunk, &[], part));
            let idx = match chunk_ids.iter().position(|c| *c == id) {
                Some(i) => i,
                None => {
                    chunk_ids.push(id);
                    chunk_ids.len() - 1
                }
            };
            indices.push(idx.to_string());
        }
        let array_body = format!(
            "{{\"dtype\": \"float32\", \"shape\": [{n}], \"stype\": \"numpy.ndarray\", \"arraychunk_ids\": [{}]}}",
            indices.join(", ")
        );
        let array = push(
            &mut objects,
            serialize(ObjectType::Array, &chunk_ids, array_body.as_bytes()),
        );
        let record = push(
            &mut objects,
            serialize(
                ObjectType::ArrayRecord,
                &[array],
                format!("{{\"w\": \"{array}\"}}").as_bytes(),
            ),
        );
        let dict = push(
            &mut objects,
            serialize(
                ObjectType::RecordDict,
                &[record],
                format!("{{\"arrays\": \"{record}\"}}").as_bytes(),
            ),
        );
        let tree = ObjectTree {
            id: dict,
            children: vec![ObjectTree {
                id: record,
                children: vec![ObjectTree {
                    id: array,
                    children: chunk_ids.iter().map(|c| ObjectTree::leaf(*c)).collect(),
                }],
            }],
        };
        Content { tree, objects }
    }

    /// A message with this content (its id set in the returned metadata); the content's
    /// objects are shared, not copied.
    pub fn message(&self, mut meta: MessageMeta) -> Built {
        meta.has_content = true;
        meta.error = None;
        let mut objects = self.objects.clone();
        let message = serialize(ObjectType::Message, &[self.tree.id], &meta.object_body());
        let message_id = push(&mut objects, message);
        meta.message_id = message_id.to_hex();
        Built {
            meta,
            tree: ObjectTree {
                id: message_id,
                children: vec![self.tree.clone()],
            },
            objects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_are_aligned_and_objects_check_out() {
        let data = floats(1000, 7);
        let file = npy(&data);
        assert_eq!((file.len() - data.len()) % 64, 0);
        let meta = MessageMeta {
            run_id: 1,
            message_id: String::new(),
            src_node_id: 1,
            dst_node_id: 2,
            reply_to_message_id: String::new(),
            group_id: "1".into(),
            ttl: 60.0,
            message_type: "train".into(),
            created_at: 1_800_000_000.0,
            error: None,
            has_content: true,
        };
        let built = build(meta, &data);
        assert_eq!(built.objects.len(), 5);
        for (id, bytes) in &built.objects {
            flwr_objects::content::verify(id, bytes).unwrap();
        }
        assert_eq!(built.meta.message_id, built.tree.id.to_hex());
        // 12 MB: three chunks, the first one carries the header.
        let big = build(built.meta.clone(), &vec![0u8; 12 * 1024 * 1024]);
        assert_eq!(
            big.tree.children[0].children[0].children[0].children.len(),
            3
        );
    }
}
