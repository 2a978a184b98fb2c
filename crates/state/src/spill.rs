//! Object bytes kept out of memory: the in-memory engine writes large objects (and any object
//! once the small ones held in memory pass a budget) to anonymous files, so that a fan-out of
//! large models costs disk cache, which the kernel can write out and drop, rather than the
//! process's resident memory.
//!
//! Each spilled object is one unnamed file (`O_TMPFILE`) in the spill directory: nothing to name,
//! nothing left behind by a crash. When the object goes, its file is kept for a later object for
//! a short while ([`FilePool`]), then closed, which frees its space. Writes and reads run on the
//! blocking pool. A write that fails (full disk, unwritable directory) keeps the object in memory
//! and says so in the log: spilling saves memory, it never loses an object.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flwr_objects::store::{Content, StoreError};

use crate::reads::{LastRead, ReadBuffers};

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

/// An object's bytes in an unnamed file, given back to the file pool with the last handle.
#[derive(Debug)]
pub struct Spilled {
    /// `Some` until dropped.
    file: Option<SpillFile>,
    len: usize,
    pool: Arc<FilePool>,
    /// The bytes of the last read, while any reader still holds them: readers at about the same
    /// time (nodes pulling the same instruction) share one read and one copy in memory.
    last_read: LastRead,
}

impl Drop for Spilled {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            if let Some(refused) = self.pool.give(file) {
                drop_off_runtime(refused);
            }
        }
    }
}

/// An open unnamed file of the spill directory, its first `size` bytes written.
#[derive(Debug)]
struct SpillFile {
    file: File,
    size: usize,
    made: Instant,
    _slot: FileSlot,
}

/// Where a spilled object's bytes are written: a kept file, or a new one in the directory.
enum Target {
    Kept(SpillFile),
    New(FileSlot),
}

/// Writes `data` at the start of the target file (blocking).
fn write(dir: &std::path::Path, target: Target, data: &[u8]) -> std::io::Result<SpillFile> {
    let file = match target {
        Target::Kept(mut kept) => {
            kept.file.write_all_at(data, 0)?;
            kept.size = kept.size.max(data.len());
            kept
        }
        Target::New(slot) => {
            let mut file = tempfile::tempfile_in(dir)?;
            file.write_all(data)?;
            SpillFile {
                file,
                size: data.len(),
                made: Instant::now(),
                _slot: slot,
            }
        }
    };
    Ok(file)
}

/// Files of delivered objects, kept for the next objects to spill. Writing over pages the file
/// cache holds already costs one copy; a new file costs the allocation of every page (on a
/// virtual machine often the host's first touch of it too) and, when it is closed, their
/// release. Bounded: at most [`FILE_POOL_BYTES`] in [`FILE_POOL_FILES`] files; a file unused
/// for [`FILE_POOL_IDLE`] is closed (by the spiller's closing task), and one older than
/// [`FILE_MAX_AGE`] is not kept (before the kernel would write its pages to disk).
#[derive(Debug, Default)]
struct FilePool {
    free: parking_lot::Mutex<Vec<(SpillFile, Instant)>>,
}

/// Bytes of spill files kept for reuse at most.
const FILE_POOL_BYTES: usize = 512 * 1024 * 1024;
/// Spill files kept for reuse at most.
const FILE_POOL_FILES: usize = 256;
/// A kept file unused this long is closed.
const FILE_POOL_IDLE: Duration = Duration::from_secs(2);
/// A file this old is closed instead of kept: the kernel writes out a file's pages that stayed
/// dirty for 30 s (`vm.dirty_expire_centisecs`), which a short-lived file never costs.
const FILE_MAX_AGE: Duration = Duration::from_secs(20);

impl FilePool {
    /// A kept file for `len` bytes: the smallest that holds them, else the largest (it grows).
    fn take(&self, len: usize) -> Option<SpillFile> {
        let mut free = self.free.lock();
        let fits = free
            .iter()
            .enumerate()
            .filter(|(_, (f, _))| f.size >= len)
            .min_by_key(|(_, (f, _))| f.size)
            .map(|(i, _)| i);
        let i = fits.or_else(|| {
            free.iter()
                .enumerate()
                .max_by_key(|(_, (f, _))| f.size)
                .map(|(i, _)| i)
        })?;
        Some(free.swap_remove(i).0)
    }

    /// Keeps `file` for a later object while the pool stays within its bounds; gives it back
    /// when it is not kept (to be closed by the caller).
    #[must_use = "a file not kept is to be closed off the async threads"]
    fn give(&self, file: SpillFile) -> Option<SpillFile> {
        if file.made.elapsed() >= FILE_MAX_AGE {
            return Some(file);
        }
        let mut free = self.free.lock();
        let kept: usize = free.iter().map(|(f, _)| f.size).sum();
        if free.len() < FILE_POOL_FILES && kept + file.size <= FILE_POOL_BYTES {
            free.push((file, Instant::now()));
            None
        } else {
            Some(file)
        }
    }

    /// Takes out the files unused for `idle` or more (to be closed by the caller).
    fn stale(&self, idle: Duration) -> Vec<SpillFile> {
        let mut free = self.free.lock();
        let (stale, fresh) = std::mem::take(&mut *free)
            .into_iter()
            .partition(|(_, since)| since.elapsed() >= idle);
        *free = fresh;
        stale.into_iter().map(|(f, _)| f).collect()
    }

    /// Bytes kept now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().iter().map(|(f, _)| f.size).sum()
    }
}

/// Drops `value` on the blocking pool when called inside a Tokio runtime, else here: closing a
/// spilled object's file frees its pages, milliseconds for a large one, which an async thread
/// must not spend (the last handle of an object goes on whichever thread deletes it).
fn drop_off_runtime<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        // A runtime that is shutting down drops the task, and `value` with it, here.
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(value))),
        Err(_) => drop(value),
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
    /// Files of delivered objects kept for reuse.
    pool: Arc<FilePool>,
    /// Closes the kept files unused for a while; started with the first spill, aborted with
    /// the spiller.
    closer: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for Spiller {
    fn drop(&mut self) {
        if let Some(task) = self.closer.get() {
            task.abort();
        }
    }
}

/// Every [`FILE_POOL_IDLE`] while the pool lives: closes its files unused that long, on the
/// blocking pool (closing a file frees its pages).
fn spawn_closer(pool: Weak<FilePool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FILE_POOL_IDLE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else {
                return;
            };
            let stale = pool.stale(FILE_POOL_IDLE);
            drop(pool);
            if !stale.is_empty() {
                if let Err(e) = tokio::task::spawn_blocking(move || drop(stale)).await {
                    tracing::warn!("closing unused spill files failed: {e}");
                }
            }
        }
    })
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
            pool: Arc::default(),
            closer: std::sync::OnceLock::new(),
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
            // A kept file, else a new one; over the file cap, objects stay in memory.
            let target = if large {
                self.target(len, p.max_files)
            } else {
                None
            };
            if let Some(target) = target {
                self.closer
                    .get_or_init(|| spawn_closer(Arc::downgrade(&self.pool)));
                let dir = p.dir.clone();
                let data = bytes.clone();
                let written = tokio::task::spawn_blocking(move || write(&dir, target, &data)).await;
                match written {
                    Ok(Ok(file)) => {
                        return Held::Spilled(Arc::new(Spilled {
                            file: Some(file),
                            len,
                            pool: self.pool.clone(),
                            last_read: LastRead::default(),
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

    /// Where the next object of `len` bytes goes: a kept file, else a new one while fewer than
    /// `max_files` are open.
    fn target(&self, len: usize, max_files: usize) -> Option<Target> {
        if let Some(kept) = self.pool.take(len) {
            return Some(Target::Kept(kept));
        }
        Some(FileSlot::take(&self.files))
            .filter(|s| s.before < max_files)
            .map(Target::New)
    }

    /// The bytes of `held`: for a spilled object, a read of the file on the blocking pool, or
    /// the bytes another reader of the same object still holds.
    pub async fn bytes(&self, held: Held) -> Result<Bytes, StoreError> {
        let s = match held {
            Held::Inline(i) => return Ok(i.bytes.clone()),
            Held::Spilled(s) => s,
        };
        let mut last = s.last_read.lock(&self.buffers).await;
        if let Some(bytes) = last.shared() {
            return Ok(bytes);
        }
        let file = s.clone();
        // Taken here, on a runtime thread, not on the blocking pool's: the allocator gives a
        // large new block back to the system promptly when the thread that allocated it keeps
        // allocating, and a blocking-pool thread may sleep until it exits.
        let mut buf = self.buffers.take(file.len);
        let read = tokio::task::spawn_blocking(move || match &file.file {
            Some(f) => f.file.read_exact_at(&mut buf, 0).map(|()| buf),
            None => Err(std::io::Error::other("the object's file was given back")),
        })
        .await;
        let buf = match read {
            Ok(r) => r.map_err(|e| {
                StoreError::Backend(format!("reading a spilled object back failed: {e}").into())
            })?,
            Err(e) => return Err(StoreError::Backend(Box::new(e))),
        };
        Ok(last.keep(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill_file(size: usize, made: Instant) -> SpillFile {
        SpillFile {
            file: tempfile::tempfile().unwrap(),
            size,
            made,
            _slot: FileSlot::take(&Arc::default()),
        }
    }

    #[test]
    fn kept_files_stay_within_their_bounds_and_the_unused_ones_go() {
        let pool = FilePool::default();
        let now = Instant::now();
        assert!(pool.give(spill_file(FILE_POOL_BYTES / 2, now)).is_none());
        assert!(pool.give(spill_file(FILE_POOL_BYTES / 2, now)).is_none());
        assert_eq!(pool.give(spill_file(1, now)).map(|f| f.size), Some(1));
        assert_eq!(
            pool.kept(),
            FILE_POOL_BYTES,
            "over the bytes' bound: not kept"
        );
        // Old enough for the kernel to write it out soon: not kept.
        let old = now.checked_sub(FILE_MAX_AGE).unwrap();
        let pool = FilePool::default();
        assert!(pool.give(spill_file(10, old)).is_some());
        assert_eq!(pool.kept(), 0);
        for _ in 0..FILE_POOL_FILES {
            assert!(pool.give(spill_file(10, now)).is_none());
        }
        assert!(pool.give(spill_file(10, now)).is_some());
        assert_eq!(
            pool.kept(),
            10 * FILE_POOL_FILES,
            "over the files' bound: not kept"
        );
        // The smallest that fits, else the largest.
        let pool = FilePool::default();
        for size in [100, 300, 200] {
            assert!(pool.give(spill_file(size, now)).is_none());
        }
        assert_eq!(pool.take(150).unwrap().size, 200);
        assert_eq!(pool.take(1000).unwrap().size, 300);
        assert!(pool.stale(Duration::from_secs(3600)).is_empty());
        assert_eq!(pool.stale(Duration::ZERO).len(), 1);
        assert!(pool.take(1).is_none());
    }

    /// Records the thread it is dropped on.
    struct DropsOn(std::sync::mpsc::Sender<std::thread::ThreadId>);

    impl Drop for DropsOn {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn files_not_kept_are_closed_off_the_async_threads() {
        let (tx, rx) = std::sync::mpsc::channel();
        drop_off_runtime(DropsOn(tx));
        let here = std::thread::current().id();
        let there = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(there, here, "dropped on the async thread");
    }

    #[test]
    fn outside_a_runtime_files_not_kept_are_closed_at_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        drop_off_runtime(DropsOn(tx));
        assert_eq!(rx.try_recv(), Ok(std::thread::current().id()));
    }
}
