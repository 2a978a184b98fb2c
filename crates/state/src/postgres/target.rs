//! `--database postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?sslmode=...&sslrootcert=...]`:
//! parsed, validated and turned into a connection configuration with TLS through rustls, with
//! libpq's meaning of each `sslmode`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server wants it (treated as `prefer`).
    Allow,
    /// TLS when the server offers it, without verification (libpq's default).
    Prefer,
    /// TLS, without verification unless `sslrootcert` is given (then as `verify-ca`).
    Require,
    /// TLS, the server's certificate chain verified, not its name.
    VerifyCa,
    /// TLS, the chain and the name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

/// Why a `--database` URL cannot be used; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum PgTargetError {
    /// Not a URL at all.
    #[error("`--database`: cannot read `{url}` as a URL ({reason}); write postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME")]
    BadUrl {
        /// The URL, password masked.
        url: String,
        /// The parser's words.
        reason: String,
    },
    /// A query parameter this SuperLink does not know.
    #[error("`--database`: unknown parameter `{0}` (known: sslmode, sslrootcert, connect_timeout, application_name)")]
    UnknownParameter(String),
    /// A bad `sslmode`.
    #[error("`--database`: sslmode `{0}` is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    /// A bad `connect_timeout`.
    #[error("`--database`: connect_timeout `{0}` is not a number of seconds")]
    ConnectTimeout(String),
    /// The CA file could not be read.
    #[error("`--database`: cannot read sslrootcert `{path}`: {reason}")]
    RootCert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The password file could not be read.
    #[error("`--database-password-file`: cannot read `{path}`: {reason}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A PostgreSQL server, database and credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
    ssl: SslMode,
    root_cert: Option<PathBuf>,
    connect_timeout: Option<Duration>,
    application_name: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

/// True for the schemes this engine serves.
pub fn is_postgres_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    lower.starts_with("postgresql://") || lower.starts_with("postgres://")
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

impl PgTarget {
    /// Parses a `postgresql://` or `postgres://` URL. The password, when the URL has none, comes
    /// from `PGPASSWORD` (see [`PgTarget::with_password`] for a file).
    pub fn parse(text: &str) -> Result<Self, PgTargetError> {
        let url = url::Url::parse(text).map_err(|e| PgTargetError::BadUrl {
            url: mask_in_text(text),
            reason: e.to_string(),
        })?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => "localhost".to_owned(),
        };
        let user = match url.username() {
            "" => std::env::var("PGUSER").unwrap_or_else(|_| "postgres".to_owned()),
            u => decode(u),
        };
        let password = url
            .password()
            .map(decode)
            .or_else(|| std::env::var("PGPASSWORD").ok())
            .filter(|p| !p.is_empty());
        let dbname = match url.path().trim_start_matches('/') {
            "" => user.clone(),
            d => decode(d),
        };
        let mut target = PgTarget {
            host,
            port: url.port().unwrap_or(5432),
            user,
            password,
            dbname,
            ssl: SslMode::Prefer,
            root_cert: None,
            connect_timeout: Some(Duration::from_secs(10)),
            application_name: "flwr-superlink".to_owned(),
        };
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    target.ssl =
                        SslMode::parse(&v).ok_or_else(|| PgTargetError::SslMode(v.to_string()))?
                }
                "sslrootcert" => target.root_cert = Some(PathBuf::from(v.as_ref())),
                "connect_timeout" => {
                    let secs: f64 = v
                        .parse()
                        .map_err(|_| PgTargetError::ConnectTimeout(v.to_string()))?;
                    target.connect_timeout = Duration::try_from_secs_f64(secs)
                        .ok()
                        .filter(|d| !d.is_zero());
                }
                "application_name" => target.application_name = v.to_string(),
                other => return Err(PgTargetError::UnknownParameter(other.to_owned())),
            }
        }
        Ok(target)
    }

    /// The password read from a file (`--database-password-file`), which wins over the URL's and
    /// `PGPASSWORD`; a trailing newline is not part of it.
    pub fn with_password_file(mut self, path: &std::path::Path) -> Result<Self, PgTargetError> {
        let text = std::fs::read_to_string(path).map_err(|e| PgTargetError::PasswordFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        self.password = Some(text.trim_end_matches(['\n', '\r']).to_owned());
        Ok(self)
    }

    /// The URL with the password masked, for logs and messages.
    pub fn masked(&self) -> String {
        let password = if self.password.is_some() { ":****" } else { "" };
        format!(
            "postgresql://{}{password}@{}:{}/{}",
            self.user,
            if self.host.contains(':') {
                format!("[{}]", self.host)
            } else {
                self.host.clone()
            },
            self.port,
            self.dbname
        )
    }

    /// The client configuration, and the TLS configuration when TLS is to be used.
    pub(crate) fn client_config(
        &self,
    ) -> Result<(tokio_postgres::Config, Option<rustls::ClientConfig>), PgTargetError> {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if let Some(p) = &self.password {
            c.password(p);
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(t);
        }
        let tls = match self.ssl {
            SslMode::Disable => {
                c.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            SslMode::Allow | SslMode::Prefer => {
                c.ssl_mode(tokio_postgres::config::SslMode::Prefer);
                Some(Verify::Nothing)
            }
            SslMode::Require => {
                c.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(if self.root_cert.is_some() {
                    Verify::Chain
                } else {
                    Verify::Nothing
                })
            }
            SslMode::VerifyCa => {
                c.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(Verify::Chain)
            }
            SslMode::VerifyFull => {
                c.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(Verify::ChainAndName)
            }
        };
        let tls = match tls {
            None => None,
            Some(v) => Some(self.rustls_config(v)?),
        };
        Ok((c, tls))
    }

    fn roots(&self) -> Result<rustls::RootCertStore, PgTargetError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let err = |reason: String| PgTargetError::RootCert {
                    path: path.clone(),
                    reason,
                };
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| err(e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(e.to_string()))?;
                if certs.is_empty() {
                    return Err(err("no certificate in it".into()));
                }
                for c in certs {
                    roots.add(c).map_err(|e| err(e.to_string()))?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        Ok(roots)
    }

    fn rustls_config(&self, verify: Verify) -> Result<rustls::ClientConfig, PgTargetError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgTargetError::BadUrl {
                url: self.masked(),
                reason: e.to_string(),
            })?;
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => Arc::new(NoVerification(provider)),
            Verify::Chain | Verify::ChainAndName => {
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(self.roots()?),
                    provider,
                )
                .build()
                .map_err(|e| PgTargetError::RootCert {
                    path: self.root_cert.clone().unwrap_or_default(),
                    reason: e.to_string(),
                })?;
                if verify == Verify::Chain {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }
}

/// Masks whatever follows `user:` up to `@` in a URL-like text that did not parse.
fn mask_in_text(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let rest = &text[scheme_end + 3..];
    match (rest.find(':'), rest.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => format!(
            "{}{}:****{}",
            &text[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        _ => text.to_owned(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

/// `sslmode=prefer|require`: encrypted, the server not verified (libpq's meaning); handshake
/// signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain verified against the CA, the name not.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_parse_with_libpq_defaults_and_mask_the_password() {
        let t =
            PgTarget::parse("postgresql://flwr:s%40cret@db.example:6543/links?sslmode=verify-full")
                .unwrap();
        assert_eq!(t.user, "flwr");
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(
            (t.host.as_str(), t.port, t.dbname.as_str()),
            ("db.example", 6543, "links")
        );
        assert_eq!(t.ssl, SslMode::VerifyFull);
        assert_eq!(t.masked(), "postgresql://flwr:****@db.example:6543/links");
        assert!(!format!("{t:?}").contains("cret"));
        let t = PgTarget::parse("postgres://u@[::1]/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.dbname.as_str()),
            ("::1", 5432, "u")
        );
        assert_eq!(t.ssl, SslMode::Prefer);
        assert_eq!(t.masked(), "postgresql://u@[::1]:5432/u");
    }

    #[test]
    fn bad_urls_name_the_problem_without_the_password() {
        let e = PgTarget::parse("postgresql://u:pw@h/db?sslmode=sometimes").unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        let e = PgTarget::parse("postgresql://u:pw@h/db?pool=3").unwrap_err();
        assert!(e.to_string().contains("`pool`"), "{e}");
        let e = PgTarget::parse("postgresql://u:hunter2@h:notaport/db").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(is_postgres_url("PostgreSQL://x") && is_postgres_url("postgres://x"));
        assert!(!is_postgres_url("mysql://x") && !is_postgres_url("/srv/state.db"));
    }

    #[test]
    fn a_password_file_wins_and_loses_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let t = PgTarget::parse("postgresql://u:from-url@h/db")
            .unwrap()
            .with_password_file(&f)
            .unwrap();
        assert_eq!(t.password.as_deref(), Some("from-file"));
        let e = PgTarget::parse("postgresql://u@h/db")
            .unwrap()
            .with_password_file(&dir.path().join("missing"))
            .unwrap_err();
        assert!(e.to_string().contains("--database-password-file"), "{e}");
    }
}
