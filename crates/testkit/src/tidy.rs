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

/// Dependencies that only generated code (tonic and prost output included from `OUT_DIR`) uses:
/// `(crate directory, dependency)`.
const USED_BY_GENERATED_CODE: &[(&str, &str)] = &[
    ("loadgen", "prost"),
    ("loadgen", "tonic-prost"),
    ("proto", "tonic-prost"),
];

/// `crate: dependency` for each entry of a `[dependencies]` or `[dev-dependencies]` table of the
/// crates under `crates_dir` that no source of that crate names (`dep::`, `use dep`). Regular
/// dependencies are looked for in `src/` and `build.rs`, dev-dependencies also in `tests/`,
/// `benches/` and `examples/`.
pub fn unused_dependencies(crates_dir: &Path) -> Vec<String> {
    let mut unused = Vec::new();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(crates_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    for dir in crates {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let text_of = |dirs: &[&str]| {
            let mut files = Vec::new();
            for d in dirs {
                if dir.join(d).is_dir() {
                    sources(&dir.join(d), &mut files);
                }
            }
            if dir.join("build.rs").is_file() {
                files.push(dir.join("build.rs"));
            }
            files
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let regular = text_of(&["src"]);
        let everything = text_of(&["src", "tests", "benches", "examples"]);
        for (table, dep) in dependency_entries(&manifest) {
            if USED_BY_GENERATED_CODE.contains(&(name.as_str(), dep.as_str())) {
                continue;
            }
            let text = if table == "dependencies" {
                &regular
            } else {
                &everything
            };
            let ident = dep.replace('-', "_");
            let named = text.contains(&format!("{ident}::"))
                || text.contains(&format!("use {ident}"))
                || text.contains(&format!("extern crate {ident}"));
            if !named {
                unused.push(format!("{name}: {dep} ([{table}])"));
            }
        }
    }
    unused
}

/// `(table, dependency)` for each entry of a manifest's `[dependencies]` and
/// `[dev-dependencies]` tables (build dependencies are for `build.rs` and left out).
fn dependency_entries(manifest: &str) -> Vec<(String, String)> {
    let mut table = String::new();
    let mut entries = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = t.to_owned();
            continue;
        }
        if table != "dependencies" && table != "dev-dependencies" {
            continue;
        }
        let Some(key) = line.split(['=', '.']).next().map(str::trim) else {
            continue;
        };
        if !key.is_empty() && !key.starts_with('#') {
            entries.push((table.clone(), key.to_owned()));
        }
    }
    entries
}

/// The names in a manifest's `[dependencies]` table.
pub fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_deps = false;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = line.split_once(['=', '.']) {
                if !name.trim().is_empty() && !name.starts_with('#') {
                    names.push(name.trim().to_owned());
                }
            }
        }
    }
    names
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
