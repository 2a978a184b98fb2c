//! Throwaway PostgreSQL clusters for tests: `initdb` in a temporary directory and `postgres` on a
//! reserved port of 127.0.0.1, with password authentication, never a system service. As root the
//! server runs as the `postgres` user (PostgreSQL refuses root). A missing PostgreSQL fails the
//! test with the package to install; it never skips.
//!
//! [`shared`] is one cluster for the whole test process, each test taking a fresh database of it
//! ([`PgCluster::create_database`]); a small watchdog stops that cluster and removes its files
//! when the test process ends. [`PgCluster::start`] gives a cluster of a test's own, stopped on
//! drop, for tests that stop and restart the server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::ports;
use crate::process::{command, run, Proc};

/// The superuser the tests connect as.
pub const USER: &str = "flwr";
/// Its password.
pub const PASSWORD: &str = "flwr-test-password";

/// A PostgreSQL cluster for tests.
pub struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<String>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    server: Mutex<Option<Proc>>,
    /// PostgreSQL's defaults for writing to disk (fsync, synchronous commit); tests turn them off.
    durable: bool,
    /// The server's certificate and key files when it accepts TLS connections only.
    tls: Option<(PathBuf, PathBuf)>,
    // Removes the files when a test's own cluster is dropped (the shared one is cleaned up by
    // its watchdog instead).
    _dir: Option<tempfile::TempDir>,
}

/// The directory of PostgreSQL's server programs (the newest version installed).
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|p| p.join("initdb").is_file() && p.join("postgres").is_file());
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server programs (initdb, postgres) are not installed: the PostgreSQL \
             tests need them (Debian: apt-get install postgresql)"
        )
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A command for a PostgreSQL program, run as `run_as` when given.
fn pg_command(bin: &Path, program: &str, run_as: Option<&str>) -> Command {
    match run_as {
        Some(user) => {
            let mut c = command("setpriv");
            c.args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "--",
            ])
            .arg(bin.join(program));
            c
        }
        None => command(bin.join(program)),
    }
}

fn uid_gid_of(user: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() > 3 && f[0] == user {
                Some((f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
        .unwrap_or_else(|| {
            panic!(
                "running as root, the tests start PostgreSQL as the `{user}` user, which does \
                 not exist (Debian's postgresql package creates it)"
            )
        })
}

impl PgCluster {
    /// A new cluster of the test's own, started; stopped and removed on drop.
    pub fn start() -> PgCluster {
        Self::start_with(false)
    }

    /// Like [`PgCluster::start`], but writing to disk as a production server does (fsync and
    /// synchronous commit on): for the benchmark.
    pub fn start_durable() -> PgCluster {
        Self::start_with(true)
    }

    /// A cluster of the test's own that accepts TLS connections only (a plaintext one is
    /// rejected by `pg_hba.conf`), with `cert_pem` and `key_pem` as its certificate and key.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> PgCluster {
        use std::os::unix::fs::PermissionsExt;
        let mut cluster = Self::unstarted();
        let root = cluster.data.parent().unwrap().to_owned();
        let (cert, key) = (root.join("server.crt"), root.join("server.key"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        // PostgreSQL refuses a key that others may read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some(user) = &cluster.run_as {
            let (uid, gid) = uid_gid_of(user);
            for f in [&cert, &key] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).unwrap();
            }
        }
        std::fs::write(
            cluster.data.join("pg_hba.conf"),
            "local all all scram-sha-256\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        cluster.tls = Some((cert, key));
        cluster.start_server();
        cluster
    }

    fn start_with(durable: bool) -> PgCluster {
        let mut cluster = Self::unstarted();
        cluster.durable = durable;
        cluster.start_server();
        cluster
    }

    /// A cluster of the test's own in a new temporary directory, made but not started.
    fn unstarted() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("flwr-pg.")
            .tempdir()
            .unwrap();
        let mut cluster = Self::init(&dir.path().join("data"));
        cluster._dir = Some(dir);
        cluster
    }

    fn init(data: &Path) -> PgCluster {
        let bin = bin_dir();
        let run_as = is_root().then(|| "postgres".to_owned());
        let root = data.parent().unwrap();
        if let Some(user) = &run_as {
            let (uid, gid) = uid_gid_of(user);
            std::os::unix::fs::chown(root, Some(uid), Some(gid)).unwrap();
        }
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if let Some(user) = &run_as {
            let (uid, gid) = uid_gid_of(user);
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let mut init = pg_command(&bin, "initdb", run_as.as_deref());
        init.arg("-D")
            .arg(data)
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        let (status, out) = run(&mut init);
        assert!(status.success(), "initdb failed:\n{out}");
        PgCluster {
            bin,
            data: data.to_owned(),
            run_as,
            port: 0,
            server: Mutex::new(None),
            durable: false,
            tls: None,
            _dir: None,
        }
    }

    fn server_command(&self, port: u16) -> Command {
        let mut c = pg_command(&self.bin, "postgres", self.run_as.as_deref());
        c.arg("-D").arg(&self.data).args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
        ]);
        c.arg(format!(
            "unix_socket_directories={}",
            self.data.parent().unwrap().display()
        ))
        .args(["-c", "max_connections=300"]);
        if let Some((cert, key)) = &self.tls {
            c.args(["-c", "ssl=on", "-c"])
                .arg(format!("ssl_cert_file={}", cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display()));
        }
        if !self.durable {
            c.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        c
    }

    /// The postmaster's process id (the leader of the server's process group), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.lock().unwrap().as_ref().map(Proc::pid)
    }

    fn start_server(&mut self) {
        let proc = if self.port == 0 {
            let (proc, port) = ports::start_with_fresh_ports("postgres", 1, |p| {
                let mut proc = Proc::spawn("postgres", self.server_command(p[0]));
                proc.await_output(
                    "database system is ready to accept connections",
                    Duration::from_secs(60),
                )?;
                Ok((proc, p[0]))
            });
            self.port = port;
            proc
        } else {
            let mut proc = Proc::spawn("postgres", self.server_command(self.port));
            proc.wait_for_output(
                "database system is ready to accept connections",
                Duration::from_secs(60),
            );
            proc
        };
        *self.server.lock().unwrap() = Some(proc);
    }

    /// Stops the server (fast shutdown: connections are closed), keeping its data.
    pub fn stop(&self) {
        if let Some(proc) = self.server.lock().unwrap().take() {
            proc.signal(crate::process::Signal::SIGINT);
            let (_, _) = proc.wait(Duration::from_secs(60));
        }
    }

    /// Gives a [`PgCluster::start_tls`] cluster a new certificate and key, and restarts it.
    pub fn replace_certificate(&mut self, cert_pem: &str, key_pem: &str) {
        let (cert, key) = self
            .tls
            .clone()
            .expect("replace_certificate: this cluster was not started with TLS");
        // Written in place: the owner and the mode stay.
        std::fs::write(cert, cert_pem).unwrap();
        std::fs::write(key, key_pem).unwrap();
        self.restart();
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    /// A URL of database `db` as the tests' superuser.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{USER}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates a fresh database and returns its URL.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        self.psql(&format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs one SQL command as the superuser in database `postgres`.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs one SQL command as the superuser in database `db` (a name, or a URL of
    /// [`PgCluster::create_database`]); returns its unaligned output.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let mut c = command(self.bin.join("psql"));
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", database_name(db), "-v", "ON_ERROR_STOP=1", "-A", "-t"])
            .args(["-c", sql])
            .env("PGPASSWORD", PASSWORD);
        let (status, out) = run(&mut c);
        assert!(status.success(), "psql -c {sql:?} failed:\n{out}");
        out
    }
}

/// The database name of a URL (or the name itself).
fn database_name(url_or_name: &str) -> &str {
    let tail = url_or_name.rsplit('/').next().unwrap_or(url_or_name);
    tail.split('?').next().unwrap_or(tail)
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One cluster for the whole test process, made on first use; a watchdog stops it and removes
/// its files when the test process is gone.
pub fn shared() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let root = tempfile::Builder::new()
            .prefix("flwr-pg-shared.")
            .tempdir()
            .unwrap()
            .keep();
        let mut cluster = PgCluster::init(&root.join("data"));
        cluster.start_server();
        let pid = cluster
            .server
            .lock()
            .unwrap()
            .as_ref()
            .map(Proc::pid)
            .unwrap_or(0);
        // Statics are never dropped: this shell outlives the test process by at most a second,
        // then stops the server and removes the files.
        let mut watchdog = command("sh");
        watchdog.args([
            "-c",
            "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -INT \"$2\" 2>/dev/null; \
             while kill -0 \"$2\" 2>/dev/null; do sleep 0.2; done; rm -rf \"$3\"",
            "watchdog",
            &std::process::id().to_string(),
            &pid.to_string(),
        ])
        .arg(&root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        // Detached on purpose: it must outlive this process.
        let _ = watchdog.spawn();
        cluster
    })
}
