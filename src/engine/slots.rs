//! The instance storage: a vector of slots in fixed-size pages, so that adding the
//! 65,537th instance allocates one page instead of copying every instance into a buffer
//! twice as large (tens of milliseconds with 100,000 instances, under the lock host
//! calls share).

use std::ops::{Index, IndexMut};

/// Slots per page.
const PAGE: usize = 1024;

/// A growable vector of `Option<T>` that never moves its elements.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    pages: Vec<Vec<Option<T>>>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    /// Number of slots (used or not).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends an empty slot.
    pub(crate) fn push_empty(&mut self) {
        if self.len.is_multiple_of(PAGE) {
            self.pages.push(Vec::with_capacity(PAGE));
        }
        self.pages.last_mut().expect("a page").push(None);
        self.len += 1;
    }

    /// Every slot, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Option<T>> + '_ {
        self.pages.iter().flatten()
    }
}

impl<T> Index<usize> for Slots<T> {
    type Output = Option<T>;
    #[inline]
    fn index(&self, i: usize) -> &Option<T> {
        &self.pages[i / PAGE][i % PAGE]
    }
}

impl<T> IndexMut<usize> for Slots<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut Option<T> {
        &mut self.pages[i / PAGE][i % PAGE]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_keep_their_values_across_pages() {
        let mut s: Slots<u64> = Slots::default();
        for i in 0..3 * PAGE + 5 {
            s.push_empty();
            s[i] = Some(i as u64 * 3);
        }
        assert_eq!(s.len(), 3 * PAGE + 5);
        s[PAGE] = None;
        for i in 0..s.len() {
            let want = (i != PAGE).then_some(i as u64 * 3);
            assert_eq!(s[i], want);
        }
        assert_eq!(s.iter().filter(|v| v.is_some()).count(), 3 * PAGE + 4);
    }
}
