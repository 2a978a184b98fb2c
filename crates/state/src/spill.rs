//! Object bytes kept out of memory: the in-memory engine writes large objects (and any object
//! once the small ones held in memory pass a budget) to anonymous files, so that a fan-out of
//! large models costs disk cache, which the kernel can write out and drop, rather than the
//! process's resident memory.
//!
//! Each spilled object is one unnamed file (`O_TMPFILE`) in the spill directory: nothing to name,
//! nothing left behind by a crash, and the space is freed when the object goes (its last handle
//! closes the file). Writes and reads run on the blocking pool. A write that fails (full disk,
//! unwritable directory) keeps the object in memory and says so in the log: spilling saves
//! memory, it never loses an object.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use flwr_objects::store::{Content, StoreError};

/// When objects leave memory.
#[derive(Clone, Debug)]
pub struct SpillPolicy {
    /// Where the files go (created if missing).
    pub dir: PathBuf,
    /// Objects at least this large always go to files.
    pub threshold: usize,
    /// Smaller objects stay in memory up to this many bytes in all; beyond, every new object
    /// goes to a file.
    pub budget: u64,
    /// Files open at once at most (each spilled object holds one descriptor, taken from those
    /// the connections need); beyond, objects stay in memory.
    pub max_files: usize,
}

impl SpillPolicy {
    /// Objects of 64 KiB and more, and everything beyond 64 MiB of small ones, in the system's
    /// temporary directory (`TMPDIR`, else `/tmp`), in at most `max_files` files.
    pub fn in_temp_dir(max_files: usize) -> Self {
        Self {
            dir: std::env::temp_dir(),
            threshold: 64 * 1024,
            budget: 64 * 1024 * 1024,
            max_files,
        }
    }

    /// Checks that the directory takes files (blocking): the reason it does not, for the log.
    pub fn check(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| tempfile::tempfile_in(&self.dir))
            .map(drop)
            .map_err(|e| format!("{}: {e}", self.dir.display()))
    }
}

/// How the in-memory engine holds an object's bytes.
#[derive(Clone, Debug)]
pub enum Held {
    /// In memory, counted against the budget until dropped.
    Inline(Arc<Inline>),
    /// In an unnamed file.
    Spilled(Arc<Spilled>),
}

impl Content for Held {
    fn len(&self) -> usize {
        match self {
            Held::Inline(i) => i.bytes.len(),
            Held::Spilled(s) => s.len,
        }
    }
}

/// Bytes in memory; their size leaves the count when the last handle goes.
#[derive(Debug)]
pub struct Inline {
    bytes: Bytes,
    counted: Arc<AtomicU64>,
}

impl Drop for Inline {
    fn drop(&mut self) {
        self.counted
            .fetch_sub(self.bytes.len() as u64, Ordering::Relaxed);
    }
}

/// An object's bytes in an unnamed file, closed (and its space freed) with the last handle.
#[derive(Debug)]
pub struct Spilled {
    file: File,
    len: usize,
    _slot: FileSlot,
    /// The bytes of the last read, while any reader still holds them: readers at about the same
    /// time (nodes pulling the same instruction) share one read and one copy in memory. An
    /// async lock, held across the read so that a second reader waits for the first one's
    /// bytes instead of reading the file again; it keeps nothing alive by itself.
    last_read: tokio::sync::Mutex<Weak<Vec<u8>>>,
}

/// Read bytes shared by the readers of one spilled object (see [`Spilled::last_read`]); the
/// last reader to let go gives the buffer back for the next read.
struct SharedRead {
    /// Always `Some` until dropped.
    bytes: Option<Arc<Vec<u8>>>,
    buffers: Arc<ReadBuffers>,
}

impl SharedRead {
    fn bytes(bytes: Arc<Vec<u8>>, buffers: &Arc<ReadBuffers>) -> Bytes {
        Bytes::from_owner(SharedRead {
            bytes: Some(bytes),
            buffers: buffers.clone(),
        })
    }
}

impl AsRef<[u8]> for SharedRead {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl Drop for SharedRead {
    fn drop(&mut self) {
        if let Some(Ok(buf)) = self.bytes.take().map(Arc::try_unwrap) {
            self.buffers.give(buf);
        }
    }
}

/// Buffers of spilled objects read back, kept for the next reads: a read into a buffer that is
/// already resident costs one copy, a read into a new one costs the memory's first touch too (a
/// page fault and the zeroing of every page).
/// Bounded: at most [`READ_BUFFER_BYTES`] wait here.
#[derive(Debug, Default)]
struct ReadBuffers {
    free: parking_lot::Mutex<Vec<Vec<u8>>>,
}

/// Bytes of read buffers kept for reuse at most.
const READ_BUFFER_BYTES: usize = 32 * 1024 * 1024;

impl ReadBuffers {
    /// A buffer of `len` bytes: a kept one that fits (the smallest), else a new one.
    fn take(&self, len: usize) -> Vec<u8> {
        let kept = {
            let mut free = self.free.lock();
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        match kept {
            Some(mut buf) => {
                buf.resize(len, 0);
                buf
            }
            None => vec![0; len],
        }
    }

    /// Keeps `buf` for a later read while the kept buffers stay within the bound.
    fn give(&self, buf: Vec<u8>) {
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

/// One of the files the spiller may have open, counted while it lives (also while the file is
/// being written, so that a write abandoned by a cancelled call gives its place back).
#[derive(Debug)]
struct FileSlot {
    open: Arc<AtomicUsize>,
    /// Files open before this one.
    before: usize,
}

impl FileSlot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        Self {
            before: open.fetch_add(1, Ordering::Relaxed),
            open: open.clone(),
        }
    }
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decides where each object's bytes go, and reads them back.
#[derive(Debug)]
pub struct Spiller {
    policy: Option<SpillPolicy>,
    /// Bytes of the objects held in memory.
    inline: Arc<AtomicU64>,
    /// Spilled objects' files open now.
    files: Arc<AtomicUsize>,
    /// A failed write was reported already (one warning, not one per object).
    warned: AtomicBool,
    /// Read buffers kept for reuse.
    buffers: Arc<ReadBuffers>,
}

impl Spiller {
    /// With `None`, every object stays in memory.
    pub fn new(policy: Option<SpillPolicy>) -> Self {
        Self {
            policy,
            inline: Arc::default(),
            files: Arc::default(),
            warned: AtomicBool::new(false),
            buffers: Arc::default(),
        }
    }

    /// Bytes held in memory now.
    pub fn inline_bytes(&self) -> u64 {
        self.inline.load(Ordering::Relaxed)
    }

    /// Spilled objects' files open now.
    pub fn open_files(&self) -> usize {
        self.files.load(Ordering::Relaxed)
    }

    /// Holds `bytes`: in a file when the policy says so and the write succeeds, else in memory.
    pub async fn hold(&self, bytes: Bytes) -> Held {
        if let Some(p) = &self.policy {
            let len = bytes.len();
            let large = len >= p.threshold || self.inline_bytes() + len as u64 > p.budget;
            // Over the file cap, objects stay in memory.
            let slot = large
                .then(|| FileSlot::take(&self.files))
                .filter(|s| s.before < p.max_files);
            if let Some(slot) = slot {
                let dir = p.dir.clone();
                let data = bytes.clone();
                let written = tokio::task::spawn_blocking(move || write(&dir, &data)).await;
                match written {
                    Ok(Ok(file)) => {
                        return Held::Spilled(Arc::new(Spilled {
                            file,
                            len,
                            _slot: slot,
                            last_read: tokio::sync::Mutex::new(Weak::new()),
                        }))
                    }
                    Ok(Err(e)) => {
                        if !self.warned.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                "objects stay in memory: writing one to {} failed: {e} \
                                 (free space there, or point TMPDIR elsewhere)",
                                p.dir.display()
                            );
                        }
                    }
                    Err(e) => tracing::warn!("object kept in memory: {e}"),
                }
            }
        }
        self.inline.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Held::Inline(Arc::new(Inline {
            bytes,
            counted: self.inline.clone(),
        }))
    }

    /// The bytes of `held`: for a spilled object, a read of the file on the blocking pool, or
    /// the bytes another reader of the same object still holds.
    pub async fn bytes(&self, held: Held) -> Result<Bytes, StoreError> {
        let s = match held {
            Held::Inline(i) => return Ok(i.bytes.clone()),
            Held::Spilled(s) => s,
        };
        let mut last = s.last_read.lock().await;
        if let Some(bytes) = last.upgrade() {
            return Ok(SharedRead::bytes(bytes, &self.buffers));
        }
        let file = s.clone();
        // Taken here, on a runtime thread, not on the blocking pool's: the allocator gives a
        // large new block back to the system promptly when the thread that allocated it keeps
        // allocating, and a blocking-pool thread may sleep until it exits.
        let mut buf = self.buffers.take(file.len);
        let read =
            tokio::task::spawn_blocking(move || file.file.read_exact_at(&mut buf, 0).map(|()| buf))
                .await;
        let buf = match read {
            Ok(r) => r.map_err(|e| {
                StoreError::Backend(format!("reading a spilled object back failed: {e}").into())
            })?,
            Err(e) => return Err(StoreError::Backend(Box::new(e))),
        };
        let bytes = Arc::new(buf);
        *last = Arc::downgrade(&bytes);
        Ok(SharedRead::bytes(bytes, &self.buffers))
    }
}

/// One unnamed file in `dir` holding `data`.
fn write(dir: &std::path::Path, data: &[u8]) -> std::io::Result<File> {
    let mut file = tempfile::tempfile_in(dir)?;
    file.write_all(data)?;
    Ok(file)
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
        // A kept one, cut to the length asked.
        let small = buffers.take(1000);
        assert_eq!(small.len(), 1000);
        assert_eq!(buffers.kept(), 5 * 5 * 1024 * 1024);
    }
}
