//! A shard's stored entries: a dense slab of entries with a hash index of
//! slot numbers.
//!
//! The index (`hashbrown::HashTable<u32>`) holds 4-byte slot numbers
//! instead of whole entries, so its load-factor slack (hashbrown keeps
//! between 44% and 87.5% of its slots filled) costs 4 bytes a slot, not an
//! entry's size; entries sit in a `Vec` whose free slots are reused. That
//! takes the per-entry overhead at 1M String keys from 194 to about 90 bytes
//! (see the README's memory table). Fingerprints, which only protocol
//! records have, live in a parallel vector that is only allocated once a
//! shard stores one.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use crate::Fingerprint;

/// A stored value and when it stops being returned.
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    /// Nanoseconds since the cache's epoch at which the entry expires: it is
    /// live while `now < deadline`.
    pub(crate) deadline: u64,
    /// Which write produced this version of the entry: a per-shard counter
    /// (wrapping after 2³² writes), matched by the deadline queue.
    pub(crate) seq: u32,
}

/// A slot number in the slab.
pub(crate) type Slot = u32;

pub(crate) struct Entries<K, V> {
    slab: Vec<Option<Entry<K, V>>>,
    /// Empty slots of `slab`, reused before it grows.
    free: Vec<Slot>,
    index: HashTable<Slot>,
    /// Fingerprints by slot; empty until a fingerprinted entry is stored.
    fingerprints: Vec<Option<Fingerprint>>,
}

impl<K, V> Entries<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            slab: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            fingerprints: Vec::new(),
        }
    }

    /// Entries stored.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The slot of `key`.
    #[inline]
    pub(crate) fn find<Q>(&self, hash: u64, key: &Q) -> Option<Slot>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let slab = &self.slab;
        self.index
            .find(hash, |&slot| {
                slab[slot as usize]
                    .as_ref()
                    .is_some_and(|e| e.key.borrow() == key)
            })
            .copied()
    }

    /// The entry in `slot`, which must be occupied.
    #[inline]
    pub(crate) fn get(&self, slot: Slot) -> &Entry<K, V> {
        self.slab[slot as usize]
            .as_ref()
            .expect("indexed slots are occupied")
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, slot: Slot) -> &mut Entry<K, V> {
        self.slab[slot as usize]
            .as_mut()
            .expect("indexed slots are occupied")
    }

    /// Whether `slot` holds the entry version `seq`.
    pub(crate) fn version(&self, slot: Slot, seq: u32) -> bool {
        self.slab
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|e| e.seq == seq)
    }

    pub(crate) fn fingerprint(&self, slot: Slot) -> Option<Fingerprint> {
        self.fingerprints.get(slot as usize).copied().flatten()
    }

    pub(crate) fn set_fingerprint(&mut self, slot: Slot, fingerprint: Option<Fingerprint>) {
        let slot = slot as usize;
        if slot < self.fingerprints.len() {
            self.fingerprints[slot] = fingerprint;
        } else if fingerprint.is_some() {
            self.fingerprints
                .resize(self.slab.len().max(slot + 1), None);
            self.fingerprints[slot] = fingerprint;
        }
    }

    /// Occupied slots and their entries.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Slot, &Entry<K, V>)> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| e.as_ref().map(|e| (slot as Slot, e)))
    }

    /// Removes the entry in `slot`, whose key hashes to `hash`.
    pub(crate) fn remove(&mut self, slot: Slot, hash: u64) -> Entry<K, V> {
        if let Ok(found) = self.index.find_entry(hash, |&s| s == slot) {
            found.remove();
        }
        self.set_fingerprint(slot, None);
        self.free.push(slot);
        self.slab[slot as usize]
            .take()
            .expect("removed slots are occupied")
    }

    /// Removes every entry, returning the slab to drop after unlocking.
    pub(crate) fn take_all(&mut self) -> Vec<Option<Entry<K, V>>> {
        self.index.clear();
        self.free.clear();
        self.fingerprints.clear();
        std::mem::take(&mut self.slab)
    }
}

impl<K: Hash, V> Entries<K, V> {
    /// Stores a new entry (its key must not be stored yet).
    pub(crate) fn insert<S: BuildHasher>(
        &mut self,
        hash: u64,
        entry: Entry<K, V>,
        fingerprint: Option<Fingerprint>,
        hasher: &S,
    ) -> Slot {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slab.push(Some(entry));
                Slot::try_from(self.slab.len() - 1).expect("fewer than 2^32 entries per shard")
            }
        };
        let slab = &self.slab;
        self.index.insert_unique(hash, slot, |&s| {
            hasher.hash_one(
                &slab[s as usize]
                    .as_ref()
                    .expect("indexed slots are occupied")
                    .key,
            )
        });
        self.set_fingerprint(slot, fingerprint);
        slot
    }

    /// Removes the entry in `slot`, hashing its key to find it in the index.
    pub(crate) fn remove_slot<S: BuildHasher>(&mut self, slot: Slot, hasher: &S) -> Entry<K, V> {
        let hash = hasher.hash_one(&self.get(slot).key);
        self.remove(slot, hash)
    }
}
