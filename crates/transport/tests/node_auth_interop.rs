//! Signatures made here verify in flwr 1.28.0's Python, and the reverse, on every curve; keys
//! have byte-identical PEM encodings on both sides.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;

use flwr_testkit::process::run;
use flwr_testkit::python;
use flwr_transport::node_auth::{self, NodePublicKey, NodeSigningKey};

fn script() -> PathBuf {
    python::repo_root().join("tests/python/node_auth_interop.py")
}

/// Writes one case per directory and returns Python's verdict for each.
fn python_verdicts(root: &Path, cases: &[(Vec<u8>, String, Vec<u8>)]) -> Vec<String> {
    let mut dirs = Vec::new();
    for (i, (pem, ts, sig)) in cases.iter().enumerate() {
        let d = root.join(format!("case{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("pem"), pem).unwrap();
        std::fs::write(d.join("timestamp"), ts).unwrap();
        std::fs::write(d.join("signature"), sig).unwrap();
        dirs.push(d);
    }
    let (status, out) = run(Command::new(python::python())
        .arg(script())
        .arg("verify")
        .args(&dirs));
    assert!(status.success(), "python verify failed: {out}");
    out.lines().map(str::to_owned).collect()
}

#[test]
fn rust_signatures_verify_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    // Generated P-384 keys, several times: about half of all ECDSA signatures have a "high" S.
    for _ in 0..12 {
        let s = NodeSigningKey::generate().sign_now();
        cases.push((s.public_key, s.timestamp, s.signature));
    }
    // A stale timestamp, and a tampered signature.
    let key = NodeSigningKey::generate();
    let old = node_auth::format_timestamp(chrono::Utc::now() - chrono::Duration::seconds(310));
    cases.push((
        key.public_key_pem().to_vec(),
        old.clone(),
        key.sign(old.as_bytes()),
    ));
    let s = key.sign_now();
    let mut sig = s.signature.clone();
    let last = sig.len() - 1;
    sig[last] ^= 1;
    cases.push((s.public_key, s.timestamp, sig));

    let verdicts = python_verdicts(dir.path(), &cases);
    assert_eq!(verdicts.len(), cases.len(), "{verdicts:?}");
    assert!(
        verdicts[..12].iter().all(|v| v == "verified"),
        "{verdicts:?}"
    );
    assert_eq!(verdicts[12], "Invalid timestamp");
    assert_eq!(verdicts[13], "Invalid signature");
}

#[test]
fn python_signatures_and_keys_work_here_on_every_curve() {
    let root = tempfile::tempdir().unwrap();
    let mut back = Vec::new();
    for curve in ["P-256", "P-384", "P-521"] {
        let dirs: Vec<PathBuf> = (0..4)
            .map(|i| root.path().join(format!("{curve}-{i}")))
            .collect();
        let (status, out) = run(Command::new(python::python())
            .arg(script())
            .arg("sign")
            .arg(curve)
            .args(&dirs));
        assert!(status.success(), "python sign {curve}: {out}");
        for dir in &dirs {
            let pem = std::fs::read(dir.join("key.pem")).unwrap();
            let timestamp = std::fs::read_to_string(dir.join("timestamp")).unwrap();
            let signature = std::fs::read(dir.join("signature")).unwrap();

            // Python's signature verifies here, with the same window rule.
            let public = NodePublicKey::from_pem(&pem).unwrap();
            node_auth::verify_signed_timestamp(&public, &timestamp, &signature, chrono::Utc::now())
                .unwrap_or_else(|e| panic!("{curve}: {e}"));

            // The OpenSSH key file loads and gives byte-identical PEM.
            let key =
                NodeSigningKey::load_openssh_file("--auth-supernode-private-key", &dir.join("key"))
                    .unwrap();
            assert_eq!(
                String::from_utf8_lossy(key.public_key_pem()),
                String::from_utf8_lossy(&pem),
                "{curve}: our PEM must equal cryptography's byte for byte"
            );
            // ... and its signatures made here verify in Python.
            let s = key.sign_now();
            back.push((s.public_key, s.timestamp, s.signature));
        }
    }
    let verdicts = python_verdicts(&root.path().join("back"), &back);
    assert!(
        verdicts.len() == back.len() && verdicts.iter().all(|v| v == "verified"),
        "{verdicts:?}"
    );
}

#[test]
fn ssh_keygen_keys_load() {
    // `ssh-keygen` is how the Flower docs make SuperNode keys.
    let dir = tempfile::tempdir().unwrap();
    for bits in ["256", "384", "521"] {
        let key = dir.path().join(format!("k{bits}"));
        let (status, out) = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ecdsa", "-b", bits, "-N", "", "-C", "t", "-f"])
            .arg(&key));
        assert!(
            status.success(),
            "ssh-keygen (Debian package openssh-client): {out}"
        );
        let k = NodeSigningKey::load_openssh_file("--auth-supernode-private-key", &key).unwrap();
        let pk = NodePublicKey::from_pem(k.public_key_pem()).unwrap();
        assert!(pk.verify(b"t", &k.sign(b"t")));
    }
}
