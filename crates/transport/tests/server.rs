//! The server's limits, with a real HTTP/2 client: the per-connection body budget, idle
//! connections, the connection cap and the peer allow-list.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flwr_transport::server::{self, BodyBudget, BudgetBody, PeerFilter, ServeOptions};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bytes the test service holds at once, and the most it ever held.
#[derive(Default)]
struct Held {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// A server whose one service reads each request body whole and holds it for `hold(length)`
/// before it answers; stops on drop.
struct TestServer {
    addr: std::net::SocketAddr,
    held: Arc<Held>,
    stop: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(
    options: ServeOptions,
    hold: impl Fn(usize) -> Duration + Clone + Send + Sync + 'static,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Held::default());
    let h = held.clone();
    let service = tower::service_fn(move |req: Request<BudgetBody>| {
        let held = h.clone();
        let hold = hold.clone();
        async move {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let len = body.as_ref().map(Bytes::len).unwrap_or(0);
            let now = held.now.fetch_add(len, Ordering::SeqCst) + len;
            held.max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(hold(len)).await;
            held.now.fetch_sub(len, Ordering::SeqCst);
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(
        service,
        listener,
        None,
        options,
        stop.clone(),
    ));
    TestServer { addr, held, stop }
}

/// A gRPC-framed body: the 5-byte prefix, then `len` bytes.
fn grpc_message(len: usize) -> Bytes {
    let mut b = Vec::with_capacity(len + 5);
    b.push(0);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    b.resize(len + 5, 7);
    Bytes::from(b)
}

type H2 = h2::client::SendRequest<Bytes>;

/// An HTTP/2 connection; the returned task ends when the server closes it.
async fn connect(addr: std::net::SocketAddr) -> (H2, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

/// Posts `body` and waits for the response status.
async fn post(send: &H2, body: Bytes) -> http::StatusCode {
    let mut send = send.clone().ready().await.unwrap();
    let request = Request::post("http://test/svc/Method")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(request, false).unwrap();
    let mut rest = body;
    while !rest.is_empty() {
        stream.reserve_capacity(rest.len());
        let n = std::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .unwrap()
            .unwrap();
        stream
            .send_data(rest.split_to(n.min(rest.len())), false)
            .unwrap();
    }
    stream.send_data(Bytes::new(), true).unwrap();
    response.await.unwrap().status()
}

/// True when a request on a new connection fails (the server closed the connection).
async fn refused(addr: std::net::SocketAddr) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Ok((send, conn)) = h2::client::handshake(tcp).await else {
        return true;
    };
    tokio::spawn(conn);
    let Ok(mut send) = send.ready().await else {
        return true;
    };
    let request = Request::post("http://test/svc/Method").body(()).unwrap();
    match send.send_request(request, true) {
        Err(_) => true,
        Ok((response, _)) => tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("an answer or a closed connection")
            .is_err(),
    }
}

fn budget(large: usize) -> ServeOptions {
    ServeOptions {
        body_budget: BodyBudget {
            large,
            small_message: 1024,
            small: 64 * 1024,
        },
        ..ServeOptions::default()
    }
}

/// Four 700 KiB messages at once on one connection, held by the service for a while (long
/// enough for a loaded machine to send the next ones while the first is held).
async fn most_held(options: ServeOptions) -> usize {
    let server = start(options, |_| Duration::from_millis(1500)).await;
    let (send, _conn) = connect(server.addr).await;
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let send = send.clone();
            tokio::spawn(async move { post(&send, grpc_message(700 * 1024)).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), http::StatusCode::OK);
    }
    server.held.max.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_connection_holds_at_most_its_budget_of_body_bytes() {
    let one_message = 700 * 1024 + 5;
    // Without a budget to speak of, the service ends up holding several messages at once.
    assert!(most_held(budget(usize::MAX >> 4)).await > one_message);
    // With a budget of 1 MiB, the next message flows only when the previous one is answered.
    assert_eq!(most_held(budget(1024 * 1024)).await, one_message);
}

#[tokio::test]
async fn small_messages_do_not_wait_behind_large_ones() {
    // Large messages are held for long (long enough for a loaded machine to answer the small
    // one first), small ones briefly.
    let hold = |len: usize| Duration::from_millis(if len > 1024 { 3000 } else { 50 });
    let server = start(budget(1024 * 1024), hold).await;
    let (send, _conn) = connect(server.addr).await;
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let large = {
        let (send, done_tx) = (send.clone(), done_tx.clone());
        tokio::spawn(async move {
            // All of the large budget.
            assert_eq!(
                post(&send, grpc_message(1024 * 1024)).await,
                http::StatusCode::OK
            );
            done_tx.send("large").unwrap();
        })
    };
    // Once the large one holds the large budget, a small one still goes through: it is
    // answered before the large one.
    while server.held.now.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(post(&send, grpc_message(100)).await, http::StatusCode::OK);
    done_tx.send("small").unwrap();
    large.await.unwrap();
    let order = [done.recv().await, done.recv().await];
    assert_eq!(order, [Some("small"), Some("large")]);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let options = ServeOptions {
        idle_timeout: Some(Duration::from_millis(300)),
        ..ServeOptions::default()
    };
    // The request in flight lasts longer than the idle timeout: the connection stays.
    let server = start(options, |_| Duration::from_millis(800)).await;
    let (send, conn) = connect(server.addr).await;
    assert_eq!(post(&send, grpc_message(10)).await, http::StatusCode::OK);
    // Then nothing for longer than the timeout: the server closes it.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection is closed")
        .unwrap();
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let options = ServeOptions {
        max_connections: 2,
        ..ServeOptions::default()
    };
    let server = start(options, |_| Duration::ZERO).await;
    let (a, _ca) = connect(server.addr).await;
    let (b, _cb) = connect(server.addr).await;
    // The third is closed at once.
    assert!(refused(server.addr).await);
    // The first two still work.
    assert_eq!(post(&a, grpc_message(10)).await, http::StatusCode::OK);
    assert_eq!(post(&b, grpc_message(10)).await, http::StatusCode::OK);
}

#[tokio::test]
async fn peers_outside_the_allow_list_are_closed() {
    let only_elsewhere = ServeOptions {
        allow: Some(Arc::new(PeerFilter::parse("--test", "10.0.0.0/8").unwrap())),
        ..ServeOptions::default()
    };
    let server = start(only_elsewhere, |_| Duration::ZERO).await;
    assert!(refused(server.addr).await, "127.0.0.1 is not in 10.0.0.0/8");

    let loopback = ServeOptions {
        allow: Some(Arc::new(
            PeerFilter::parse("--test", "10.0.0.0/8, 127.0.0.1").unwrap(),
        )),
        ..ServeOptions::default()
    };
    let server = start(loopback, |_| Duration::ZERO).await;
    let (send, _conn) = connect(server.addr).await;
    assert_eq!(post(&send, grpc_message(10)).await, http::StatusCode::OK);
}

#[test]
fn allow_lists_parse_networks_and_addresses_and_name_the_flag() {
    let f = PeerFilter::parse("--x", "10.0.0.0/8,::1, 192.168.1.7").unwrap();
    assert!(f.allows("10.1.2.3".parse().unwrap()));
    assert!(f.allows("::1".parse().unwrap()));
    assert!(f.allows("::ffff:10.9.9.9".parse().unwrap()), "IPv4-mapped");
    assert!(f.allows("192.168.1.7".parse().unwrap()));
    assert!(!f.allows("192.168.1.8".parse().unwrap()));
    let e = PeerFilter::parse("--x", "10.0.0.0/33")
        .unwrap_err()
        .to_string();
    assert!(e.contains("--x") && e.contains("10.0.0.0/33"), "{e}");
    assert!(PeerFilter::parse("--x", " , ").is_err());
}
