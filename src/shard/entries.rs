//! A shard's stored entries: a dense slab of entries with a hash index of
//! slot numbers.
//!
//! The index ([`SlotIndex`], one cache line per 12 buckets) holds 4-byte
//! slot numbers instead of whole entries, so its load-factor slack (it
//! grows at 87.5% full, so a table just past a doubling is half empty)
//! costs about 5 bytes a slot, not an entry's size; entries sit in a `Vec` whose free slots are
//! reused, and which a purge compacts once it is at most a quarter full.
//! That takes the per-entry overhead at 1M String keys from 194 to 94 bytes
//! (see the README's memory table). Fingerprints, which only protocol
//! records have, live in a parallel vector allocated (one 17-byte slot per
//! slab slot) once a shard stores its first one.

use std::borrow::Borrow;

use crate::Fingerprint;
use crate::clock::CacheTime;

use super::index::SlotIndex;

/// A stored value and when it stops being returned.
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    /// When the entry expires: it is live while `now < deadline`.
    pub(crate) deadline: CacheTime,
    /// Which write produced this version of the entry: a per-shard counter
    /// (wrapping after 2³² writes), matched by the deadline queue.
    pub(crate) seq: u32,
    /// The low half of the key's hash, all the index uses: kept (in what
    /// would be padding) so that growing the index, compacting the slab and
    /// removing expired entries never hash a key again — no user code, and
    /// no cache miss on the key's bytes.
    pub(crate) hash: u32,
}

/// A slot number in the slab.
pub(crate) type Slot = u32;

pub(crate) struct Entries<K, V> {
    slab: Vec<Option<Entry<K, V>>>,
    /// Empty slots of `slab`, reused before it grows.
    free: Vec<Slot>,
    index: SlotIndex,
    /// Fingerprints by slot; empty until a fingerprinted entry is stored.
    fingerprints: Vec<Option<Fingerprint>>,
}

impl<K, V> Entries<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            slab: Vec::new(),
            free: Vec::new(),
            index: SlotIndex::new(),
            fingerprints: Vec::new(),
        }
    }

    /// Entries stored.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Slots in the slab, occupied or free.
    pub(crate) fn slots(&self) -> usize {
        self.slab.len()
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
        self.index.find(hash as u32, |slot| {
            slab[slot as usize]
                .as_ref()
                .is_some_and(|e| e.key.borrow() == key)
        })
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

    /// Occupied slots among `slots` (clamped to the slab) and their
    /// entries.
    pub(crate) fn range(
        &self,
        slots: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (Slot, &Entry<K, V>)> {
        let end = slots.end.min(self.slab.len());
        let start = slots.start.min(end);
        self.slab[start..end]
            .iter()
            .enumerate()
            .filter_map(move |(i, e)| e.as_ref().map(|e| ((start + i) as Slot, e)))
    }

    /// Occupied slots and their entries.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Slot, &Entry<K, V>)> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| e.as_ref().map(|e| (slot as Slot, e)))
    }

    /// Removes the entry in `slot`, which must be occupied.
    pub(crate) fn remove(&mut self, slot: Slot) -> Entry<K, V> {
        let entry = self.slab[slot as usize]
            .take()
            .expect("removed slots are occupied");
        let indexed = self.index.remove(entry.hash, slot);
        debug_assert!(indexed, "every stored entry is indexed");
        self.set_fingerprint(slot, None);
        self.free.push(slot);
        entry
    }

    /// Removes every entry, returning the slab to drop after unlocking;
    /// the index, free list and fingerprints give their memory back too.
    pub(crate) fn take_all(&mut self) -> Vec<Option<Entry<K, V>>> {
        self.index = SlotIndex::new();
        self.free = Vec::new();
        self.fingerprints = Vec::new();
        std::mem::take(&mut self.slab)
    }
}

impl<K, V> Entries<K, V> {
    /// Makes room in the index for one more entry (rebuilding it from the
    /// stored hashes if it has none).
    pub(crate) fn reserve_one(&mut self) {
        let slab = &self.slab;
        self.index.reserve_one(|| {
            slab.iter()
                .enumerate()
                .filter_map(|(slot, e)| e.as_ref().map(|e| (e.hash, slot as Slot)))
        });
    }

    /// Stores a new entry (its key must not be stored yet). The caller
    /// has called [`reserve_one`](Self::reserve_one), so the index does not
    /// grow here.
    pub(crate) fn insert(&mut self, entry: Entry<K, V>, fingerprint: Option<Fingerprint>) -> Slot {
        let hash = entry.hash;
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

        self.index.insert_unique(hash, slot);
        self.set_fingerprint(slot, fingerprint);
        slot
    }

    /// Packs the entries into a new, dense slab when at most a quarter of a
    /// slab of 64 slots or more is occupied, and rebuilds the index.
    /// Returns whether slots moved: anything holding slot numbers must then
    /// be rebuilt.
    pub(crate) fn compact_if_sparse(&mut self) -> bool {
        if self.slab.len() < 64 || self.len() * 4 > self.slab.len() {
            return false;
        }
        let hashes: Vec<u32> = self.iter().map(|(_, e)| e.hash).collect();
        let mut slab = Vec::with_capacity(hashes.len());
        let mut fingerprints = Vec::new();
        for (old, entry) in std::mem::take(&mut self.slab).into_iter().enumerate() {
            if let Some(entry) = entry {
                if let Some(fingerprint) = self.fingerprints.get(old).copied().flatten() {
                    fingerprints.resize(slab.len(), None);
                    fingerprints.push(Some(fingerprint));
                }
                slab.push(Some(entry));
            }
        }
        let mut index = SlotIndex::with_capacity(hashes.len());
        for (slot, &hash) in hashes.iter().enumerate() {
            index.insert_unique(hash, slot as Slot);
        }
        self.slab = slab;
        self.index = index;
        self.fingerprints = fingerprints;
        self.free = Vec::new();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_hash_fits_in_what_was_padding() {
        // A String key (24) + an Arc (8) + deadline (8) + seq (4) + hash (4).
        assert_eq!(
            std::mem::size_of::<Option<Entry<String, std::sync::Arc<u64>>>>(),
            48
        );
    }
}
