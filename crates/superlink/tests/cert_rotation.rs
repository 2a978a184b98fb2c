//! TLS material is replaced without a restart. The SuperLink's certificate, on SIGHUP and when
//! its files change: new connections get the new certificate, open ones keep working, and a
//! broken replacement is logged while the current certificate stays in use. Our SuperNode's
//! `--root-certificates`, the same way, for its new connections.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};

use flwr_proto::proto as pb;
use flwr_testkit::federation::SuperLink;
use flwr_testkit::pki::{self, TlsFiles};
use flwr_testkit::process::{Proc, Signal};
use flwr_transport::tls::{load_client_config, ClientTlsChoice};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

/// A Control API client that trusts only the CA in `ca`.
fn client(control: &str, ca: &Path) -> pb::control_client::ControlClient<Channel> {
    let tls = load_client_config(&ClientTlsChoice::RootCertificates(ca.to_path_buf()))
        .unwrap()
        .unwrap();
    let channel = flwr_transport::grpc::channel(&control.parse().unwrap(), Some(tls.config));
    pb::control_client::ControlClient::new(channel)
}

/// One call through `client`: Ok when the TLS handshake (and the call) went through.
async fn call(
    client: &mut pb::control_client::ControlClient<Channel>,
) -> Result<(), tonic::Status> {
    client
        .list_runs(pb::ListRunsRequest {
            run_id: None,
            limit: None,
        })
        .await
        .map(|_| ())
}

/// Puts the files of `from` in place of those of `to`, each by a rename (as an operator's
/// tooling should: a reader never sees half a file).
fn replace(from: &TlsFiles, to: &TlsFiles) {
    for (a, b) in [
        (&from.ca, &to.ca),
        (&from.cert, &to.cert),
        (&from.key, &to.key),
    ] {
        let staged = b.with_extension("new");
        std::fs::copy(a, &staged).unwrap();
        std::fs::rename(&staged, b).unwrap();
    }
}

/// Whole days until the server certificate in use expires, from the SuperLink's metrics (the
/// test certificates end at midnight UTC, `N` days from today).
fn days_left(metrics: &str) -> i64 {
    let text = flwr_testkit::metrics::scrape(metrics);
    let expiry = flwr_testkit::metrics::value(
        &text,
        "flwr_tls_certificate_expiry_timestamp_seconds",
        &[("file", "--ssl-certfile")],
    )
    .unwrap_or_else(|| panic!("no certificate expiry in:\n{text}"));
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    (expiry as i64 - today) / 86_400
}

/// Waits until `needle` occurs in the output more often than `before` times.
fn wait_for_another(proc: &mut Proc, needle: &str, before: usize) {
    proc.wait_for_output_count(needle, before + 1, Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_is_replaced_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, live) = pki::write_tls_files(&dir.path().join("live"), pki::LOCAL_SANS);
    let first_ca = dir.path().join("first-ca.crt");
    std::fs::copy(&live.ca, &first_ca).unwrap();
    let mut superlink = SuperLink::start(
        BIN.as_ref(),
        Some(&live),
        &dir.path().join("home"),
        &["--isolation", "process", "--metrics-address", "127.0.0.1:0"],
    );
    let out = superlink
        .proc
        .wait_for_output("Metrics serving", Duration::from_secs(10));
    let metrics = flwr_testkit::federation::logged_address(&out, "Metrics serving");
    let mut open = client(&superlink.control, &first_ca);
    call(&mut open).await.expect("the first certificate serves");
    assert_eq!(days_left(&metrics), 365, "the first certificate's expiry");

    // SIGHUP after the files were replaced with a pair from another CA, valid for 100 days.
    let (_second, second) = pki::write_tls_files_valid(
        &dir.path().join("second"),
        pki::LOCAL_SANS,
        pki::Validity {
            from_days: -1,
            to_days: 100,
        },
    );
    let on_signal = "loaded again (SIGHUP): new connections use it";
    let before = superlink.proc.output().matches(on_signal).count();
    replace(&second, &live);
    superlink.proc.signal(Signal::SIGHUP);
    wait_for_another(&mut superlink.proc, on_signal, before);
    call(&mut client(&superlink.control, &second.ca))
        .await
        .expect("a client of the new CA connects");
    call(&mut client(&superlink.control, &first_ca))
        .await
        .expect_err("a client that trusts only the old CA is refused");
    call(&mut open)
        .await
        .expect("the connection opened before goes on");
    assert_eq!(
        days_left(&metrics),
        100,
        "the expiry of the certificate in use"
    );

    // A broken replacement: said so, and the current certificate stays.
    let refused = "TLS certificate (--ssl-certfile";
    let refused_tail = "not loaded again (SIGHUP); what is in use stays: `--ssl-certfile`";
    let before = superlink.proc.output().matches(refused_tail).count();
    std::fs::write(&live.cert, "not a certificate\n").unwrap();
    superlink.proc.signal(Signal::SIGHUP);
    wait_for_another(&mut superlink.proc, refused_tail, before);
    assert!(superlink.proc.output().contains(refused));
    call(&mut client(&superlink.control, &second.ca))
        .await
        .expect("the current certificate still serves");
    assert_eq!(days_left(&metrics), 100, "a refused file changes nothing");

    // Files changed without a signal: found by the periodic check.
    let (_third, third) = pki::write_tls_files(&dir.path().join("third"), pki::LOCAL_SANS);
    let on_change = "loaded again (the files changed): new connections use it";
    let before = superlink.proc.output().matches(on_change).count();
    replace(&third, &live);
    wait_for_another(&mut superlink.proc, on_change, before);
    // The files are renamed one at a time: a check between two renames may load part of them,
    // the next check the rest.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = call(&mut client(&superlink.control, &third.ca)).await {
        assert!(
            Instant::now() < deadline,
            "a client of the third CA does not connect: {e:?}\n{}",
            superlink.proc.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    call(&mut client(&superlink.control, &second.ca))
        .await
        .expect_err("the second CA no longer does");

    superlink.proc.signal(Signal::SIGTERM);
    let (status, out) = superlink.proc.wait(Duration::from_secs(30));
    assert!(status.success(), "{out}");
}

/// Our SuperNode loads `--root-certificates` again the same way, for its new connections: both
/// sides move to another CA (files replaced, SIGHUP to each), then the SuperLink restarts, and the
/// node's new connection trusts the new CA and it joins again. Without the reload the node would
/// stop at the handshake ("certificate" problems are not retried).
#[test]
fn a_supernode_trusts_new_roots_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, live) = pki::write_tls_files(&dir.path().join("live"), pki::LOCAL_SANS);
    let roots = dir.path().join("node-roots.crt");
    std::fs::copy(&live.ca, &roots).unwrap();
    // Reserved ports: the restarted SuperLink comes back where the node looks for it.
    let ports: Vec<String> = (0..3)
        .map(|_| flwr_testkit::ports::reserve_address())
        .collect();
    let addresses = [ports[0].as_str(), ports[1].as_str(), ports[2].as_str()];
    let home = dir.path().join("home");
    let flags = ["--isolation", "process"];
    let mut superlink = SuperLink::start_at(BIN.as_ref(), Some(&live), &home, addresses, &flags);

    let supernode = flwr_testkit::federation::sibling_binary(BIN, "supernode");
    let mut cmd = flwr_testkit::process::command(&supernode);
    cmd.env("NO_COLOR", "1")
        .arg("--root-certificates")
        .arg(&roots)
        .args(["--superlink", &superlink.fleet])
        .args(["--isolation", "process"])
        .args(["--clientappio-api-address", "127.0.0.1:0"]);
    let mut node = Proc::spawn("supernode", cmd);
    let joined = "activated; pulling messages";
    wait_for_another(&mut node, joined, 0);

    let (_second, second) = pki::write_tls_files(&dir.path().join("second"), pki::LOCAL_SANS);
    replace(&second, &live);
    superlink.proc.signal(Signal::SIGHUP);
    wait_for_another(&mut superlink.proc, "loaded again (SIGHUP)", 0);
    let staged = roots.with_extension("new");
    std::fs::copy(&second.ca, &staged).unwrap();
    std::fs::rename(&staged, &roots).unwrap();
    // The node's own check of its files may log a reload first: wait for the signal's.
    let on_signal = "loaded again (SIGHUP): new connections use it";
    let before = node.output().matches(on_signal).count();
    node.signal(Signal::SIGHUP);
    wait_for_another(&mut node, on_signal, before);
    assert!(
        node.output()
            .contains("root certificates (--root-certificates"),
        "{}",
        node.output()
    );

    superlink.proc.signal(Signal::SIGTERM);
    let _ = superlink.proc.wait(Duration::from_secs(15));
    let _superlink = SuperLink::start_at(BIN.as_ref(), Some(&live), &home, addresses, &flags);
    wait_for_another(&mut node, joined, 1);
    assert!(node.output().contains("joining again"), "{}", node.output());
}
