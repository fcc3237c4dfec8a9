//! Fake members: `gm::member_server`, the stand-in members `gm bench fd` uses too, with the
//! harness's conveniences: panics instead of errors, waits bounded by its deadline, and a crash
//! that returns once a connect is refused. Each server records every probe it gets.

use std::ops::Deref;
use std::time::Duration;

use gm::member_server::MemberServer;
use serde_json::{json, Value};

pub use gm::member_server::Probe;

use super::poll;

/// A member server at `address`; its methods (`fail`, `hang`, `heal`, `probes`, `probe_count`,
/// ...) are [`MemberServer`]'s.
pub struct FakeMembers {
    pub address: String,
    server: MemberServer,
}

impl Deref for FakeMembers {
    type Target = MemberServer;

    fn deref(&self) -> &MemberServer {
        &self.server
    }
}

impl FakeMembers {
    /// Starts a server on a free port of 127.0.0.1 that answers `200` to every request.
    pub async fn start() -> FakeMembers {
        let server = MemberServer::start().await.expect("fake member server");
        FakeMembers { address: server.address(), server }
    }

    /// Starts `n` servers.
    pub async fn start_many(n: usize) -> Vec<FakeMembers> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(FakeMembers::start().await);
        }
        all
    }

    /// Stops the server as a crash would: nothing listens at `address` any more and the
    /// connections GM holds open are closed. Returns once a connect is refused.
    pub async fn crash(&mut self) {
        self.server.crash();
        assert!(self.server.stopped(Duration::from_secs(10)).await, "fake member at {} did not stop", self.address);
        let refused = tokio::net::TcpStream::connect(&self.address).await.is_err();
        assert!(refused, "fake member at {} still accepts connections after its crash", self.address);
    }

    /// Waits until a probe named `group`/`id` at `incarnation`, and returns it.
    pub async fn wait_probe(&self, group: &str, id: &str, incarnation: u64) -> Probe {
        poll(&format!("a probe of {group}/{id} incarnation {incarnation} at {}", self.address), || async {
            self.probes().into_iter().find(|p| p.is_for(group, id, incarnation))
        })
        .await
    }

    /// Waits until `n` more probes named `id` arrived than `since` counted.
    pub async fn wait_more_probes(&self, id: &str, since: u64, n: u64) {
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
