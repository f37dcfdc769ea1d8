//! The index from a key's hash to its slab slot: an open-addressing hash
//! table whose groups are one cache line each.
//!
//! A lookup in a large shard is a chain of cache misses: index → slab
//! entry → key bytes. `hashbrown::HashTable<u32>` keeps its control bytes
//! and its slot numbers in two arrays, so its part of the chain is two
//! misses; here a group holds 12 one-byte tags *and* the 12 slot numbers
//! they belong to in one 64-byte line, so it is one. That is the whole
//! reason this is not a `HashTable<Slot>` (measured in the README: the get
//! path's second-largest stall was the load of the slot number).
//!
//! The scheme is hashbrown's, simplified for 4-byte values:
//!
//! - A bucket's tag is [`EMPTY`] (never used since the table was built:
//!   ends a probe), [`DELETED`] (removed: probes go on past it) or a tag
//!   from the hash (2..=255).
//! - Groups are probed in triangular order from `hash & mask`, which visits
//!   every group of a power-of-two table. A key sits in the first group of
//!   its sequence that had a free bucket when it was inserted; so a lookup
//!   stops at the first group with an `EMPTY` bucket.
//! - At most 7/8 of the buckets are used or deleted (`growth_left`), so
//!   every probe meets an `EMPTY` bucket and ends; past that the table is
//!   rebuilt (at the same size when deletions filled it, doubled when
//!   entries did).
//!
//! Hashes are the low 32 bits of the key's hash (the entries keep them, so
//! a rebuild hashes no key). Rebuilding asks the caller for each stored
//! slot's hash; the new table is complete before it replaces the old one,
//! so a panic leaves the index as it was.

/// Buckets per group: 16 tag bytes (the last four padding) and 12 slot
/// numbers fill 64 bytes.
const GROUP: usize = 12;

/// Never used since the table was built.
const EMPTY: u8 = 0;
/// Held an entry that was removed; also the padding tags, so that they
/// neither match nor end a probe.
const DELETED: u8 = 1;

/// One cache line: tags, then the slots they index.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Group {
    tags: [u8; 16],
    slots: [u32; GROUP],
}

const EMPTY_GROUP: Group = Group {
    tags: [
        EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY,
        DELETED, DELETED, DELETED, DELETED,
    ],
    slots: [0; GROUP],
};

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

impl Group {
    /// The tags as two words, for matching eight at a time.
    #[inline]
    fn words(&self) -> [u64; 2] {
        let (low, high) = self.tags.split_at(8);
        [
            u64::from_le_bytes(low.try_into().expect("8 bytes")),
            u64::from_le_bytes(high.try_into().expect("8 bytes")),
        ]
    }

    /// Buckets whose tag may be `tag`, as a bit set over 0..16 (a superset:
    /// callers compare the tag again).
    #[inline]
    fn candidates(&self, tag: u8) -> u32 {
        let pattern = LOW_BITS * u64::from(tag);
        let [low, high] = self.words();
        zero_bytes(low ^ pattern) | (zero_bytes(high ^ pattern) << 8)
    }

    #[inline]
    fn has_empty(&self) -> bool {
        // Exact: a false candidate only appears above a true zero byte in
        // the same word, and the padding tags are never zero.
        self.candidates(EMPTY) != 0
    }

    /// The first bucket that is empty or deleted.
    #[inline]
    fn first_free(&self) -> Option<usize> {
        self.tags[..GROUP].iter().position(|&t| t <= DELETED)
    }
}

/// A bit per byte of `word` that may be zero (exact for the lowest zero
/// byte; bytes above it may be reported too).
#[inline]
fn zero_bytes(word: u64) -> u32 {
    let found = word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS;
    // Gather bit 7 of each byte into bits 0..8.
    (found.wrapping_mul(0x0002_0408_1020_4081) >> 56) as u32
}

/// The tag stored for `hash`: its top byte, which the group position
/// (low bits) does not use below 2²⁴ groups.
#[inline]
fn tag_of(hash: u32) -> u8 {
    let tag = (hash >> 24) as u8;
    if tag <= DELETED { tag | 2 } else { tag }
}

/// Groups visited in probe order, from `hash`'s home group.
struct Probe {
    position: usize,
    stride: usize,
    mask: usize,
}

impl Probe {
    fn new(hash: u32, mask: usize) -> Self {
        Self {
            position: hash as usize & mask,
            stride: 0,
            mask,
        }
    }

    /// The next group, or `None` once every group has been visited.
    #[inline]
    fn advance(&mut self) -> Option<usize> {
        self.stride += 1;
        if self.stride > self.mask {
            return None;
        }
        self.position = (self.position + self.stride) & self.mask;
        Some(self.position)
    }
}

/// A hash index of 4-byte slot numbers (see the module docs).
pub(crate) struct SlotIndex {
    /// Empty, or a power of two of groups.
    groups: Vec<Group>,
    len: usize,
    /// Buckets that may still go from `EMPTY` to used.
    growth_left: usize,
}

impl SlotIndex {
    pub(crate) const fn new() -> Self {
        Self {
            groups: Vec::new(),
            len: 0,
            growth_left: 0,
        }
    }

    /// An index that holds `entries` without growing.
    pub(crate) fn with_capacity(entries: usize) -> Self {
        if entries == 0 {
            return Self::new();
        }
        Self::with_groups(groups_for(entries))
    }

    /// An empty index of `groups` groups (a power of two).
    fn with_groups(groups: usize) -> Self {
        Self {
            groups: vec![EMPTY_GROUP; groups],
            len: 0,
            growth_left: usable(groups),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether one more slot can be inserted without a rebuild.
    pub(crate) fn has_room(&self) -> bool {
        self.growth_left > 0
    }

    /// The slot among those indexed under `hash` for which `is_key` holds.
    #[inline]
    pub(crate) fn find(&self, hash: u32, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.groups.is_empty() {
            return None;
        }
        let tag = tag_of(hash);
        let mut probe = Probe::new(hash, self.groups.len() - 1);
        let mut position = probe.position;
        loop {
            let group = &self.groups[position];
            let mut candidates = group.candidates(tag);
            while candidates != 0 {
                let bucket = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                if bucket < GROUP && group.tags[bucket] == tag && is_key(group.slots[bucket]) {
                    return Some(group.slots[bucket]);
                }
            }
            if group.has_empty() {
                return None;
            }
            position = probe.advance()?;
        }
    }

    /// Indexes `slot` under `hash`. The caller has made room
    /// ([`reserve_one`](Self::reserve_one)) and knows the key is not indexed.
    pub(crate) fn insert_unique(&mut self, hash: u32, slot: u32) {
        assert!(self.has_room(), "reserve_one is called before insert");
        let mut probe = Probe::new(hash, self.groups.len() - 1);
        let mut position = probe.position;
        loop {
            let group = &mut self.groups[position];
            if let Some(bucket) = group.first_free() {
                if group.tags[bucket] == EMPTY {
                    self.growth_left -= 1;
                }
                group.tags[bucket] = tag_of(hash);
                group.slots[bucket] = slot;
                self.len += 1;
                return;
            }
            position = probe
                .advance()
                .expect("growth_left > 0 leaves a free bucket");
        }
    }

    /// Removes `slot` from under `hash`; whether it was indexed.
    pub(crate) fn remove(&mut self, hash: u32, slot: u32) -> bool {
        if self.groups.is_empty() {
            return false;
        }
        let tag = tag_of(hash);
        let mut probe = Probe::new(hash, self.groups.len() - 1);
        let mut position = Some(probe.position);
        while let Some(at) = position {
            let group = &mut self.groups[at];
            let found = (0..GROUP).find(|&b| group.tags[b] == tag && group.slots[b] == slot);
            if let Some(bucket) = found {
                // A group that already has an empty bucket ends every probe
                // that reaches it, so no key lies beyond it on account of
                // it: this bucket can become empty (reusable for growth)
                // rather than deleted.
                if group.has_empty() {
                    group.tags[bucket] = EMPTY;
                    self.growth_left += 1;
                } else {
                    group.tags[bucket] = DELETED;
                }
                self.len -= 1;
                return true;
            }
            if group.has_empty() {
                return false;
            }
            position = probe.advance();
        }
        false
    }

    /// Makes room for one more slot, rebuilding the table if it has none:
    /// at the same size when removals used up the room, doubled when
    /// entries did. `stored()` lists every indexed `(hash, slot)` (in slab
    /// order, so the rebuild reads the slab front to back); if it panics,
    /// the index is unchanged.
    pub(crate) fn reserve_one<I>(&mut self, stored: impl FnOnce() -> I)
    where
        I: Iterator<Item = (u32, u32)>,
    {
        if self.has_room() {
            return;
        }
        // As hashbrown: rebuild at the same size while at most half the
        // usable buckets hold entries (the rest were deleted), else grow to
        // at least double. Either way at least half the usable buckets are
        // free afterwards, so churn at a steady size rebuilds once per
        // O(len) operations, never at every insert.
        let usable_now = usable(self.groups.len());
        let groups = if self.len < usable_now / 2 {
            self.groups.len()
        } else {
            groups_for((self.len + 1).max(usable_now + 1))
        };
        let mut rebuilt = Self::with_groups(groups);
        for (hash, slot) in stored() {
            rebuilt.insert_unique(hash, slot);
        }
        debug_assert_eq!(rebuilt.len, self.len, "every indexed slot is listed");
        *self = rebuilt;
    }
}

/// Buckets of `groups` groups that may be used: 7/8, as hashbrown.
fn usable(groups: usize) -> usize {
    groups * GROUP / 8 * 7
}

/// The power of two of groups whose usable buckets hold `entries`.
fn groups_for(entries: usize) -> usize {
    let mut groups = 1;
    while usable(groups) < entries {
        groups *= 2;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Hashes that crowd a few groups and share tags, to exercise probing
    /// past full groups and tag collisions.
    fn crowded(slot: u32) -> u32 {
        (slot % 5) | ((slot % 3) << 24)
    }

    #[test]
    fn a_group_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Group>(), 64);
        assert_eq!(std::mem::align_of::<Group>(), 64);
    }

    #[test]
    fn zero_bytes_finds_every_zero_byte() {
        for at in 0..8 {
            let word = !(0xffu64 << (8 * at));
            assert_eq!(zero_bytes(word) & (1 << at), 1 << at);
        }
        assert_eq!(zero_bytes(u64::MAX), 0);
    }

    #[test]
    fn tags_avoid_the_reserved_bytes() {
        for byte in 0..=255u32 {
            assert!(tag_of(byte << 24) > DELETED);
        }
    }

    #[test]
    fn finds_what_was_inserted_through_collisions_and_growth() {
        let mut index = SlotIndex::new();
        let n = if cfg!(miri) { 60 } else { 2_000 };
        for slot in 0..n {
            index.reserve_one(|| (0..slot).map(|s| (crowded(s), s)));
            index.insert_unique(crowded(slot), slot);
        }
        assert_eq!(index.len(), n as usize);
        for slot in 0..n {
            assert_eq!(index.find(crowded(slot), |s| s == slot), Some(slot));
        }
        assert_eq!(index.find(crowded(n), |s| s == n), None);
    }

    #[test]
    fn removals_free_room_and_keep_other_slots_findable() {
        let mut index = SlotIndex::new();
        let mut model: HashMap<u32, u32> = HashMap::new();
        let rounds = if cfg!(miri) { 300 } else { 20_000 };
        let mut next = 0u32;
        let mut state = 7u64;
        for _ in 0..rounds {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if state >> 62 == 0 && !model.is_empty() {
                let victim = *model
                    .keys()
                    .nth((state as usize >> 8) % model.len())
                    .unwrap();
                assert!(index.remove(crowded(victim), victim));
                assert!(!index.remove(crowded(victim), victim), "removed once");
                model.remove(&victim);
            } else {
                index.reserve_one(|| model.iter().map(|(&s, &h)| (h, s)));
                index.insert_unique(crowded(next), next);
                model.insert(next, crowded(next));
                next += 1;
            }
            assert_eq!(index.len(), model.len());
        }
        for (&slot, &hash) in &model {
            assert_eq!(index.find(hash, |s| s == slot), Some(slot));
        }
        // Deleted buckets were recycled: the table did not grow without
        // bound for a live set of a few thousand.
        assert!(index.groups.len() <= groups_for(model.len()) * 4);
    }

    /// Removing and inserting at a steady size next to the growth limit
    /// rebuilds rarely (a rebuild leaves half the usable buckets free).
    #[test]
    fn churn_at_a_steady_size_rebuilds_rarely() {
        let mut index = SlotIndex::new();
        let n = usable(64) as u32 - 1;
        for slot in 0..n {
            index.reserve_one(|| (0..slot).map(|s| (s.wrapping_mul(0x9E37_79B9), s)));
            index.insert_unique(slot.wrapping_mul(0x9E37_79B9), slot);
        }
        let mut live: std::collections::VecDeque<u32> = (0..n).collect();
        let mut rebuilds = 0;
        let rounds = if cfg!(miri) { 200 } else { 20_000 };
        for next in n..n + rounds {
            let old = live.pop_front().unwrap();
            assert!(index.remove(old.wrapping_mul(0x9E37_79B9), old));
            if !index.has_room() {
                rebuilds += 1;
            }
            let listed: Vec<u32> = live.iter().copied().collect();
            index.reserve_one(|| listed.into_iter().map(|s| (s.wrapping_mul(0x9E37_79B9), s)));
            index.insert_unique(next.wrapping_mul(0x9E37_79B9), next);
            live.push_back(next);
        }
        assert!(
            rebuilds * 50 < rounds,
            "{rebuilds} rebuilds in {rounds} rounds"
        );
        for &slot in &live {
            assert_eq!(
                index.find(slot.wrapping_mul(0x9E37_79B9), |s| s == slot),
                Some(slot)
            );
        }
    }

    #[test]
    fn a_panicking_listing_leaves_the_index_unchanged() {
        let mut index = SlotIndex::with_capacity(1);
        let mut slot = 0;
        while index.has_room() {
            index.insert_unique(crowded(slot), slot);
            slot += 1;
        }
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            index.reserve_one(|| (0..slot).map(|_| -> (u32, u32) { panic!("planted panic") }));
        }));
        assert!(unwound.is_err());
        assert!(slot > 0);
        assert_eq!(index.len(), slot as usize);
        for s in 0..slot {
            assert_eq!(index.find(crowded(s), |x| x == s), Some(s));
        }
    }
}
