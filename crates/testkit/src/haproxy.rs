//! HAProxy in front of SuperLink replicas, configured like `docker/ha/haproxy.cfg` (TCP, TLS passed
//! through, each replica's gRPC health service checked), on loopback addresses: the
//! high-availability tests and the benchmark's PostgreSQL rows.

use std::path::PathBuf;

use crate::ports;
use crate::python;

/// Where Debian's package puts HAProxy.
pub const PROGRAM: &str = "/usr/sbin/haproxy";

/// HAProxy, or a panic that says how to install it.
pub fn program() -> PathBuf {
    let p = PathBuf::from(PROGRAM);
    assert!(
        p.is_file(),
        "HAProxy is not installed: the high-availability tests need it (Debian: apt-get install haproxy)"
    );
    p
}

/// A SuperLink's three API addresses and its health service (a replica's, or the load
/// balancer's frontends, which have no health service).
#[derive(Clone, Debug)]
pub struct Addresses {
    /// Fleet API.
    pub fleet: String,
    /// Control API.
    pub control: String,
    /// ServerAppIo API.
    pub serverappio: String,
    /// gRPC health service.
    pub health: String,
}

impl Addresses {
    /// The loopback addresses of four ports (fleet, control, serverappio, health), as
    /// [`ports::start_with_fresh_ports`] hands them out.
    pub fn of_ports(ports: &[u16]) -> Self {
        let at = |i: usize| format!("127.0.0.1:{}", ports[i]);
        Self {
            fleet: at(0),
            control: at(1),
            serverappio: at(2),
            health: at(3),
        }
    }

    /// Four reserved loopback addresses (see [`ports::reserve`]).
    pub fn reserve() -> Self {
        Self {
            fleet: ports::reserve_address(),
            control: ports::reserve_address(),
            serverappio: ports::reserve_address(),
            health: ports::reserve_address(),
        }
    }
}

/// The gRPC health check of `docker/ha/haproxy.cfg` (one definition: read from that file); it
/// goes to each server's `check port`.
pub fn grpc_health_check() -> String {
    let cfg = std::fs::read_to_string(python::repo_root().join("docker/ha/haproxy.cfg")).unwrap();
    let request = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("tcp-check send-binary "))
        .expect("the documented configuration sends a health request");
    format!(
        "    option tcp-check\n    tcp-check connect\n    tcp-check send-binary {request}\n    \
         tcp-check expect binary 00000000020801\n"
    )
}

/// A configuration with frontends at `front` and a backend per API over `replicas`, balanced by
/// `balance` (`first` puts every client on the first replica that is up; `leastconn` spreads
/// them as the documented file does).
pub fn config(front: &Addresses, replicas: &[Addresses], balance: &str) -> String {
    let port = |a: &str| a.rsplit(':').next().unwrap().to_owned();
    let mut cfg = String::from(
        "global\n    maxconn 4096\n    log stdout format raw local0\n\ndefaults\n    mode tcp\n    \
         log global\n    timeout connect 2s\n    \
         timeout client 1h\n    timeout server 1h\n    timeout check 1s\n    retries 3\n    \
         option redispatch\n    default-server inter 500ms fall 2 rise 1\n\n",
    );
    let check = grpc_health_check();
    for (api, front_addr) in [
        ("fleet", &front.fleet),
        ("control", &front.control),
        ("serverappio", &front.serverappio),
    ] {
        cfg.push_str(&format!(
            "frontend {api}\n    bind {front_addr}\n    default_backend {api}_replicas\n\n\
             backend {api}_replicas\n    balance {balance}\n{check}"
        ));
        for (i, r) in replicas.iter().enumerate() {
            let addr = match api {
                "fleet" => &r.fleet,
                "control" => &r.control,
                _ => &r.serverappio,
            };
            cfg.push_str(&format!(
                "    server replica{i} {addr} check port {}\n",
                port(&r.health)
            ));
        }
        cfg.push('\n');
    }
    cfg
}
