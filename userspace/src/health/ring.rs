//! A bounded ring buffer: the newest `capacity` items, oldest dropped first. Owns the
//! memory bound of per-check history (results and transitions).

use std::collections::{vec_deque, VecDeque};

use serde::{Serialize, Serializer};

/// The newest `capacity` items pushed, oldest first. Memory grows with the items (a
/// check that never changes state holds no transition) and never past `capacity`
/// slots.
#[derive(Clone, Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `capacity` items (0 keeps nothing).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
        }
    }

    /// Hold at most `capacity` items from now on (the oldest are dropped).
    pub fn set_capacity(&mut self, capacity: usize) {
        while self.items.len() > capacity {
            self.items.pop_front();
        }
        self.capacity = capacity;
        self.items.shrink_to(capacity);
    }

    /// Append `item`, dropping the oldest item when full.
    pub fn push(&mut self, item: T) {
        if self.capacity == 0 {
            return;
        }
        if self.items.len() == self.capacity {
            self.items.pop_front();
        } else if self.items.len() == self.items.capacity() {
            // Grow by doubling, but never past `capacity` slots.
            let want = (self.items.len() * 2).max(1).min(self.capacity);
            self.items.reserve_exact(want - self.items.len());
        }
        self.items.push_back(item);
    }

    /// Items held (at most [`Ring::capacity`]).
    #[must_use]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Most items held at once.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots actually allocated (never more than `capacity`, rounded up by the
    /// allocator's minimum; exposed so tests can check the memory bound).
    #[must_use]
    pub fn allocated(&self) -> usize {
        self.items.capacity()
    }

    /// The newest item.
    #[must_use]
    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }

    /// Items, oldest first.
    pub fn iter(&self) -> vec_deque::Iter<'_, T> {
        self.items.iter()
    }

    /// The newest `n` items (fewer if fewer are held), oldest first.
    pub fn newest(&self, n: usize) -> vec_deque::Iter<'_, T> {
        let skip = self.items.len().saturating_sub(n);
        self.items.range(skip..)
    }

    /// Drop every item (the allocation is kept).
    pub fn clear(&mut self) {
        self.items.clear();
    }
}

impl<'a, T> IntoIterator for &'a Ring<T> {
    type Item = &'a T;
    type IntoIter = vec_deque::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Serialised as a sequence, oldest first.
impl<T: Serialize> Serialize for Ring<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.items.iter())
    }
}
