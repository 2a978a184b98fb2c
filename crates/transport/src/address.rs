//! Addresses as Flower writes them: `host:port`, `[v6]:port` or `name:port`.
//!
//! Parsing mirrors Flower's rule: split at the last `:`, the port is an integer in 0..=65535, and
//! the host may be bracketed. A server may use port 0: the operating system picks a free port and
//! the daemon logs and reports the bound address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The host part of an [`Address`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, resolved when it is used.
    Name(String),
}

/// A parsed `host:port` address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    host: Host,
    port: u16,
}

/// Why an address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "address `{input}` cannot be parsed: {reason}; write it as HOST:PORT, [IPV6]:PORT or \
     NAME:PORT with a port from 0 to 65535 (for example 0.0.0.0:9092 or [::1]:9092)"
)]
pub struct AddressError {
    input: String,
    reason: &'static str,
}

impl Address {
    /// An address from parts.
    pub fn new(host: Host, port: u16) -> Self {
        Self { host, port }
    }

    /// The address of a bound socket.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Self::new(Host::Ip(addr.ip()), addr.port())
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port (0 means "any free port" for a server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as TLS needs it for server-name verification: a DNS name or an IP literal,
    /// without brackets.
    pub fn host_str(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }

    /// Resolves the address into socket addresses (a DNS lookup for names).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Name(name) => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), self.port))
                    .await?
                    .collect();
                if found.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("the name `{name}` resolves to no address"),
                    ));
                }
                Ok(found)
            }
        }
    }

    /// The address a local client uses to reach a server bound here: a wildcard host
    /// (`0.0.0.0`, `::`) becomes the loopback address of the same family.
    pub fn connectable(&self) -> Self {
        let host = match &self.host {
            Host::Ip(IpAddr::V4(ip)) if ip.is_unspecified() => Host::Ip(Ipv4Addr::LOCALHOST.into()),
            Host::Ip(IpAddr::V6(ip)) if ip.is_unspecified() => Host::Ip(Ipv6Addr::LOCALHOST.into()),
            other => other.clone(),
        };
        Self::new(host, self.port)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddressError {
            input: input.to_owned(),
            reason,
        };
        let (raw_host, raw_port) = input
            .rsplit_once(':')
            .ok_or_else(|| err("there is no `:PORT`"))?;
        let port: u16 = raw_port
            .parse()
            .map_err(|_| err("the port is not a number from 0 to 65535"))?;
        if raw_host.is_empty() {
            return Err(err("the host is empty"));
        }
        let bracketed = raw_host.starts_with('[') || raw_host.ends_with(']');
        let unbracketed = raw_host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            if bracketed && !(raw_host.starts_with('[') && raw_host.ends_with(']')) {
                return Err(err("the brackets around the IPv6 address do not match"));
            }
            if bracketed && ip.is_ipv4() {
                return Err(err("only IPv6 addresses go in brackets"));
            }
            return Ok(Self::new(Host::Ip(ip), port));
        }
        if bracketed {
            return Err(err("the text in brackets is not an IPv6 address"));
        }
        if !is_host_name(raw_host) {
            return Err(err(
                "the host is neither an IP address nor a valid host name",
            ));
        }
        Ok(Self::new(Host::Name(raw_host.to_owned()), port))
    }
}

fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Address {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_forms_flower_accepts() {
        assert_eq!(ok("0.0.0.0:9092").to_string(), "0.0.0.0:9092");
        assert_eq!(ok("[::1]:9092").to_string(), "[::1]:9092");
        assert_eq!(ok("[::]:0").port(), 0);
        assert_eq!(ok("superlink:9092").host(), &Host::Name("superlink".into()));
        assert_eq!(ok("my-host.example.org:65535").port(), 65535);
        // Flower splits at the last colon, so a bare IPv6 address with a port also works.
        assert_eq!(ok("::1:9092").to_string(), "[::1]:9092");
    }

    #[test]
    fn refuses_bad_addresses_with_a_reason() {
        for bad in [
            "9092",
            "localhost",
            "localhost:",
            ":9092",
            "host:65536",
            "host:-1",
            "host:x",
            "[1.2.3.4]:1",
            "[::1:9092",
            "[nope]:1",
            "bad host:1",
            "a..b:1",
        ] {
            let e = bad.parse::<Address>().expect_err(bad);
            let text = e.to_string();
            assert!(text.contains(bad), "{text}");
            assert!(text.contains("HOST:PORT"), "{text}");
        }
    }

    #[test]
    fn wildcard_hosts_become_loopback_for_clients() {
        assert_eq!(
            ok("0.0.0.0:9091").connectable().to_string(),
            "127.0.0.1:9091"
        );
        assert_eq!(ok("[::]:9091").connectable().to_string(), "[::1]:9091");
        assert_eq!(
            ok("10.0.0.1:9091").connectable().to_string(),
            "10.0.0.1:9091"
        );
    }

    #[tokio::test]
    async fn resolves_names_and_literals() {
        let a = ok("127.0.0.1:5").resolve().await.unwrap_or_default();
        assert_eq!(
            a,
            vec!["127.0.0.1:5".parse().unwrap_or_else(|_| unreachable!())]
        );
        let b = ok("localhost:5").resolve().await.unwrap_or_default();
        assert!(b.iter().all(|s| s.ip().is_loopback() && s.port() == 5) && !b.is_empty());
    }
}
