//! Scraping a daemon's `/metrics` and reading figures out of the text, checked by Prometheus's
//! own parser (`promtool check metrics`, from Debian's `prometheus` package).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `GET /metrics` on `addr` (host:port): the body, or why not.
pub fn try_scrape(addr: &str) -> Result<String, String> {
    let mut tcp = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("scrape of {addr} answered: {head}"));
    }
    Ok(body.to_owned())
}

/// [`try_scrape`], which must succeed.
pub fn scrape(addr: &str) -> String {
    try_scrape(addr).unwrap_or_else(|e| panic!("{e}"))
}

/// The value of the sample `name` whose labels include every `labels` pair; `None` when no such
/// sample exists.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, v) = line.rsplit_once(' ')?;
            let (n, set) = match series.split_once('{') {
                Some((n, set)) => (n, set.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = n == name
                && labels
                    .iter()
                    .all(|(k, val)| set.split(',').any(|p| p == format!("{k}=\"{val}\"")));
            matches.then(|| v.parse().ok()).flatten()
        })
}

/// `promtool check metrics` on `text`: panics with promtool's words when it finds a problem
/// (a parse error, or a lint: missing help, a counter without `_total`, a non-base unit).
pub fn check_with_promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's `prometheus` package")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_name_and_labels() {
        let text = "# HELP a_total x\n# TYPE a_total counter\na_total{kind=\"x\",api=\"f\"} 3\na_total{kind=\"y\"} 4\nb 1.5\n";
        assert_eq!(value(text, "a_total", &[("kind", "y")]), Some(4.0));
        assert_eq!(value(text, "a_total", &[("api", "f")]), Some(3.0));
        assert_eq!(value(text, "b", &[]), Some(1.5));
        assert_eq!(value(text, "a_total", &[("kind", "z")]), None);
    }
}
