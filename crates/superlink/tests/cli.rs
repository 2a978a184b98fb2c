//! The `superlink` binary's command line, black-box: Flower's flags and defaults, its TLS and
//! address rules, clear refusals, port 0, and shutdown on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flwr_superlink::cli::{self, FleetApiType, Isolation};
use flwr_superlink::config::{self, ConfigError, Database};
use flwr_testkit::pki;
use flwr_testkit::process::{command, run, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

fn superlink(args: &[&str]) -> (i32, String) {
    let (status, out) = run(Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1"));
    (status.code().unwrap_or(-1), out)
}

/// The three APIs of a SuperLink on ports the system picks.
const ANY_PORTS: [&str; 6] = [
    "--serverappio-api-address",
    "127.0.0.1:0",
    "--fleet-api-address",
    "127.0.0.1:0",
    "--control-api-address",
    "127.0.0.1:0",
];

fn parse(args: &[&str]) -> Result<config::Config, ConfigError> {
    let argv = std::iter::once("superlink").chain(args.iter().copied());
    config::from_parsed(&cli::parse_from(argv).unwrap()).map(|(c, _)| c)
}

#[test]
fn defaults_equal_flowers() {
    let c = parse(&["--insecure"]).unwrap();
    assert_eq!(c.serverappio_address.to_string(), "0.0.0.0:9091");
    assert_eq!(c.fleet_address.unwrap().to_string(), "0.0.0.0:9092");
    assert_eq!(c.control_address.to_string(), "0.0.0.0:9093");
    assert_eq!(c.database, Database::InMemory);
    assert_eq!(c.isolation, Isolation::Subprocess);
    assert!(
        c.storage_dir.ends_with(".flwr/superlink/ffs") || std::env::var_os("FLWR_HOME").is_some()
    );
    assert!(!c.enable_supernode_auth && !c.simulation);
    assert_eq!(c.health_address, None);
    assert_eq!(c.tls, None);
    let a = cli::parse_from(["superlink"]).unwrap().args;
    assert_eq!(
        (a.log_rotation_interval_hours, a.log_rotation_backup_count),
        (24, 7)
    );
    assert_eq!(a.fleet_api_type, FleetApiType::GrpcRere);
    assert_eq!(a.fleet_api_num_workers, 1);
}

#[test]
fn value_syntax_is_argparse_like() {
    // `--flag=value` and `--flag value`, the deprecated alias, IPv6 and names.
    let c = parse(&[
        "--insecure",
        "--serverappio-api-address=[::1]:0",
        "--control-api-address",
        "localhost:1234",
    ])
    .unwrap();
    assert_eq!(c.serverappio_address.to_string(), "[::1]:0");
    assert_eq!(c.control_address.to_string(), "localhost:1234");
    let c = parse(&["--insecure", "--simulationio-api-address", "127.0.0.1:7"]).unwrap();
    assert_eq!(c.serverappio_address.to_string(), "127.0.0.1:7");
    let c = parse(&["--insecure", "--exec-api-address", "127.0.0.1:8"]).unwrap();
    assert_eq!(c.control_address.to_string(), "127.0.0.1:8");
    let c = parse(&["--insecure", "--database", "state.db"]).unwrap();
    assert!(
        matches!(c.database, Database::Sqlite(p) if p.is_absolute() && p.ends_with("state.db"))
    );
    let c = parse(&["--insecure", "--database", ":memory:"]).unwrap();
    assert_eq!(c.database, Database::Sqlite(":memory:".into()));
    let c = parse(&[
        "--insecure",
        "--isolation",
        "process",
        "--storage-dir",
        "/tmp/ffs",
    ])
    .unwrap();
    assert_eq!(
        (c.isolation, c.storage_dir.as_path()),
        (Isolation::Process, Path::new("/tmp/ffs"))
    );
    // The ignored worker count is accepted (with a warning).
    parse(&["--insecure", "--fleet-api-num-workers", "4"]).unwrap();
}

#[test]
fn flower_refusals() {
    assert!(matches!(
        parse(&["--insecure", "--executor", "x"]),
        Err(ConfigError::Executor)
    ));
    assert!(matches!(
        parse(&[
            "--insecure",
            "--control-api-address",
            "1.2.3.4:1",
            "--exec-api-address",
            "1.2.3.4:2"
        ]),
        Err(ConfigError::ControlAndExec)
    ));
    assert!(matches!(
        parse(&["--insecure", "--auth-list-public-keys", "k.csv"]),
        Err(ConfigError::AuthListPublicKeys)
    ));
    assert!(matches!(
        parse(&["--insecure", "--enable-supernode-auth"]),
        Err(ConfigError::AuthNeedsTls)
    ));
    assert!(matches!(
        parse(&["--insecure", "--platform-api-url", "api.flower.ai"]),
        Err(ConfigError::PlatformApiUrl(_))
    ));
    let c = parse(&["--insecure", "--platform-api-url", "http://127.0.0.1:9/v1"]).unwrap();
    assert_eq!(c.platform_api_url, "http://127.0.0.1:9/v1");
    let c = parse(&["--insecure", "--fleet-api-type", "rest"]).unwrap();
    assert_eq!(c.fleet_api_type, FleetApiType::Rest);
    assert_eq!(
        c.fleet_address.unwrap().to_string(),
        "0.0.0.0:9095",
        "Flower's REST default"
    );
    let c = parse(&["--insecure", "--fleet-api-type", "grpc-adapter"]).unwrap();
    assert_eq!(c.fleet_api_type, FleetApiType::GrpcAdapter);
    let e = parse(&["--insecure", "--fleet-api-address", "nowhere"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`--fleet-api-address`") && e.contains("nowhere") && e.contains("HOST:PORT"),
        "{e}"
    );
}

#[test]
fn simulation_runtime_has_no_fleet_api() {
    let c = parse(&["--insecure", "--simulation"]).unwrap();
    assert!(c.simulation);
    assert_eq!(c.fleet_address, None);
}

#[test]
fn version_and_help() {
    let (code, out) = superlink(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("Flower version: 1.28.0"), "{out}");
    let (code, out) = superlink(&["-V"]);
    assert_eq!(code, 0, "{out}");
    let (code, help) = superlink(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--insecure",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--ssl-ca-certfile",
        "--isolation",
        "--database",
        "--storage-dir",
        "--auth-list-public-keys",
        "--enable-supernode-auth",
        "--log-file",
        "--log-rotation-interval-hours",
        "--log-rotation-backup-count",
        "--serverappio-api-address",
        "--simulationio-api-address",
        "--fleet-api-type",
        "--fleet-api-address",
        "--fleet-api-num-workers",
        "--control-api-address",
        "--exec-api-address",
        "--executor",
        "--executor-dir",
        "--executor-config",
        "--simulation",
        "--health-server-address",
    ] {
        assert!(
            flwr_testkit::flags_in_help(&help).contains(flag),
            "{flag} missing from --help:\n{help}"
        );
    }
    // Usage errors exit 2, like argparse.
    let (code, out) = superlink(&["--no-such-flag"]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = superlink(&["--isolation", "thread"]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = superlink(&["--log-rotation-interval-hours", "0"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(">= 1"), "{out}");
}

#[test]
fn tls_flag_rules_exit_1_with_flowers_message() {
    let (code, out) = superlink(&[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("Certificates are required unless running in insecure mode"),
        "{out}"
    );
    let (code, out) = superlink(&["--ssl-certfile", "a.pem", "--ssl-keyfile", "a.key"]);
    assert_eq!(code, 1);
    assert!(out.contains("Missing: --ssl-ca-certfile"), "{out}");
    let (code, out) = superlink(&[
        "--ssl-certfile",
        "a.pem",
        "--ssl-keyfile",
        "a.key",
        "--ssl-ca-certfile",
        "ca.crt",
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("Path argument `--ssl-ca-certfile` does not point to a file"),
        "{out}"
    );
    assert!(!out.contains("serving"), "nothing may be bound: {out}");
}

fn bound_address(output: &str, what: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what} line in:\n{output}"));
    let start = line.find("address=").unwrap() + "address=".len();
    line[start..].split_whitespace().next().unwrap().to_owned()
}

#[tokio::test]
async fn port_zero_tls_serving_health_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, files) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    let mut cmd = command(BIN);
    cmd.current_dir(dir.path()).env("NO_COLOR", "1").args([
        "--ssl-ca-certfile",
        "certificates/ca.crt",
        "--ssl-certfile",
        "certificates/server.pem",
        "--ssl-keyfile",
        "certificates/server.key",
        "--health-server-address",
        "127.0.0.1:0",
    ]);
    cmd.args(ANY_PORTS);
    let mut p = Proc::spawn("superlink", cmd);
    let out = p.wait_for_output("Health service serving", Duration::from_secs(20));
    let health = bound_address(&out, "Health service serving");
    assert!(!health.ends_with(":0"), "the real port is logged: {health}");
    let fleet = bound_address(&out, "Fleet API (grpc-rere) serving");

    let channel = flwr_transport::grpc::channel(&health.parse().unwrap(), None);
    assert!(flwr_transport::health::check(channel).await.unwrap());
    // The Fleet port speaks TLS with the server certificate.
    let tls = flwr_transport::tls::load_client_config(
        &flwr_transport::tls::ClientTlsChoice::RootCertificates(files.ca.clone()),
    )
    .unwrap()
    .unwrap();
    let mut client = tonic_health_probe(&fleet, Some(tls.config)).await;
    assert_eq!(
        client,
        tonic::Code::Unimplemented,
        "the TLS handshake and HTTP/2 work"
    );
    client = tonic_health_probe(&fleet, None).await;
    assert_ne!(
        client,
        tonic::Code::Unimplemented,
        "plaintext must not reach the service"
    );

    p.signal(flwr_testkit::process::Signal::SIGTERM);
    let (status, out) = p.wait(Duration::from_secs(30));
    assert!(status.success(), "{out}");
    assert!(out.contains("terminated gracefully"), "{out}");
}

/// Calls a health check on `addr` and returns the status code (OK when served).
async fn tonic_health_probe(
    addr: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> tonic::Code {
    let channel = flwr_transport::grpc::channel(&addr.parse().unwrap(), tls);
    match flwr_transport::health::check(channel).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

#[test]
fn tls_loading_errors_reach_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, files) = pki::write_tls_files(dir.path(), pki::LOCAL_SANS);
    // The key file is a certificate.
    let (code, out) = superlink(&[
        "--ssl-ca-certfile",
        files.ca.to_str().unwrap(),
        "--ssl-certfile",
        files.cert.to_str().unwrap(),
        "--ssl-keyfile",
        files.cert.to_str().unwrap(),
        "--control-api-address",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("contains no private key") && out.contains("`--ssl-keyfile`"),
        "{out}"
    );
}

/// The Docker images run as UID 49999; a root-owned 0600 key must give the chown advice.
#[test]
fn unreadable_key_names_uid_49999_and_chown() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certificates");
    let (_ca, files) = pki::write_tls_files(&certs, pki::LOCAL_SANS);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in [&files.ca, &files.cert] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let args = [
        "--ssl-ca-certfile",
        "certificates/ca.crt",
        "--ssl-certfile",
        "certificates/server.pem",
        "--ssl-keyfile",
        "certificates/server.key",
        "--control-api-address",
        "127.0.0.1:0",
    ];
    let uid = flwr_transport::files::current_uid();
    let (status, out) = if uid == 0 {
        // Run as the Docker images' user.
        let setpriv = Path::new("/usr/bin/setpriv");
        assert!(
            setpriv.exists(),
            "setpriv (util-linux) is needed to run as UID 49999"
        );
        run(Command::new(setpriv)
            .args(["--reuid=49999", "--regid=49999", "--clear-groups", "--"])
            .arg(BIN)
            .args(args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1"))
    } else {
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o000)).unwrap();
        run(Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1"))
    };
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("permission denied"), "{out}");
    assert!(out.contains("certificates/server.key"), "{out}");
    assert!(out.contains("UID 49999"), "{out}");
    assert!(out.contains("chown -R 49999:49999"), "{out}");
}

#[test]
fn log_file_receives_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs").join("superlink.log");
    let mut cmd = command(BIN);
    cmd.env("NO_COLOR", "1").arg("--insecure").args(ANY_PORTS);
    cmd.args([
        "--log-rotation-interval-hours",
        "1",
        "--log-rotation-backup-count",
        "2",
    ]);
    cmd.arg("--log-file")
        .arg(&log)
        .arg("--storage-dir")
        .arg(dir.path().join("ffs"));
    let mut p = Proc::spawn("superlink", cmd);
    p.wait_for_output("Fleet API (grpc-rere) serving", Duration::from_secs(20));
    p.signal(flwr_testkit::process::Signal::SIGTERM);
    let (status, out) = p.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}: {out}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Starting Flower SuperLink") && text.contains("terminated gracefully"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "no colour codes in the file");

    let (code, out) = superlink(&["--insecure", "--log-file", "/proc/no/such/dir/x.log"]);
    assert_eq!(code, 1);
    assert!(out.contains("cannot open `--log-file`"), "{out}");
}

/// A supervisor may signal the daemon as soon as it says anything: the handlers are in place
/// before the first line, so SIGTERM then ends it gracefully, and SIGHUP (which reloads
/// certificates once it serves) is ignored, however early they come.
#[test]
fn signals_as_soon_as_it_starts() {
    use flwr_testkit::process::Signal;
    for early in [Signal::SIGTERM, Signal::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = command(BIN);
        cmd.env("NO_COLOR", "1").arg("--insecure").args(ANY_PORTS);
        cmd.arg("--database")
            .arg(dir.path().join("state.db"))
            .arg("--storage-dir")
            .arg(dir.path().join("ffs"));
        let mut p = Proc::spawn("superlink", cmd);
        // The signal comes while the SuperLink still opens its database.
        p.signal_at_output("Starting Flower SuperLink", early, Duration::from_secs(20));
        if early == Signal::SIGHUP {
            p.wait_for_output("Fleet API (grpc-rere) serving", Duration::from_secs(20));
            p.signal(Signal::SIGTERM);
        }
        let (status, out) = p.wait(Duration::from_secs(30));
        assert!(status.success(), "{early}: {status}: {out}");
        assert!(out.contains("terminated gracefully"), "{early}: {out}");
    }
}

#[test]
fn an_unusable_storage_dir_stops_the_superlink_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let storage = file.join("ffs");
    let mut args = vec!["--insecure"];
    args.extend(ANY_PORTS);
    args.extend(["--storage-dir", storage.to_str().unwrap()]);
    let (code, out) = superlink(&args);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not-a-dir") && out.contains("--storage-dir") && !out.contains("serving"),
        "{out}"
    );
}
