//! Deadlines ordered by time: the lease keeper and the prober ask only for what is due, so a
//! tick costs what expires or is probed in it, not the number of members that exist. Each key
//! has at most one deadline; setting it again moves it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use tokio::time::Instant;

/// A deadline and a sequence number that keeps equal deadlines apart.
type Slot = (Instant, u64);

/// Keys with a value each, ordered by their deadline.
pub struct Deadlines<K, V> {
    entries: HashMap<K, (V, Slot)>,
    order: BTreeMap<Slot, K>,
    seq: u64,
}

impl<K, V> Default for Deadlines<K, V> {
    fn default() -> Self {
        Deadlines { entries: HashMap::new(), order: BTreeMap::new(), seq: 0 }
    }
}

impl<K: Hash + Eq + Clone, V> Deadlines<K, V> {
    fn slot(&mut self, at: Instant) -> Slot {
        self.seq += 1;
        (at, self.seq)
    }

    /// Sets `key`'s value and deadline, replacing any it had; returns the old value.
    pub fn insert(&mut self, key: K, value: V, at: Instant) -> Option<V> {
        let slot = self.slot(at);
        self.order.insert(slot, key.clone());
        let old = self.entries.insert(key, (value, slot))?;
        self.order.remove(&old.1);
        Some(old.0)
    }

    /// Moves `key`'s deadline to `at`; false if it has none.
    pub fn reschedule(&mut self, key: &K, at: Instant) -> bool {
        let slot = self.slot(at);
        let Some((_, old)) = self.entries.get_mut(key) else { return false };
        let old = std::mem::replace(old, slot);
        self.order.remove(&old);
        self.order.insert(slot, key.clone());
        true
    }

    pub fn get(&self, key: &K) -> Option<(&V, Instant)> {
        self.entries.get(key).map(|(value, (at, _))| (value, *at))
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (value, slot) = self.entries.remove(key)?;
        self.order.remove(&slot);
        Some(value)
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.order.first_key_value().map(|((at, _), _)| *at)
    }

    /// Takes out the entry whose deadline is earliest, if it is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, V, Instant)> {
        let entry = self.order.first_entry().filter(|e| e.key().0 <= now)?;
        let ((at, _), key) = entry.remove_entry();
        let (value, _) = self.entries.remove(&key)?;
        Some((key, value, at))
    }

    /// Gives every entry a new deadline from its value: a rare, whole-book operation.
    pub fn reschedule_all(&mut self, mut at: impl FnMut(&V) -> Instant) {
        self.order.clear();
        for (key, (value, slot)) in &mut self.entries {
            self.seq += 1;
            *slot = (at(value), self.seq);
            self.order.insert(*slot, key.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
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
}
