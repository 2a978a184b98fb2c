//! ARCHITECTURE.md's "errors become gRPC codes in one place", checked: no source file of the
//! SuperLink but `service/status.rs` builds a `tonic::Status`; everything else raises an
//! `Error` and lets that module choose the code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flwr_testkit::tidy::{sources, status_constructors};

#[test]
fn only_the_status_module_builds_grpc_statuses() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 5, "no sources under {}", src.display());
    let mut offenders = Vec::new();
    for file in files {
        if file.ends_with("service/status.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for line in status_constructors(&text) {
            offenders.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(
        offenders.is_empty(),
        "gRPC statuses built outside service/status.rs (raise an `Error` instead):\n{}",
        offenders.join("\n")
    );
}
