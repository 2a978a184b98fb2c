//! FABs made inside a test: a zip with a `pyproject.toml`.

use std::io::Write as _;

/// A `pyproject.toml` of a small valid app (publisher `tests`, config `rounds = 3`).
pub const PYPROJECT: &str = r#"
[project]
name = "app"
version = "1.0.0"
[tool.flwr.app]
publisher = "tests"
[tool.flwr.app.components]
serverapp = "a:app"
clientapp = "b:app"
[tool.flwr.app.config]
rounds = 3
"#;

/// A FAB (zip) holding `pyproject` as `pyproject.toml`.
pub fn zip(pyproject: &str) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file("pyproject.toml", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(pyproject.as_bytes()).unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}
