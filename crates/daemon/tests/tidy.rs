//! ARCHITECTURE.md's "flwr-daemon is apart from the wire", checked: its manifest names no gRPC,
//! HTTP/2, TLS or protobuf crate, and no crate of ours that speaks them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flwr_testkit::tidy::dependencies;

#[test]
fn the_daemon_plumbing_knows_no_wire() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let deps = dependencies(&manifest);
    assert!(
        deps.iter().any(|d| d == "tokio"),
        "read the table: {deps:?}"
    );
    for wire in [
        "tonic",
        "prost",
        "hyper",
        "h2",
        "rustls",
        "tokio-rustls",
        "flwr-proto",
        "flwr-transport",
    ] {
        assert!(
            !deps
                .iter()
                .any(|d| d == wire || d.starts_with(&format!("{wire}-"))),
            "crates/daemon depends on {wire}: {deps:?}"
        );
    }
}

/// ARCHITECTURE.md's "both daemons run on `flwr_daemon::Allocator`", checked in their `main.rs`.
#[test]
fn both_daemons_run_on_the_shared_allocator() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for daemon in ["superlink", "supernode"] {
        let main = std::fs::read_to_string(crates.join(daemon).join("src/main.rs")).unwrap();
        let declared = main
            .split("#[global_allocator]")
            .nth(1)
            .and_then(|rest| rest.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or_default();
        assert!(
            declared.contains("flwr_daemon::Allocator"),
            "crates/{daemon}/src/main.rs does not declare flwr_daemon::Allocator as its \
             #[global_allocator]: {declared:?}"
        );
    }
}
