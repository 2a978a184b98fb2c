//! Child processes, in one place: each child runs in its own process group, its output becomes
//! tracing events, and it is killed (with everything it started) and reaped by its owner.

#![allow(clippy::disallowed_methods)]

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A command to start: the program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// Program (looked up on `PATH` when it has no `/`).
    pub program: OsString,
    /// Arguments.
    pub args: Vec<OsString>,
}

/// A started child whose process group can be signalled.
#[derive(Debug)]
pub struct Spawned {
    /// The child's pid, which is also its process group id.
    pub pid: u32,
    /// Resolves with the exit status once the child ended and its output was read.
    pub done: tokio::task::JoinHandle<std::io::Result<ExitStatus>>,
}

/// Starts `cmd` in a new process group. Each output line is logged with `label`. The returned
/// task owns the child: dropping or aborting it kills the child (not its group: use
/// [`signal_group`] first).
pub fn spawn(cmd: &CommandLine, label: String) -> std::io::Result<Spawned> {
    let mut c = tokio::process::Command::new(&cmd.program);
    c.args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = c.spawn()?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let done = tokio::spawn(async move {
        let (status, (), ()) =
            tokio::join!(child.wait(), pump(stdout, &label), pump(stderr, &label));
        status
    });
    Ok(Spawned { pid, done })
}

/// Logs every line of a child's output stream until it closes.
async fn pump(stream: Option<impl tokio::io::AsyncRead + Unpin>, label: &str) {
    if let Some(s) = stream {
        let mut lines = BufReader::new(s).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "app", "[{label}] {}", strip_ansi(&line));
        }
    }
}

/// Removes terminal colour sequences (`ESC [ ... letter`), which Flower's apps print.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends `signal` to the process group `pid` leads. Errors (the group is gone) are ignored.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        if p > 0 {
            let _ = killpg(Pid::from_raw(p), signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[92mINFO \u{1b}[0m:      Start"),
            "INFO :      Start"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
