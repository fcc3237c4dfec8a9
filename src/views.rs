//! The answers read most, kept encoded. Views are read far more often than they change (every
//! pod of a deployment reads or watches its group), so each group's view is encoded once per
//! change of the group, and the same bytes serve plain reads, blocking queries and every watch
//! stream of the group; the list of groups is encoded once per revision.
//!
//! The state machine hands out only a shared handle of what changed ([`GroupSnapshot`], a
//! pointer); the first reader that needs the answer encodes it, outside the state's lock, and
//! every other reader of that revision waits for and shares its bytes. The idea is the watch
//! cache of etcd and of the Kubernetes API server, which serialize an event once for all
//! watchers.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::ser::{Serialize, Serializer};
use tokio::sync::broadcast;

use crate::membership::{GroupName, GroupSnapshot, Member, MembershipState};
use crate::wire::GroupsAnswer;

/// Answers at least this long (bytes of JSON) are also kept gzipped for clients that accept it,
/// made the first time one asks; below it gzip saves too little to be worth a second copy.
pub const GZIP_ABOVE: usize = 4 * 1024;
/// The encoded views kept for reads, in bytes of JSON over all groups. Past it, cached views are
/// let go (the next read encodes again), so reading every group of a large cluster does not
/// double its memory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Changes a watch stream may fall behind by; one further behind is told so and closed.
const WATCH_BACKLOG: usize = 128;

/// Why an answer could not be encoded (it cannot happen with the contract's types, whose maps
/// all have string keys; kept as an error rather than a panic).
#[derive(Clone, Debug, thiserror::Error)]
#[error("cannot encode the answer: {0}")]
pub struct EncodeError(String);

/// One answer's body: JSON, and gzip of it for answers of at least [`GZIP_ABOVE`] bytes.
#[derive(Debug)]
pub struct Encoded {
    json: Bytes,
    gzip: OnceLock<Option<Bytes>>,
}

impl Encoded {
    fn new(json: Bytes) -> Self {
        Encoded { json, gzip: OnceLock::new() }
    }

    /// The JSON body (shared: cloning it copies no bytes).
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The gzip form of the body, made at its first use; `None` below [`GZIP_ABOVE`] bytes.
    pub fn gzip(&self) -> Option<&Bytes> {
        self.gzip.get_or_init(|| (self.json.len() >= GZIP_ABOVE).then(|| gzip(&self.json)).flatten()).as_ref()
    }
}

/// Gzip at the fastest level: answers are compressed once per change, and membership changes often.
fn gzip(data: &[u8]) -> Option<Bytes> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 4), Compression::fast());
    encoder.write_all(data).ok()?;
    encoder.finish().ok().map(Bytes::from)
}

/// A value made on first use from a source it then lets go of.
#[derive(Debug)]
struct Lazy<S: Default, T> {
    source: Mutex<S>,
    value: OnceLock<T>,
}

impl<S: Default, T> Lazy<S, T> {
    fn new(source: S) -> Self {
        Lazy { source: Mutex::new(source), value: OnceLock::new() }
    }

    /// The value, made by the first caller; the others wait for it.
    fn get(&self, make: impl FnOnce(&S) -> T) -> &T {
        let mut made = false;
        let value = self.value.get_or_init(|| {
            made = true;
            make(&self.source())
        });
        if made {
            // Let go of the source: a group snapshot held would make the group's next change copy it.
            drop(std::mem::take(&mut *self.source()));
        }
        value
    }

    fn source(&self) -> MutexGuard<'_, S> {
        self.source.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A view's encodings: the Server-Sent Event `event: view`, `id: <revision>`, `data: <JSON>`,
/// and the JSON body, a slice of the event's bytes so both share one buffer.
#[derive(Debug)]
struct EncodedView {
    event: Bytes,
    body: Encoded,
}

/// One group's view at one revision, encoded by its first reader.
#[derive(Debug)]
pub struct ViewCell {
    group: GroupName,
    revision: u64,
    /// The group at `revision`, until encoded; `None` for a group without members.
    encoded: Lazy<Option<GroupSnapshot>, Result<EncodedView, EncodeError>>,
    /// Whether the group has no members.
    empty: bool,
    /// Bytes of all encoded views alive, this one's included once it is encoded.
    book: Arc<AtomicUsize>,
}

impl ViewCell {
    fn new(group: &GroupName, revision: u64, snapshot: Option<GroupSnapshot>, book: &Arc<AtomicUsize>) -> Self {
        let empty = snapshot.is_none();
        ViewCell { group: group.clone(), revision, encoded: Lazy::new(snapshot), empty, book: Arc::clone(book) }
    }

    /// The view's revision: the group's last change, or for a group without members the
    /// revision at which it was read.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether the view has no members.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// The view as an answer body: `{"group","revision","members":[...]}`.
    pub fn body(&self) -> Result<&Encoded, EncodeError> {
        self.encode().map(|v| &v.body)
    }

    /// The view as one Server-Sent Event, ending with its blank line.
    pub fn event(&self) -> Result<Bytes, EncodeError> {
        self.encode().map(|v| v.event.clone())
    }

    fn encode(&self) -> Result<&EncodedView, EncodeError> {
        let encoded = self.encoded.get(|snapshot| {
            let encoded = encode_view(&self.group, self.revision, snapshot.as_ref())?;
            self.book.fetch_add(encoded.event.len(), Ordering::Relaxed);
            Ok(encoded)
        });
        encoded.as_ref().map_err(Clone::clone)
    }
}

impl Drop for ViewCell {
    fn drop(&mut self) {
        if let Some(Ok(encoded)) = self.encoded.value.get() {
            self.book.fetch_sub(encoded.event.len(), Ordering::Relaxed);
        }
    }
}

/// A view as the contract writes it, from the group's shared record instead of a copy of its
/// members; the same JSON as [`crate::membership::GroupView`] (a test holds them equal).
#[derive(serde::Serialize)]
struct ViewBody<'a> {
    group: &'a GroupName,
    revision: u64,
    members: Members<'a>,
}

struct Members<'a>(Option<&'a GroupSnapshot>);

impl Serialize for Members<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let none: [&Member; 0] = [];
        match self.0 {
            Some(group) => serializer.collect_seq(group.members()),
            None => serializer.collect_seq(none),
        }
    }
}

fn encode_view(group: &GroupName, revision: u64, members: Option<&GroupSnapshot>) -> Result<EncodedView, EncodeError> {
    let prefix = format!("event: view\nid: {revision}\ndata: ");
    let mut event = Vec::with_capacity(prefix.len() + 64 + members.map_or(0, |g| g.members().len() * 256));
    event.extend_from_slice(prefix.as_bytes());
    let body = ViewBody { group, revision, members: Members(members) };
    // Compact JSON has no newline, so the view is one `data:` line.
    serde_json::to_writer(&mut event, &body).map_err(|e| EncodeError(e.to_string()))?;
    let end = event.len();
    event.extend_from_slice(b"\n\n");
    let event = Bytes::from(event);
    let body = Encoded::new(event.slice(prefix.len()..end));
    Ok(EncodedView { event, body })
}

/// The list of groups at one revision, encoded by its first reader.
#[derive(Debug)]
pub struct ListCell {
    revision: u64,
    encoded: Lazy<GroupsAnswer, Result<Encoded, EncodeError>>,
}

impl ListCell {
    /// The state's revision the list was read at.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The list as an answer body: `{"revision","groups":[{"group","revision","size"}]}`.
    pub fn body(&self) -> Result<&Encoded, EncodeError> {
        let encoded = self.encoded.get(|answer| {
            serde_json::to_vec(answer).map(|json| Encoded::new(json.into())).map_err(|e| EncodeError(e.to_string()))
        });
        encoded.as_ref().map_err(Clone::clone)
    }
}

/// The encoded answers of one node and the watch streams of its groups. Every method that takes
/// the state is called with the state's lock held, so what it reads is one applied revision.
#[derive(Debug, Default)]
pub struct Views {
    /// The newest view of each group read or watched lately.
    cells: Mutex<HashMap<GroupName, Arc<ViewCell>>>,
    /// Per watched group, the views of its changes, one by one.
    watchers: Mutex<HashMap<GroupName, broadcast::Sender<Arc<ViewCell>>>>,
    list: Mutex<Option<Arc<ListCell>>>,
    /// Bytes of JSON in every encoded view alive (cached, queued for a watch stream, or being sent).
    bytes: Arc<AtomicUsize>,
}

impl Views {
    /// The view of `group` in `state`, shared with every reader of the same revision; `None` if
    /// the group has no members.
    pub fn view(&self, state: &MembershipState, group: &GroupName) -> Option<Arc<ViewCell>> {
        let revision = state.group_revision(group)?;
        let mut cells = lock(&self.cells);
        if let Some(cell) = cells.get(group).filter(|cell| cell.revision == revision) {
            return Some(Arc::clone(cell));
        }
        let cell = Arc::new(ViewCell::new(group, revision, state.group_snapshot(group), &self.bytes));
        if self.bytes.load(Ordering::Relaxed) > CACHE_BYTES {
            // Over budget: let the others go (each is encoded again by its next reader). Rare,
            // and simpler than tracking recency on every read.
            cells.clear();
        }
        cells.insert(group.clone(), Arc::clone(&cell));
        Some(cell)
    }

    /// The view of `group` in `state`, or one without members at the state's revision.
    pub fn view_or_empty(&self, state: &MembershipState, group: &GroupName) -> Arc<ViewCell> {
        self.view(state, group).unwrap_or_else(|| Arc::new(ViewCell::new(group, state.revision(), None, &self.bytes)))
    }

    /// The list of all groups in `state`, shared with every reader of the same revision.
    pub fn groups(&self, state: &MembershipState) -> Arc<ListCell> {
        let revision = state.revision();
        let mut list = lock(&self.list);
        match &*list {
            Some(cell) if cell.revision == revision => Arc::clone(cell),
            _ => {
                let answer = GroupsAnswer { revision, groups: state.groups() };
                let cell = Arc::new(ListCell { revision, encoded: Lazy::new(answer) });
                *list = Some(Arc::clone(&cell));
                cell
            }
        }
    }

    /// The views of `group`, one per change from now on. A receiver more than the backlog
    /// behind gets `Lagged` (its stream is closed; the client reconnects to the current view).
    pub fn subscribe(&self, group: &GroupName) -> broadcast::Receiver<Arc<ViewCell>> {
        let mut watchers = lock(&self.watchers);
        watchers.retain(|_, tx| tx.receiver_count() > 0);
        watchers.entry(group.clone()).or_insert_with(|| broadcast::channel(WATCH_BACKLOG).0).subscribe()
    }

    /// Tells the views that `state` changed `groups` (every group if `None`): the watch streams
    /// of those groups get the new view, and a cached view of a group now gone is let go (one of
    /// a group that changed is replaced by its next reader, since its revision moved on).
    pub fn changed(&self, state: &MembershipState, groups: Option<&[GroupName]>) {
        if groups.is_some_and(<[GroupName]>::is_empty) {
            // Called for every command applied: one that changed no group costs no lock.
            return;
        }
        if let Some(groups) = groups {
            let mut cells = lock(&self.cells);
            for group in groups.iter().filter(|g| state.group_revision(g).is_none()) {
                cells.remove(group);
            }
        }
        let watchers = lock(&self.watchers);
        if watchers.is_empty() {
            return;
        }
        let send = |group: &GroupName| {
            if let Some(tx) = watchers.get(group).filter(|tx| tx.receiver_count() > 0) {
                // No receiver is not an error: the last one left since the check.
                let _ = tx.send(self.view_or_empty(state, group));
            }
        };
        match groups {
            Some(groups) => groups.iter().for_each(send),
            None => watchers.keys().for_each(send),
        }
    }

    /// Tells the views that the whole state was replaced (a snapshot was installed).
    pub fn replaced(&self, state: &MembershipState) {
        lock(&self.cells).clear();
        self.changed(state, None);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::membership::{Address, Command, FailureDetection, MemberId, MemberSpec, Metadata, Timestamp};

    fn group(name: &str) -> GroupName {
        GroupName::parse(name).unwrap()
    }

    fn join(state: &mut MembershipState, g: &str, id: &str) {
        let spec = MemberSpec {
            address: Address::parse("10.0.0.1:9000").unwrap(),
            metadata: Metadata::default(),
            instance: None,
            failure_detection: FailureDetection::Lease { ttl_ms: 10_000 },
        };
        let command =
            Command::Join { group: group(g), id: MemberId::parse(id).unwrap(), spec, at: Timestamp::from_millis(0) };
        state.apply(&command);
    }

    fn state_with(members: usize) -> MembershipState {
        let mut state = MembershipState::default();
        for i in 0..members {
            join(&mut state, "orders", &format!("worker-{i}"));
        }
        state
    }

    #[test]
    fn a_view_is_the_json_of_the_group_view() {
        let state = state_with(3);
        let views = Views::default();
        let cell = views.view(&state, &group("orders")).unwrap();
        let expected = serde_json::to_vec(&state.view(&group("orders")).unwrap()).unwrap();
        assert_eq!(cell.body().unwrap().json(), &expected[..]);
        assert_eq!(cell.revision(), 3);
        let event = cell.event().unwrap();
        let text = std::str::from_utf8(&event).unwrap();
        assert_eq!(text, format!("event: view\nid: 3\ndata: {}\n\n", std::str::from_utf8(&expected).unwrap()));
    }

    #[test]
    fn an_empty_view_has_no_members_at_the_state_revision() {
        let state = state_with(2);
        let views = Views::default();
        assert!(views.view(&state, &group("payments")).is_none());
        let cell = views.view_or_empty(&state, &group("payments"));
        assert!(cell.is_empty());
        let json: serde_json::Value = serde_json::from_slice(cell.body().unwrap().json()).unwrap();
        assert_eq!(json, serde_json::json!({"group": "payments", "revision": 2, "members": []}));
    }

    #[test]
    fn readers_of_one_revision_share_one_encoding_and_a_change_makes_a_new_one() {
        let mut state = state_with(2);
        let views = Views::default();
        let first = views.view(&state, &group("orders")).unwrap();
        let again = views.view(&state, &group("orders")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let (a, b) = (first.body().unwrap().json().clone(), again.body().unwrap().json().clone());
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a copy");
        join(&mut state, "orders", "worker-9");
        let changed = views.view(&state, &group("orders")).unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(changed.revision(), 3);
    }

    #[test]
    fn an_encoded_view_lets_go_of_the_group_so_the_next_change_does_not_copy_it() {
        let mut state = state_with(1);
        let views = Views::default();
        let cell = views.view(&state, &group("orders")).unwrap();
        cell.body().unwrap();
        // The state's group is the only holder again: a snapshot taken now shares the same record.
        assert!(cell.encoded.source().is_none());
        join(&mut state, "orders", "worker-2");
        assert_eq!(state.view(&group("orders")).unwrap().members.len(), 2);
    }

    #[test]
    fn large_answers_are_kept_gzipped_small_ones_are_not() {
        let views = Views::default();
        let small = views.view(&state_with(1), &group("orders")).unwrap();
        assert!(small.body().unwrap().gzip().is_none());
        let big = state_with(200);
        let cell = views.view(&big, &group("orders")).unwrap();
        let body = cell.body().unwrap();
        let gz = body.gzip().expect("a large view is gzipped");
        assert!(gz.len() < body.json().len() / 4, "{} bytes gzipped from {}", gz.len(), body.json().len());
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut unzipped).unwrap();
        assert_eq!(&unzipped[..], &body.json()[..]);
    }

    #[test]
    fn the_list_of_groups_is_encoded_once_per_revision() {
        let mut state = state_with(2);
        join(&mut state, "payments", "p-1");
        let views = Views::default();
        let list = views.groups(&state);
        assert!(Arc::ptr_eq(&list, &views.groups(&state)));
        let expected = serde_json::to_vec(&GroupsAnswer { revision: 3, groups: state.groups() }).unwrap();
        assert_eq!(list.body().unwrap().json(), &expected[..]);
        join(&mut state, "payments", "p-2");
        assert_eq!(views.groups(&state).revision(), 4);
    }

    #[test]
    fn watchers_get_one_view_per_change_and_a_group_emptied_is_an_empty_view() {
        let mut state = state_with(1);
        let views = Views::default();
        let mut rx = views.subscribe(&group("orders"));
        join(&mut state, "orders", "worker-2");
        views.changed(&state, Some(&[group("orders")]));
        for id in ["worker-0", "worker-2"] {
            let leave = Command::Leave {
                group: group("orders"),
                id: MemberId::parse(id).unwrap(),
                incarnation: None,
                reason: crate::membership::LeaveReason::Left,
            };
            state.apply(&leave);
            views.changed(&state, Some(&[group("orders")]));
        }
        let revisions: Vec<_> = (0..3).map(|_| rx.try_recv().unwrap()).map(|c| (c.revision(), c.is_empty())).collect();
        assert_eq!(revisions, [(2, false), (3, false), (4, true)]);
        assert!(lock(&views.cells).get(&group("orders")).is_none(), "a group gone is not cached");
    }

    #[test]
    fn a_watcher_too_far_behind_lags() {
        let mut state = state_with(1);
        let views = Views::default();
        let mut rx = views.subscribe(&group("orders"));
        for i in 0..=WATCH_BACKLOG {
            join(&mut state, "orders", &format!("w-{i}"));
            views.changed(&state, Some(&[group("orders")]));
        }
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))));
    }
}
