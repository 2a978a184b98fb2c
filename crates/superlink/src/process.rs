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
        let out_label = label.clone();
        let pump_out = async move {
            if let Some(s) = stdout {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "serverapp", "[{out_label}] {line}");
                }
            }
        };
        let err_label = label;
        let pump_err = async move {
            if let Some(s) = stderr {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "serverapp", "[{err_label}] {line}");
                }
            }
        };
        let (status, (), ()) = tokio::join!(child.wait(), pump_out, pump_err);
        status
    });
    Ok(Spawned { pid, done })
}

/// Sends `signal` to the process group `pid` leads. Errors (the group is gone) are ignored.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        if p > 0 {
            let _ = killpg(Pid::from_raw(p), signal);
        }
    }
}
