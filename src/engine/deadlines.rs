//! The deadline queue: an indexed binary min-heap with at most one entry per instance.
//!
//! Re-arming moves the instance's entry in place, so nothing is ever dropped and no
//! stale entries accumulate (hypeman's 128-slot timer channel could lose firings).

const ABSENT: u32 = u32::MAX;

/// Min-heap of `(deadline, instance slot)` with a position index per slot.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: Vec<(u64, u32)>,
    pos: Vec<u32>,
}

impl Deadlines {
    /// Sets (or moves) the deadline of `slot`.
    pub(crate) fn set(&mut self, slot: u32, at: u64) {
        let s = slot as usize;
        if s >= self.pos.len() {
            self.pos.resize(s + 1, ABSENT);
        }
        let p = self.pos[s];
        if p == ABSENT {
            self.heap.push((at, slot));
            let i = self.heap.len() - 1;
            self.pos[s] = i as u32;
            self.up(i);
        } else {
            let i = p as usize;
            let old = self.heap[i].0;
            self.heap[i].0 = at;
            if at < old {
                self.up(i);
            } else {
                self.down(i);
            }
        }
    }

    /// Removes the deadline of `slot`, if any.
    pub(crate) fn remove(&mut self, slot: u32) {
        let s = slot as usize;
        let Some(&p) = self.pos.get(s) else { return };
        if p == ABSENT {
            return;
        }
        let i = p as usize;
        let last = self.heap.len() - 1;
        self.swap(i, last);
        self.heap.pop();
        self.pos[s] = ABSENT;
        if i < self.heap.len() {
            self.down(i);
            self.up(i);
        }
    }

    /// The deadline of `slot`, if it has one.
    #[cfg(test)]
    pub(crate) fn get(&self, slot: u32) -> Option<u64> {
        match self.pos.get(slot as usize) {
            Some(&p) if p != ABSENT => Some(self.heap[p as usize].0),
            _ => None,
        }
    }

    /// The earliest entry.
    pub(crate) fn peek(&self) -> Option<(u64, u32)> {
        self.heap.first().copied()
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u64, u32)> {
        let top = self.peek()?;
        if top.0 > now {
            return None;
        }
        self.remove(top.1);
        Some(top)
    }

    /// Number of armed deadlines.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i] < self.heap[parent] {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            let r = l + 1;
            let mut m = i;
            if l < n && self.heap[l] < self.heap[m] {
                m = l;
            }
            if r < n && self.heap[r] < self.heap[m] {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order_and_moves_entries_in_place() {
        let mut d = Deadlines::default();
        d.set(3, 30);
        d.set(1, 10);
        d.set(2, 20);
        d.set(1, 40); // re-arm later: one entry, not two
        assert_eq!(d.len(), 3);
        assert_eq!(d.get(1), Some(40));
        d.remove(2);
        assert_eq!(d.pop_due(100), Some((30, 3)));
        assert_eq!(d.pop_due(39), None);
        assert_eq!(d.pop_due(40), Some((40, 1)));
        assert_eq!(d.peek(), None);
        d.remove(7); // unknown slot: no-op
    }
}
