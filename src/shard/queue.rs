//! A shard's deadline queue: which entries expire first.
//!
//! Every write pushes `(deadline, seq, slot)` onto a min-heap; `seq` is the
//! per-shard write counter that identifies the entry version the item was
//! pushed for, and `slot` where that entry lives. Removing or overwriting
//! an entry leaves its item behind ("stale"): when a stale item reaches the
//! top it no longer matches any entry's `seq` and is discarded. So finding
//! expired entries only ever looks at items whose deadline has passed,
//! never at live entries, and each item is popped at most once (amortised
//! O(1) per write on top of the heap's O(log n) push).
//!
//! # Invariants
//!
//! - Every stored entry has exactly one item matching its `(slot, seq)`.
//! - The queue holds at most `2 × slab slots + QUEUE_SLACK` items: past
//!   that, the shard rebuilds it from its entries (a scan of the slab,
//!   amortised O(1) per push since it waits for that many stale items).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::entries::Slot;
use crate::clock::CacheTime;

/// Stale items tolerated beyond twice the slab's slots before a rebuild.
pub(super) const QUEUE_SLACK: usize = 32;

/// A queue item (16 bytes); ordered by deadline, then by write order, so
/// that among entries with one deadline the oldest write is evicted first
/// (until the write counter wraps, after 2³² writes to a shard).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Due {
    pub(super) deadline: CacheTime,
    pub(super) seq: u32,
    pub(super) slot: Slot,
}

#[derive(Default)]
pub(super) struct DeadlineQueue {
    heap: BinaryHeap<Reverse<Due>>,
}

impl DeadlineQueue {
    /// The item with the soonest deadline.
    pub(super) fn peek(&self) -> Option<Due> {
        self.heap.peek().map(|&Reverse(due)| due)
    }

    /// The soonest item, if it is due at `now`.
    pub(super) fn peek_due(&self, now: CacheTime) -> Option<Due> {
        self.peek().filter(|due| due.deadline <= now)
    }

    pub(super) fn pop(&mut self) {
        self.heap.pop();
    }

    /// Adds an item; `true` when the queue has outgrown `slots` and must be
    /// rebuilt.
    pub(super) fn push(&mut self, item: Due, slots: usize) -> bool {
        self.heap.push(Reverse(item));
        self.heap.len() > 2 * slots + QUEUE_SLACK
    }

    pub(super) fn clear(&mut self) {
        self.heap.clear();
    }

    /// Replaces the items with `items` (one per stored entry), reusing the
    /// allocation but giving back what a much larger queue held.
    pub(super) fn rebuild(&mut self, items: impl Iterator<Item = Due>) {
        let mut all = std::mem::take(&mut self.heap).into_vec();
        all.clear();
        all.extend(items.map(Reverse));
        all.shrink_to(2 * all.len() + QUEUE_SLACK);
        self.heap = BinaryHeap::from(all);
    }

    /// Items, stale ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}
