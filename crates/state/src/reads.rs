//! Object bytes read back from storage (a spill file, an SQLite blob), shared by the readers
//! that want the same object at about the same time (nodes pulling one instruction): one read
//! and one copy in memory for all of them, not one each. Nothing here keeps bytes alive by
//! itself: the last reader to let go frees them, or gives the buffer back for a later read.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Weak};

use bytes::Bytes;

/// Bytes of read buffers kept for reuse at most.
const READ_BUFFER_BYTES: usize = 32 * 1024 * 1024;

/// Buffers of objects read back, kept for the next reads: a read into a buffer that is already
/// resident costs one copy, a read into a new one costs the memory's first touch too (a page
/// fault and the zeroing of every page). Bounded: at most [`READ_BUFFER_BYTES`] wait here.
#[derive(Debug, Default)]
pub(crate) struct ReadBuffers {
    free: parking_lot::Mutex<Vec<Vec<u8>>>,
}

/// Reads smaller than this take a new buffer: reuse pays for large reads only.
const REUSED_FROM: usize = 64 * 1024;

impl ReadBuffers {
    /// A buffer of `len` bytes: a kept one that fits, else a new one.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        match self.kept_for(len) {
            Some(mut buf) => {
                buf.resize(len, 0);
                buf
            }
            None => vec![0; len],
        }
    }

    /// An empty buffer with room for `len` bytes: a kept one that fits, else a new one.
    pub(crate) fn take_empty(&self, len: usize) -> Vec<u8> {
        match self.kept_for(len) {
            Some(mut buf) => {
                buf.clear();
                buf
            }
            None => Vec::with_capacity(len),
        }
    }

    /// The smallest kept buffer that holds `len` bytes and is at most twice that (a large one
    /// is not tied up by a small read), for a read large enough to be worth it.
    fn kept_for(&self, len: usize) -> Option<Vec<u8>> {
        if len < REUSED_FROM {
            return None;
        }
        let mut free = self.free.lock();
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| free.swap_remove(i))
    }

    /// Keeps `buf` for a later read while the kept buffers stay within the bound (a small one
    /// is never reused: it goes).
    pub(crate) fn give(&self, buf: Vec<u8>) {
        if buf.capacity() < REUSED_FROM {
            return;
        }
        let mut free = self.free.lock();
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= READ_BUFFER_BYTES {
            free.push(buf);
        }
    }

    /// Bytes kept now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().iter().map(Vec::capacity).sum()
    }
}

/// Read bytes shared by the readers of one object; the last reader to let go gives the buffer
/// back for the next read.
struct SharedRead {
    /// Always `Some` until dropped.
    bytes: Option<Arc<Vec<u8>>>,
    buffers: Arc<ReadBuffers>,
}

impl AsRef<[u8]> for SharedRead {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl Drop for SharedRead {
    fn drop(&mut self) {
        // Exactly one of readers letting go at once gets the buffer.
        if let Some(buf) = self.bytes.take().and_then(Arc::into_inner) {
            self.buffers.give(buf);
        }
    }
}

/// The last read of one object, while any reader still holds its bytes. An async lock, held
/// across a read, so that a second reader waits for the first one's bytes instead of reading
/// the object again.
#[derive(Debug, Default)]
pub(crate) struct LastRead(tokio::sync::Mutex<Weak<Vec<u8>>>);

/// The lock on a [`LastRead`].
pub(crate) struct LastReadGuard<'a> {
    last: tokio::sync::MutexGuard<'a, Weak<Vec<u8>>>,
    buffers: &'a Arc<ReadBuffers>,
}

impl LastRead {
    /// Waits for a read of this object under way to end.
    pub(crate) async fn lock<'a>(&'a self, buffers: &'a Arc<ReadBuffers>) -> LastReadGuard<'a> {
        LastReadGuard {
            last: self.0.lock().await,
            buffers,
        }
    }

    /// True when no read is under way and nobody holds the bytes of the last one.
    fn is_idle(&self) -> bool {
        self.0.try_lock().is_ok_and(|last| last.strong_count() == 0)
    }
}

impl LastReadGuard<'_> {
    /// The bytes of the last read, when a reader still holds them.
    pub(crate) fn shared(&self) -> Option<Bytes> {
        self.last.upgrade().map(|bytes| self.share(bytes))
    }

    /// A new read's bytes (`buf`, best taken from the buffers), shared with the readers that
    /// come while they are held.
    pub(crate) fn keep(&mut self, buf: Vec<u8>) -> Bytes {
        let bytes = Arc::new(buf);
        *self.last = Arc::downgrade(&bytes);
        self.share(bytes)
    }

    fn share(&self, bytes: Arc<Vec<u8>>) -> Bytes {
        Bytes::from_owner(SharedRead {
            bytes: Some(bytes),
            buffers: self.buffers.clone(),
        })
    }
}

/// The [`LastRead`] of each object read lately, for a store that does not hold its objects in
/// memory (the SQLite engine). Idle entries go at the next sweep, which comes when the map has
/// doubled since the last one: it holds at most about twice as many entries as there are objects
/// being read or held by readers, and never fewer than [`FIRST_SWEEP`] before a sweep.
#[derive(Debug)]
pub(crate) struct RecentReads<K> {
    slots: parking_lot::Mutex<Slots<K>>,
}

#[derive(Debug)]
struct Slots<K> {
    by_key: HashMap<K, Arc<LastRead>>,
    /// Size at which the idle entries are dropped next (twice the live ones after a sweep).
    sweep_at: usize,
}

/// The smallest size at which the idle entries are swept.
const FIRST_SWEEP: usize = 64;

impl<K> Default for RecentReads<K> {
    fn default() -> Self {
        Self {
            slots: parking_lot::Mutex::new(Slots {
                by_key: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }
}

impl<K: Eq + Hash + Clone> RecentReads<K> {
    /// The last read of `key` (a new, empty one if it has none).
    pub(crate) fn slot(&self, key: &K) -> Arc<LastRead> {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.by_key.get(key) {
            return slot.clone();
        }
        if slots.by_key.len() >= slots.sweep_at {
            // Idle: nobody else has the slot, no read is under way, no bytes are held.
            slots
                .by_key
                .retain(|_, slot| Arc::strong_count(slot) > 1 || !slot.is_idle());
            slots.sweep_at = (2 * slots.by_key.len()).max(FIRST_SWEEP);
        }
        let slot = Arc::new(LastRead::default());
        slots.by_key.insert(key.clone(), slot.clone());
        slot
    }

    /// Entries held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffers_kept_stay_within_their_bound_and_fit_what_is_asked() {
        let buffers = ReadBuffers::default();
        for _ in 0..10 {
            buffers.give(vec![1; 5 * 1024 * 1024]);
        }
        assert!(buffers.kept() <= READ_BUFFER_BYTES, "{}", buffers.kept());
        assert_eq!(buffers.kept(), 6 * 5 * 1024 * 1024);
        // Too large for every kept one: a new buffer, the kept ones stay.
        let large = buffers.take(6 * 1024 * 1024);
        assert_eq!(large.len(), 6 * 1024 * 1024);
        assert_eq!(buffers.kept(), 6 * 5 * 1024 * 1024);
        // Small reads, or reads of less than half a kept one, do not tie one up.
        assert_eq!(buffers.take(1000).len(), 1000);
        assert_eq!(
            buffers.take_empty(2 * 1024 * 1024).capacity(),
            2 * 1024 * 1024
        );
        assert_eq!(buffers.kept(), 6 * 5 * 1024 * 1024);
        // A kept one, cut to the length asked.
        let fits = buffers.take(3 * 1024 * 1024);
        assert_eq!(fits.len(), 3 * 1024 * 1024);
        assert_eq!(buffers.kept(), 5 * 5 * 1024 * 1024);
        let empty = buffers.take_empty(4 * 1024 * 1024);
        assert!(empty.is_empty() && empty.capacity() >= 4 * 1024 * 1024);
        assert_eq!(buffers.kept(), 4 * 5 * 1024 * 1024);
    }

    /// Readers while the bytes are held share them; once the last lets go, the next reads
    /// again, and the buffer comes back for it.
    #[tokio::test]
    async fn readers_share_a_read_while_it_is_held() {
        let buffers = Arc::new(ReadBuffers::default());
        let last = LastRead::default();
        let first = {
            let mut guard = last.lock(&buffers).await;
            assert!(guard.shared().is_none());
            guard.keep(vec![7; REUSED_FROM])
        };
        let second = last.lock(&buffers).await.shared().unwrap();
        assert_eq!(first.as_ptr(), second.as_ptr(), "one copy for both");
        drop((first, second));
        assert_eq!(buffers.kept(), REUSED_FROM, "the buffer is given back");
        assert!(last.is_idle());
        assert!(last.lock(&buffers).await.shared().is_none());
    }

    /// The map of recent reads does not grow with the objects read: idle entries go.
    #[tokio::test]
    async fn recent_reads_keep_only_the_entries_in_use() {
        let buffers = Arc::new(ReadBuffers::default());
        let reads = RecentReads::<u32>::default();
        let held = {
            let slot = reads.slot(&0);
            let mut guard = slot.lock(&buffers).await;
            guard.keep(vec![1; 10])
        };
        for key in 1..10_000 {
            let slot = reads.slot(&key);
            drop(slot.lock(&buffers).await.keep(vec![2; 10]));
        }
        assert!(reads.len() <= 2 * FIRST_SWEEP, "{}", reads.len());
        let slot = reads.slot(&0);
        let again = slot.lock(&buffers).await.shared();
        assert_eq!(
            again.map(|b| b.as_ptr()),
            Some(held.as_ptr()),
            "an entry whose bytes are held stays"
        );
    }
}
