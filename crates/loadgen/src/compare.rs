//! The side-by-side comparison: our daemons and Flower 1.28.0's, started in turn with the same
//! flags (TLS on, `--isolation process`, in-memory state, then SQLite), driven by the same
//! workloads, sampled from `/proc`, and reported as one table (and JSON) with both figures and
//! how many times better ours is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use flwr_testkit::pki::{self, TlsFiles};

use crate::daemon::{self, Daemon, Health};
use crate::echo;
use crate::ha::{self, Deployment};
use crate::sim::{Driver, Round};
use crate::workload::{FanOut, FanOutSession, IdleFleet, Target};

const MIB: f64 = 1024.0 * 1024.0;

/// Which implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Flower 1.28.0's Python daemons.
    Flower,
    /// Ours.
    Ours,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::Flower => "flower",
            Flavor::Ours => "ours",
        }
    }
}

/// The SuperLink's state engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// `--database :flwr-in-memory:` (the default).
    Memory,
    /// `--database <file>`.
    Sqlite,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Memory => "in-memory",
            Engine::Sqlite => "SQLite",
        }
    }
}

/// The programs under test.
#[derive(Clone, Debug)]
pub struct Programs {
    /// Our `superlink`.
    pub superlink: PathBuf,
    /// Our `supernode`.
    pub supernode: PathBuf,
    /// `flwr-bench` itself (it serves the echo ceiling).
    pub bench: PathBuf,
    /// The `bin` directory of a venv with `flwr==1.28.0`.
    pub venv_bin: PathBuf,
}

impl Programs {
    /// Checks that every program exists, saying how to get it when one does not.
    pub fn check(&self) -> Result<()> {
        for (p, fix) in [
            (
                &self.superlink,
                "build it with `cargo build --release --bins` or pass --superlink",
            ),
            (
                &self.supernode,
                "build it with `cargo build --release --bins` or pass --supernode",
            ),
            (&self.bench, "build it with `cargo build --release --bins`"),
        ] {
            if !p.is_file() {
                bail!("{} is missing: {fix}", p.display());
            }
        }
        for tool in ["flower-superlink", "flower-supernode", "flwr-clientapp"] {
            let p = self.venv_bin.join(tool);
            if !p.is_file() {
                bail!(
                    "{} is missing: make the venv with `scripts/python-env.sh` (flwr==1.28.0) or pass --venv",
                    p.display()
                );
            }
        }
        Ok(())
    }
}

/// Sizes of the workloads.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Fan-out (nodes, payload bytes) on the in-memory engine.
    pub fanout: Vec<(usize, usize)>,
    /// Fan-out (nodes, payload bytes) on the SQLite engine.
    pub fanout_sqlite: Vec<(usize, usize)>,
    /// Fan-out (nodes, payload bytes) on PostgreSQL through HAProxy (ours only).
    pub fanout_postgres: Vec<(usize, usize)>,
    /// Replica counts of the PostgreSQL rows.
    pub replicas: Vec<usize>,
    /// Idle fleet sizes spread over the most replicas (ours only).
    pub idle_postgres: Vec<usize>,
    /// Rounds per fan-out.
    pub rounds: u32,
    /// Idle fleet sizes.
    pub idle: Vec<usize>,
    /// How long an idle fleet is measured.
    pub idle_time: Duration,
    /// Heartbeat interval of the idle fleet (seconds).
    pub idle_interval: f64,
    /// Starts per daemon for the start-up figures (the median is reported).
    pub starts: usize,
    /// Instructions sent to each SuperNode.
    pub supernode_rounds: u32,
    /// Rounds of the example app in the whole-federation row (`flwr run`, 0: no such row).
    pub federation_rounds: u32,
    /// Runs of each kind in the whole-federation row (the median is reported).
    pub federation_runs: u32,
    /// A fan-out's rounds (or an idle fleet's joining) that take longer than this fail.
    pub row_timeout: Duration,
    /// The in-memory fan-out (nodes, payload bytes) of the spill section's alternated runs:
    /// ours with files, with every object in memory, keeping freed memory, and the echo.
    pub spill: Option<(usize, usize)>,
    /// Runs of each kind in the spill rows (the median is reported).
    pub spill_runs: usize,
    /// The in-memory fan-out (nodes, payload bytes) run once more with our SuperLink keeping
    /// the memory it frees ([`KEEP_FREED_MEMORY`]): what the allocator's default costs there.
    pub keep_freed: Option<(usize, usize)>,
}

const KB: usize = 1000;
const MB: usize = 1000 * 1000;

impl Plan {
    /// The workloads of the issue: fan-out N ∈ {10, 100, 1000} with 1 KB and 1 MB, 50 MB with
    /// N = 10, 5 rounds; SQLite with 1 KB (N up to 1,000) and 1 MB (N = 100 and 1,000); idle
    /// fleets of 1,000 and 10,000 nodes for 60 s.
    pub fn full() -> Plan {
        Plan {
            fanout: vec![
                (10, KB),
                (100, KB),
                (1000, KB),
                (10, MB),
                (100, MB),
                (1000, MB),
                (10, 50 * MB),
            ],
            fanout_sqlite: vec![
                (10, KB),
                (100, KB),
                (1000, KB),
                (100, MB),
                (1000, MB),
                (10, 50 * MB),
            ],
            fanout_postgres: vec![(100, KB), (1000, KB), (100, MB), (1000, MB)],
            replicas: vec![1, 3],
            idle_postgres: vec![10_000],
            rounds: 5,
            idle: vec![1000, 10_000],
            idle_time: Duration::from_secs(60),
            idle_interval: 10.0,
            starts: 5,
            supernode_rounds: 5,
            federation_rounds: 3,
            federation_runs: 3,
            row_timeout: Duration::from_secs(180),
            spill: Some((10, 50 * MB)),
            spill_runs: 3,
            keep_freed: Some((10, 50 * MB)),
        }
    }

    /// Tiny sizes that exercise every code path in about a minute (the test suite runs this).
    pub fn smoke() -> Plan {
        Plan {
            fanout: vec![(3, KB), (2, MB)],
            fanout_sqlite: vec![(3, KB)],
            fanout_postgres: vec![(3, KB)],
            replicas: vec![1, 3],
            idle_postgres: vec![20],
            rounds: 2,
            idle: vec![20],
            idle_time: Duration::from_secs(3),
            idle_interval: 10.0,
            starts: 1,
            supernode_rounds: 1,
            federation_rounds: 1,
            federation_runs: 1,
            row_timeout: Duration::from_secs(120),
            spill: Some((2, MB)),
            spill_runs: 1,
            keep_freed: Some((2, MB)),
        }
    }
}

/// Which parts run.
#[derive(Clone, Copy, Debug)]
pub struct Sections {
    /// Fan-out rounds on the in-memory engine (and the echo ceiling).
    pub fanout: bool,
    /// Alternated 50 MB runs: what the spill files cost, and ours against the echo ceiling.
    pub spill: bool,
    /// Fan-out rounds on SQLite.
    pub sqlite: bool,
    /// Idle fleets.
    pub idle: bool,
    /// Start-up time and idle memory.
    pub startup: bool,
    /// SuperNodes under one SuperLink.
    pub supernode: bool,
    /// A whole federation, Flower's daemons against ours.
    pub federation: bool,
    /// Our replicas on PostgreSQL behind HAProxy.
    pub postgres: bool,
}

/// Which way is better for a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// More is better (throughput).
    Higher,
    /// Less is better (latency, CPU, memory).
    Lower,
    /// A count to read, not to compare.
    Neither,
}

/// One implementation's figure: a value, maybe with a remark, or why there is none.
#[derive(Clone, Debug, Default)]
pub struct Figure {
    /// The value.
    pub value: Option<f64>,
    /// A remark ("3 of 5 rounds") or, without a value, the failure.
    pub note: Option<String>,
}

impl Figure {
    fn of(value: f64) -> Figure {
        Figure {
            value: Some(value),
            note: None,
        }
    }

    fn failed(why: impl Into<String>) -> Figure {
        Figure {
            value: None,
            note: Some(why.into()),
        }
    }

    fn with_note(mut self, note: Option<String>) -> Figure {
        self.note = note;
        self
    }

    fn cell(&self) -> String {
        match (self.value, &self.note) {
            (Some(v), None) => fmt_num(v),
            (Some(v), Some(n)) => format!("{} ({n})", fmt_num(v)),
            (None, Some(n)) => format!("failed: {n}"),
            (None, None) => "—".into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "value": self.value, "note": self.note })
    }
}

/// A row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// The workload ("fan-out 1 KB, N=100, in-memory").
    pub workload: String,
    /// The metric with its unit ("msg/s").
    pub metric: String,
    /// Which way is better.
    pub better: Better,
    /// Flower 1.28.0's figure.
    pub flower: Figure,
    /// Ours.
    pub ours: Figure,
    /// For ceiling rows: ours as a share of this (the bare echo service).
    pub ceiling: Option<f64>,
}

impl Row {
    /// How many times better ours is (None when it cannot be said).
    pub fn better_by(&self) -> Option<f64> {
        let (Some(f), Some(o)) = (self.flower.value, self.ours.value) else {
            return None;
        };
        match self.better {
            Better::Higher if f > 0.0 => Some(o / f),
            Better::Lower if o > 0.0 => Some(f / o),
            _ => None,
        }
    }

    /// A reference row whose figure is a floor (lower is better), not a ceiling.
    fn is_floor(&self) -> bool {
        self.ceiling.is_some() && self.better == Better::Lower
    }

    fn verdict(&self) -> String {
        match (self.ceiling, self.ours.value) {
            (Some(c), Some(o)) if self.is_floor() => {
                return if c > 0.0 {
                    format!("ours = {}× the floor", fmt_num(o / c))
                } else {
                    "—".into()
                };
            }
            (Some(c), Some(o)) => return format!("ours = {:.0}% of the ceiling", 100.0 * o / c),
            _ => {}
        }
        match (self.better_by(), self.flower.value, self.ours.value) {
            (Some(x), _, _) if (0.995..1.005).contains(&x) => "same".into(),
            (Some(x), _, _) if x >= 1.0 => format!("{}× better", fmt_num(x)),
            (Some(x), _, _) => format!("{}× worse", fmt_num(1.0 / x)),
            (None, None, Some(_)) if self.flower.note.is_some() => "Flower failed".into(),
            (None, Some(_), None) if self.ours.note.is_some() => "ours failed".into(),
            _ => "—".into(),
        }
    }
}

/// Formats a figure with about three significant digits.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{v:.0}");
        let (sign, digits) = s.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", &s));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_bytes(b: usize) -> String {
    if b >= MB {
        format!("{} MB", b / MB)
    } else {
        format!("{} KB", b / KB)
    }
}

/// The machine the figures come from.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    format!(
        "{cores} cores ({model}), {:.0} GiB RAM, Linux {}",
        mem_kib / 1024.0 / 1024.0,
        kernel()
    )
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A comparison in progress: its scratch directory, TLS files and rows so far.
pub struct Comparison {
    programs: Programs,
    plan: Plan,
    dir: tempfile::TempDir,
    tls: TlsFiles,
    client_tls: Arc<rustls::ClientConfig>,
    /// The PostgreSQL cluster of the PostgreSQL rows, started when the first one runs.
    postgres: Option<flwr_testkit::postgres::PgCluster>,
    starts: usize,
    /// Extra flags for our SuperLink (the opt-in rows set them for one run).
    ours_extra: Vec<&'static str>,
    /// Extra flags for our SuperNode (likewise).
    ours_node_extra: Vec<&'static str>,
    /// Extra environment for our SuperLink (likewise).
    ours_env: Vec<(&'static str, std::ffi::OsString)>,
    /// Rows so far.
    pub rows: Vec<Row>,
}

/// Our SuperLink's opt-in to one signature check per connection; the 1 KB in-memory fan-out
/// and idle rows are measured with it too, next to the default (every call verified, as Flower).
const PROOF_PER_CONNECTION: &str = "--fleet-auth-per-connection";

/// The allocator's option that keeps the memory a process frees for its next allocations
/// instead of giving it back to the system after 10 ms (the daemons' default, which keeps a
/// large idle fleet small): the operators' choice for federations of large models.
const KEEP_FREED_MEMORY: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "-1");

/// [`KEEP_FREED_MEMORY`] as the rows name it (`VAR=value`).
fn keep_freed_label() -> String {
    let (var, value) = KEEP_FREED_MEMORY;
    format!("{var}={value}")
}

impl Comparison {
    /// Prepares a scratch directory and fresh TLS files.
    pub fn new(programs: Programs, plan: Plan) -> Result<Comparison> {
        programs.check()?;
        let dir = tempfile::Builder::new().prefix("flwr-bench.").tempdir()?;
        let (_ca, tls) = pki::write_tls_files(&dir.path().join("certs"), pki::LOCAL_SANS);
        let client_tls = flwr_transport::tls::load_client_config(
            &flwr_transport::tls::ClientTlsChoice::RootCertificates(tls.ca.clone()),
        )?
        .map(|l| l.config)
        .ok_or_else(|| anyhow!("no client TLS configuration"))?;
        Ok(Comparison {
            programs,
            plan,
            dir,
            tls,
            client_tls,
            postgres: None,
            starts: 0,
            ours_extra: Vec::new(),
            ours_node_extra: Vec::new(),
            ours_env: Vec::new(),
            rows: Vec::new(),
        })
    }

    fn push(&mut self, workload: &str, metric: &str, better: Better, flower: Figure, ours: Figure) {
        let row = Row {
            workload: workload.into(),
            metric: metric.into(),
            better,
            flower,
            ours,
            ceiling: None,
        };
        eprintln!(
            "  {} | {} | {} | {} | {}",
            row.workload,
            row.metric,
            row.flower.cell(),
            row.ours.cell(),
            row.verdict()
        );
        self.rows.push(row);
    }

    /// A row that sets ours (the figure of `ours_metric` in the row of `workload` pushed last)
    /// against the bare echo service's `reference`: a ceiling (higher is better) or a floor
    /// (`Better::Lower`).
    fn push_reference(
        &mut self,
        workload: &str,
        ours_metric: &str,
        metric: String,
        better: Better,
        reference: f64,
    ) {
        let ours = self
            .rows
            .iter()
            .rev()
            .find(|r| r.workload == workload && r.metric == ours_metric)
            .and_then(|r| r.ours.value);
        self.push_reference_of(workload, metric, better, ours, reference);
    }

    /// A row of ours (`ours`) against a reference: a ceiling, or a floor for lower-is-better.
    fn push_reference_of(
        &mut self,
        workload: &str,
        metric: String,
        better: Better,
        ours: impl Into<Option<f64>>,
        reference: f64,
    ) {
        let row = Row {
            workload: workload.into(),
            metric,
            better,
            flower: Figure::default(),
            ours: Figure {
                value: ours.into(),
                note: None,
            },
            ceiling: Some(reference),
        };
        eprintln!(
            "  {} | {} | {} {} | {}",
            row.workload,
            row.metric,
            if row.is_floor() { "floor" } else { "ceiling" },
            fmt_num(reference),
            row.verdict()
        );
        self.rows.push(row);
    }

    fn tls_args(&self, cmd: &mut Command) {
        daemon::tls_args(cmd, &self.tls);
    }

    fn path_env(&self) -> std::ffi::OsString {
        let mut paths = vec![self.programs.venv_bin.clone()];
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(paths).unwrap_or_default()
    }

    /// Starts a SuperLink of `flavor` with TLS, `--isolation process` and `engine`.
    pub async fn superlink(&mut self, flavor: Flavor, engine: Engine) -> Result<(Daemon, Target)> {
        self.starts += 1;
        let home = self
            .dir
            .path()
            .join(format!("superlink-{}-{}", flavor.name(), self.starts));
        std::fs::create_dir_all(&home)?;
        let program = match flavor {
            Flavor::Flower => self.programs.venv_bin.join("flower-superlink"),
            Flavor::Ours => self.programs.superlink.clone(),
        };
        let name = format!("{} superlink", flavor.name());
        let (daemon, [appio, fleet, control]) = start_on_ports(
            flavor,
            &name,
            |[appio, fleet, control, health]| {
                let mut cmd = daemon::command(&program);
                cmd.env("FLWR_HOME", &home)
                    .env("PATH", self.path_env())
                    .env("NO_COLOR", "1");
                self.tls_args(&mut cmd);
                cmd.args([
                    "--serverappio-api-address",
                    appio,
                    "--fleet-api-address",
                    fleet,
                    "--control-api-address",
                    control,
                ])
                .args(["--health-server-address", health, "--isolation", "process"])
                .arg("--storage-dir")
                .arg(home.join("ffs"));
                if engine == Engine::Sqlite {
                    cmd.arg("--database").arg(home.join("state.db"));
                }
                if flavor == Flavor::Ours {
                    cmd.args(&self.ours_extra);
                    cmd.envs(self.ours_env.iter().map(|(k, v)| (k, v)));
                }
                (cmd, home.join("superlink.log"))
            },
            [
                "ServerAppIo API serving",
                "Fleet API (grpc-rere) serving",
                "Control API serving",
            ],
        )
        .await?;
        let target = Target {
            control: control.parse()?,
            fleet: fleet.parse()?,
            serverappio: appio.parse()?,
            tls: Some(self.client_tls.clone()),
        };
        Ok((daemon, target))
    }

    /// Starts a SuperNode of `flavor` against `fleet`, with TLS and subprocess isolation.
    pub async fn supernode(&mut self, flavor: Flavor, fleet: &str) -> Result<Daemon> {
        self.starts += 1;
        let home = self
            .dir
            .path()
            .join(format!("supernode-{}-{}", flavor.name(), self.starts));
        std::fs::create_dir_all(&home)?;
        let program = match flavor {
            Flavor::Flower => self.programs.venv_bin.join("flower-supernode"),
            Flavor::Ours => self.programs.supernode.clone(),
        };
        let name = format!("{} supernode", flavor.name());
        let (daemon, []) = start_on_ports(
            flavor,
            &name,
            |[appio, health]| {
                let mut cmd = daemon::command(&program);
                cmd.env("FLWR_HOME", &home)
                    .env("PATH", self.path_env())
                    .env("NO_COLOR", "1");
                cmd.args([
                    "--superlink",
                    fleet,
                    "--clientappio-api-address",
                    appio,
                    "--health-server-address",
                    health,
                ])
                .arg("--root-certificates")
                .arg(&self.tls.ca);
                if flavor == Flavor::Ours {
                    cmd.args(&self.ours_node_extra);
                }
                (cmd, home.join("supernode.log"))
            },
            [],
        )
        .await?;
        Ok(daemon)
    }

    /// Runs the chosen sections.
    pub async fn run(&mut self, sections: Sections) -> Result<()> {
        if sections.startup {
            eprintln!("start-up and idle memory");
            self.startup().await?;
        }
        if sections.fanout {
            for (nodes, bytes) in self.plan.fanout.clone() {
                eprintln!("fan-out {} N={nodes} (in-memory)", fmt_bytes(bytes));
                self.fanout(nodes, bytes, Engine::Memory).await?;
                if bytes >= MB {
                    self.ceiling(nodes, bytes).await?;
                }
            }
        }
        if let Some((nodes, bytes)) = self.plan.spill.filter(|_| sections.spill) {
            eprintln!(
                "fan-out {} N={nodes} (in-memory), alternated runs: ours with files, in memory, \
                 keeping freed memory; the echo service",
                fmt_bytes(bytes)
            );
            self.spill(nodes, bytes).await?;
        }
        if sections.sqlite {
            for (nodes, bytes) in self.plan.fanout_sqlite.clone() {
                eprintln!("fan-out {} N={nodes} (SQLite)", fmt_bytes(bytes));
                self.fanout(nodes, bytes, Engine::Sqlite).await?;
            }
        }
        if sections.idle {
            for n in self.plan.idle.clone() {
                eprintln!("idle fleet of {n} nodes");
                self.idle(n).await?;
            }
        }
        if sections.supernode {
            eprintln!("SuperNodes");
            self.supernodes().await?;
        }
        if sections.federation && self.plan.federation_rounds > 0 {
            eprintln!("whole federation");
            self.federation().await?;
        }
        if sections.postgres {
            ha::check_programs()?;
            for (nodes, bytes) in self.plan.fanout_postgres.clone() {
                for replicas in self.plan.replicas.clone() {
                    eprintln!(
                        "fan-out {} N={nodes} (PostgreSQL, {replicas} replica(s) behind HAProxy)",
                        fmt_bytes(bytes)
                    );
                    self.fanout_postgres(nodes, bytes, replicas).await?;
                }
            }
            let replicas = self.plan.replicas.iter().copied().max().unwrap_or(1);
            for n in self.plan.idle_postgres.clone() {
                eprintln!("idle fleet of {n} nodes (PostgreSQL, {replicas} replicas)");
                self.idle_postgres(n, replicas).await?;
            }
        }
        Ok(())
    }

    async fn fanout_one(&mut self, flavor: Flavor, w: FanOut, engine: Engine) -> Result<FanOutRun> {
        let (daemon, target) = self.superlink(flavor, engine).await?;
        Ok(self.fanout_on(daemon, &target, w).await)
    }

    /// Fan-out rounds against a started SuperLink, sampling it; then stops it.
    async fn fanout_on(&self, mut daemon: Daemon, target: &Target, w: FanOut) -> FanOutRun {
        let run = drive_fanout(target, w, self.plan.row_timeout, || {
            Ok(ha::Sample {
                servers: daemon.sample()?,
                ..Default::default()
            })
        })
        .await;
        daemon.stop(Duration::from_secs(10)).await;
        run
    }

    /// The PostgreSQL cluster of the PostgreSQL rows (started on first use).
    fn postgres(&mut self) -> &flwr_testkit::postgres::PgCluster {
        self.postgres
            .get_or_insert_with(flwr_testkit::postgres::PgCluster::start_durable)
    }

    async fn deployment(&mut self, replicas: usize) -> Result<Deployment> {
        self.starts += 1;
        let dir = self.dir.path().join(format!("ha-{}", self.starts));
        let superlink = self.programs.superlink.clone();
        let tls = self.tls.clone();
        let client_tls = self.client_tls.clone();
        let pg = self.postgres();
        Deployment::start(&superlink, &tls, client_tls, pg, replicas, &dir).await
    }

    async fn fanout_postgres(&mut self, nodes: usize, bytes: usize, replicas: usize) -> Result<()> {
        let w = FanOut::new(nodes, bytes, self.plan.rounds);
        let deployment = self.deployment(replicas).await?;
        let run = drive_fanout(&deployment.target, w, self.plan.row_timeout, || {
            deployment.sample()
        })
        .await;
        deployment.stop().await;
        let name = format!(
            "fan-out {}, N={nodes}, PostgreSQL, {replicas} replica{} behind HAProxy",
            fmt_bytes(bytes),
            if replicas == 1 { "" } else { "s" }
        );
        let total = self.plan.rounds;
        for (metric, better, get) in FANOUT_METRICS.iter().chain(DEPLOYMENT_METRICS) {
            let ours = run.figure(get, total);
            self.push(&name, metric, *better, not_in_flower(), ours);
        }
        Ok(())
    }

    /// An idle fleet spread over the replicas directly: HAProxy holds two descriptors per
    /// connection, and 10,000 connections need more than the 20,000 a process may open on the
    /// benchmark's machine.
    async fn idle_postgres(&mut self, n: usize, replicas: usize) -> Result<()> {
        let deployment = self.deployment(replicas).await?;
        let run = drive_idle(
            &deployment.target,
            &deployment.replica_fleets,
            n,
            self.plan.idle_interval,
            self.plan.idle_time,
            self.plan.row_timeout,
            || deployment.sample(),
        )
        .await;
        deployment.stop().await;
        let name = format!(
            "idle fleet, {n} nodes, heartbeat {}s, {}s, PostgreSQL, spread over {replicas} replicas",
            self.plan.idle_interval,
            self.plan.idle_time.as_secs()
        );
        for (metric, better, get) in IDLE_METRICS.iter().chain(IDLE_DEPLOYMENT_METRICS) {
            self.push(&name, metric, *better, not_in_flower(), run.figure(get));
        }
        Ok(())
    }

    async fn fanout(&mut self, nodes: usize, bytes: usize, engine: Engine) -> Result<()> {
        let w = FanOut::new(nodes, bytes, self.plan.rounds);
        let flower = self.fanout_one(Flavor::Flower, w, engine).await?;
        let ours = self.fanout_one(Flavor::Ours, w, engine).await?;
        let name = format!("fan-out {}, N={nodes}, {}", fmt_bytes(bytes), engine.name());
        self.push_fanout(&name, &flower, &ours);
        if bytes < MB && engine == Engine::Memory {
            self.ours_extra = vec![PROOF_PER_CONNECTION];
            let opted = self.fanout_one(Flavor::Ours, w, engine).await;
            self.ours_extra.clear();
            self.push_fanout(
                &format!("{name}, ours with {PROOF_PER_CONNECTION}"),
                &flower,
                &opted?,
            );
        }
        if engine == Engine::Memory && self.plan.keep_freed == Some((nodes, bytes)) {
            let kept = self.fanout_keeping_freed(w).await?;
            self.push_fanout(
                &format!("{name}, ours with {}", keep_freed_label()),
                &flower,
                &kept,
            );
        }
        Ok(())
    }

    /// Our in-memory fan-out with the SuperLink keeping the memory it frees.
    async fn fanout_keeping_freed(&mut self, w: FanOut) -> Result<FanOutRun> {
        let (var, value) = KEEP_FREED_MEMORY;
        self.ours_env = vec![(var, value.into())];
        let run = self.fanout_one(Flavor::Ours, w, Engine::Memory).await;
        self.ours_env.clear();
        run
    }

    /// The fan-out rows of `name`: Flower's run against ours.
    fn push_fanout(&mut self, name: &str, flower: &FanOutRun, ours: &FanOutRun) {
        let total = self.plan.rounds;
        for (metric, better, get) in FANOUT_METRICS {
            let (f, o) = (flower.figure(get, total), ours.figure(get, total));
            self.push(name, metric, *better, f, o);
        }
    }

    /// Starts the bare echo service and opens `clients` channels to it (each its own connection).
    async fn echo_server(
        &mut self,
        clients: usize,
    ) -> Result<(Daemon, Vec<tonic::transport::Channel>)> {
        self.starts += 1;
        let home = self.dir.path().join(format!("echo-{}", self.starts));
        std::fs::create_dir_all(&home)?;
        let mut cmd = daemon::command(&self.programs.bench);
        cmd.args([
            "echo-server",
            "--address",
            "127.0.0.1:0",
            "--health-server-address",
            "127.0.0.1:0",
        ]);
        self.tls_args(&mut cmd);
        let daemon =
            Daemon::start("echo server", cmd, Health::Logged, &home.join("echo.log")).await?;
        let address = daemon.logged_address(echo::SERVING)?;
        let addr: flwr_transport::address::Address = address.parse()?;
        let channels = (0..clients)
            .map(|_| flwr_transport::grpc::channel(&addr, Some(self.client_tls.clone())))
            .collect();
        Ok((daemon, channels))
    }

    /// The echo service's MB/s over the plan's rounds of `bytes` from `nodes` clients.
    async fn echo_mbps(&mut self, nodes: usize, bytes: usize) -> Result<f64> {
        let (mut daemon, channels) = self.echo_server(nodes).await?;
        let mut moved = 0u64;
        let mut took = Duration::ZERO;
        for _ in 0..self.plan.rounds {
            let (m, t) = echo::round(&channels, bytes).await?;
            moved += m;
            took += t;
        }
        daemon.stop(Duration::from_secs(5)).await;
        Ok(moved as f64 / MB as f64 / took.as_secs_f64())
    }

    async fn ceiling(&mut self, nodes: usize, bytes: usize) -> Result<()> {
        let mbps = self.echo_mbps(nodes, bytes).await?;
        let workload = format!("fan-out {}, N={nodes}, in-memory", fmt_bytes(bytes));
        let kept = format!("{workload}, ours with {}", keep_freed_label());
        for workload in [workload, kept] {
            if self.rows.iter().any(|r| r.workload == workload) {
                self.push_reference(
                    &workload,
                    "payload MB/s",
                    "ceiling MB/s (bare tonic+rustls echo, same payloads)".into(),
                    Better::Neither,
                    mbps,
                );
            }
        }
        Ok(())
    }

    /// Our fan-out of `bytes` to `nodes` in turns with what it is measured against, each
    /// `plan.spill_runs` times, the order rotated from one turn to the next so that the
    /// machine's drift weighs on all alike: ours with its objects in files (as deployed), with
    /// every object in memory, keeping the memory it frees ([`KEEP_FREED_MEMORY`]), and the bare
    /// echo service. The medians make what waiting in files costs (a ceiling row of MB/s, a floor
    /// row of server CPU) and our share of the echo ceiling, with and without the option.
    async fn spill(&mut self, nodes: usize, bytes: usize) -> Result<()> {
        let runs = self.plan.spill_runs.max(1);
        // Indexed by `Turn as usize`.
        let mut figures: [Vec<[f64; 2]>; Turn::ALL.len()] = Default::default();
        for pass in 0..runs {
            for j in 0..Turn::ALL.len() {
                let k = (j + pass) % Turn::ALL.len();
                let [mbps, cpu] = self.turn(Turn::ALL[k], nodes, bytes).await?;
                let cpu_note = if cpu.is_nan() {
                    String::new()
                } else {
                    format!(", server CPU {} s", fmt_num(cpu))
                };
                eprintln!(
                    "  {}: {} MB/s{cpu_note}",
                    Turn::ALL[k].name(),
                    fmt_num(mbps)
                );
                figures[k].push([mbps, cpu]);
            }
        }
        let median = |turn: Turn, i: usize| {
            percentile(
                &mut figures[turn as usize]
                    .iter()
                    .map(|f| f[i])
                    .collect::<Vec<_>>(),
                50.0,
            )
        };
        let each = if runs == 1 {
            "1 run of each kind".to_string()
        } else {
            format!("{runs} alternated runs of each kind")
        };
        let workload = format!("fan-out {}, N={nodes}, in-memory, {each}", fmt_bytes(bytes));
        let no_files = "every object in memory (no files)";
        let echo = "bare tonic+rustls echo, same payloads";
        let kept = keep_freed_label();
        let rows = [
            (
                format!("payload MB/s with files, median; ceiling: {no_files}"),
                Better::Neither,
                median(Turn::Files, 0),
                median(Turn::InMemory, 0),
            ),
            (
                format!("server CPU (s) with files, median; floor: {no_files}"),
                Better::Lower,
                median(Turn::Files, 1),
                median(Turn::InMemory, 1),
            ),
            (
                format!("payload MB/s with files, median; ceiling: {echo}"),
                Better::Neither,
                median(Turn::Files, 0),
                median(Turn::Echo, 0),
            ),
            (
                format!("payload MB/s with files and {kept}, median; ceiling: {echo}"),
                Better::Neither,
                median(Turn::KeepFreed, 0),
                median(Turn::Echo, 0),
            ),
        ];
        for (metric, better, ours, reference) in rows {
            self.push_reference_of(&workload, metric, better, ours, reference);
        }
        Ok(())
    }

    /// One run of the spill section: MB/s and server CPU seconds (NaN for the echo service).
    async fn turn(&mut self, turn: Turn, nodes: usize, bytes: usize) -> Result<[f64; 2]> {
        let w = FanOut::new(nodes, bytes, self.plan.rounds);
        let run = match turn {
            Turn::Echo => return Ok([self.echo_mbps(nodes, bytes).await?, f64::NAN]),
            Turn::Files => self.fanout_one(Flavor::Ours, w, Engine::Memory).await?,
            Turn::InMemory => self.unspilled(w).await?,
            Turn::KeepFreed => self.fanout_keeping_freed(w).await?,
        };
        let figures = SPILL_METRICS.map(|metric| {
            FANOUT_METRICS
                .iter()
                .find(|(m, _, _)| *m == metric)
                .and_then(|(_, _, get)| run.figure(get, w.rounds).value)
        });
        let [Some(mbps), Some(cpu)] = figures else {
            bail!(
                "{} failed: {}",
                turn.name(),
                run.failure.clone().unwrap_or_default()
            );
        };
        Ok([mbps, cpu])
    }

    /// One run of our fan-out with every object in memory: our SuperLink keeps its objects in
    /// memory when no file can be made in `TMPDIR` (it says so in its log, checked here).
    async fn unspilled(&mut self, w: FanOut) -> Result<FanOutRun> {
        let no_dir = self.dir.path().join("not-a-directory");
        std::fs::write(&no_dir, b"")?;
        self.ours_env = vec![("TMPDIR", no_dir.join("spill").into_os_string())];
        let started = self.superlink(Flavor::Ours, Engine::Memory).await;
        self.ours_env.clear();
        let (mut daemon, target) = started?;
        let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
        if !log.contains("objects stay in memory") {
            daemon.stop(Duration::from_secs(10)).await;
            bail!("our SuperLink did not keep its objects in memory (TMPDIR unusable): its log says nothing of it");
        }
        Ok(self.fanout_on(daemon, &target, w).await)
    }

    async fn idle_one(&mut self, flavor: Flavor, n: usize) -> Result<IdleRun> {
        let (mut daemon, target) = self.superlink(flavor, Engine::Memory).await?;
        let run = drive_idle(
            &target,
            &[],
            n,
            self.plan.idle_interval,
            self.plan.idle_time,
            self.plan.row_timeout,
            || {
                Ok(ha::Sample {
                    servers: daemon.sample()?,
                    ..Default::default()
                })
            },
        )
        .await;
        daemon.stop(Duration::from_secs(10)).await;
        Ok(run)
    }

    async fn idle(&mut self, n: usize) -> Result<()> {
        let flower = self.idle_one(Flavor::Flower, n).await?;
        let ours = self.idle_one(Flavor::Ours, n).await?;
        self.ours_extra = vec![PROOF_PER_CONNECTION];
        let opted = self.idle_one(Flavor::Ours, n).await;
        self.ours_extra.clear();
        let opted = opted?;
        let name = format!(
            "idle fleet, {n} nodes, heartbeat {}s, {}s",
            self.plan.idle_interval,
            self.plan.idle_time.as_secs()
        );
        for (metric, better, get) in IDLE_METRICS {
            self.push(&name, metric, *better, flower.figure(get), ours.figure(get));
        }
        let name = format!("{name}, ours with {PROOF_PER_CONNECTION}");
        for (metric, better, get) in IDLE_METRICS {
            self.push(
                &name,
                metric,
                *better,
                flower.figure(get),
                opted.figure(get),
            );
        }
        self.idle_floor(n, &name).await
    }

    /// What `n` idle nodes cost a bare tonic + rustls service (the echo service, answering
    /// heartbeat-sized calls that carry a signed heartbeat's headers, at the same cadence): the
    /// floor under the idle rows of `workload` (ours with the per-connection proof, which leaves
    /// out the ECDSA work the echo service does not do either).
    async fn idle_floor(&mut self, n: usize, workload: &str) -> Result<()> {
        let (mut daemon, channels) = self.echo_server(n).await?;
        let clients = echo::IdleClients::start(&channels, self.plan.idle_interval).await;
        let clients = match clients {
            Ok(c) => c,
            Err(e) => {
                daemon.stop(Duration::from_secs(5)).await;
                return Err(e.context("connecting the idle floor's clients"));
            }
        };
        let before = daemon.sample()?;
        let t0 = Instant::now();
        tokio::time::sleep(self.plan.idle_time).await;
        let after = daemon.sample()?;
        let seconds = t0.elapsed().as_secs_f64();
        let (answered, failed) = clients.counts();
        clients.stop().await;
        daemon.stop(Duration::from_secs(5)).await;
        if failed > 0 {
            anyhow::bail!("the idle floor's echo service failed {failed} of {answered} calls");
        }
        let floors = [
            (
                "server CPU (% of one core)",
                100.0 * (after.cpu_seconds - before.cpu_seconds) / seconds,
            ),
            ("server RSS at the end (MiB)", after.rss as f64 / MIB),
        ];
        for (metric, floor) in floors {
            self.push_reference(
                workload,
                metric,
                format!("floor: {metric} of a bare tonic+rustls echo, same calls"),
                Better::Lower,
                floor,
            );
        }
        Ok(())
    }

    async fn startup(&mut self) -> Result<()> {
        let mut figures = Vec::new();
        for flavor in [Flavor::Flower, Flavor::Ours] {
            let mut times = Vec::new();
            let mut rss = Vec::new();
            for _ in 0..self.plan.starts {
                let (mut d, _) = self.superlink(flavor, Engine::Memory).await?;
                times.push(d.started_in.as_secs_f64() * 1000.0);
                tokio::time::sleep(Duration::from_secs(1)).await;
                rss.push(d.sample()?.rss as f64 / MIB);
                d.stop(Duration::from_secs(10)).await;
            }
            figures.push((median(&mut times), median(&mut rss)));
        }
        self.push_startup(
            "SuperLink start-up (TLS, in-memory)",
            "idle RSS (MiB)",
            &figures,
        );

        let (mut link, target) = self.superlink(Flavor::Ours, Engine::Memory).await?;
        let fleet = target.fleet.to_string();
        let mut figures = Vec::new();
        for flavor in [Flavor::Flower, Flavor::Ours] {
            let mut times = Vec::new();
            let mut rss = Vec::new();
            for _ in 0..self.plan.starts {
                let mut d = self.supernode(flavor, &fleet).await?;
                times.push(d.started_in.as_secs_f64() * 1000.0);
                tokio::time::sleep(Duration::from_secs(5)).await;
                rss.push(d.sample()?.rss as f64 / MIB);
                d.stop(Duration::from_secs(10)).await;
            }
            figures.push((median(&mut times), median(&mut rss)));
        }
        link.stop(Duration::from_secs(10)).await;
        self.push_startup(
            "SuperNode start-up (TLS, subprocess isolation)",
            "idle RSS, connected (MiB)",
            &figures,
        );
        Ok(())
    }

    /// The two start-up rows of a daemon from (median ms to SERVING, median idle RSS) of
    /// Flower's and ours, in that order.
    fn push_startup(&mut self, workload: &str, rss_metric: &str, figures: &[(f64, f64)]) {
        let (flower, ours) = (figures[0], figures[1]);
        self.push(
            workload,
            "exec → health SERVING (ms)",
            Better::Lower,
            Figure::of(flower.0),
            Figure::of(ours.0),
        );
        self.push(
            workload,
            rss_metric,
            Better::Lower,
            Figure::of(flower.1),
            Figure::of(ours.1),
        );
    }

    /// The median time from an instruction stored to its reply stored, for one SuperNode of
    /// `flavor` under our SuperLink.
    async fn supernode_latency(&mut self, flavor: Flavor) -> Figure {
        let measured = async {
            let (mut link, target) = self.superlink(Flavor::Ours, Engine::Memory).await?;
            let fleet = target.fleet.to_string();
            let mut node = self.supernode(flavor, &fleet).await?;
            let result = async {
                let control = flwr_transport::grpc::channel(&target.control, target.tls.clone());
                let appio = flwr_transport::grpc::channel(&target.serverappio, None);
                let mut driver = Driver::start(control, appio).await?;
                let ids = driver.wait_for_nodes(1, Duration::from_secs(60)).await?;
                let mut times = Vec::new();
                for r in 1..=self.plan.supernode_rounds {
                    let round: Round =
                        tokio::time::timeout(Duration::from_secs(120), driver.round(&ids, KB, r))
                            .await
                            .map_err(|_| anyhow!("no reply within 120 s"))??;
                    if round.errors > 0 {
                        bail!(
                            "the SuperNode answered with an error (see {})",
                            node.log_tail()
                        );
                    }
                    times.push(round.latency.as_secs_f64());
                }
                let _ = driver.finish().await;
                anyhow::Ok(times)
            }
            .await;
            node.stop(Duration::from_secs(10)).await;
            link.stop(Duration::from_secs(10)).await;
            result
        }
        .await;
        match measured {
            Ok(mut t) => Figure::of(median(&mut t)),
            Err(e) => Figure::failed(format!("{e:#}")),
        }
    }

    async fn supernodes(&mut self) -> Result<()> {
        // Flower's SuperNode, then ours as it runs by default (the ClientApp forked, the pull
        // held by our SuperLink), then ours without each lever in turn: `exec` starts
        // flwr-clientapp afresh per message, and `--fleet-pull-hold 0` on our SuperLink leaves
        // the node to its 1 s poll (ours as it was before both).
        let flower = self.supernode_latency(Flavor::Flower).await;
        let variants: [(&str, Vec<&'static str>, Vec<&'static str>); 3] = [
            ("", vec![], vec![]),
            (
                ", ours with --clientapp-launch exec",
                vec![],
                vec!["--clientapp-launch", "exec"],
            ),
            (
                ", ours with --clientapp-launch exec, SuperLink --fleet-pull-hold 0",
                vec!["--fleet-pull-hold", "0"],
                vec!["--clientapp-launch", "exec"],
            ),
        ];
        for (suffix, link, node) in variants {
            self.ours_extra = link;
            self.ours_node_extra = node;
            let ours = self.supernode_latency(Flavor::Ours).await;
            self.ours_extra.clear();
            self.ours_node_extra.clear();
            self.push(
                &format!("SuperNode, 1 KB instruction, our SuperLink{suffix}"),
                "instruction stored → reply stored, median (s)",
                Better::Lower,
                flower.clone(),
                ours,
            );
        }
        // Flower's SuperNode (and ours with `exec`) launches this Python program per message;
        // ours by default imports it once and forks. Its cost, measured alone:
        let mut launches = Vec::new();
        for _ in 0..3 {
            let took =
                daemon::time_run(&self.programs.venv_bin.join("flwr-clientapp"), &["--help"])?;
            launches.push(took.as_secs_f64());
        }
        let launch = median(&mut launches);
        let note = Some("per message: Flower's, ours with exec; ours forks".to_owned());
        self.push(
            "SuperNode, 1 KB instruction, our SuperLink",
            "flwr-clientapp launch alone (python + imports, --help) (s)",
            Better::Neither,
            Figure::of(launch).with_note(note.clone()),
            Figure::of(launch).with_note(note),
        );
        Ok(())
    }

    /// The example app through `flwr run --stream` over TLS, on a SuperLink and two SuperNodes
    /// of each kind (isolation subprocess: each SuperNode starts the ClientApps, ours as it does
    /// by default), the time from `flwr run` to its end (the run finished), median of the runs.
    async fn federation(&mut self) -> Result<()> {
        let rounds = self.plan.federation_rounds;
        let venv = flwr_testkit::python::venv_bin();
        if venv.canonicalize().ok() != self.programs.venv_bin.canonicalize().ok() {
            bail!(
                "the federation row runs the venv of FLWR_VENV ({}), not {}: set FLWR_VENV",
                venv.display(),
                self.programs.venv_bin.display()
            );
        }
        let mut figures = Vec::new();
        for flavor in [Flavor::Flower, Flavor::Ours] {
            let mut times = Vec::new();
            for _ in 0..self.plan.federation_runs {
                self.starts += 1;
                let home = self.dir.path().join(format!("federation-{}", self.starts));
                let (programs, tls) = (self.programs.clone(), self.tls.clone());
                let took = tokio::task::spawn_blocking(move || {
                    federation_once(flavor, &programs, &tls, &home, rounds)
                })
                .await
                .map_err(|e| anyhow!("the federation run failed: {e}"))
                .and_then(|r| r);
                match took {
                    Ok(t) => times.push(t),
                    Err(e) => {
                        times.clear();
                        figures.push(Figure::failed(format!("{e:#}")));
                        break;
                    }
                }
            }
            if !times.is_empty() {
                figures.push(Figure::of(median(&mut times)));
            }
        }
        let ours = figures.pop().unwrap_or_default();
        let flower = figures.pop().unwrap_or_default();
        self.push(
            &format!(
                "whole federation: example app, {rounds} round(s), 2 SuperNodes, TLS, isolation subprocess"
            ),
            "flwr run → run finished, median (s)",
            Better::Lower,
            flower,
            ours,
        );
        Ok(())
    }

    /// The table as Markdown.
    pub fn table(&self) -> String {
        let mut out = String::from("| workload | metric | Flower 1.28.0 | ours | ours vs Flower |\n|---|---|---:|---:|---|\n");
        for r in &self.rows {
            let flower = if r.ceiling.is_some() {
                "—".to_owned()
            } else {
                r.flower.cell()
            };
            let ours = match r.ceiling {
                Some(c) if r.is_floor() => {
                    format!("{} (floor {})", r.ours.cell(), fmt_num(c))
                }
                Some(c) => format!("{} (ceiling {})", r.ours.cell(), fmt_num(c)),
                None => r.ours.cell(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.workload,
                r.metric,
                flower,
                ours,
                r.verdict()
            ));
        }
        out
    }

    /// The rows as JSON, with the machine and the time.
    pub fn json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "workload": r.workload,
                    "metric": r.metric,
                    "better": format!("{:?}", r.better).to_lowercase(),
                    "flower": r.flower.json(),
                    "ours": r.ours.json(),
                    "ceiling": r.ceiling,
                    "better_by": r.better_by(),
                    "verdict": r.verdict(),
                })
            })
            .collect();
        serde_json::json!({
            "machine": machine(),
            "finished_at": chrono::Utc::now().to_rfc3339(),
            "rows": rows,
        })
    }

    /// The scratch directory (logs of every daemon).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the scratch directory (for its logs) instead of deleting it; returns its path.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

/// The Flower cell of a row that only we can run (open-source Flower has no PostgreSQL mode):
/// empty, not failed.
/// One whole-federation run (see [`Comparison::federation`]): seconds from `flwr run` to its end,
/// once both SuperNodes are online.
fn federation_once(
    flavor: Flavor,
    programs: &Programs,
    tls: &TlsFiles,
    home: &Path,
    rounds: u32,
) -> Result<f64> {
    use flwr_testkit::federation::{self as fed, Cli, SuperLink, CONNECTION};
    let link = match flavor {
        Flavor::Flower => SuperLink::start_python(Some(tls), &home.join("superlink"), &[]),
        Flavor::Ours => {
            SuperLink::start(&programs.superlink, Some(tls), &home.join("superlink"), &[])
        }
    };
    let _nodes: Vec<flwr_testkit::process::Proc> = (0..2)
        .map(|i| {
            let name = format!("node-{i}");
            let dir = home.join(&name);
            match flavor {
                Flavor::Flower => {
                    fed::python_supernode(&name, &link.fleet, Some(&tls.ca), &dir, &[])
                }
                Flavor::Ours => {
                    fed::our_supernode(
                        &programs.supernode,
                        &name,
                        &link.fleet,
                        Some(&tls.ca),
                        &dir,
                        &[],
                    )
                    .0
                }
            }
        })
        .collect();
    let cli = Cli::new(&home.join("cli"), &link.control, Some(&tls.ca));
    let joined = Instant::now();
    loop {
        let (_, listed) = cli.run(&["supernode", "list", CONNECTION, "--format", "json"]);
        if listed.matches("\"online\"").count() >= 2 {
            break;
        }
        if joined.elapsed() > Duration::from_secs(60) {
            bail!("the SuperNodes did not come online within 60 s:\n{listed}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    let (status, out) = cli
        .start_run_streaming(&fed::example_app(), &format!("num-server-rounds={rounds}"))
        .wait(Duration::from_secs(600));
    let took = started.elapsed().as_secs_f64();
    if !status.success() || !out.contains("FEDAVG-CHECK OK") {
        bail!("the run did not complete (see {}):\n{out}", home.display());
    }
    Ok(took)
}

fn not_in_flower() -> Figure {
    Figure::default()
}

/// Fan-out rounds against `target`, sampled before and after the measured rounds.
async fn drive_fanout(
    target: &Target,
    w: FanOut,
    timeout: Duration,
    sample: impl Fn() -> Result<ha::Sample>,
) -> FanOutRun {
    let mut session = match tokio::time::timeout(timeout, FanOutSession::prepare(target, w)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return FanOutRun::failed(format!("setting up: {e:#}")),
        Err(_) => return FanOutRun::failed(format!("setting up took over {timeout:?}")),
    };
    let before = sample().unwrap_or_default();
    let mut rounds = Vec::new();
    let outcome = tokio::time::timeout(timeout, session.rounds(|r| rounds.push(r))).await;
    let after = sample().unwrap_or_default();
    let delivered = session.messages_delivered();
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => {
            let failure = format!("{} of {} rounds within {timeout:?}", rounds.len(), w.rounds);
            // The note stays short (it is a table cell); the log says what the nodes saw.
            tracing::warn!("{failure}: {}", session.nodes_summary());
            Some(failure)
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), session.finish())
        .await
        .is_err()
    {
        tracing::warn!("ending the run took over 30 s");
    }
    FanOutRun {
        rounds,
        delivered,
        before,
        after,
        failure,
    }
}

/// An idle fleet of `n` nodes against `target`, sampled over the measured time.
async fn drive_idle(
    target: &Target,
    fleets: &[flwr_transport::address::Address],
    n: usize,
    interval: f64,
    measured: Duration,
    row_timeout: Duration,
    sample: impl Fn() -> Result<ha::Sample>,
) -> IdleRun {
    let timeout = row_timeout.max(Duration::from_secs(600));
    let started = tokio::time::timeout(
        timeout,
        IdleFleet::start_spread(target, fleets, n, interval, Some(Duration::from_secs(30))),
    )
    .await;
    let fleet = match started {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return IdleRun::failed(format!("joining: {e:#}")),
        Err(_) => return IdleRun::failed(format!("joining took over {timeout:?}")),
    };
    let before = sample().unwrap_or_default();
    let t0 = Instant::now();
    let outcome = fleet.measure(measured).await;
    let seconds = t0.elapsed().as_secs_f64();
    let after = sample().unwrap_or_default();
    match outcome {
        Ok(o) => IdleRun {
            outcome: Some(o),
            before,
            after,
            seconds,
            failure: None,
        },
        Err(e) => IdleRun::failed(format!("{e:#}")),
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (p / 100.0 * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

struct FanOutRun {
    rounds: Vec<Round>,
    /// Messages delivered while measured, those of an unfinished round included.
    delivered: usize,
    before: ha::Sample,
    after: ha::Sample,
    failure: Option<String>,
}

impl FanOutRun {
    fn failed(why: String) -> FanOutRun {
        FanOutRun {
            rounds: Vec::new(),
            delivered: 0,
            before: ha::Sample::default(),
            after: ha::Sample::default(),
            failure: Some(why),
        }
    }

    fn figure(&self, get: &Metric<FanOutRun>, total: u32) -> Figure {
        if self.rounds.is_empty() {
            return Figure::failed(self.failure.clone().unwrap_or_else(|| "no round".into()));
        }
        let note = (self.rounds.len() < total as usize)
            .then(|| format!("{} of {total} rounds", self.rounds.len()));
        match get(self) {
            Some(v) => Figure::of(v).with_note(note),
            None => Figure::failed(note.unwrap_or_default()),
        }
    }

    fn seconds(&self) -> f64 {
        self.rounds.iter().map(|r| r.latency.as_secs_f64()).sum()
    }
}

type Metric<T> = fn(&T) -> Option<f64>;

/// The fan-out metrics of a spill section's run (named as in [`FANOUT_METRICS`]).
const SPILL_METRICS: [&str; 2] = ["payload MB/s", "server CPU (s)"];

/// The runs that the spill section alternates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// Our SuperLink as deployed: large objects wait in files.
    Files,
    /// Ours with every object in memory.
    InMemory,
    /// Ours with files, keeping the memory it frees ([`KEEP_FREED_MEMORY`]).
    KeepFreed,
    /// The bare echo service.
    Echo,
}

impl Turn {
    /// Every turn, in declaration order (`ALL[t as usize] == t`).
    const ALL: [Turn; 4] = [Turn::Files, Turn::InMemory, Turn::KeepFreed, Turn::Echo];

    fn name(self) -> &'static str {
        match self {
            Turn::Files => "ours with files",
            Turn::InMemory => "ours with every object in memory",
            Turn::KeepFreed => "ours with files, keeping freed memory",
            Turn::Echo => "the echo service",
        }
    }
}

const FANOUT_METRICS: &[(&str, Better, Metric<FanOutRun>)] = &[
    ("msg/s", Better::Higher, |r| {
        Some(r.rounds.iter().map(|x| x.messages).sum::<usize>() as f64 / r.seconds())
    }),
    ("payload MB/s", Better::Higher, |r| {
        Some(r.rounds.iter().map(|x| x.payload_bytes).sum::<u64>() as f64 / MB as f64 / r.seconds())
    }),
    ("round p50 (s)", Better::Lower, |r| {
        Some(percentile(
            &mut r
                .rounds
                .iter()
                .map(|x| x.latency.as_secs_f64())
                .collect::<Vec<_>>(),
            50.0,
        ))
    }),
    ("round p99 (s)", Better::Lower, |r| {
        Some(percentile(
            &mut r
                .rounds
                .iter()
                .map(|x| x.latency.as_secs_f64())
                .collect::<Vec<_>>(),
            99.0,
        ))
    }),
    ("server CPU (s)", Better::Lower, |r| {
        Some(r.after.servers.cpu_seconds - r.before.servers.cpu_seconds)
    }),
    // Over every message delivered, an unfinished round's too: where a server finishes fewer
    // rounds within the row's time, its CPU is over that time, not over its finished rounds.
    ("server CPU per message (ms)", Better::Lower, |r| {
        (r.delivered > 0).then(|| {
            1000.0 * (r.after.servers.cpu_seconds - r.before.servers.cpu_seconds)
                / r.delivered as f64
        })
    }),
    ("server peak RSS (MiB)", Better::Lower, |r| {
        Some(r.after.servers.peak_rss as f64 / MIB)
    }),
    ("error replies", Better::Neither, |r| {
        Some(r.rounds.iter().map(|x| x.errors).sum::<usize>() as f64)
    }),
];

struct IdleRun {
    outcome: Option<crate::workload::IdleOutcome>,
    before: ha::Sample,
    after: ha::Sample,
    seconds: f64,
    failure: Option<String>,
}

impl IdleRun {
    fn failed(why: String) -> IdleRun {
        IdleRun {
            outcome: None,
            before: ha::Sample::default(),
            after: ha::Sample::default(),
            seconds: 0.0,
            failure: Some(why),
        }
    }

    fn figure(&self, get: &Metric<IdleRun>) -> Figure {
        if self.outcome.is_none() {
            return Figure::failed(self.failure.clone().unwrap_or_default());
        }
        get(self).map(Figure::of).unwrap_or_default()
    }
}

const IDLE_METRICS: &[(&str, Better, Metric<IdleRun>)] = &[
    ("nodes online at the end", Better::Higher, |r| {
        r.outcome.map(|o| o.online_at_end as f64)
    }),
    ("heartbeats/s accepted", Better::Higher, |r| {
        r.outcome.map(|o| o.heartbeats as f64 / r.seconds)
    }),
    ("failed heartbeats", Better::Neither, |r| {
        r.outcome.map(|o| o.failed_heartbeats as f64)
    }),
    ("server CPU (% of one core)", Better::Lower, |r| {
        Some(100.0 * (r.after.servers.cpu_seconds - r.before.servers.cpu_seconds) / r.seconds)
    }),
    ("server RSS at the end (MiB)", Better::Lower, |r| {
        Some(r.after.servers.rss as f64 / MIB)
    }),
];

/// What the PostgreSQL rows add: the parts of the deployment beside the SuperLinks.
const DEPLOYMENT_METRICS: &[(&str, Better, Metric<FanOutRun>)] = &[
    ("database CPU (s)", Better::Lower, |r| {
        Some(r.after.database.cpu_seconds - r.before.database.cpu_seconds)
    }),
    ("HAProxy CPU (s)", Better::Lower, |r| {
        Some(r.after.balancer.cpu_seconds - r.before.balancer.cpu_seconds)
    }),
];

const IDLE_DEPLOYMENT_METRICS: &[(&str, Better, Metric<IdleRun>)] =
    &[("database CPU (% of one core)", Better::Lower, |r| {
        Some(100.0 * (r.after.database.cpu_seconds - r.before.database.cpu_seconds) / r.seconds)
    })];

/// Starts a daemon of `flavor` that needs `N` listening addresses (the last one its health
/// service) and returns it with the `M` addresses named by `logged` (the first `M` of the `N`,
/// in order). Ours gets port 0 everywhere
/// and says what it bound in its log. Flower's gets reserved ports, and is started again on new
/// ones when it says a port is taken (see `flwr_testkit::ports`).
async fn start_on_ports<const N: usize, const M: usize>(
    flavor: Flavor,
    name: &str,
    mut command: impl FnMut([&str; N]) -> (Command, PathBuf),
    logged: [&str; M],
) -> Result<(Daemon, [String; M])> {
    if flavor == Flavor::Ours {
        let (cmd, log) = command(["127.0.0.1:0"; N]);
        let daemon = Daemon::start(name, cmd, Health::Logged, &log).await?;
        let mut addresses = Vec::with_capacity(M);
        for what in logged {
            addresses.push(daemon.logged_address(what)?);
        }
        let addresses = addresses
            .try_into()
            .map_err(|_| anyhow!("{name}: not every address was logged"))?;
        return Ok((daemon, addresses));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let addresses: [String; N] =
            std::array::from_fn(|_| flwr_testkit::ports::reserve_address());
        let (cmd, log) = command(std::array::from_fn(|i| addresses[i].as_str()));
        let health = Health::At(&addresses[N - 1]);
        match Daemon::start(name, cmd, health, &log).await {
            Ok(daemon) => {
                let named = std::array::from_fn(|i| addresses[i].clone());
                return Ok((daemon, named));
            }
            Err(e)
                if attempt < flwr_testkit::ports::START_ATTEMPTS
                    && flwr_testkit::ports::says_address_in_use(&format!("{e:#}")) =>
            {
                eprintln!(
                    "{name}: a port was taken (attempt {attempt}); starting again on new ports"
                );
            }
            Err(e) => return Err(e),
        }
    }
}
