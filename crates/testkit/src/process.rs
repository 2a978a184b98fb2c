//! Child processes owned by a test (or by the benchmark): killed (with their process group) and
//! reaped on drop, through one handle, [`Group`].

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A child that leads a process group of its own, owned. Its exit is observed without reaping it
/// (`waitid` with `WNOWAIT`), so its pid, which is also the group's id, stays its own until the
/// handle is dropped: a signal to the group can never reach another process that got the pid
/// again, and members that outlive the child can still be killed. Dropping the handle kills the
/// whole group and reaps the child.
pub struct Group {
    pid: Pid,
    child: Mutex<Child>,
    ended: Mutex<Option<ExitStatus>>,
}

impl Group {
    /// Takes ownership of `child`, which must lead its own process group (started from
    /// [`command`], or with `process_group(0)`).
    pub fn adopt(child: Child) -> Group {
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        Group {
            pid,
            child: Mutex::new(child),
            ended: Mutex::new(None),
        }
    }

    /// The child's pid (the group's id).
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// The exit status once the child has ended (it stays unreaped until the drop).
    pub fn status(&self) -> Option<ExitStatus> {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        use std::os::unix::process::ExitStatusExt;
        let mut ended = self.ended.lock().unwrap();
        if ended.is_none() {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            *ended = match waitid(Id::Pid(self.pid), flags) {
                Ok(WaitStatus::Exited(_, code)) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
                Ok(WaitStatus::Signaled(_, signal, core)) => Some(ExitStatus::from_raw(
                    signal as i32 | if core { 0x80 } else { 0 },
                )),
                _ => None,
            };
        }
        *ended
    }

    /// Sends `signal` to the child alone.
    pub fn signal(&self, signal: Signal) {
        let _ = nix::sys::signal::kill(self.pid, signal);
    }

    /// Sends `signal` to the whole group (through the system call, never through the `kill`
    /// program, whose parsing of negative ids is not to be trusted).
    pub fn signal_group(&self, signal: Signal) {
        let _ = nix::sys::signal::killpg(self.pid, signal);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The child is not reaped yet, so the group id is still its own.
        self.signal_group(Signal::SIGKILL);
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A running child with its captured output.
pub struct Proc {
    name: String,
    group: Group,
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
            group: Group::adopt(child),
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
        self.group.pid()
    }

    /// Waits until the output contains `needle`, or fails the test after `timeout`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> String {
        self.await_output(needle, timeout)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Waits until the output contains `needle` at least `count` times, or fails the test after
    /// `timeout` (a line that repeats: one per node that joined, one per reload).
    pub fn wait_for_output_count(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> String {
        self.await_output_count(needle, count, timeout)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Waits until the output contains `needle`; on exit or timeout, says which, with the output
    /// (for callers that start again, see [`crate::ports::start_with_fresh_ports`]).
    pub fn await_output(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.await_output_count(needle, 1, timeout)
    }

    fn await_output_count(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        let start = Instant::now();
        let what = match count {
            1 => format!("the output {needle:?}"),
            _ => format!("the output {needle:?} {count} times"),
        };
        loop {
            let out = self.output();
            if out.matches(needle).count() >= count {
                return Ok(out);
            }
            self.check_alive(&what, start, timeout)?;
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
        self.group.status()
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

    /// Sends `signal` within microseconds of `needle` appearing in the output (spinning, not
    /// sleeping between looks as [`Proc::wait_for_output`] does), for tests of what a signal does
    /// at an early moment of the child's start. Panics with the output after `timeout`.
    pub fn signal_at_output(&mut self, needle: &str, signal: Signal, timeout: Duration) {
        let start = Instant::now();
        while !self.output.lock().unwrap().contains(needle) {
            if start.elapsed() > timeout {
                panic!(
                    "{}: no {needle:?} after {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::hint::spin_loop();
        }
        self.signal(signal);
    }

    /// Sends `signal` to the child (not its group).
    pub fn signal(&self, signal: Signal) {
        self.group.signal(signal);
    }

    /// Sends `signal` to the child's whole process group.
    pub fn signal_group(&self, signal: Signal) {
        self.group.signal_group(signal);
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
    let group = Group::adopt(child);
    let start = Instant::now();
    loop {
        if let Some(status) = group.status() {
            await_readers(&readers, Duration::from_secs(5));
            return (status, collected());
        }
        if start.elapsed() > timeout {
            drop(group);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The state letter of a process in `/proc` (`None` once it is gone).
    fn state_of(pid: Pid) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A leader that exits before a member of its group: its end is seen without reaping it (its
    /// pid, the group's id, stays taken), and the drop kills the member that outlived it.
    #[test]
    fn a_group_outlived_by_a_member_is_killed_whole_on_drop() {
        let mut cmd = command("sh");
        cmd.args(["-c", "sleep 60 >/dev/null & echo $!"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let member = Pid::from_raw(line.trim().parse().unwrap());
        let group = Group::adopt(child);
        let leader = Pid::from_raw(group.pid() as i32);
        eventually("the leader's end is seen", || group.status().is_some());
        assert!(group.status().unwrap().success());
        assert_eq!(state_of(leader), Some('Z'), "seen, not reaped");
        // Alive in any state: a process just started may still be in uninterruptible sleep
        // (D) while its program loads on a busy machine.
        assert!(
            matches!(state_of(member), Some(s) if s != 'Z' && s != 'X'),
            "the member lives on: {:?}",
            state_of(member)
        );
        drop(group);
        assert_eq!(state_of(leader), None, "reaped");
        eventually("the member is killed", || {
            matches!(state_of(member), None | Some('Z'))
        });
    }
}
