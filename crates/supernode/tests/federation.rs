//! Our SuperNode with Flower 1.28.0's SuperLink, with ours, and beside Python SuperNodes; with
//! TLS, in both isolation modes, with registered keys, across SuperLink restarts; and its
//! retry policy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flwr_testkit::federation::{
    self, clientapp_executor, our_supernode, python_supernode, Cli, SuperLink,
};
use flwr_testkit::pki::{self, TlsFiles};
use flwr_testkit::ports;
use flwr_testkit::process::{Proc, Signal};

mod common;

const SUPERNODE: &str = env!("CARGO_BIN_EXE_supernode");

struct Setup {
    dir: tempfile::TempDir,
    tls: TlsFiles,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    Setup { dir, tls }
}

impl Setup {
    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn our_node(&self, name: &str, fleet: &str, extra: &[&str]) -> (Proc, String) {
        our_supernode(
            SUPERNODE.as_ref(),
            name,
            fleet,
            Some(&self.tls.ca),
            &self.home(name),
            extra,
        )
    }

    fn cli(&self, control: &str) -> Cli {
        Cli::new(&self.home("cli"), control, Some(&self.tls.ca))
    }
}

/// The example ClientApp counts its calls in a module-level variable and prints the count: in
/// `out` (a SuperNode's log) `messages` calls were logged, each the first of its process.
fn assert_fresh_process_per_message(out: &str, messages: usize) {
    let counts: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("CLIENTAPP-CALLS ").nth(1))
        .collect();
    assert_eq!(counts.len(), messages, "{out}");
    assert!(
        counts.iter().all(|c| c.starts_with("1 ")),
        "a ClientApp process served more than one message: {counts:?}"
    );
}

/// Runs the example app; with one, two or four nodes the model must be bit-exact.
fn run_app(cli: &Cli, run_config: &str, rounds: u32) -> u64 {
    run_app_from(cli, &federation::example_app(), run_config, rounds)
}

/// [`run_app`] with the app at `app` (a directory, or `@account/app==x.y.z` on Flower Hub).
fn run_app_from(cli: &Cli, app: &std::path::Path, run_config: &str, rounds: u32) -> u64 {
    let (status, out) = cli
        .start_run_streaming(app, run_config)
        .wait(Duration::from_secs(240));
    assert!(status.success(), "flwr run failed:\n{out}");
    assert!(out.contains("FEDAVG-CHECK OK"), "{out}");
    if out.contains("exact=True") {
        let sha = federation::expected_model_sha256(1000, rounds, 1.0);
        assert!(
            out.contains(&format!("sha256={sha}")),
            "the predicted model {sha} must be reached:\n{out}"
        );
    } else {
        assert!(
            out.contains("nodes=3"),
            "only a three-node average may be inexact:\n{out}"
        );
    }
    let run_id = Cli::run_id_in(&out);
    let start = Instant::now();
    while cli.status_of(run_id) != "finished:completed" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "run {run_id}: {}",
            cli.status_of(run_id)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    run_id
}

/// Also the SuperNode's metrics (`--metrics-address`), parsed by `promtool`: the figures match
/// what the run did.
#[test]
fn python_superlink_with_our_supernodes_in_both_isolation_modes() {
    let s = setup();
    let superlink = SuperLink::start_python(Some(&s.tls), &s.home("superlink"), &[]);
    let node_started = Instant::now();
    let (mut a, _) = s.our_node(
        "node-a",
        &superlink.fleet,
        &[
            "--metrics-address",
            "127.0.0.1:0",
            "--clientapp-launch",
            "exec",
        ],
    );
    let out = a.wait_for_output("Metrics serving", Duration::from_secs(10));
    let metrics = federation::logged_address(&out, "Metrics serving");
    let (_b, appio_b) = s.our_node(
        "node-b",
        &superlink.fleet,
        &["--isolation", "process", "--node-config", "partition-id=1"],
    );
    let _executor = clientapp_executor(&appio_b, &s.home("executor-b"));
    let cli = s.cli(&superlink.control);
    run_app(&cli, "num-server-rounds=2", 2);

    // `--clientapp-launch exec`: flwr-clientapp afresh per message, as Flower; no launcher.
    let out = a.output();
    assert!(out.contains("ClientApp process started"), "{out}");
    assert!(!out.contains("forked"), "{out}");
    assert_fresh_process_per_message(&out, 4);

    // Two rounds of training and evaluation: four instructions for each node.
    use flwr_testkit::metrics::{check_with_promtool, scrape, value};
    let text = scrape(&metrics);
    check_with_promtool(&text);
    let count = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels).unwrap_or(0.0);
    assert_eq!(
        count("flwr_messages_handled_total", &[("outcome", "replied")]),
        4.0,
        "{text}"
    );
    assert_eq!(
        count("flwr_message_handling_seconds_count", &[]),
        4.0,
        "{text}"
    );
    assert!(
        count("flwr_clientapp_launches_total", &[("outcome", "started")]) >= 1.0,
        "{text}"
    );
    assert_eq!(count("flwr_clientapp_crashes_total", &[]), 0.0, "{text}");
    assert_eq!(
        count("flwr_clientapp_duration_seconds_count", &[]),
        count("flwr_clientapp_launches_total", &[("outcome", "started")]),
        "{text}"
    );
    assert!(
        count(
            "flwr_fleet_call_duration_seconds_count",
            &[("method", "PullMessages"), ("code", "OK")]
        ) >= 4.0,
        "{text}"
    );
    assert_eq!(count("flwr_superlink_reachable", &[]), 1.0, "{text}");
    assert!(
        count(
            "flwr_rpc_duration_seconds_count",
            &[("api", "clientappio"), ("code", "OK")]
        ) > 0.0,
        "{text}"
    );
    // Flower's SuperLink ignores our long-poll header and answers every pull at once: the node
    // sees that no pull was held and keeps polling once a second (plus one pull per message).
    assert_eq!(count("flwr_held_pulls_total", &[]), 0.0, "{text}");
    let pulls: f64 = ["OK", "UNAVAILABLE"]
        .iter()
        .map(|code| {
            count(
                "flwr_fleet_call_duration_seconds_count",
                &[("method", "PullMessages"), ("code", code)],
            )
        })
        .sum();
    let seconds = node_started.elapsed().as_secs_f64();
    assert!(
        pulls <= seconds + 4.0 + 5.0,
        "{pulls} pulls in {seconds:.0} s: no faster than one a second\n{text}"
    );
}

/// SIGTERM while a message is in hand: the node finishes it within `--shutdown-grace-seconds`
/// (its ClientApp's reply goes to the SuperLink), or, when the ClientApp takes longer than the
/// grace, answers it NODE_UNAVAILABLE at once instead of leaving the ServerApp to wait for the
/// message's TTL; either way it then leaves the SuperLink and exits 0.
#[test]
fn sigterm_finishes_the_message_in_hand_or_answers_it_with_an_error() {
    let s = setup();
    let mut superlink = SuperLink::start(
        &federation::sibling_binary(SUPERNODE, "superlink"),
        Some(&s.tls),
        &s.home("superlink"),
        &["--metrics-address", "127.0.0.1:0"],
    );
    let out = superlink
        .proc
        .wait_for_output("Metrics serving", Duration::from_secs(10));
    let metrics = federation::logged_address(&out, "Metrics serving");
    let (patient, _) = s.our_node(
        "patient",
        &superlink.fleet,
        &["--shutdown-grace-seconds", "60"],
    );
    let (hasty, _) = s.our_node(
        "hasty",
        &superlink.fleet,
        &[
            "--shutdown-grace-seconds",
            "1",
            "--node-config",
            "partition-id=1",
        ],
    );
    // Each training ClientApp sleeps 4 s before it replies.
    let _run = s.cli(&superlink.control).start_run_streaming(
        &federation::example_app(),
        "num-server-rounds=1 client-delay=4",
    );
    // Each node is signalled as soon as its own ClientApp starts (the hasty one must still be
    // working on its message when its grace ends).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut signalled = [false, false];
    while signalled != [true, true] {
        for (node, done) in [&patient, &hasty].into_iter().zip(&mut signalled) {
            if !*done && node.output().contains("ClientApp process started") {
                node.signal(Signal::SIGTERM);
                *done = true;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no ClientApp started:\n{}\n{}",
            patient.output(),
            hasty.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, hasty_out) = hasty.wait(Duration::from_secs(30));
    assert!(status.success(), "{hasty_out}");
    assert!(
        hasty_out.contains("the ClientApp did not reply in time")
            && hasty_out.contains("deactivated"),
        "{hasty_out}"
    );
    let (status, patient_out) = patient.wait(Duration::from_secs(90));
    assert!(status.success(), "{patient_out}");
    assert!(
        !patient_out.contains("did not reply in time") && patient_out.contains("deactivated"),
        "{patient_out}"
    );
    // Both answers reached the SuperLink: the patient node's ClientApp reply and the hasty
    // node's error reply.
    let text = flwr_testkit::metrics::scrape(&metrics);
    assert_eq!(
        flwr_testkit::metrics::value(&text, "flwr_messages_stored_total", &[("kind", "reply")]),
        Some(2.0),
        "{text}\npatient:\n{patient_out}\nhasty:\n{hasty_out}"
    );
}

/// `--grpc-adapter`: our SuperNodes against Flower's SuperLink on that transport, and against
/// ours, beside a Python SuperNode on the adapter.
#[test]
fn grpc_adapter_with_flowers_superlink_and_ours() {
    let s = setup();
    let superlink = SuperLink::start_python(
        Some(&s.tls),
        &s.home("flower-superlink"),
        &["--fleet-api-type", "grpc-adapter"],
    );
    let (_a, _) = s.our_node("flower-a", &superlink.fleet, &["--grpc-adapter"]);
    let (_b, _) = s.our_node(
        "flower-b",
        &superlink.fleet,
        &["--grpc-adapter", "--node-config", "partition-id=1"],
    );
    run_app(&s.cli(&superlink.control), "num-server-rounds=2", 2);
    drop(superlink);

    let ours = SuperLink::start(
        &federation::sibling_binary(SUPERNODE, "superlink"),
        Some(&s.tls),
        &s.home("our-superlink"),
        &["--fleet-api-type", "grpc-adapter"],
    );
    let (_c, _) = s.our_node("ours-a", &ours.fleet, &["--grpc-adapter"]);
    let _python = python_supernode(
        "python-b",
        &ours.fleet,
        Some(&s.tls.ca),
        &s.home("python-b"),
        &["--grpc-adapter", "--node-config", "partition-id=1"],
    );
    let cli = Cli::new(&s.home("cli-ours"), &ours.control, Some(&s.tls.ca));
    run_app(&cli, "num-server-rounds=2", 2);
}

/// A SuperLink of ours with `--enable-supernode-auth` on the Fleet transport `transport`
/// (`grpc-adapter` or `rest`): our SuperNode with a key registered through the CLI joins and
/// serves a run; one with an unregistered key is refused with Flower's text; Flower's own
/// SuperNode (which makes its own key, or signs nothing) cannot join and says `python_refusal`.
fn only_registered_keys_join(s: &Setup, transport: &str, python_refusal: &str) {
    let ours = SuperLink::start(
        &federation::sibling_binary(SUPERNODE, "superlink"),
        Some(&s.tls),
        &s.home(&format!("auth-superlink-{transport}")),
        &["--fleet-api-type", transport, "--enable-supernode-auth"],
    );
    let fleet = if transport == "rest" {
        format!("https://{}", ours.fleet)
    } else {
        ours.fleet.clone()
    };
    let flag = if transport == "rest" {
        "--rest"
    } else {
        "--grpc-adapter"
    };
    let key = pki::ssh_node_key(s.dir.path(), "registered-key");
    let stranger = pki::ssh_node_key(s.dir.path(), "stranger-key");
    let cli = Cli::new(
        &s.home(&format!("cli-auth-{transport}")),
        &ours.control,
        Some(&s.tls.ca),
    );
    cli.register_supernode(&key);
    let (_node, _) = s.our_node(
        "registered",
        &fleet,
        &[flag, "--auth-supernode-private-key", key.to_str().unwrap()],
    );
    run_app(&cli, "num-server-rounds=1 min-nodes=1", 1);

    let (stranger_node, _) = s.our_node(
        "stranger",
        &fleet,
        &[
            flag,
            "--auth-supernode-private-key",
            stranger.to_str().unwrap(),
            "--max-retries",
            "0",
        ],
    );
    let (status, out) = stranger_node.wait(Duration::from_secs(60));
    assert!(
        !status.success(),
        "an unregistered key must not join:\n{out}"
    );
    assert!(
        out.contains("No SuperNode found with the given public key"),
        "{out}"
    );
    let (status, out) = python_supernode(
        "python",
        &fleet,
        Some(&s.tls.ca),
        &s.home(&format!("python-{transport}")),
        &[flag],
    )
    .wait(Duration::from_secs(60));
    assert!(
        !status.success(),
        "Flower's SuperNode must not join:\n{out}"
    );
    assert!(out.contains(python_refusal), "{out}");
}

/// `--rest`: our SuperNodes against Flower's REST SuperLink (which checks no signature), then
/// against ours with `--enable-supernode-auth`: ours signs its REST calls, so a registered key
/// joins and serves a run, an unregistered one is refused with Flower's text, and Flower's own
/// REST SuperNode (which signs nothing) cannot join.
#[test]
fn rest_with_flowers_superlink_and_ours() {
    let s = setup();
    let superlink = SuperLink::start_python(
        Some(&s.tls),
        &s.home("flower-superlink"),
        &["--fleet-api-type", "rest"],
    );
    let url = format!("https://{}", superlink.fleet);
    let (_a, _) = s.our_node("flower-a", &url, &["--rest"]);
    let (_b, _) = s.our_node(
        "flower-b",
        &url,
        &["--rest", "--node-config", "partition-id=1"],
    );
    run_app(&s.cli(&superlink.control), "num-server-rounds=2", 2);
    drop(superlink);

    only_registered_keys_join(&s, "rest", "Failed to register node");
}

/// A stand-in for Flower Hub's Platform API on `listener`: `POST /v1/hub/fetch-fab` answers a
/// download link for the versions of `@acme/numpy-fedavg` in `versions`, with their verification
/// (404 with the versions there are for any other), and the link serves `fab`.
async fn serve_hub(
    listener: tokio::net::TcpListener,
    fab: bytes::Bytes,
    versions: Vec<(&'static str, serde_json::Value)>,
    stop: tokio_util::sync::CancellationToken,
) {
    use http_body_util::{BodyExt, Full};
    let base = format!("http://{}", listener.local_addr().unwrap());
    let service = tower::service_fn(
        move |request: http::Request<flwr_transport::server::BudgetBody>| {
            let (fab, versions, base) = (fab.clone(), versions.clone(), base.clone());
            async move {
                let path = request.uri().path().to_owned();
                let asked = request.into_body().collect().await.unwrap().to_bytes();
                let (status, body) = match path.as_str() {
                    "/v1/hub/fetch-fab" => {
                        let asked: serde_json::Value = serde_json::from_slice(&asked).unwrap();
                        assert_eq!(asked["flwr_version"], "1.28.0", "{asked}");
                        let known = versions
                            .iter()
                            .find(|(v, _)| asked["app_version"] == *v)
                            .filter(|_| asked["app_id"] == "@acme/numpy-fedavg");
                        if let Some((_, verification)) = known {
                            let link = serde_json::json!({
                                "fab_url": format!("{base}/fabs/numpy-fedavg.fab"),
                                "verifications": [verification],
                            });
                            (200, bytes::Bytes::from(link.to_string()))
                        } else {
                            let available: Vec<&str> = versions.iter().map(|(v, _)| *v).collect();
                            let detail = serde_json::json!({
                                "detail": {"available_app_versions": available}
                            });
                            (404, bytes::Bytes::from(detail.to_string()))
                        }
                    }
                    "/fabs/numpy-fedavg.fab" => (200, fab),
                    _ => (404, bytes::Bytes::new()),
                };
                let mut response = http::Response::new(Full::new(body));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        },
    );
    let options = flwr_transport::server::ServeOptions {
        protocol: flwr_transport::server::Protocol::Http1,
        ..Default::default()
    };
    flwr_transport::server::serve(service, listener, None, options, stop).await;
}

/// `flwr run @account/app==x.y.z` (Flower Hub), with the Platform API played by a local server
/// (`--platform-api-url`): our SuperLink fetches the FAB and its publisher signature, stores them
/// together and hands both to SuperNodes, whose `--trusted-entities` accept it; the run completes
/// with the predicted model. The same FAB signed by a key the nodes do not trust: the nodes
/// answer with an error reply that says why, and the run fails within seconds. A version the
/// Platform API does not have is refused with Flower's text, naming the versions there are.
#[test]
fn flower_hub_runs_reach_trusted_supernodes_with_their_signatures() {
    use aws_lc_rs::signature::Ed25519KeyPair;
    let s = setup();
    // The example app as `flwr build` packs it, signed as Flower Hub signs.
    let build = s.home("build");
    std::fs::create_dir_all(&build).unwrap();
    let (status, out) = flwr_testkit::process::run(
        std::process::Command::new(flwr_testkit::python::tool("flwr"))
            .args(["build", "--app"])
            .arg(federation::example_app())
            .current_dir(&build)
            .env("PATH", federation::path_with_venv()),
    );
    assert!(status.success(), "flwr build: {out}");
    let fab_file = std::fs::read_dir(&build)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "fab"))
        .expect("flwr build wrote a .fab");
    let fab = bytes::Bytes::from(std::fs::read(fab_file).unwrap());
    let publisher = Ed25519KeyPair::generate().unwrap();
    let stranger = Ed25519KeyPair::generate().unwrap();
    let verification_of = |key: &Ed25519KeyPair, content: &[u8]| {
        let signed: serde_json::Value =
            serde_json::from_str(&common::signature(key, content)).unwrap();
        let mut v = serde_json::json!({"public_key_id": "fpk_acme"});
        for (k, x) in signed.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let verification = |key: &Ed25519KeyPair| verification_of(key, &fab);
    let versions = vec![
        ("1.0.0", verification(&publisher)),
        ("1.0.1", verification(&stranger)),
        ("1.0.2", verification_of(&publisher, b"other bytes")),
    ];
    let trusted = s.home("trusted-entities.yaml");
    std::fs::write(
        &trusted,
        format!("fpk_acme: '{}'\n", common::ssh_public(&publisher)),
    )
    .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let hub_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    runtime.spawn(serve_hub(listener, fab, versions, stop.clone()));

    let superlink = SuperLink::start(
        &federation::sibling_binary(SUPERNODE, "superlink"),
        Some(&s.tls),
        &s.home("superlink"),
        &["--platform-api-url", &hub_url],
    );
    let trusted = trusted.to_str().unwrap();
    let (a, _) = s.our_node("a", &superlink.fleet, &["--trusted-entities", trusted]);
    let (_b, _) = s.our_node(
        "b",
        &superlink.fleet,
        &[
            "--trusted-entities",
            trusted,
            "--node-config",
            "partition-id=1",
        ],
    );
    let cli = s.cli(&superlink.control);
    run_app_from(
        &cli,
        std::path::Path::new("@acme/numpy-fedavg==1.0.0"),
        "num-server-rounds=2",
        2,
    );

    // Signed by a key the nodes do not trust, signed over other bytes (a tampered FAB), and sent
    // from a local directory (no license): each run fails within seconds, the nodes saying why.
    // (The local app differs from the signed one by a comment in its code: the same bytes as a FAB
    // signed on Flower Hub would carry its verifications, which are about the bytes.)
    let local = s.home("local-app");
    let (status, out) = flwr_testkit::process::run(
        std::process::Command::new("cp")
            .arg("-r")
            .arg(federation::example_app())
            .arg(&local),
    );
    assert!(status.success(), "{out}");
    let init = local.join("numpy_fedavg/__init__.py");
    let mut text = std::fs::read_to_string(&init).unwrap();
    text.push_str("\n# a local change\n");
    std::fs::write(&init, text).unwrap();
    for (app, why) in [
        (
            std::path::Path::new("@acme/numpy-fedavg==1.0.1"),
            "not signed by a trusted entity",
        ),
        (
            std::path::Path::new("@acme/numpy-fedavg==1.0.2"),
            "does not verify",
        ),
        (local.as_path(), "carries no license"),
    ] {
        let started = Instant::now();
        let (_, out) = cli
            .start_run_streaming(app, "num-server-rounds=1")
            .wait(Duration::from_secs(120));
        let run_id = Cli::run_id_in(&out);
        let status = cli.await_status(run_id, "finished:failed", Duration::from_secs(60));
        assert_eq!(status, "finished:failed", "{}: {out}", app.display());
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{}: the run took {:?} to fail",
            app.display(),
            started.elapsed()
        );
        assert!(a.output().contains(why), "{why}: {}", a.output());
    }

    let (status, out) = cli
        .start_run_streaming(std::path::Path::new("@acme/numpy-fedavg==9.9.9"), "")
        .wait(Duration::from_secs(60));
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("@acme/numpy-fedavg==9.9.9 not found in Platform API")
            && out.contains("1.0.0, 1.0.1, 1.0.2"),
        "{out}"
    );
    stop.cancel();
}

#[test]
fn all_ours_and_a_mixed_federation() {
    let s = setup();
    let mut superlink = SuperLink::start(
        &federation::sibling_binary(SUPERNODE, "superlink"),
        Some(&s.tls),
        &s.home("superlink"),
        &["--metrics-address", "127.0.0.1:0"],
    );
    let out = superlink
        .proc
        .wait_for_output("Metrics serving", Duration::from_secs(10));
    let link_metrics = federation::logged_address(&out, "Metrics serving");
    let (mut a, _) = s.our_node(
        "node-a",
        &superlink.fleet,
        &["--metrics-address", "127.0.0.1:0"],
    );
    let out = a.wait_for_output("Metrics serving", Duration::from_secs(10));
    let node_metrics = federation::logged_address(&out, "Metrics serving");
    let (b, appio_b) = s.our_node("node-b", &superlink.fleet, &["--isolation", "process"]);
    let executor = clientapp_executor(&appio_b, &s.home("executor-b"));
    let cli = s.cli(&superlink.control);
    run_app(&cli, "num-server-rounds=1", 1);
    // node-a forks its ClientApps (the default, --clientapp-launch fork) from a launcher that
    // imported flwr once; each message still ran in a fresh process.
    let out = a.output();
    assert!(out.contains("ClientApp process started (forked)"), "{out}");
    assert_fresh_process_per_message(&out, 2);

    // Our SuperNodes ask our SuperLink to hold their pulls (the long poll): instructions reach
    // them as they are stored, not at their next poll.
    use flwr_testkit::metrics::{scrape, value};
    let text = scrape(&node_metrics);
    assert!(
        value(&text, "flwr_held_pulls_total", &[]).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    let text = scrape(&link_metrics);
    assert!(
        value(
            &text,
            "flwr_fleet_held_pulls_total",
            &[("outcome", "instruction")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );

    // Mixed: node-b leaves (gracefully: it deactivates and unregisters), a Python SuperNode
    // joins; the next run has one SuperNode of each kind.
    b.signal(Signal::SIGTERM);
    let (status, out) = b.wait(Duration::from_secs(15));
    assert!(status.success(), "{out}");
    assert!(
        out.contains("deactivated") && out.contains("unregistered"),
        "{out}"
    );
    drop(executor);
    let _python = python_supernode(
        "python-node",
        &superlink.fleet,
        Some(&s.tls.ca),
        &s.home("python-node"),
        &[],
    );
    run_app(&cli, "num-server-rounds=1", 1);
}

#[test]
fn a_crashed_clientapp_gets_an_error_reply_to_the_superlink() {
    let s = setup();
    let mut superlink = SuperLink::start(
        &federation::sibling_binary(SUPERNODE, "superlink"),
        Some(&s.tls),
        &s.home("superlink"),
        &[],
    );
    // A healthy node, and one whose "ClientApp" exits at once without answering.
    let (_good, _) = s.our_node("good", &superlink.fleet, &[]);
    let mut cmd = flwr_testkit::process::command(SUPERNODE);
    cmd.env("FLWR_CLIENTAPP_COMMAND", "false")
        .env("PATH", federation::path_with_venv());
    cmd.arg("--root-certificates")
        .arg(&s.tls.ca)
        .arg("--superlink")
        .arg(&superlink.fleet);
    cmd.args(["--clientappio-api-address", "127.0.0.1:0"]);
    let bad = Proc::spawn("crashing", cmd);
    // Both nodes joined before the run samples them.
    superlink
        .proc
        .wait_for_output_count("SuperNode activated", 2, Duration::from_secs(60));
    let cli = s.cli(&superlink.control);
    let (status, out) = cli
        .start_run_streaming(
            &federation::example_app(),
            "num-server-rounds=1 min-nodes=1",
        )
        .wait(Duration::from_secs(120));
    assert!(status.success(), "{out}");
    // Flower 1.28 drops such replies, and the ServerApp would wait for the node until it goes
    // offline; ours delivers CLIENT_APP_CRASHED at once.
    assert!(out.contains("Received 1 results and 1 failures"), "{out}");
    assert!(
        bad.output().contains("exited without replying"),
        "{}",
        bad.output()
    );
}

#[test]
fn registered_key_with_python_superlink_auth() {
    let s = setup();
    let superlink = SuperLink::start_python(
        Some(&s.tls),
        &s.home("superlink"),
        &["--enable-supernode-auth"],
    );
    let key = pki::ssh_node_key(s.dir.path(), "node-key");
    let cli = s.cli(&superlink.control);
    cli.register_supernode(&key);
    let (_node, _) = s.our_node(
        "registered",
        &superlink.fleet,
        &["--auth-supernode-private-key", key.to_str().unwrap()],
    );
    run_app(&cli, "num-server-rounds=1 min-nodes=1", 1);
    let (status, nodes) = cli.run(&[
        "supernode",
        "list",
        federation::CONNECTION,
        "--format",
        "json",
    ]);
    assert!(status.success() && nodes.contains("\"online\""), "{nodes}");
}

/// `--enable-supernode-auth` on the grpc-adapter transport (which Flower refuses): our SuperNode
/// with a registered key joins over `--grpc-adapter` and serves a run; one with an unregistered
/// key, and Flower's SuperNode (which makes its own key on this transport), are refused.
#[test]
fn registered_keys_over_the_grpc_adapter() {
    only_registered_keys_join(&setup(), "grpc-adapter", "must be registered via the CLI");
}

fn restart_keeps_serving(database: bool) {
    let s = setup();
    // The restarted SuperLink must come back where the nodes look for it: reserved ports, which
    // nothing else in the test run takes meanwhile.
    let ports: Vec<String> = (0..3).map(|_| ports::reserve_address()).collect();
    let addresses = [ports[0].as_str(), ports[1].as_str(), ports[2].as_str()];
    let db = s.dir.path().join("superlink.db");
    let flags: Vec<&str> = if database {
        vec!["--database", db.to_str().unwrap()]
    } else {
        vec![]
    };
    let mut superlink = SuperLink::start_at(
        &federation::sibling_binary(SUPERNODE, "superlink"),
        Some(&s.tls),
        &s.home("superlink"),
        addresses,
        &flags,
    );
    let (mut a, _) = s.our_node("node-a", &superlink.fleet, &[]);
    let (_b, _) = s.our_node("node-b", &superlink.fleet, &[]);
    let cli = s.cli(&superlink.control);
    run_app(&cli, "num-server-rounds=1", 1);

    superlink.proc.signal(Signal::SIGTERM);
    let _ = superlink.proc.wait(Duration::from_secs(15));
    superlink = SuperLink::start_at(
        &federation::sibling_binary(SUPERNODE, "superlink"),
        Some(&s.tls),
        &s.home("superlink"),
        addresses,
        &flags,
    );
    // Both nodes come back by themselves: the next run needs two of them.
    run_app(&cli, "num-server-rounds=1", 1);
    if !database {
        assert!(a.output().contains("joining again"), "{}", a.output());
    }
    assert!(a.try_status().is_none(), "the node keeps running");
    drop(superlink);
    let _ = &mut a;
}

#[test]
fn our_supernodes_survive_a_superlink_restart_with_database() {
    restart_keeps_serving(true);
}

#[test]
fn our_supernodes_rejoin_a_superlink_restarted_in_memory() {
    restart_keeps_serving(false);
}

#[test]
fn retry_policy_gives_up_like_flower() {
    let s = setup();
    // A closed port (reserved: nothing listens there): 3 tries with --max-retries 2, then exit 1
    // with Flower's words.
    let closed = ports::reserve_address();
    let (p, _) = s.our_node("closed", &closed, &["--max-retries", "2"]);
    let (status, out) = p.wait(Duration::from_secs(90));
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("Giving up reconnection after") && out.contains("and 3 tries"),
        "{out}"
    );
    assert_eq!(out.matches("retrying in").count(), 2, "{out}");

    // A SuperLink whose certificate another CA signed: gives up at once, naming the problem.
    let superlink = SuperLink::start(
        &federation::sibling_binary(SUPERNODE, "superlink"),
        Some(&s.tls),
        &s.home("superlink"),
        &[],
    );
    let other = tempfile::tempdir().unwrap();
    let (_ca, other_tls) = pki::write_tls_files(other.path(), pki::LOCAL_SANS);
    let (p, _) = our_supernode(
        SUPERNODE.as_ref(),
        "wrong-ca",
        &superlink.fleet,
        Some(&other_tls.ca),
        &s.home("wrong-ca"),
        &[],
    );
    let (status, out) = p.wait(Duration::from_secs(30));
    assert!(!status.success(), "{out}");
    assert!(
        !out.contains("retrying in"),
        "no retries on a certificate problem:\n{out}"
    );
    assert!(
        out.contains("TLS handshake") && out.to_lowercase().contains("certificate"),
        "{out}"
    );
}
