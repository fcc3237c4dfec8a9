//! Deadlines ordered by time: the lease keeper and the prober ask only for what is due, so a
//! tick costs what expires or is probed in it, not the number of members that exist. Each key
//! has at most one deadline; setting it again moves it.
//!
//! The leader's lease book holds one entry per lease member, so its layout is what a million
//! members cost: each key is stored once, in its entry, and the hash index and the time order
//! refer to the entry by its position (4 bytes), not by a copy of the key.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, RandomState};

use hashbrown::HashTable;
use tokio::time::Instant;

/// A deadline and a sequence number that keeps equal deadlines apart.
type Slot = (Instant, u64);

/// Past this many entries, a book whose vacant positions outnumber its entries is rebuilt, so
/// memory follows the members that remain, not the most there ever were.
const COMPACT_ABOVE: usize = 1024;

struct Entry<K, V> {
    key: K,
    value: V,
    slot: Slot,
}

/// Keys with a value each, ordered by their deadline.
pub struct Deadlines<K, V> {
    /// Entries at positions that stay put while they live; a removed one's position is taken
    /// by a later insert.
    entries: Vec<Option<Entry<K, V>>>,
    vacant: Vec<u32>,
    /// The position of each key, found by the key's hash.
    index: HashTable<u32>,
    hasher: RandomState,
    /// Positions by deadline.
    order: BTreeMap<Slot, u32>,
    seq: u64,
}

impl<K, V> Default for Deadlines<K, V> {
    fn default() -> Self {
        Deadlines {
            entries: Vec::new(),
            vacant: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            order: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<K: Hash + Eq, V> Deadlines<K, V> {
    fn slot(&mut self, at: Instant) -> Slot {
        self.seq += 1;
        (at, self.seq)
    }

    /// The entry at `at`; the index and the order name live entries only.
    fn entry(&self, at: u32) -> Option<&Entry<K, V>> {
        self.entries.get(at as usize)?.as_ref()
    }

    fn entry_mut(&mut self, at: u32) -> Option<&mut Entry<K, V>> {
        self.entries.get_mut(at as usize)?.as_mut()
    }

    /// The position of `key`'s entry.
    fn find(&self, key: &K) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.index.find(hash, |&at| self.entry(at).is_some_and(|e| e.key == *key)).copied()
    }

    /// Takes the entry at `at` out of the entries and the index (not the order).
    fn take(&mut self, at: u32) -> Option<Entry<K, V>> {
        let entry = self.entries.get_mut(at as usize)?.take()?;
        let hash = self.hasher.hash_one(&entry.key);
        if let Ok(found) = self.index.find_entry(hash, |&other| other == at) {
            found.remove();
        }
        self.vacant.push(at);
        self.compact();
        Some(entry)
    }

    /// Rebuilds the book without its vacant positions once they are most of it.
    fn compact(&mut self) {
        if self.entries.len() <= COMPACT_ABOVE || self.vacant.len() * 2 <= self.entries.len() {
            return;
        }
        let entries = std::mem::take(&mut self.entries);
        let seq = self.seq;
        *self = Deadlines { seq, ..Deadlines::default() };
        self.entries.reserve_exact(entries.len() / 2);
        for Entry { key, value, slot } in entries.into_iter().flatten() {
            self.add(key, value, slot);
        }
    }

    /// Adds an entry for a key that has none.
    fn add(&mut self, key: K, value: V, slot: Slot) {
        let hash = self.hasher.hash_one(&key);
        let entry = Some(Entry { key, value, slot });
        let at = match self.vacant.pop() {
            Some(at) => {
                self.entries[at as usize] = entry;
                at
            }
            None => {
                // Positions are u32s: 4 bytes in the index and the order, and no book of a
                // node's members comes near 2^32 entries.
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(hash, at, |&other| {
            entries.get(other as usize).and_then(Option::as_ref).map_or(0, |e| hasher.hash_one(&e.key))
        });
        self.order.insert(slot, at);
    }

    /// Sets `key`'s value and deadline, replacing any it had; returns the old value.
    pub fn insert(&mut self, key: K, value: V, at: Instant) -> Option<V> {
        let slot = self.slot(at);
        let Some((found, entry)) = self.find(&key).and_then(|found| Some((found, self.entry_mut(found)?))) else {
            self.add(key, value, slot);
            return None;
        };
        let old = std::mem::replace(&mut entry.slot, slot);
        let value = std::mem::replace(&mut entry.value, value);
        self.order.remove(&old);
        self.order.insert(slot, found);
        Some(value)
    }

    /// Moves `key`'s deadline to `at`; false if it has none.
    pub fn reschedule(&mut self, key: &K, at: Instant) -> bool {
        let Some(found) = self.find(key) else { return false };
        let slot = self.slot(at);
        let Some(entry) = self.entry_mut(found) else { return false };
        let old = std::mem::replace(&mut entry.slot, slot);
        self.order.remove(&old);
        self.order.insert(slot, found);
        true
    }

    pub fn get(&self, key: &K) -> Option<(&V, Instant)> {
        let entry = self.entry(self.find(key)?)?;
        Some((&entry.value, entry.slot.0))
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.take(self.find(key)?)?;
        self.order.remove(&entry.slot);
        Some(entry.value)
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.order.first_key_value().map(|((at, _), _)| *at)
    }

    /// Takes out the entry whose deadline is earliest, if it is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, V, Instant)> {
        let due = self.order.first_entry().filter(|e| e.key().0 <= now)?;
        let ((at, _), found) = due.remove_entry();
        let Entry { key, value, .. } = self.take(found)?;
        Some((key, value, at))
    }

    /// Gives every entry a new deadline from its value: a rare, whole-book operation.
    pub fn reschedule_all(&mut self, mut at: impl FnMut(&V) -> Instant) {
        self.order.clear();
        for (found, entry) in self.entries.iter_mut().enumerate() {
            let Some(entry) = entry else { continue };
            self.seq += 1;
            entry.slot = (at(&entry.value), self.seq);
            self.order.insert(entry.slot, found as u32);
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Forgets every entry and gives their memory back.
    pub fn clear(&mut self) {
        let seq = self.seq;
        *self = Deadlines { seq, ..Deadlines::default() };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn due(d: &mut Deadlines<&'static str, u32>, now: Instant) -> Vec<&'static str> {
        std::iter::from_fn(|| d.pop_due(now).map(|(k, ..)| k)).collect()
    }

    #[test]
    fn only_due_entries_come_out_in_deadline_order() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.insert("c", 3, t0 + ms(30));
        d.insert("a", 1, t0 + ms(10));
        d.insert("b", 2, t0 + ms(20));
        d.insert("a2", 1, t0 + ms(10));
        assert_eq!(d.next(), Some(t0 + ms(10)));
        assert!(due(&mut d, t0 + ms(9)).is_empty());
        assert_eq!(due(&mut d, t0 + ms(20)), ["a", "a2", "b"], "equal deadlines in insertion order");
        assert_eq!(d.len(), 1);
        assert_eq!(d.get(&"c"), Some((&3, t0 + ms(30))));
        assert_eq!(d.pop_due(t0 + ms(30)), Some(("c", 3, t0 + ms(30))));
        assert!(d.is_empty() && d.next().is_none());
    }

    #[test]
    fn setting_a_deadline_again_moves_it() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.insert("a", 1, t0 + ms(10));
        d.insert("b", 2, t0 + ms(15));
        assert_eq!(d.insert("a", 7, t0 + ms(50)), Some(1), "a heartbeat re-arms: the old value comes back");
        assert!(d.reschedule(&"b", t0 + ms(40)));
        assert!(!d.reschedule(&"x", t0), "no deadline, nothing to move");
        assert!(due(&mut d, t0 + ms(39)).is_empty(), "the old deadlines are gone");
        assert_eq!(due(&mut d, t0 + ms(50)), ["b", "a"]);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn removed_entries_never_come_due() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.insert("a", 1, t0);
        d.insert("b", 2, t0);
        assert_eq!(d.remove(&"a"), Some(1));
        assert_eq!(d.remove(&"a"), None);
        assert_eq!(due(&mut d, t0 + ms(1)), ["b"]);
        d.insert("c", 3, t0);
        d.clear();
        assert!(due(&mut d, t0 + ms(1)).is_empty());
    }

    #[test]
    fn reschedule_all_moves_every_deadline_by_its_value() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.insert("short", 10, t0);
        d.insert("long", 100, t0);
        d.reschedule_all(|&v| t0 + ms(u64::from(v)));
        assert_eq!(due(&mut d, t0 + ms(10)), ["short"]);
        assert_eq!(due(&mut d, t0 + ms(100)), ["long"]);
    }

    #[test]
    fn a_book_emptied_of_most_entries_gives_their_room_back() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        for i in 0..4000u32 {
            d.insert(i, i, t0 + ms(u64::from(i)));
        }
        for i in (0..4000u32).filter(|i| i % 4 != 0) {
            assert_eq!(d.remove(&i), Some(i));
        }
        assert!(d.entries.len() < 2000, "rebuilt without most vacant positions: {}", d.entries.len());
        assert_eq!(d.len(), 1000);
        assert_eq!(d.get(&8), Some((&8, t0 + ms(8))));
        d.insert(5000, 5000, t0 + ms(2));
        let due: Vec<u32> = std::iter::from_fn(|| d.pop_due(t0 + ms(4000)).map(|(k, ..)| k)).collect();
        let kept = [0, 5000].into_iter().chain((4..4000).step_by(4));
        assert_eq!(due, kept.collect::<Vec<_>>(), "deadlines and their order kept");
        assert!(d.is_empty());
    }
}
