//! Certificates made inside a test: a CA and server certificates it signs.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate authority for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// How long a certificate is valid, in days relative to now (negative = in the past).
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Start, days from now.
    pub from_days: i64,
    /// End, days from now.
    pub to_days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Self {
            from_days: -1,
            to_days: 365,
        }
    }
}

fn day(offset: i64) -> time::OffsetDateTime {
    let d = chrono::Utc::now().date_naive() + chrono::Duration::days(offset);
    use chrono::Datelike;
    rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = day(-1);
        params.not_after = day(3650);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `sans` (DNS names or IP literals). Returns (cert PEM, key PEM).
    pub fn issue(&self, sans: &[&str], validity: Validity) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            sans.first().copied().unwrap_or("server"),
        );
        params.not_before = day(validity.from_days);
        params.not_after = day(validity.to_days);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The three files of the TLS page: `ca.crt`, `server.pem`, `server.key`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
}

/// Writes a fresh CA and a server certificate for `sans` into `dir`.
pub fn write_tls_files(dir: &Path, sans: &[&str]) -> (Ca, TlsFiles) {
    write_tls_files_valid(dir, sans, Validity::default())
}

/// [`write_tls_files`] with a server certificate valid for `validity`.
pub fn write_tls_files_valid(dir: &Path, sans: &[&str], validity: Validity) -> (Ca, TlsFiles) {
    let ca = Ca::new("flower-rs test CA");
    let (cert, key) = ca.issue(sans, validity);
    std::fs::create_dir_all(dir).unwrap();
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&files.ca, ca.cert_pem()).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    (ca, files)
}

/// The SANs every local test server gets.
pub const LOCAL_SANS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// An ECDSA P-384 SuperNode key pair made by `ssh-keygen`: `dir/name` and `dir/name.pub`.
pub fn ssh_node_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let (status, out) = crate::process::run(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", name, "-f"])
            .arg(&key),
    );
    assert!(status.success(), "ssh-keygen: {out}");
    key
}
