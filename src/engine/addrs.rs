//! The address index: guest address (128-bit canonical form) to instance slot.
//!
//! Looked up once or twice per flow event, so it is a small open-addressing table with
//! a one-multiply hash rather than a general-purpose map. The all-zero key (`::`) marks
//! an empty slot; it can never be an instance address (registration rejects it).

const EMPTY: u128 = 0;

/// One table entry: key and value side by side, so a lookup reads one cache line.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: u128,
    val: u32,
}

const VACANT: Entry = Entry { key: EMPTY, val: 0 };

/// Address → instance slot.
#[derive(Debug)]
pub(crate) struct AddrIndex {
    entries: Vec<Entry>,
    len: usize,
    mask: usize,
}

impl Default for AddrIndex {
    fn default() -> Self {
        Self {
            entries: vec![VACANT; 16],
            len: 0,
            mask: 15,
        }
    }
}

#[inline]
fn home(k: u128, mask: usize) -> usize {
    let x = (k as u64) ^ ((k >> 64) as u64).rotate_left(29);
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & mask
}

impl AddrIndex {
    /// The slot owning address `k`.
    #[inline]
    pub(crate) fn get(&self, k: u128) -> Option<u32> {
        // Masking with the slice's own length (a power of two) drops the bounds check.
        let entries = &self.entries[..];
        let mask = entries.len() - 1;
        let mut i = home(k, mask);
        loop {
            let e = entries[i];
            // Checked first: a lookup of `::` itself must not match an empty slot.
            if e.key == EMPTY {
                return None;
            }
            if e.key == k {
                return Some(e.val);
            }
            i = (i + 1) & mask;
        }
    }

    /// Sets the owner of `k`.
    pub(crate) fn insert(&mut self, k: u128, v: u32) {
        debug_assert!(k != EMPTY, "the unspecified address is never indexed");
        if (self.len + 1) * 2 > self.entries.len() {
            self.grow();
        }
        let mut i = home(k, self.mask);
        loop {
            let e = &mut self.entries[i];
            if e.key == k {
                e.val = v;
                return;
            }
            if e.key == EMPTY {
                *e = Entry { key: k, val: v };
                self.len += 1;
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Removes `k` (backward-shift deletion, no tombstones).
    pub(crate) fn remove(&mut self, k: u128) {
        let mut i = home(k, self.mask);
        loop {
            if self.entries[i].key == EMPTY {
                return;
            }
            if self.entries[i].key == k {
                break;
            }
            i = (i + 1) & self.mask;
        }
        self.len -= 1;
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        while self.entries[j].key != EMPTY {
            let h = home(self.entries[j].key, self.mask);
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
        self.entries.iter().map(|e| e.key).filter(|k| *k != EMPTY)
    }

    fn grow(&mut self) {
        let cap = self.entries.len() * 2;
        let old = std::mem::replace(&mut self.entries, vec![VACANT; cap]);
        self.mask = cap - 1;
        self.len = 0;
        for e in old {
            if e.key != EMPTY {
                self.insert(e.key, e.val);
            }
        }
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
}
