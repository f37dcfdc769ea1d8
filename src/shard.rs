//! One shard: its entries (see `entries.rs`), a deadline queue, and the
//! table of flights (computations and claims in progress) for its keys.
//!
//! A shard is always used under its mutex (see `cache.rs`); nothing here
//! locks, runs user closures, or drops entries it removes: removed entries
//! go to a [`Graveyard`] that the caller drops after unlocking, so user
//! `Drop` code never runs under a shard lock.
//!
//! # The deadline queue
//!
//! Every write pushes `(deadline, seq, slot)` onto a min-heap; `seq` is a
//! per-shard write counter that identifies the entry version the item was
//! pushed for, and `slot` where that entry lives. Removing or overwriting an entry leaves its item behind
//! ("stale"): when a stale item reaches the top it no longer matches any
//! entry's `seq` and is discarded. So finding expired entries only ever looks
//! at items whose deadline has passed, never at live entries, and each item
//! is popped at most once (amortised O(1) per write on top of the heap's
//! O(log n) push). When the queue holds more than twice as many items as the
//! slab has slots, it is rebuilt from the entries (a scan of the slab, so
//! amortised O(1) per push too); a purge that leaves the slab at most a
//! quarter full compacts it first.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use crate::entries::{Entries, Entry, Slot};
use crate::flight::{Flight, NO_LEASE, Outcome};
use crate::sync::Arc;
use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::{Fingerprint, Stats};

/// Expired entries a write reclaims from its shard, at most, on top of its
/// own work. More than one, so reclamation outpaces a write-only workload.
pub(crate) const WRITE_RECLAIM_BUDGET: usize = 4;

/// Stale queue items tolerated beyond twice the entry count before the
/// queue is rebuilt.
const QUEUE_SLACK: usize = 32;

/// A queue item (16 bytes); ordered by deadline, then by write order, so
/// that among entries with one deadline the oldest write is evicted first
/// (until the write counter wraps, after 2³² writes to a shard).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    deadline: u64,
    seq: u32,
    slot: Slot,
}

/// A key whose value is being computed (`get_or_compute`) or produced by
/// the holder of a claim.
pub(crate) struct FlightSlot<K, V> {
    key: K,
    flight: Arc<Flight<V>>,
    /// Claims hold a unit of the bound while in progress; computations
    /// do not.
    holds_unit: bool,
    /// The key's hash, kept so the (small) flight table can grow without
    /// a hasher.
    hash: u64,
    /// Set by `remove`, `clear` or a newer `insert` of the key while the
    /// computation runs: the late result must not overwrite that newer state.
    invalidated: bool,
}

/// The global bound on entries, shared by all shards: `used` counts stored
/// entries, claims in progress, and units reserved by writes that are
/// inserting right now; `claims` counts the claims.
pub(crate) struct Limit {
    max: usize,
    used: AtomicUsize,
    claims: AtomicUsize,
    /// Whether a full cache may evict live entries (else it refuses).
    pub(crate) evicts_live: bool,
}

impl Limit {
    pub(crate) fn new(max: usize, evicts_live: bool) -> Self {
        Self {
            max,
            used: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
            evicts_live,
        }
    }

    /// Entries stored: units used minus those held by claims. `used` is
    /// read first, so the result never exceeds the bound even while claims
    /// complete concurrently; exact once writes are done.
    pub(crate) fn entries(&self) -> usize {
        let used = self.used.load(Ordering::Acquire);
        used.saturating_sub(self.claims.load(Ordering::Acquire))
    }

    /// A claim now holds a unit it acquired.
    fn start_claim(&self) {
        self.claims.fetch_add(1, Ordering::AcqRel);
    }

    /// A claim ended: its unit becomes an entry (`keep_unit`) or is freed.
    pub(crate) fn end_claim(&self, keep_unit: bool) {
        self.claims.fetch_sub(1, Ordering::AcqRel);
        if !keep_unit {
            self.release(1);
        }
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Reserves room for one more entry, if there is any.
    fn try_acquire(&self) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        while used < self.max {
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => used = seen,
            }
        }
        false
    }

    /// Returns room for `n` removed entries.
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            let before = self.used.fetch_sub(n, Ordering::Relaxed);
            debug_assert!(before >= n, "released more entries than stored");
        }
    }
}

/// What was removed under a shard lock, dropped (and, for flights, ended)
/// by the caller after unlocking, so that user `Drop` code and wake-ups
/// never run under the lock. The first few entries live inline so that a
/// typical write allocates nothing.
pub(crate) struct Graveyard<K, V> {
    inline: [Option<Entry<K, V>>; WRITE_RECLAIM_BUDGET],
    inline_len: usize,
    spill: Vec<Entry<K, V>>,
    /// The value an overwrite replaced.
    value: Option<V>,
    /// A key that was not stored (the entry already had one, or the write
    /// was invalidated).
    key: Option<K>,
    /// Claims ended because their lease lapsed, with their keys: their
    /// waiters are told (`Abandoned`) when the graveyard is dropped.
    lapsed: Vec<(Arc<Flight<V>>, K)>,
}

impl<K, V> Drop for Graveyard<K, V> {
    fn drop(&mut self) {
        for (flight, _key) in self.lapsed.drain(..) {
            flight.finish(Outcome::Abandoned);
        }
    }
}

impl<K, V> Graveyard<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            inline: [const { None }; WRITE_RECLAIM_BUDGET],
            inline_len: 0,
            spill: Vec::new(),
            value: None,
            key: None,
            lapsed: Vec::new(),
        }
    }

    fn bury(&mut self, entry: Entry<K, V>) {
        if self.inline_len < self.inline.len() {
            self.inline[self.inline_len] = Some(entry);
            self.inline_len += 1;
        } else {
            self.spill.push(entry);
        }
    }
}

/// A claim taken over by `get_or_compute` because its lease lapsed: ended
/// (its waiters woken) and its key dropped when this is dropped, after the
/// shard lock is released. A single `Option`, so the hit path that never
/// fills it costs nothing.
pub(crate) struct Lapsed<K, V>(Option<(Arc<Flight<V>>, K)>);

impl<K, V> Lapsed<K, V> {
    pub(crate) fn none() -> Self {
        Lapsed(None)
    }
}

impl<K, V> Drop for Lapsed<K, V> {
    fn drop(&mut self) {
        if let Some((flight, _key)) = self.0.take() {
            flight.finish(Outcome::Abandoned);
        }
    }
}

/// What one bounded reclamation step did.
pub(crate) struct Reclaimed {
    /// Expired entries removed.
    pub(crate) entries: usize,
    /// Whether due items may remain (the budget ran out before the queue's
    /// head was in the future).
    pub(crate) more_due: bool,
}

/// Where the key of a write comes from.
pub(crate) enum WriteKey<'a, K, V> {
    /// A plain `insert`: the caller owns the key.
    Owned(K),
    /// A leader or claim holder completing its flight: the key is in the
    /// flight slot, which the write removes when it stores the value.
    Flight(&'a Arc<Flight<V>>),
}

/// What a write did. Whatever it displaced is in the graveyard.
pub(crate) enum WriteResult<K, V> {
    /// The value is stored.
    Stored,
    /// The flight was invalidated while it ran: nothing was stored, and its
    /// slot is gone.
    Invalidated,
    /// The flight is no longer the key's (a newer claim took over after its
    /// lease lapsed): nothing was stored. The value comes back.
    Fenced(V),
    /// The cache is full and this shard has nothing it may give up: the
    /// caller must make room in another shard and retry, or refuse. Key and
    /// value come back.
    NeedRoom(Option<K>, V),
}

/// What restoring one snapshot record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restored {
    Stored,
    /// Its deadline has passed.
    Expired,
    /// The key has a live entry or a flight, which is newer.
    Present,
    /// The cache is full of live entries and claims.
    Full,
}

/// What a claim found.
pub(crate) enum ClaimLookup<K, V> {
    /// A live completed record.
    Completed {
        value: V,
        expires_at: u64,
        fingerprint: Option<Fingerprint>,
    },
    /// The record or the claim in progress has another fingerprint.
    Mismatch,
    /// Another claim or computation holds the key.
    InProgress(Arc<Flight<V>>),
    /// The caller now holds the key; a copy of the key for the reservation.
    Acquired(Arc<Flight<V>>, K),
    /// The cache is full and this shard has nothing it may give up.
    NeedRoom,
}

/// Whether a request fingerprint fits a stored or in-flight one: a side
/// without a fingerprint matches any.
fn fingerprints_match(stored: Option<Fingerprint>, asked: Option<Fingerprint>) -> bool {
    match (stored, asked) {
        (Some(stored), Some(asked)) => stored == asked,
        _ => true,
    }
}

/// What a lookup for `get_or_compute` found.
pub(crate) enum Lookup<V> {
    /// A live value.
    Hit(V),
    /// Another caller is computing the value: wait on this flight.
    Join(Arc<Flight<V>>),
    /// No value and no flight: the caller must compute it; the returned
    /// flight is now registered under its key.
    Lead(Arc<Flight<V>>),
}

pub(crate) struct Shard<K, V> {
    entries: Entries<K, V>,
    queue: BinaryHeap<Reverse<Due>>,
    flights: HashTable<FlightSlot<K, V>>,
    next_seq: u32,
    /// Fencing tokens handed to flights; increases for every flight.
    next_token: u64,
    /// Counts compactions (see [`layout`](Self::layout)).
    layout: u64,
    /// Counters kept per shard, under the shard lock, so that counting
    /// costs no shared atomic on the hot path.
    pub(crate) stats: Stats,
}

impl<K, V> Shard<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Entries::new(),
            queue: BinaryHeap::new(),
            flights: HashTable::new(),
            next_seq: 0,
            next_token: 1,
            layout: 0,
            stats: Stats::default(),
        }
    }

    /// Entries stored, expired ones not yet reclaimed included.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry for `key`, live or not.
    fn find<Q>(&self, hash: u64, key: &Q) -> Option<&Entry<K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.entries
            .find(hash, key)
            .map(|slot| self.entries.get(slot))
    }

    /// Whether an entry for `key` is stored, live or expired.
    pub(crate) fn is_stored<Q>(&self, hash: u64, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.find(hash, key).is_some()
    }

    /// The value of `key` if it is live at `now`.
    #[inline]
    pub(crate) fn get_live<Q>(&self, hash: u64, key: &Q, now: u64) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.get_live_entry(hash, key, now).map(|e| &e.value)
    }

    /// The entry of `key` if it is live at `now`.
    fn get_live_entry<Q>(&self, hash: u64, key: &Q, now: u64) -> Option<&Entry<K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.find(hash, key).filter(|e| now < e.deadline)
    }

    /// The slot of `key` if its entry is live at `now`.
    fn find_live<Q>(&self, hash: u64, key: &Q, now: u64) -> Option<Slot>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.entries
            .find(hash, key)
            .filter(|&slot| now < self.entries.get(slot).deadline)
    }

    /// Removes `key`'s entry, live or expired, and invalidates a running
    /// computation of it.
    pub(crate) fn remove<Q>(&mut self, hash: u64, key: &Q) -> Option<Entry<K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.invalidate_flight(hash, key);
        let slot = self.entries.find(hash, key)?;
        Some(self.entries.remove(slot, hash))
    }

    /// Marks a running computation of `key` so its result is not stored.
    fn invalidate_flight<Q>(&mut self, hash: u64, key: &Q)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if self.flights.is_empty() {
            return;
        }
        if let Some(slot) = self.flights.find_mut(hash, |s| s.key.borrow() == key) {
            slot.invalidated = true;
        }
    }

    /// Empties the shard: returns how many entries it held and the entries
    /// themselves (to drop after unlocking), and invalidates every running
    /// computation.
    pub(crate) fn clear(&mut self) -> (usize, Vec<Option<Entry<K, V>>>) {
        for slot in self.flights.iter_mut() {
            slot.invalidated = true;
        }
        self.queue.clear();
        let count = self.entries.len();
        (count, self.entries.take_all())
    }

    /// Pops due queue items (deadline `<= now`) and reclaims the expired
    /// entries they point to, looking at no more than `budget` items.
    ///
    /// The reclaimed entries' units go back to `limit` when the batch ends
    /// (one atomic operation), or as it unwinds: a panicking `Hash` (user
    /// code, run before each item is popped) part way through a batch
    /// leaks none.
    pub(crate) fn reclaim_due<S: BuildHasher>(
        &mut self,
        now: u64,
        budget: usize,
        limit: Option<&Limit>,
        hasher: &S,
        grave: &mut Graveyard<K, V>,
    ) -> Reclaimed
    where
        K: Hash,
    {
        /// Gives back the units of the entries reclaimed so far, on the
        /// way out whichever way that is.
        struct Release<'a>(Option<&'a Limit>, usize);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                if let Some(limit) = self.0 {
                    limit.release(self.1);
                }
            }
        }
        let mut released = Release(limit, 0);
        let mut reclaimed = Reclaimed {
            entries: 0,
            more_due: true,
        };
        for _ in 0..budget {
            match self.pop_due(now, hasher) {
                Some(Some(entry)) => {
                    grave.bury(entry);
                    reclaimed.entries += 1;
                    released.1 += 1;
                    self.stats.expirations += 1;
                }
                Some(None) => {} // a stale item
                None => {
                    reclaimed.more_due = false;
                    break;
                }
            }
        }
        reclaimed
    }

    /// Reclaims one expired entry, skipping any number of stale items (each
    /// is popped only once, so this stays amortised O(1)).
    fn reclaim_one<S: BuildHasher>(
        &mut self,
        now: u64,
        hasher: &S,
        grave: &mut Graveyard<K, V>,
    ) -> bool
    where
        K: Hash,
    {
        while let Some(popped) = self.pop_due(now, hasher) {
            if let Some(entry) = popped {
                grave.bury(entry);
                self.stats.expirations += 1;
                return true;
            }
        }
        false
    }

    /// `None` when no item is due; `Some(None)` for a stale item;
    /// `Some(Some(entry))` for a reclaimed expired entry.
    fn pop_due<S: BuildHasher>(&mut self, now: u64, hasher: &S) -> Option<Option<Entry<K, V>>>
    where
        K: Hash,
    {
        let Reverse(top) = *self.queue.peek()?;
        if top.deadline > now {
            return None;
        }
        Some(self.take_top(top, hasher))
    }

    /// Evicts the entry with the soonest deadline (the oldest write among
    /// equal deadlines).
    fn evict_soonest<S: BuildHasher>(&mut self, hasher: &S, grave: &mut Graveyard<K, V>) -> bool
    where
        K: Hash,
    {
        while let Some(&Reverse(top)) = self.queue.peek() {
            if let Some(entry) = self.take_top(top, hasher) {
                grave.bury(entry);
                self.stats.evictions += 1;
                return true;
            }
        }
        debug_assert!(self.entries.is_empty(), "every entry has a queue item");
        false
    }

    /// Pops `top` (the queue's head) and removes the entry version it was
    /// pushed for, if that still exists. The key is hashed (user code, which
    /// may panic) before anything changes, so a panic leaves the entry and
    /// its queue item in place.
    fn take_top<S: BuildHasher>(&mut self, top: Due, hasher: &S) -> Option<Entry<K, V>>
    where
        K: Hash,
    {
        let hash = self
            .entries
            .version(top.slot, top.seq)
            .then(|| hasher.hash_one(&self.entries.get(top.slot).key));
        self.queue.pop();
        hash.map(|hash| self.entries.remove(top.slot, hash))
    }

    /// Ends a flight without storing anything (the leader failed, or the
    /// claim was released), freeing a claim's unit. Returns the slot's key,
    /// for the caller to drop after unlocking, or `None` if the flight is no
    /// longer the key's (a newer claim took over).
    pub(crate) fn abandon_flight(
        &mut self,
        hash: u64,
        flight: &Arc<Flight<V>>,
        limit: Option<&Limit>,
    ) -> Option<K> {
        let slot = self.take_slot(hash, flight)?;
        if slot.holds_unit
            && let Some(limit) = limit
        {
            limit.end_claim(false);
        }
        Some(slot.key)
    }

    /// Removes `flight`'s slot, if it is still the key's.
    fn take_slot(&mut self, hash: u64, flight: &Arc<Flight<V>>) -> Option<FlightSlot<K, V>> {
        self.flights
            .find_entry(hash, |s| Arc::ptr_eq(&s.flight, flight))
            .ok()
            .map(|occupied| occupied.remove().0)
    }

    /// Extends a claim's lease to `deadline`; `false` if the claim is no
    /// longer the key's.
    pub(crate) fn renew(&mut self, hash: u64, flight: &Arc<Flight<V>>, deadline: u64) -> bool {
        let current = self
            .flights
            .find(hash, |s| Arc::ptr_eq(&s.flight, flight))
            .is_some();
        if current {
            flight.set_lease_deadline(deadline);
        }
        current
    }

    /// Ends every claim whose lease has lapsed by `now` (a holder that
    /// crashed or forgot its reservation): frees its unit and hands it to
    /// the graveyard, which wakes its waiters after unlocking. Returns how
    /// many it ended.
    pub(crate) fn end_lapsed_claims(
        &mut self,
        now: u64,
        limit: Option<&Limit>,
        grave: &mut Graveyard<K, V>,
    ) -> usize {
        let before = grave.lapsed.len();
        for slot in self.flights.extract_if(|s| s.flight.lease_lapsed(now)) {
            if slot.holds_unit
                && let Some(limit) = limit
            {
                limit.end_claim(false);
            }
            grave.lapsed.push((slot.flight, slot.key));
        }
        let ended = grave.lapsed.len() - before;
        self.stats.lease_expiries += ended as u64;
        ended
    }

    /// Calls `visit` with every entry live at `now` and its fingerprint.
    /// Claims and computations in progress are flights, not entries: they
    /// are not visited.
    ///
    /// Visits the slots from `from`, at most `batch` of them, and returns
    /// where to go on, or `None` at the end of the slab: a caller can copy
    /// a large shard in short lock holds. Between holds, only
    /// [`compact`](Self::compact) moves entries, and it changes
    /// [`layout`](Self::layout): a caller that sees it change starts over.
    pub(crate) fn for_each_live(
        &self,
        now: u64,
        from: usize,
        batch: usize,
        mut visit: impl FnMut(&Entry<K, V>, Option<Fingerprint>),
    ) -> Option<usize> {
        let end = from.saturating_add(batch);
        for (slot, entry) in self.entries.range(from..end) {
            if now < entry.deadline {
                visit(entry, self.entries.fingerprint(slot));
            }
        }
        (end < self.entries.slots()).then_some(end)
    }

    /// Changes whenever entries move to other slots (a compaction).
    pub(crate) fn layout(&self) -> u64 {
        self.layout
    }

    fn next_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// Frees a unit of the bound in this shard for a write whose own shard
    /// had nothing to give: an expired entry, else (if the policy allows)
    /// the live entry with the soonest deadline.
    pub(crate) fn give_up_one<S: BuildHasher>(
        &mut self,
        now: u64,
        evict_live: bool,
        hasher: &S,
        grave: &mut Graveyard<K, V>,
    ) -> bool
    where
        K: Hash,
    {
        self.reclaim_one(now, hasher, grave) || (evict_live && self.evict_soonest(hasher, grave))
    }

    fn next_seq(&mut self) -> u32 {
        if self.next_seq == u32::MAX {
            self.renumber();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Drops stale items: one item per entry afterwards.
    fn rebuild_queue(&mut self) {
        let mut items = std::mem::take(&mut self.queue).into_vec();
        items.clear();
        items.extend(self.entries.iter().map(|(slot, e)| {
            Reverse(Due {
                deadline: e.deadline,
                seq: e.seq,
                slot,
            })
        }));
        items.shrink_to(2 * items.len() + QUEUE_SLACK);
        self.queue = BinaryHeap::from(items);
    }

    /// Before the write counter wraps (once per 2³² writes to a shard):
    /// gives the entries fresh sequence numbers 0..n in their write order
    /// and rebuilds the queue, so no stale item can ever match a reused
    /// (slot, seq) pair.
    fn renumber(&mut self) {
        let mut order: Vec<(u32, Slot)> =
            self.entries.iter().map(|(slot, e)| (e.seq, slot)).collect();
        order.sort_unstable();
        for (seq, &(_, slot)) in order.iter().enumerate() {
            self.entries.get_mut(slot).seq = seq as u32;
        }
        self.next_seq = order.len() as u32;
        self.rebuild_queue();
    }
}

impl<K: Hash + Eq, V> Shard<K, V> {
    /// Looks `key` up for `get_or_compute`: a live value, a flight to join,
    /// or a new flight that the caller now leads. A claim whose lease has
    /// lapsed is taken over: it goes to `lapsed`, which ends it (waking its
    /// waiters) when dropped after the caller unlocks.
    pub(crate) fn lookup_or_lead(
        &mut self,
        hash: u64,
        key: K,
        now: u64,
        limit: Option<&Limit>,
        lapsed: &mut Lapsed<K, V>,
    ) -> (Lookup<V>, Option<K>)
    where
        V: Clone,
    {
        if let Some(value) = self.get_live(hash, &key, now) {
            return (Lookup::Hit(value.clone()), Some(key));
        }
        if let Some(slot) = self.flights.find(hash, |s| s.key == key) {
            if !slot.flight.lease_lapsed(now) {
                return (Lookup::Join(Arc::clone(&slot.flight)), Some(key));
            }
            let flight = Arc::clone(&slot.flight);
            let old_key = self
                .abandon_flight(hash, &flight, limit)
                .expect("found above");
            self.stats.lease_expiries += 1;
            lapsed.0 = Some((flight, old_key));
        }
        let token = self.next_token();
        let flight = Arc::new(Flight::new(token, None, NO_LEASE));
        self.insert_slot(hash, key, Arc::clone(&flight), false);
        (Lookup::Lead(flight), None)
    }

    /// Looks `key` up for a claim with `fingerprint`: the completed record,
    /// a mismatch, a claim or computation in progress, or a new claim with
    /// a lease until `lease_deadline`. A lapsed claim is taken over (it goes
    /// to the graveyard, which ends it after unlocking) and its unit of the
    /// bound passes to the new claim.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn claim<S: BuildHasher>(
        &mut self,
        hash: u64,
        key: K,
        fingerprint: Option<Fingerprint>,
        now: u64,
        lease_deadline: u64,
        limit: Option<&Limit>,
        hasher: &S,
        grave: &mut Graveyard<K, V>,
    ) -> (ClaimLookup<K, V>, Option<K>)
    where
        K: Clone,
        V: Clone,
    {
        // The fingerprint is checked before anything else, so a reused key
        // is reported even while the original request runs.
        if let Some(slot) = self.find_live(hash, &key, now) {
            let stored = self.entries.fingerprint(slot);
            if !fingerprints_match(stored, fingerprint) {
                self.stats.mismatches += 1;
                return (ClaimLookup::Mismatch, Some(key));
            }
            let entry = self.entries.get(slot);
            let found = ClaimLookup::Completed {
                value: entry.value.clone(),
                expires_at: entry.deadline,
                fingerprint: stored,
            };
            self.stats.replayed += 1;
            return (found, Some(key));
        }
        let lapsed = match self.flights.find(hash, |s| s.key == key) {
            // A claim whose lease lapsed is no longer in progress: any
            // request may take the key over, whatever its fingerprint.
            Some(slot) if slot.flight.lease_lapsed(now) => Some(Arc::clone(&slot.flight)),
            Some(slot) => {
                if !fingerprints_match(slot.flight.fingerprint, fingerprint) {
                    self.stats.mismatches += 1;
                    return (ClaimLookup::Mismatch, Some(key));
                }
                self.stats.in_progress += 1;
                return (ClaimLookup::InProgress(Arc::clone(&slot.flight)), Some(key));
            }
            None => None,
        };
        // `K::clone` (user code that may panic) runs before the unit and the
        // lapsed flight change hands, so a panic here leaks neither.
        let copy = key.clone();
        let mut inherited_unit = false;
        if let Some(lapsed) = lapsed {
            let slot = self.take_slot(hash, &lapsed).expect("found above");
            inherited_unit = slot.holds_unit;
            self.stats.lease_expiries += 1;
            grave.lapsed.push((slot.flight, slot.key));
        }
        if let Some(limit) = limit
            && !inherited_unit
        {
            self.reclaim_due(now, WRITE_RECLAIM_BUDGET, Some(limit), hasher, grave);
            if !limit.try_acquire() && !self.give_up_one(now, limit.evicts_live, hasher, grave) {
                return (ClaimLookup::NeedRoom, Some(key));
            }
            limit.start_claim();
        }
        let token = self.next_token();
        let flight = Arc::new(Flight::new(token, fingerprint, lease_deadline));
        self.insert_slot(hash, key, Arc::clone(&flight), limit.is_some());
        self.stats.acquired += 1;
        (ClaimLookup::Acquired(flight, copy), None)
    }

    fn insert_slot(&mut self, hash: u64, key: K, flight: Arc<Flight<V>>, holds_unit: bool) {
        self.flights.insert_unique(
            hash,
            FlightSlot {
                key,
                flight,
                holds_unit,
                hash,
                invalidated: false,
            },
            |s| s.hash,
        );
    }

    /// Stores `value` under the key given by `key`, reclaiming expired
    /// entries on the way and, when `limit` says the cache is full, making
    /// room in this shard (an expired entry first, else, if the policy
    /// allows, the soonest deadline). A completing claim's unit becomes the
    /// entry's. See [`WriteResult`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write<S: BuildHasher>(
        &mut self,
        hash: u64,
        key: WriteKey<'_, K, V>,
        value: V,
        deadline: u64,
        now: u64,
        limit: Option<&Limit>,
        hasher: &S,
        grave: &mut Graveyard<K, V>,
    ) -> WriteResult<K, V> {
        let (fingerprint, holds_unit) = match &key {
            WriteKey::Owned(_) => (None, false),
            WriteKey::Flight(flight) => {
                let Some(slot) = self.flights.find(hash, |s| Arc::ptr_eq(&s.flight, flight)) else {
                    return WriteResult::Fenced(value);
                };
                // A late result whose key was removed, cleared or
                // overwritten in the meantime is not stored.
                if slot.invalidated {
                    grave.key = self.abandon_flight(hash, flight, limit);
                    grave.value = Some(value);
                    return WriteResult::Invalidated;
                }
                (flight.fingerprint, slot.holds_unit)
            }
        };

        let seq = self.next_seq();
        // Overwrite in place (even an expired entry): no new entry.
        let existing = match &key {
            WriteKey::Owned(key) => self.entries.find(hash, key),
            WriteKey::Flight(flight) => {
                let slot = self
                    .flights
                    .find(hash, |s| Arc::ptr_eq(&s.flight, flight))
                    .expect("checked above, under the same lock");
                self.entries.find(hash, &slot.key)
            }
        };
        if let Some(slot) = existing {
            let entry = self.entries.get_mut(slot);
            grave.value = Some(std::mem::replace(&mut entry.value, value));
            entry.deadline = deadline;
            entry.seq = seq;
            self.entries.set_fingerprint(slot, fingerprint);
            self.stats.inserts += 1;
            self.push_due(Due {
                deadline,
                seq,
                slot,
            });
            grave.key = match key {
                WriteKey::Owned(key) => {
                    // A newer write wins over a computation of the key.
                    self.invalidate_flight(hash, &key);
                    Some(key)
                }
                // The claim's unit is not needed: the entry has one.
                WriteKey::Flight(flight) => self.abandon_flight(hash, flight, limit),
            };
            self.reclaim_for_write(now, limit, hasher, grave);
            return WriteResult::Stored;
        }
        // Reclaimed only now, so that a key's own expired entry is always
        // overwritten in place above rather than reclaimed and re-added.
        self.reclaim_for_write(now, limit, hasher, grave);
        // Before a unit of the bound is taken: a panicking `Hash` while the
        // index grows must not leak one.
        self.entries.reserve_one(hasher);

        // A new entry: a completing claim brings its unit; anything else
        // takes one from the bound or makes room here.
        if let Some(limit) = limit
            && !holds_unit
            && !limit.try_acquire()
            && !self.give_up_one(now, limit.evicts_live, hasher, grave)
        {
            let key = match key {
                WriteKey::Owned(key) => Some(key),
                WriteKey::Flight(_) => None,
            };
            return WriteResult::NeedRoom(key, value);
        }
        let key = match key {
            WriteKey::Owned(key) => {
                // Only a write that is stored wins over a computation of
                // the key: a refused one changes nothing.
                self.invalidate_flight(hash, &key);
                key
            }
            WriteKey::Flight(flight) => {
                let slot = self.take_slot(hash, flight).expect("checked above");
                if let Some(limit) = limit
                    && slot.holds_unit
                {
                    limit.end_claim(true);
                }
                slot.key
            }
        };
        let slot = self.entries.insert(
            hash,
            Entry {
                key,
                value,
                deadline,
                seq,
            },
            fingerprint,
            hasher,
        );
        self.stats.inserts += 1;
        self.push_due(Due {
            deadline,
            seq,
            slot,
        });
        WriteResult::Stored
    }

    /// Stores a record restored from a snapshot, unless its key is taken:
    /// a live entry or a flight of the key is newer than any snapshot, so it
    /// stays. An expired entry of the key is overwritten. Never evicts a
    /// live entry: with no room (after reclaiming expired entries here) the
    /// record is refused. What is not stored goes to the graveyard.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore<S: BuildHasher>(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        deadline: u64,
        fingerprint: Option<Fingerprint>,
        now: u64,
        limit: Option<&Limit>,
        hasher: &S,
        grave: &mut Graveyard<K, V>,
    ) -> Restored {
        let taken = if deadline <= now {
            Some(Restored::Expired)
        } else if self.flights.find(hash, |s| s.key == key).is_some()
            || self.find_live(hash, &key, now).is_some()
        {
            Some(Restored::Present)
        } else {
            None
        };
        if let Some(outcome) = taken {
            grave.key = Some(key);
            grave.value = Some(value);
            return outcome;
        }
        let seq = self.next_seq();
        let slot = match self.entries.find(hash, &key) {
            // The key's expired entry: overwritten in place, like a write.
            Some(slot) => {
                let entry = self.entries.get_mut(slot);
                grave.value = Some(std::mem::replace(&mut entry.value, value));
                entry.deadline = deadline;
                entry.seq = seq;
                grave.key = Some(key);
                self.entries.set_fingerprint(slot, fingerprint);
                slot
            }
            None => {
                self.reclaim_for_write(now, limit, hasher, grave);
                self.entries.reserve_one(hasher); // before the unit, as in `write`
                if let Some(limit) = limit
                    && !limit.try_acquire()
                    && !self.give_up_one(now, false, hasher, grave)
                {
                    grave.key = Some(key);
                    grave.value = Some(value);
                    return Restored::Full;
                }
                let entry = Entry {
                    key,
                    value,
                    deadline,
                    seq,
                };
                self.entries.insert(hash, entry, fingerprint, hasher)
            }
        };
        self.push_due(Due {
            deadline,
            seq,
            slot,
        });
        self.stats.inserts += 1;
        Restored::Stored
    }

    fn reclaim_for_write<S: BuildHasher>(
        &mut self,
        now: u64,
        limit: Option<&Limit>,
        hasher: &S,
        grave: &mut Graveyard<K, V>,
    ) {
        self.reclaim_due(now, WRITE_RECLAIM_BUDGET, limit, hasher, grave);
    }

    fn push_due(&mut self, item: Due) {
        self.queue.push(Reverse(item));
        // A rebuild scans the whole slab, so it waits until the stale items
        // outnumber the slab's slots: amortised O(1) per push, and the queue
        // stays within twice the slab's size.
        if self.queue.len() > 2 * self.entries.slots() + QUEUE_SLACK {
            self.rebuild_queue();
        }
    }

    /// Packs a sparse slab (after a purge left it at most a quarter full),
    /// returning memory to the allocator, and rebuilds the queue to match.
    pub(crate) fn compact<S: BuildHasher>(&mut self, hasher: &S)
    where
        K: Hash,
    {
        if self.entries.compact_if_sparse(hasher) {
            self.layout += 1;
            self.rebuild_queue();
        }
    }

    /// Number of queue items, stale ones included (for tests).
    #[cfg(test)]
    fn queue_len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    type TestShard = Shard<u64, u64>;

    fn hasher() -> ahash::RandomState {
        ahash::RandomState::with_seeds(1, 2, 3, 4)
    }

    fn put(shard: &mut TestShard, key: u64, deadline: u64, now: u64) {
        let hasher = hasher();
        let mut grave = Graveyard::new();
        let hash = hasher.hash_one(key);
        let stored = shard.write(
            hash,
            WriteKey::Owned(key),
            key,
            deadline,
            now,
            None,
            &hasher,
            &mut grave,
        );
        assert!(matches!(stored, WriteResult::Stored));
    }

    #[test]
    fn stale_queue_items_are_bounded_by_rebuilds() {
        let mut shard = TestShard::new();
        let rounds = if cfg!(miri) { 300 } else { 10_000 };
        for round in 0..rounds {
            put(&mut shard, round % 8, 1_000_000 + round, 0);
            assert!(shard.queue_len() <= 2 * shard.len() + QUEUE_SLACK + 1);
        }
        assert_eq!(shard.len(), 8);
    }

    #[test]
    fn eviction_skips_stale_items_and_takes_the_soonest_live_entry() {
        let mut shard = TestShard::new();
        put(&mut shard, 1, 10, 0);
        put(&mut shard, 2, 20, 0);
        put(&mut shard, 1, 30, 0); // key 1's item at 10 is now stale
        let mut grave = Graveyard::new();
        assert!(shard.give_up_one(0, true, &hasher(), &mut grave));
        assert_eq!(grave.inline[0].as_ref().map(|e| e.key), Some(2));
        assert_eq!(shard.stats.evictions, 1);
    }

    #[test]
    fn a_wrapping_write_counter_never_lets_a_stale_item_match_a_reused_slot() {
        let h = hasher();
        let mut shard = TestShard::new();
        put(&mut shard, 1, 1_000, 0); // slot 0, seq 0
        shard.remove(h.hash_one(1u64), &1u64); // its item (1000, 0, 0) is stale
        shard.next_seq = u32::MAX; // 2^32 writes later
        put(&mut shard, 2, 1_000_000, 0); // slot 0 again; the counter wraps
        let mut grave = Graveyard::new();
        assert_eq!(shard.reclaim_due(1_000, 8, None, &h, &mut grave).entries, 0);
        assert!(
            shard.is_stored(h.hash_one(2u64), &2u64),
            "the live entry survives"
        );
        assert_eq!(
            shard
                .reclaim_due(1_000_000, 8, None, &h, &mut grave)
                .entries,
            1
        );
    }

    #[test]
    fn a_panicking_hash_during_reclaim_changes_nothing() {
        use std::hash::Hasher;
        use std::sync::atomic::{AtomicBool, Ordering};
        static ARMED: AtomicBool = AtomicBool::new(false);
        #[derive(PartialEq, Eq)]
        struct Key(u64);
        impl Hash for Key {
            fn hash<H: Hasher>(&self, state: &mut H) {
                assert!(!ARMED.load(Ordering::SeqCst), "planted panic in Hash");
                self.0.hash(state);
            }
        }
        let h = hasher();
        let mut shard: Shard<Key, u64> = Shard::new();
        let mut grave = Graveyard::new();
        let stored = shard.write(
            h.hash_one(Key(1)),
            WriteKey::Owned(Key(1)),
            1,
            5,
            0,
            None,
            &h,
            &mut grave,
        );
        assert!(matches!(stored, WriteResult::Stored));
        ARMED.store(true, Ordering::SeqCst);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shard.reclaim_due(10, 8, None, &h, &mut Graveyard::new());
        }));
        ARMED.store(false, Ordering::SeqCst);
        assert!(unwound.is_err());
        assert_eq!(shard.queue_len(), 1, "the item is still queued");
        assert_eq!(
            shard.reclaim_due(10, 8, None, &h, &mut grave).entries,
            1,
            "and still reclaimable"
        );
    }

    #[test]
    fn a_sparse_slab_is_compacted_and_stays_consistent() {
        let h = hasher();
        let mut shard = TestShard::new();
        for key in 0..1_000 {
            put(&mut shard, key, if key < 990 { 5 } else { 50 }, 0);
        }
        let mut grave = Graveyard::new();
        assert_eq!(
            shard.reclaim_due(10, 10_000, None, &h, &mut grave).entries,
            990
        );
        shard.compact(&h);
        assert_eq!(
            shard.entries.slots(),
            10,
            "the slab shrank to the live entries"
        );
        assert_eq!(shard.queue_len(), 10);
        for key in 990..1_000 {
            assert!(shard.is_stored(h.hash_one(key), &key));
        }
        assert_eq!(shard.reclaim_due(50, 100, None, &h, &mut grave).entries, 10);
        assert_eq!(shard.len(), 0);
    }

    #[test]
    fn reclaim_budget_counts_items_not_entries() {
        let mut shard = TestShard::new();
        for key in 0..10 {
            put(&mut shard, key, 5, 0);
        }
        let mut grave = Graveyard::new();
        let first = shard.reclaim_due(5, 4, None, &hasher(), &mut grave);
        assert_eq!((first.entries, first.more_due), (4, true));
        let rest = shard.reclaim_due(5, 100, None, &hasher(), &mut grave);
        assert_eq!((rest.entries, rest.more_due), (6, false));
        assert_eq!(grave.spill.len(), 6, "entries past the inline slots spill");
        assert_eq!(shard.len(), 0);
    }
}
