//! Pieces of a federation on 127.0.0.1 for tests: our SuperLink, Flower's Python SuperNodes and
//! SuperLink, and the real `flwr` CLI with a private `FLWR_HOME`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::pki::TlsFiles;
use crate::ports;
use crate::process::{command, run, Proc};
use crate::python;

/// The connection name the TLS page uses.
pub const CONNECTION: &str = "local-deployment-tls";

/// `PATH` with the venv's `bin` first, so that `flwr-serverapp` and friends are found.
pub fn path_with_venv() -> std::ffi::OsString {
    let mut paths = vec![python::venv_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap()
}

/// The example app.
pub fn example_app() -> PathBuf {
    python::repo_root().join("examples/numpy-fedavg")
}

/// A SuperLink's TLS flags for `tls` (`--insecure` without).
pub fn tls_args(cmd: &mut Command, tls: Option<&TlsFiles>) {
    match tls {
        Some(f) => {
            cmd.arg("--ssl-ca-certfile")
                .arg(&f.ca)
                .arg("--ssl-certfile")
                .arg(&f.cert)
                .arg("--ssl-keyfile")
                .arg(&f.key);
        }
        None => {
            cmd.arg("--insecure");
        }
    }
}

/// Our SuperLink, with its bound addresses.
pub struct SuperLink {
    /// The process.
    pub proc: Proc,
    /// Control API address.
    pub control: String,
    /// Fleet API address.
    pub fleet: String,
    /// ServerAppIo API address.
    pub serverappio: String,
}

/// The `address=` that our daemons log on the line that contains `what` (or its `"address"`
/// field, with `--log-format json`), if there is one.
pub fn find_logged_address(output: &str, what: &str) -> Option<String> {
    let line = output.lines().find(|l| l.contains(what))?;
    if let Some(start) = line.find("\"address\":\"") {
        let rest = &line[start + "\"address\":\"".len()..];
        return rest.split('"').next().map(str::to_owned);
    }
    let start = line.find("address=")? + "address=".len();
    line[start..].split_whitespace().next().map(str::to_owned)
}

/// The `address=` that our daemons log on the line that contains `what`; fails the test when
/// there is none.
pub fn logged_address(output: &str, what: &str) -> String {
    find_logged_address(output, what)
        .unwrap_or_else(|| panic!("no `{what}` with an address in:\n{output}"))
}

impl SuperLink {
    /// Starts `bin` on port-0 addresses, with TLS from `tls` (or `--insecure`), `home` as
    /// `FLWR_HOME`, and `extra` flags; waits until the Fleet API serves.
    pub fn start(bin: &Path, tls: Option<&TlsFiles>, home: &Path, extra: &[&str]) -> SuperLink {
        Self::start_at(
            bin,
            tls,
            home,
            ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"],
            extra,
        )
    }

    /// Like [`SuperLink::start`] on fixed addresses: ServerAppIo, Fleet, Control.
    pub fn start_at(
        bin: &Path,
        tls: Option<&TlsFiles>,
        home: &Path,
        addresses: [&str; 3],
        extra: &[&str],
    ) -> SuperLink {
        let mut cmd = command(bin);
        cmd.env("FLWR_HOME", home).env("NO_COLOR", "1");
        // Only a SuperLink that starts ServerApps itself needs the venv's programs (and the venv:
        // in process isolation it runs without Python).
        if !extra.windows(2).any(|w| w == ["--isolation", "process"]) {
            cmd.env("PATH", path_with_venv());
        }
        tls_args(&mut cmd, tls);
        cmd.args([
            "--serverappio-api-address",
            addresses[0],
            "--fleet-api-address",
            addresses[1],
            "--control-api-address",
            addresses[2],
            "--storage-dir",
        ])
        .arg(home.join("ffs"))
        .args(extra);
        let mut proc = Proc::spawn("superlink", cmd);
        let transport = |t: &str| extra.windows(2).any(|w| w == ["--fleet-api-type", t]);
        let fleet_serving = if transport("grpc-adapter") {
            "Fleet API (grpc-adapter) serving"
        } else if transport("rest") {
            "Fleet API (REST, HTTP/1.1) serving"
        } else {
            "Fleet API (grpc-rere) serving"
        };
        let out = proc.wait_for_output(fleet_serving, Duration::from_secs(30));
        SuperLink {
            control: logged_address(&out, "Control API serving"),
            fleet: logged_address(&out, fleet_serving),
            serverappio: logged_address(&out, "ServerAppIo API serving"),
            proc,
        }
    }
}

/// The workspace binary `name` built beside `bin` (a test's own `CARGO_BIN_EXE_*`), or a panic
/// that says how to build it.
pub fn sibling_binary(bin: &str, name: &str) -> PathBuf {
    let p = Path::new(bin).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace) or cargo build --bins",
        p.display()
    );
    p
}

/// `n` Python SuperNodes named `<prefix>-<i>` against `fleet`, each with its home in
/// `dir/node-<i>` (see [`python_supernode`]).
pub fn python_supernodes(
    n: usize,
    prefix: &str,
    fleet: &str,
    ca: Option<&Path>,
    dir: &Path,
) -> Vec<Proc> {
    (0..n)
        .map(|i| {
            python_supernode(
                &format!("{prefix}-{i}"),
                fleet,
                ca,
                &dir.join(format!("node-{i}")),
                &[],
            )
        })
        .collect()
}

/// Flower's Python SuperNode against `fleet`, with `--root-certificates ca` (or `--insecure`);
/// waits until its ClientAppIo API listens (on a reserved port, started again on new ports when
/// that one turns out to be taken).
pub fn python_supernode(
    name: &str,
    fleet: &str,
    ca: Option<&Path>,
    home: &Path,
    extra: &[&str],
) -> Proc {
    std::fs::create_dir_all(home).unwrap();
    ports::start_with_fresh_ports(name, 1, |ports| {
        let appio = format!("127.0.0.1:{}", ports[0]);
        let mut cmd = command(python::tool("flower-supernode"));
        cmd.env("FLWR_HOME", home).env("PATH", path_with_venv());
        match ca {
            Some(ca) => {
                cmd.arg("--root-certificates").arg(ca);
            }
            None => {
                cmd.arg("--insecure");
            }
        }
        cmd.arg("--superlink")
            .arg(fleet)
            .arg("--clientappio-api-address")
            .arg(&appio)
            .args(extra);
        let mut proc = Proc::spawn(name, cmd);
        proc.await_port(&appio, Duration::from_secs(60))?;
        Ok(proc)
    })
}

/// The `flwr` CLI with a private `FLWR_HOME` holding one TLS connection, as on the TLS page.
pub struct Cli {
    home: PathBuf,
}

impl Cli {
    /// Writes `config.toml` (through `flwr config list`, then the appended table).
    pub fn new(home: &Path, control: &str, ca: Option<&Path>) -> Cli {
        std::fs::create_dir_all(home).unwrap();
        let cli = Cli {
            home: home.to_path_buf(),
        };
        let (status, out) = run(&mut cli.cmd(&["config", "list"]));
        assert!(status.success(), "flwr config list: {out}");
        let mut table = format!("\n[superlink.{CONNECTION}]\naddress = \"{control}\"\n");
        match ca {
            Some(ca) => table.push_str(&format!(
                "root-certificates = \"{}\"\n",
                ca.canonicalize().unwrap().display()
            )),
            None => table.push_str("insecure = true\n"),
        }
        let path = home.join("config.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&table);
        std::fs::write(&path, text).unwrap();
        cli
    }

    /// A `flwr` command with this home.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(python::tool("flwr"));
        c.args(args)
            .env("FLWR_HOME", &self.home)
            .env("PATH", path_with_venv())
            .env("COLUMNS", "200");
        c
    }

    /// Runs a `flwr` command to completion.
    pub fn run(&self, args: &[&str]) -> (ExitStatus, String) {
        run(&mut self.cmd(args))
    }

    /// `flwr supernode register <key>.pub`, which must succeed.
    pub fn register_supernode(&self, key: &Path) {
        let (status, out) = self.run(&[
            "supernode",
            "register",
            &format!("{}.pub", key.display()),
            CONNECTION,
        ]);
        assert!(status.success(), "flwr supernode register: {out}");
    }

    /// `flwr run <app> local-deployment-tls --stream --run-config <cfg>` in the background.
    pub fn start_run_streaming(&self, app: &Path, run_config: &str) -> Proc {
        let mut c = command(python::tool("flwr"));
        c.arg("run")
            .arg(app)
            .arg(CONNECTION)
            .arg("--stream")
            .env("FLWR_HOME", &self.home)
            .env("PATH", path_with_venv());
        if !run_config.is_empty() {
            c.arg("--run-config").arg(run_config);
        }
        Proc::spawn("flwr run", c)
    }

    /// `flwr log <run> local-deployment-tls --stream` in the background: it ends with the run.
    pub fn stream_log(&self, run_id: u64) -> Proc {
        let mut c = command(python::tool("flwr"));
        c.arg("log")
            .arg(run_id.to_string())
            .arg(CONNECTION)
            .arg("--stream")
            .env("FLWR_HOME", &self.home)
            .env("PATH", path_with_venv());
        Proc::spawn("flwr log --stream", c)
    }

    /// `flwr run <app> local-deployment-tls --run-config <cfg>` (not streamed): the run's id.
    pub fn start_run(&self, app: &Path, run_config: &str) -> u64 {
        let (status, out) = self.run(&[
            "run",
            app.to_str().unwrap(),
            CONNECTION,
            "--run-config",
            run_config,
        ]);
        assert!(status.success(), "flwr run: {out}");
        Self::run_id_in(&out)
    }

    /// The run id that `flwr run` printed.
    pub fn run_id_in(output: &str) -> u64 {
        let marker = "Successfully started run ";
        let i = output
            .find(marker)
            .unwrap_or_else(|| panic!("no run id in:\n{output}"))
            + marker.len();
        output[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `flwr ls <conn> --format json` parsed into (run id, status) pairs.
    pub fn run_statuses(&self) -> Vec<(u64, String)> {
        let (status, out) = self.run(&["ls", CONNECTION, "--format", "json"]);
        assert!(status.success(), "flwr ls: {out}");
        Self::statuses_in(&out)
    }

    /// (run id, status) pairs in the output of `flwr ls --format json`.
    fn statuses_in(out: &str) -> Vec<(u64, String)> {
        let mut res = Vec::new();
        for chunk in out.split("\"run-id\"").skip(1) {
            let id: u64 = chunk.split('"').nth(1).unwrap_or("0").parse().unwrap_or(0);
            let st = chunk
                .split("\"status\"")
                .nth(1)
                .and_then(|s| s.split('"').nth(1))
                .unwrap_or("")
                .to_owned();
            res.push((id, st));
        }
        res
    }

    /// The status `flwr ls` shows for a run.
    pub fn status_of(&self, run_id: u64) -> String {
        self.run_statuses()
            .into_iter()
            .find(|(id, _)| *id == run_id)
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    /// Waits until `flwr ls` shows the run's status starting with `want` and returns it. A
    /// failing `flwr ls` (a replica going away under it) is asked again.
    pub fn await_status(&self, run_id: u64, want: &str, timeout: Duration) -> String {
        self.try_await_status(run_id, want, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Cli::await_status`], but returns what it saw when the time is up (so that the
    /// caller can add the output of its processes).
    pub fn try_await_status(
        &self,
        run_id: u64,
        want: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let (status, out) = self.run(&["ls", CONNECTION, "--format", "json"]);
            let now = if status.success() {
                Self::statuses_in(&out)
                    .into_iter()
                    .find(|(id, _)| *id == run_id)
                    .map(|(_, s)| s)
                    .unwrap_or_default()
            } else {
                format!("(flwr ls failed: {out})")
            };
            if now.starts_with(want) {
                return Ok(now);
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "run {run_id} is `{now}`, not `{want}`, after {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until `flwr log <run> --show` holds `needle` at least `times` times.
    pub fn await_log(&self, run_id: u64, needle: &str, times: usize, timeout: Duration) {
        if let Err(e) = self.try_await_log(run_id, needle, times, timeout) {
            panic!("{e}");
        }
    }

    /// Like [`Cli::await_log`], but returns what it saw when the time is up (so that the caller
    /// can add the output of its processes).
    pub fn try_await_log(
        &self,
        run_id: u64,
        needle: &str,
        times: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let (_, log) = self.run(&["log", &run_id.to_string(), CONNECTION, "--show"]);
            if log.matches(needle).count() >= times {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "the log of run {run_id} never showed {needle:?} {times} times:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The SHA-256 the example app prints for its final model: weights `i % 97 + rounds * step`.
pub fn expected_model_sha256(size: usize, rounds: u32, step: f32) -> String {
    use std::fmt::Write;
    let mut bytes = Vec::with_capacity(size * 4);
    for i in 0..size {
        let w = (i % 97) as f32 + rounds as f32 * step;
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    let digest = sha256(&bytes);
    let mut s = String::new();
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

impl SuperLink {
    /// Flower's Python `flower-superlink` 1.28.0 on reserved ports (started again on new ones when
    /// a port turns out to be taken), with TLS from `tls` (or `--insecure`); waits until its three
    /// APIs listen.
    pub fn start_python(tls: Option<&TlsFiles>, home: &Path, extra: &[&str]) -> SuperLink {
        ports::start_with_fresh_ports("flower-superlink", 3, |ports| {
            let [serverappio, fleet, control] =
                [ports[0], ports[1], ports[2]].map(|p| format!("127.0.0.1:{p}"));
            let mut cmd = command(python::tool("flower-superlink"));
            cmd.env("FLWR_HOME", home).env("PATH", path_with_venv());
            tls_args(&mut cmd, tls);
            cmd.args([
                "--serverappio-api-address",
                &serverappio,
                "--fleet-api-address",
                &fleet,
                "--control-api-address",
                &control,
            ])
            .arg("--storage-dir")
            .arg(home.join("ffs"))
            .args(extra);
            let mut proc = Proc::spawn("flower-superlink", cmd);
            for address in [&serverappio, &fleet, &control] {
                proc.await_port(address, Duration::from_secs(60))?;
            }
            Ok(SuperLink {
                proc,
                control,
                fleet,
                serverappio,
            })
        })
    }
}

/// Our SuperNode (`bin`) against `fleet`, with `--root-certificates ca` (or `--insecure`), its
/// ClientAppIo API on port 0. Returns the process and the ClientAppIo address it bound.
pub fn our_supernode(
    bin: &Path,
    name: &str,
    fleet: &str,
    ca: Option<&Path>,
    home: &Path,
    extra: &[&str],
) -> (Proc, String) {
    std::fs::create_dir_all(home).unwrap();
    let mut cmd = command(bin);
    cmd.env("FLWR_HOME", home)
        .env("PATH", path_with_venv())
        .env("NO_COLOR", "1");
    match ca {
        Some(ca) => {
            cmd.arg("--root-certificates").arg(ca);
        }
        None => {
            cmd.arg("--insecure");
        }
    }
    cmd.arg("--superlink")
        .arg(fleet)
        .args(["--clientappio-api-address", "127.0.0.1:0"])
        .args(extra);
    let mut proc = Proc::spawn(name, cmd);
    let serving = "ClientAppIo API serving";
    let out = proc.wait_for_output(serving, Duration::from_secs(30));
    let appio = logged_address(&out, serving);
    (proc, appio)
}

/// An external ClientApp executor for a SuperNode in `--isolation process`: Flower's
/// `flwr-clientapp` in its long-running mode (no token).
pub fn clientapp_executor(clientappio: &str, home: &Path) -> Proc {
    let mut cmd = command(python::tool("flwr-clientapp"));
    cmd.args(["--insecure", "--clientappio-api-address", clientappio])
        .env("FLWR_HOME", home)
        .env("PATH", path_with_venv());
    Proc::spawn("flwr-clientapp", cmd)
}
