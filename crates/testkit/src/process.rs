//! Child processes owned by a test: killed (with their process group) and reaped on drop.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A running child with its captured output.
pub struct Proc {
    name: String,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// A command whose children land in their own process group.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.process_group(0);
    c
}

impl Proc {
    /// Starts `cmd`, capturing stdout and stderr together.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for pipe in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let buf = output.clone();
            let tag = name.to_owned();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("TEST_ECHO").is_some() {
                        eprintln!("[{tag}] {line}");
                    }
                    let mut b = buf.lock().unwrap();
                    b.push_str(&line);
                    b.push('\n');
                }
            }));
        }
        Proc {
            name: name.to_owned(),
            child: Some(child),
            output,
            readers,
        }
    }

    /// Everything the child printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits until the output contains `needle`, or fails the test after `timeout`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> String {
        self.await_output(needle, timeout)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Waits until the output contains `needle`; on exit or timeout, says which, with the output
    /// (for callers that start again, see [`crate::ports::start_with_fresh_ports`]).
    pub fn await_output(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let out = self.output();
            if out.contains(needle) {
                return Ok(out);
            }
            self.check_alive(&format!("the output {needle:?}"), start, timeout)?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until something accepts TCP connections on `addr`; on exit or timeout, says which,
    /// with the output.
    pub fn await_port(&mut self, addr: &str, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            self.check_alive(&format!("a listener on {addr}"), start, timeout)?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&mut self, what: &str, start: Instant, timeout: Duration) -> Result<(), String> {
        if let Some(status) = self.try_status() {
            await_readers(&self.readers, Duration::from_millis(500));
            return Err(format!(
                "{} exited ({status}) while waiting for {what}; output:\n{}",
                self.name,
                self.output()
            ));
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "{}: still waiting for {what} after {timeout:?}; output:\n{}",
                self.name,
                self.output()
            ));
        }
        Ok(())
    }

    /// The exit status if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the child to exit (fails the test after `timeout`) and returns its status and
    /// full output.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                await_readers(&self.readers, Duration::from_secs(5));
                return (s, self.output());
            }
            if start.elapsed() > timeout {
                let out = self.output();
                panic!("{} still runs after {timeout:?}; output:\n{out}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the child (not its group).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.live_pid() {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// Sends `signal` to the child's whole process group.
    pub fn signal_group(&self, signal: Signal) {
        if let Some(pid) = self.live_pid() {
            let _ = nix::sys::signal::killpg(pid, signal);
        }
    }

    /// The pid while the child has not been reaped (never 0 or 1).
    fn live_pid(&self) -> Option<Pid> {
        let id = self.child.as_ref()?.id();
        let id = i32::try_from(id).ok().filter(|p| *p > 1)?;
        Some(Pid::from_raw(id))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                // The whole group: the child and whatever it started (signals through the
                // system call, never through the `kill` program, whose parsing of negative
                // ids is not to be trusted).
                if let Ok(pid) = i32::try_from(child.id()) {
                    if pid > 1 {
                        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Gives the threads reading a child's pipes up to `limit` to reach the end of its output: a
/// grandchild may hold the pipes open after the child exited, so never wait for them without one.
fn await_readers(readers: &[std::thread::JoinHandle<()>], limit: Duration) {
    let until = Instant::now() + limit;
    while Instant::now() < until && !readers.iter().all(|r| r.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long [`run`] lets a command take: longer than any command of the tests takes on a loaded
/// machine (an image build included), short enough that a hung one fails its test with its output
/// instead of holding up the whole test binary.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Runs a command to completion and returns (status, stdout+stderr); fails the test, with the
/// output so far, if it takes longer than [`RUN_TIMEOUT`].
pub fn run(cmd: &mut Command) -> (ExitStatus, String) {
    run_within(cmd, RUN_TIMEOUT)
}

/// [`run`] with its own time limit. The command runs in a process group of its own, which is
/// killed whole when the time is up. Standard output comes first, then standard error.
pub fn run_within(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String) {
    let name = format!("{cmd:?}");
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let pipes = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ];
    let (texts, readers): (Vec<_>, Vec<_>) = pipes
        .into_iter()
        .map(|mut pipe| {
            let text = Arc::new(Mutex::new(Vec::new()));
            let sink = text.clone();
            let reader = std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    sink.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            (text, reader)
        })
        .unzip();
    let collected = || {
        texts
            .iter()
            .map(|t| String::from_utf8_lossy(&t.lock().unwrap()).into_owned())
            .collect::<String>()
    };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            await_readers(&readers, Duration::from_secs(5));
            return (status, collected());
        }
        if start.elapsed() > timeout {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} still ran after {timeout:?}; output so far:\n{}",
                collected()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when `path` is an executable file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
