//! `--log-file`: a log file rotated every N hours, keeping the K newest rotated files, like
//! Python's `TimedRotatingFileHandler(when="H", utc=True)` that Flower uses. A rotated file is
//! named `<file>.<YYYY-MM-DD_HH>` after the start of the period it holds.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

/// Where and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The log file.
    pub path: PathBuf,
    /// Rotate after this long.
    pub interval: Duration,
    /// Keep this many rotated files.
    pub backups: usize,
}

struct Inner {
    spec: Rotation,
    file: File,
    period_start: SystemTime,
}

/// A thread-safe writer that rotates; clone it freely.
#[derive(Clone)]
pub struct RotatingFile {
    inner: Arc<Mutex<Inner>>,
}

fn open(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

fn suffix(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%d_%H")
        .to_string()
}

impl RotatingFile {
    /// Opens (appending) the log file.
    pub fn open(spec: Rotation) -> io::Result<Self> {
        let file = open(&spec.path)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                spec,
                file,
                period_start: SystemTime::now(),
            })),
        })
    }

    fn rotate_if_due(inner: &mut Inner, now: SystemTime) -> io::Result<()> {
        if now.duration_since(inner.period_start).unwrap_or_default() < inner.spec.interval {
            return Ok(());
        }
        let _ = inner.file.flush();
        let rotated = PathBuf::from(format!(
            "{}.{}",
            inner.spec.path.display(),
            suffix(inner.period_start)
        ));
        if rotated.exists() {
            std::fs::remove_file(&rotated)?;
        }
        std::fs::rename(&inner.spec.path, &rotated)?;
        inner.file = open(&inner.spec.path)?;
        inner.period_start = now;
        prune(&inner.spec)
    }

    /// Rotates now if the period is over (also called on every write).
    pub fn rotate_at(&self, now: SystemTime) -> io::Result<()> {
        Self::rotate_if_due(&mut self.inner.lock(), now)
    }
}

/// Deletes rotated files beyond the newest `backups`.
fn prune(spec: &Rotation) -> io::Result<()> {
    let dir = spec
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = spec.path.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let prefix = format!("{name}.");
    let mut rotated: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|s| s.len() == 13 && s.as_bytes()[10] == b'_')
        })
        .collect();
    rotated.sort();
    let excess = rotated.len().saturating_sub(spec.backups);
    for old in &rotated[..excess] {
        std::fs::remove_file(dir.join(old))?;
    }
    Ok(())
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.inner.lock();
        // A failed rotation must not lose the line: keep writing to the current file.
        let _ = Self::rotate_if_due(&mut inner, SystemTime::now());
        inner.file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.lock().file.flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RotatingFile {
    type Writer = RotatingFile;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_the_newest_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("superlink.log");
        let spec = Rotation {
            path: path.clone(),
            interval: Duration::from_secs(3600),
            backups: 2,
        };
        let mut f = RotatingFile::open(spec).unwrap();
        f.write_all(b"first\n").unwrap();
        let start = SystemTime::now();
        for h in 1..=4u64 {
            f.rotate_at(start + Duration::from_secs(3600 * h + 1))
                .unwrap();
            f.write_all(format!("line {h}\n").as_bytes()).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "the live file and two backups: {names:?}");
        assert!(names.contains(&"superlink.log".to_owned()));
        assert!(std::fs::read_to_string(&path).unwrap().contains("line 4"));
        // Not yet due: nothing happens.
        f.rotate_at(SystemTime::now()).unwrap();
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            3
        );
    }
}
