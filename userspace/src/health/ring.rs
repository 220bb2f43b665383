//! Bounded ring buffers: the newest `capacity` items, oldest dropped first. Own the
//! memory bound of per-check history (results and transitions).
//!
//! [`Ring`] is 24 bytes inline (a `VecDeque` and a capacity take 40) and holds exactly
//! its items on the heap: a million checks hold one each, most with one transition.
//! Items are appended in order until the ring is full; from then on the oldest is
//! overwritten in place and `head` marks where the oldest now is. [`InlineRing`]
//! keeps up to `N` items inside itself, for histories every check fills.

use serde::{Serialize, Serializer};

/// The newest `capacity` items pushed, oldest first. Memory grows with the items (a
/// check that never changes state holds no transition) and never past `capacity`
/// slots: the heap holds exactly the items, so a push reallocates until the ring is
/// full (rings here fill rarely and stay small).
#[derive(Clone, Debug)]
pub struct Ring<T> {
    /// Oldest at `head` once full (`len == capacity`); in push order before.
    items: Box<[T]>,
    head: u32,
    capacity: u32,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `capacity` items (0 keeps nothing; at most
    /// `u32::MAX`).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            items: Box::default(),
            head: 0,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
        }
    }

    /// Append `item`, dropping the oldest item when full.
    pub fn push(&mut self, item: T) {
        let capacity = self.capacity();
        if capacity == 0 {
            return;
        }
        if self.items.len() == capacity {
            let head = self.head as usize;
            self.items[head] = item;
            self.head = u32::try_from((head + 1) % capacity).unwrap_or(0);
            return;
        }
        let mut items = std::mem::take(&mut self.items).into_vec();
        items.reserve_exact(1);
        items.push(item);
        self.items = items.into_boxed_slice();
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
        self.capacity as usize
    }

    /// Slots actually allocated: the items held (exposed so tests can check the
    /// memory bound).
    #[must_use]
    pub fn allocated(&self) -> usize {
        self.items.len()
    }

    /// The newest item.
    #[must_use]
    pub fn last(&self) -> Option<&T> {
        match self.head as usize {
            0 => self.items.last(),
            head => self.items.get(head - 1),
        }
    }

    /// Items, oldest first.
    pub fn iter(&self) -> std::iter::Chain<std::slice::Iter<'_, T>, std::slice::Iter<'_, T>> {
        let (newer, older) = self.items.split_at(self.head as usize);
        older.iter().chain(newer.iter())
    }

    /// Drop every item and free their memory.
    pub fn clear(&mut self) {
        self.items = Box::default();
        self.head = 0;
    }
}

/// A [`Ring`] of at most `N` items kept inline (no allocation, no pointer): for
/// histories that every check fills, where a heap buffer would only add a pointer,
/// an allocation header and a fragment per check.
#[derive(Clone, Copy, Debug)]
pub struct InlineRing<T, const N: usize> {
    /// Oldest at `head` once full (`len == capacity`); in push order before.
    items: [T; N],
    len: u8,
    head: u8,
    capacity: u8,
}

impl<T: Copy + Default, const N: usize> InlineRing<T, N> {
    const FITS: () = assert!(
        N <= u8::MAX as usize,
        "an inline ring holds at most 255 items"
    );

    /// An empty ring holding at most `capacity` items, clamped to `N` (0 keeps nothing).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let () = Self::FITS;
        Self {
            items: [T::default(); N],
            len: 0,
            head: 0,
            #[allow(clippy::cast_possible_truncation)]
            capacity: capacity.min(N) as u8,
        }
    }

    /// Append `item`, dropping the oldest item when full.
    pub fn push(&mut self, item: T) {
        let (len, capacity) = (usize::from(self.len), usize::from(self.capacity));
        if len < capacity {
            self.items[len] = item;
            self.len += 1;
        } else if capacity > 0 {
            self.items[usize::from(self.head)] = item;
            self.head = (self.head + 1) % self.capacity;
        }
    }

    /// Items held (at most [`InlineRing::capacity`]).
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most items held at once.
    #[must_use]
    pub fn capacity(&self) -> usize {
        usize::from(self.capacity)
    }

    /// The newest item.
    #[must_use]
    pub fn last(&self) -> Option<&T> {
        match usize::from(self.head) {
            0 => self.items[..self.len()].last(),
            head => self.items.get(head - 1),
        }
    }

    /// Items, oldest first.
    pub fn iter(&self) -> std::iter::Chain<std::slice::Iter<'_, T>, std::slice::Iter<'_, T>> {
        let (newer, older) = self.items[..self.len()].split_at(usize::from(self.head));
        older.iter().chain(newer.iter())
    }

    /// Drop every item.
    pub fn clear(&mut self) {
        self.len = 0;
        self.head = 0;
    }
}

/// Serialised as a sequence, oldest first.
impl<T: Serialize> Serialize for Ring<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::{InlineRing, Ring};

    #[test]
    fn keeps_the_newest_in_order_and_never_grows_past_its_capacity() {
        let mut r = Ring::new(5);
        assert!(r.is_empty() && r.last().is_none());
        for i in 0..3 {
            r.push(i);
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [0, 1, 2]);
        for i in 3..13 {
            r.push(i);
            assert_eq!(r.last(), Some(&i));
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [8, 9, 10, 11, 12]);
        assert_eq!(r.iter().next_back(), Some(&12));
        assert_eq!((r.len(), r.allocated()), (5, 5));
        r.clear();
        assert!(r.is_empty());
        r.push(7);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [7]);

        let mut none = Ring::new(0);
        none.push(1);
        assert!(none.is_empty());
        assert_eq!(std::mem::size_of::<Ring<u64>>(), 24);
    }

    #[test]
    fn inline_ring_behaves_as_the_heap_ring() {
        for capacity in [0, 1, 3, 5, 8, 9] {
            // Capacities past 8 are clamped to the inline 8.
            let mut heap = Ring::new(capacity.min(8));
            let mut inline = InlineRing::<u64, 8>::new(capacity);
            assert_eq!(inline.capacity(), capacity.min(8));
            for i in 0..20u64 {
                heap.push(i);
                inline.push(i);
                assert_eq!(
                    inline.iter().collect::<Vec<_>>(),
                    heap.iter().collect::<Vec<_>>()
                );
                assert_eq!(inline.last(), heap.last());
                assert_eq!(inline.len(), heap.len());
            }
            inline.clear();
            assert!(inline.is_empty() && inline.last().is_none());
            inline.push(7);
            assert_eq!(
                inline.iter().copied().collect::<Vec<_>>(),
                [7][..capacity.min(1)]
            );
        }
        assert_eq!(std::mem::size_of::<InlineRing<u64, 32>>(), 264);
    }
}
