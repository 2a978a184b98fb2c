//! The object store of the SuperLink: content-addressed objects with Flower's reference counting
//! (the semantics are `flwr_objects::store`'s), behind an async trait with an engine per
//! database.

use async_trait::async_trait;
use bytes::Bytes;
use flwr_objects::store::{Lookup, MemoryObjectStore, StoreError};
use flwr_objects::{ObjectId, ObjectTree};

use crate::spill::{Held, SpillPolicy, Spiller};

/// A content-addressed, reference-counted object store.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Pre-registers `tree` for `run_id`; returns the ids still to push (deduplicated, in
    /// post-order).
    async fn preregister(
        &self,
        run_id: u64,
        tree: &ObjectTree,
    ) -> Result<Vec<ObjectId>, StoreError>;
    /// Stores verified bytes; false when the id was never pre-registered. A second put of an
    /// available object changes nothing and returns true.
    async fn put(&self, id: &ObjectId, content: Bytes) -> Result<bool, StoreError>;
    /// Looks an id up.
    async fn get(&self, id: &ObjectId) -> Result<Lookup, StoreError>;
    /// Those of `ids` whose content is not here yet (pending or unknown), in the order given,
    /// without reading any content.
    async fn unavailable(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, StoreError>;
    /// Deletes an unreferenced object and, recursively, children nothing else references.
    async fn delete(&self, id: &ObjectId) -> Result<(), StoreError>;
    /// Deletes every unreferenced object of a run (cascading) and forgets the run.
    async fn delete_objects_in_run(&self, run_id: u64) -> Result<(), StoreError>;
    /// The tree rooted at `id`, from the registered child lists; `None` if any node is missing.
    async fn tree(&self, id: &ObjectId) -> Result<Option<ObjectTree>, StoreError>;
    /// Number of objects held (available or not).
    async fn len(&self) -> Result<usize, StoreError>;
    /// Bytes of the objects' contents held (pushed ones).
    async fn content_bytes(&self) -> Result<u64, StoreError>;
    /// True when the store holds nothing.
    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }
}

/// The in-memory engine: every call is one short lock scope, answered at once; with a
/// [`SpillPolicy`], large objects' bytes wait in files (see [`crate::spill`]).
#[derive(Debug)]
pub struct MemoryObjects {
    store: MemoryObjectStore<Held>,
    spill: Spiller,
}

impl Default for MemoryObjects {
    fn default() -> Self {
        Self::new(None)
    }
}

impl MemoryObjects {
    /// Every object in memory (`None`), or large ones in files.
    pub fn new(spill: Option<SpillPolicy>) -> Self {
        Self {
            store: MemoryObjectStore::new(),
            spill: Spiller::new(spill),
        }
    }

    /// Bytes of objects held in memory (not in files).
    pub fn inline_bytes(&self) -> u64 {
        self.spill.inline_bytes()
    }

    /// Files of spilled objects open now.
    pub fn open_files(&self) -> usize {
        self.spill.open_files()
    }
}

#[async_trait]
impl ObjectStore for MemoryObjects {
    async fn preregister(
        &self,
        run_id: u64,
        tree: &ObjectTree,
    ) -> Result<Vec<ObjectId>, StoreError> {
        self.store.preregister(run_id, tree)
    }
    async fn put(&self, id: &ObjectId, content: Bytes) -> Result<bool, StoreError> {
        // Only a pending object needs its bytes held (and maybe written out).
        match self.store.get(id)? {
            Lookup::Unknown => Ok(false),
            Lookup::Available(_) => Ok(true),
            Lookup::Pending => {
                let held = self.spill.hold(content).await;
                self.store.put(id, held)
            }
        }
    }
    async fn get(&self, id: &ObjectId) -> Result<Lookup, StoreError> {
        Ok(match self.store.get(id)? {
            Lookup::Unknown => Lookup::Unknown,
            Lookup::Pending => Lookup::Pending,
            Lookup::Available(held) => Lookup::Available(self.spill.bytes(held).await?),
        })
    }
    async fn unavailable(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, StoreError> {
        self.store.unavailable(ids)
    }
    async fn delete(&self, id: &ObjectId) -> Result<(), StoreError> {
        self.store.delete(id)
    }
    async fn delete_objects_in_run(&self, run_id: u64) -> Result<(), StoreError> {
        self.store.delete_objects_in_run(run_id)
    }
    async fn tree(&self, id: &ObjectId) -> Result<Option<ObjectTree>, StoreError> {
        self.store.tree(id)
    }
    async fn len(&self) -> Result<usize, StoreError> {
        self.store.len()
    }
    async fn content_bytes(&self) -> Result<u64, StoreError> {
        self.store.content_bytes()
    }
}
