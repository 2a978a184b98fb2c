//! The Python side of the tests: a venv with `flwr==1.28.0`, made by `scripts/python-env.sh`.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The venv's `bin` directory. Fails the test, saying how to fix it, when the venv is missing:
/// interop tests never skip.
pub fn venv_bin() -> PathBuf {
    let venv = std::env::var_os("FLWR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    let bin = venv.join("bin");
    let flwr = bin.join("flwr");
    let python = bin.join("python");
    assert!(
        flwr.is_file() && python.is_file(),
        "the Python venv with flwr==1.28.0 is missing at {} (no {}). Run `scripts/python-env.sh` \
         (or the README's test command, which runs it), or set FLWR_VENV to such a venv.",
        venv.display(),
        flwr.display()
    );
    bin
}

/// The venv's Python interpreter.
pub fn python() -> PathBuf {
    venv_bin().join("python")
}

/// A program of the venv (`flwr`, `flower-superlink`, `flwr-serverapp`, ...).
pub fn tool(name: &str) -> PathBuf {
    venv_bin().join(name)
}
