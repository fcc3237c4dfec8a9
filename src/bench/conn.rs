//! The load phases' own HTTP client: each worker keeps one plain HTTP/1.1 keep-alive connection
//! per node and drives it with hyper's connection API, as a separate client process would.
//!
//! Why not [`crate::client::Client`]: the bench shares the machine with the nodes it measures,
//! and every microsecond it spends per request is one the nodes cannot use. reqwest's pool,
//! URL parsing and per-request layers cost the bench about as much CPU per read of a
//! 100-member view as the three nodes spent serving it, and with 64 clients the bench,
//! not the cluster, set the rate (`wrk`, one process per node, read the same cluster 35% faster).
//! Requests are still whole: a real HTTP exchange on its own connection, the body read to the
//! end, the status checked.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_TYPE, HOST};
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::figures::Failure;
use super::{BenchError, REQUEST_TIMEOUT};

/// How long a worker pauses after a connection attempt failed.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One request of a load phase: where it goes on the node, and its JSON body if any.
pub(super) struct Call {
    pub method: Method,
    /// From the root, with its query: `/v1/groups/bench-view?consistency=stale`.
    pub path: Uri,
    pub body: Option<Bytes>,
    pub accept_gzip: bool,
}

/// Every worker's connections: `workers` rows of one connection slot per node.
pub(super) struct Connections {
    /// Each node's `HOST:PORT`, in endpoint order.
    nodes: Vec<Node>,
    workers: Vec<Mutex<Vec<Option<Sender>>>>,
}

/// One open connection's sending half.
type Sender = SendRequest<Full<Bytes>>;

struct Node {
    addr: String,
    host: HeaderValue,
}

impl Connections {
    /// Slots for `workers` workers on the nodes at `endpoints` (`http://HOST:PORT`); connections
    /// open at their first request. `https` endpoints are refused: the load phases speak plain HTTP.
    pub fn new(endpoints: &[String], workers: u64) -> Result<Arc<Connections>, BenchError> {
        let nodes = endpoints
            .iter()
            .map(|endpoint| {
                let addr = endpoint.strip_prefix("http://").ok_or_else(|| {
                    BenchError::Flags(format!("{endpoint}: the load phases speak plain HTTP (http://HOST:PORT)"))
                })?;
                let authority: Authority =
                    addr.parse().map_err(|_| BenchError::Flags(format!("{endpoint}: not a host and port")))?;
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| BenchError::Flags(format!("{endpoint}: not a host and port")))?;
                // `http://HOST` means port 80.
                Ok(Node { addr: format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80)), host })
            })
            .collect::<Result<Vec<_>, BenchError>>()?;
        let workers = (0..workers).map(|_| Mutex::new((0..nodes.len()).map(|_| None).collect())).collect();
        Ok(Arc::new(Connections { nodes, workers }))
    }

    /// Sends `call` to node `node` on `worker`'s connection, within the bench's request timeout,
    /// and reads the whole answer. A failure is counted by kind: the status (`503`), `timeout`,
    /// `connect`, `request` or `body`; the connection is then dropped, and the next request of
    /// this worker to that node opens a new one.
    pub async fn send(&self, worker: u64, node: usize, call: &Call) -> Result<(), Failure> {
        let mut slots = self.workers[worker as usize % self.workers.len()].lock().await;
        let slot = &mut slots[node];
        // Outer: the exchange failed, and the connection goes; inner: the node's answer.
        let exchange = async {
            // A connection the node closed (or one never opened) is replaced.
            if let Some(sender) = slot.as_mut() {
                if sender.ready().await.is_err() {
                    *slot = None;
                }
            }
            let sender = match slot {
                Some(sender) => sender,
                None => slot.insert(self.connect(node).await?),
            };
            let answer = sender.send_request(self.request(node, call)?).await.map_err(|_| "request")?;
            let status = answer.status();
            answer.into_body().collect().await.map_err(|_| "body")?;
            Ok::<_, &'static str>(if status.is_success() { Ok(()) } else { Err(status.as_u16().to_string()) })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(kind)) => {
                *slot = None;
                if kind == "connect" {
                    // A node that is down refuses at once: without a pause each worker would
                    // count thousands of refusals a second, a figure of its own speed.
                    drop(slots);
                    tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
                }
                Err(kind.into())
            }
            Err(_) => {
                *slot = None;
                Err("timeout".into())
            }
        }
    }

    async fn connect(&self, node: usize) -> Result<Sender, &'static str> {
        let stream = TcpStream::connect(&self.nodes[node].addr).await.map_err(|_| "connect")?;
        stream.set_nodelay(true).map_err(|_| "connect")?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|_| "connect")?;
        // Ends when the sender is dropped or the node closes the connection.
        tokio::spawn(connection);
        Ok(sender)
    }

    fn request(&self, node: usize, call: &Call) -> Result<Request<Full<Bytes>>, &'static str> {
        let mut request = Request::builder().method(call.method.clone()).uri(call.path.clone());
        request = request.header(HOST, self.nodes[node].host.clone());
        if call.body.is_some() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if call.accept_gzip {
            request = request.header(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        }
        request.body(Full::new(call.body.clone().unwrap_or_default())).map_err(|_| "request")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_addresses_and_https_is_refused() {
        let endpoints = ["http://127.0.0.1:8081", "http://gm", "http://[::1]:9"].map(String::from);
        let connections = Connections::new(&endpoints, 2).expect("plain HTTP endpoints");
        let addrs: Vec<&str> = connections.nodes.iter().map(|n| n.addr.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:8081", "gm:80", "[::1]:9"]);
        assert_eq!(connections.nodes[1].host, "gm");
        assert_eq!(connections.workers.len(), 2);
        let refused = Connections::new(&["https://gm:443".to_owned()], 1).err().map(|e| e.to_string());
        assert!(refused.is_some_and(|e| e.contains("plain HTTP")));
    }

    /// A status other than 2xx counts as that status and keeps the connection; no answer at all
    /// counts as `connect`.
    #[tokio::test]
    async fn failures_count_by_kind() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "fine" }))
            .route("/busy", axum::routing::get(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "later") }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let connections = Connections::new(&[format!("http://{addr}")], 1).expect("connections");
        let call = |path: &'static str| Call {
            method: Method::GET,
            path: Uri::from_static(path),
            body: None,
            accept_gzip: false,
        };
        assert_eq!(connections.send(0, 0, &call("/ok")).await, Ok(()));
        assert_eq!(connections.send(0, 0, &call("/busy")).await, Err("503".to_owned()));
        assert!(connections.workers[0].lock().await[0].is_some(), "the connection stays after an answer");
        assert_eq!(connections.send(0, 0, &call("/ok")).await, Ok(()));

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone = closed.local_addr().expect("addr");
        drop(closed);
        let connections = Connections::new(&[format!("http://{gone}")], 1).expect("connections");
        assert_eq!(connections.send(0, 0, &call("/ok")).await, Err("connect".to_owned()));
    }
}
