//! TLS from PEM files, with rustls.
//!
//! Server side (Fleet and Control APIs): `--ssl-ca-certfile`, `--ssl-certfile` (a chain) and
//! `--ssl-keyfile` (PKCS#8, PKCS#1 RSA or SEC1 EC). Like Flower, no client certificate is
//! requested; the CA file is checked but only clients use it. ALPN offers `h2`.
//!
//! Client side (SuperNode): `--root-certificates` (a PEM bundle) or the system trust store, with
//! hostname verification against the host of the address (DNS name or IP SAN).
//!
//! Everything is loaded at start-up; every failure names the flag, the path, the cause and the
//! fix. The server's certificate and key ([`ServerCert`]) and the client's roots ([`ClientRoots`])
//! can be loaded again while the daemon runs: new handshakes then use what loaded, open
//! connections keep theirs, and files that do not load leave what is in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::files::{read_flag_file, FileError};

/// Flag names, so that messages and parsers agree.
pub const FLAG_CA_CERTFILE: &str = "--ssl-ca-certfile";
/// See [`FLAG_CA_CERTFILE`].
pub const FLAG_CERTFILE: &str = "--ssl-certfile";
/// See [`FLAG_CA_CERTFILE`].
pub const FLAG_KEYFILE: &str = "--ssl-keyfile";
/// See [`FLAG_CA_CERTFILE`].
pub const FLAG_ROOT_CERTIFICATES: &str = "--root-certificates";

/// A certificate that expires sooner than this is reported at start.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Neither the three files nor `--insecure` were given.
    #[error(
        "Certificates are required unless running in insecure mode. Please provide certificate \
         paths to `--ssl-certfile`, `--ssl-keyfile`, and `--ssl-ca-certfile` or run the server \
         in insecure mode using '--insecure' if you understand the risks."
    )]
    CertificatesRequired,
    /// Some but not all of the three server files were given.
    #[error(
        "You need to provide valid file paths to `--ssl-certfile`, `--ssl-keyfile`, and \
         `--ssl-ca-certfile` to create a secure connection in Fleet API server (gRPC-rere). \
         Missing: {}.", missing.join(", ")
    )]
    IncompleteServerFiles {
        /// The flags that are missing.
        missing: Vec<&'static str>,
    },
    /// `--insecure` together with `--root-certificates`.
    #[error(
        "Conflicting options: The '--insecure' flag disables HTTPS, but '--root-certificates' \
         was also specified. Please remove the '--root-certificates' option when running in \
         insecure mode, or omit '--insecure' to use HTTPS."
    )]
    InsecureWithRootCertificates,
    /// The file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file holds no PEM certificate.
    #[error(
        "`{flag}` file '{path}' contains no PEM certificate (a `-----BEGIN CERTIFICATE-----` \
         block). Give a PEM-encoded certificate{what}.",
        path = path.display()
    )]
    NoCertificate {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// What the file should hold.
        what: &'static str,
    },
    /// The PEM text is broken.
    #[error("`{flag}` file '{path}' is not valid PEM: {detail}. Re-create or re-export the file in PEM format.", path = path.display())]
    BadPem {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// The parser's words.
        detail: String,
    },
    /// A certificate could not be parsed as X.509.
    #[error("`{flag}` file '{path}' holds a certificate that is not valid X.509: {detail}.", path = path.display())]
    BadCertificate {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// The parser's words.
        detail: String,
    },
    /// The key file holds no private key.
    #[error(
        "`{flag}` file '{path}' contains no private key. Give an unencrypted PEM key: PKCS#8 \
         (`BEGIN PRIVATE KEY`), PKCS#1 RSA (`BEGIN RSA PRIVATE KEY`) or SEC1 EC \
         (`BEGIN EC PRIVATE KEY`){hint}.",
        path = path.display()
    )]
    NoPrivateKey {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// An extra hint (for example for encrypted keys).
        hint: &'static str,
    },
    /// The key is of an unsupported type.
    #[error("`{flag}` file '{path}' holds a private key that cannot be used for TLS: {detail}. Use an RSA, ECDSA (P-256/P-384) or Ed25519 key.", path = path.display())]
    UnsupportedKey {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The private key is not the key of the certificate.
    #[error(
        "The private key in `--ssl-keyfile` '{key}' does not match the certificate in \
         `--ssl-certfile` '{cert}'. Give the key that was used to create that certificate \
         (the first certificate in the file must be the server's own).",
        key = key.display(), cert = cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate is expired.
    #[error(
        "`{flag}` file '{path}': the certificate for '{subject}' expired on {not_after}. \
         Create a new certificate.",
        path = path.display()
    )]
    Expired {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// When it expired (RFC 3339).
        not_after: String,
    },
    /// A certificate is not valid yet.
    #[error(
        "`{flag}` file '{path}': the certificate for '{subject}' is not valid before \
         {not_before}. Check the clock of this machine, or create a certificate that is valid now.",
        path = path.display()
    )]
    NotYetValid {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// When it becomes valid (RFC 3339).
        not_before: String,
    },
    /// The system trust store holds no certificate.
    #[error(
        "No system certificates were found to verify the SuperLink. Give the CA certificate \
         with `--root-certificates`, install the system CA bundle (ca-certificates), or point \
         SSL_CERT_FILE at a PEM bundle."
    )]
    NoSystemCertificates,
    /// rustls refused the configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The trusted roots cannot check server certificates.
    #[error("the root certificates cannot be used to check the SuperLink's certificate: {0}")]
    Verifier(String),
}

/// The three server files, once Flower's flag rules accepted them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// `--ssl-ca-certfile`.
    pub ca_certfile: PathBuf,
    /// `--ssl-certfile`.
    pub certfile: PathBuf,
    /// `--ssl-keyfile`.
    pub keyfile: PathBuf,
}

/// Applies Flower's rules to the server TLS flags: `--insecure` wins; otherwise all three files
/// are required. Returns `None` for plaintext.
pub fn server_tls_choice(
    insecure: bool,
    ca_certfile: Option<&Path>,
    certfile: Option<&Path>,
    keyfile: Option<&Path>,
) -> Result<Option<ServerTlsFiles>, TlsError> {
    if insecure {
        return Ok(None);
    }
    match (ca_certfile, certfile, keyfile) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some(ServerTlsFiles {
            ca_certfile: ca.to_path_buf(),
            certfile: cert.to_path_buf(),
            keyfile: key.to_path_buf(),
        })),
        (None, None, None) => Err(TlsError::CertificatesRequired),
        (ca, cert, key) => {
            let mut missing = Vec::new();
            if cert.is_none() {
                missing.push(FLAG_CERTFILE);
            }
            if key.is_none() {
                missing.push(FLAG_KEYFILE);
            }
            if ca.is_none() {
                missing.push(FLAG_CA_CERTFILE);
            }
            Err(TlsError::IncompleteServerFiles { missing })
        }
    }
}

/// How the SuperNode reaches the SuperLink, from `--insecure` and `--root-certificates`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTlsChoice {
    /// Plaintext (`--insecure`).
    Insecure,
    /// TLS verified with the system trust store.
    SystemRoots,
    /// TLS verified with the CA bundle at this path.
    RootCertificates(PathBuf),
}

/// Applies Flower's rules to the SuperNode's TLS flags.
pub fn client_tls_choice(
    insecure: bool,
    root_certificates: Option<&Path>,
) -> Result<ClientTlsChoice, TlsError> {
    match (insecure, root_certificates) {
        (true, Some(_)) => Err(TlsError::InsecureWithRootCertificates),
        (true, None) => Ok(ClientTlsChoice::Insecure),
        (false, None) => Ok(ClientTlsChoice::SystemRoots),
        (false, Some(p)) => Ok(ClientTlsChoice::RootCertificates(p.to_path_buf())),
    }
}

/// A loaded TLS configuration and the warnings found while loading it.
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    /// The rustls configuration.
    pub config: Arc<T>,
    /// Human-readable warnings (certificates that expire soon), already logged.
    pub warnings: Vec<String>,
}

/// The crypto provider every TLS endpoint of ours uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// `config` for an HTTP/1.1 server (the REST transport): the same certificate (reloads
/// included), offering `http/1.1` instead of `h2` in the handshake.
pub fn for_http1(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Loads the server configuration from the three files. Blocking (reads files).
pub fn load_server_config(files: &ServerTlsFiles) -> Result<Loaded<ServerConfig>, TlsError> {
    load_reloadable_server_config(files).map(|(loaded, _)| loaded)
}

/// [`load_server_config`], with the handle that replaces its certificate and key later.
pub fn load_reloadable_server_config(
    files: &ServerTlsFiles,
) -> Result<(Loaded<ServerConfig>, Arc<ServerCert>), TlsError> {
    let paths = vec![
        files.ca_certfile.clone(),
        files.certfile.clone(),
        files.keyfile.clone(),
    ];
    let (loaded, warnings) = FromFiles::load(paths, || load_certified_key(files))?;
    let cert = Arc::new(ServerCert {
        files: files.clone(),
        loaded,
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    log_warnings(&warnings);
    Ok((
        Loaded {
            config: Arc::new(config),
            warnings,
        },
        cert,
    ))
}

/// The server's certificate chain and key, as new TLS handshakes get them.
#[derive(Debug)]
pub struct ServerCert {
    files: ServerTlsFiles,
    loaded: FromFiles<CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.loaded.get())
    }
}

/// TLS material that can be loaded again while a daemon runs (see
/// [`crate::signals::reload_on_hangup`]).
pub trait Reloadable: Send + Sync + std::fmt::Debug {
    /// Reads the files again and, if they load (the same checks as at start-up), uses them for
    /// new connections; otherwise keeps what is in use and says why. Blocking (reads files).
    fn reload(&self) -> Result<(), TlsError>;
    /// Whether a file changed (time, size, or presence) since it was last read.
    fn changed_on_disk(&self) -> bool;
    /// What it is, for the log.
    fn what(&self) -> String;
}

impl Reloadable for ServerCert {
    fn reload(&self) -> Result<(), TlsError> {
        self.loaded.reload(|| load_certified_key(&self.files))
    }

    fn changed_on_disk(&self) -> bool {
        self.loaded.changed_on_disk()
    }

    fn what(&self) -> String {
        format!(
            "TLS certificate ({FLAG_CERTFILE} {})",
            self.files.certfile.display()
        )
    }
}

/// A value loaded from files and replaced as a whole when they load again, with what tells that
/// a file changed since it was last read (its time and size, or that it is gone).
#[derive(Debug)]
struct FromFiles<T> {
    paths: Vec<PathBuf>,
    current: parking_lot::RwLock<Arc<T>>,
    /// The files as they were when last read (loaded or refused).
    stamp: parking_lot::Mutex<Vec<Option<(SystemTime, u64)>>>,
}

/// What a load gives: the value and its warnings.
type LoadedValue<T> = (Arc<T>, Vec<String>);

impl<T> FromFiles<T> {
    fn load(
        paths: Vec<PathBuf>,
        load: impl FnOnce() -> Result<LoadedValue<T>, TlsError>,
    ) -> Result<(FromFiles<T>, Vec<String>), TlsError> {
        let stamp = stamps(&paths);
        let (value, warnings) = load()?;
        let loaded = FromFiles {
            paths,
            current: parking_lot::RwLock::new(value),
            stamp: parking_lot::Mutex::new(stamp),
        };
        Ok((loaded, warnings))
    }

    fn get(&self) -> Arc<T> {
        self.current.read().clone()
    }

    fn reload(
        &self,
        load: impl FnOnce() -> Result<LoadedValue<T>, TlsError>,
    ) -> Result<(), TlsError> {
        *self.stamp.lock() = stamps(&self.paths);
        let (value, warnings) = load()?;
        *self.current.write() = value;
        log_warnings(&warnings);
        Ok(())
    }

    fn changed_on_disk(&self) -> bool {
        *self.stamp.lock() != stamps(&self.paths)
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// Reads and checks the three files: the chain and key the server presents, and its warnings.
fn load_certified_key(
    files: &ServerTlsFiles,
) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let now = SystemTime::now();
    let mut warnings = Vec::new();

    let ca_pem = read_flag_file(FLAG_CA_CERTFILE, &files.ca_certfile)?;
    let cert_pem = read_flag_file(FLAG_CERTFILE, &files.certfile)?;
    let key_pem = read_flag_file(FLAG_KEYFILE, &files.keyfile)?;

    let ca = parse_certificates(FLAG_CA_CERTFILE, &files.ca_certfile, &ca_pem, " of the CA")?;
    let mut ca_expiry = Expiry::default();
    for c in &ca {
        ca_expiry.add(check_validity(
            FLAG_CA_CERTFILE,
            &files.ca_certfile,
            c,
            now,
            &mut warnings,
        )?);
    }
    let chain = parse_certificates(
        FLAG_CERTFILE,
        &files.certfile,
        &cert_pem,
        " chain, server certificate first",
    )?;
    let mut chain_expiry = Expiry::default();
    for c in &chain {
        chain_expiry.add(check_validity(
            FLAG_CERTFILE,
            &files.certfile,
            c,
            now,
            &mut warnings,
        )?);
    }
    let key = parse_private_key(FLAG_KEYFILE, &files.keyfile, &key_pem)?;

    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::UnsupportedKey {
            flag: FLAG_KEYFILE,
            path: files.keyfile.clone(),
            detail: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    if certified.keys_match().is_err() {
        return Err(TlsError::KeyMismatch {
            cert: files.certfile.clone(),
            key: files.keyfile.clone(),
        });
    }
    ca_expiry.record(FLAG_CA_CERTFILE);
    chain_expiry.record(FLAG_CERTFILE);
    Ok((Arc::new(certified), warnings))
}

/// The earliest end of validity among the certificates of one file, for the metric
/// `flwr_tls_certificate_expiry_timestamp_seconds`.
#[derive(Default)]
struct Expiry(Option<i64>);

impl Expiry {
    fn add(&mut self, not_after: i64) {
        self.0 = Some(self.0.map_or(not_after, |e| e.min(not_after)));
    }

    /// Sets the metric of `flag`'s file (once the file is in use).
    fn record(&self, flag: &'static str) {
        if let Some(t) = self.0 {
            metrics::gauge!("flwr_tls_certificate_expiry_timestamp_seconds", "file" => flag)
                .set(t as f64);
        }
    }
}

/// Loads the client configuration: the bundle at `--root-certificates`, or the system trust
/// store. Blocking (reads files).
pub fn load_client_config(
    choice: &ClientTlsChoice,
) -> Result<Option<Loaded<ClientConfig>>, TlsError> {
    Ok(load_reloadable_client_config(choice)?.map(|(loaded, _)| loaded))
}

/// A client configuration with the handle that replaces its trusted roots.
pub type ReloadableClientConfig = (Loaded<ClientConfig>, Arc<ClientRoots>);

/// [`load_client_config`], with the handle that replaces its trusted roots later (for new
/// connections).
pub fn load_reloadable_client_config(
    choice: &ClientTlsChoice,
) -> Result<Option<ReloadableClientConfig>, TlsError> {
    if *choice == ClientTlsChoice::Insecure {
        return Ok(None);
    }
    let paths = match choice {
        ClientTlsChoice::RootCertificates(p) => vec![p.clone()],
        _ => Vec::new(),
    };
    let (loaded, warnings) = FromFiles::load(paths, || load_verifier(choice))?;
    let roots = Arc::new(ClientRoots {
        choice: choice.clone(),
        loaded,
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    log_warnings(&warnings);
    Ok(Some((
        Loaded {
            config: Arc::new(config),
            warnings,
        },
        roots,
    )))
}

/// The roots a client trusts, as new connections check the server against them: rustls' own
/// WebPKI verifier, replaced as a whole when the roots are loaded again.
#[derive(Debug)]
pub struct ClientRoots {
    choice: ClientTlsChoice,
    loaded: FromFiles<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for ClientRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verifier = self.loaded.get();
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let verifier = self.loaded.get();
        verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let verifier = self.loaded.get();
        verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.loaded.get().supported_verify_schemes()
    }
}

impl Reloadable for ClientRoots {
    fn reload(&self) -> Result<(), TlsError> {
        self.loaded.reload(|| load_verifier(&self.choice))
    }

    fn changed_on_disk(&self) -> bool {
        self.loaded.changed_on_disk()
    }

    fn what(&self) -> String {
        match &self.choice {
            ClientTlsChoice::RootCertificates(p) => {
                format!(
                    "root certificates ({FLAG_ROOT_CERTIFICATES} {})",
                    p.display()
                )
            }
            _ => "system root certificates".into(),
        }
    }
}

/// Reads and checks the roots `choice` names: a verifier of server certificates against them,
/// and the warnings found.
fn load_verifier(
    choice: &ClientTlsChoice,
) -> Result<(Arc<rustls::client::WebPkiServerVerifier>, Vec<String>), TlsError> {
    let now = SystemTime::now();
    let mut warnings = Vec::new();
    let mut roots = RootCertStore::empty();
    let mut root_expiry = Expiry::default();
    match choice {
        ClientTlsChoice::Insecure => {}
        ClientTlsChoice::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoSystemCertificates);
            }
            tracing::info!(
                certificates = added,
                "Using system certificates for TLS connection"
            );
        }
        ClientTlsChoice::RootCertificates(path) => {
            let pem = read_flag_file(FLAG_ROOT_CERTIFICATES, path)?;
            let certs = parse_certificates(
                FLAG_ROOT_CERTIFICATES,
                path,
                &pem,
                " of the CA that signed the SuperLink's certificate",
            )?;
            // A bundle may hold old roots: fail only when none of them is usable now.
            let mut first_error = None;
            let mut usable = 0;
            for c in &certs {
                match check_validity(FLAG_ROOT_CERTIFICATES, path, c, now, &mut warnings) {
                    Ok(not_after) => {
                        usable += 1;
                        root_expiry.add(not_after);
                    }
                    Err(e) => {
                        warnings.push(e.to_string());
                        first_error.get_or_insert(e);
                    }
                }
            }
            if usable == 0 {
                if let Some(e) = first_error {
                    return Err(e);
                }
            }
            for c in certs {
                roots.add(c).map_err(|e| TlsError::BadCertificate {
                    flag: FLAG_ROOT_CERTIFICATES,
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            }
        }
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    root_expiry.record(FLAG_ROOT_CERTIFICATES);
    Ok((verifier, warnings))
}

fn log_warnings(warnings: &[String]) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

fn parse_certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        let cert = item.map_err(|e| TlsError::BadPem {
            flag,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        if let Err(e) = x509_parser::parse_x509_certificate(&cert) {
            return Err(TlsError::BadCertificate {
                flag,
                path: path.to_path_buf(),
                detail: e.to_string(),
            });
        }
        out.push(cert);
    }
    if out.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(out)
}

fn parse_private_key(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(k) => Ok(k),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            let text = String::from_utf8_lossy(pem);
            let hint = if text.contains("ENCRYPTED") {
                "; this key is encrypted: decrypt it with `openssl pkey -in KEY -out KEY.plain`"
            } else if text.contains("BEGIN OPENSSH PRIVATE KEY") {
                "; this is an OpenSSH key, which TLS cannot use"
            } else if text.contains("BEGIN CERTIFICATE") {
                "; this file holds a certificate, not a key: check the order of the flags"
            } else {
                ""
            };
            Err(TlsError::NoPrivateKey {
                flag,
                path: path.to_path_buf(),
                hint,
            })
        }
        Err(e) => Err(TlsError::BadPem {
            flag,
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// Checks the validity window of one certificate; adds a warning when it ends within
/// [`EXPIRY_WARNING`]. Returns the end of validity (Unix seconds).
fn check_validity(
    flag: &'static str,
    path: &Path,
    cert: &CertificateDer<'_>,
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Result<i64, TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::BadCertificate {
            flag,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let validity = parsed.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let subject = parsed.subject().to_string();
    if now_s < not_before {
        return Err(TlsError::NotYetValid {
            flag,
            path: path.to_path_buf(),
            subject,
            not_before: rfc3339(not_before),
        });
    }
    if now_s > not_after {
        return Err(TlsError::Expired {
            flag,
            path: path.to_path_buf(),
            subject,
            not_after: rfc3339(not_after),
        });
    }
    let left = not_after - now_s;
    if left < EXPIRY_WARNING.as_secs() as i64 {
        warnings.push(format!(
            "`{flag}` file '{}': the certificate for '{subject}' expires on {} (in {} days). Renew it soon.",
            path.display(),
            rfc3339(not_after),
            left / 86_400
        ));
    }
    Ok(not_after)
}

fn rfc3339(unix_seconds: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(unix_seconds, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| unix_seconds.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_flag_rules_follow_flower() {
        let p = Some(Path::new("x"));
        assert_eq!(server_tls_choice(true, None, None, None).unwrap(), None);
        assert_eq!(
            server_tls_choice(true, p, p, p).unwrap(),
            None,
            "--insecure wins"
        );
        assert!(server_tls_choice(false, p, p, p).unwrap().is_some());
        assert!(matches!(
            server_tls_choice(false, None, None, None),
            Err(TlsError::CertificatesRequired)
        ));
        match server_tls_choice(false, p, None, p) {
            Err(e @ TlsError::IncompleteServerFiles { .. }) => {
                assert!(e.to_string().contains("Missing: --ssl-certfile."), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_flag_rules_follow_flower() {
        let p = Path::new("ca.crt");
        assert!(matches!(
            client_tls_choice(true, Some(p)),
            Err(TlsError::InsecureWithRootCertificates)
        ));
        assert_eq!(
            client_tls_choice(true, None).unwrap(),
            ClientTlsChoice::Insecure
        );
        assert_eq!(
            client_tls_choice(false, None).unwrap(),
            ClientTlsChoice::SystemRoots
        );
        assert_eq!(
            client_tls_choice(false, Some(p)).unwrap(),
            ClientTlsChoice::RootCertificates(p.into())
        );
    }
}
