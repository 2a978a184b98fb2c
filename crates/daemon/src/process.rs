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

/// A started child: the right to signal its process group, and its end.
#[derive(Debug)]
pub struct Spawned {
    /// Signals the child's process group.
    pub group: Group,
    /// Resolves with the exit status once the child ended and its output was read.
    pub done: tokio::task::JoinHandle<std::io::Result<ExitStatus>>,
}

/// The right to signal a child's process group (cheap to clone). The signal goes through the
/// task that reaps the child, which sends it only while the child is not reaped: once reaped,
/// its pid (the group's id) may name another process, and signals go nowhere.
#[derive(Clone, Debug)]
pub struct Group {
    pid: u32,
    signals: tokio::sync::mpsc::UnboundedSender<Signal>,
}

impl Group {
    /// The child's pid, which is also its process group id (for logs).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the group, unless the child was reaped already.
    pub fn signal(&self, signal: Signal) {
        let _ = self.signals.send(signal);
    }
}

/// Starts `cmd` in a new process group. Each output line is logged with `label`. The returned
/// task owns the child and reaps it; aborting it kills the child (not its group: signal the
/// [`Group`] first). Dropping the [`Spawned`] leaves the child running, still reaped.
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
    let (signals, mut requests) = tokio::sync::mpsc::unbounded_channel::<Signal>();
    let done = tokio::spawn(async move {
        let reaped = async {
            loop {
                tokio::select! {
                    // The wait first: a child that has ended is reaped before any signal, and
                    // then no signal is sent any more.
                    biased;
                    status = child.wait() => break status,
                    Some(signal) = requests.recv() => {
                        if let Ok(p) = i32::try_from(pid) {
                            if p > 0 {
                                let _ = killpg(Pid::from_raw(p), signal);
                            }
                        }
                    }
                }
            }
        };
        let (status, (), ()) = tokio::join!(reaped, pump(stdout, &label), pump(stderr, &label));
        status
    });
    Ok(Spawned {
        group: Group { pid, signals },
        done,
    })
}

/// Starts `cmd` in a new process group with its stdin, stdout and stderr piped to the caller,
/// which talks to it, owns it and reaps it (`wait`); it is killed when the returned handle is
/// dropped unreaped.
pub fn spawn_piped(cmd: &CommandLine) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new(&cmd.program)
        .args(&cmd.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

/// A process another process of ours started and reaps (the SuperNode's ClientApp fork
/// launcher): `signals` go to that reaper, which sends them only while the process is not reaped;
/// `done` resolves with its exit status.
pub fn relayed(
    pid: u32,
    signals: tokio::sync::mpsc::UnboundedSender<Signal>,
    done: tokio::task::JoinHandle<std::io::Result<ExitStatus>>,
) -> Spawned {
    Spawned {
        group: Group { pid, signals },
        done,
    }
}

/// Logs every line of a child's output stream until it closes.
pub async fn pump(stream: Option<impl tokio::io::AsyncRead + Unpin>, label: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A group is signalled while its child lives (the whole group: the child's own child too),
    /// and never once the child was reaped.
    #[tokio::test]
    async fn signals_reach_the_group_until_the_child_is_reaped() {
        let cmd = CommandLine {
            program: "sh".into(),
            args: vec!["-c".into(), "sleep 30 & wait".into()],
        };
        let spawned = spawn(&cmd, "test".into()).unwrap();
        let group = spawned.group.clone();
        group.signal(Signal::SIGTERM);
        let status = tokio::time::timeout(std::time::Duration::from_secs(20), spawned.done)
            .await
            .expect("the group ended")
            .unwrap()
            .unwrap();
        assert!(!status.success());
        // Reaped: the task that could signal is gone, and with it the way to the pid.
        assert!(group.signals.is_closed());
        group.signal(Signal::SIGKILL);
    }

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[92mINFO \u{1b}[0m:      Start"),
            "INFO :      Start"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
