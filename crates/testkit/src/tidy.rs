//! Checks of the source tree that ARCHITECTURE.md's invariants rest on (the tidy tests).

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
pub fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `file:line` of every `tonic::Status` constructor in the `.rs` files under `dir`; `scanned`
/// gives the text to check of each file (or `None` to leave the file out).
pub fn status_constructors_under(
    dir: &Path,
    scanned: impl Fn(&Path, String) -> Option<String>,
) -> Vec<String> {
    let mut files = Vec::new();
    sources(dir, &mut files);
    assert!(files.len() > 5, "no sources under {}", dir.display());
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let Some(text) = scanned(&file, text) else {
            continue;
        };
        for line in status_constructors(&text) {
            found.push(format!("{}:{line}", file.display()));
        }
    }
    found
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
pub fn status_constructors(text: &str) -> Vec<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_sees_constructors_and_not_enum_variants() {
        let text = "Err(Status::unknown(\"x\"))\nlet s = tonic::Status::new(c, m);\n\
                    if s == flwr_state::Status::Finished {}\nRunStatus::new(Status::Running)\n\
                    let s = Status::parse(text)?;\n";
        assert_eq!(status_constructors(text), vec![1, 2]);
    }
}
