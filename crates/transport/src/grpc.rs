//! gRPC settings both daemons share, and serving/connecting over plaintext or TLS.
//!
//! Flower's servers accept messages of up to 2 GiB and ping idle connections every 210 s. Ours
//! accept [`MAX_MESSAGE_BYTES`], which is far above Flower's largest regular messages (a FAB of at
//! most 10 MiB, an array chunk of 5 MiB plus its head) while bounding what one request may make a
//! server buffer.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::address::Address;

/// The largest gRPC message either daemon sends or accepts (512 MiB).
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;
/// Flower's server keepalive: an HTTP/2 ping after this much idle time (`grpc.keepalive_time_ms`).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(210);
/// How long a keepalive ping may stay unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent streams per HTTP/2 connection (`grpc.max_concurrent_streams`).
pub const MAX_CONCURRENT_STREAMS: u32 = 1000;
/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control windows: large enough that multi-megabyte objects stream at line rate.
pub(crate) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub(crate) const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Fleet `PullMessages` long poll (ours only): our SuperNode sends this request header with the
/// milliseconds it is willing to wait for an instruction; our SuperLink holds the call up to that
/// long (and its `--fleet-pull-hold`) and answers with the same header, carrying the milliseconds
/// it held (the SuperNode counts its held pulls by it). Flower's SuperNodes never send it (and are
/// answered at once); Flower's SuperLink ignores it and answers at once, and our SuperNode then
/// keeps its poll interval (it pulls at most once a second after an empty answer).
pub const PULL_WAIT_HEADER: &str = "flwr-rs-pull-wait-ms";

/// Applies [`MAX_MESSAGE_BYTES`] to a generated server or client type.
#[macro_export]
macro_rules! limits {
    ($svc:expr) => {
        $svc.max_decoding_message_size($crate::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size($crate::grpc::MAX_MESSAGE_BYTES)
    };
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on `{flag}` {address}: {source}{hint}")]
pub struct BindError {
    flag: &'static str,
    address: Address,
    #[source]
    source: std::io::Error,
    hint: &'static str,
}

/// Binds a TCP listener for the address given to `flag`. Port 0 asks the OS for a free port; the
/// bound address is `listener.local_addr()`.
pub async fn bind(flag: &'static str, address: &Address) -> Result<TcpListener, BindError> {
    let fail = |source: std::io::Error| {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another process uses this port: stop it or choose another port with this flag)"
            }
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need privileges: choose a higher port)"
            }
            std::io::ErrorKind::AddrNotAvailable => " (this machine has no such address)",
            _ => "",
        };
        BindError {
            flag,
            address: address.clone(),
            source,
            hint,
        }
    };
    let addrs = address.resolve().await.map_err(fail)?;
    let mut last = None;
    for a in addrs {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(fail(last.unwrap_or_else(|| {
        std::io::Error::other("no address to bind")
    })))
}

/// A failure to reach the server, kept typed so that callers can tell a TLS problem (which will
/// not go away by retrying) from a network one.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP could not connect.
    #[error("cannot connect to {address}: {source}")]
    Tcp {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, plaintext server, ...).
    #[error("TLS handshake failed with {address}: {source}")]
    Handshake {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host is not a valid TLS server name.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    /// The peer closed the connection before answering the TLS handshake: a load balancer with
    /// no server up behind it, or a server going down. A network failure, not a TLS one.
    #[error("{address} closed the connection during the TLS handshake: {source}")]
    ClosedDuringHandshake {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ConnectError {
    /// True for failures of the TLS handshake.
    pub fn is_handshake(&self) -> bool {
        matches!(self, Self::Handshake { .. } | Self::ServerName(_))
    }
}

/// Walks an error's sources and finds a [`ConnectError`], if any.
pub fn find_connect_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ConnectError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// A lazily connecting channel to `address`, over TLS when `tls` is given (the server name is
/// the address's host). Connection failures surface as `UNAVAILABLE` on the calls.
pub fn channel(address: &Address, tls: Option<Arc<rustls::ClientConfig>>) -> Channel {
    // The URI only carries the :authority; the connector below decides how to connect.
    let uri = format!("http://{address}");
    let endpoint = Endpoint::from_shared(uri)
        .unwrap_or_else(|_| Endpoint::from_static("http://invalid.invalid:1"))
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW));
    let address = address.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let address = address.clone();
        let tls = tls.clone();
        async move { connect(&address, tls).await }
    });
    endpoint.connect_with_connector_lazy(connector)
}

/// Either side of [`connect`].
pub type ClientStream = TokioIo<EitherStream>;

/// A plaintext or TLS client connection.
pub enum EitherStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

pub(crate) async fn connect(
    address: &Address,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<ClientStream, ConnectError> {
    let tcp_err = |source| ConnectError::Tcp {
        address: address.to_string(),
        source,
    };
    let addrs = address.resolve().await.map_err(tcp_err)?;
    let mut last = None;
    let mut tcp = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = match tcp {
        Some(t) => t,
        None => {
            return Err(tcp_err(
                last.unwrap_or_else(|| std::io::Error::other("no address")),
            ))
        }
    };
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(TokioIo::new(EitherStream::Plain(tcp))),
        Some(config) => {
            let name = ServerName::try_from(address.host_str())
                .map_err(|_| ConnectError::ServerName(address.host_str()))?;
            let stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| {
                    let address = address.to_string();
                    match source.kind() {
                        std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe => {
                            ConnectError::ClosedDuringHandshake { address, source }
                        }
                        _ => ConnectError::Handshake { address, source },
                    }
                })?;
            Ok(TokioIo::new(EitherStream::Tls(Box::new(stream))))
        }
    }
}

mod either_io {
    use super::EitherStream;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    impl AsyncRead for EitherStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.get_mut() {
                EitherStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
                EitherStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            }
        }
    }

    impl AsyncWrite for EitherStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut() {
                EitherStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
                EitherStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            }
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut() {
                EitherStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                EitherStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            }
        }
        fn is_write_vectored(&self) -> bool {
            match self {
                EitherStream::Plain(s) => s.is_write_vectored(),
                EitherStream::Tls(s) => s.is_write_vectored(),
            }
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                EitherStream::Plain(s) => Pin::new(s).poll_flush(cx),
                EitherStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            }
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                EitherStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
                EitherStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            }
        }
    }
}
