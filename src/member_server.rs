//! Stand-in members: an in-process HTTP server on a free port of 127.0.0.1 that answers GM's
//! probes as members would, counts (and, if asked, records) them, and fails on demand. One
//! server hosts any number of member ids, as the contract allows several members at one address.
//! `gm bench fd` runs thousands of members on a few of them; the end-to-end tests use them as
//! members to crash.
//!
//! What a member id's probes get ([`Answer`]), set per id:
//! - [`Answer::Alive`]: `200`, the default.
//! - [`Answer::Fail`]: `503`: a live process that reports itself broken.
//! - [`Answer::Hang`]: the request is read and never answered, so it ends by GM's probe
//!   timeout: a frozen host.
//! - [`Answer::Crashed`]: the connection is closed once the request is read, with no answer: the
//!   member's process died while others at the address live on. To the prober that is the same
//!   quick failure as a dead process (no status, no waiting for the timeout).
//!
//! And the whole server can crash ([`MemberServer::crash`]): the listener closes (a connect is
//! refused) and every open connection (GM pools them) fails at once, as when the process hosting
//! the members dies.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What the probes of one member id get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Answer {
    /// `200`.
    #[default]
    Alive,
    /// `503`.
    Fail,
    /// No answer until the server crashes or stops.
    Hang,
    /// The connection closes without an answer.
    Crashed,
}

/// One probe as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub path: String,
    /// `X-GM-Group`.
    pub group: Option<String>,
    /// `X-GM-Member`.
    pub member: Option<String>,
    /// `X-GM-Incarnation`, raw, so that a malformed one shows.
    pub incarnation: Option<String>,
    /// How the server answered (or would have, for a hung probe).
    pub answer: Answer,
}

impl Probe {
    /// Whether this probe named `group`/`id` at `incarnation` with all three headers.
    pub fn is_for(&self, group: &str, id: &str, incarnation: u64) -> bool {
        self.group.as_deref() == Some(group)
            && self.member.as_deref() == Some(id)
            && self.incarnation.as_deref() == Some(incarnation.to_string().as_str())
    }
}

/// How one member id has been treated so far.
#[derive(Default)]
struct MemberState {
    answer: Answer,
    probes: u64,
}

/// What the handler and the owner share.
struct Shared {
    /// Whether every probe is kept in `probes`, or only counted.
    record: bool,
    members: Mutex<HashMap<String, MemberState>>,
    probes: Mutex<Vec<Probe>>,
    /// Every probe request, whoever it was for.
    total: AtomicU64,
    /// Cancelled by a crash or a stop: the server stops and its connections fail.
    stop: CancellationToken,
}

/// A server at [`MemberServer::address`] standing in for members; stopped when dropped.
pub struct MemberServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl MemberServer {
    /// Starts a server that answers `200` to every request, counts probes per member id and
    /// keeps each one ([`MemberServer::probes`]).
    pub async fn start() -> io::Result<MemberServer> {
        MemberServer::start_with(true).await
    }

    /// Starts a server that only counts probes: for many members probed for long.
    pub async fn start_counting() -> io::Result<MemberServer> {
        MemberServer::start_with(false).await
    }

    async fn start_with(record: bool) -> io::Result<MemberServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            record,
            members: Mutex::default(),
            probes: Mutex::default(),
            total: AtomicU64::new(0),
            stop: stop.clone(),
        });
        let listener = CrashableListener { inner: listener, stop: stop.clone() };
        let app = Router::new()
            .fallback(probe)
            .with_state(Arc::clone(&shared))
            .into_make_service_with_connect_info::<Connection>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        let task = tokio::spawn(async move {
            let _ = serve.await;
        });
        Ok(MemberServer { address, shared, task: Mutex::new(Some(task)) })
    }

    /// `127.0.0.1:PORT`: the address of the members it stands in for.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// From now on, probes naming `id` get `answer`.
    pub fn set_answer(&self, id: &str, answer: Answer) {
        lock(&self.shared.members).entry(id.to_owned()).or_default().answer = answer;
    }

    /// Probes naming `id` get `503`; other ids at this address stay alive.
    pub fn fail(&self, id: &str) {
        self.set_answer(id, Answer::Fail);
    }

    /// Probes naming `id` are received but never answered.
    pub fn hang(&self, id: &str) {
        self.set_answer(id, Answer::Hang);
    }

    /// Probes naming `id` get their connection closed without an answer.
    pub fn crash_member(&self, id: &str) {
        self.set_answer(id, Answer::Crashed);
    }

    /// Probes naming `id` get `200` again.
    pub fn heal(&self, id: &str) {
        self.set_answer(id, Answer::Alive);
    }

    /// The whole server dies: it stops accepting, every open connection fails and hung probes
    /// are let go. See [`MemberServer::stopped`] to wait until no connect succeeds any more.
    pub fn crash(&self) {
        self.shared.stop.cancel();
    }

    /// Waits until the server has stopped (after a crash or a stop) and its listener is closed,
    /// at most `within`; whether it did.
    pub async fn stopped(&self, within: Duration) -> bool {
        let task = lock(&self.task).take();
        match task {
            Some(task) => tokio::time::timeout(within, task).await.is_ok(),
            None => true,
        }
    }

    /// Crashes the server and waits until it has stopped.
    pub async fn stop(self) {
        self.crash();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Probe requests so far, for anyone.
    pub fn total(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Probes so far that named `id`.
    pub fn probe_count(&self, id: &str) -> u64 {
        lock(&self.shared.members).get(id).map_or(0, |m| m.probes)
    }

    /// Every probe received so far, oldest first; none for a server that only counts.
    pub fn probes(&self) -> Vec<Probe> {
        lock(&self.shared.probes).clone()
    }
}

impl Drop for MemberServer {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn probe(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    uri: Uri,
    headers: HeaderMap,
) -> StatusCode {
    shared.total.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let member = header("x-gm-member");
    let answer = match &member {
        Some(id) => {
            let mut members = lock(&shared.members);
            let state = match members.get_mut(id) {
                Some(state) => state,
                None => members.entry(id.clone()).or_default(),
            };
            state.probes += 1;
            state.answer
        }
        None => Answer::Alive,
    };
    if shared.record {
        let probe = Probe {
            path: uri.path().to_owned(),
            group: header("x-gm-group"),
            member,
            incarnation: header("x-gm-incarnation"),
            answer,
        };
        lock(&shared.probes).push(probe);
    }
    match answer {
        Answer::Alive => StatusCode::OK,
        Answer::Fail => StatusCode::SERVICE_UNAVAILABLE,
        Answer::Hang => {
            shared.stop.cancelled().await;
            StatusCode::SERVICE_UNAVAILABLE
        }
        Answer::Crashed => {
            // The answer is never written: the connection fails first.
            connection.0.cancel();
            StatusCode::OK
        }
    }
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
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
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
    use super::*;

    /// A probe of `id` as GM sends it (raw HTTP on purpose: this is what a prober does).
    async fn probe_of(client: &reqwest::Client, server: &MemberServer, id: &str) -> Result<u16, reqwest::Error> {
        let url = format!("http://{}/gm/heartbeat", server.address());
        let answer = client
            .get(url)
            .header("X-GM-Group", "g")
            .header("X-GM-Member", id)
            .header("X-GM-Incarnation", "3")
            .send()
            .await?;
        Ok(answer.status().as_u16())
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client")
    }

    #[tokio::test]
    async fn members_answer_as_told_and_probes_are_recorded() {
        let server = MemberServer::start().await.expect("server");
        let client = client();
        assert_eq!(probe_of(&client, &server, "a").await.expect("answer"), 200);
        server.fail("b");
        assert_eq!(probe_of(&client, &server, "b").await.expect("answer"), 503);
        server.heal("b");
        assert_eq!(probe_of(&client, &server, "b").await.expect("answer"), 200);
        assert_eq!((server.probe_count("a"), server.probe_count("b"), server.total()), (1, 2, 3));
        let probes = server.probes();
        assert!(probes[0].is_for("g", "a", 3), "{probes:?}");
        assert_eq!((probes[0].path.as_str(), probes[1].answer), ("/gm/heartbeat", Answer::Fail));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_crashed_member_gets_no_answer_while_its_neighbours_do() {
        let server = MemberServer::start_counting().await.expect("server");
        let client = client();
        server.crash_member("b");
        assert!(probe_of(&client, &server, "b").await.is_err(), "a crashed member gives no answer");
        assert_eq!(probe_of(&client, &server, "a").await.expect("answer"), 200);
        assert_eq!((server.probe_count("b"), server.total()), (1, 2));
        assert!(server.probes().is_empty(), "a counting server keeps no probes");
    }

    #[tokio::test]
    async fn a_hung_probe_is_let_go_when_the_server_crashes_and_then_nothing_connects() {
        let server = MemberServer::start().await.expect("server");
        let client = client();
        assert_eq!(probe_of(&client, &server, "a").await.expect("answer"), 200);
        server.hang("h");
        let hung = tokio::spawn({
            let client = client.clone();
            let url = format!("http://{}/gm/heartbeat", server.address());
            async move { client.get(url).header("X-GM-Member", "h").send().await.map(|r| r.status().as_u16()) }
        });
        while server.probe_count("h") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.crash();
        assert!(server.stopped(Duration::from_secs(10)).await, "the server stops");
        assert!(hung.await.expect("the task").is_err(), "a hung probe ends without an answer");
        // Even over the connection pooled by the first probe.
        assert!(probe_of(&client, &server, "a").await.is_err());
        assert!(TcpStream::connect(server.address()).await.is_err(), "nothing listens any more");
    }
}
