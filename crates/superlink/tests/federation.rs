//! Our SuperLink with real Flower 1.28.0 components: Python SuperNodes, `flwr-serverapp`, and the
//! `flwr` CLI with a `[superlink.local-deployment-tls]` connection, as on the TLS page.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use flwr_testkit::federation::{
    self, python_supernode, python_supernodes, Cli, SuperLink, CONNECTION,
};
use flwr_testkit::pki;
use flwr_testkit::process::{command, Proc};
use flwr_testkit::python;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

struct Federation {
    _dir: tempfile::TempDir,
    superlink: SuperLink,
    nodes: Vec<Proc>,
    cli: Cli,
    /// The CA that signed the SuperLink's certificate, and the files it serves.
    ca: pki::Ca,
    tls: pki::TlsFiles,
}

fn federation(nodes: usize, superlink_flags: &[&str]) -> Federation {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    let mut superlink = SuperLink::start(
        BIN.as_ref(),
        Some(&tls),
        &dir.path().join("superlink-home"),
        superlink_flags,
    );
    let nodes = python_supernodes(
        nodes,
        "supernode",
        &superlink.fleet,
        Some(&tls.ca),
        dir.path(),
    );
    // Their ClientAppIo API listens before they join: a run must not start before all did.
    superlink.proc.wait_for_output_count(
        "SuperNode activated",
        nodes.len(),
        Duration::from_secs(60),
    );
    let cli = Cli::new(
        &dir.path().join("cli-home"),
        &superlink.control,
        Some(&tls.ca),
    );
    Federation {
        _dir: dir,
        superlink,
        nodes,
        cli,
        ca,
        tls,
    }
}

fn check_completed_run(f: &Federation, out: &str, rounds: u32, size: usize) -> u64 {
    let run_id = Cli::run_id_in(out);
    let sha = federation::expected_model_sha256(size, rounds, 1.0);
    assert!(
        out.contains(&format!("sha256={sha}")),
        "the streamed log must show the predicted model {sha}:\n{out}\nthe run is {}; \
         superlink:\n{}",
        f.cli.status_of(run_id),
        f.superlink.proc.output()
    );
    assert_eq!(
        f.cli
            .await_status(run_id, "finished:completed", Duration::from_secs(20)),
        "finished:completed"
    );
    // `flwr log --show` prints the ServerApp's whole output at once.
    let (status, log) = f
        .cli
        .run(&["log", &run_id.to_string(), CONNECTION, "--show"]);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("FEDAVG-CHECK OK") && log.contains(&sha),
        "{log}"
    );
    run_id
}

/// Also the metrics (`--metrics-address`): scraped while the run goes and after it, parsed by
/// Prometheus's own `promtool`, and the figures match what the run did.
#[test]
fn tls_federation_with_python_supernodes_completes_with_the_predicted_model() {
    let mut f = federation(2, &["--metrics-address", "127.0.0.1:0"]);
    let out = f
        .superlink
        .proc
        .wait_for_output("Metrics serving", Duration::from_secs(10));
    let metrics = federation::logged_address(&out, "Metrics serving");
    let run = f.cli.start_run_streaming(
        &federation::example_app(),
        "num-server-rounds=2 model-size=5000",
    );
    // While the run goes: its start is counted, the SuperNodes are online.
    let during = until(Duration::from_secs(120), || {
        let text = flwr_testkit::metrics::scrape(&metrics);
        let running = flwr_testkit::metrics::value(
            &text,
            "flwr_run_status_changes_total",
            &[("status", "running")],
        );
        (running == Some(1.0)).then_some(text)
    });
    assert_eq!(
        flwr_testkit::metrics::value(&during, "flwr_nodes", &[("status", "online")]),
        Some(2.0),
        "{during}"
    );
    let (status, out) = run.wait(Duration::from_secs(240));
    assert!(
        status.success(),
        "flwr run failed:\n{out}\nsuperlink:\n{}",
        f.superlink.proc.output()
    );
    check_completed_run(&f, &out, 2, 5000);
    check_metrics_of_the_run(&flwr_testkit::metrics::scrape(&metrics));
    // The SuperNodes registered and are listed.
    let (status, nodes) = f
        .cli
        .run(&["supernode", "list", CONNECTION, "--format", "json"]);
    assert!(status.success(), "{nodes}");
    assert_eq!(nodes.matches("\"online\"").count(), 2, "{nodes}");
    f.nodes.clear();
}

/// The server certificate is renewed twice while a run goes (same CA, new key): once with
/// SIGHUP, once by replacing the files alone. The run completes with the predicted model, its
/// SuperNodes never notice, and a new TLS client gets the certificate in place at that moment.
#[test]
fn the_server_certificate_is_renewed_during_a_run() {
    let mut f = federation(2, &[]);
    let mut run = f.cli.start_run_streaming(
        &federation::example_app(),
        "num-server-rounds=3 client-delay=3 model-size=2000",
    );
    let renew = |f: &Federation| {
        let (cert, key) = f.ca.issue(pki::LOCAL_SANS, pki::Validity::default());
        for (text, path) in [(&cert, &f.tls.cert), (&key, &f.tls.key)] {
            let staged = path.with_extension("new");
            std::fs::write(&staged, text).unwrap();
            std::fs::rename(&staged, path).unwrap();
        }
        cert
    };
    run.wait_for_output("[ROUND 1/3]", Duration::from_secs(120));
    let second = renew(&f);
    f.superlink
        .proc
        .signal(flwr_testkit::process::Signal::SIGHUP);
    f.superlink.proc.wait_for_output(
        "loaded again (SIGHUP): new connections use it",
        Duration::from_secs(10),
    );
    assert_eq!(served_certificate(&f.superlink.fleet), pem_body(&second));

    run.wait_for_output("[ROUND 2/3]", Duration::from_secs(120));
    let third = renew(&f);
    // The files are checked every 5 s, and a check may have logged a reload of the second
    // renewal's files already: wait for the third certificate itself.
    until(Duration::from_secs(30), || {
        (served_certificate(&f.superlink.control) == pem_body(&third)).then_some(())
    });
    f.superlink.proc.wait_for_output(
        "loaded again (the files changed): new connections use it",
        Duration::from_secs(10),
    );

    let (status, out) = run.wait(Duration::from_secs(240));
    assert!(
        status.success(),
        "flwr run failed:\n{out}\nsuperlink:\n{}",
        f.superlink.proc.output()
    );
    check_completed_run(&f, &out, 3, 2000);
}

/// The certificate a new TLS client gets from `addr` (`openssl s_client`), as base64 without the
/// PEM armour.
fn served_certificate(addr: &str) -> String {
    let (status, out) = flwr_testkit::process::run_within(
        command("openssl").args(["s_client", "-connect", addr]),
        Duration::from_secs(30),
    );
    assert!(
        out.contains("-----BEGIN CERTIFICATE-----"),
        "openssl s_client {addr} ({status}):\n{out}"
    );
    pem_body(&out)
}

/// The base64 body of the first PEM certificate in `text`.
fn pem_body(text: &str) -> String {
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap() + 27;
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    text[start..end].split_whitespace().collect()
}

/// Polls `probe` until it gives a value, failing the test after `limit`.
fn until<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < limit, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The figures of one completed run of the example app (2 rounds of FedAvg, training and
/// evaluation on both of 2 SuperNodes: 8 instructions, 8 replies).
fn check_metrics_of_the_run(text: &str) {
    use flwr_testkit::metrics::{check_with_promtool, value};
    check_with_promtool(text);
    let count = |name: &str, labels: &[(&str, &str)]| value(text, name, labels).unwrap_or(0.0);
    for kind in ["instruction", "reply"] {
        for counter in [
            "flwr_messages_stored_total",
            "flwr_messages_delivered_total",
        ] {
            assert_eq!(
                count(counter, &[("kind", kind)]),
                8.0,
                "{counter} {kind}:\n{text}"
            );
        }
    }
    for (status, sub) in [
        ("pending", ""),
        ("starting", ""),
        ("running", ""),
        ("finished", "completed"),
    ] {
        assert_eq!(
            count(
                "flwr_run_status_changes_total",
                &[("status", status), ("sub_status", sub)]
            ),
            1.0,
            "{status}:{sub}\n{text}"
        );
    }
    assert_eq!(
        count("flwr_serverapp_launches_total", &[("outcome", "started")]),
        1.0
    );
    assert!(count("flwr_object_bytes_total", &[("direction", "in")]) > 2.0 * 5000.0 * 4.0);
    assert!(count("flwr_object_bytes_total", &[("direction", "out")]) > 2.0 * 5000.0 * 4.0);
    // Every instruction went out through a Fleet PullMessages answered OK (and the nodes polled
    // more often than that); the ServerApp pushed its instructions through ServerAppIo.
    let calls = |api: &str, method: &str| {
        count(
            "flwr_rpc_duration_seconds_count",
            &[("api", api), ("method", method), ("code", "OK")],
        )
    };
    assert!(calls("fleet", "PullMessages") >= 8.0, "{text}");
    assert!(calls("serverappio", "PushMessages") >= 4.0, "{text}");
    assert!(calls("control", "StartRun") == 1.0, "{text}");
    assert!(
        count(
            "flwr_tls_handshakes_total",
            &[("api", "fleet"), ("outcome", "ok")]
        ) >= 2.0,
        "{text}"
    );
    assert!(count("process_resident_memory_bytes", &[]) > 0.0, "{text}");
    // Flower's SuperNodes never ask to wait: none of their pulls was held, each was answered
    // at once, as by Flower.
    for outcome in ["instruction", "empty"] {
        assert_eq!(
            count("flwr_fleet_held_pulls_total", &[("outcome", outcome)]),
            0.0,
            "{text}"
        );
    }
    // What the state holds, read at the scrape.
    assert_eq!(
        count(
            "flwr_runs",
            &[("status", "finished"), ("sub_status", "completed")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(count("flwr_nodes", &[("status", "online")]), 2.0, "{text}");
    assert!(value(text, "flwr_objects_stored", &[]).is_some(), "{text}");
    assert!(
        value(text, "flwr_object_content_bytes", &[]).is_some(),
        "{text}"
    );
}

/// Two of Flower's SuperNodes with `node_flags` against `fleet` (over TLS, with the federation's
/// CA) run the example app to the predicted model.
fn python_nodes_run_the_app(f: &Federation, name: &str, fleet: &str, node_flags: &[&str]) {
    let dir = f._dir.path();
    let ca = dir.join("certificates/ca.crt");
    let nodes: Vec<Proc> = (0..2)
        .map(|i| {
            python_supernode(
                &format!("{name}-{i}"),
                fleet,
                Some(&ca),
                &dir.join(format!("node-{i}")),
                node_flags,
            )
        })
        .collect();
    let (status, out) = f
        .cli
        .start_run_streaming(
            &federation::example_app(),
            "num-server-rounds=2 model-size=5000",
        )
        .wait(Duration::from_secs(240));
    assert!(
        status.success(),
        "flwr run failed:\n{out}\nsuperlink:\n{}\nSuperNode:\n{}",
        f.superlink.proc.output(),
        nodes[0].output()
    );
    check_completed_run(f, &out, 2, 5000);
}

/// The grpc-adapter transport: Flower's own SuperNodes with `--grpc-adapter`, over TLS. (Flower's
/// SuperNode ignores `--auth-supernode-private-key` on this transport, so registered keys on the
/// adapter are tested with ours, in the SuperNode's federation tests.)
#[test]
fn grpc_adapter_federation_with_python_supernodes() {
    let f = federation(0, &["--fleet-api-type", "grpc-adapter"]);
    python_nodes_run_the_app(&f, "adapter", &f.superlink.fleet, &["--grpc-adapter"]);
}

/// The REST transport: Flower 1.28.0's own SuperNodes with `--rest`, unmodified, over TLS. They
/// sign nothing and double the leading slash of most paths (`//api/v0/fleet/register-node`,
/// which Flower's own REST server answers 404): ours serves them.
#[test]
fn rest_federation_with_python_supernodes() {
    let f = federation(0, &["--fleet-api-type", "rest"]);
    let url = format!("https://{}", f.superlink.fleet);
    python_nodes_run_the_app(&f, "rest", &url, &["--rest"]);
    let log = f.superlink.proc.output();
    assert!(
        log.contains("accepts unsigned calls"),
        "the start-up warning says REST calls are not authenticated:\n{log}"
    );
}

#[test]
fn isolation_process_with_an_external_serverapp() {
    let f = federation(2, &["--isolation", "process"]);
    // Flower's long-running mode: flwr-serverapp without a token polls for runs to launch.
    let mut exec = command(python::tool("flwr-serverapp"));
    exec.args([
        "--insecure",
        "--serverappio-api-address",
        &f.superlink.serverappio,
    ])
    .env("PATH", federation::path_with_venv())
    .env("FLWR_HOME", f._dir.path().join("serverapp-home"));
    let _executor = Proc::spawn("flwr-serverapp", exec);
    let run = f
        .cli
        .start_run_streaming(&federation::example_app(), "num-server-rounds=1");
    let (status, out) = run.wait(Duration::from_secs(240));
    assert!(
        status.success(),
        "flwr run failed:\n{out}\nsuperlink:\n{}",
        f.superlink.proc.output()
    );
    check_completed_run(&f, &out, 1, 1000);
    assert!(
        !f.superlink
            .proc
            .output()
            .contains("ServerApp process started"),
        "process mode launches nothing"
    );
}

#[test]
fn stop_and_failures_end_runs_with_the_right_status() {
    let f = federation(1, &[]);
    // A long run (many rounds), stopped by the user.
    let run = f.cli.start_run_streaming(
        &federation::example_app(),
        "num-server-rounds=100 min-nodes=1",
    );
    let mut run = run;
    let out = run.wait_for_output("Successfully started run", Duration::from_secs(60));
    let run_id = Cli::run_id_in(&out);
    f.cli
        .await_status(run_id, "running", Duration::from_secs(60));
    let (status, stop) = f.cli.run(&["stop", &run_id.to_string(), CONNECTION]);
    assert!(status.success(), "{stop}");
    assert_eq!(
        f.cli
            .await_status(run_id, "finished:stopped", Duration::from_secs(30)),
        "finished:stopped"
    );
    // The ServerApp process is gone soon (a generous bound: the machine may be busy).
    let start = Instant::now();
    loop {
        let out = f.superlink.proc.output();
        if out.contains("ServerApp process ended") && out.contains(&format!("run_id={run_id}")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the ServerApp still runs:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = run.wait(Duration::from_secs(60));
}

/// The run as the Control API returns it (to check details the CLI does not print).
async fn control_run(control: &str, ca: &std::path::Path, run_id: u64) -> flwr_proto::proto::Run {
    use flwr_transport::tls::{load_client_config, ClientTlsChoice};
    let tls = load_client_config(&ClientTlsChoice::RootCertificates(ca.to_path_buf()))
        .unwrap()
        .unwrap();
    let channel = flwr_transport::grpc::channel(&control.parse().unwrap(), Some(tls.config));
    let mut client = flwr_proto::proto::control_client::ControlClient::new(channel);
    let resp = client
        .list_runs(flwr_proto::proto::ListRunsRequest {
            run_id: Some(run_id),
            limit: None,
        })
        .await
        .unwrap();
    resp.into_inner().run_dict.remove(&run_id).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_reasons_and_a_killed_serverapp() {
    let f = federation(1, &[]);
    let ca = f._dir.path().join("certificates/ca.crt");
    // A ServerApp that raises: failed, with the exception as the reason.
    let (_, out) = f.cli.run(&[
        "run",
        federation::example_app().to_str().unwrap(),
        CONNECTION,
        "--run-config",
        "model-size=0 min-nodes=1",
        "--stream",
    ]);
    let run_id = Cli::run_id_in(&out);
    f.cli
        .await_status(run_id, "finished:failed", Duration::from_secs(60));
    let run = control_run(&f.superlink.control, &ca, run_id).await;
    let status = run.status.unwrap();
    assert!(status.details.contains("must be positive"), "{status:?}");

    // A ServerApp killed with SIGKILL: failed once its token expires (no heartbeat for 60 s).
    let mut run = f.cli.start_run_streaming(
        &federation::example_app(),
        "num-server-rounds=100 min-nodes=1",
    );
    let out = run.wait_for_output("Successfully started run", Duration::from_secs(60));
    let run_id = Cli::run_id_in(&out);
    f.cli
        .await_status(run_id, "running", Duration::from_secs(60));
    let log = f.superlink.proc.output();
    let line = log
        .lines()
        .find(|l| {
            l.contains("ServerApp process started") && l.contains(&format!("run_id={run_id}"))
        })
        .expect("the launcher logs the ServerApp's pid");
    let pid: i32 = line
        .split("pid=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = f
        .cli
        .await_status(run_id, "finished:failed", Duration::from_secs(100));
    assert_eq!(s, "finished:failed");
    let run_pb = control_run(&f.superlink.control, &ca, run_id).await;
    // Flower's words, then the SuperLink whose child the ServerApp was.
    let details = run_pb.status.unwrap().details;
    assert!(
        details.starts_with("No heartbeat received from the run. Its ServerApp was a child")
            && details.contains(&format!("(pid {})", f.superlink.proc.pid())),
        "{details}"
    );
    let _ = run.wait(Duration::from_secs(30));
}

#[test]
fn sqlite_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    // The restarted SuperLink must come back where the nodes look for it: reserved ports, which
    // nothing else in the test run takes meanwhile.
    let ports: Vec<String> = (0..3)
        .map(|_| flwr_testkit::ports::reserve_address())
        .collect();
    let addresses = [ports[0].as_str(), ports[1].as_str(), ports[2].as_str()];
    let db = dir.path().join("state").join("superlink.db");
    let home = dir.path().join("superlink-home");
    let flags = ["--database", db.to_str().unwrap()];
    let mut superlink = SuperLink::start_at(BIN.as_ref(), Some(&tls), &home, addresses, &flags);
    let _nodes = python_supernodes(2, "node", &superlink.fleet, Some(&tls.ca), dir.path());
    let cli = Cli::new(
        &dir.path().join("cli-home"),
        &superlink.control,
        Some(&tls.ca),
    );
    let (status, out) = cli
        .start_run_streaming(&federation::example_app(), "num-server-rounds=1")
        .wait(Duration::from_secs(240));
    assert!(status.success(), "{out}");
    let first = Cli::run_id_in(&out);
    cli.await_status(first, "finished:completed", Duration::from_secs(20));

    // Restart on the same addresses and database.
    superlink
        .proc
        .signal(flwr_testkit::process::Signal::SIGTERM);
    let (status, log) = superlink.proc.wait(Duration::from_secs(15));
    assert!(status.success(), "{log}");
    superlink = SuperLink::start_at(BIN.as_ref(), Some(&tls), &home, addresses, &flags);

    assert_eq!(
        cli.status_of(first),
        "finished:completed",
        "the first run is still listed"
    );
    let (status, log) = cli.run(&["log", &first.to_string(), CONNECTION, "--show"]);
    assert!(
        status.success() && log.contains("FEDAVG-CHECK OK"),
        "its log survived:\n{log}"
    );

    // The Python SuperNodes kept their identity (the nodes are in the database) and serve again.
    let (status, out) = cli
        .start_run_streaming(&federation::example_app(), "num-server-rounds=1")
        .wait(Duration::from_secs(240));
    assert!(
        status.success(),
        "second run:\n{out}\nsuperlink:\n{}",
        superlink.proc.output()
    );
    let second = Cli::run_id_in(&out);
    assert_ne!(first, second);
    cli.await_status(second, "finished:completed", Duration::from_secs(20));
}

#[test]
fn supernode_auth_admits_only_cli_registered_keys() {
    let f = federation(0, &["--enable-supernode-auth"]);
    let dir = f._dir.path();
    let key = pki::ssh_node_key(dir, "registered");
    let stranger = pki::ssh_node_key(dir, "stranger");
    f.cli.register_supernode(&key);
    let (status, again) = f.cli.run(&[
        "supernode",
        "register",
        &format!("{}.pub", key.display()),
        CONNECTION,
    ]);
    assert!(
        !status.success() && again.contains("already in use"),
        "{again}"
    );

    let _node = python_supernode(
        "registered",
        &f.superlink.fleet,
        Some(&dir.join("certificates/ca.crt")),
        &dir.join("node-registered"),
        &["--auth-supernode-private-key", key.to_str().unwrap()],
    );
    let (status, out) = f
        .cli
        .start_run_streaming(
            &federation::example_app(),
            "num-server-rounds=1 min-nodes=1",
        )
        .wait(Duration::from_secs(240));
    assert!(
        status.success(),
        "{out}\nsuperlink:\n{}",
        f.superlink.proc.output()
    );
    check_completed_run(&f, &out, 1, 1000);
    let (status, nodes) = f
        .cli
        .run(&["supernode", "list", CONNECTION, "--format", "json"]);
    assert!(status.success() && nodes.contains("\"online\""), "{nodes}");

    // A key that was never registered, and a SuperNode that tries to register itself: refused.
    let (status, out) = python_supernode(
        "stranger",
        &f.superlink.fleet,
        Some(&dir.join("certificates/ca.crt")),
        &dir.join("node-stranger"),
        &["--auth-supernode-private-key", stranger.to_str().unwrap()],
    )
    .wait(Duration::from_secs(60));
    assert!(
        !status.success(),
        "an unregistered key must not join:\n{out}"
    );
    assert!(
        out.contains("No SuperNode found with the given public key"),
        "{out}"
    );
    let (status, out) = python_supernode(
        "self-registering",
        &f.superlink.fleet,
        Some(&dir.join("certificates/ca.crt")),
        &dir.join("node-self"),
        &[],
    )
    .wait(Duration::from_secs(60));
    assert!(!status.success(), "{out}");
    assert!(out.contains("must be registered via the CLI"), "{out}");
}

#[test]
fn a_supernode_killed_mid_round_becomes_node_unavailable_and_the_run_finishes() {
    let mut f = federation(2, &[]);
    // Each training ClientApp takes 8 s, so the node is killed while it works on its reply.
    let mut run = f.cli.start_run_streaming(
        &federation::example_app(),
        "num-server-rounds=1 min-nodes=1 client-delay=8.0",
    );
    let out = run.wait_for_output("Successfully started run", Duration::from_secs(60));
    let run_id = Cli::run_id_in(&out);
    run.wait_for_output("configure_train: Sampled 2 nodes", Duration::from_secs(60));
    // Once the node has taken its instruction (it says so after confirming), kill it.
    f.nodes[1].wait_for_output("Received successfully", Duration::from_secs(60));
    f.nodes[1].signal_group(flwr_testkit::process::Signal::SIGKILL);
    let (status, out) = run.wait(Duration::from_secs(200));
    assert!(
        status.success(),
        "{out}\nsuperlink:\n{}",
        f.superlink.proc.output()
    );
    assert!(
        out.contains("Received 1 results and 1 failures"),
        "the killed node's reply is a NODE_UNAVAILABLE error:\n{out}"
    );
    assert!(out.contains("FEDAVG-CHECK OK"), "{out}");
    f.cli
        .await_status(run_id, "finished:completed", Duration::from_secs(20));
}

/// Peak resident memory of a process (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[test]
fn a_200_mb_model_goes_down_and_up_through_tls_bit_identical() {
    let f = federation(1, &[]);
    // 52,428,800 float32 weights = 200 MiB: 40 chunks of 5 MiB per transfer, all different.
    let size = 52_428_800usize;
    let started = Instant::now();
    let run = f.cli.start_run_streaming(
        &federation::example_app(),
        &format!("num-server-rounds=1 min-nodes=1 model-size={size}"),
    );
    let (status, out) = run.wait(Duration::from_secs(600));
    assert!(
        status.success(),
        "{out}\nsuperlink:\n{}",
        f.superlink.proc.output()
    );
    check_completed_run(&f, &out, 1, size);
    let rss = peak_rss_mib(f.superlink.proc.pid());
    eprintln!(
        "200 MiB model, 1 round (train + evaluate), TLS, 1 Python SuperNode: {:.1} s; superlink peak RSS {rss:.0} MiB",
        started.elapsed().as_secs_f64()
    );
    assert!(rss > 0.0, "the superlink's peak RSS is read from /proc");
}
