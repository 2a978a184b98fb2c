//! The load generator's messages are accepted by both SuperLinks: a tiny fan-out against ours
//! and against Flower's `flower-superlink` 1.28.0, with TLS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use flwr_loadgen::workload::{fan_out, FanOut, Target};
use flwr_testkit::federation::SuperLink;
use flwr_testkit::pki;
use flwr_transport::tls::{load_client_config, ClientTlsChoice};

fn target(s: &SuperLink, ca: &std::path::Path) -> Target {
    let tls = load_client_config(&ClientTlsChoice::RootCertificates(ca.to_path_buf()))
        .unwrap()
        .map(|l| l.config);
    Target {
        control: s.control.parse().unwrap(),
        fleet: s.fleet.parse().unwrap(),
        serverappio: s.serverappio.parse().unwrap(),
        tls,
    }
}

/// Three nodes, 6 MiB (two chunks per array), two rounds; every call signed afresh, as
/// Flower's SuperNode signs.
fn smoke() -> FanOut {
    FanOut {
        sig_reuse: None,
        ..FanOut::new(3, 6 * 1024 * 1024, 2)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_smoke_against_our_superlink() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certs"), pki::LOCAL_SANS);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_flwr-bench")).with_file_name("superlink");
    assert!(
        bin.exists(),
        "{} missing: run the workspace's tests",
        bin.display()
    );
    let s = SuperLink::start(&bin, Some(&tls), dir.path(), &["--isolation", "process"]);
    let rounds = within(fan_out(&target(&s, &tls.ca), smoke()))
        .await
        .unwrap();
    assert_eq!(rounds.len(), 2);
    assert!(rounds
        .iter()
        .all(|r| r.messages == 6 && r.payload_bytes > 6 * 6 * 1024 * 1024));
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_smoke_against_flowers_superlink() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certs"), pki::LOCAL_SANS);
    let s = SuperLink::start_python(Some(&tls), dir.path(), &["--isolation", "process"]);
    let rounds = within(fan_out(&target(&s, &tls.ca), smoke()))
        .await
        .unwrap();
    assert_eq!(rounds.len(), 2);
    assert!(rounds.iter().all(|r| r.messages == 6));
}

/// A fan-out that never finishes (a reply lost for good) fails its test instead of hanging it.
async fn within<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(300), work)
        .await
        .expect("the fan-out did not finish within 300 s")
}
