//! The address index: guest address (128-bit canonical form) to instance slot.
//!
//! Looked up once or twice per flow event, so it is a small open-addressing table with
//! a one-multiply hash rather than a general-purpose map. The all-zero key (`::`) marks
//! an empty slot; it can never be an instance address (registration rejects it).
//!
//! It grows incrementally: a registration that doubles the table moves the old entries
//! a few at a time over the following changes rather than all at once, so that no one
//! registration (under the lock host calls share) pays for rehashing 100,000 addresses.
//! Until they have all moved, a lookup that misses the new table probes the old one.

const EMPTY: u128 = 0;
/// Marks an entry of the old table that was removed or moved: lookups probe past it.
/// `ffff:...:ffff` is multicast, never an instance address.
const GONE: u128 = u128::MAX;
/// Old entries moved per change while the table grows: two per change suffice to empty
/// the old table before the new one fills to its own growth point.
const MOVE_PER_CHANGE: usize = 8;

/// One table entry: the key's low and high halves and the value side by side, so a
/// lookup reads one cache line. Plain integers, so that a new table is zeroed memory
/// from the allocator (pages the kernel provides on first touch) rather than written out
/// in full when it grows.
type Entry = [u64; 3];

const VACANT: Entry = [0; 3];

#[inline]
fn key_of(e: &Entry) -> u128 {
    u128::from(e[0]) | (u128::from(e[1]) << 64)
}

#[inline]
fn val_of(e: &Entry) -> u32 {
    e[2] as u32
}

#[inline]
fn entry(k: u128, v: u32) -> Entry {
    [k as u64, (k >> 64) as u64, u64::from(v)]
}

/// Marks `e` as removed or moved (see [`GONE`]).
#[inline]
fn mark_gone(e: &mut Entry) {
    *e = entry(GONE, 0);
}

/// A table of `cap` empty entries.
fn table(cap: usize) -> Vec<Entry> {
    vec![VACANT; cap]
}

/// Address → instance slot.
#[derive(Debug)]
pub(crate) struct AddrIndex {
    entries: Vec<Entry>,
    /// Live keys, in both tables.
    len: usize,
    mask: usize,
    /// The table before the last growth, while entries remain in it (else empty).
    old: Vec<Entry>,
    /// Entries of `old` before this index have moved.
    moved: usize,
}

impl Default for AddrIndex {
    fn default() -> Self {
        Self {
            entries: table(16),
            len: 0,
            mask: 15,
            old: Vec::new(),
            moved: 0,
        }
    }
}

#[inline]
fn home(k: u128, mask: usize) -> usize {
    let x = (k as u64) ^ ((k >> 64) as u64).rotate_left(29);
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & mask
}

/// The index of `k` in an open-addressing table, if it is there.
#[inline]
fn find(entries: &[Entry], k: u128) -> Option<usize> {
    // Masking with the slice's own length (a power of two) drops the bounds check.
    let mask = entries.len() - 1;
    let mut i = home(k, mask);
    loop {
        let key = key_of(&entries[i]);
        // Checked first: a lookup of `::` itself must not match an empty slot.
        if key == EMPTY {
            return None;
        }
        if key == k {
            return Some(i);
        }
        i = (i + 1) & mask;
    }
}

impl AddrIndex {
    /// The slot owning address `k`.
    #[inline]
    pub(crate) fn get(&self, k: u128) -> Option<u32> {
        if let Some(i) = find(&self.entries, k) {
            return Some(val_of(&self.entries[i]));
        }
        if self.old.is_empty() {
            return None;
        }
        find(&self.old, k).map(|i| val_of(&self.old[i]))
    }

    /// Sets the owner of `k`.
    pub(crate) fn insert(&mut self, k: u128, v: u32) {
        debug_assert!(k != EMPTY && k != GONE, "never an instance address");
        self.move_some();
        if let Some(i) = find(&self.entries, k) {
            self.entries[i] = entry(k, v);
            return;
        }
        if !self.old.is_empty()
            && let Some(i) = find(&self.old, k)
        {
            // Moves now, with its new value.
            mark_gone(&mut self.old[i]);
            self.len -= 1;
        }
        if (self.len + 1) * 2 > self.entries.len() {
            self.grow();
        }
        self.place(k, v);
        self.len += 1;
    }

    /// Puts `k` into the new table (known not to hold it).
    fn place(&mut self, k: u128, v: u32) {
        let mut i = home(k, self.mask);
        while key_of(&self.entries[i]) != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.entries[i] = entry(k, v);
    }

    /// Removes `k` (backward-shift deletion in the table, a mark in the old one).
    pub(crate) fn remove(&mut self, k: u128) {
        self.move_some();
        let Some(i) = find(&self.entries, k) else {
            if !self.old.is_empty()
                && let Some(i) = find(&self.old, k)
            {
                mark_gone(&mut self.old[i]);
                self.len -= 1;
            }
            return;
        };
        self.len -= 1;
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        while key_of(&self.entries[j]) != EMPTY {
            let h = home(key_of(&self.entries[j]), self.mask);
            let stays = if hole <= j {
                hole < h && h <= j
            } else {
                hole < h || h <= j
            };
            if !stays {
                self.entries[hole] = self.entries[j];
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.entries[hole] = VACANT;
    }

    /// Every indexed address.
    pub(crate) fn keys(&self) -> impl Iterator<Item = u128> + '_ {
        self.entries
            .iter()
            .chain(self.old.iter())
            .map(key_of)
            .filter(|k| *k != EMPTY && *k != GONE)
    }

    /// Moves a few entries of the old table into the new one.
    fn move_some(&mut self) {
        if self.old.is_empty() {
            return;
        }
        let end = (self.moved + MOVE_PER_CHANGE).min(self.old.len());
        for i in self.moved..end {
            let e = self.old[i];
            let key = key_of(&e);
            if key != EMPTY && key != GONE {
                // Marked, not emptied: lookups of the entries behind it still probe on.
                mark_gone(&mut self.old[i]);
                self.place(key, val_of(&e));
            }
        }
        self.moved = end;
        if end == self.old.len() {
            self.old = Vec::new();
            self.moved = 0;
        }
    }

    fn grow(&mut self) {
        // Whatever the previous growth left behind moves first.
        while !self.old.is_empty() {
            self.move_some();
        }
        let cap = self.entries.len() * 2;
        self.old = std::mem::replace(&mut self.entries, table(cap));
        self.mask = cap - 1;
        self.moved = 0;
    }
}

/// Instance key to slot: the same table and its incremental growth, so that no
/// registration rehashes every key at once. A key `k` is stored as `k + 2^64`, never
/// the empty or the moved mark.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex(AddrIndex);

#[inline]
fn key_bits(k: u64) -> u128 {
    u128::from(k) | (1 << 64)
}

impl KeyIndex {
    /// The slot of instance `k`.
    #[inline]
    pub(crate) fn get(&self, k: u64) -> Option<u32> {
        self.0.get(key_bits(k))
    }

    /// Whether `k` is indexed.
    pub(crate) fn contains_key(&self, k: u64) -> bool {
        self.get(k).is_some()
    }

    /// Sets the slot of `k`.
    pub(crate) fn insert(&mut self, k: u64, slot: u32) {
        self.0.insert(key_bits(k), slot);
    }

    /// Removes `k`.
    pub(crate) fn remove(&mut self, k: u64) {
        self.0.remove(key_bits(k));
    }

    /// Number of indexed keys.
    pub(crate) fn len(&self) -> usize {
        self.0.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map_under_churn() {
        let mut idx = AddrIndex::default();
        let mut model = HashMap::new();
        let mut x: u64 = 7;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct keys so inserts, overwrites and removals all happen often.
            let k = u128::from(x % 3_000 + 1) << ((x % 2) * 64);
            if x.is_multiple_of(3) {
                idx.remove(k);
                model.remove(&k);
            } else {
                idx.insert(k, step);
                model.insert(k, step);
            }
        }
        for (k, v) in &model {
            assert_eq!(idx.get(*k), Some(*v));
        }
        assert_eq!(idx.keys().count(), model.len());
        assert_eq!(idx.get(u128::MAX), None);
        assert_eq!(idx.get(EMPTY), None, "`::` never matches an empty slot");
    }

    #[test]
    fn lookups_and_changes_stay_right_while_the_table_grows() {
        let mut idx = AddrIndex::default();
        let mut model = HashMap::new();
        let key = |i: u64| u128::from(i.wrapping_mul(0x9e37_79b9) % 50_000 + 1) << 32;
        for i in 0..40_000u64 {
            // Mostly inserts, so it grows many times; removals and overwrites of keys
            // still in an old table too.
            if i % 5 == 4 {
                let k = key(i / 2);
                idx.remove(k);
                model.remove(&k);
            } else {
                idx.insert(key(i), i as u32);
                model.insert(key(i), i as u32);
            }
            if i % 97 == 0 {
                assert!(!idx.old.is_empty() || idx.moved == 0);
                for (k, v) in &model {
                    assert_eq!(idx.get(*k), Some(*v), "after step {i}");
                }
                assert_eq!(idx.keys().count(), model.len());
                assert_eq!(idx.len, model.len());
            }
        }
        assert!(idx.entries.len() >= 2 * model.len());
    }

    #[test]
    fn instance_keys_include_zero_and_the_largest() {
        let mut idx = KeyIndex::default();
        for k in [0, 1, u64::MAX, u64::MAX - 1] {
            assert!(!idx.contains_key(k));
            idx.insert(k, k as u32);
        }
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.get(0), Some(0));
        assert_eq!(idx.get(u64::MAX), Some(u32::MAX));
        idx.remove(0);
        assert_eq!((idx.get(0), idx.len()), (None, 3));
    }
}
