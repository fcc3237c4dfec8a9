//! Every node's view of every group, followed live: one watch stream
//! (`GET /v1/groups/{group}/watch?consistency=stale`) per group per node, so a removal is seen
//! when that node applies it. Records when each member first left each node's view.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Layout;
use crate::bench::BenchError;
use crate::client::Client;
use crate::membership::{GroupName, GroupView};
use crate::wire::Consistency;

/// Pause before a broken watch stream is opened again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// The bench's members in a view; other ids are ignored.
pub(super) fn view_members(view: &GroupView, layout: &Layout) -> HashSet<u32> {
    view.members.iter().filter_map(|m| layout.parse_id(m.id.as_str())).collect()
}

/// What the watch streams have shown.
pub(super) struct Book {
    /// Whether each member is in each node's latest view: `[node][member]`.
    pub present: Vec<Vec<bool>>,
    /// When each member first left each node's view: `[node][member]`.
    pub vanished: Vec<Vec<Option<Instant>>>,
    /// Streams that have shown their first view.
    pub first_views: usize,
    /// Streams that broke and were opened again.
    pub reconnects: u64,
    /// View events received, and bytes of stream, over all streams.
    views: u64,
    bytes: u64,
}

impl Book {
    pub fn new(nodes: usize, members: u32) -> Book {
        Book {
            present: vec![vec![false; members as usize]; nodes],
            vanished: vec![vec![None; members as usize]; nodes],
            first_views: 0,
            reconnects: 0,
            views: 0,
            bytes: 0,
        }
    }

    /// View events and bytes the streams have brought so far.
    pub fn traffic(&self) -> (u64, u64) {
        (self.views, self.bytes)
    }

    /// Node `node`'s view of one group went from `before` to `after` at `at`.
    pub fn changed(&mut self, node: usize, before: &HashSet<u32>, after: &HashSet<u32>, at: Instant) {
        for &n in before.difference(after) {
            self.present[node][n as usize] = false;
            self.vanished[node][n as usize].get_or_insert(at);
        }
        for &n in after.difference(before) {
            self.present[node][n as usize] = true;
        }
    }

    /// Whether every node's view has lost each of `members`.
    pub fn removed_everywhere(&self, mut members: impl Iterator<Item = u32>) -> bool {
        members.all(|n| self.vanished.iter().all(|node| node[n as usize].is_some()))
    }

    /// Whether member `n` is in every node's latest view.
    pub fn everywhere(&self, n: u32) -> bool {
        self.present.iter().all(|node| node[n as usize])
    }
}

/// The watch streams, one task each, until stopped.
pub(super) struct Watches {
    book: Arc<Mutex<Book>>,
    streams: usize,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Watches {
    /// Opens a watch of every group of `layout` on every endpoint of `client`.
    pub fn start(client: &Client, layout: Layout) -> Result<Watches, BenchError> {
        let nodes = client.endpoints().len();
        let book = Arc::new(Mutex::new(Book::new(nodes, layout.members)));
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for node in 0..nodes {
            for g in 0..layout.groups {
                let group = GroupName::parse(&layout.group(g)).map_err(|e| BenchError::Watch(e.to_string()))?;
                let stream = Stream { client: client.at(node), group, node, layout, book: Arc::clone(&book) };
                let cancel = cancel.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = stream.follow() => {}
                    }
                });
            }
        }
        Ok(Watches { book, streams: nodes * layout.groups as usize, cancel, tasks })
    }

    /// What the streams have shown so far.
    pub fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every stream has shown its first view.
    pub async fn first_views(&self, waited: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + waited;
        loop {
            let seen = self.book().first_views;
            if seen >= self.streams {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Watch(format!(
                    "only {seen} of {} watch streams showed a first view within {waited:?}",
                    self.streams
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One watch stream: one group on one node.
struct Stream {
    /// Of that node alone.
    client: Client,
    group: GroupName,
    node: usize,
    layout: Layout,
    book: Arc<Mutex<Book>>,
}

impl Stream {
    /// Follows the stream, opening it again whenever it breaks.
    async fn follow(self) {
        let mut current: HashSet<u32> = HashSet::new();
        let mut first = true;
        loop {
            if let Err(error) = self.read(&mut current, &mut first).await {
                tracing::debug!(group = %self.group, node = self.node + 1, %error, "watch stream broke; opening it again");
            }
            self.book.lock().unwrap_or_else(|e| e.into_inner()).reconnects += 1;
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }

    /// Reads the stream until it ends, applying each view to the book.
    async fn read(&self, current: &mut HashSet<u32>, first: &mut bool) -> Result<(), String> {
        let mut watch = self.client.watch(&self.group, Consistency::Stale).await.map_err(|e| e.to_string())?;
        let mut counted = 0;
        let mut count_bytes = |read: u64| {
            self.book.lock().unwrap_or_else(|e| e.into_inner()).bytes += read - counted;
            counted = read;
        };
        while let Some(view) = watch.next().await {
            count_bytes(watch.bytes_read());
            let after = view_members(&view.map_err(|e| e.to_string())?, &self.layout);
            let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
            book.views += 1;
            // When the bytes arrived, before any parsing: that is when the view was seen.
            book.changed(self.node, current, &after, watch.received_at());
            if std::mem::take(first) {
                book.first_views += 1;
            }
            *current = after;
        }
        count_bytes(watch.bytes_read());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_yield_the_bench_members_only() {
        let layout = Layout { members: 10, addresses: 1, groups: 1 };
        let member = |id: &str| {
            serde_json::json!({"id": id, "group": "fd-0", "address": "127.0.0.1:1", "metadata": {},
                "instance": null, "incarnation": 1, "joined_at": "2026-11-24T10:00:00.123Z",
                "responsible_node": 1, "failure_detection": {"mode": "probe", "path": "/gm/heartbeat"}})
        };
        let members: Vec<_> = ["m1", "m9", "m10", "other"].into_iter().map(member).collect();
        let view = serde_json::from_value(serde_json::json!({"group": "fd-0", "revision": 5, "members": members}));
        assert_eq!(view_members(&view.expect("a view"), &layout), HashSet::from([1, 9]));
    }

    #[test]
    fn the_book_keeps_the_first_time_a_member_left() {
        let mut book = Book::new(2, 3);
        let t0 = Instant::now();
        let (all, some) = (HashSet::from([0, 1, 2]), HashSet::from([0, 2]));
        book.changed(0, &HashSet::new(), &all, t0);
        book.changed(1, &HashSet::new(), &all, t0);
        assert!(book.everywhere(1));
        book.changed(0, &all, &some, t0 + Duration::from_secs(1));
        book.changed(0, &some, &HashSet::from([0]), t0 + Duration::from_secs(2));
        assert!(!book.everywhere(1));
        assert!(book.everywhere(0));
        assert_eq!(book.vanished[0][1], Some(t0 + Duration::from_secs(1)));
        assert_eq!(book.vanished[0][2], Some(t0 + Duration::from_secs(2)));
        assert_eq!(book.vanished[1][1], None);
    }
}
