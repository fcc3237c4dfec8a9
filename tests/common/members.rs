//! Fake members: an in-process HTTP server on a free loopback port that answers GM's probes and
//! records what each probe said (`X-GM-Group`, `X-GM-Member`, `X-GM-Incarnation`). One server
//! can host many member ids, as the contract allows several members at one address.
//!
//! Faults, as a member would show them:
//! - [`FakeMembers::crash`]: the process is gone. The listener is closed and every open
//!   connection (GM pools them) is shut, so the next probe's connect is refused.
//! - [`FakeMembers::fail`]: one id among many at this address is broken; the server answers
//!   `503` for probes naming it, `200` for the others.
//! - [`FakeMembers::hang`]: one id's host is a black hole; probes naming it are received (and
//!   recorded) but never answered, so they end by GM's probe timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::poll;

/// What the server answers for one member id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Alive,
    Fail,
    Hang,
}

/// One probe as the fake member received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub path: String,
    pub group: Option<String>,
    pub member: Option<String>,
    /// The raw header, so a malformed one shows up in an assertion.
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

#[derive(Default)]
struct Shared {
    probes: Mutex<Vec<Probe>>,
    answers: Mutex<HashMap<String, Answer>>,
    /// Cancelled by `crash`: hung probes are released and the server stops.
    crashed: CancellationToken,
}

/// An HTTP server at `address` standing in for one or more members.
pub struct FakeMembers {
    pub address: String,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

impl FakeMembers {
    /// Starts a server on a free port of 127.0.0.1 that answers `200` to every `GET`.
    pub async fn start() -> FakeMembers {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("fake member listener");
        let address = listener.local_addr().expect("fake member address").to_string();
        let shared = Arc::new(Shared::default());
        let state = Arc::clone(&shared);
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| answer(Arc::clone(&state), uri, headers));
        let stop = shared.crashed.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        FakeMembers { address, shared, server: Some(server) }
    }

    /// Starts `n` servers.
    pub async fn start_many(n: usize) -> Vec<FakeMembers> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(FakeMembers::start().await);
        }
        all
    }

    /// Answers `503` to probes naming `id` from now on; other ids at this address stay alive.
    pub fn fail(&self, id: &str) {
        self.set_answer(id, Answer::Fail);
    }

    /// Receives probes naming `id` but never answers them.
    pub fn hang(&self, id: &str) {
        self.set_answer(id, Answer::Hang);
    }

    /// Answers `200` to probes naming `id` again.
    pub fn heal(&self, id: &str) {
        self.set_answer(id, Answer::Alive);
    }

    fn set_answer(&self, id: &str, answer: Answer) {
        self.shared.answers.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), answer);
    }

    /// Stops the server as a crash would: nothing listens at `address` any more and the
    /// connections GM holds open are closed. Returns once a connect is refused.
    pub async fn crash(&mut self) {
        self.shared.crashed.cancel();
        if let Some(server) = self.server.take() {
            // Graceful shutdown closes idle keep-alive connections at once; hung probes were
            // released by the cancellation, so this does not wait long.
            let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;
            assert!(stopped.is_ok(), "fake member at {} did not stop", self.address);
        }
        let refused = tokio::net::TcpStream::connect(&self.address).await.is_err();
        assert!(refused, "fake member at {} still accepts connections after its crash", self.address);
    }

    /// Every probe received so far, oldest first.
    pub fn probes(&self) -> Vec<Probe> {
        self.shared.probes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many probes named `id`.
    pub fn probe_count(&self, id: &str) -> usize {
        self.probes().iter().filter(|p| p.member.as_deref() == Some(id)).count()
    }

    /// Waits until a probe named `group`/`id` at `incarnation`, and returns it.
    pub async fn wait_probe(&self, group: &str, id: &str, incarnation: u64) -> Probe {
        poll(&format!("a probe of {group}/{id} incarnation {incarnation} at {}", self.address), || async {
            self.probes().into_iter().find(|p| p.is_for(group, id, incarnation))
        })
        .await
    }

    /// Waits until `n` more probes named `id` arrived than `since` counted.
    pub async fn wait_more_probes(&self, id: &str, since: usize, n: usize) {
        poll(&format!("{n} more probes of {id} at {}", self.address), || async {
            (self.probe_count(id) >= since + n).then_some(())
        })
        .await
    }

    /// A join body for a probe-mode member at this address.
    pub fn join_body(&self) -> Value {
        json!({"address": self.address})
    }
}

impl Drop for FakeMembers {
    fn drop(&mut self) {
        self.shared.crashed.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn answer(shared: Arc<Shared>, uri: Uri, headers: HeaderMap) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let member = header("x-gm-member");
    let chosen = member
        .as_ref()
        .and_then(|id| shared.answers.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied())
        .unwrap_or(Answer::Alive);
    shared.probes.lock().unwrap_or_else(|e| e.into_inner()).push(Probe {
        path: uri.path().to_owned(),
        group: header("x-gm-group"),
        member,
        incarnation: header("x-gm-incarnation"),
        answer: chosen,
    });
    match chosen {
        Answer::Alive => StatusCode::OK,
        Answer::Fail => StatusCode::SERVICE_UNAVAILABLE,
        Answer::Hang => {
            shared.crashed.cancelled().await;
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}
