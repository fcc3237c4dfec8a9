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

/// How long a peer that answered before must stay silent before it is called unreachable: one
/// timed-out RPC on a loaded machine is not news.
const WARN_AFTER: Duration = Duration::from_secs(1);
/// The same for a peer that never answered: the nodes of a cluster start in any order.
const WARN_NEVER_ANSWERED_AFTER: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Default)]
struct Contact {
    /// Whether the latest RPC got an answer.
    reachable: bool,
    /// When an RPC last got one; `None` if none has yet.
    last_answer: Option<Instant>,
    /// When the peer stopped answering, while it does not.
    down_since: Option<Instant>,
    /// Whether its silence was logged (so its return will be too).
    warned: bool,
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
        let back = self.with(|peers| {
            let c = peers.entry(peer).or_default();
            let back = c.down_since.filter(|_| c.warned);
            *c = Contact { reachable: true, last_answer: Some(now), down_since: None, warned: false };
            back
        });
        if let Some(since) = back {
            tracing::info!(peer, addr, down_ms = (now - since).as_millis() as u64, "peer reachable again");
        }
    }

    /// Records that an RPC to `peer` got no answer (refused, broken or timed out); true when that
    /// makes the peer unreachable news, logged once.
    pub fn failed(&self, peer: NodeId, addr: &str, error: &(dyn Error + 'static)) -> bool {
        let now = Instant::now();
        let down_for = self.with(|peers| {
            let c = peers.entry(peer).or_default();
            c.reachable = false;
            let since = *c.down_since.get_or_insert(now);
            let grace = if c.last_answer.is_some() { WARN_AFTER } else { WARN_NEVER_ANSWERED_AFTER };
            let news = !c.warned && now - since >= grace;
            c.warned |= news;
            news.then_some(now - since)
        });
        if let Some(down_for) = down_for {
            // The innermost cause says what happened (refused, timed out); the others what was tried.
            let cause = std::iter::successors(Some(error), |&e| e.source()).last().unwrap_or(error);
            tracing::warn!(peer, addr, down_ms = down_for.as_millis() as u64, error = %cause, "peer unreachable");
        }
        down_for.is_some()
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

    #[tokio::test(start_paused = true)]
    async fn silence_is_news_once_and_only_when_it_lasts() {
        let contacts = Contacts::default();
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        // A cluster starting: a peer not up yet is no news for a while.
        assert!(!contacts.failed(2, "h:1", &timeout));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!contacts.failed(2, "h:1", &timeout));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(contacts.failed(2, "h:1", &timeout), "never answered for 5 s");
        contacts.answered(2, "h:1");
        // One slow RPC of a live peer is no news; a second after, it is, once.
        assert!(!contacts.failed(2, "h:1", &timeout));
        contacts.answered(2, "h:1");
        assert!(!contacts.failed(2, "h:1", &timeout));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!contacts.failed(2, "h:1", &timeout));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(contacts.failed(2, "h:1", &timeout));
        assert!(!contacts.failed(2, "h:1", &timeout), "logged once");
    }
}
