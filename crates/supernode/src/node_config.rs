//! `--node-config`, parsed as Flower does: either the path of a `.toml` file (flattened with `.`
//! between nested keys), or space-separated `key=value` pairs whose values are TOML literals
//! (`1`, `0.5`, `true`, `"text"`, `'text with spaces'`).

use std::path::Path;

use flwr_objects::ConfigValue;

/// Why `--node-config` is refused.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// A pair is not valid TOML.
    #[error(
        "`--node-config`: the pair `{pair}` is not valid ({reason}). Write space-separated key=value pairs whose \
         values are TOML literals, e.g. 'partition-id=0 num-partitions=2 name=\"a b\"' (strings need quotes)."
    )]
    BadPair {
        /// The offending pair.
        pair: String,
        /// The parser's words.
        reason: String,
    },
    /// A `.toml` file together with pairs.
    #[error("`--node-config`: TOML files cannot be passed alongside key-value pairs.")]
    FileWithPairs,
    /// The file could not be read or parsed.
    #[error("`--node-config`: cannot use '{path}': {reason}")]
    File {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A value of an unsupported type (an array, a date...).
    #[error("`--node-config`: the value for key {0} needs to be of type `int`, `float`, `bool`, `str`, or a table of those.")]
    BadType(String),
}

/// Parses the flag's value into flattened key/value pairs (sorted by key).
pub fn parse(value: &str) -> Result<Vec<(String, ConfigValue)>, NodeConfigError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if trimmed.ends_with(".toml") {
        if trimmed.contains('=') {
            return Err(NodeConfigError::FileWithPairs);
        }
        let path = flwr_transport::files::expand_user(Path::new(trimmed));
        let text = std::fs::read_to_string(&path).map_err(|e| NodeConfigError::File {
            path: trimmed.to_owned(),
            reason: e.to_string(),
        })?;
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| NodeConfigError::File {
                    path: trimmed.to_owned(),
                    reason: e.message().to_owned(),
                })?;
        return flatten(&table);
    }
    let mut table = toml::Table::new();
    for (key, val) in pairs(trimmed) {
        let line = format!("{key} = {val}");
        let parsed: toml::Table =
            line.parse()
                .map_err(|e: toml::de::Error| NodeConfigError::BadPair {
                    pair: format!("{key}={val}"),
                    reason: e.message().trim().to_owned(),
                })?;
        merge(&mut table, parsed);
    }
    flatten(&table)
}

/// Finds `key=value` pairs the way Flower's pattern `(\S+?)=('[^']*'|"[^"]*"|\S+)` does.
fn pairs(s: &str) -> Vec<(String, String)> {
    let b: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        // The key: the shortest run of non-space characters followed by '='.
        let mut j = i;
        let mut found = None;
        while j < b.len() && !b[j].is_whitespace() {
            if b[j] == '=' && j > i {
                found = Some(j);
                break;
            }
            j += 1;
        }
        let Some(eq) = found else {
            i += 1;
            continue;
        };
        let v0 = eq + 1;
        if v0 >= b.len() || b[v0].is_whitespace() {
            i += 1;
            continue;
        }
        let quoted_end = match b[v0] {
            q @ ('\'' | '"') => b[v0 + 1..]
                .iter()
                .position(|c| *c == q)
                .map(|p| v0 + 1 + p + 1),
            _ => None,
        };
        let end = quoted_end.unwrap_or_else(|| {
            let mut e = v0;
            while e < b.len() && !b[e].is_whitespace() {
                e += 1;
            }
            e
        });
        out.push((b[i..eq].iter().collect(), b[v0..end].iter().collect()));
        i = end;
    }
    out
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn flatten(t: &toml::Table) -> Result<Vec<(String, ConfigValue)>, NodeConfigError> {
    let (mut out, bad) = flwr_fab::flatten_config(t);
    if let Some(k) = bad.into_iter().next() {
        return Err(NodeConfigError::BadType(k));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(c: &'a [(String, ConfigValue)], k: &str) -> &'a ConfigValue {
        &c.iter()
            .find(|(key, _)| key == k)
            .unwrap_or_else(|| panic!("{k} missing in {c:?}"))
            .1
    }

    #[test]
    fn pairs_are_toml_literals() {
        let c = parse(r#"partition-id=0 num-partitions=2 lr=0.5 flag=true name="a b" other='x y'"#)
            .unwrap();
        assert_eq!(get(&c, "partition-id"), &ConfigValue::Int(0));
        assert_eq!(get(&c, "num-partitions"), &ConfigValue::Int(2));
        assert_eq!(get(&c, "lr"), &ConfigValue::Double(0.5));
        assert_eq!(get(&c, "flag"), &ConfigValue::Bool(true));
        assert_eq!(get(&c, "name"), &ConfigValue::Str("a b".into()));
        assert_eq!(get(&c, "other"), &ConfigValue::Str("x y".into()));
        let nested = parse("a.b=3 a.c=4").unwrap();
        assert_eq!(
            nested,
            vec![
                ("a.b".into(), ConfigValue::Int(3)),
                ("a.c".into(), ConfigValue::Int(4))
            ]
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bare_words_and_arrays_are_refused_with_the_pair() {
        let e = parse("partition-id=0 name=abc").unwrap_err().to_string();
        assert!(e.contains("`name=abc`"), "{e}");
        assert!(matches!(parse("x=[1,2]"), Err(NodeConfigError::BadType(k)) if k == "x"));
    }

    #[test]
    fn toml_files_are_flattened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, "partition-id = 1\n[data]\npath = \"/d\"\n").unwrap();
        let c = parse(p.to_str().unwrap()).unwrap();
        assert_eq!(get(&c, "partition-id"), &ConfigValue::Int(1));
        assert_eq!(get(&c, "data.path"), &ConfigValue::Str("/d".into()));
        assert!(matches!(
            parse("missing.toml"),
            Err(NodeConfigError::File { .. })
        ));
    }
}
