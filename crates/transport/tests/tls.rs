//! TLS end to end on loopback, with certificates made by the test, and every loading error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flwr_testkit::pki::{self, Ca, Validity};
use flwr_transport::address::Address;
use flwr_transport::grpc;
use flwr_transport::tls::{self, ClientTlsChoice, ServerTlsFiles, TlsError};
use tokio_util::sync::CancellationToken;

struct Server {
    addr: Address,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let addr: Address = "127.0.0.1:0".parse().unwrap();
        let listener = grpc::bind("--test-address", &addr).await.unwrap();
        let bound = Address::from_socket_addr(listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let routes =
            tonic::service::Routes::new(flwr_transport::health::service(Default::default()));
        let task = tokio::spawn(flwr_transport::server::serve(
            routes,
            listener,
            tls,
            flwr_transport::server::ServeOptions::default(),
            s,
        ));
        Server {
            addr: bound,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn server_files(dir: &Path, sans: &[&str]) -> (Ca, ServerTlsFiles) {
    let (ca, f) = pki::write_tls_files(dir, sans);
    (
        ca,
        ServerTlsFiles {
            ca_certfile: f.ca,
            certfile: f.cert,
            keyfile: f.key,
        },
    )
}

fn client(ca: &Path) -> Arc<rustls::ClientConfig> {
    tls::load_client_config(&ClientTlsChoice::RootCertificates(ca.to_path_buf()))
        .unwrap()
        .unwrap()
        .config
}

async fn check(
    addr: &Address,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<bool, tonic::Status> {
    let channel = grpc::channel(addr, tls);
    tokio::time::timeout(
        Duration::from_secs(10),
        flwr_transport::health::check(channel),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn tls_call_succeeds_and_wrong_clients_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, files) = server_files(dir.path(), pki::LOCAL_SANS);
    let loaded = tls::load_server_config(&files).unwrap();
    assert_eq!(loaded.config.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(loaded.warnings.is_empty());
    let server = Server::start(Some(loaded.config)).await;

    // Trusting the CA: succeeds, by IP SAN and by DNS SAN.
    assert!(check(&server.addr, Some(client(&files.ca_certfile)))
        .await
        .unwrap());
    let by_name: Address = format!("localhost:{}", server.addr.port()).parse().unwrap();
    assert!(check(&by_name, Some(client(&files.ca_certfile)))
        .await
        .unwrap());

    // Plaintext against TLS: the server drops the connection, the call fails.
    let err = check(&server.addr, None).await.unwrap_err();
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
        "{err:?}"
    );

    // Trusting another CA: the handshake fails, and the error says so.
    let other = tempfile::tempdir().unwrap();
    let (_other_ca, other_files) = server_files(other.path(), pki::LOCAL_SANS);
    let err = check(&server.addr, Some(client(&other_files.ca_certfile)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let connect = grpc::find_connect_error(&err).expect("a ConnectError in the chain");
    assert!(connect.is_handshake(), "{connect}");
    assert!(
        connect.to_string().to_lowercase().contains("certificate"),
        "{connect}"
    );

    server.stop().await;
}

#[tokio::test]
async fn certificate_without_the_right_san_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, files) = server_files(dir.path(), &["superlink.example"]);
    let server = Server::start(Some(tls::load_server_config(&files).unwrap().config)).await;
    let err = check(&server.addr, Some(client(&files.ca_certfile)))
        .await
        .unwrap_err();
    let connect = grpc::find_connect_error(&err).expect("a ConnectError in the chain");
    assert!(connect.is_handshake(), "{connect}");
    assert!(
        connect.to_string().contains("not valid for name"),
        "{connect}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_failed_handshake_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, files) = server_files(dir.path(), pki::LOCAL_SANS);
    let server = Server::start(Some(tls::load_server_config(&files).unwrap().config)).await;
    // A client that connects and sends garbage, and one that connects and says nothing.
    let sock: std::net::SocketAddr = server.addr.to_string().parse().unwrap();
    let mut garbage = tokio::net::TcpStream::connect(sock).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let _silent = tokio::net::TcpStream::connect(sock).await.unwrap();
    assert!(check(&server.addr, Some(client(&files.ca_certfile)))
        .await
        .unwrap());
    server.stop().await;
}

#[tokio::test]
async fn plaintext_server_serves_plaintext_and_refuses_tls_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, files) = server_files(dir.path(), pki::LOCAL_SANS);
    let server = Server::start(None).await;
    assert!(check(&server.addr, None).await.unwrap());
    let err = check(&server.addr, Some(client(&files.ca_certfile)))
        .await
        .unwrap_err();
    assert!(
        grpc::find_connect_error(&err).is_some_and(|c| c.is_handshake()),
        "{err:?}"
    );
    server.stop().await;
}

/// A load balancer with no server behind it accepts TCP and closes at once: a network failure
/// that clients retry, not a TLS error that they give up on.
#[tokio::test]
async fn a_peer_closing_during_the_handshake_is_not_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, files) = server_files(dir.path(), pki::LOCAL_SANS);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: Address = listener.local_addr().unwrap().to_string().parse().unwrap();
    let closer = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            drop(socket);
        }
    });
    let err = check(&addr, Some(client(&files.ca_certfile)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let connect = grpc::find_connect_error(&err).expect("a ConnectError in the chain");
    assert!(
        matches!(connect, grpc::ConnectError::ClosedDuringHandshake { .. }),
        "{connect:?}"
    );
    assert!(!connect.is_handshake(), "{connect}");
    closer.abort();
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn load_err(files: &ServerTlsFiles) -> TlsError {
    tls::load_server_config(files).expect_err("loading must fail")
}

#[test]
fn each_loading_error_names_the_flag_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, good) = server_files(dir.path(), pki::LOCAL_SANS);

    // Missing file.
    let mut f = good.clone();
    f.keyfile = dir.path().join("missing.key");
    let e = load_err(&f).to_string();
    assert!(
        e.contains("`--ssl-keyfile`") && e.contains("missing.key") && e.contains("does not exist"),
        "{e}"
    );

    // No certificate in the certificate file (a key instead).
    let mut f = good.clone();
    f.certfile = good.keyfile.clone();
    let e = load_err(&f);
    assert!(
        matches!(
            e,
            TlsError::NoCertificate {
                flag: "--ssl-certfile",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("server.key") && e.to_string().contains("BEGIN CERTIFICATE"),
        "{e}"
    );

    // No certificate in the CA file.
    let mut f = good.clone();
    f.ca_certfile = write(dir.path(), "empty.crt", "");
    assert!(matches!(
        load_err(&f),
        TlsError::NoCertificate {
            flag: "--ssl-ca-certfile",
            ..
        }
    ));

    // No private key in the key file (a certificate instead).
    let mut f = good.clone();
    f.keyfile = good.certfile.clone();
    let e = load_err(&f);
    assert!(
        matches!(
            e,
            TlsError::NoPrivateKey {
                flag: "--ssl-keyfile",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("holds a certificate, not a key"),
        "{e}"
    );

    // Broken PEM.
    let mut f = good.clone();
    f.certfile = write(
        dir.path(),
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n",
    );
    let e = load_err(&f);
    assert!(
        matches!(e, TlsError::BadPem { .. } | TlsError::BadCertificate { .. }),
        "{e}"
    );

    // Key that does not match the certificate.
    let (_other_cert, other_key) = ca.issue(pki::LOCAL_SANS, Validity::default());
    let mut f = good.clone();
    f.keyfile = write(dir.path(), "other.key", &other_key);
    let e = load_err(&f);
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("does not match") && e.to_string().contains("other.key"),
        "{e}"
    );

    // Expired.
    let (cert, key) = ca.issue(
        pki::LOCAL_SANS,
        Validity {
            from_days: -30,
            to_days: -2,
        },
    );
    let f = ServerTlsFiles {
        ca_certfile: good.ca_certfile.clone(),
        certfile: write(dir.path(), "expired.pem", &cert),
        keyfile: write(dir.path(), "expired.key", &key),
    };
    let e = load_err(&f);
    assert!(
        matches!(
            e,
            TlsError::Expired {
                flag: "--ssl-certfile",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("expired on"), "{e}");

    // Not yet valid.
    let (cert, key) = ca.issue(
        pki::LOCAL_SANS,
        Validity {
            from_days: 3,
            to_days: 30,
        },
    );
    let f = ServerTlsFiles {
        ca_certfile: good.ca_certfile.clone(),
        certfile: write(dir.path(), "future.pem", &cert),
        keyfile: write(dir.path(), "future.key", &key),
    };
    assert!(matches!(load_err(&f), TlsError::NotYetValid { .. }));

    // Expiring soon: loads, with a warning.
    let (cert, key) = ca.issue(
        pki::LOCAL_SANS,
        Validity {
            from_days: -1,
            to_days: 10,
        },
    );
    let f = ServerTlsFiles {
        ca_certfile: good.ca_certfile.clone(),
        certfile: write(dir.path(), "soon.pem", &cert),
        keyfile: write(dir.path(), "soon.key", &key),
    };
    let loaded = tls::load_server_config(&f).unwrap();
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].contains("expires on"),
        "{:?}",
        loaded.warnings
    );

    // A directory instead of a file.
    let mut f = good.clone();
    f.ca_certfile = dir.path().to_path_buf();
    assert!(load_err(&f).to_string().contains("is a directory"));

    // The client side: missing bundle, empty bundle.
    let e = tls::load_client_config(&ClientTlsChoice::RootCertificates(
        dir.path().join("nope.crt"),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("`--root-certificates`"), "{e}");
    let empty = write(dir.path(), "empty-bundle.crt", "\n");
    let e = tls::load_client_config(&ClientTlsChoice::RootCertificates(empty)).unwrap_err();
    assert!(
        matches!(
            e,
            TlsError::NoCertificate {
                flag: "--root-certificates",
                ..
            }
        ),
        "{e}"
    );
}

fn openssl(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (Debian package `openssl`; .ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn keys_in_pkcs8_pkcs1_and_sec1_and_certificate_chains_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("root");
    let ca_file = write(d, "ca.crt", ca.cert_pem());

    // PKCS#1 RSA ("BEGIN RSA PRIVATE KEY"), signed by a CA that openssl makes too.
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "oca.key",
            "-out",
            "oca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=openssl CA",
        ],
        d,
    );
    openssl(&["genrsa", "-traditional", "-out", "rsa.key", "2048"], d);
    openssl(
        &[
            "req",
            "-new",
            "-key",
            "rsa.key",
            "-out",
            "rsa.csr",
            "-subj",
            "/CN=localhost",
        ],
        d,
    );
    write(
        d,
        "san.ext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "rsa.csr",
            "-CA",
            "oca.crt",
            "-CAkey",
            "oca.key",
            "-CAcreateserial",
            "-out",
            "rsa.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        d,
    );
    assert!(std::fs::read_to_string(d.join("rsa.key"))
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    let rsa = ServerTlsFiles {
        ca_certfile: d.join("oca.crt"),
        certfile: d.join("rsa.pem"),
        keyfile: d.join("rsa.key"),
    };
    let loaded = tls::load_server_config(&rsa).unwrap();
    let server = Server::start(Some(loaded.config)).await;
    assert!(check(&server.addr, Some(client(&d.join("oca.crt"))))
        .await
        .unwrap());
    server.stop().await;

    // SEC1 EC ("BEGIN EC PRIVATE KEY").
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.key",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-x509",
            "-key",
            "ec.key",
            "-out",
            "ec.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ],
        d,
    );
    assert!(std::fs::read_to_string(d.join("ec.key"))
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));
    let ec = ServerTlsFiles {
        ca_certfile: ca_file.clone(),
        certfile: d.join("ec.pem"),
        keyfile: d.join("ec.key"),
    };
    tls::load_server_config(&ec).unwrap();

    // PKCS#8 and a chain: server certificate, then an intermediate.
    let (cert, key) = ca.issue(pki::LOCAL_SANS, Validity::default());
    assert!(key.contains("BEGIN PRIVATE KEY"));
    let chain = format!("{cert}{}", ca.cert_pem());
    let f = ServerTlsFiles {
        ca_certfile: ca_file.clone(),
        certfile: write(d, "chain.pem", &chain),
        keyfile: write(d, "k8.key", &key),
    };
    let server = Server::start(Some(tls::load_server_config(&f).unwrap().config)).await;
    assert!(check(&server.addr, Some(client(&ca_file))).await.unwrap());
    server.stop().await;
}
