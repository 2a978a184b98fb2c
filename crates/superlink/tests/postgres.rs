//! The SuperLink on PostgreSQL: refusals at start (unreachable server, wrong password, a URL of
//! another database, a newer schema), TLS to a server that takes only encrypted connections in
//! each `sslmode`, replicas starting together on an empty database, and a federation of Python
//! SuperNodes through it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::process::Command;
use std::time::Duration;

use flwr_testkit::federation::{self, python_supernodes, Cli, SuperLink};
use flwr_testkit::postgres;
use flwr_testkit::process::{command, run, Proc};
use flwr_testkit::{pki, ports};

const BIN: &str = env!("CARGO_BIN_EXE_superlink");

/// Runs the SuperLink to its end with `database` (it is expected to refuse to start).
fn refused(database: &str, extra: &[&str]) -> (i32, String) {
    let home = tempfile::tempdir().unwrap();
    let (status, out) = run(Command::new(BIN)
        .args([
            "--insecure",
            "--isolation",
            "process",
            "--database",
            database,
        ])
        .args(["--serverappio-api-address", "127.0.0.1:0"])
        .args(["--fleet-api-address", "127.0.0.1:0"])
        .args(["--control-api-address", "127.0.0.1:0"])
        .args(extra)
        .env("FLWR_HOME", home.path())
        .env("NO_COLOR", "1")
        .env_remove("PGPASSWORD"));
    assert!(!out.contains("serving"), "nothing may be bound:\n{out}");
    (status.code().unwrap_or(-1), out)
}

#[test]
fn bad_databases_are_refused_at_start_naming_the_problem() {
    // Nothing listens on a reserved port.
    let closed = ports::reserve();
    let url = format!("postgresql://flwr:secret-pw@127.0.0.1:{closed}/flwr");
    let (code, out) = refused(&url, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{closed}")) && out.to_lowercase().contains("connect"),
        "{out}"
    );
    assert!(
        !out.contains("secret-pw"),
        "the password is never shown:\n{out}"
    );

    let cluster = postgres::shared();
    let good = cluster.create_database();
    let wrong = good.replace(postgres::PASSWORD, "not-the-password");
    let (code, out) = refused(&wrong, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("password") && !out.contains("not-the-password"),
        "{out}"
    );

    // A password file wins over the URL's (here: a wrong one).
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong-from-file\n").unwrap();
    let (code, out) = refused(&good, &["--database-password-file", pw.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("password") && !out.contains("wrong-from-file"),
        "{out}"
    );

    for other in [
        "mysql://u:p@h/db",
        "sqlite:///tmp/x.db",
        "https://example.org/db",
    ] {
        let (code, out) = refused(other, &[]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("not supported") && out.contains("postgresql://"),
            "{out}"
        );
    }

    // A database whose schema is newer than this SuperLink.
    let newer = cluster.create_database();
    cluster.psql_in(
        &newer,
        "CREATE TABLE flwr_schema (version INTEGER NOT NULL); INSERT INTO flwr_schema VALUES (999)",
    );
    let (code, out) = refused(&newer, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("schema version 999") && out.contains("newer"),
        "{out}"
    );
}

/// The URL of `url`'s database with `query` instead of its own.
fn with_query(url: &str, query: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    format!("{base}?{query}")
}

/// How many of the SuperLink's connections to `url`'s cluster are encrypted and how many are not.
fn superlink_connections(cluster: &postgres::PgCluster, url: &str) -> (u32, u32) {
    let out = cluster.psql_in(
        url,
        "SELECT COUNT(*) FILTER (WHERE s.ssl), COUNT(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'flwr-superlink'",
    );
    let (yes, no) = out.trim().split_once('|').unwrap();
    (yes.parse().unwrap(), no.parse().unwrap())
}

#[test]
fn tls_to_postgresql_is_verified_as_sslmode_says() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("database CA");
    let (cert, key) = ca.issue(&["127.0.0.1"], pki::Validity::default());
    let mut cluster = postgres::PgCluster::start_tls(&cert, &key);
    let url = cluster.create_database();
    let ca_file = dir.path().join("db-ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let stranger = pki::Ca::new("another CA");
    let stranger_file = dir.path().join("other-ca.crt");
    std::fs::write(&stranger_file, stranger.cert_pem()).unwrap();
    let root = |f: &std::path::Path| format!("sslrootcert={}", f.display());

    // The server takes TLS only: without it the SuperLink is refused, and says how to ask for it.
    let (code, out) = refused(&with_query(&url, "sslmode=disable"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no encryption") && out.contains("sslmode=require"),
        "{out}"
    );

    // verify-full against the right CA: served, and every connection is encrypted.
    let good = with_query(&url, &format!("sslmode=verify-full&{}", root(&ca_file)));
    let replica_home = dir.path().join("a");
    let served = replica(&good, &replica_home);
    let (tls, plain) = superlink_connections(&cluster, &url);
    assert!(tls >= 1 && plain == 0, "encrypted {tls}, plaintext {plain}");
    drop(served);

    // Another CA: refused, naming the certificate and the file to check.
    let (code, out) = refused(
        &with_query(&url, &format!("sslmode=verify-ca&{}", root(&stranger_file))),
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("certificate") && out.contains("sslrootcert"),
        "{out}"
    );

    // require without a CA encrypts without verifying (libpq's meaning).
    let served = replica(&with_query(&url, "sslmode=require"), &dir.path().join("b"));
    drop(served);

    // A certificate for another name: verify-ca accepts it, verify-full does not.
    let (cert, key) = ca.issue(&["db.example"], pki::Validity::default());
    cluster.replace_certificate(&cert, &key);
    let served = replica(
        &with_query(&url, &format!("sslmode=verify-ca&{}", root(&ca_file))),
        &dir.path().join("c"),
    );
    drop(served);
    let (code, out) = refused(&good, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("certificate") && out.contains("127.0.0.1") && out.contains("verify-ca"),
        "{out}"
    );
}

/// Starts our SuperLink on a PostgreSQL database (plaintext, process isolation).
fn replica(url: &str, home: &std::path::Path) -> SuperLink {
    SuperLink::start(
        BIN.as_ref(),
        None,
        home,
        &["--isolation", "process", "--database", url],
    )
}

/// Also: the password may come from the URL or from `PGPASSWORD`, and the log names the
/// database with the password masked.
#[test]
fn replicas_starting_together_make_one_schema_and_both_serve() {
    let cluster = postgres::shared();
    let url = cluster.create_database();
    let without_password = url.replace(&format!(":{}@", postgres::PASSWORD), "@");
    assert_ne!(url, without_password);
    let homes: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let spawn = |home: &std::path::Path, url: &str, pgpassword: Option<&str>| {
        let mut cmd = command(BIN);
        cmd.args(["--insecure", "--isolation", "process", "--database", url])
            .args(["--serverappio-api-address", "127.0.0.1:0"])
            .args(["--fleet-api-address", "127.0.0.1:0"])
            .args(["--control-api-address", "127.0.0.1:0"])
            .env("FLWR_HOME", home)
            .env("NO_COLOR", "1")
            .env_remove("PGPASSWORD");
        if let Some(pw) = pgpassword {
            cmd.env("PGPASSWORD", pw);
        }
        Proc::spawn("superlink", cmd)
    };
    // Both started before either looks at the database.
    let mut a = spawn(homes[0].path(), &url, None);
    let mut b = spawn(homes[1].path(), &without_password, Some(postgres::PASSWORD));
    for p in [&mut a, &mut b] {
        p.wait_for_output("Fleet API (grpc-rere) serving", Duration::from_secs(60));
    }
    let count = cluster.psql_in(&url, "SELECT COUNT(*) FROM flwr_schema");
    assert_eq!(count.trim(), "1", "one schema row: {count}");
    for p in [&mut a, &mut b] {
        assert!(p.try_status().is_none(), "{}", p.output());
        let out = p.output();
        assert!(
            out.contains("State in PostgreSQL")
                && out.contains(&format!("postgresql://{}:****@127.0.0.1:", postgres::USER))
                && !out.contains(postgres::PASSWORD),
            "the database named, its password masked:\n{out}"
        );
    }
}

#[test]
fn a_federation_runs_on_postgresql() {
    let cluster = postgres::shared();
    let url = cluster.create_database();
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    let superlink = SuperLink::start(
        BIN.as_ref(),
        Some(&tls),
        &dir.path().join("superlink"),
        &["--database", &url],
    );
    let _nodes = python_supernodes(2, "node", &superlink.fleet, Some(&tls.ca), dir.path());
    let cli = Cli::new(&dir.path().join("cli"), &superlink.control, Some(&tls.ca));
    let (status, out) = cli
        .start_run_streaming(&federation::example_app(), "num-server-rounds=2")
        .wait(Duration::from_secs(240));
    assert!(
        status.success(),
        "{out}\nsuperlink:\n{}",
        superlink.proc.output()
    );
    let sha = federation::expected_model_sha256(1000, 2, 1.0);
    assert!(out.contains(&format!("sha256={sha}")), "{out}");
    let run_id = Cli::run_id_in(&out);
    let start = std::time::Instant::now();
    while cli.status_of(run_id) != "finished:completed" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            cli.status_of(run_id)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The state is in the database: a second SuperLink on it shows the run and its log.
    let other = replica(&url, &dir.path().join("replica"));
    let cli2 = Cli::new(&dir.path().join("cli2"), &other.control, None);
    assert_eq!(cli2.status_of(run_id), "finished:completed");
    let (status, log) = cli2.run(&["log", &run_id.to_string(), federation::CONNECTION, "--show"]);
    assert!(status.success() && log.contains("FEDAVG-CHECK OK"), "{log}");
}

/// Whether the health service at `address` answers SERVING (false on any error).
fn serving(rt: &tokio::runtime::Runtime, address: &str) -> bool {
    rt.block_on(async {
        let channel = flwr_transport::grpc::channel(&address.parse().unwrap(), None);
        matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                flwr_transport::health::check(channel)
            )
            .await,
            Ok(Ok(true))
        )
    })
}

/// Waits until the health service says `want`, or fails the test after `timeout`.
fn wait_health(rt: &tokio::runtime::Runtime, address: &str, want: bool, timeout: Duration) {
    let start = std::time::Instant::now();
    while serving(rt, address) != want {
        assert!(
            start.elapsed() < timeout,
            "health never became {} within {timeout:?}",
            if want { "SERVING" } else { "NOT_SERVING" }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_postgresql_restart_drains_the_replica_and_the_run_goes_on() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = postgres::PgCluster::start();
    let url = cluster.create_database();
    let dir = tempfile::tempdir().unwrap();
    let (_ca, tls) = pki::write_tls_files(&dir.path().join("certificates"), pki::LOCAL_SANS);
    let mut superlink = SuperLink::start(
        BIN.as_ref(),
        Some(&tls),
        &dir.path().join("superlink"),
        &["--database", &url, "--health-server-address", "127.0.0.1:0"],
    );
    let out = superlink
        .proc
        .wait_for_output("Health service serving", Duration::from_secs(30));
    let health = federation::logged_address(&out, "Health service serving");
    wait_health(&rt, &health, true, Duration::from_secs(10));
    let _nodes = python_supernodes(2, "node", &superlink.fleet, Some(&tls.ca), dir.path());
    let cli = Cli::new(&dir.path().join("cli"), &superlink.control, Some(&tls.ca));
    let mut run = cli.start_run_streaming(
        &federation::example_app(),
        "num-server-rounds=3 client-delay=1.0",
    );
    run.wait_for_output("[ROUND 2/3]", Duration::from_secs(180));

    // The database goes away in the middle of the run: the replica says it cannot serve.
    cluster.stop();
    wait_health(&rt, &health, false, Duration::from_secs(15));
    // A call that needs the database is answered UNAVAILABLE (clients retry); the log, not
    // the caller, learns which database and why.
    let refused = rt.block_on(async {
        use flwr_proto::proto as pb;
        use flwr_transport::tls::{load_client_config, ClientTlsChoice};
        let tls = load_client_config(&ClientTlsChoice::RootCertificates(tls.ca.clone()))
            .unwrap()
            .unwrap();
        let channel =
            flwr_transport::grpc::channel(&superlink.control.parse().unwrap(), Some(tls.config));
        pb::control_client::ControlClient::new(channel)
            .list_runs(pb::ListRunsRequest {
                run_id: None,
                limit: None,
            })
            .await
            .unwrap_err()
    });
    assert!(
        refused.code() == tonic::Code::Unavailable && refused.message().contains("database"),
        "{refused:?}"
    );
    // Logged by the SuperLink as it answers; read from its output by another thread.
    superlink.proc.wait_for_output(
        "state database unavailable: postgresql://",
        Duration::from_secs(10),
    );
    cluster.restart();
    wait_health(&rt, &health, true, Duration::from_secs(30));

    let (status, out) = run.wait(Duration::from_secs(300));
    assert!(
        status.success(),
        "{out}\nsuperlink:\n{}",
        superlink.proc.output()
    );
    let sha = federation::expected_model_sha256(1000, 3, 1.0);
    assert!(out.contains(&format!("sha256={sha}")), "{out}");
    assert!(
        superlink
            .proc
            .output()
            .contains("the database does not answer"),
        "{}",
        superlink.proc.output()
    );
}
