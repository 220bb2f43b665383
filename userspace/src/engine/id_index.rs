//! An index of numbered items by check id, where each item holds its own id: the
//! table keeps 4-byte numbers only (a map from id to number keeps a 16-byte id per
//! slot as well, and a hash table keeps up to twice its length in slots). Used by the
//! health table (check records) and the scheduler (timers), a million entries each on
//! a large node.

use std::hash::BuildHasher;

use super::spec::CheckId;

/// Numbers of items, hashed by the id each item holds. The caller owns the items and
/// says, through `id_of`, which id item `n` holds; every number in the index must name
/// an item as long as it is indexed.
#[derive(Clone, Debug, Default)]
pub struct IdIndex {
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::quality::RandomState,
}

impl IdIndex {
    /// The number of the item holding `id`.
    pub fn find<'a>(&self, id: &CheckId, id_of: impl Fn(u32) -> &'a CheckId) -> Option<u32> {
        self.table
            .find(self.hasher.hash_one(id), |&n| id_of(n) == id)
            .copied()
    }

    /// Index item `n`, which holds `id` (not indexed yet).
    pub fn insert<'a>(&mut self, id: &CheckId, n: u32, id_of: impl Fn(u32) -> &'a CheckId) {
        let hasher = &self.hasher;
        self.table
            .insert_unique(hasher.hash_one(id), n, |&m| hasher.hash_one(id_of(m)));
    }

    /// Take the item holding `id` out of the index, returning its number.
    pub fn remove<'a>(&mut self, id: &CheckId, id_of: impl Fn(u32) -> &'a CheckId) -> Option<u32> {
        let entry = self
            .table
            .find_entry(self.hasher.hash_one(id), |&n| id_of(n) == id)
            .ok()?;
        Some(entry.remove().0)
    }

    /// Items indexed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no item is indexed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}
