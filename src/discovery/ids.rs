//! Node ids of a StatefulSet's pods. An id stands for one disk: a Raft node's votes and log are
//! promises only its own durable state keeps, so a pod that comes back with an empty disk must
//! never reuse the id it had (it could vote twice in a term). So an id is an ordinal *and a
//! generation*: `id = generation × 1000 + ordinal + 1` (generation 0 gives the familiar 1, 2,
//! 3; ordinal 0's next disk is 1001). A pod with an empty data dir claims the generation after its
//! ordinal's last one in the id book, a ConfigMap every pod updates with optimistic concurrency
//! (a write against a stale `resourceVersion` gets 409 and is retried), and keeps the id it
//! claimed in its data dir. The leader marks an id retired in the book before it removes it on a
//! scale-down, so a pod whose volume outlived its removal discards that state and claims anew.
//!
//! The same idea as etcd's member ids, never reused after `member remove`, and as Consul's
//! node ids kept in the data dir.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::membership::NodeId;

/// Ordinals per generation: a StatefulSet of gm may have at most this many replicas.
pub const ORDINALS: u64 = 1000;

/// The file in the data dir that holds this node's id and the token of its claim.
const ID_FILE: &str = "node-id";

/// The id of `ordinal`'s pod in `generation`.
pub fn node_id(ordinal: u64, generation: u64) -> NodeId {
    generation * ORDINALS + ordinal + 1
}

/// The ordinal `id` belongs to.
pub fn ordinal_of(id: NodeId) -> u64 {
    id.saturating_sub(1) % ORDINALS
}

/// The generation of `id`.
pub fn generation_of(id: NodeId) -> u64 {
    id.saturating_sub(1) / ORDINALS
}

/// One ordinal's entry in the id book: its last generation, who claimed it, whether the leader
/// has retired it (removed it from the cluster on a scale-down).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub generation: u64,
    /// A random token of the claiming pod's disk: a restart finds its own claim by it.
    pub token: String,
    #[serde(default)]
    pub retired: bool,
}

/// The id book: each ordinal's last claim. Stored as ConfigMap data, `"<ordinal>": <Claim as JSON>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Book(BTreeMap<u64, Claim>);

impl Book {
    /// Reads ConfigMap data; an entry that is not an ordinal and a claim is skipped with a warning.
    pub fn from_data(data: &BTreeMap<String, String>) -> Book {
        let mut book = BTreeMap::new();
        for (key, value) in data {
            match (key.parse::<u64>(), serde_json::from_str::<Claim>(value)) {
                (Ok(ordinal), Ok(claim)) => {
                    book.insert(ordinal, claim);
                }
                _ => tracing::warn!(key = %key, value = %value, "skipping an unreadable entry of the id book"),
            }
        }
        Book(book)
    }

    pub fn to_data(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(ordinal, claim)| (ordinal.to_string(), serde_json::to_string(claim).expect("a claim serializes")))
            .collect()
    }

    pub fn get(&self, ordinal: u64) -> Option<&Claim> {
        self.0.get(&ordinal)
    }

    pub fn set(&mut self, ordinal: u64, claim: Claim) {
        self.0.insert(ordinal, claim);
    }

    /// The id `ordinal`'s pod runs under now: its last claim, unless retired.
    pub fn current(&self, ordinal: u64) -> Option<NodeId> {
        self.0.get(&ordinal).filter(|c| !c.retired).map(|c| node_id(ordinal, c.generation))
    }

    /// Whether `id` may no longer run: its ordinal has claimed a later generation, or the
    /// leader retired it. An id the book does not know is not superseded.
    pub fn is_superseded(&self, id: NodeId) -> bool {
        self.0.get(&ordinal_of(id)).is_some_and(|c| {
            let generation = generation_of(id);
            c.generation > generation || (c.generation == generation && c.retired)
        })
    }

    /// The claim that follows `ordinal`'s last one.
    pub fn next_claim(&self, ordinal: u64) -> Claim {
        let generation = self.0.get(&ordinal).map_or(0, |c| c.generation + 1);
        Claim { generation, token: uuid::Uuid::new_v4().to_string(), retired: false }
    }
}

/// The id this node keeps in its data dir, and the token of the claim that gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalId {
    pub id: NodeId,
    pub token: String,
}

impl LocalId {
    /// Reads `data_dir/node-id`; `None` if there is none or it cannot be read.
    pub fn read(data_dir: &Path) -> Option<LocalId> {
        let text = std::fs::read_to_string(data_dir.join(ID_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes `data_dir/node-id` durably (the file and its directory synced).
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        write_durably(&data_dir.join(ID_FILE), &text)
    }

    /// Whether `book` records this very claim, not retired.
    pub fn is_current_in(&self, book: &Book) -> bool {
        book.get(ordinal_of(self.id)).is_some_and(|c| {
            !c.retired && c.token == self.token && node_id(ordinal_of(self.id), c.generation) == self.id
        })
    }
}

/// Writes `text` to `path` through a temporary file and syncs it and its directory.
pub fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(generation: u64, token: &str, retired: bool) -> Claim {
        Claim { generation, token: token.into(), retired }
    }

    #[test]
    fn ids_encode_ordinal_and_generation() {
        assert_eq!(node_id(0, 0), 1);
        assert_eq!(node_id(2, 0), 3);
        assert_eq!(node_id(0, 1), 1001);
        assert_eq!((ordinal_of(1001), generation_of(1001)), (0, 1));
        assert_eq!((ordinal_of(2003), generation_of(2003)), (2, 2));
        assert_eq!((ordinal_of(1000), generation_of(1000)), (999, 0));
    }

    #[test]
    fn the_book_supersedes_older_and_retired_ids() {
        let mut book = Book::default();
        assert!(!book.is_superseded(3), "an id the book does not know runs on");
        assert_eq!(book.next_claim(2).generation, 0);
        book.set(2, claim(0, "a", false));
        assert_eq!(book.current(2), Some(3));
        assert!(!book.is_superseded(3));
        book.set(2, claim(1, "b", false));
        assert!(book.is_superseded(3));
        assert!(!book.is_superseded(1003));
        assert_eq!(book.next_claim(2).generation, 2);
        book.set(2, claim(1, "b", true));
        assert!(book.is_superseded(1003));
        assert_eq!(book.current(2), None);
        assert_eq!(book.next_claim(2).generation, 2, "a retired generation is never claimed again");
    }

    #[test]
    fn the_book_round_trips_and_skips_garbage() {
        let mut book = Book::default();
        book.set(0, claim(0, "a", false));
        book.set(4, claim(3, "b", true));
        let mut data = book.to_data();
        assert_eq!(Book::from_data(&data), book);
        data.insert("x".into(), "{}".into());
        data.insert("7".into(), "not json".into());
        assert_eq!(Book::from_data(&data), book);
    }

    #[test]
    fn a_local_id_is_current_only_with_its_own_token() {
        let mut book = Book::default();
        book.set(1, claim(1, "mine", false));
        let local = LocalId { id: 1002, token: "mine".into() };
        assert!(local.is_current_in(&book));
        assert!(!LocalId { id: 1002, token: "theirs".into() }.is_current_in(&book));
        assert!(!LocalId { id: 2, token: "mine".into() }.is_current_in(&book));
        book.set(1, claim(1, "mine", true));
        assert!(!local.is_current_in(&book));
    }

    #[test]
    fn the_local_id_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LocalId::read(dir.path()), None);
        let local = LocalId { id: 1003, token: "t".into() };
        local.write(dir.path()).unwrap();
        assert_eq!(LocalId::read(dir.path()), Some(local));
    }
}
