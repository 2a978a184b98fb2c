//! FABs (Flower App Bundles): zip files with a `pyproject.toml`. The daemons read only what they
//! need: the app's id and version, its run config (flattened, typed) and its keys, to check and
//! apply overrides.

use std::collections::BTreeSet;
use std::io::Read;

use flwr_objects::ConfigValue;

/// The largest FAB `StartRun` accepts (10 MiB, as Flower).
pub const FAB_MAX_SIZE: usize = 10 * 1024 * 1024;
/// The largest `pyproject.toml` read from a FAB (real ones are a few kilobytes).
pub const PYPROJECT_MAX_SIZE: u64 = 1024 * 1024;

/// What a FAB says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct FabInfo {
    /// `<tool.flwr.app.publisher>/<project.name>`.
    pub fab_id: String,
    /// `project.version`.
    pub fab_version: String,
    /// Keys of `[tool.flwr.app.config]`, nested tables flattened with `.`.
    pub config_keys: BTreeSet<String>,
    /// `[tool.flwr.app.config]` flattened, by key: TOML integers are `Int`, floats
    /// `Double`, booleans `Bool`, strings `Str`.
    pub config: Vec<(String, ConfigValue)>,
}

/// Why a FAB is refused. Texts follow Flower's, which the CLI prints.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FabError {
    /// Not a zip archive.
    #[error("File is not a zip file")]
    NotZip,
    /// The archive has no `pyproject.toml`.
    #[error("There is no \"pyproject.toml\" in the FAB.")]
    NoPyproject,
    /// `pyproject.toml` is not TOML.
    #[error("Invalid TOML content in pyproject.toml")]
    InvalidToml,
    /// `pyproject.toml` is larger than any real one.
    #[error(
        "pyproject.toml in the FAB is larger than {} MiB: this SuperLink refuses it rather than read part of it",
        PYPROJECT_MAX_SIZE >> 20
    )]
    PyprojectTooLarge,
    /// Required fields are missing or malformed (a Python-style list of problems).
    #[error("{}", python_list(.0))]
    Invalid(Vec<String>),
    /// An override names a key the app does not have.
    #[error("Key '{0}' is not present in the main dictionary")]
    UnknownOverride(String),
}

fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Reads the app's identity and config keys from the FAB bytes. CPU-bound (decompression):
/// call it off the async threads.
pub fn inspect(fab: &[u8]) -> Result<FabInfo, FabError> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(fab)).map_err(|_| FabError::NotZip)?;
    let mut file = archive
        .by_name("pyproject.toml")
        .map_err(|_| FabError::NoPyproject)?;
    // A pyproject larger than a megabyte is not a real one: refuse it whole (never read part of
    // it), and read at most one byte past the limit whatever the archive claims (zip bombs).
    let mut text = String::new();
    file.by_ref()
        .take(PYPROJECT_MAX_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(|_| FabError::InvalidToml)?;
    if text.len() as u64 > PYPROJECT_MAX_SIZE {
        return Err(FabError::PyprojectTooLarge);
    }
    let doc: toml::Table = text.parse().map_err(|_| FabError::InvalidToml)?;
    validate(&doc)
}

fn get<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let v = t.get(*first)?;
    if rest.is_empty() {
        Some(v)
    } else {
        get(v.as_table()?, rest)
    }
}

fn validate(doc: &toml::Table) -> Result<FabInfo, FabError> {
    let mut errors = Vec::new();
    let project = doc.get("project").and_then(|v| v.as_table());
    match project {
        None => errors.push("Missing [project] section".to_owned()),
        Some(p) => {
            if !p.contains_key("name") {
                errors.push("Property \"name\" missing in [project]".to_owned());
            }
            if !p.contains_key("version") {
                errors.push("Property \"version\" missing in [project]".to_owned());
            }
        }
    }
    let app = get(doc, &["tool", "flwr", "app"]).and_then(|v| v.as_table());
    let mut config = Vec::new();
    match app {
        None => errors.push("Missing [tool.flwr.app] section".to_owned()),
        Some(app) => {
            if !app.contains_key("publisher") {
                errors.push("Property \"publisher\" missing in [tool.flwr.app]".to_owned());
            }
            if let Some(cfg) = app.get("config") {
                match cfg.as_table() {
                    Some(t) => {
                        let bad;
                        (config, bad) = flatten_config(t);
                        errors.extend(bad.into_iter().map(|k| format!(
                            "The value for key {k} needs to be of type `int`, `float`, `bool, `str`, or  a `dict` of those."
                        )));
                    }
                    None => errors.push("[tool.flwr.app.config] must be a table".to_owned()),
                }
            }
            match app.get("components").and_then(|v| v.as_table()) {
                None => errors.push("Missing [tool.flwr.app.components] section".to_owned()),
                Some(c) => {
                    if !c.contains_key("serverapp") {
                        errors.push(
                            "Property \"serverapp\" missing in [tool.flwr.app.components]"
                                .to_owned(),
                        );
                    }
                    if !c.contains_key("clientapp") {
                        errors.push(
                            "Property \"clientapp\" missing in [tool.flwr.app.components]"
                                .to_owned(),
                        );
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(FabError::Invalid(errors));
    }
    let text = |v: Option<&toml::Value>| match v {
        Some(toml::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let name = text(get(doc, &["project", "name"]));
    let version = text(get(doc, &["project", "version"]));
    let publisher = text(get(doc, &["tool", "flwr", "app", "publisher"]));
    let config_keys = config.iter().map(|(k, _)| k.clone()).collect();
    Ok(FabInfo {
        fab_id: format!("{publisher}/{name}"),
        fab_version: version,
        config_keys,
        config,
    })
}

/// A config table as Flower flattens it: nested tables become dotted keys (`a.b.c`), leaves
/// are strings, integers, floats or booleans. Also the leaf keys of any other type (arrays,
/// dates), which Flower refuses, in the order met.
pub fn flatten_config(t: &toml::Table) -> (Vec<(String, ConfigValue)>, Vec<String>) {
    fn go(
        t: &toml::Table,
        prefix: &str,
        out: &mut Vec<(String, ConfigValue)>,
        bad: &mut Vec<String>,
    ) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let value = match v {
                toml::Value::Table(inner) => {
                    go(inner, &key, out, bad);
                    continue;
                }
                toml::Value::String(s) => ConfigValue::Str(s.clone()),
                toml::Value::Integer(i) => ConfigValue::Int(*i),
                toml::Value::Float(f) => ConfigValue::Double(*f),
                toml::Value::Boolean(b) => ConfigValue::Bool(*b),
                _ => {
                    bad.push(k.clone());
                    continue;
                }
            };
            out.push((key, value));
        }
    }
    let (mut out, mut bad) = (Vec::new(), Vec::new());
    go(t, "", &mut out, &mut bad);
    (out, bad)
}

/// The run config an app sees: the FAB's config with the overrides applied (overrides of keys
/// the app does not have are ignored; the SuperLink refuses them when the run starts).
pub fn run_config(
    info: &FabInfo,
    overrides: &[(String, ConfigValue)],
) -> Vec<(String, ConfigValue)> {
    let mut out = info.config.clone();
    for (k, v) in overrides {
        if let Some(slot) = out.iter_mut().find(|(key, _)| key == k) {
            slot.1 = v.clone();
        }
    }
    out
}

/// Every override key must exist in the app's config (values are not compared, as in Flower).
pub fn check_overrides<'a>(
    info: &FabInfo,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<(), FabError> {
    for k in keys {
        if !info.config_keys.contains(k) {
            return Err(FabError::UnknownOverride(k.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A FAB zip with this pyproject.
    fn fab_with(pyproject: &str) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            z.start_file("pyproject.toml", opts).unwrap();
            z.write_all(pyproject.as_bytes()).unwrap();
            z.finish().unwrap();
        }
        buf.into_inner()
    }

    const GOOD: &str = r#"
[project]
name = "numpy-fedavg"
version = "1.0.0"
[tool.flwr.app]
publisher = "flower-rs"
[tool.flwr.app.components]
serverapp = "a:app"
clientapp = "b:app"
[tool.flwr.app.config]
num-server-rounds = 3
step = 1.0
nested.value = "x"
"#;

    #[test]
    fn an_oversized_pyproject_is_refused_not_truncated() {
        // Valid TOML up to the limit, then a comment that pushes it over.
        let mut big = GOOD.to_owned();
        big.push('#');
        big.push_str(&"x".repeat(PYPROJECT_MAX_SIZE as usize - big.len()));
        assert_eq!(big.len() as u64, PYPROJECT_MAX_SIZE);
        assert!(
            inspect(&fab_with(&big)).is_ok(),
            "exactly the limit is read"
        );
        big.push('x');
        assert_eq!(
            inspect(&fab_with(&big)).unwrap_err(),
            FabError::PyprojectTooLarge
        );
    }

    #[test]
    fn reads_identity_and_config_keys() {
        let info = inspect(&fab_with(GOOD)).unwrap();
        assert_eq!(info.fab_id, "flower-rs/numpy-fedavg");
        assert_eq!(info.fab_version, "1.0.0");
        assert!(info.config_keys.contains("nested.value") && info.config_keys.contains("step"));
        check_overrides(&info, ["step", "nested.value"]).unwrap();
        assert!(info
            .config
            .contains(&("num-server-rounds".to_owned(), ConfigValue::Int(3))));
        let cfg = run_config(
            &info,
            &[
                ("step".to_owned(), ConfigValue::Double(0.5)),
                ("x".to_owned(), ConfigValue::Int(1)),
            ],
        );
        assert!(cfg.contains(&("step".to_owned(), ConfigValue::Double(0.5))));
        assert!(cfg.contains(&("nested.value".to_owned(), ConfigValue::Str("x".into()))));
        assert_eq!(cfg.len(), 3);
        assert_eq!(
            check_overrides(&info, ["nope"]).unwrap_err().to_string(),
            "Key 'nope' is not present in the main dictionary"
        );
    }

    #[test]
    fn refuses_bad_fabs_with_flowers_words() {
        assert_eq!(
            inspect(b"not a zip").unwrap_err().to_string(),
            "File is not a zip file"
        );
        let e = inspect(&fab_with("[project]\nname = \"x\"\n")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("['Property \"version\" missing in [project]'"),
            "{e}"
        );
        assert_eq!(
            inspect(&fab_with("= broken")).unwrap_err(),
            FabError::InvalidToml
        );
    }
}
