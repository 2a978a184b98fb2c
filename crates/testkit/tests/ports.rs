//! The port allocator with a real child: Flower's `flower-superlink` told to listen on a port that
//! is taken says so, and the start helper starts it again on new ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flwr_testkit::federation::path_with_venv;
use flwr_testkit::ports;
use flwr_testkit::process::{command, Proc};
use flwr_testkit::python;

#[test]
fn flower_on_a_taken_port_is_started_again_on_new_ports() {
    let home = tempfile::tempdir().unwrap();
    // Another program holds this port (as a foreign process on the machine could): bound, not
    // listening, so that nothing answers there and Flower's own check finds it taken.
    let taken = ports::reserve();
    let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    holder
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], taken)).into())
        .unwrap();
    let mut attempts = Vec::new();
    let (mut proc, control) = ports::start_with_fresh_ports("flower-superlink", 3, |p| {
        let control = if attempts.is_empty() { taken } else { p[2] };
        attempts.push(control);
        let [appio, fleet, control] = [p[0], p[1], control].map(|p| format!("127.0.0.1:{p}"));
        let mut cmd = command(python::tool("flower-superlink"));
        cmd.env("FLWR_HOME", home.path())
            .env("PATH", path_with_venv())
            .arg("--insecure")
            .args(["--serverappio-api-address", &appio])
            .args(["--fleet-api-address", &fleet])
            .args(["--control-api-address", &control])
            .arg("--storage-dir")
            .arg(home.path().join("ffs"));
        let mut proc = Proc::spawn("flower-superlink", cmd);
        for address in [&appio, &fleet, &control] {
            proc.await_port(address, Duration::from_secs(60))?;
        }
        Ok((proc, control))
    });
    assert_eq!(attempts.len(), 2, "one failed start, then one on new ports");
    assert_ne!(attempts[1], taken);
    // Its ports answer before its log says so has been read: wait for the line.
    proc.wait_for_output("Starting Control API", Duration::from_secs(30));
    assert!(control.ends_with(&attempts[1].to_string()));
}
