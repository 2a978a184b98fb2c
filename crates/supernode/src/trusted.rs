//! `--trusted-entities`: the publishers whose signatures make a FAB acceptable.
//!
//! The file is a YAML mapping from a key id (`fpk_...`) to an OpenSSH Ed25519 public key
//! (`ssh-ed25519 AAAA... [comment]`), as Flower's. A FAB passes when the verifications that came
//! with it (GetFab) hold a non-empty `valid_license` and, for at least one key id of the file, a
//! JSON `{"signature": <base64url>, "signed_at": <int>}` whose signature is that key's Ed25519
//! signature over `signed_at` (8 bytes, big-endian) followed by the SHA-256 of the FAB's bytes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64ct::Encoding as _;
use sha2::Digest;

const FLAG: &str = "--trusted-entities";

/// The trusted keys, by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedEntities {
    keys: BTreeMap<String, [u8; 32]>,
}

/// Why `--trusted-entities` cannot be used. Each message names the flag, the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TrustedEntitiesError {
    /// The file cannot be read.
    #[error("`{FLAG}` '{}': cannot read it ({source}). Give a YAML file of key ids and `ssh-ed25519` public keys.", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML, or not a mapping of strings.
    #[error("`{FLAG}` '{}': {detail}. Write one line per entity: `fpk_<id>: 'ssh-ed25519 AAAA...'`.", path.display())]
    NotAMapping {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A key is not an OpenSSH Ed25519 public key.
    #[error("`{FLAG}` '{}': the public key of trusted entity {id} is not Ed25519 ({detail}). Only `ssh-ed25519` keys sign FABs.", path.display())]
    NotEd25519 {
        /// The file.
        path: PathBuf,
        /// The entity.
        id: String,
        /// Why.
        detail: String,
    },
}

/// Why a FAB is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// No `valid_license` came with the FAB.
    #[error("the FAB could not be verified: it carries no license (the SuperLink does not verify apps, or the app is not from Flower Hub)")]
    NoLicense,
    /// No signature by a trusted key verifies.
    #[error("the FAB could not be verified: the app is not signed by a trusted entity ({0})")]
    NotSigned(String),
}

impl TrustedEntities {
    /// Reads and checks the file (blocking).
    pub fn load(path: &Path) -> Result<Self, TrustedEntitiesError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TrustedEntitiesError::Unreadable {
                path: path.to_path_buf(),
                source,
            })?;
        let not_a_mapping = |detail: String| TrustedEntitiesError::NotAMapping {
            path: path.to_path_buf(),
            detail,
        };
        let docs = yaml_rust2::YamlLoader::load_from_str(&text)
            .map_err(|e| not_a_mapping(format!("not YAML ({e})")))?;
        let Some(yaml_rust2::Yaml::Hash(map)) = docs.into_iter().next() else {
            return Err(not_a_mapping(
                "not a mapping of key ids to public keys".into(),
            ));
        };
        let mut keys = BTreeMap::new();
        for (id, key) in map {
            let (Some(id), Some(key)) = (id.as_str(), key.as_str()) else {
                return Err(not_a_mapping(format!(
                    "entry {id:?} is not a key id with a public key"
                )));
            };
            let parsed = ssh_key::PublicKey::from_openssh(key).map_err(|e| {
                TrustedEntitiesError::NotEd25519 {
                    path: path.to_path_buf(),
                    id: id.to_owned(),
                    detail: e.to_string(),
                }
            })?;
            let Some(ed) = parsed.key_data().ed25519() else {
                return Err(TrustedEntitiesError::NotEd25519 {
                    path: path.to_path_buf(),
                    id: id.to_owned(),
                    detail: format!("it is {}", parsed.algorithm()),
                });
            };
            keys.insert(id.to_owned(), ed.0);
        }
        Ok(Self { keys })
    }

    /// How many keys the file holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the file holds no key (then no FAB passes).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a FAB against the verifications that came with it.
    pub fn verify(
        &self,
        fab: &[u8],
        verifications: &HashMap<String, String>,
    ) -> Result<(), Unverified> {
        if verifications
            .get("valid_license")
            .is_none_or(|l| l.is_empty())
        {
            return Err(Unverified::NoLicense);
        }
        let digest = sha2::Sha256::digest(fab);
        let mut why = Vec::new();
        // As Flower: every record must be JSON, and a trusted one readable; a signature that
        // does not verify lets the next one try.
        let mut records = Vec::new();
        for (id, record) in verifications {
            if id == "valid_license" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(record)
                .map_err(|e| Unverified::NotSigned(format!("{id}: unreadable record ({e})")))?;
            records.push((id, v));
        }
        for (id, record) in records {
            let Some(key) = self.keys.get(id) else {
                why.push(format!("{id}: not a trusted entity"));
                continue;
            };
            let (signed_at, signature) =
                fields(&record).map_err(|e| Unverified::NotSigned(format!("{id}: {e}")))?;
            match check(key, &digest, signed_at, &signature) {
                Ok(()) => return Ok(()),
                Err(e) => why.push(format!("{id}: {e}")),
            }
        }
        if why.is_empty() {
            why.push("no signature came with it".into());
        }
        Err(Unverified::NotSigned(why.join("; ")))
    }
}

/// The signing time and the signature of a record `{"signature": <base64url>, "signed_at":
/// <int>}` (the standard alphabet and padding are taken too, as Python's decoder takes them).
fn fields(record: &serde_json::Value) -> Result<(u64, Vec<u8>), String> {
    let signed_at = record["signed_at"]
        .as_u64()
        .ok_or("no signing time in the record")?;
    let signature: String = record["signature"]
        .as_str()
        .ok_or("no signature in the record")?
        .chars()
        .filter(|c| *c != '=')
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let signature = base64ct::Base64UrlUnpadded::decode_vec(&signature)
        .map_err(|_| "the signature is not base64url")?;
    Ok((signed_at, signature))
}

/// Ed25519 of `key` over `signed_at` (8 bytes, big-endian) followed by the FAB's digest.
fn check(key: &[u8; 32], digest: &[u8], signed_at: u64, signature: &[u8]) -> Result<(), String> {
    let mut message = signed_at.to_be_bytes().to_vec();
    message.extend_from_slice(digest);
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, key)
        .verify(&message, signature)
        .map_err(|_| "the signature does not verify (a tampered FAB, or another key)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};

    fn ssh_public(key: &[u8]) -> String {
        let mut wire = Vec::new();
        for part in [b"ssh-ed25519".as_slice(), key] {
            wire.extend_from_slice(&(part.len() as u32).to_be_bytes());
            wire.extend_from_slice(part);
        }
        format!(
            "ssh-ed25519 {} test",
            base64ct::Base64::encode_string(&wire)
        )
    }

    fn signed(pair: &Ed25519KeyPair, fab: &[u8], at: u64) -> String {
        let mut m = at.to_be_bytes().to_vec();
        m.extend_from_slice(&sha2::Sha256::digest(fab));
        let sig = base64ct::Base64UrlUnpadded::encode_string(pair.sign(&m).as_ref());
        format!("{{\"signature\": \"{sig}\", \"signed_at\": {at}}}")
    }

    #[test]
    fn a_fab_passes_only_with_a_license_and_a_trusted_signature() {
        let dir = tempfile::tempdir().unwrap();
        let pair = Ed25519KeyPair::generate().unwrap();
        let other = Ed25519KeyPair::generate().unwrap();
        let path = dir.path().join("trusted.yaml");
        std::fs::write(
            &path,
            format!("fpk_a: '{}'\n", ssh_public(pair.public_key().as_ref())),
        )
        .unwrap();
        let t = TrustedEntities::load(&path).unwrap();
        assert_eq!(t.len(), 1);
        let fab = b"the FAB";
        let ok = HashMap::from([
            ("valid_license".to_owned(), "yes".to_owned()),
            ("fpk_a".to_owned(), signed(&pair, fab, 1_700_000_000)),
        ]);
        assert_eq!(t.verify(fab, &ok), Ok(()));
        assert_eq!(
            t.verify(b"another FAB", &ok).unwrap_err().to_string(),
            "the FAB could not be verified: the app is not signed by a trusted entity (fpk_a: the signature does not verify (a tampered FAB, or another key))"
        );
        let mut unlicensed = ok.clone();
        unlicensed.remove("valid_license");
        assert_eq!(t.verify(fab, &unlicensed), Err(Unverified::NoLicense));
        let by_other = HashMap::from([
            ("valid_license".to_owned(), "yes".to_owned()),
            ("fpk_a".to_owned(), signed(&other, fab, 1_700_000_000)),
        ]);
        assert!(t.verify(fab, &by_other).is_err());
        let unknown = HashMap::from([
            ("valid_license".to_owned(), "yes".to_owned()),
            ("fpk_b".to_owned(), signed(&pair, fab, 1_700_000_000)),
        ]);
        assert!(t.verify(fab, &unknown).is_err());
        // As Flower: any record that is not JSON refuses the FAB, even beside a good one.
        let mut malformed = ok.clone();
        malformed.insert("fpk_z".to_owned(), "not JSON".to_owned());
        assert!(t.verify(fab, &malformed).is_err());
        // The standard base64 alphabet, with padding, is read as Python reads it.
        let record: serde_json::Value = serde_json::from_str(&ok["fpk_a"]).unwrap();
        let mut signature = record["signature"]
            .as_str()
            .unwrap()
            .replace('-', "+")
            .replace('_', "/");
        while !signature.len().is_multiple_of(4) {
            signature.push('=');
        }
        let padded = HashMap::from([
            ("valid_license".to_owned(), "yes".to_owned()),
            (
                "fpk_a".to_owned(),
                serde_json::json!({"signature": signature, "signed_at": record["signed_at"]})
                    .to_string(),
            ),
        ]);
        assert_eq!(t.verify(fab, &padded), Ok(()));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        let missing = TrustedEntities::load(&path).unwrap_err().to_string();
        assert!(missing.contains("`--trusted-entities`") && missing.contains("cannot read it"));
        std::fs::write(&path, "- a list\n").unwrap();
        let list = TrustedEntities::load(&path).unwrap_err().to_string();
        assert!(list.contains("not a mapping"), "{list}");
        std::fs::write(&path, "fpk_x: 'ecdsa-sha2-nistp256 AAAA'\n").unwrap();
        let bad = TrustedEntities::load(&path).unwrap_err().to_string();
        assert!(bad.contains("trusted entity fpk_x is not Ed25519"), "{bad}");
    }
}
