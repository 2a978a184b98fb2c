//! The ClientApp fork launcher (`--clientapp-launch fork`, the default with `--isolation
//! subprocess`): a Python process that has imported `flwr` (and numpy) once forks one fresh child
//! per message, which then does exactly what `flwr-clientapp --token ...` does. Every message
//! still runs in a process of its own that keeps nothing from earlier messages (Flower's rule);
//! only the import time is gone.
//!
//! The launcher (the "zygote") is started on the first launch with the interpreter of the
//! `flwr-clientapp` script on `PATH`, and again after it dies. It has no thread and no gRPC
//! channel when it forks (the ClientApp opens its own after the fork). Its stdin and stdout carry
//! one command or event per line:
//! - `fork <id> <json args>` → `started <id> <pid>`: a child running `flwr-clientapp <args>`, in
//!   a process group of its own (set by both, as a shell does, so no signal finds it outside);
//! - `signal <pid> <signo>`: sent to the child's group, only while the launcher has not reaped it;
//! - `exited <pid> <wait status>`: the child ended and was reaped.
//!
//! What the children print goes to the launcher's stderr, which the SuperNode logs.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flwr_daemon::process::{self, Spawned};
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// The launcher's program, run with `python -c`.
const ZYGOTE: &str = r#"
import json, os, selectors, signal, sys, traceback
try:
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    import flwr.supernode.runtime.run_clientapp  # noqa: F401
    try:
        import numpy  # noqa: F401
    except ImportError:
        pass
except BaseException as e:
    print("failed " + repr(e).replace("\n", " "), flush=True)
    sys.exit(1)
out = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
out.write("ready\n")
children = set()
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ)
buf = b""
def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        out.write("exited %d %d\n" % (pid, status))
def child(args):
    code = 1
    try:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        sys.argv = ["flwr-clientapp"] + args
        try:
            flwr_clientapp()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
while True:
    ready = sel.select(timeout=0.05)
    reap()
    if not ready:
        continue
    data = os.read(0, 65536)
    if not data:
        break
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        cmd, _, rest = line.decode().partition(" ")
        if cmd == "fork":
            rid, _, args = rest.partition(" ")
            args = json.loads(args)
            pid = os.fork()
            if pid == 0:
                sel.close()
                out.close()
                child(args)
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass
            children.add(pid)
            out.write("started %s %d\n" % (rid, pid))
        elif cmd == "signal":
            pid, signo = (int(x) for x in rest.split())
            if pid in children:
                try:
                    os.killpg(pid, signo)
                except OSError:
                    pass
"#;

/// How long the launcher may take to import `flwr` before the launch falls back to a plain
/// `flwr-clientapp` process.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fork may take to be reported.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fork did not happen (the caller then starts `flwr-clientapp` itself).
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// No `flwr-clientapp` script on `PATH` whose interpreter could be read.
    #[error("no Python interpreter found for {0} (its first line must name one)")]
    NoInterpreter(String),
    /// The launcher could not be started or stopped answering.
    #[error("the ClientApp launcher is not available: {0}")]
    Launcher(String),
}

/// Starts ClientApp processes by forking a Python process that has imported `flwr` already.
pub struct Forker {
    /// `flwr-clientapp`, as configured (looked up on `PATH`).
    program: OsString,
    zygote: Mutex<Option<Arc<Zygote>>>,
    ids: AtomicU64,
}

/// A forked child: its pid, and its wait status once the launcher has reaped it.
type Forked = (u32, oneshot::Receiver<i32>);

/// One running launcher.
struct Zygote {
    /// Lines to write to its stdin.
    commands: mpsc::UnboundedSender<String>,
    /// Forks asked for, by request id.
    started: Arc<Mutex<HashMap<u64, oneshot::Sender<Forked>>>>,
    /// Owns the launcher process; ends when it does.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // The task owns the child, which is killed when the task is dropped.
        self.task.abort();
    }
}

impl Forker {
    /// A launcher for `program` (started on the first [`Forker::launch`]).
    pub fn new(program: OsString) -> Self {
        Self {
            program,
            zygote: Mutex::new(None),
            ids: AtomicU64::new(0),
        }
    }

    /// Forks a ClientApp running `flwr-clientapp <args>`.
    pub async fn launch(&self, args: &[OsString]) -> Result<Spawned, ForkError> {
        let zygote = self.zygote().await?;
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let json = serde_json::to_string(&args).map_err(|e| ForkError::Launcher(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        zygote.started.lock().insert(id, tx);
        let lost = || {
            // The launcher is gone: the next launch starts another.
            self.zygote.lock().take();
            ForkError::Launcher("it exited".into())
        };
        if zygote.commands.send(format!("fork {id} {json}")).is_err() {
            return Err(lost());
        }
        let (pid, exit) = match tokio::time::timeout(FORK_TIMEOUT, rx).await {
            Ok(Ok(started)) => started,
            Ok(Err(_)) => return Err(lost()),
            Err(_) => {
                zygote.started.lock().remove(&id);
                self.zygote.lock().take();
                return Err(ForkError::Launcher(
                    "a fork was not reported in time".into(),
                ));
            }
        };
        // Signals for the child go through the launcher, which sends them only before it has
        // reaped the child.
        let (signals, mut requests) = mpsc::unbounded_channel::<Signal>();
        let commands = zygote.commands.clone();
        let done = tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            tokio::pin!(exit);
            loop {
                tokio::select! {
                    biased;
                    status = &mut exit => {
                        return status
                            .map(ExitStatus::from_raw)
                            .map_err(|_| std::io::Error::other("the ClientApp launcher exited"));
                    }
                    Some(signal) = requests.recv() => {
                        let _ = commands.send(format!("signal {pid} {}", signal as i32));
                    }
                }
            }
        });
        Ok(process::relayed(pid, signals, done))
    }

    /// The running launcher, started if there is none (or it died).
    async fn zygote(&self) -> Result<Arc<Zygote>, ForkError> {
        if let Some(z) = self.zygote.lock().as_ref() {
            if !z.task.is_finished() {
                return Ok(z.clone());
            }
        }
        let python = interpreter(&self.program)?;
        let z = Arc::new(start(&python).await?);
        *self.zygote.lock() = Some(z.clone());
        Ok(z)
    }
}

/// Starts the launcher with `python` and waits until it has imported `flwr`.
async fn start(python: &[OsString]) -> Result<Zygote, ForkError> {
    let Some((program, args)) = python.split_first() else {
        return Err(ForkError::Launcher("no interpreter".into()));
    };
    let mut args = args.to_vec();
    args.extend(["-c".into(), ZYGOTE.into()]);
    let cmd = process::CommandLine {
        program: program.clone(),
        args,
    };
    let mut child = process::spawn_piped(&cmd)
        .map_err(|e| ForkError::Launcher(format!("{}: {e}", program.to_string_lossy())))?;
    let (Some(mut stdin), Some(stdout), stderr) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ForkError::Launcher("no pipes".into()));
    };
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
    match first {
        Ok(Ok(Some(l))) if l == "ready" => {}
        Ok(Ok(Some(l))) => return Err(ForkError::Launcher(l)),
        Ok(_) => return Err(ForkError::Launcher("it exited at start".into())),
        Err(_) => return Err(ForkError::Launcher("it did not start in time".into())),
    }
    tracing::info!(
        pid = child.id(),
        "ClientApp launcher ready (flwr imported once; one fresh process per message)"
    );
    let (commands, mut to_write) = mpsc::unbounded_channel::<String>();
    let started: Arc<Mutex<HashMap<u64, oneshot::Sender<Forked>>>> = Arc::default();
    // One stream for every child, whatever its run (each ClientApp logs its run itself).
    let label = "clientapp (forked)";
    let task = tokio::spawn({
        let started = started.clone();
        async move {
            let mut exits: HashMap<u32, oneshot::Sender<i32>> = HashMap::new();
            let events = async {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut words = line.split(' ');
                    match (words.next(), words.next(), words.next()) {
                        (Some("started"), Some(id), Some(pid)) => {
                            let (Ok(id), Ok(pid)) = (id.parse::<u64>(), pid.parse::<u32>()) else {
                                continue;
                            };
                            let (tx, rx) = oneshot::channel();
                            exits.insert(pid, tx);
                            if let Some(waiter) = started.lock().remove(&id) {
                                let _ = waiter.send((pid, rx));
                            }
                        }
                        (Some("exited"), Some(pid), Some(status)) => {
                            if let (Ok(pid), Ok(status)) = (pid.parse::<u32>(), status.parse()) {
                                if let Some(tx) = exits.remove(&pid) {
                                    let _ = tx.send(status);
                                }
                            }
                        }
                        _ => tracing::debug!("ClientApp launcher: {line}"),
                    }
                }
            };
            let writes = async {
                while let Some(line) = to_write.recv().await {
                    if stdin
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                        || stdin.flush().await.is_err()
                    {
                        break;
                    }
                }
                std::future::pending::<()>().await
            };
            // What the children print comes through the launcher's stderr all along.
            let serve = async {
                tokio::select! {
                    () = events => {}
                    () = writes => {}
                }
            };
            let ((), ()) = tokio::join!(serve, process::pump(stderr, label));
            // The launcher closed its stdout and every child its stderr: reap it.
            let _ = child.wait().await;
            tracing::warn!("the ClientApp launcher exited; the next message starts another");
        }
    });
    Ok(Zygote {
        commands,
        started,
        task,
    })
}

/// The interpreter (and its arguments) of the `program` script, from its first line.
fn interpreter(program: &std::ffi::OsStr) -> Result<Vec<OsString>, ForkError> {
    let name = program.to_string_lossy().into_owned();
    let path =
        find_on_path(Path::new(program)).ok_or_else(|| ForkError::NoInterpreter(name.clone()))?;
    let head = std::fs::read(&path).map_err(|_| ForkError::NoInterpreter(name.clone()))?;
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(first).map_err(|_| ForkError::NoInterpreter(name.clone()))?;
    let words: Vec<OsString> = line
        .strip_prefix("#!")
        .ok_or_else(|| ForkError::NoInterpreter(name.clone()))?
        .split_whitespace()
        .map(OsString::from)
        .collect();
    if words.is_empty() {
        return Err(ForkError::NoInterpreter(name));
    }
    Ok(words)
}

fn find_on_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
