//! The `supernode` binary's command line, black-box: Flower's flags, defaults and rules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::process::Command;

use flwr_supernode::cli::{self, Isolation};
use flwr_supernode::config::{self, ConfigError, KeySource, Transport};
use flwr_testkit::pki;
use flwr_testkit::process::run;
use flwr_transport::tls::{ClientTlsChoice, TlsError};

const BIN: &str = env!("CARGO_BIN_EXE_supernode");

fn supernode(args: &[&str]) -> (i32, String) {
    let (status, out) = run(Command::new(BIN).args(args).env_remove("RUST_LOG"));
    (status.code().unwrap_or(-1), out)
}

fn parse(args: &[&str]) -> Result<config::Config, ConfigError> {
    let argv = std::iter::once("supernode").chain(args.iter().copied());
    config::from_parsed(&cli::parse_from(argv).unwrap()).map(|(c, _)| c)
}

#[test]
fn defaults_equal_flowers() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.superlink.to_string(), "0.0.0.0:9092");
    assert_eq!(
        c.tls,
        ClientTlsChoice::SystemRoots,
        "no flag: TLS with the system trust store"
    );
    assert_eq!(c.key, KeySource::Generate);
    assert_eq!((c.max_retries, c.max_wait_time), (None, None));
    assert_eq!(c.isolation, Isolation::Subprocess);
    assert_eq!(c.clientappio_address.to_string(), "0.0.0.0:9094");
    assert_eq!(c.health_address, None);
    assert_eq!(c.node_config, None);
}

#[test]
fn flower_rules() {
    assert!(matches!(
        parse(&["--insecure", "--root-certificates", "ca.crt"]),
        Err(ConfigError::Tls(TlsError::InsecureWithRootCertificates))
    ));
    assert!(matches!(
        parse(&["--insecure", "--auth-supernode-private-key", "k"]),
        Err(ConfigError::KeyWithoutTls)
    ));
    let transport = |args: &[&str]| parse(args).unwrap().transport;
    assert_eq!(transport(&["--grpc-adapter"]), Transport::GrpcAdapter);
    assert_eq!(transport(&["--grpc-rere"]), Transport::GrpcRere);
    assert_eq!(transport(&[]), Transport::GrpcRere);
    // REST: the URL's scheme decides TLS, as in Flower.
    let c = parse(&["--rest", "--superlink", "https://link.example:9095"]).unwrap();
    assert_eq!(c.transport, Transport::Rest);
    assert_eq!(c.superlink.to_string(), "link.example:9095");
    assert_eq!(c.tls, ClientTlsChoice::SystemRoots);
    let c = parse(&[
        "--rest",
        "--root-certificates",
        "ca.crt",
        "--superlink",
        "https://127.0.0.1:9095/",
    ])
    .unwrap();
    assert_eq!(c.tls, ClientTlsChoice::RootCertificates("ca.crt".into()));
    assert_eq!(c.superlink.to_string(), "127.0.0.1:9095");
    let c = parse(&["--rest", "--superlink", "http://127.0.0.1:9095"]).unwrap();
    assert_eq!(c.tls, ClientTlsChoice::Insecure);
    let e = parse(&["--rest", "--superlink", "127.0.0.1:9095"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`https://` or `http://`"), "{e}");
    assert!(matches!(
        parse(&[
            "--rest",
            "--insecure",
            "--superlink",
            "https://127.0.0.1:9095"
        ]),
        Err(ConfigError::RestInsecureHttps(_))
    ));
    let c = parse(&[
        "--grpc-rere",
        "--root-certificates",
        "ca.crt",
        "--superlink",
        "[::1]:9092",
    ])
    .unwrap();
    assert_eq!(c.tls, ClientTlsChoice::RootCertificates("ca.crt".into()));
    assert_eq!(c.superlink.to_string(), "[::1]:9092");
    let e = parse(&["--superlink", "superlink"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`--superlink`") && e.contains("HOST:PORT"),
        "{e}"
    );
    // The deprecated public key flag is accepted and ignored.
    parse(&["--auth-supernode-public-key", "k.pub"]).unwrap();
}

#[test]
fn numbers_and_files_of_the_flags() {
    let c = parse(&["--trusted-entities", "t.yaml"]).unwrap();
    assert_eq!(c.trusted_entities, Some("t.yaml".into()));
    let c = parse(&[
        "--node-config",
        "a=1",
        "--isolation",
        "process",
        "--max-retries",
        "2",
        "--max-wait-time",
        "1.5",
    ])
    .unwrap();
    assert_eq!((c.isolation, c.max_retries), (Isolation::Process, Some(2)));
    assert_eq!(
        c.max_wait_time,
        Some(std::time::Duration::from_millis(1500))
    );
    assert!(matches!(
        parse(&["--max-retries", "-1"]),
        Err(ConfigError::Negative { .. })
    ));
    // Seconds: a number, zero or more; more than a clock holds is no limit, never a panic.
    for flag in ["--max-wait-time", "--shutdown-grace-seconds"] {
        for bad in ["-1", "NaN", "inf"] {
            let e = parse(&[flag, bad]).unwrap_err().to_string();
            assert!(
                e.contains(&flag[2..]) && e.contains("zero or more"),
                "{flag} {bad}: {e}"
            );
        }
    }
    let c = parse(&[
        "--max-wait-time",
        "1e300",
        "--shutdown-grace-seconds",
        "1e300",
    ])
    .unwrap();
    assert_eq!(c.max_wait_time, Some(std::time::Duration::MAX));
    assert_eq!(c.shutdown_grace, std::time::Duration::MAX);
}

#[test]
fn binary_messages_and_exit_codes() {
    let (code, out) = supernode(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("Flower version: 1.28.0"), "{out}");
    let (code, out) = supernode(&["--grpc-rere", "--rest"]);
    assert_eq!(code, 2, "mutually exclusive transports: {out}");
    let (code, out) = supernode(&["--insecure", "--root-certificates", "ca.crt"]);
    assert_eq!(code, 1);
    assert!(out.contains("Conflicting options"), "{out}");
    let (code, out) = supernode(&["--root-certificates", "/nonexistent/ca.crt"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("Path argument `--root-certificates` does not point to a file"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (_ca, files) = pki::write_tls_files(dir.path(), pki::LOCAL_SANS);
    let ca = files.ca.to_str().unwrap();
    // A PEM key where an OpenSSH key is required.
    let (code, out) = supernode(&[
        "--root-certificates",
        ca,
        "--auth-supernode-private-key",
        files.key.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("Unable to parse the private key file"),
        "{out}"
    );
    // A bad node config names the pair.
    let (code, out) = supernode(&[
        "--insecure",
        "--node-config",
        "name=abc",
        "--clientappio-api-address",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("`name=abc`"), "{out}");
}

/// SIGTERM at the SuperNode's first line (before it has built anything) ends it gracefully: the
/// handlers are in place before it says anything.
#[test]
fn sigterm_as_soon_as_it_starts_ends_it_gracefully() {
    let closed = flwr_testkit::ports::reserve_address();
    let mut cmd = flwr_testkit::process::command(BIN);
    cmd.args(["--insecure", "--superlink", &closed]);
    cmd.args([
        "--health-server-address",
        "127.0.0.1:0",
        "--clientappio-api-address",
        "127.0.0.1:0",
    ]);
    let mut p = flwr_testkit::process::Proc::spawn("supernode", cmd);
    p.signal_at_output(
        "Starting Flower SuperNode",
        flwr_testkit::process::Signal::SIGTERM,
        std::time::Duration::from_secs(20),
    );
    let (status, out) = p.wait(std::time::Duration::from_secs(15));
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("terminated gracefully"), "{out}");
}

#[tokio::test]
async fn health_service_and_sigterm_while_connecting() {
    // Nothing listens on a reserved port; the health service binds port 0 and logs its address.
    let closed = flwr_testkit::ports::reserve_address();
    let mut cmd = flwr_testkit::process::command(BIN);
    cmd.args([
        "--insecure",
        "--superlink",
        &closed,
        "--health-server-address",
        "127.0.0.1:0",
    ]);
    cmd.args(["--clientappio-api-address", "127.0.0.1:0"]);
    let mut p = flwr_testkit::process::Proc::spawn("supernode", cmd);
    let out = p.wait_for_output("retrying in", std::time::Duration::from_secs(20));
    let health = flwr_testkit::federation::logged_address(&out, "Health service serving");
    let channel = flwr_transport::grpc::channel(&health.parse().unwrap(), None);
    assert!(flwr_transport::health::check(channel).await.unwrap());
    p.signal(flwr_testkit::process::Signal::SIGTERM);
    let (status, out) = p.wait(std::time::Duration::from_secs(15));
    assert!(
        status.success(),
        "SIGTERM ends the SuperNode cleanly:\n{out}"
    );
}
