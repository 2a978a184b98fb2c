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

/// Read bytes shared by the readers of one spilled object (see [`Spilled::last_read`]).
struct SharedRead(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedRead {
    fn as_ref(&self) -> &[u8] {
        &self.0
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
}

impl Spiller {
    /// With `None`, every object stays in memory.
    pub fn new(policy: Option<SpillPolicy>) -> Self {
        Self {
            policy,
            inline: Arc::default(),
            files: Arc::default(),
            warned: AtomicBool::new(false),
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
        if let Some(shared) = last.upgrade() {
            return Ok(Bytes::from_owner(SharedRead(shared)));
        }
        let file = s.clone();
        // Allocated here, on a runtime thread, not on the blocking pool's: the allocator gives
        // a large block back to the system promptly when the thread that allocated it keeps
        // allocating, and a blocking-pool thread may sleep until it exits.
        let mut buf = vec![0; file.len];
        let read =
            tokio::task::spawn_blocking(move || file.file.read_exact_at(&mut buf, 0).map(|()| buf))
                .await;
        let buf = match read {
            Ok(r) => r.map_err(|e| {
                StoreError::Backend(format!("reading a spilled object back failed: {e}").into())
            })?,
            Err(e) => return Err(StoreError::Backend(Box::new(e))),
        };
        let shared = Arc::new(buf);
        *last = Arc::downgrade(&shared);
        Ok(Bytes::from_owner(SharedRead(shared)))
    }
}

/// One unnamed file in `dir` holding `data`.
fn write(dir: &std::path::Path, data: &[u8]) -> std::io::Result<File> {
    let mut file = tempfile::tempfile_in(dir)?;
    file.write_all(data)?;
    Ok(file)
}
