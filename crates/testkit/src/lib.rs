//! Helpers for the project's tests and its benchmark. Not part of either daemon.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

pub mod fab;
pub mod federation;
pub mod haproxy;
pub mod metrics;
pub mod pki;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod python;
pub mod tidy;

/// The `--long-flags` that a `--help` text mentions.
pub fn flags_in_help(help: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let bytes = help.as_bytes();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'-');
        if boundary
            && bytes[i] == b'-'
            && bytes[i + 1] == b'-'
            && bytes[i + 2].is_ascii_alphabetic()
        {
            let start = i;
            i += 2;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-') {
                i += 1;
            }
            out.insert(help[start..i].trim_end_matches('-').to_owned());
        } else {
            i += 1;
        }
    }
    out
}
