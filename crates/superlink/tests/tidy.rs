//! ARCHITECTURE.md's "errors become gRPC codes in one place", checked: no source file of the
//! SuperLink but `service/status.rs` builds a `tonic::Status`; everything else raises an
//! `Error` and lets that module choose the code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `tonic::Status`'s constructors.
const CONSTRUCTORS: &[&str] = &[
    "new",
    "with_details",
    "with_metadata",
    "with_details_and_metadata",
    "from_error",
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// The places in `text` where a `Status` constructor (`Status::unknown(`, `tonic::Status::new(`,
/// ...) is called; `flwr_state::Status::Finished` and other enum variants do not count.
fn status_constructors(text: &str) -> Vec<usize> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("Status::") {
            let before = rest[..i].chars().last();
            let after = &rest[i + "Status::".len()..];
            let is_type = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if is_type && CONSTRUCTORS.contains(&name.as_str()) {
                found.push(n + 1);
            }
            rest = after;
        }
    }
    found
}

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

#[test]
fn the_check_sees_constructors_and_not_enum_variants() {
    let text = "Err(Status::unknown(\"x\"))\nlet s = tonic::Status::new(c, m);\n\
                if s == flwr_state::Status::Finished {}\nRunStatus::new(Status::Running)\n\
                let s = Status::parse(text)?;\n";
    assert_eq!(status_constructors(text), vec![1, 2]);
}
