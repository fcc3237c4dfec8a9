//! The members' side of failure detection: in-process HTTP servers on 127.0.0.1 that answer
//! every probe `200`, count probes per member (from `X-GM-Member`), and can crash.
//!
//! Many members share one server, as members hosted by one process do. Two kinds of crash:
//! - a whole server stops: its listener closes (new probes get "connection refused") and its open
//!   connections close, as when the process hosting the members dies;
//! - one member crashes while its server lives on: a probe for it gets no answer at all, its
//!   connection is closed after the request is read. To the prober that is the same quick failure
//!   as a dead process (no status, no waiting for the timeout), without disturbing the members that
//!   share the address. A `503` would be an answer from a live process, and a hang a frozen one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::Layout;
use crate::bench::BenchError;

/// What the servers saw, shared by all of them.
struct Probes {
    layout: Layout,
    /// Probes per member.
    per_member: Vec<AtomicU64>,
    /// Members that crashed: their probes go unanswered.
    crashed: Vec<AtomicBool>,
    /// Every probe request, whoever it was for.
    total: AtomicU64,
}

/// The member servers, one per address.
pub(in crate::bench) struct MemberServers {
    probes: Arc<Probes>,
    addresses: Vec<SocketAddr>,
    /// Cancelling one stops that server and closes its connections.
    stops: Vec<CancellationToken>,
    tasks: JoinSet<()>,
}

impl MemberServers {
    /// Starts one server per address of `layout`, each on a free port.
    pub async fn start(layout: Layout) -> Result<MemberServers, BenchError> {
        let probes = Arc::new(Probes {
            layout,
            per_member: (0..layout.members).map(|_| AtomicU64::new(0)).collect(),
            crashed: (0..layout.members).map(|_| AtomicBool::new(false)).collect(),
            total: AtomicU64::new(0),
        });
        let mut servers = MemberServers {
            probes: Arc::clone(&probes),
            addresses: Vec::new(),
            stops: Vec::new(),
            tasks: JoinSet::new(),
        };
        for _ in 0..layout.addresses {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(BenchError::MemberServer)?;
            servers.addresses.push(listener.local_addr().map_err(BenchError::MemberServer)?);
            let stop = CancellationToken::new();
            let listener = CrashableListener { inner: listener, stop: stop.clone() };
            let app = Router::new()
                .route("/", get(probe))
                .route("/{*path}", get(probe))
                .with_state(Arc::clone(&probes))
                .into_make_service_with_connect_info::<Connection>();
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
            servers.tasks.spawn(async move {
                let _ = serve.await;
            });
            servers.stops.push(stop);
        }
        Ok(servers)
    }

    /// `127.0.0.1:PORT` of address `a`.
    pub fn address(&self, a: u32) -> String {
        self.addresses[a as usize].to_string()
    }

    /// Probe requests seen so far, for anyone.
    pub fn total(&self) -> u64 {
        self.probes.total.load(Ordering::Relaxed)
    }

    /// Probes member `n` has seen so far.
    pub fn probes_of(&self, n: u32) -> u64 {
        self.probes.per_member[n as usize].load(Ordering::Relaxed)
    }

    /// From now on, probes for these members go unanswered.
    pub fn crash_members(&self, members: &[u32]) {
        for &n in members {
            self.probes.crashed[n as usize].store(true, Ordering::Relaxed);
        }
    }

    /// Stops the server of address `a`: no new connections, open ones closed.
    pub fn crash_address(&self, a: u32) {
        self.stops[a as usize].cancel();
    }

    /// Stops every server.
    pub async fn stop(mut self) {
        for stop in &self.stops {
            stop.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn probe(
    State(probes): State<Arc<Probes>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    headers: HeaderMap,
) -> StatusCode {
    probes.total.fetch_add(1, Ordering::Relaxed);
    let member = headers.get("x-gm-member").and_then(|v| v.to_str().ok()).and_then(|id| probes.layout.parse_id(id));
    if let Some(n) = member {
        probes.per_member[n as usize].fetch_add(1, Ordering::Relaxed);
        if probes.crashed[n as usize].load(Ordering::Relaxed) {
            // The answer below is never written: the connection fails first.
            connection.0.cancel();
        }
    }
    StatusCode::OK
}

/// A connection as a handler sees it: cancelling it closes the connection without an answer.
#[derive(Clone)]
struct Connection(CancellationToken);

impl Connected<IncomingStream<'_, CrashableListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, CrashableListener>) -> Self {
        Connection(stream.io().crash.clone())
    }
}

/// A TCP listener whose connections can be made to fail, one or all at once.
struct CrashableListener {
    inner: TcpListener,
    /// The server's stop: cancelling it fails all of its connections.
    stop: CancellationToken,
}

impl Listener for CrashableListener {
    type Io = CrashableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let crash = self.stop.child_token();
                    let crashed = Box::pin(crash.clone().cancelled_owned());
                    return (CrashableStream { inner: stream, crash, crashed }, addr);
                }
                // Out of file descriptors and the like: wait, as axum's own listener does.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that fails every read and write once `crash` is cancelled, so the server drops
/// it mid-request, as a dead process would.
struct CrashableStream {
    inner: TcpStream,
    crash: CancellationToken,
    /// Wakes a read parked on an idle connection when the crash comes.
    crashed: Pin<Box<WaitForCancellationFutureOwned>>,
}

fn crashed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "member crashed")
}

impl AsyncRead for CrashableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.crashed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(crashed()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CrashableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.crash.is_cancelled() {
            return Poll::Ready(Err(crashed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.crash.is_cancelled() {
            return Poll::Ready(Err(crashed()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.crash.is_cancelled() {
            return Poll::Ready(Err(crashed()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn layout() -> Layout {
        Layout { members: 4, addresses: 2, groups: 1 }
    }

    async fn get(client: &reqwest::Client, servers: &MemberServers, n: u32) -> Result<u16, reqwest::Error> {
        let url = format!("http://{}/gm/heartbeat", servers.address(layout().address(n)));
        let answer = client.get(url).header("X-GM-Member", layout().id(n)).send().await?;
        Ok(answer.status().as_u16())
    }

    #[tokio::test]
    async fn members_answer_until_they_crash() {
        let servers = MemberServers::start(layout()).await.expect("servers");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        for n in 0..4 {
            assert_eq!(get(&client, &servers, n).await.expect("answer"), 200);
        }
        assert_eq!(servers.probes_of(2), 1);

        // Members 0 and 2 share address 0: 2 crashes, 0 still answers on the same address.
        servers.crash_members(&[2]);
        assert!(get(&client, &servers, 2).await.is_err(), "a crashed member gives no answer");
        assert_eq!(get(&client, &servers, 0).await.expect("answer"), 200);

        // Address 1 stops: members 1 and 3 are gone, even over a pooled connection.
        servers.crash_address(1);
        assert!(get(&client, &servers, 1).await.is_err());
        assert!(get(&client, &servers, 3).await.is_err());
        assert_eq!(get(&client, &servers, 0).await.expect("answer"), 200);
        assert_eq!(servers.total(), 4 + 2 + 1);
        servers.stop().await;
    }
}
