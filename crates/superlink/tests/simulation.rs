//! The `flwr` CLI's local mode with our binary as `flower-superlink`: the CLI starts it with
//! `--insecure --simulation ...`, and `flwr-simulation` (Ray) runs the example app.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::process::Command;
use std::time::Duration;

use flwr_testkit::federation;
use flwr_testkit::ports;
use flwr_testkit::process::{command, Proc, Signal};
use flwr_testkit::python;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

/// How many times a run whose Ray did not start is tried again.
const RAY_RETRIES: usize = 2;

/// Signals every process whose command line contains `marker` (the CLI starts the local
/// SuperLink detached, so the test finds it by its FLWR_HOME); returns how many there were.
fn signal_matching(marker: &str, signal: Signal) -> usize {
    let mut found = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if pid > 1 && String::from_utf8_lossy(&cmdline).contains(marker) {
            found += 1;
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
    found
}

/// Ends the processes of `marker` (SIGTERM, then SIGKILL after 20 s) and waits until they are
/// gone.
fn stop_and_wait(marker: &str) {
    let start = std::time::Instant::now();
    let mut signal = Signal::SIGTERM;
    while signal_matching(marker, signal) > 0 {
        if start.elapsed() > Duration::from_secs(20) {
            signal = Signal::SIGKILL;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the processes of {marker} do not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct StopLocalSuperLink(String);

impl Drop for StopLocalSuperLink {
    fn drop(&mut self) {
        signal_matching(&self.0, Signal::SIGTERM);
    }
}

#[test]
fn flwr_local_mode_runs_a_simulation_on_our_superlink() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("flower-superlink")).unwrap();
    let home = dir.path().join("flwr-home");
    let _stop = StopLocalSuperLink(home.display().to_string());
    let mut path = std::ffi::OsString::from(bin.as_os_str());
    path.push(":");
    path.push(federation::path_with_venv());

    let log_path = home.join("local-superlink/superlink.log");
    let local_superlink_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // The CLI starts the local SuperLink on the port it is told in advance: a reserved one, and
    // a new one if that turns out to be taken.
    let attempt = || {
        let mut c = command(python::tool("flwr"));
        c.arg("run")
            .arg(federation::example_app())
            .arg("local")
            .arg("--stream");
        c.args([
            "--run-config",
            "num-server-rounds=1",
            "--federation-config",
            "num-supernodes=2",
        ]);
        c.env("FLWR_HOME", &home)
            .env("PATH", &path)
            .env("FLWR_LOCAL_CONTROL_API_PORT", ports::reserve().to_string());
        Proc::spawn("flwr run (local)", c).wait(Duration::from_secs(300))
    };
    // Ray's own start-up on a cold or busy machine: its raylet has a fixed 30 s to register, and
    // its GCS may not come up (Ray then fails looking for `gcs_server.err`). Nothing of ours is
    // involved, and `flwr run` may still exit 0 (the simulation reports the crash in the log).
    let ray_failed_to_start = |out: &str| {
        out.contains("The current node timed out during startup")
            || out.contains("gcs_server.err")
            || out.contains("Failed to connect to GCS")
    };
    let mut ray_retries = 0;
    let mut tries = 0;
    let (status, out) = loop {
        tries += 1;
        let (status, out) = attempt();
        let ray = ray_failed_to_start(&out);
        if (status.success() && !ray) || tries == ports::START_ATTEMPTS {
            break (status, out);
        }
        let in_use = ports::says_address_in_use(&format!("{out}{}", local_superlink_log()));
        let retry_ray = ray && ray_retries < RAY_RETRIES;
        if !in_use && !retry_ray {
            break (status, out);
        }
        eprintln!(
            "flwr run (local) failed ({}); trying again:\n{out}\nlocal superlink log:\n{}",
            if in_use {
                "port in use"
            } else {
                "Ray did not start"
            },
            local_superlink_log()
        );
        ray_retries += usize::from(retry_ray && !in_use);
        stop_and_wait(&home.display().to_string());
        let _ = std::fs::remove_file(&log_path);
    };
    let log = local_superlink_log();
    assert!(
        status.success() && !ray_failed_to_start(&out),
        "flwr run failed:\n{out}\nlocal superlink log:\n{log}"
    );
    assert!(
        log.contains("flower-rs"),
        "the CLI started our SuperLink:\n{log}"
    );
    let sha = federation::expected_model_sha256(1000, 1, 1.0);
    assert!(out.contains(&format!("sha256={sha}")), "{out}");
    // The federation shows the simulation settings.
    let (status, feds) = flwr_testkit::process::run(
        Command::new(python::tool("flwr"))
            .args(["federation", "list", "local"])
            .env("FLWR_HOME", &home)
            .env("PATH", &path),
    );
    assert!(status.success(), "{feds}");
}
