//! What this node last heard from each peer over Raft: whether its latest RPC got an answer and
//! when one last did. The leader reports it as each node's health in `/v1/cluster`, and a change
//! of reachability is logged once: a dead peer costs one warning and one line when it is back,
//! not an error per RPC (openraft's own logs are off by default for that reason).

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::membership::NodeId;

/// Reachability of the peers this node sends Raft RPCs to. Clones share one record.
#[derive(Clone, Default)]
pub struct Contacts {
    peers: Arc<Mutex<HashMap<NodeId, Contact>>>,
}

#[derive(Clone, Copy)]
struct Contact {
    /// Whether the latest RPC got an answer.
    reachable: bool,
    /// When an RPC last got one; `None` if none has yet.
    last_answer: Option<Instant>,
    /// When the peer stopped answering, while it does not.
    down_since: Option<Instant>,
}

/// A peer as this node last heard from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerContact {
    pub reachable: bool,
    /// Time since the peer last answered; `None` if it never has.
    pub since_answer: Option<Duration>,
}

impl Contacts {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<NodeId, Contact>) -> T) -> T {
        f(&mut self.peers.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records that `peer` answered an RPC.
    pub fn answered(&self, peer: NodeId, addr: &str) {
        let now = Instant::now();
        let was_down = self.with(|peers| {
            let c = peers.entry(peer).or_insert(Contact { reachable: false, last_answer: None, down_since: None });
            let was_down = c.down_since.take();
            *c = Contact { reachable: true, last_answer: Some(now), down_since: None };
            was_down
        });
        if let Some(since) = was_down {
            tracing::info!(peer, addr, down_ms = (now - since).as_millis() as u64, "peer reachable again");
        }
    }

    /// Records that an RPC to `peer` got no answer (refused, broken or timed out).
    pub fn failed(&self, peer: NodeId, addr: &str, error: &(dyn Error + 'static)) {
        let now = Instant::now();
        let newly_down = self.with(|peers| {
            let c = peers.entry(peer).or_insert(Contact { reachable: false, last_answer: None, down_since: None });
            c.reachable = false;
            let newly_down = c.down_since.is_none();
            c.down_since.get_or_insert(now);
            newly_down.then_some(c.last_answer.is_some())
        });
        // The innermost cause says what happened (refused, timed out); the others what was tried.
        let cause = std::iter::successors(Some(error), |&e| e.source()).last().unwrap_or(error);
        match newly_down {
            // It answered before: this is news an operator wants.
            Some(true) => tracing::warn!(peer, addr, error = %cause, "peer unreachable"),
            // Never reached yet: peers of a cluster that is starting come up in any order.
            Some(false) => tracing::debug!(peer, addr, error = %cause, "peer not reachable yet"),
            None => {}
        }
    }

    /// How `peer` last answered, if an RPC was ever sent to it.
    pub fn get(&self, peer: NodeId) -> Option<PeerContact> {
        let now = Instant::now();
        self.with(|peers| {
            peers.get(&peer).map(|c| PeerContact {
                reachable: c.reachable,
                since_answer: c.last_answer.map(|t| now.saturating_duration_since(t)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn records_answers_and_failures() {
        let contacts = Contacts::default();
        assert_eq!(contacts.get(2), None);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        contacts.failed(2, "h:1", &refused);
        assert_eq!(contacts.get(2), Some(PeerContact { reachable: false, since_answer: None }));
        contacts.answered(2, "h:1");
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(
            contacts.get(2),
            Some(PeerContact { reachable: true, since_answer: Some(Duration::from_millis(300)) })
        );
        contacts.failed(2, "h:1", &std::io::Error::from(std::io::ErrorKind::TimedOut));
        let c = contacts.get(2).unwrap();
        assert!(!c.reachable);
        assert_eq!(c.since_answer, Some(Duration::from_millis(300)), "the last answer stays known");
    }
}
