//! The Flower TLS page, word for word, with our images: the `subprocess` tab, the `process` tab,
//! file permissions for UID 49999, the Compose federation, and the high-availability Compose
//! deployment losing replicas in the middle of a run. Every container and network a test
//! creates is removed when it ends, also when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flwr_testkit::federation::{self, Cli, CONNECTION};
use flwr_testkit::process::{run, run_within};
use flwr_testkit::python;

const TAG: &str = "test";

/// Builds the base images and our images once per test run.
fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let (status, out) = run(Command::new("docker").arg("info"));
        assert!(
            status.success(),
            "the Docker engine is required for these tests and is not reachable:\n{out}"
        );
        let repo = python::repo_root();
        // Building images (debootstrap, pip) may take longer than any other command.
        let build = Duration::from_secs(25 * 60);
        let (status, out) = run_within(
            &mut Command::new(repo.join("docker/base/make-base-image.sh")),
            build,
        );
        assert!(status.success(), "making the base images failed:\n{out}");
        // The tests use the debug binaries that `cargo test` just built (release builds would
        // double the CI time); the README reports the sizes of release images.
        let (status, out) = run_within(
            Command::new(repo.join("docker/build-images.sh"))
                .env("BASE_PYTHON", "flower-rs/python:bookworm")
                .env("BASE_DEBIAN", "flower-rs/debian:bookworm")
                .env("PROFILE", "debug")
                .env("TAG", TAG)
                .env("APP_DEPS", "numpy"),
            build,
        );
        assert!(status.success(), "building the images failed:\n{out}");
    });
}

fn image(name: &str) -> String {
    format!("flower-rs/{name}:{TAG}")
}

/// Containers and a network, removed on drop.
struct Docker {
    prefix: String,
    network: String,
    containers: Vec<String>,
    dir: tempfile::TempDir,
}

impl Docker {
    fn new(test: &str) -> Docker {
        images();
        let prefix = format!("flwrrs-{test}-{}", std::process::id());
        let network = format!("{prefix}-net");
        let (status, out) = run(Command::new("docker").args(["network", "create", &network]));
        assert!(status.success(), "{out}");
        Docker {
            prefix,
            network,
            containers: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `docker run --rm -d --name <prefix-name> --network <net> [--network-alias alias] ARGS`, run
    /// in the test's directory so that the page's relative `./superlink-certificates` works.
    fn run(&mut self, name: &str, alias: Option<&str>, args: &[&str]) -> String {
        let container = format!("{}-{name}", self.prefix);
        let mut cmd = Command::new("docker");
        cmd.current_dir(self.dir()).args([
            "run",
            "--rm",
            "-d",
            "--name",
            &container,
            "--network",
            &self.network,
        ]);
        if let Some(a) = alias {
            cmd.args(["--network-alias", a]);
        }
        let (status, out) = run(cmd.args(args));
        assert!(status.success(), "docker run {args:?}:\n{out}");
        self.containers.push(container.clone());
        container
    }

    fn logs(&self, container: &str) -> String {
        run(Command::new("docker").args(["logs", container])).1
    }

    fn wait_for_log(&self, container: &str, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let logs = self.logs(container);
            if logs.contains(needle) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{container} did not log {needle:?}:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The page's certificates, made with the project's script (owned by UID 49999).
    fn certificates(&self) -> PathBuf {
        let dir = self.dir().join("superlink-certificates");
        let script = python::repo_root().join("docker/compose/make-certificates.sh");
        let (status, out) = run(Command::new(script).arg(&dir));
        assert!(status.success(), "{out}");
        dir
    }

    /// The `flwr` CLI with the page's `[superlink.local-deployment-tls]` table.
    fn cli(&self, control: &str, ca: &Path) -> Cli {
        Cli::new(&self.dir().join("flwr-home"), control, Some(ca))
    }

    /// The host address where Docker published a container's Control port (`PUBLISH_CONTROL`).
    fn published_control(&self, container: &str) -> String {
        published(Command::new("docker").args(["port", container, "9093/tcp"]))
    }

    fn diagnostics(&self) -> String {
        self.containers
            .iter()
            .map(|c| format!("--- {c}\n{}", self.logs(c)))
            .collect()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run(Command::new("docker").args(["rm", "-f", c]));
        }
        let _ = run(Command::new("docker").args(["network", "rm", &self.network]));
    }
}

fn run_example(d: &Docker, cli: &Cli, rounds: u32) {
    let (status, out) = cli
        .start_run_streaming(
            &federation::example_app(),
            &format!("num-server-rounds={rounds}"),
        )
        .wait(Duration::from_secs(300));
    assert!(
        status.success(),
        "flwr run failed:\n{out}\n{}",
        d.diagnostics()
    );
    let sha = federation::expected_model_sha256(1000, rounds, 1.0);
    assert!(out.contains(&format!("sha256={sha}")), "{out}");
}

/// The Control port published on the loopback, on a host port Docker chooses (tests run in
/// parallel: a fixed or pre-picked port could be taken).
const PUBLISH_CONTROL: &str = "127.0.0.1::9093";

/// The `127.0.0.1:<port>` line that `docker port` or `docker-compose port` prints.
fn published(cmd: &mut Command) -> String {
    let (status, out) = run(cmd);
    assert!(status.success(), "{cmd:?}: {out}");
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no 127.0.0.1 address in `{cmd:?}`: {out}"))
        .to_owned()
}

const SUPERLINK_TLS: [&str; 6] = [
    "--ssl-ca-certfile",
    "certificates/ca.crt",
    "--ssl-certfile",
    "certificates/server.pem",
    "--ssl-keyfile",
    "certificates/server.key",
];

#[test]
fn tls_page_subprocess_tab() {
    let mut d = Docker::new("subprocess");
    let certs = d.certificates();
    let image_superlink = image("superlink");
    let mut args = vec![
        "-p",
        PUBLISH_CONTROL,
        "--volume",
        "./superlink-certificates/:/app/certificates/:ro",
        &image_superlink,
    ];
    args.extend(SUPERLINK_TLS);
    let superlink = d.run("superlink", Some("superlink"), &args);
    d.wait_for_log(
        &superlink,
        "Fleet API (grpc-rere) serving",
        Duration::from_secs(30),
    );
    let image_supernode = image("supernode");
    for i in 0..2 {
        let node_config = format!("partition-id={i} num-partitions=2");
        d.run(
            &format!("supernode-{i}"),
            None,
            &[
                "--volume",
                "./superlink-certificates/ca.crt:/app/ca.crt/:ro",
                &image_supernode,
                "--root-certificates",
                "ca.crt",
                "--superlink",
                "superlink:9092",
                "--node-config",
                &node_config,
            ],
        );
    }
    let cli = d.cli(&d.published_control(&superlink), &certs.join("ca.crt"));
    let (status, list) = cli.run(&["config", "list"]);
    assert!(status.success() && list.contains(CONNECTION), "{list}");
    run_example(&d, &cli, 2);
}

#[test]
fn tls_page_process_tab() {
    let mut d = Docker::new("process");
    let certs = d.certificates();
    let image_superlink = image("superlink-slim");
    let mut args = vec![
        "-p",
        PUBLISH_CONTROL,
        "--volume",
        "./superlink-certificates/:/app/certificates/:ro",
        &image_superlink,
    ];
    args.extend(SUPERLINK_TLS);
    args.extend(["--isolation", "process"]);
    let superlink = d.run("superlink", Some("superlink"), &args);
    d.wait_for_log(
        &superlink,
        "Fleet API (grpc-rere) serving",
        Duration::from_secs(30),
    );
    d.run(
        "serverapp",
        None,
        &[
            &image("serverapp"),
            "--insecure",
            "--serverappio-api-address",
            "superlink:9091",
        ],
    );
    let image_supernode = image("supernode-slim");
    for i in 0..2 {
        let alias = format!("supernode-{i}");
        d.run(
            &alias,
            Some(&alias),
            &[
                "--volume",
                "./superlink-certificates/ca.crt:/app/ca.crt/:ro",
                &image_supernode,
                "--root-certificates",
                "ca.crt",
                "--isolation",
                "process",
                "--superlink",
                "superlink:9092",
            ],
        );
        let appio = format!("{alias}:9094");
        d.run(
            &format!("clientapp-{i}"),
            None,
            &[
                &image("clientapp"),
                "--insecure",
                "--clientappio-api-address",
                &appio,
            ],
        );
    }
    let cli = d.cli(&d.published_control(&superlink), &certs.join("ca.crt"));
    run_example(&d, &cli, 1);
}

#[test]
fn a_key_uid_49999_cannot_read_is_named_with_the_chown_fix() {
    let mut d = Docker::new("permissions");
    let certs = d.certificates();
    // As a user copies them without the chown step: owned by root, key readable by root only.
    let (status, out) = run(Command::new("chown").arg("-R").arg("0:0").arg(&certs));
    assert!(status.success(), "{out}");
    let (status, out) = run(Command::new("chmod")
        .arg("600")
        .arg(certs.join("server.key")));
    assert!(status.success(), "{out}");
    let started = Instant::now();
    let mut cmd = Command::new("docker");
    cmd.current_dir(d.dir()).args([
        "run",
        "--rm",
        "--network",
        &d.network,
        "--volume",
        "./superlink-certificates/:/app/certificates/:ro",
    ]);
    cmd.arg(image("superlink"));
    let (status, out) = run(cmd.args(SUPERLINK_TLS));
    assert!(!status.success(), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it exits at once"
    );
    assert!(
        out.contains("certificates/server.key") && out.contains("UID 49999"),
        "{out}"
    );
    assert!(out.contains("chown -R 49999:49999"), "{out}");

    // The page's fix; the certificates stay a read-only mount.
    let (status, out) = run(Command::new("chown")
        .arg("-R")
        .arg("49999:49999")
        .arg(&certs));
    assert!(status.success(), "{out}");
    let mut args = vec![
        "--volume",
        "./superlink-certificates/:/app/certificates/:ro",
    ];
    let img = image("superlink");
    args.push(&img);
    args.extend(SUPERLINK_TLS);
    let superlink = d.run("superlink", None, &args);
    d.wait_for_log(
        &superlink,
        "Fleet API (grpc-rere) serving",
        Duration::from_secs(30),
    );
}

/// A Compose project, taken down (with its volumes) on drop.
struct Compose {
    file: PathBuf,
    project: String,
    env: Vec<(&'static str, String)>,
}

impl Compose {
    fn run(&self, args: &[&str]) -> (std::process::ExitStatus, String) {
        let mut c = Command::new("docker-compose");
        c.arg("-f")
            .arg(&self.file)
            .args(["-p", &self.project])
            .args(args);
        c.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        run(&mut c)
    }
}

impl Compose {
    /// `up -d`, then the host address where Docker published `service`'s Control port.
    fn up(&self, service: &str) -> String {
        let (status, out) = self.run(&["up", "-d"]);
        assert!(status.success(), "docker-compose up:\n{out}");
        published(
            Command::new("docker-compose")
                .arg("-f")
                .arg(&self.file)
                .args(["-p", &self.project, "port", service, "9093"]),
        )
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--remove-orphans"]);
    }
}

#[test]
fn compose_runs_the_tls_federation() {
    let d = Docker::new("compose");
    let certs = d.certificates();
    let compose = Compose {
        file: python::repo_root().join("docker/compose/compose.yml"),
        project: format!("{}-compose", d.prefix),
        env: vec![
            ("CERTS", certs.display().to_string()),
            ("TAG", TAG.to_owned()),
            // Docker chooses the host port.
            ("CONTROL_PUBLISH", "127.0.0.1:".to_owned()),
        ],
    };
    let control = compose.up("superlink");
    let cli = d.cli(&control, &certs.join("ca.crt"));
    let (status, out) = cli
        .start_run_streaming(&federation::example_app(), "num-server-rounds=1")
        .wait(Duration::from_secs(300));
    assert!(
        status.success(),
        "flwr run failed:\n{out}\n{}",
        compose.run(&["logs"]).1
    );
    assert!(
        out.contains(&format!(
            "sha256={}",
            federation::expected_model_sha256(1000, 1, 1.0)
        )),
        "{out}"
    );
}

#[test]
fn compose_ha_loses_replicas_mid_run_and_the_run_completes() {
    let d = Docker::new("compose-ha");
    let certs = d.certificates();
    let password = d.dir().join("db-password");
    std::fs::write(&password, format!("pw-{}\n", std::process::id())).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let compose = Compose {
        file: python::repo_root().join("docker/compose/compose-ha.yml"),
        project: format!("{}-ha", d.prefix),
        env: vec![
            ("CERTS", certs.display().to_string()),
            ("DB_PASSWORD_FILE", password.display().to_string()),
            ("TAG", TAG.to_owned()),
            ("CONTROL_PUBLISH", "127.0.0.1:".to_owned()),
            ("COMPOSE_PROFILES", "monitoring".to_owned()),
            ("PROMETHEUS_PUBLISH", "127.0.0.1:".to_owned()),
        ],
    };
    let control = compose.up("haproxy");
    let cli = d.cli(&control, &certs.join("ca.crt"));
    let logs = || compose.run(&["logs", "--no-color"]).1;
    // Both SuperNodes join through HAProxy once a replica serves (the replicas may restart a
    // few times while PostgreSQL makes its cluster).
    let start = Instant::now();
    for node in ["supernode-1", "supernode-2"] {
        while !compose
            .run(&["logs", "--no-color", node])
            .1
            .contains("activated; pulling messages")
        {
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "{node} never joined:\n{}",
                logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let start = Instant::now();
    let run_id = loop {
        let (status, out) = cli.run(&[
            "run",
            federation::example_app().to_str().unwrap(),
            CONNECTION,
            "--run-config",
            "num-server-rounds=3 client-delay=3.0",
        ]);
        if status.success() {
            break Cli::run_id_in(&out);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "flwr run never went through HAProxy:\n{out}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let minutes = Duration::from_secs(240);
    cli.await_log(run_id, "[ROUND 2/3]", 1, minutes);
    let (status, out) = compose.run(&["kill", "superlink-1"]);
    assert!(status.success(), "{out}");
    cli.await_log(run_id, "aggregate_train", 2, minutes);
    let (status, out) = compose.run(&["start", "superlink-1"]);
    assert!(status.success(), "{out}");
    cli.await_log(run_id, "[ROUND 3/3]", 1, minutes);
    let (status, out) = compose.run(&["kill", "superlink-2"]);
    assert!(status.success(), "{out}");
    let s = cli.await_status(run_id, "finished", Duration::from_secs(300));
    assert_eq!(s, "finished:completed", "{}", logs());
    let (_, log) = cli.run(&["log", &run_id.to_string(), CONNECTION, "--show"]);
    let sha = federation::expected_model_sha256(1000, 3, 1.0);
    assert!(log.contains(&format!("sha256={sha}")), "{log}\n{}", logs());

    // The monitoring profile: Prometheus scraped the replicas and the SuperNodes through it all.
    let query = |expr: &str| -> Option<f64> {
        let (status, out) = compose.run(&[
            "exec",
            "-T",
            "prometheus",
            "promtool",
            "query",
            "instant",
            "http://localhost:9090",
            expr,
        ]);
        status.success().then_some(())?;
        out.split("=> ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let start = Instant::now();
    for (expr, at_least) in [
        ("max(flwr_nodes{status=\"online\"})", 2.0),
        ("count(up{job=\"flwr-supernode\"} == 1)", 2.0),
        ("count(up{job=\"flwr-superlink\"} == 1)", 2.0),
        // Three rounds of training and evaluation on two nodes.
        (
            "sum(flwr_messages_handled_total{outcome=\"replied\"})",
            12.0,
        ),
        ("sum(flwr_rpc_duration_seconds_count{api=\"fleet\"})", 1.0),
    ] {
        while query(expr).is_none_or(|v| v < at_least) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "Prometheus: {expr} = {:?}, expected at least {at_least}\n{}",
                query(expr),
                compose.run(&["logs", "--no-color", "prometheus"]).1
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The Grafana dashboard of the monitoring profile: every panel's query is valid PromQL
/// (`promtool check rules`) and names only metrics the daemons serve (the README's tables).
#[test]
fn the_grafana_dashboard_queries_only_metrics_we_serve() {
    let repo = python::repo_root();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("docker/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:panel{i}"), "expr": e}))
        .collect::<Vec<_>>()}]});
    std::fs::write(&rules, groups.to_string()).unwrap();
    let (status, out) = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(status.success(), "{out}");
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    for expr in &exprs {
        for (i, _) in expr.match_indices("flwr_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                readme.contains(&format!("| `{base}` |")),
                "the dashboard's {base} (in {expr}) is not in the README's metrics tables"
            );
        }
    }
}

/// The Debian packages (`scripts/package.sh`, cargo-deb): their units, unpacked over a root with
/// systemd's own units, pass `systemd-analyze verify` with nothing to say and are rated at most
/// 2.0 ("OK") by `systemd-analyze security`; installed in a clean container from the project's
/// Debian base, they create the `flwr` user, the SuperLink starts as that user, and they remove
/// cleanly (the user stays).
#[test]
fn debian_packages_install_and_their_units_verify() {
    images();
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    let repo = python::repo_root();
    let (status, out) = run_within(
        Command::new(repo.join("scripts/package.sh"))
            .env("PROFILE", "debug")
            .env("OUT", &debs),
        Duration::from_secs(20 * 60),
    );
    assert!(status.success(), "scripts/package.sh:\n{out}");
    let deb = |name: &str| debs.join(format!("{name}_{}-1_amd64.deb", env!("CARGO_PKG_VERSION")));

    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib/systemd/system")).unwrap();
    let (status, out) = run(Command::new("cp")
        .args(["-a", "/lib/systemd/system/."])
        .arg(root.join("lib/systemd/system")));
    assert!(status.success(), "{out}");
    std::fs::copy("/bin/kill", root.join("bin/kill")).unwrap();
    for name in ["flwr-superlink", "flwr-supernode"] {
        let (status, out) = run(Command::new("dpkg-deb").arg("-x").arg(deb(name)).arg(&root));
        assert!(status.success(), "{out}");
    }
    for unit in ["flwr-superlink.service", "flwr-supernode@.service"] {
        let (status, out) = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.display()))
            .arg(root.join("lib/systemd/system").join(unit)));
        assert!(
            status.success() && out.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{out}"
        );
    }
    for unit in ["flwr-superlink.service", "flwr-supernode@site.service"] {
        let (status, out) = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit));
        assert!(status.success(), "systemd-analyze security {unit}:\n{out}");
        let marker = format!("Overall exposure level for {unit}: ");
        let exposure: f64 = out
            .split(&marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
        assert!(exposure <= 2.0, "{unit} is exposed {exposure}:\n{out}");
    }

    // A clean machine: the project's Debian base, the packages, the SuperLink as user flwr.
    let script = r#"
dpkg -i /pkgs/*.deb >/dev/null
id flwr
test -f /lib/systemd/system/flwr-superlink.service
test -f /lib/systemd/system/flwr-supernode@.service
test -f /etc/flwr/superlink.env
runuser -u flwr -- superlink --version
runuser -u flwr -- supernode --version
mkdir -p /var/lib/flwr/superlink && chown flwr:flwr /var/lib/flwr/superlink
runuser -u flwr -- superlink --insecure --isolation process \
    --database /var/lib/flwr/superlink/state.db --storage-dir /var/lib/flwr/superlink/ffs \
    --fleet-api-address 127.0.0.1:9092 --control-api-address 127.0.0.1:9093 \
    --serverappio-api-address 127.0.0.1:9091 >/tmp/superlink.log 2>&1 &
for i in $(seq 120); do
    grep -q "Fleet API (grpc-rere) serving" /tmp/superlink.log && break
    sleep 0.25
done
cat /tmp/superlink.log
stat -c '%U %n' /var/lib/flwr/superlink/state.db
dpkg -r flwr-superlink flwr-supernode >/dev/null
test ! -e /usr/bin/superlink && test ! -e /lib/systemd/system/flwr-superlink.service
id flwr >/dev/null && echo "removed; the flwr user stays"
"#;
    let (status, out) = run_within(
        Command::new("docker")
            .args(["run", "--rm", "-v"])
            .arg(format!("{}:/pkgs:ro", debs.display()))
            .args(["flower-rs/debian:bookworm", "sh", "-ec", script]),
        Duration::from_secs(120),
    );
    assert!(status.success(), "{out}");
    for expected in [
        "uid=",
        "(flwr)",
        "Flower version: 1.28.0 (superlink",
        "Flower version: 1.28.0 (supernode",
        "Fleet API (grpc-rere) serving",
        "flwr /var/lib/flwr/superlink/state.db",
        "removed; the flwr user stays",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
}
