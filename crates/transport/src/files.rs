//! Reading the files that flags point at, with errors that name the flag, the path and the fix.

use std::io;
use std::path::{Path, PathBuf};

/// The user ID the Docker images run as (user `app`).
pub const DOCKER_APP_UID: u32 = 49999;

/// A file given on the command line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Nothing exists at the path.
    #[error(
        "Path argument `{flag}` does not point to a file: '{path}' does not exist{cwd_hint}. \
         Check the path, or mount the file there when running in Docker.",
        path = path.display(),
        cwd_hint = cwd_hint(path)
    )]
    NotFound {
        /// The flag that named the file.
        flag: &'static str,
        /// The path as given.
        path: PathBuf,
    },
    /// The path exists but is a directory or another non-file.
    #[error(
        "Path argument `{flag}` does not point to a file: '{path}' is a directory or special \
         file. Give the path of the file itself.",
        path = path.display()
    )]
    NotAFile {
        /// The flag that named the file.
        flag: &'static str,
        /// The path as given.
        path: PathBuf,
    },
    /// The process may not read the file.
    #[error(
        "`{flag}` file '{path}' cannot be read: permission denied for this process (UID {uid}). \
         Make the file readable by UID {uid}. The Docker images run as the non-root user `app` \
         (UID {docker_uid}); give it the mounted certificates on the host with \
         `sudo chown -R {docker_uid}:{docker_uid} certificates/*` (the directory you mount), \
         as the Flower TLS guide describes.",
        path = path.display(),
        docker_uid = DOCKER_APP_UID
    )]
    PermissionDenied {
        /// The flag that named the file.
        flag: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The user ID of this process.
        uid: u32,
    },
    /// Another I/O error.
    #[error("`{flag}` file '{path}' cannot be read: {source}", path = path.display())]
    Io {
        /// The flag that named the file.
        flag: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn cwd_hint(path: &Path) -> String {
    if path.is_relative() {
        match std::env::current_dir() {
            Ok(dir) => format!(" (relative to the working directory {})", dir.display()),
            Err(_) => String::new(),
        }
    } else {
        String::new()
    }
}

/// The effective user ID of this process, read without `unsafe`: `/proc/self` belongs to it.
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Expands a leading `~/` like Flower does (`Path.expanduser()`).
pub fn expand_user(path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    path.to_path_buf()
}

/// Reads the whole file that `flag` points at.
///
/// This is blocking I/O: call it at start-up, before the runtime serves, or from a blocking task.
pub fn read_flag_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    let real = expand_user(path);
    let meta = std::fs::metadata(&real).map_err(|e| classify(flag, path, e))?;
    if !meta.is_file() {
        return Err(FileError::NotAFile {
            flag,
            path: path.to_path_buf(),
        });
    }
    std::fs::read(&real).map_err(|e| classify(flag, path, e))
}

fn classify(flag: &'static str, path: &Path, e: io::Error) -> FileError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => FileError::NotFound { flag, path },
        io::ErrorKind::PermissionDenied => FileError::PermissionDenied {
            flag,
            path,
            uid: current_uid(),
        },
        _ => FileError::Io {
            flag,
            path,
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_flag_path_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = read_flag_file("--ssl-certfile", &missing).unwrap_err();
        assert!(matches!(e, FileError::NotFound { .. }));
        let text = e.to_string();
        assert!(
            text.contains("`--ssl-certfile`") && text.contains("nope.pem"),
            "{text}"
        );

        let e = read_flag_file("--ssl-certfile", dir.path()).unwrap_err();
        assert!(matches!(e, FileError::NotAFile { .. }), "{e}");

        let rel = read_flag_file("--ssl-keyfile", Path::new("certificates/none.key")).unwrap_err();
        assert!(rel.to_string().contains("working directory"), "{rel}");
    }

    #[test]
    fn permission_denied_mentions_docker_uid_and_chown() {
        let e = FileError::PermissionDenied {
            flag: "--ssl-keyfile",
            path: "certificates/server.key".into(),
            uid: 49999,
        };
        let text = e.to_string();
        assert!(text.contains("UID 49999"), "{text}");
        assert!(
            text.contains("sudo chown -R 49999:49999 certificates/*"),
            "{text}"
        );
        assert!(text.contains("certificates/server.key"), "{text}");
    }

    #[test]
    fn reads_an_unreadable_file_as_permission_denied_unless_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        let r = read_flag_file("--ssl-keyfile", &p);
        if current_uid() == 0 {
            // root reads everything; the mapping itself is covered above.
            assert!(r.is_ok());
        } else {
            assert!(matches!(r, Err(FileError::PermissionDenied { .. })));
        }
    }

    #[test]
    fn expands_home() {
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(expand_user(Path::new("~/x")), PathBuf::from(home).join("x"));
        }
        assert_eq!(expand_user(Path::new("/abs")), PathBuf::from("/abs"));
    }
}
