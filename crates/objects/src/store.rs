//! The object store: content-addressed objects with Flower's reference counting, in memory (the
//! SuperNode's store, and the SuperLink's in-memory engine through `flwr-state`).
//!
//! Semantics (every engine, both daemons; `flwr-state`'s conformance suite checks them):
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

/// What a storage engine's driver reported (a database error, a closed worker), kept whole so
/// that callers can look into it.
pub type DriverError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store backend failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (disk full, database error...).
    #[error("object store: {0}")]
    Backend(#[source] DriverError),
    /// The database cannot be reached now; callers may retry.
    #[error("object store unavailable: {0}")]
    Unavailable(#[source] DriverError),
}

/// What the store knows about an id: with `C`, how it holds the bytes (the bytes themselves
/// unless said otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<C = Bytes> {
    /// Never pre-registered (or deleted).
    Unknown,
    /// Pre-registered, not pushed yet.
    Pending,
    /// Pushed.
    Available(C),
}

/// How a store holds an object's bytes: the bytes, or a handle to them kept elsewhere (the
/// SuperLink's in-memory engine keeps large ones in files). Dropped when the object goes.
pub trait Content: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The size of the bytes.
    fn len(&self) -> usize;
    /// True for no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Content for Bytes {
    fn len(&self) -> usize {
        Bytes::len(self)
    }
}

#[derive(Debug)]
struct Entry<C> {
    content: Option<C>,
    children: Vec<ObjectId>,
    ref_count: u32,
    runs: Vec<u64>,
}

#[derive(Debug)]
struct Inner<C> {
    objects: HashMap<ObjectId, Entry<C>>,
    runs: HashMap<u64, HashSet<ObjectId>>,
}

impl<C> Default for Inner<C> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            runs: HashMap::new(),
        }
    }
}

/// The in-memory engine.
#[derive(Debug)]
pub struct MemoryObjectStore<C = Bytes> {
    inner: Mutex<Inner<C>>,
}

impl<C> Default for MemoryObjectStore<C> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
        }
    }
}

impl<C> MemoryObjectStore<C> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C> Inner<C> {
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

/// The store's operations (the SuperLink's async `ObjectStore` trait wraps these).
impl<C: Content> MemoryObjectStore<C> {
    /// Pre-registers `tree` for `run_id`; returns the ids still to push (deduplicated, in
    /// post-order).
    pub fn preregister(&self, run_id: u64, tree: &ObjectTree) -> Result<Vec<ObjectId>, StoreError> {
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

    /// Stores verified bytes; false when the id was never pre-registered. A second put of an
    /// available object changes nothing and returns true.
    pub fn put(&self, id: &ObjectId, content: C) -> Result<bool, StoreError> {
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

    /// Looks an id up.
    pub fn get(&self, id: &ObjectId) -> Result<Lookup<C>, StoreError> {
        let inner = self.inner.lock();
        Ok(match inner.objects.get(id) {
            None => Lookup::Unknown,
            Some(Entry { content: None, .. }) => Lookup::Pending,
            Some(Entry {
                content: Some(c), ..
            }) => Lookup::Available(c.clone()),
        })
    }

    /// Those of `ids` whose content is not here (pending or unknown), in the order given.
    pub fn unavailable(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, StoreError> {
        let inner = self.inner.lock();
        Ok(ids
            .iter()
            .filter(|id| {
                !matches!(
                    inner.objects.get(id),
                    Some(Entry {
                        content: Some(_),
                        ..
                    })
                )
            })
            .copied()
            .collect())
    }

    /// Deletes an unreferenced object and, recursively, children nothing else references.
    pub fn delete(&self, id: &ObjectId) -> Result<(), StoreError> {
        self.inner.lock().delete_cascading(id);
        Ok(())
    }

    /// Deletes every unreferenced object of a run (cascading) and forgets the run.
    pub fn delete_objects_in_run(&self, run_id: u64) -> Result<(), StoreError> {
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

    /// The tree rooted at `id`, from the registered child lists; `None` if any node is missing.
    pub fn tree(&self, id: &ObjectId) -> Result<Option<ObjectTree>, StoreError> {
        let inner = self.inner.lock();
        fn build<C>(inner: &Inner<C>, id: &ObjectId, depth: usize) -> Option<ObjectTree> {
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

    /// Number of objects held (available or not).
    pub fn len(&self) -> Result<usize, StoreError> {
        Ok(self.inner.lock().objects.len())
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Bytes of the contents held (pushed objects).
    pub fn content_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .lock()
            .objects
            .values()
            .filter_map(|e| e.content.as_ref())
            .map(|c| c.len() as u64)
            .sum())
    }
}
