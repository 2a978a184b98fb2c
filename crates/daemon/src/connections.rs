//! How many connections a daemon can hold: the open-file limit, raised to its hard maximum at
//! start (as nginx or the Go runtime do), and the connection cap derived from it.

use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// File descriptors kept for everything but client connections (files, databases, children).
const RESERVED_FILES: u64 = 1024;
/// The default cap is never below this...
const MIN_DEFAULT_CONNECTIONS: u64 = 256;
/// ...nor above this.
const MAX_DEFAULT_CONNECTIONS: u64 = 100_000;

/// Flower's heartbeats come at most every 1,800 s; an hour without a request is far beyond that.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Raises the soft open-file limit to the hard one and returns the soft limit in force.
pub fn raise_open_file_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        tracing::debug!(from = soft, to = hard, "raised the open-file limit");
        return hard;
    }
    soft
}

/// The default connection cap per API for an open-file limit.
pub fn default_max_connections(open_files: u64) -> usize {
    let cap = open_files
        .saturating_sub(RESERVED_FILES)
        .clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_follows_the_open_file_limit() {
        assert_eq!(default_max_connections(1024), 256);
        assert_eq!(default_max_connections(65_536), 64_512);
        assert_eq!(default_max_connections(1 << 20), 100_000);
        assert!(raise_open_file_limit() >= 1);
    }
}
