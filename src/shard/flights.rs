//! A shard's flight table: the keys with a computation or a claim in
//! progress.
//!
//! # Invariants
//!
//! - At most one slot per key; a slot's flight is the key's current one,
//!   and a flight that has left the table never comes back (so "is this
//!   flight still its key's?" is a pointer comparison).
//! - `holds_unit` is true exactly for claims in a bounded cache: each holds
//!   one unit of `max_entries` until it becomes an entry or ends.
//! - An abandoned claim keeps its slot (and its unit) until its lease
//!   lapses: it still holds the key.

use std::borrow::Borrow;

use hashbrown::HashTable;

use crate::clock::CacheTime;
use crate::flight::Flight;
use crate::sync::Arc;

/// A key whose value is being computed (`get_or_compute`) or produced by
/// the holder of a claim.
pub(crate) struct FlightSlot<K, V> {
    pub(crate) key: K,
    pub(crate) flight: Arc<Flight<V>>,
    /// Claims in a bounded cache hold a unit of the bound while in
    /// progress; computations do not.
    pub(crate) holds_unit: bool,
    /// The key's hash, kept so the table can grow without a hasher.
    pub(crate) hash: u64,
    /// Set by `remove`, `clear` or a newer `insert` of the key while the
    /// flight runs: the late result must not overwrite that newer state.
    pub(crate) invalidated: bool,
    /// The holder gave up without an outcome: the slot holds the key until
    /// the lease lapses, and nothing may complete, renew or release it.
    pub(crate) abandoned: bool,
}

#[derive(Default)]
pub(super) struct Flights<K, V> {
    table: HashTable<FlightSlot<K, V>>,
}

impl<K, V> Flights<K, V> {
    pub(super) fn new() -> Self {
        Self {
            table: HashTable::new(),
        }
    }

    /// The slot of `key`.
    pub(super) fn by_key<Q>(&self, hash: u64, key: &Q) -> Option<&FlightSlot<K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if self.table.is_empty() {
            return None; // the common case, without touching the table
        }
        self.table.find(hash, |s| s.key.borrow() == key)
    }

    /// The slot of `flight`, if it is still its key's.
    pub(super) fn by_flight(
        &self,
        hash: u64,
        flight: &Arc<Flight<V>>,
    ) -> Option<&FlightSlot<K, V>> {
        self.table.find(hash, |s| Arc::ptr_eq(&s.flight, flight))
    }

    /// Marks `flight`'s slot abandoned (see [`FlightSlot::abandoned`]).
    pub(super) fn mark_abandoned(&mut self, hash: u64, flight: &Arc<Flight<V>>) {
        if let Some(slot) = self
            .table
            .find_mut(hash, |s| Arc::ptr_eq(&s.flight, flight))
        {
            slot.abandoned = true;
        }
    }

    /// Removes the slot of `flight`, if it is still its key's.
    pub(super) fn take(&mut self, hash: u64, flight: &Arc<Flight<V>>) -> Option<FlightSlot<K, V>> {
        self.table
            .find_entry(hash, |s| Arc::ptr_eq(&s.flight, flight))
            .ok()
            .map(|occupied| occupied.remove().0)
    }

    /// Adds a slot; the key must have none.
    pub(super) fn insert(&mut self, slot: FlightSlot<K, V>) {
        self.table.insert_unique(slot.hash, slot, |s| s.hash);
    }

    /// Marks the flight of `key`, if any, so its result is not stored.
    pub(super) fn invalidate<Q>(&mut self, hash: u64, key: &Q)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if self.table.is_empty() {
            return;
        }
        if let Some(slot) = self.table.find_mut(hash, |s| s.key.borrow() == key) {
            slot.invalidated = true;
        }
    }

    /// Marks `flight`, if it is still its key's, so its result is not
    /// stored (by pointer: no user code runs).
    pub(super) fn invalidate_flight(&mut self, hash: u64, flight: &Arc<Flight<V>>) {
        if let Some(slot) = self
            .table
            .find_mut(hash, |s| Arc::ptr_eq(&s.flight, flight))
        {
            slot.invalidated = true;
        }
    }

    /// Marks every flight so its result is not stored.
    pub(super) fn invalidate_all(&mut self) {
        for slot in self.table.iter_mut() {
            slot.invalidated = true;
        }
    }

    /// Removes and returns every claim whose lease has lapsed at `now`.
    pub(super) fn take_lapsed(&mut self, now: CacheTime) -> Vec<FlightSlot<K, V>> {
        if self.table.is_empty() {
            return Vec::new();
        }
        self.table
            .extract_if(|s| s.flight.lease_lapsed(now))
            .collect()
    }

    /// Removes one lapsed claim that holds a unit of the bound, if any (a
    /// scan of the table, which holds only what is in progress).
    pub(super) fn take_one_lapsed_unit(&mut self, now: CacheTime) -> Option<FlightSlot<K, V>> {
        let hash = self
            .table
            .iter()
            .find(|s| s.holds_unit && s.flight.lease_lapsed(now))
            .map(|s| (s.hash, Arc::clone(&s.flight)))?;
        self.take(hash.0, &hash.1)
    }

    /// Claims in progress (slots with a lease).
    pub(super) fn claims(&self) -> usize {
        self.table.iter().filter(|s| s.flight.has_lease()).count()
    }
}
