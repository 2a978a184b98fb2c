//! High availability: three SuperLink replicas on one PostgreSQL database behind HAProxy (TCP,
//! TLS passed through), Flower 1.28's Python SuperNodes and an external `flwr-serverapp`
//! connecting through the load balancer. Replicas are SIGKILLed in the middle of the run and the
//! run still ends `finished:completed` with the predicted model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;
use std::time::Duration;

use flwr_testkit::federation::{self, logged_address, path_with_venv, python_supernode, Cli};
use flwr_testkit::haproxy::{self, Addresses};
use flwr_testkit::pki::{self, TlsFiles};
use flwr_testkit::process::{command, Proc, Signal};
use flwr_testkit::{ports, postgres, python};

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

/// A replica on `p`, once it serves, or what it printed if it stopped first.
fn try_start_replica(
    name: &str,
    p: &Addresses,
    tls: &TlsFiles,
    db: &str,
    home: &Path,
) -> Result<Proc, String> {
    let mut cmd = command(BIN);
    cmd.env("FLWR_HOME", home)
        .env("NO_COLOR", "1")
        .arg("--ssl-ca-certfile")
        .arg(&tls.ca)
        .arg("--ssl-certfile")
        .arg(&tls.cert)
        .arg("--ssl-keyfile")
        .arg(&tls.key)
        .args(["--isolation", "process", "--database", db])
        .args(["--fleet-api-address", &p.fleet])
        .args(["--control-api-address", &p.control])
        .args(["--serverappio-api-address", &p.serverappio])
        .args(["--health-server-address", &p.health]);
    let mut proc = Proc::spawn(name, cmd);
    proc.await_output("Fleet API (grpc-rere) serving", Duration::from_secs(60))?;
    Ok(proc)
}

/// A new replica on fresh ports (started again on others if one is taken).
fn start_replica(name: &str, tls: &TlsFiles, db: &str, home: &Path) -> (Proc, Addresses) {
    ports::start_with_fresh_ports(name, 4, |ports| {
        let p = Addresses::of_ports(ports);
        try_start_replica(name, &p, tls, db, home).map(|proc| (proc, p))
    })
}

/// A replica started again on its own addresses (the load balancer knows them).
fn restart_replica(name: &str, p: &Addresses, tls: &TlsFiles, db: &str, home: &Path) -> Proc {
    try_start_replica(name, p, tls, db, home).unwrap_or_else(|out| panic!("{name}:\n{out}"))
}

/// HAProxy (in the foreground) in front of `replicas` on fresh ports, once it listens on every
/// frontend; started again on others if one is taken.
fn start_haproxy(replicas: &[Addresses], dir: &Path) -> (Proc, Addresses) {
    ports::start_with_fresh_ports("haproxy", 4, |ports| {
        let front = Addresses::of_ports(ports);
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy::config(&front, replicas, "first")).unwrap();
        let mut cmd = command(haproxy::program());
        cmd.arg("-db").arg("-f").arg(&cfg);
        let mut lb = Proc::spawn("haproxy", cmd);
        for a in [&front.fleet, &front.control, &front.serverappio] {
            lb.await_port(a, Duration::from_secs(30))?;
        }
        // A port taken by another program answers too: HAProxy itself must still be there.
        std::thread::sleep(Duration::from_millis(200));
        match lb.try_status() {
            None => Ok((lb, front)),
            Some(_) => Err(lb.output()),
        }
    })
}

#[test]
fn the_documented_haproxy_configuration_is_valid() {
    let cfg = python::repo_root().join("docker/ha/haproxy.cfg");
    let (status, out) = flwr_testkit::process::run(
        std::process::Command::new(haproxy::program())
            .arg("-c")
            .arg("-f")
            .arg(&cfg),
    );
    assert!(status.success(), "{}: {out}", cfg.display());
}

/// Which SuperNodes join.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nodes {
    /// Flower 1.28.0's `flower-supernode`.
    Python,
    /// Ours.
    Ours,
}

#[test]
fn replicas_die_mid_run_and_the_run_completes_with_python_supernodes() {
    replicas_die_mid_run(Nodes::Python);
}

#[test]
fn replicas_die_mid_run_and_the_run_completes_with_our_supernodes() {
    replicas_die_mid_run(Nodes::Ours);
}

fn replicas_die_mid_run(kind: Nodes) {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    let db = postgres::shared().create_database();

    let home = |i: usize| dir.path().join(format!("replica-{i}"));
    let (mut procs, replicas): (Vec<Option<Proc>>, Vec<Addresses>) = (0..3)
        .map(|i| {
            let (proc, at) = start_replica(&format!("replica-{i}"), &tls, &db, &home(i));
            (Some(proc), at)
        })
        .unzip();

    let (mut lb, front) = start_haproxy(&replicas, dir.path());

    // An external ServerApp and two Python SuperNodes, all through the load balancer.
    let mut serverapp_cmd = command(python::tool("flwr-serverapp"));
    serverapp_cmd
        .args([
            "--insecure",
            "--serverappio-api-address",
            &front.serverappio,
        ])
        .env("FLWR_HOME", dir.path().join("serverapp"))
        .env("PATH", path_with_venv());
    let serverapp = Proc::spawn("flwr-serverapp", serverapp_cmd);
    let _nodes: Vec<Proc> = (0..2)
        .map(|i| {
            let name = format!("node-{i}");
            let home = dir.path().join(&name);
            match kind {
                Nodes::Python => python_supernode(&name, &front.fleet, Some(&tls.ca), &home, &[]),
                Nodes::Ours => {
                    federation::our_supernode(
                        &federation::sibling_binary(BIN, "supernode"),
                        &name,
                        &front.fleet,
                        Some(&tls.ca),
                        &home,
                        &[],
                    )
                    .0
                }
            }
        })
        .collect();
    let cli = Cli::new(&dir.path().join("cli"), &front.control, Some(&tls.ca));
    let run_id = cli.start_run(
        &federation::example_app(),
        "num-server-rounds=3 client-delay=3.0",
    );
    // `balance first` puts every client on replica 0, then on replica 1: replica 2 never
    // holds the ServerApp, so a log streamed from it is all written through the others.
    let direct: Vec<Cli> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Cli::new(
                &dir.path().join(format!("cli-{i}")),
                &r.control,
                Some(&tls.ca),
            )
        })
        .collect();
    let streamed = direct[2].stream_log(run_id);

    let diagnostics = |procs: &[Option<Proc>]| {
        let mut d = format!("serverapp:\n{}\n", serverapp.output());
        for (i, p) in procs.iter().enumerate() {
            if let Some(p) = p {
                d.push_str(&format!("replica-{i}:\n{}\n", p.output()));
            }
        }
        for (i, n) in _nodes.iter().enumerate() {
            d.push_str(&format!("node-{i}:\n{}\n", n.output()));
        }
        d.push_str(&format!("haproxy:\n{}\n", lb.output()));
        d
    };
    let await_log = |procs: &[Option<Proc>], needle: &str, times: usize| {
        if let Err(e) = cli.try_await_log(run_id, needle, times, Duration::from_secs(240)) {
            panic!("{e}\n{}", diagnostics(procs));
        }
    };

    // `balance first`: every client is on replica 0. Kill it during round 2...
    await_log(&procs, "[ROUND 2/3]", 1);
    procs[0].take().unwrap().signal_group(Signal::SIGKILL);
    // ...bring it back (everyone is on replica 1 now)...
    await_log(&procs, "aggregate_train", 2);
    procs[0] = Some(restart_replica(
        "replica-0",
        &replicas[0],
        &tls,
        &db,
        &home(0),
    ));
    // ...and kill replica 1 during round 3.
    await_log(&procs, "[ROUND 3/3]", 1);
    if let Some(p) = procs[1].take() {
        p.signal_group(Signal::SIGKILL);
    }

    let s = cli
        .try_await_status(run_id, "finished", Duration::from_secs(300))
        .unwrap_or_else(|e| {
            let (_, log) = cli.run(&["log", &run_id.to_string(), federation::CONNECTION, "--show"]);
            panic!("{e}; its log:\n{log}\n{}", diagnostics(&procs))
        });
    assert_eq!(s, "finished:completed", "{}", diagnostics(&procs));
    let (_, log) = cli.run(&["log", &run_id.to_string(), federation::CONNECTION, "--show"]);
    let sha = federation::expected_model_sha256(1000, 3, 1.0);
    assert!(log.contains(&format!("sha256={sha}")), "{log}");
    // Every surviving replica tells the same story.
    for i in (0..replicas.len()).filter(|&i| procs[i].is_some()) {
        let direct = &direct[i];
        assert_eq!(direct.status_of(run_id), "finished:completed");
        let (_, log) = direct.run(&["log", &run_id.to_string(), federation::CONNECTION, "--show"]);
        assert!(log.contains(&format!("sha256={sha}")), "replica-{i}: {log}");
    }
    let (status, streamed) = streamed.wait(Duration::from_secs(60));
    assert!(
        status.success()
            && streamed.contains("[ROUND 3/3]")
            && streamed.contains(&format!("sha256={sha}")),
        "the log streamed from replica-2 ({status}):\n{streamed}"
    );
    if std::env::var_os("HA_DEBUG").is_some() {
        for n in &_nodes {
            eprintln!("NODE:\n{}", n.output());
        }
        eprintln!("{}", diagnostics(&procs));
    }
    let _ = lb.try_status();
}

#[test]
fn a_pending_run_is_launched_once_and_a_dead_launcher_fails_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    let db = postgres::shared().create_database();
    // Each replica starts ServerApps through a wrapper that notes who launched what.
    let launches = dir.path().join("launches");
    let wrapper = dir.path().join("serverapp.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$REPLICA $*\" >> {}\nexec {} \"$@\"\n",
            launches.display(),
            python::tool("flwr-serverapp").display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let replicas: Vec<(Proc, Addresses)> = (0..3)
        .map(|i| {
            let mut cmd = command(BIN);
            cmd.env("FLWR_HOME", dir.path().join(format!("replica-{i}")))
                .env("NO_COLOR", "1")
                .env("PATH", path_with_venv())
                .env("REPLICA", format!("replica-{i}"))
                .env("FLWR_SERVERAPP_COMMAND", &wrapper)
                .arg("--ssl-ca-certfile")
                .arg(&tls.ca)
                .arg("--ssl-certfile")
                .arg(&tls.cert)
                .arg("--ssl-keyfile")
                .arg(&tls.key)
                .args(["--database", &db])
                .args(["--fleet-api-address", "127.0.0.1:0"])
                .args(["--control-api-address", "127.0.0.1:0"])
                .args(["--serverappio-api-address", "127.0.0.1:0"]);
            let mut proc = Proc::spawn(&format!("replica-{i}"), cmd);
            let out =
                proc.wait_for_output("Fleet API (grpc-rere) serving", Duration::from_secs(60));
            let p = Addresses {
                fleet: logged_address(&out, "Fleet API (grpc-rere) serving"),
                control: logged_address(&out, "Control API serving"),
                serverappio: logged_address(&out, "ServerAppIo API serving"),
                health: String::new(),
            };
            (proc, p)
        })
        .collect();
    // A run started on replica 2 (with nodes on replica 0, which it waits for in vain): every
    // replica sees it pending, exactly one launches it.
    let _node = python_supernode(
        "node",
        &replicas[0].1.fleet,
        Some(&tls.ca),
        &dir.path().join("node"),
        &[],
    );
    let cli = Cli::new(
        &dir.path().join("cli"),
        &replicas[2].1.control,
        Some(&tls.ca),
    );
    let run_id = cli.start_run(
        &federation::example_app(),
        "num-server-rounds=1 min-nodes=2",
    );
    cli.await_status(run_id, "running", Duration::from_secs(120));
    // No second launch can come once every launcher has swept the pending runs a few times
    // (every second): an absence, so a bounded wait rather than a condition.
    std::thread::sleep(Duration::from_secs(3));
    let launched = || std::fs::read_to_string(&launches).unwrap_or_default();
    let text = launched();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "launched exactly once: {text}");
    let launcher: usize = lines[0]
        .split_whitespace()
        .next()
        .and_then(|r| r.strip_prefix("replica-"))
        .and_then(|n| n.parse().ok())
        .unwrap();

    // The launching replica dies with its ServerApp: the run fails, saying why and naming it.
    let launcher_pid = replicas[launcher].0.pid();
    replicas[launcher].0.signal_group(Signal::SIGKILL);
    let survivor = (launcher + 1) % 3;
    let cli = Cli::new(
        &dir.path().join("cli-survivor"),
        &replicas[survivor].1.control,
        Some(&tls.ca),
    );
    let s = cli.await_status(run_id, "finished", Duration::from_secs(180));
    assert_eq!(s, "finished:failed");
    let details = run_details(&replicas[survivor].1.control, &tls.ca, run_id);
    assert!(
        details.starts_with("No heartbeat received from the run.")
            && details.contains("child process of SuperLink ")
            && details.contains(&format!("(pid {launcher_pid})"))
            && details.contains("--isolation process"),
        "{details}"
    );
    // Neither the survivors, sweeping all along, nor anyone else launched it again.
    let text = launched();
    assert_eq!(text.lines().count(), 1, "launched exactly once: {text}");
    drop(replicas);
}

/// The run's status details, as the Control API of `control` returns them.
fn run_details(control: &str, ca: &Path, run_id: u64) -> String {
    use flwr_proto::proto as pb;
    use flwr_transport::tls::{load_client_config, ClientTlsChoice};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = load_client_config(&ClientTlsChoice::RootCertificates(ca.to_path_buf()))
            .unwrap()
            .unwrap();
        let channel = flwr_transport::grpc::channel(&control.parse().unwrap(), Some(tls.config));
        let mut client = pb::control_client::ControlClient::new(channel);
        let runs = client
            .list_runs(pb::ListRunsRequest {
                run_id: Some(run_id),
                limit: None,
            })
            .await
            .unwrap()
            .into_inner();
        runs.run_dict[&run_id]
            .status
            .clone()
            .unwrap_or_default()
            .details
    })
}

#[test]
fn haproxy_drains_replicas_whose_database_is_gone_and_takes_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    let mut cluster = postgres::PgCluster::start();
    let db = cluster.create_database();
    let (_procs, replicas): (Vec<Proc>, Vec<Addresses>) = (0..2)
        .map(|i| {
            let home = dir.path().join(format!("replica-{i}"));
            start_replica(&format!("replica-{i}"), &tls, &db, &home)
        })
        .unzip();
    let (mut lb, _front) = start_haproxy(&replicas, dir.path());
    let said = |server: &str, state: &str| format!("Server fleet_replicas/{server} is {state}");
    assert!(!lb.output().contains(" is DOWN"), "{}", lb.output());
    // The database goes: every replica says NOT_SERVING and HAProxy takes each out; they come
    // back.
    cluster.stop();
    for server in ["replica0", "replica1"] {
        lb.wait_for_output(&said(server, "DOWN"), Duration::from_secs(30));
    }
    cluster.restart();
    for server in ["replica0", "replica1"] {
        lb.wait_for_output(&said(server, "UP"), Duration::from_secs(30));
    }
}
