//! FABs by SHA-256: the store that answers SuperNodes' `GetFab` and ServerApps'
//! `PullAppInputs`. [`FileFabs`] keeps them on disk (`--storage-dir`, with the in-memory and
//! SQLite engines); the PostgreSQL engine keeps them in the database, so that every replica
//! serves every FAB.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::StateError;

/// A FAB's verifications: publisher key id → signature record (JSON), and `valid_license`, as
/// Flower Hub's answer has them; empty for a FAB the CLI sent.
pub type Verifications = BTreeMap<String, String>;

/// A stored FAB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredFab {
    /// Its bytes.
    pub content: Bytes,
    /// What it was stored with (see [`Verifications`]).
    pub verifications: Verifications,
}

/// FABs stored by their SHA-256.
#[async_trait]
pub trait FabStore: Send + Sync {
    /// Stores a FAB (once) with its verifications, and returns its hash. Storing it again with
    /// verifications replaces them; with none keeps those it has (a FAB signed on Flower Hub
    /// that the CLI also sends stays signed).
    async fn put(&self, content: Bytes, verifications: Verifications)
        -> Result<String, StateError>;
    /// The FAB with this hash, if stored.
    async fn get(&self, hash: &str) -> Result<Option<StoredFab>, StateError>;
}

/// A FAB store failure, naming the path and the fix.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} FAB storage at '{path}': {source}. {hint}")]
pub struct FfsError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
    hint: &'static str,
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) => "Free disk space, or point `--storage-dir` at a larger disk",
        Some(13) | Some(1) => {
            "Give this user write access to the directory, or choose another `--storage-dir`"
        }
        Some(30) => "The file system is read-only: choose a writable `--storage-dir`",
        _ => "Check `--storage-dir`",
    }
}

/// The store on disk: `<dir>/<sha256>` holds the FAB, `<dir>/<sha256>.META` its verification
/// metadata (`{}` for FABs sent by the CLI). Its I/O runs on the blocking pool.
#[derive(Clone, Debug)]
pub struct FileFabs {
    dir: PathBuf,
}

/// SHA-256 hex of a FAB.
pub fn fab_hash(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

impl FileFabs {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn error(&self, action: &'static str, source: std::io::Error) -> FfsError {
        FfsError {
            action,
            path: self.dir.clone(),
            hint: hint(&source),
            source,
        }
    }

    /// Creates the directory and checks that this user can write there (at start, so that a bad
    /// `--storage-dir` stops the daemon instead of failing the first run).
    pub fn check_writable(&self) -> Result<(), FfsError> {
        let err = |action, source| self.error(action, source);
        std::fs::create_dir_all(&self.dir).map_err(|e| err("create", e))?;
        let probe = self
            .dir
            .join(format!(".write-check-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| err("write to", e))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }

    /// Stores a FAB and returns its hash; its verifications go to `<hash>.META` as a JSON
    /// object, as in Flower's store. Writing is atomic (temporary file, then rename), so a full
    /// disk never leaves a truncated FAB behind.
    pub fn put_blocking(
        &self,
        content: &[u8],
        verifications: &Verifications,
    ) -> Result<String, FfsError> {
        let hash = fab_hash(content);
        let path = self.dir.join(&hash);
        let err = |action, source| self.error(action, source);
        std::fs::create_dir_all(&self.dir).map_err(|e| err("create", e))?;
        if !path.exists() {
            write_atomic(&path, content).map_err(|e| err("write to", e))?;
        }
        let meta = self.dir.join(format!("{hash}.META"));
        if !verifications.is_empty() || !meta.exists() {
            let json = serde_json::to_vec(verifications).unwrap_or_else(|_| b"{}".to_vec());
            write_atomic(&meta, &json).map_err(|e| err("write to", e))?;
        }
        Ok(hash)
    }

    /// The FAB with this hash, if stored. A hash that is not 64 hex characters is never a path.
    /// Verifications that cannot be read count as none (a SuperNode with trusted entities then
    /// refuses the FAB, which is the safe side).
    pub fn get_blocking(&self, hash: &str) -> Result<Option<StoredFab>, FfsError> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let read_error = |e: std::io::Error| FfsError {
            action: "read from",
            path: self.dir.clone(),
            hint: hint(&e),
            source: e,
        };
        let content = match std::fs::read(self.dir.join(hash)) {
            Ok(b) => Bytes::from(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let verifications = match std::fs::read(self.dir.join(format!("{hash}.META"))) {
            Ok(json) => serde_json::from_slice(&json).unwrap_or_else(|e| {
                tracing::warn!(hash, error = %e, "the verifications of a FAB cannot be read");
                Verifications::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Verifications::new(),
            Err(e) => return Err(read_error(e)),
        };
        Ok(Some(StoredFab {
            content,
            verifications,
        }))
    }
}

#[async_trait]
impl FabStore for FileFabs {
    async fn put(
        &self,
        content: Bytes,
        verifications: Verifications,
    ) -> Result<String, StateError> {
        let fabs = self.clone();
        tokio::task::spawn_blocking(move || fabs.put_blocking(&content, &verifications))
            .await
            .map_err(|e| StateError::Worker {
                what: "FAB storage",
                source: Box::new(e),
            })?
            .map_err(StateError::from)
    }

    async fn get(&self, hash: &str) -> Result<Option<StoredFab>, StateError> {
        let fabs = self.clone();
        let hash = hash.to_owned();
        tokio::task::spawn_blocking(move || fabs.get_blocking(&hash))
            .await
            .map_err(|e| StateError::Worker {
                what: "FAB read",
                source: Box::new(e),
            })?
            .map_err(StateError::from)
    }
}

fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let ffs = FileFabs::new(dir.path().join("ffs"));
        let h = ffs
            .put_blocking(b"fab bytes", &Verifications::new())
            .unwrap();
        assert_eq!(h, fab_hash(b"fab bytes"));
        assert_eq!(
            ffs.get_blocking(&h).unwrap().map(|f| f.content).as_deref(),
            Some(&b"fab bytes"[..])
        );
        assert_eq!(ffs.get_blocking(&"0".repeat(64)).unwrap(), None);
        assert_eq!(ffs.get_blocking("../../etc/passwd").unwrap(), None);
        assert!(dir.path().join("ffs").join(format!("{h}.META")).exists());
    }

    #[test]
    fn an_unwritable_directory_is_named_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = FileFabs::new(file.join("ffs"))
            .check_writable()
            .unwrap_err();
        assert!(
            e.to_string().contains("a-file") && e.to_string().contains("--storage-dir"),
            "{e}"
        );
        FileFabs::new(dir.path().join("new/ffs"))
            .check_writable()
            .unwrap();
    }
}
