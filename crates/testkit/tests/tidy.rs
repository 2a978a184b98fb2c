//! Workspace-wide tidy checks: every crate's manifest lists only what its code uses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn every_crate_uses_each_of_its_dependencies() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unused = flwr_testkit::tidy::unused_dependencies(crates);
    assert!(
        unused.is_empty(),
        "dependencies that no source of their crate names (remove them, or move a test-only \
         one to [dev-dependencies]):\n{}",
        unused.join("\n")
    );
}
