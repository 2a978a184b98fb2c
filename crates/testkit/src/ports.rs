//! Ports for children that must be told their port before they start (Flower's Python daemons,
//! Docker's published ports, the `flwr` CLI's local SuperLink). Our own daemons never need this:
//! they bind port 0 and log the address they bound.
//!
//! Binding port 0, closing it and handing the number to a child races with everything else on the
//! machine: a parallel test can bind the same number, and any outgoing connection can take it as
//! its ephemeral source port. So [`reserve`]:
//! - picks from 20000–32767, below Linux's default ephemeral range (32768–60999), where no
//!   outgoing connection lands;
//! - never hands out the same port twice in one process;
//! - holds an advisory lock (`flock`) on `<tmp>/flwr-test-ports/<port>` for the life of the
//!   process, so that parallel test processes on the machine never share a port either;
//! - checks that the port can be bound right now.
//!
//! What is left (a foreign program taking the port in the meantime) is handled by
//! [`start_with_fresh_ports`], which starts again on new ports when the child says the address is
//! in use.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

/// First port handed out (inclusive).
const LOW: u16 = 20000;
/// Last port handed out (inclusive): just below the ephemeral range.
const HIGH: u16 = 32767;
/// How many times [`start_with_fresh_ports`] starts a child before it gives up.
pub const START_ATTEMPTS: usize = 5;

struct Reserved {
    ports: HashSet<u16>,
    // Kept open for the life of the process: closing a file releases its lock.
    locks: Vec<File>,
    next: u16,
}

static RESERVED: Mutex<Option<Reserved>> = Mutex::new(None);

fn lock_dir() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join("flwr-test-ports");
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).ok()?;
        // Shared by every user who runs tests here, like /tmp itself.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    Some(dir)
}

/// Takes the machine-wide lock of `port`, or `None` when another process holds it. Without a
/// usable lock directory the in-process set and the bind check still apply.
fn lock(port: u16) -> Option<Option<File>> {
    let Some(dir) = lock_dir() else {
        return Some(None);
    };
    let path = dir.join(port.to_string());
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        // Made by another user: a read-only handle can hold the lock too.
        .or_else(|_| File::open(&path));
    let Ok(file) = file else {
        return Some(None);
    };
    match file.try_lock() {
        Ok(()) => Some(Some(file)),
        Err(_) => None,
    }
}

fn bindable(port: u16) -> bool {
    // Both the loopback and the wildcard address: Docker publishes on either.
    TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A port on 127.0.0.1 that no other caller of this function, in this process or in another
/// process on this machine, gets while this process lives, and that nothing listens on now.
pub fn reserve() -> u16 {
    let mut guard = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    let state = guard.get_or_insert_with(|| {
        // Spread parallel processes over the range so that they rarely probe the same ports.
        let span = u32::from(HIGH - LOW) + 1;
        let seed = std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        Reserved {
            ports: HashSet::new(),
            locks: Vec::new(),
            next: LOW + (seed % span) as u16,
        }
    });
    for _ in LOW..=HIGH {
        let port = state.next;
        state.next = if port == HIGH { LOW } else { port + 1 };
        if state.ports.contains(&port) {
            continue;
        }
        let Some(lock) = lock(port) else {
            continue;
        };
        if !bindable(port) {
            continue;
        }
        state.ports.insert(port);
        state.locks.extend(lock);
        return port;
    }
    panic!("no free port left in {LOW}-{HIGH} on this machine");
}

/// `127.0.0.1:<port>` with a [`reserve`]d port.
pub fn reserve_address() -> String {
    format!("127.0.0.1:{}", reserve())
}

/// True when a child's output says that it could not listen because the address is taken
/// (Flower's Python daemons, gRPC core, Docker, ours). Narrow on purpose: Flower also says
/// "Public key already in use", which is no reason to start again.
pub fn says_address_in_use(output: &str) -> bool {
    let lower = output.to_lowercase();
    [
        // strerror(EADDRINUSE): ours, Python, Docker's proxy.
        "address already in use",
        // Flower's check before it binds: "Port in server address H:P is already in use."
        "port in server address",
        // Docker, when another container publishes the port.
        "port is already allocated",
        // gRPC core.
        "failed to bind",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// Starts something that needs `count` ports chosen in advance: calls `start` with fresh
/// [`reserve`]d ports, which returns what it started or what the child printed; when that because an address is in use (see
/// [`says_address_in_use`]), starts it again on new ports, up to [`START_ATTEMPTS`] times, saying
/// so on standard error. Any other failure, or the last one, fails the test with the output.
pub fn start_with_fresh_ports<T>(
    what: &str,
    count: usize,
    mut start: impl FnMut(&[u16]) -> Result<T, String>,
) -> T {
    for attempt in 1..=START_ATTEMPTS {
        let ports: Vec<u16> = (0..count).map(|_| reserve()).collect();
        match start(&ports) {
            Ok(started) => return started,
            Err(output) if attempt < START_ATTEMPTS && says_address_in_use(&output) => {
                eprintln!(
                    "{what}: an address among ports {ports:?} was in use (attempt {attempt} of \
                     {START_ATTEMPTS}); starting again on new ports"
                );
            }
            Err(output) => panic!(
                "{what} did not start (attempt {attempt} of {START_ATTEMPTS}, ports {ports:?}):\n\
                 {output}"
            ),
        }
    }
    unreachable!("the last attempt returns or panics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_the_same_port_twice_and_each_one_bindable() {
        let ports: Vec<u16> = (0..200).map(|_| reserve()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        for p in ports {
            assert!((LOW..=HIGH).contains(&p));
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
        }
    }

    #[test]
    fn another_process_holding_the_lock_keeps_the_port_away() {
        // A lock taken through another open file description (as another process would) is
        // respected.
        let port = reserve();
        assert!(lock(port).is_none(), "the port's lock is held");
    }

    #[test]
    fn a_start_that_reports_address_in_use_is_retried_on_new_ports() {
        let mut seen = Vec::new();
        let got = start_with_fresh_ports("child", 2, |ports| {
            seen.push(ports.to_vec());
            if seen.len() < 3 {
                Err("Port in server address 127.0.0.1:1 is already in use.".into())
            } else {
                Ok(ports[0])
            }
        });
        assert_eq!(seen.len(), 3);
        assert_eq!(got, seen[2][0]);
        let all: HashSet<u16> = seen.iter().flatten().copied().collect();
        assert_eq!(all.len(), 6, "every attempt gets new ports");
    }

    #[test]
    fn what_counts_as_address_in_use() {
        for yes in [
            "Port in server address 127.0.0.1:37197 is already in use.",
            "cannot listen on `--fleet-api-address` 127.0.0.1:1: Address already in use (os error 98)",
            "Bind for 127.0.0.1:9093 failed: port is already allocated",
            "E0000 Failed to bind to address 127.0.0.1:1",
        ] {
            assert!(says_address_in_use(yes), "{yes}");
        }
        assert!(!says_address_in_use(
            "ValueError: Public key already in use"
        ));
    }

    #[test]
    #[should_panic(expected = "did not start")]
    fn another_failure_is_not_retried() {
        let mut calls = 0;
        start_with_fresh_ports("child", 1, |_| -> Result<(), String> {
            calls += 1;
            assert_eq!(calls, 1);
            Err("ValueError: Public key already in use".into())
        });
    }
}
