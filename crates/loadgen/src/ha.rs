//! Our SuperLink deployed for high availability, as the benchmark measures it: replicas on one
//! PostgreSQL database (a throwaway cluster that writes to disk as a production server does)
//! behind HAProxy configured like `docker/ha/haproxy.cfg` (TCP, TLS passed through, least
//! connections). Flower's open-source SuperLink has no PostgreSQL mode, so there is nothing of
//! Flower's to start here.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use flwr_testkit::haproxy::{self, Addresses};
use flwr_testkit::pki::TlsFiles;
use flwr_testkit::postgres::PgCluster;

use crate::daemon::{self, Daemon, Health, ProcSample};
use crate::workload::Target;

/// CPU time and memory of a deployment at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// The SuperLink process(es), summed.
    pub servers: ProcSample,
    /// HAProxy.
    pub balancer: ProcSample,
    /// PostgreSQL (server and backends).
    pub database: ProcSample,
}

/// Says what is missing for the PostgreSQL rows, and how to get it.
pub fn check_programs() -> Result<()> {
    let postgres = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .is_some();
    if !postgres {
        bail!("PostgreSQL is not installed: the PostgreSQL rows need it (Debian: apt-get install postgresql)");
    }
    if !Path::new(haproxy::PROGRAM).is_file() {
        bail!("HAProxy is not installed: the PostgreSQL rows need it (Debian: apt-get install haproxy)");
    }
    Ok(())
}

/// Replicas, HAProxy in front of them, and where the database's server runs.
pub struct Deployment {
    replicas: Vec<Daemon>,
    balancer: Daemon,
    database: u32,
    /// The load balancer's frontends, as clients see the SuperLink.
    pub target: Target,
    /// Each replica's own Fleet address.
    pub replica_fleets: Vec<flwr_transport::address::Address>,
}

impl Deployment {
    /// Starts `replicas` SuperLinks (TLS, `--isolation process`) on a new database of `pg`, then
    /// HAProxy in front of them; files and logs go to `dir`.
    pub async fn start(
        superlink: &Path,
        tls: &TlsFiles,
        client_tls: Arc<rustls::ClientConfig>,
        pg: &PgCluster,
        replicas: usize,
        dir: &Path,
    ) -> Result<Deployment> {
        std::fs::create_dir_all(dir)?;
        let database_url = pg.create_database();
        let database = pg
            .pid()
            .ok_or_else(|| anyhow!("the PostgreSQL server is not running"))?;
        let mut daemons = Vec::with_capacity(replicas);
        let mut backends = Vec::with_capacity(replicas);
        for i in 0..replicas {
            let home = dir.join(format!("replica-{i}"));
            std::fs::create_dir_all(&home)?;
            let mut cmd = daemon::command(superlink);
            cmd.env("FLWR_HOME", &home).env("NO_COLOR", "1");
            daemon::tls_args(&mut cmd, tls);
            for flag in [
                "--serverappio-api-address",
                "--fleet-api-address",
                "--control-api-address",
                "--health-server-address",
            ] {
                cmd.args([flag, "127.0.0.1:0"]);
            }
            cmd.args(["--isolation", "process", "--database", &database_url]);
            let d = Daemon::start(
                &format!("replica {i}"),
                cmd,
                Health::Logged,
                &home.join("superlink.log"),
            )
            .await?;
            backends.push(Addresses {
                fleet: d.logged_address("Fleet API (grpc-rere) serving")?,
                control: d.logged_address("Control API serving")?,
                serverappio: d.logged_address("ServerAppIo API serving")?,
                health: d.logged_address("Health service serving")?,
            });
            daemons.push(d);
        }
        let mut attempt = 0;
        let (balancer, front) = loop {
            attempt += 1;
            let front = Addresses::reserve();
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy::config(&front, &backends, "leastconn"))?;
            let mut cmd = daemon::command(haproxy::PROGRAM);
            cmd.arg("-db").arg("-f").arg(&cfg);
            match Daemon::start(
                "haproxy",
                cmd,
                Health::Listening(&front.control),
                &dir.join("haproxy.log"),
            )
            .await
            {
                Ok(d) => break (d, front),
                Err(e)
                    if attempt < flwr_testkit::ports::START_ATTEMPTS
                        && flwr_testkit::ports::says_address_in_use(&format!("{e:#}")) =>
                {
                    eprintln!("haproxy: a port was taken (attempt {attempt}); starting again on new ports");
                }
                Err(e) => return Err(e),
            }
        };
        let replica_fleets = backends
            .iter()
            .map(|b| b.fleet.parse())
            .collect::<Result<_, _>>()?;
        Ok(Deployment {
            replica_fleets,
            replicas: daemons,
            balancer,
            database,
            target: Target {
                control: front.control.parse()?,
                fleet: front.fleet.parse()?,
                serverappio: front.serverappio.parse()?,
                tls: Some(client_tls),
            },
        })
    }

    /// CPU time and memory of every part now.
    pub fn sample(&self) -> Result<Sample> {
        let mut servers = ProcSample::default();
        for d in &self.replicas {
            let s = d.sample()?;
            servers.cpu_seconds += s.cpu_seconds;
            servers.rss += s.rss;
            servers.peak_rss += s.peak_rss;
        }
        Ok(Sample {
            servers,
            balancer: self.balancer.sample()?,
            database: daemon::sample_children(self.database)?,
        })
    }

    /// Stops HAProxy, then the replicas.
    pub async fn stop(mut self) {
        self.balancer.stop(std::time::Duration::from_secs(5)).await;
        for d in &mut self.replicas {
            d.stop(std::time::Duration::from_secs(10)).await;
        }
    }
}
