//! The `flwr` CLI's local mode with our binary as `flower-superlink`: the CLI starts it with
//! `--insecure --simulation ...`, and `flwr-simulation` (Ray) runs the example app.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::process::Command;
use std::time::Duration;

use flwr_testkit::federation::{self, free_port};
use flwr_testkit::process::{command, Proc, Signal};
use flwr_testkit::python;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

/// Signals every process whose command line contains `marker` (the CLI starts the local
/// SuperLink detached, so the test finds it by its FLWR_HOME).
fn signal_matching(marker: &str, signal: Signal) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if pid > 1 && String::from_utf8_lossy(&cmdline).contains(marker) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
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
            .env("FLWR_LOCAL_CONTROL_API_PORT", free_port().to_string());
        Proc::spawn("flwr run (local)", c).wait(Duration::from_secs(300))
    };
    let (mut status, mut out) = attempt();
    let ray_failed_to_start =
        |out: &str| out.contains("gcs_server") || out.contains("timed out during startup");
    if !status.success() && ray_failed_to_start(&out) {
        // Ray's very first start on a fresh or busy machine can miss its own log files or time
        // out starting its raylet; it is Ray's start-up, not the SuperLink: try once more.
        signal_matching(&home.display().to_string(), Signal::SIGTERM);
        std::thread::sleep(Duration::from_secs(2));
        (status, out) = attempt();
    }
    let log =
        std::fs::read_to_string(home.join("local-superlink/superlink.log")).unwrap_or_default();
    assert!(
        status.success(),
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
