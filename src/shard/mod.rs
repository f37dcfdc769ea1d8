//! One shard: its entries, their deadline queue, and its flight table.
//!
//! | part | file | what it is |
//! |---|---|---|
//! | entries | `entries.rs` | a dense slab of `(key, value, deadline, seq)` behind a hash index of slot numbers |
//! | index | `index.rs` | that hash index: one cache line per 12 slot numbers and their tags |
//! | deadline queue | `queue.rs` | a min-heap of `(deadline, seq, slot)` with lazy deletion |
//! | flight table | `flights.rs` | keys with a computation or claim in progress |
//! | graveyard | `graveyard.rs` | what an operation displaced, dropped after unlocking |
//!
//! A shard is only ever used under its mutex, and only by the engine
//! (`engine.rs`), which locks it through one helper. Nothing here locks,
//! runs user closures, drops what it removes, or wakes anyone: removed
//! entries, values, keys and ended flights go to the [`Graveyard`]. User
//! code that does run here is `Hash`, `Eq` and `Clone` of keys and values;
//! each operation orders its steps so that a panic in one of them changes
//! nothing (or leaves a consistent, smaller state) — see the comments
//! where it matters.

mod entries;
mod flights;
mod graveyard;
mod index;
mod queue;

use std::borrow::Borrow;
use std::hash::Hash;

pub(crate) use entries::Entry;
pub(crate) use graveyard::{FlightEnd, Graveyard, INLINE_ENTRIES};

use crate::capacity::{Admission, Capacity};
use crate::clock::CacheTime;
use crate::flight::{Flight, FlightInit};
use crate::sync::Arc;
use crate::{Fingerprint, Stats};
use entries::{Entries, Slot};
use flights::{FlightSlot, Flights};
use queue::{DeadlineQueue, Due};

/// Expired entries a write reclaims from its shard, at most, on top of its
/// own work. More than one, so reclamation outpaces a write-only workload.
pub(crate) const WRITE_RECLAIM_BUDGET: usize = INLINE_ENTRIES;

/// What every shard operation that may reclaim or make room needs to know.
pub(crate) struct Ctx<'a> {
    pub(crate) now: CacheTime,
    pub(crate) capacity: Option<&'a Capacity>,
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

/// A write of one value.
pub(crate) struct Write<'a, K, V> {
    pub(crate) hash: u64,
    pub(crate) key: WriteKey<'a, K, V>,
    pub(crate) value: V,
    pub(crate) deadline: CacheTime,
}

/// What a write did. Whatever it displaced is in the graveyard.
pub(crate) enum WriteResult<V> {
    /// The value is stored.
    Stored,
    /// The flight was invalidated while it ran: nothing was stored, and its
    /// slot is gone.
    Invalidated,
    /// The flight is no longer the key's (a newer claim took over after its
    /// lease lapsed, or it was abandoned): nothing was stored. The value
    /// comes back.
    Fenced(V),
}

/// A record restored from a snapshot.
pub(crate) struct Restore<K, V> {
    pub(crate) hash: u64,
    pub(crate) key: K,
    pub(crate) value: V,
    pub(crate) deadline: CacheTime,
    pub(crate) fingerprint: Option<Fingerprint>,
}

/// What restoring one snapshot record did (when it did not need room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restored {
    Stored,
    /// Its deadline has passed.
    Expired,
    /// The key has a live entry or a flight, which is newer.
    Present,
}

/// A claim of one key.
pub(crate) struct ClaimRequest<K> {
    pub(crate) hash: u64,
    pub(crate) key: K,
    pub(crate) fingerprint: Option<Fingerprint>,
    /// A store caller's claim id (see [`Flight::claim_id`]).
    pub(crate) claim_id: Option<u128>,
    pub(crate) lease_deadline: CacheTime,
}

/// What a claim found.
pub(crate) enum ClaimLookup<K, V> {
    /// A live completed record.
    Completed {
        value: V,
        expires_at: CacheTime,
        fingerprint: Option<Fingerprint>,
    },
    /// The record or the claim in progress has another fingerprint.
    Mismatch,
    /// Another claim or computation holds the key (`abandoned`: its holder
    /// gave up, as the slot says under the lock; the flight itself learns
    /// it only once the lock is released).
    InProgress {
        flight: Arc<Flight<V>>,
        abandoned: bool,
    },
    /// The caller holds the key (`resent`: the flight already held it for
    /// the same claim id); a copy of the key for the reservation.
    Acquired {
        flight: Arc<Flight<V>>,
        key: K,
        resent: bool,
    },
}

/// What a lookup for `get_or_compute` found. `Hit` and `Join` give the key
/// back for a later attempt.
pub(crate) enum Lookup<K, V> {
    /// A live value.
    Hit(V),
    /// Another caller holds the key: wait on this flight.
    Join(Arc<Flight<V>>, K),
    /// No value and no flight: the caller leads the returned flight, now
    /// registered under its key.
    Lead(Arc<Flight<V>>),
}

/// What [`Shard::peek`] saw.
pub(crate) enum Peeked<V> {
    Completed {
        value: V,
        expires_at: CacheTime,
        fingerprint: Option<Fingerprint>,
    },
    InProgress {
        flight: Arc<Flight<V>>,
        abandoned: bool,
    },
    Mismatch,
    Free,
}

/// How a flight's holder ends it without a result.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// Nothing happened: free the key now.
    Release,
    /// The outcome is unknown: keep the key until the lease lapses.
    Abandon,
}

/// Whether a request fingerprint fits a stored or in-flight one: a side
/// without a fingerprint matches any.
fn fingerprints_match(stored: Option<Fingerprint>, asked: Option<Fingerprint>) -> bool {
    match (stored, asked) {
        (Some(stored), Some(asked)) => stored == asked,
        _ => true,
    }
}

pub(crate) struct Shard<K, V> {
    entries: Entries<K, V>,
    queue: DeadlineQueue,
    flights: Flights<K, V>,
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
            queue: DeadlineQueue::default(),
            flights: Flights::new(),
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

    /// Claims in progress.
    pub(crate) fn claims(&self) -> usize {
        self.flights.claims()
    }

    /// Whether an entry for `key` is stored, live or expired.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn is_stored<Q>(&self, hash: u64, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.entries.find(hash, key).is_some()
    }

    /// The value of `key` if it is live at `now`.
    #[inline]
    pub(crate) fn get_live<Q>(&self, hash: u64, key: &Q, now: CacheTime) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.find_live(hash, key, now)
            .map(|slot| &self.entries.get(slot).value)
    }

    /// The slot of `key` if its entry is live at `now`.
    #[inline]
    fn find_live<Q>(&self, hash: u64, key: &Q, now: CacheTime) -> Option<Slot>
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
        self.flights.invalidate(hash, key);
        let slot = self.entries.find(hash, key)?;
        Some(self.entries.remove(slot))
    }

    /// Empties the shard into `grave` and invalidates every running
    /// computation; returns how many entries it held.
    pub(crate) fn clear(&mut self, grave: &mut Graveyard<K, V>) -> usize {
        self.flights.invalidate_all();
        self.queue.clear();
        let count = self.entries.len();
        grave.bury_all(self.entries.take_all());
        count
    }

    /// Extends a claim's lease to `deadline`; `false` if the claim no
    /// longer holds its key (taken over, or abandoned).
    pub(crate) fn renew(
        &mut self,
        hash: u64,
        flight: &Arc<Flight<V>>,
        deadline: CacheTime,
    ) -> bool {
        let current = self
            .flights
            .by_flight(hash, flight)
            .is_some_and(|slot| !slot.abandoned);
        if current {
            flight.set_lease_deadline(deadline);
        }
        current
    }

    /// Whether `flight` still holds its key at `now`: its slot is the key's,
    /// it was not abandoned, and its lease has not lapsed.
    pub(crate) fn holds(&self, hash: u64, flight: &Arc<Flight<V>>, now: CacheTime) -> bool {
        self.flights
            .by_flight(hash, flight)
            .is_some_and(|slot| !slot.abandoned)
            && !flight.lease_lapsed(now)
    }

    /// The claim of `key` with fencing token `token`, if it still holds the
    /// key (not taken over, not abandoned).
    pub(crate) fn claim_by_token<Q>(&self, hash: u64, key: &Q, token: u64) -> Option<Arc<Flight<V>>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let slot = self.flights.by_key(hash, key)?;
        (slot.flight.token == token && slot.flight.has_lease() && !slot.abandoned)
            .then(|| Arc::clone(&slot.flight))
    }

    /// Ends `flight` without a result, as its holder says (`how`): a
    /// release frees the key (and a claim's unit) now; an abandonment keeps
    /// the key held until the lease lapses, unless it already has. The
    /// flight ends (waking its waiters) when `grave` drops. Returns whether
    /// the flight was still its key's.
    pub(crate) fn give_up_flight(
        &mut self,
        hash: u64,
        flight: &Arc<Flight<V>>,
        how: GiveUp,
        ctx: &Ctx<'_>,
        grave: &mut Graveyard<K, V>,
    ) -> bool {
        let (now, capacity) = (ctx.now, ctx.capacity);
        let current = self
            .flights
            .by_flight(hash, flight)
            .is_some_and(|slot| !slot.abandoned);
        let end = match how {
            GiveUp::Abandon if current && !flight.lease_lapsed(now) => {
                self.flights.mark_abandoned(hash, flight);
                self.stats.abandoned += 1;
                FlightEnd::Abandoned
            }
            GiveUp::Abandon => {
                if current {
                    self.stats.abandoned += 1;
                    self.stats.lease_expiries += 1;
                    self.free_slot(hash, flight, capacity, grave);
                }
                FlightEnd::Lapsed
            }
            GiveUp::Release => {
                if current {
                    if flight.has_lease() {
                        self.stats.releases += 1;
                    }
                    self.free_slot(hash, flight, capacity, grave);
                }
                FlightEnd::Released
            }
        };
        grave.end(Arc::clone(flight), end);
        current
    }

    /// Removes `flight`'s slot, freeing a claim's unit; the key goes to the
    /// graveyard.
    pub(crate) fn free_slot(
        &mut self,
        hash: u64,
        flight: &Arc<Flight<V>>,
        capacity: Option<&Capacity>,
        grave: &mut Graveyard<K, V>,
    ) {
        if let Some(slot) = self.flights.take(hash, flight) {
            if slot.holds_unit
                && let Some(capacity) = capacity
            {
                capacity.end_claim(false);
            }
            grave.bury_key(slot.key);
        }
    }

    /// Ends every claim whose lease has lapsed by `now` (a holder that
    /// crashed, gave up, or outran its lease): frees its unit, and ends it
    /// as lapsed when `grave` drops. Returns how many it ended.
    pub(crate) fn end_lapsed_claims(
        &mut self,
        now: CacheTime,
        capacity: Option<&Capacity>,
        grave: &mut Graveyard<K, V>,
    ) -> usize {
        let lapsed = self.flights.take_lapsed(now);
        let ended = lapsed.len();
        for slot in lapsed {
            if slot.holds_unit
                && let Some(capacity) = capacity
            {
                capacity.end_claim(false);
            }
            grave.end(slot.flight, FlightEnd::Lapsed);
            grave.bury_key(slot.key);
        }
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
        now: CacheTime,
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

    fn next_seq(&mut self) -> u32 {
        if self.next_seq == u32::MAX {
            self.renumber();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn push_due(&mut self, item: Due) {
        if self.queue.push(item, self.entries.slots()) {
            self.rebuild_queue();
        }
    }

    /// Drops stale items: one item per entry afterwards.
    fn rebuild_queue(&mut self) {
        self.queue.rebuild(self.entries.iter().map(|(slot, e)| Due {
            deadline: e.deadline,
            seq: e.seq,
            slot,
        }));
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

    /// A new flight for `key`, registered in the table.
    fn start_flight(
        &mut self,
        hash: u64,
        key: K,
        init: impl FnOnce(u64) -> FlightInit,
        holds_unit: bool,
    ) -> Arc<Flight<V>> {
        let flight = Arc::new(Flight::new(init(self.next_token())));
        self.flights.insert(FlightSlot {
            key,
            flight: Arc::clone(&flight),
            holds_unit,
            hash,
            invalidated: false,
            abandoned: false,
        });
        flight
    }
}

impl<K: Hash + Eq, V> Shard<K, V> {
    /// Pops due queue items (deadline `<= now`) and reclaims the expired
    /// entries they point to, looking at no more than `budget` items.
    ///
    /// The reclaimed entries' units go back to the bound when the batch
    /// ends (one atomic operation), or as it unwinds: a panicking `Hash`
    /// (user code, run before each item is popped) part way through a
    /// batch leaks none.
    pub(crate) fn reclaim_due(
        &mut self,
        ctx: &Ctx<'_>,
        budget: usize,
        grave: &mut Graveyard<K, V>,
    ) -> Reclaimed {
        /// Gives back the units of the entries reclaimed so far, on the
        /// way out whichever way that is.
        struct Release<'a>(Option<&'a Capacity>, usize);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                if let Some(capacity) = self.0 {
                    capacity.release(self.1);
                }
            }
        }
        let mut released = Release(ctx.capacity, 0);
        let mut reclaimed = Reclaimed {
            entries: 0,
            more_due: true,
        };
        for _ in 0..budget {
            match self.pop_due(ctx) {
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

    /// Frees one unit of the bound in this shard, for a write that needs
    /// one: an expired entry, else a lapsed claim, else (if the policy
    /// allows) the live entry with the soonest deadline. The unit passes to
    /// the caller. See `capacity.rs` for the order and why.
    pub(crate) fn give_up_one(&mut self, ctx: &Ctx<'_>, grave: &mut Graveyard<K, V>) -> bool {
        let evicts_live = ctx.capacity.is_some_and(Capacity::evicts_live);
        self.give_up_one_reclaimable(ctx, grave) || (evicts_live && self.evict_soonest(grave))
    }

    /// [`give_up_one`](Self::give_up_one) without evicting a live entry,
    /// whatever the policy (a restore never does): an expired entry or a
    /// lapsed claim.
    pub(crate) fn give_up_one_reclaimable(
        &mut self,
        ctx: &Ctx<'_>,
        grave: &mut Graveyard<K, V>,
    ) -> bool {
        let Some(capacity) = ctx.capacity else {
            return true;
        };
        if self.reclaim_one(ctx, grave) {
            return true;
        }
        let Some(slot) = self.flights.take_one_lapsed_unit(ctx.now) else {
            return false;
        };
        capacity.end_claim(true); // the unit passes to the caller
        self.stats.lease_expiries += 1;
        grave.end(slot.flight, FlightEnd::Lapsed);
        grave.bury_key(slot.key);
        true
    }

    /// Reclaims one expired entry, skipping any number of stale items (each
    /// is popped only once, so this stays amortised O(1)).
    fn reclaim_one(&mut self, ctx: &Ctx<'_>, grave: &mut Graveyard<K, V>) -> bool {
        while let Some(popped) = self.pop_due(ctx) {
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
    fn pop_due(&mut self, ctx: &Ctx<'_>) -> Option<Option<Entry<K, V>>> {
        let top = self.queue.peek_due(ctx.now)?;
        Some(self.take_top(top))
    }

    /// Evicts the entry with the soonest deadline (the oldest write among
    /// equal deadlines).
    fn evict_soonest(&mut self, grave: &mut Graveyard<K, V>) -> bool {
        while let Some(top) = self.queue.peek() {
            if let Some(entry) = self.take_top(top) {
                grave.bury(entry);
                self.stats.evictions += 1;
                return true;
            }
        }
        debug_assert!(self.entries.is_empty(), "every entry has a queue item");
        false
    }

    /// Pops `top` (the queue's head) and removes the entry version it was
    /// pushed for, if that still exists. Runs no user code (the entry
    /// keeps its hash).
    fn take_top(&mut self, top: Due) -> Option<Entry<K, V>> {
        let current = self.entries.version(top.slot, top.seq);
        self.queue.pop();
        current.then(|| self.entries.remove(top.slot))
    }

    /// Packs a sparse slab (after a purge left it at most a quarter full),
    /// returning memory to the allocator, and rebuilds the queue to match.
    pub(crate) fn compact(&mut self) {
        if self.entries.compact_if_sparse() {
            self.layout += 1;
            self.rebuild_queue();
        }
    }

    /// Takes over `key`'s claim if its lease has lapsed at `now`: its slot
    /// leaves the table and it ends as lapsed when `grave` drops. Returns
    /// whether the claim held a unit of the bound (which the caller now
    /// holds), or `None` if there was no lapsed claim.
    fn take_over_lapsed(
        &mut self,
        hash: u64,
        key: &K,
        now: CacheTime,
        grave: &mut Graveyard<K, V>,
    ) -> Option<bool> {
        let flight = self
            .flights
            .by_key(hash, key)
            .filter(|slot| slot.flight.lease_lapsed(now))
            .map(|slot| Arc::clone(&slot.flight))?;
        let slot = self.flights.take(hash, &flight).expect("found above");
        self.stats.lease_expiries += 1;
        grave.end(slot.flight, FlightEnd::Lapsed);
        grave.bury_key(slot.key);
        Some(slot.holds_unit)
    }

    /// Looks `key` up for `get_or_compute`: a live value, a flight to join,
    /// or a new flight that the caller now leads. A claim whose lease has
    /// lapsed is taken over (it ends as lapsed when `grave` drops).
    pub(crate) fn lookup_or_lead(
        &mut self,
        hash: u64,
        key: K,
        ctx: &Ctx<'_>,
        grave: &mut Graveyard<K, V>,
    ) -> Lookup<K, V>
    where
        V: Clone,
    {
        if let Some(value) = self.get_live(hash, &key, ctx.now).cloned() {
            grave.key = Some(key); // the caller's key, dropped after unlocking
            return Lookup::Hit(value);
        }
        if let Some(slot) = self.flights.by_key(hash, &key)
            && !slot.flight.lease_lapsed(ctx.now)
        {
            return Lookup::Join(Arc::clone(&slot.flight), key);
        }
        if let Some(held_unit) = self.take_over_lapsed(hash, &key, ctx.now, grave)
            && held_unit
            && let Some(capacity) = ctx.capacity
        {
            // Computations hold no unit.
            capacity.end_claim(false);
        }
        let now = ctx.now;
        let flight = self.start_flight(
            hash,
            key,
            |token| FlightInit {
                token,
                fingerprint: None,
                claim_id: None,
                started_at: now,
                lease_deadline: CacheTime::NEVER,
            },
            false,
        );
        Lookup::Lead(flight)
    }

    /// The answer to a claim when the key already has a live record or a
    /// live flight: the record, a mismatch, the same acquisition again (a
    /// resent claim id), or the flight in progress. `None`: the key is free
    /// or its claim has lapsed.
    fn claim_answered(
        &mut self,
        request: &ClaimRequest<K>,
        now: CacheTime,
    ) -> Option<ClaimLookup<K, V>>
    where
        K: Clone,
        V: Clone,
    {
        let (hash, fingerprint) = (request.hash, request.fingerprint);
        if let Some(slot) = self.find_live(hash, &request.key, now) {
            let stored = self.entries.fingerprint(slot);
            if !fingerprints_match(stored, fingerprint) {
                self.stats.mismatches += 1;
                return Some(ClaimLookup::Mismatch);
            }
            let entry = self.entries.get(slot);
            let found = ClaimLookup::Completed {
                value: entry.value.clone(),
                expires_at: entry.deadline,
                fingerprint: stored,
            };
            self.stats.replayed += 1;
            return Some(found);
        }
        let slot = self
            .flights
            .by_key(hash, &request.key)
            .filter(|slot| !slot.flight.lease_lapsed(now))?;
        let flight = &slot.flight;
        if !fingerprints_match(flight.fingerprint, fingerprint) {
            self.stats.mismatches += 1;
            return Some(ClaimLookup::Mismatch);
        }
        if !slot.abandoned && request.claim_id.is_some() && flight.claim_id == request.claim_id {
            // The same caller again (its first answer was lost): the same
            // acquisition.
            return Some(ClaimLookup::Acquired {
                flight: Arc::clone(flight),
                key: request.key.clone(),
                resent: true,
            });
        }
        self.stats.in_progress += 1;
        Some(ClaimLookup::InProgress {
            flight: Arc::clone(flight),
            abandoned: slot.abandoned,
        })
    }

    /// Looks `key` up for a claim: the completed record, a mismatch, a
    /// claim or computation in progress, or a new claim. The fingerprint is
    /// checked before anything else, so a reused key is reported even while
    /// the original request runs. A lapsed claim is taken over and its unit
    /// of the bound passes to the new claim. In a full cache with nothing
    /// to give up here, the request comes back.
    pub(crate) fn claim(
        &mut self,
        request: ClaimRequest<K>,
        ctx: &Ctx<'_>,
        grave: &mut Graveyard<K, V>,
    ) -> Admission<ClaimRequest<K>, ClaimLookup<K, V>>
    where
        K: Clone,
        V: Clone,
    {
        let ClaimRequest {
            hash, fingerprint, ..
        } = request;
        let now = ctx.now;
        if let Some(found) = self.claim_answered(&request, now) {
            grave.key = Some(request.key); // the caller's key, dropped after unlocking
            return Admission::Done(found);
        }
        // `K::clone` (user code that may panic) runs before a unit or a
        // lapsed claim changes hands, so a panic here leaks neither.
        let copy = request.key.clone();
        let inherited_unit = self
            .take_over_lapsed(hash, &request.key, now, grave)
            .unwrap_or(false);
        if let Some(capacity) = ctx.capacity
            && !inherited_unit
        {
            self.reclaim_due(ctx, WRITE_RECLAIM_BUDGET, grave);
            if !capacity.try_acquire() && !self.give_up_one(ctx, grave) {
                grave.key = Some(copy);
                return Admission::NeedRoom(request);
            }
            capacity.start_claim();
        }
        let flight = self.start_flight(
            hash,
            request.key,
            |token| FlightInit {
                token,
                fingerprint,
                claim_id: request.claim_id,
                started_at: now,
                lease_deadline: request.lease_deadline,
            },
            ctx.capacity.is_some(),
        );
        self.stats.acquired += 1;
        Admission::Done(ClaimLookup::Acquired {
            flight,
            key: copy,
            resent: false,
        })
    }

    /// What `key` holds, without changing anything: for a waiter that
    /// polls. A lapsed claim reads as free.
    pub(crate) fn peek<Q>(
        &self,
        hash: u64,
        key: &Q,
        fingerprint: Option<Fingerprint>,
        now: CacheTime,
    ) -> Peeked<V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        V: Clone,
    {
        if let Some(slot) = self.find_live(hash, key, now) {
            let stored = self.entries.fingerprint(slot);
            if !fingerprints_match(stored, fingerprint) {
                return Peeked::Mismatch;
            }
            let entry = self.entries.get(slot);
            return Peeked::Completed {
                value: entry.value.clone(),
                expires_at: entry.deadline,
                fingerprint: stored,
            };
        }
        match self.flights.by_key(hash, key) {
            Some(slot) if !slot.flight.lease_lapsed(now) => {
                if !fingerprints_match(slot.flight.fingerprint, fingerprint) {
                    return Peeked::Mismatch;
                }
                Peeked::InProgress {
                    flight: Arc::clone(&slot.flight),
                    abandoned: slot.abandoned,
                }
            }
            _ => Peeked::Free,
        }
    }

    /// Stores a value under the key the write names, reclaiming expired
    /// entries on the way and, when the cache is full, making room in this
    /// shard (see [`give_up_one`](Self::give_up_one)). A completing claim's
    /// unit becomes the entry's. With no room here the write comes back.
    pub(crate) fn write<'w>(
        &mut self,
        write: Write<'w, K, V>,
        ctx: &Ctx<'_>,
        grave: &mut Graveyard<K, V>,
    ) -> Admission<Write<'w, K, V>, WriteResult<V>> {
        let hash = write.hash;
        let (fingerprint, holds_unit) = match &write.key {
            WriteKey::Owned(_) => (None, false),
            WriteKey::Flight(flight) => {
                let Some(slot) = self.flights.by_flight(hash, flight) else {
                    return Admission::Done(WriteResult::Fenced(write.value));
                };
                if slot.abandoned {
                    return Admission::Done(WriteResult::Fenced(write.value));
                }
                // A late result whose key was removed, cleared or
                // overwritten in the meantime is not stored.
                if slot.invalidated {
                    self.free_slot(hash, flight, ctx.capacity, grave);
                    grave.value = Some(write.value);
                    return Admission::Done(WriteResult::Invalidated);
                }
                (flight.fingerprint, slot.holds_unit)
            }
        };
        // A stored plain write wins over a computation or claim of its key.
        // Found now, while nothing has changed: `Eq` is user code, and a
        // panic in it must not leave a unit taken or a value half written.
        let overtaken = match &write.key {
            WriteKey::Owned(key) => self
                .flights
                .by_key(hash, key)
                .map(|slot| Arc::clone(&slot.flight)),
            WriteKey::Flight(_) => None,
        };

        // Overwrite in place (even an expired entry): no new entry.
        let existing = match &write.key {
            WriteKey::Owned(key) => self.entries.find(hash, key),
            WriteKey::Flight(flight) => {
                let slot = self
                    .flights
                    .by_flight(hash, flight)
                    .expect("checked above, under the same lock");
                self.entries.find(hash, &slot.key)
            }
        };
        if let Some(slot) = existing {
            let seq = self.next_seq();
            let entry = self.entries.get_mut(slot);
            grave.value = Some(std::mem::replace(&mut entry.value, write.value));
            entry.deadline = write.deadline;
            entry.seq = seq;
            self.entries.set_fingerprint(slot, fingerprint);
            self.stats.inserts += 1;
            self.push_due(Due {
                deadline: write.deadline,
                seq,
                slot,
            });
            match write.key {
                WriteKey::Owned(key) => {
                    if let Some(flight) = &overtaken {
                        self.flights.invalidate_flight(hash, flight);
                    }
                    grave.key = Some(key);
                }
                // The claim's unit is not needed: the entry has one.
                WriteKey::Flight(flight) => self.free_slot(hash, flight, ctx.capacity, grave),
            }
            self.reclaim_due(ctx, WRITE_RECLAIM_BUDGET, grave);
            return Admission::Done(WriteResult::Stored);
        }
        // Reclaimed only now, so that a key's own expired entry is always
        // overwritten in place above rather than reclaimed and re-added.
        self.reclaim_due(ctx, WRITE_RECLAIM_BUDGET, grave);
        // Before a unit of the bound is taken (growing allocates, and an
        // allocation failure must not leak one).
        self.entries.reserve_one();

        // A new entry: a completing claim brings its unit; anything else
        // takes one from the bound or makes room here.
        if let Some(capacity) = ctx.capacity
            && !holds_unit
            && !capacity.try_acquire()
            && !self.give_up_one(ctx, grave)
        {
            return Admission::NeedRoom(write);
        }
        let key = match write.key {
            WriteKey::Owned(key) => {
                // Only a write that is stored wins over a computation of
                // the key: a refused one changes nothing.
                if let Some(flight) = &overtaken {
                    self.flights.invalidate_flight(hash, flight);
                }
                key
            }
            WriteKey::Flight(flight) => {
                let slot = self.flights.take(hash, flight).expect("checked above");
                if let Some(capacity) = ctx.capacity
                    && slot.holds_unit
                {
                    capacity.end_claim(true);
                }
                slot.key
            }
        };
        let seq = self.next_seq();
        let entry = Entry {
            key,
            value: write.value,
            deadline: write.deadline,
            seq,
            hash: hash as u32,
        };
        let slot = self.entries.insert(entry, fingerprint);
        self.stats.inserts += 1;
        self.push_due(Due {
            deadline: write.deadline,
            seq,
            slot,
        });
        Admission::Done(WriteResult::Stored)
    }

    /// Stores a record restored from a snapshot, unless its key is taken:
    /// a live entry or a flight of the key is newer than any snapshot, so it
    /// stays. An expired entry of the key is overwritten. Never evicts a
    /// live entry; with no room here the record comes back. What is not
    /// stored goes to the graveyard.
    pub(crate) fn restore(
        &mut self,
        record: Restore<K, V>,
        ctx: &Ctx<'_>,
        grave: &mut Graveyard<K, V>,
    ) -> Admission<Restore<K, V>, Restored> {
        let hash = record.hash;
        let taken = if record.deadline <= ctx.now {
            Some(Restored::Expired)
        } else if self.flights.by_key(hash, &record.key).is_some()
            || self.find_live(hash, &record.key, ctx.now).is_some()
        {
            Some(Restored::Present)
        } else {
            None
        };
        if let Some(outcome) = taken {
            grave.key = Some(record.key);
            grave.value = Some(record.value);
            return Admission::Done(outcome);
        }
        let slot = match self.entries.find(hash, &record.key) {
            // The key's expired entry: overwritten in place, like a write.
            Some(slot) => {
                let seq = self.next_seq();
                let entry = self.entries.get_mut(slot);
                grave.value = Some(std::mem::replace(&mut entry.value, record.value));
                entry.deadline = record.deadline;
                entry.seq = seq;
                grave.key = Some(record.key);
                self.entries.set_fingerprint(slot, record.fingerprint);
                (slot, seq)
            }
            None => {
                self.reclaim_due(ctx, WRITE_RECLAIM_BUDGET, grave);
                self.entries.reserve_one(); // before the unit, as in `write`
                if let Some(capacity) = ctx.capacity
                    && !capacity.try_acquire()
                    && !self.give_up_one_reclaimable(ctx, grave)
                {
                    return Admission::NeedRoom(record);
                }
                let seq = self.next_seq();
                let entry = Entry {
                    key: record.key,
                    value: record.value,
                    deadline: record.deadline,
                    seq,
                    hash: hash as u32,
                };
                let slot = self.entries.insert(entry, record.fingerprint);
                (slot, seq)
            }
        };
        self.push_due(Due {
            deadline: record.deadline,
            seq: slot.1,
            slot: slot.0,
        });
        self.stats.inserts += 1;
        Admission::Done(Restored::Stored)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::capacity::CapacityPolicy;

    type TestShard = Shard<u64, u64>;

    fn hasher() -> ahash::RandomState {
        ahash::RandomState::with_seeds(1, 2, 3, 4)
    }

    fn ctx(now: u64, capacity: Option<&Capacity>) -> Ctx<'_> {
        Ctx {
            now: CacheTime::from_nanos(now),
            capacity,
        }
    }

    fn put(shard: &mut TestShard, key: u64, deadline: u64, now: u64) {
        let hasher = hasher();
        let mut grave = Graveyard::new();
        let write = Write {
            hash: hasher.hash_one(key),
            key: WriteKey::Owned(key),
            value: key,
            deadline: CacheTime::from_nanos(deadline),
        };
        let stored = shard.write(write, &ctx(now, None), &mut grave);
        assert!(matches!(stored, Admission::Done(WriteResult::Stored)));
    }

    #[test]
    fn stale_queue_items_are_bounded_by_rebuilds() {
        let mut shard = TestShard::new();
        let rounds = if cfg!(miri) { 300 } else { 10_000 };
        for round in 0..rounds {
            put(&mut shard, round % 8, 1_000_000 + round, 0);
            assert!(shard.queue.len() <= 2 * shard.len() + queue::QUEUE_SLACK + 1);
        }
        assert_eq!(shard.len(), 8);
    }

    #[test]
    fn eviction_skips_stale_items_and_takes_the_soonest_live_entry() {
        let mut shard = TestShard::new();
        put(&mut shard, 1, 10, 0);
        put(&mut shard, 2, 20, 0);
        put(&mut shard, 1, 30, 0); // key 1's item at 10 is now stale
        let capacity = Capacity::new(2, CapacityPolicy::EvictSoonest);
        let mut grave = Graveyard::new();
        assert!(shard.give_up_one(&ctx(0, Some(&capacity)), &mut grave));
        assert_eq!(grave.entries().map(|e| e.key).collect::<Vec<_>>(), [2]);
        assert_eq!(shard.stats.evictions, 1);
    }

    #[test]
    fn the_refuse_policy_gives_up_expired_entries_and_lapsed_claims_only() {
        let h = hasher();
        let mut shard = TestShard::new();
        let capacity = Capacity::new(2, CapacityPolicy::Refuse);
        assert!(capacity.try_acquire());
        put(&mut shard, 1, 10, 0);
        let mut grave = Graveyard::new();
        assert!(
            !shard.give_up_one(&ctx(5, Some(&capacity)), &mut grave),
            "live"
        );
        // A claim with a lease until 7 holds the second unit.
        let request = ClaimRequest {
            hash: h.hash_one(2u64),
            key: 2,
            fingerprint: None,
            claim_id: None,
            lease_deadline: CacheTime::from_nanos(7),
        };
        let claimed = shard.claim(request, &ctx(5, Some(&capacity)), &mut grave);
        assert!(matches!(
            claimed,
            Admission::Done(ClaimLookup::Acquired { .. })
        ));
        assert_eq!(capacity.claims(), 1);
        assert!(!shard.give_up_one(&ctx(6, Some(&capacity)), &mut grave));
        // At 7 the claim has lapsed: its unit passes on.
        assert!(shard.give_up_one(&ctx(7, Some(&capacity)), &mut grave));
        assert_eq!(capacity.claims(), 0);
        assert_eq!(shard.stats.lease_expiries, 1);
        // At 10 the entry has expired.
        assert!(shard.give_up_one(&ctx(10, Some(&capacity)), &mut grave));
        assert_eq!(shard.stats.evictions, 0);
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
        assert_eq!(
            shard.reclaim_due(&ctx(1_000, None), 8, &mut grave).entries,
            0
        );
        assert!(
            shard.is_stored(h.hash_one(2u64), &2u64),
            "the live entry survives"
        );
        assert_eq!(
            shard
                .reclaim_due(&ctx(1_000_000, None), 8, &mut grave)
                .entries,
            1
        );
    }

    #[test]
    fn reclaiming_growing_and_compacting_run_no_key_hash() {
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
        let n = if cfg!(miri) { 40 } else { 1_000 };
        for key in 0..n {
            let write = Write {
                hash: h.hash_one(Key(key)),
                key: WriteKey::Owned(Key(key)),
                value: key,
                deadline: CacheTime::from_nanos(if key < n - 5 { 5 } else { 50 }),
            };
            // The index grows many times on the way; with `Hash` armed,
            // any rehash of a stored key would panic.
            ARMED.store(true, Ordering::SeqCst);
            let stored = shard.write(write, &ctx(0, None), &mut grave);
            ARMED.store(false, Ordering::SeqCst);
            assert!(matches!(stored, Admission::Done(WriteResult::Stored)));
        }
        ARMED.store(true, Ordering::SeqCst);
        let reclaimed = shard.reclaim_due(&ctx(10, None), usize::MAX, &mut grave);
        shard.compact();
        ARMED.store(false, Ordering::SeqCst);
        assert_eq!(reclaimed.entries, n as usize - 5);
        for key in n - 5..n {
            assert_eq!(
                shard.get_live(h.hash_one(Key(key)), &Key(key), CacheTime::from_nanos(10)),
                Some(&key)
            );
        }
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
            shard
                .reclaim_due(&ctx(10, None), 10_000, &mut grave)
                .entries,
            990
        );
        shard.compact();
        assert_eq!(
            shard.entries.slots(),
            10,
            "the slab shrank to the live entries"
        );
        assert_eq!(shard.queue.len(), 10);
        for key in 990..1_000 {
            assert!(shard.is_stored(h.hash_one(key), &key));
        }
        assert_eq!(
            shard.reclaim_due(&ctx(50, None), 100, &mut grave).entries,
            10
        );
        assert_eq!(shard.len(), 0);
    }

    #[test]
    fn reclaim_budget_counts_items_not_entries() {
        let mut shard = TestShard::new();
        for key in 0..10 {
            put(&mut shard, key, 5, 0);
        }
        let mut grave = Graveyard::new();
        let first = shard.reclaim_due(&ctx(5, None), 4, &mut grave);
        assert_eq!((first.entries, first.more_due), (4, true));
        let rest = shard.reclaim_due(&ctx(5, None), 100, &mut grave);
        assert_eq!((rest.entries, rest.more_due), (6, false));
        assert_eq!(grave.entries().count(), 10, "inline slots, then the spill");
        assert_eq!(shard.len(), 0);
    }
}
