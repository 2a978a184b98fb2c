//! The daemons under test as child processes: started in their own process group, timed from
//! exec to a SERVING health check, sampled from `/proc`, stopped and reaped (also on drop).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use flwr_testkit::process::{Group, Signal};

/// Linux reports CPU times in `USER_HZ` ticks, which is 100 on every architecture it supports.
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc` says about a process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// User plus system CPU time so far, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size now, in bytes.
    pub rss: u64,
    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub peak_rss: u64,
}

/// Reads the CPU time and memory of `pid`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_seconds = (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(ProcSample {
        cpu_seconds,
        rss: kib("VmRSS:"),
        peak_rss: kib("VmHWM:"),
    })
}

/// CPU time and memory of a process and its children (PostgreSQL's server and its backends,
/// which each lead a process group of their own): their own times plus what the parent has
/// reaped from children that ended.
pub fn sample_children(parent: u32) -> Result<ProcSample> {
    let mut total = ProcSample::default();
    let mut found = false;
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(name) = entry.map(|e| e.file_name()) else {
            continue;
        };
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // ppid is field 4, cutime and cstime fields 16 and 17.
        if pid != parent && fields.get(1).and_then(|f| f.parse::<u32>().ok()) != Some(parent) {
            continue;
        }
        let Ok(one) = sample(pid) else {
            continue;
        };
        found = true;
        total.cpu_seconds += one.cpu_seconds;
        total.rss += one.rss;
        total.peak_rss += one.peak_rss;
        if pid == parent {
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            total.cpu_seconds += (ticks(13) + ticks(14)) as f64 / TICKS_PER_SECOND;
        }
    }
    if !found {
        bail!("no process {parent}");
    }
    Ok(total)
}

/// The SuperLink's TLS flags for these files.
pub fn tls_args(cmd: &mut Command, tls: &flwr_testkit::pki::TlsFiles) {
    flwr_testkit::federation::tls_args(cmd, Some(tls));
}

/// A command for [`Daemon::start`], which owns, reaps and logs the child.
#[allow(clippy::disallowed_methods)]
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    Command::new(program)
}

/// Runs `program args` to its end with no output and returns how long it took.
#[allow(clippy::disallowed_methods)]
pub fn time_run(program: &Path, args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", program.display()))?;
    if !status.success() {
        bail!("{} {} failed: {status}", program.display(), args.join(" "));
    }
    Ok(started.elapsed())
}

/// Waits until `log` has a line with `what` and an `address=`, and returns that address.
async fn wait_logged(
    log: &Path,
    what: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(a) = flwr_testkit::federation::find_logged_address(&text, what) {
            return Ok(a);
        }
        alive()?;
        if Instant::now() > deadline {
            bail!("no `{what}` address in the log within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the gRPC health service at `address` answers SERVING.
pub async fn wait_serving(
    address: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let uri = format!("http://{address}");
    loop {
        alive()?;
        if let Ok(endpoint) = tonic::transport::Endpoint::from_shared(uri.clone()) {
            if let Ok(channel) = endpoint.connect().await {
                if let Ok(true) = flwr_transport::health::check(channel).await {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the health service at {address} did not answer SERVING within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until something accepts TCP connections at `address`.
async fn wait_listening(
    address: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        alive()?;
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listened at {address} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Where a daemon's health service is.
#[derive(Clone, Copy, Debug)]
pub enum Health<'a> {
    /// At an address chosen before the start (Flower's daemons).
    At(&'a str),
    /// Wherever the daemon says it bound it, in its log (ours, on port 0).
    Logged,
    /// None: the daemon is ready once it accepts TCP connections at this address (HAProxy).
    Listening(&'a str),
}

/// The line on which our daemons log their health service's bound `address=`.
const HEALTH_LOGGED: &str = "Health service serving";

/// A running daemon.
pub struct Daemon {
    name: String,
    group: Option<Group>,
    log: PathBuf,
    /// From exec to the first SERVING health check.
    pub started_in: Duration,
}

impl Daemon {
    /// Starts `cmd` (output to `log`) and waits until its health service serves.
    pub async fn start(
        name: &str,
        mut cmd: Command,
        health: Health<'_>,
        log: &Path,
    ) -> Result<Daemon> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let mut daemon = Daemon {
            name: name.to_owned(),
            group: Some(Group::adopt(child)),
            log: log.to_owned(),
            started_in: Duration::ZERO,
        };
        let group = daemon.group.as_ref().ok_or_else(|| anyhow!("no child"))?;
        let mut alive = || match group.status() {
            Some(status) => Err(anyhow!("{name} exited ({status}) before serving")),
            None => Ok(()),
        };
        let timeout = Duration::from_secs(120);
        let serving = async {
            let address = match health {
                Health::At(a) => a.to_owned(),
                Health::Logged => wait_logged(log, HEALTH_LOGGED, timeout, &mut alive).await?,
                Health::Listening(a) => return wait_listening(a, timeout, &mut alive).await,
            };
            wait_serving(&address, timeout, &mut alive).await
        }
        .await;
        if let Err(e) = serving {
            bail!(
                "{e:#}; the end of its log ({}):\n{}",
                log.display(),
                tail(log)
            );
        }
        daemon.started_in = started.elapsed();
        Ok(daemon)
    }

    /// The address the daemon logged on the line that contains `what` (ours log every address
    /// they bound).
    pub fn logged_address(&self, what: &str) -> Result<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        flwr_testkit::federation::find_logged_address(&text, what).ok_or_else(|| {
            anyhow!(
                "{} logged no `{what}` address; the end of its log:\n{}",
                self.name,
                tail(&self.log)
            )
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.group.as_ref().map(Group::pid).unwrap_or(0)
    }

    /// CPU time and memory now.
    pub fn sample(&self) -> Result<ProcSample> {
        sample(self.pid()).with_context(|| format!("sampling {}", self.name))
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The end of the log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// SIGTERM to the group, SIGKILL after `grace`, and reap.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(group) = self.group.take() else {
            return;
        };
        group.signal_group(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && group.status().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The leader is gone or overdue: dropping the group kills whatever is left of it (the
        // leader is not reaped before that, so the group id is still its own) and reaps it.
        drop(group);
    }
}

/// The last 20 lines of a log file.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
