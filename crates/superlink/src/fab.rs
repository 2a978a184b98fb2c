//! FABs (Flower App Bundles): zip files with a `pyproject.toml`. The SuperLink reads only what it
//! needs: the app's id and version, and the keys of its run config, to check overrides.

use std::collections::BTreeSet;
use std::io::Read;

/// The largest FAB `StartRun` accepts (10 MiB, as Flower).
pub const FAB_MAX_SIZE: usize = 10 * 1024 * 1024;

/// What the SuperLink learns from a FAB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabInfo {
    /// `<tool.flwr.app.publisher>/<project.name>`.
    pub fab_id: String,
    /// `project.version`.
    pub fab_version: String,
    /// Keys of `[tool.flwr.app.config]`, nested tables flattened with `.`.
    pub config_keys: BTreeSet<String>,
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
    // A pyproject larger than a megabyte is not a real one; do not inflate bombs.
    let mut text = String::new();
    file.by_ref()
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|_| FabError::InvalidToml)?;
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
    let mut config_keys = BTreeSet::new();
    match app {
        None => errors.push("Missing [tool.flwr.app] section".to_owned()),
        Some(app) => {
            if !app.contains_key("publisher") {
                errors.push("Property \"publisher\" missing in [tool.flwr.app]".to_owned());
            }
            if let Some(cfg) = app.get("config") {
                match cfg.as_table() {
                    Some(t) => flatten_keys(t, "", &mut config_keys, &mut errors),
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
    Ok(FabInfo {
        fab_id: format!("{publisher}/{name}"),
        fab_version: version,
        config_keys,
    })
}

fn flatten_keys(
    t: &toml::Table,
    prefix: &str,
    out: &mut BTreeSet<String>,
    errors: &mut Vec<String>,
) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten_keys(inner, &key, out, errors),
            toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                out.insert(key);
            }
            _ => errors.push(format!(
                "The value for key {k} needs to be of type `int`, `float`, `bool, `str`, or  a `dict` of those."
            )),
        }
    }
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
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A FAB zip with this pyproject.
    pub(crate) fn fab_with(pyproject: &str) -> Vec<u8> {
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

    pub(crate) const GOOD: &str = r#"
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
    fn reads_identity_and_config_keys() {
        let info = inspect(&fab_with(GOOD)).unwrap();
        assert_eq!(info.fab_id, "flower-rs/numpy-fedavg");
        assert_eq!(info.fab_version, "1.0.0");
        assert!(info.config_keys.contains("nested.value") && info.config_keys.contains("step"));
        check_overrides(&info, ["step", "nested.value"]).unwrap();
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
