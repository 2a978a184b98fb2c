//! The object store: content-addressed objects with Flower's reference counting.
//!
//! Semantics (both engines, both daemons):
//! * `preregister(run, tree)` walks the tree in post-order; an unknown id gets an empty,
//!   unavailable entry with the tree's child list, and each of its children one more reference.
//!   Ids that are new or still unavailable are returned: those are the objects to push.
//! * `put` stores verified bytes for a pre-registered id; the first write wins.
//! * `delete(id)` removes an object only when nothing references it (message roots), then
//!   releases its children, recursively. Objects shared with other live messages survive.
//! * `delete_objects_in_run(run)` deletes every unreferenced object of the run, cascading.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::id::ObjectId;
use crate::tree::ObjectTree;

/// A store backend failed (disk full, database error...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("object store: {0}")]
pub struct StoreError(pub String);

/// What the store knows about an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Never pre-registered (or deleted).
    Unknown,
    /// Pre-registered, not pushed yet.
    Pending,
    /// Pushed.
    Available(Bytes),
}

/// A content-addressed, reference-counted object store.
pub trait ObjectStore: Send + Sync {
    /// Pre-registers `tree` for `run_id`; returns the ids still to push (deduplicated, in
    /// post-order).
    fn preregister(&self, run_id: u64, tree: &ObjectTree) -> Result<Vec<ObjectId>, StoreError>;
    /// Stores verified bytes; false when the id was never pre-registered. A second put of an
    /// available object changes nothing and returns true.
    fn put(&self, id: &ObjectId, content: Bytes) -> Result<bool, StoreError>;
    /// Looks an id up.
    fn get(&self, id: &ObjectId) -> Result<Lookup, StoreError>;
    /// Deletes an unreferenced object and, recursively, children nothing else references.
    fn delete(&self, id: &ObjectId) -> Result<(), StoreError>;
    /// Deletes every unreferenced object of a run (cascading) and forgets the run.
    fn delete_objects_in_run(&self, run_id: u64) -> Result<(), StoreError>;
    /// The tree rooted at `id`, from the registered child lists; `None` if any node is missing.
    fn tree(&self, id: &ObjectId) -> Result<Option<ObjectTree>, StoreError>;
    /// Number of objects held (available or not).
    fn len(&self) -> Result<usize, StoreError>;
    /// True when the store holds nothing.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

#[derive(Debug)]
struct Entry {
    content: Option<Bytes>,
    children: Vec<ObjectId>,
    ref_count: u32,
    runs: Vec<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    objects: HashMap<ObjectId, Entry>,
    runs: HashMap<u64, HashSet<ObjectId>>,
}

/// The in-memory engine.
#[derive(Debug, Default)]
pub struct MemoryObjectStore {
    inner: Mutex<Inner>,
}

impl MemoryObjectStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Inner {
    /// Deletes `id` if unreferenced, then its children that become unreferenced.
    fn delete_cascading(&mut self, id: &ObjectId) {
        let mut stack = vec![*id];
        while let Some(id) = stack.pop() {
            let deletable = self.objects.get(&id).is_some_and(|e| e.ref_count == 0);
            if !deletable {
                continue;
            }
            let Some(entry) = self.objects.remove(&id) else {
                continue;
            };
            for run in &entry.runs {
                if let Some(set) = self.runs.get_mut(run) {
                    set.remove(&id);
                }
            }
            for child in entry.children {
                if let Some(c) = self.objects.get_mut(&child) {
                    c.ref_count = c.ref_count.saturating_sub(1);
                }
                stack.push(child);
            }
        }
    }
}

impl ObjectStore for MemoryObjectStore {
    fn preregister(&self, run_id: u64, tree: &ObjectTree) -> Result<Vec<ObjectId>, StoreError> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let mut to_push = Vec::new();
        let mut seen = HashSet::new();
        for node in tree.post_order() {
            let run_set = inner.runs.entry(run_id).or_default();
            match inner.objects.get_mut(&node.id) {
                None => {
                    let children: Vec<ObjectId> = node.children.iter().map(|c| c.id).collect();
                    for c in &children {
                        if let Some(ce) = inner.objects.get_mut(c) {
                            ce.ref_count += 1;
                        }
                    }
                    inner.objects.insert(
                        node.id,
                        Entry {
                            content: None,
                            children,
                            ref_count: 0,
                            runs: vec![run_id],
                        },
                    );
                    run_set.insert(node.id);
                    if seen.insert(node.id) {
                        to_push.push(node.id);
                    }
                }
                Some(entry) => {
                    if entry.content.is_none() && seen.insert(node.id) {
                        to_push.push(node.id);
                    }
                    if run_set.insert(node.id) {
                        entry.runs.push(run_id);
                    }
                }
            }
        }
        Ok(to_push)
    }

    fn put(&self, id: &ObjectId, content: Bytes) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        match inner.objects.get_mut(id) {
            None => Ok(false),
            Some(e) => {
                if e.content.is_none() {
                    e.content = Some(content);
                }
                Ok(true)
            }
        }
    }

    fn get(&self, id: &ObjectId) -> Result<Lookup, StoreError> {
        let inner = self.inner.lock();
        Ok(match inner.objects.get(id) {
            None => Lookup::Unknown,
            Some(Entry { content: None, .. }) => Lookup::Pending,
            Some(Entry {
                content: Some(c), ..
            }) => Lookup::Available(c.clone()),
        })
    }

    fn delete(&self, id: &ObjectId) -> Result<(), StoreError> {
        self.inner.lock().delete_cascading(id);
        Ok(())
    }

    fn delete_objects_in_run(&self, run_id: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let Some(ids) = inner.runs.get(&run_id).cloned() else {
            return Ok(());
        };
        for id in ids {
            if let Some(e) = inner.objects.get_mut(&id) {
                e.runs.retain(|r| *r != run_id);
                if e.ref_count == 0 {
                    inner.delete_cascading(&id);
                }
            }
        }
        inner.runs.remove(&run_id);
        Ok(())
    }

    fn tree(&self, id: &ObjectId) -> Result<Option<ObjectTree>, StoreError> {
        let inner = self.inner.lock();
        fn build(inner: &Inner, id: &ObjectId, depth: usize) -> Option<ObjectTree> {
            // Trees are shallow (Message → RecordDict → record → Array → chunk); a deep one is
            // corrupt, and the limit keeps a cycle from looping.
            if depth > 64 {
                return None;
            }
            let e = inner.objects.get(id)?;
            let children = e
                .children
                .iter()
                .map(|c| build(inner, c, depth + 1))
                .collect::<Option<Vec<_>>>()?;
            Some(ObjectTree { id: *id, children })
        }
        Ok(build(&inner, id, 0))
    }

    fn len(&self) -> Result<usize, StoreError> {
        Ok(self.inner.lock().objects.len())
    }
}

/// The conformance suite every engine must pass: call it from each engine's tests.
#[allow(clippy::unwrap_used)]
pub mod conformance {
    use super::*;
    use crate::content::{serialize, ObjectType};

    fn obj(t: ObjectType, children: &[ObjectId], body: &[u8]) -> (ObjectId, Bytes) {
        let b = serialize(t, children, body);
        (ObjectId::of(&b), Bytes::from(b))
    }

    /// A message with a RecordDict holding two records that share one Array.
    struct Fixture {
        chunk: (ObjectId, Bytes),
        array: (ObjectId, Bytes),
        rec: (ObjectId, Bytes),
        cfg: (ObjectId, Bytes),
        dict: (ObjectId, Bytes),
        msg: (ObjectId, Bytes),
    }

    fn fixture(tag: &[u8]) -> Fixture {
        let chunk = obj(ObjectType::ArrayChunk, &[], b"\x93NUMPY data");
        let array = obj(ObjectType::Array, &[chunk.0], b"{\"arraychunk_ids\": [0]}");
        let rec = obj(ObjectType::ArrayRecord, &[array.0], b"{\"w\": \"...\"}");
        let cfg = obj(ObjectType::ConfigRecord, &[], tag);
        let dict = obj(ObjectType::RecordDict, &[rec.0, cfg.0], b"{}");
        let msg = obj(ObjectType::Message, &[dict.0], tag);
        Fixture {
            chunk,
            array,
            rec,
            cfg,
            dict,
            msg,
        }
    }

    fn tree(f: &Fixture) -> ObjectTree {
        ObjectTree {
            id: f.msg.0,
            children: vec![ObjectTree {
                id: f.dict.0,
                children: vec![
                    ObjectTree {
                        id: f.rec.0,
                        children: vec![ObjectTree {
                            id: f.array.0,
                            children: vec![ObjectTree::leaf(f.chunk.0)],
                        }],
                    },
                    ObjectTree::leaf(f.cfg.0),
                ],
            }],
        }
    }

    fn push_all(s: &dyn ObjectStore, f: &Fixture) {
        for (id, b) in [&f.chunk, &f.array, &f.rec, &f.cfg, &f.dict, &f.msg] {
            assert!(s.put(id, b.clone()).unwrap());
        }
    }

    /// Runs every check against a fresh, empty store made by `make`.
    pub fn run(make: &dyn Fn() -> std::sync::Arc<dyn ObjectStore>) {
        preregister_put_get(&*make());
        shared_objects_survive(&*make());
        run_cleanup(&*make());
        trees(&*make());
    }

    fn preregister_put_get(s: &dyn ObjectStore) {
        let f = fixture(b"one");
        let t = tree(&f);
        let ids: Vec<ObjectId> = t.post_order().iter().map(|n| n.id).collect();
        assert_eq!(
            s.preregister(1, &t).unwrap(),
            ids,
            "everything is new, in post-order"
        );
        assert_eq!(s.get(&f.chunk.0).unwrap(), Lookup::Pending);
        assert_eq!(s.get(&ObjectId::of(b"never")).unwrap(), Lookup::Unknown);
        assert!(
            !s.put(&ObjectId::of(b"never"), Bytes::from_static(b"never"))
                .unwrap(),
            "not pre-registered"
        );
        assert!(s.put(&f.chunk.0, f.chunk.1.clone()).unwrap());
        assert_eq!(
            s.get(&f.chunk.0).unwrap(),
            Lookup::Available(f.chunk.1.clone())
        );
        assert!(
            s.put(&f.chunk.0, f.chunk.1.clone()).unwrap(),
            "a second put is a no-op"
        );
        // Pre-registering again reports only what is still missing.
        let again = s.preregister(1, &t).unwrap();
        assert!(!again.contains(&f.chunk.0) && again.len() == 5, "{again:?}");
        push_all(s, &f);
        assert_eq!(
            s.preregister(2, &t).unwrap(),
            Vec::<ObjectId>::new(),
            "available objects are not asked for"
        );
        assert_eq!(s.len().unwrap(), 6);
    }

    fn shared_objects_survive(s: &dyn ObjectStore) {
        // Two messages share the ArrayRecord subtree; confirming one keeps the shared part.
        let a = fixture(b"a");
        let b = fixture(b"b");
        assert_eq!(a.rec.0, b.rec.0);
        s.preregister(1, &tree(&a)).unwrap();
        let to_push_b = s.preregister(1, &tree(&b)).unwrap();
        assert!(
            to_push_b.contains(&b.chunk.0),
            "still unavailable objects are asked for again"
        );
        push_all(s, &a);
        push_all(s, &b);
        s.delete(&a.dict.0).unwrap();
        assert!(
            matches!(s.get(&a.dict.0).unwrap(), Lookup::Available(_)),
            "referenced objects stay"
        );
        s.delete(&a.msg.0).unwrap();
        assert_eq!(s.get(&a.msg.0).unwrap(), Lookup::Unknown);
        assert_eq!(s.get(&a.dict.0).unwrap(), Lookup::Unknown);
        assert_eq!(s.get(&a.cfg.0).unwrap(), Lookup::Unknown);
        assert!(
            matches!(s.get(&a.rec.0).unwrap(), Lookup::Available(_)),
            "shared with message b"
        );
        assert!(matches!(s.get(&a.chunk.0).unwrap(), Lookup::Available(_)));
        s.delete(&b.msg.0).unwrap();
        assert_eq!(s.len().unwrap(), 0, "everything released");
        s.delete(&b.msg.0).unwrap();
    }

    fn run_cleanup(s: &dyn ObjectStore) {
        let a = fixture(b"run-a");
        let b = fixture(b"run-b");
        s.preregister(10, &tree(&a)).unwrap();
        s.preregister(11, &tree(&b)).unwrap();
        push_all(s, &a);
        s.delete_objects_in_run(10).unwrap();
        assert_eq!(s.get(&a.msg.0).unwrap(), Lookup::Unknown);
        assert_eq!(
            s.get(&b.msg.0).unwrap(),
            Lookup::Pending,
            "other runs are untouched"
        );
        assert!(
            matches!(s.get(&b.chunk.0).unwrap(), Lookup::Available(_)),
            "shared objects of other runs stay"
        );
        s.delete_objects_in_run(11).unwrap();
        assert_eq!(s.len().unwrap(), 0);
        s.delete_objects_in_run(12).unwrap();
    }

    fn trees(s: &dyn ObjectStore) {
        let f = fixture(b"tree");
        let t = tree(&f);
        s.preregister(3, &t).unwrap();
        assert_eq!(s.tree(&f.msg.0).unwrap(), Some(t));
        assert_eq!(s.tree(&ObjectId::of(b"none")).unwrap(), None);
        let leaf = ObjectTree::leaf(ObjectId::of(b"single"));
        s.preregister(3, &leaf).unwrap();
        assert_eq!(s.tree(&leaf.id).unwrap(), Some(leaf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_engine_conforms() {
        conformance::run(&|| std::sync::Arc::new(MemoryObjectStore::new()));
    }
}
