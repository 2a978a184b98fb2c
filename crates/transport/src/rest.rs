//! The client side of the REST Fleet transport: HTTP/1.1 over the same connections as gRPC
//! (TCP, then TLS when configured, offering `http/1.1` instead of `h2`), kept alive and pooled
//! by hyper-util's client. A failure to connect keeps its [`ConnectError`] in the error's
//! sources, so callers can still tell a TLS problem from a network one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::address::Address;
use crate::grpc::{connect, ClientStream, ConnectError};

/// A pooled HTTP/1.1 client of one server.
pub type RestClient = Client<Connector, Full<Bytes>>;

/// How long an unused connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// A client of the server at `address`, over TLS with `tls` when given. Requests name the
/// server with any `http://` authority: this connector decides where and how to connect.
pub fn client(address: &Address, tls: Option<Arc<rustls::ClientConfig>>) -> RestClient {
    let connector = Connector {
        address: address.clone(),
        tls: tls.as_deref().map(for_http1),
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector)
}

/// Connects to one server, whatever the URI says.
#[derive(Clone)]
pub struct Connector {
    address: Address,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = RestIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<RestIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (address, tls) = (self.address.clone(), self.tls.clone());
        Box::pin(async move { connect(&address, tls).await.map(RestIo) })
    }
}

/// A client of any `http://` or `https://` URL (TLS with `tls`, offering `http/1.1`), for
/// fetching from web services (Flower Hub).
pub fn url_client(tls: Arc<rustls::ClientConfig>) -> Client<UrlConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(UrlConnector {
            tls: for_http1(&tls),
        })
}

/// `config` offering `http/1.1` instead of `h2` in the handshake (the same roots, reloads
/// included).
fn for_http1(config: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects to the host and port a URI names, over TLS for `https`.
#[derive(Clone)]
pub struct UrlConnector {
    tls: Arc<rustls::ClientConfig>,
}

impl tower::Service<http::Uri> for UrlConnector {
    type Response = RestIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<RestIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = uri.host().unwrap_or_default().to_owned();
        let tls = https.then(|| self.tls.clone());
        Box::pin(async move {
            let address: Address = format!("{host}:{port}")
                .parse()
                .map_err(|_| ConnectError::ServerName(host.clone()))?;
            connect(&address, tls).await.map(RestIo)
        })
    }
}

/// An error and its sources, `: `-separated (the client's own errors say little alone:
/// "client error (Connect)").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A connection of the REST client.
pub struct RestIo(ClientStream);

impl Connection for RestIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for RestIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for RestIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
