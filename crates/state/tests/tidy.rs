//! ARCHITECTURE.md's "the state knows no wire", checked: neither this crate nor the workspace
//! crates it depends on may depend on prost or tonic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flwr_testkit::tidy::dependencies;

#[test]
fn the_state_and_what_it_builds_on_know_no_protobuf_or_grpc() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seen = Vec::new();
    let mut todo = vec!["state".to_owned()];
    while let Some(dir) = todo.pop() {
        let deps = dependencies(&crates.join(&dir).join("Cargo.toml"));
        for wire in ["prost", "tonic", "flwr-proto", "flwr-transport"] {
            assert!(
                !deps
                    .iter()
                    .any(|d| d == wire || d.starts_with(&format!("{wire}-"))),
                "crates/{dir} depends on {wire}: {deps:?}"
            );
        }
        // Follow the workspace crates (flwr-objects, ...).
        for d in deps {
            if let Some(name) = d.strip_prefix("flwr-") {
                if !seen.contains(&name.to_owned()) {
                    seen.push(name.to_owned());
                    todo.push(name.to_owned());
                }
            }
        }
    }
    assert!(seen.contains(&"objects".to_owned()), "{seen:?}");
}
