//! What a shard operation displaced, held until the shard lock is released.
//!
//! The central rule of the crate is that no user code (a value's `Drop`)
//! and no wake-up runs under a shard lock. Shard operations therefore never
//! drop what they remove and never end flights: they put entries, values,
//! keys and ended flights here. The engine creates the graveyard before it
//! locks a shard and drops it after unlocking (`Engine::with_shard`), so the
//! rule holds by construction.

use crate::flight::{Flight, Outcome, run_all};
use crate::shard::entries::Entry;
use crate::sync::Arc;

/// Entries kept inline, so a typical write (which reclaims a few) does not
/// allocate.
pub(crate) const INLINE_ENTRIES: usize = 4;

/// How a flight that left the table under the lock ends once it is
/// unlocked.
pub(crate) enum FlightEnd {
    /// The key is free now (a release, or a failed computation).
    Released,
    /// The lease lapsed (a claim taken over or reclaimed).
    Lapsed,
    /// The holder gave up without an outcome; the key stays held.
    Abandoned,
}

pub(crate) struct Graveyard<K, V> {
    inline: [Option<Entry<K, V>>; INLINE_ENTRIES],
    inline_len: usize,
    spill: Vec<Option<Entry<K, V>>>,
    /// A value an overwrite replaced, or a value that was not stored.
    pub(crate) value: Option<V>,
    /// A key that was not stored (the entry already had one, the write was
    /// refused or invalidated, a flight's slot left the table).
    pub(crate) key: Option<K>,
    /// Flights to end, in order, after unlocking.
    ended: Vec<(Arc<Flight<V>>, FlightEnd)>,
    /// Keys of flights that left the table.
    keys: Vec<K>,
}

impl<K, V> Graveyard<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            inline: [const { None }; INLINE_ENTRIES],
            inline_len: 0,
            spill: Vec::new(),
            value: None,
            key: None,
            ended: Vec::new(),
            keys: Vec::new(),
        }
    }

    pub(crate) fn bury(&mut self, entry: Entry<K, V>) {
        if self.inline_len < INLINE_ENTRIES {
            self.inline[self.inline_len] = Some(entry);
            self.inline_len += 1;
        } else {
            self.spill.push(Some(entry));
        }
    }

    /// A whole slab (from `clear`).
    pub(crate) fn bury_all(&mut self, slab: Vec<Option<Entry<K, V>>>) {
        if self.spill.is_empty() {
            self.spill = slab;
        } else {
            self.spill.extend(slab);
        }
    }

    /// `flight` ends as `how` once the lock is released.
    pub(crate) fn end(&mut self, flight: Arc<Flight<V>>, how: FlightEnd) {
        self.ended.push((flight, how));
    }

    /// A key of a flight slot that left the table.
    pub(crate) fn bury_key(&mut self, key: K) {
        self.keys.push(key);
    }

    /// Entries buried so far (for tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry<K, V>> {
        self.inline[..self.inline_len]
            .iter()
            .chain(self.spill.iter())
            .flatten()
    }
}

impl<K, V> Drop for Graveyard<K, V> {
    fn drop(&mut self) {
        // Waiters first: they are waiting; the drops below run user code,
        // which may panic (the remaining fields are then still dropped).
        // A waker that panics (see `Flight::finish`) must not leave the
        // other flights' waiters asleep either.
        run_all(self.ended.drain(..).map(|(flight, how)| {
            move || {
                flight.finish(match how {
                    FlightEnd::Released => Outcome::Released,
                    FlightEnd::Lapsed => Outcome::Lapsed,
                    FlightEnd::Abandoned => Outcome::Abandoned,
                })
            }
        }));
    }
}
