//! The bound on entries (`max_entries`) and what a full cache does: the
//! one place the global count, the policy, and the make-room-or-refuse
//! loop live.
//!
//! A unit of the bound is held by every stored entry (live or expired but
//! not yet reclaimed) and by every claim in progress; a write that is
//! inserting right now holds the unit it reserved. Claims are never
//! evicted. When a write needs a unit and none is free, room is made, in
//! this order, first in the written shard and then in the others, one
//! shard lock at a time:
//!
//! 1. an expired entry is reclaimed;
//! 2. a claim whose lease has lapsed (its holder crashed or gave up) is
//!    ended;
//! 3. only under [`CapacityPolicy::EvictSoonest`], the live entry with the
//!    soonest deadline is evicted.
//!
//! If none of these frees a unit, the write is refused: a claim answers
//! [`Claim::Full`](crate::Claim::Full), an insert is not stored.

use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::thread;

/// Rounds an evicting write waits (yielding) for units in transit to
/// become evictable entries before it is refused: a backstop, so that no
/// accounting error can ever turn into a write that spins forever.
const MAX_WAIT_ROUNDS: usize = 1024;

/// What a full bounded cache does when a new record needs room and no
/// expired entry or lapsed claim can be reclaimed.
///
/// Claims in progress are never evicted under either policy.
///
/// # Examples
///
/// ```
/// use idemcache::{Cache, CapacityPolicy, Claim};
///
/// let cache: Cache<u32, u32> = Cache::builder().max_entries(1).build()?;
/// assert_eq!(cache.capacity_policy(), CapacityPolicy::Refuse); // the default
/// cache.insert(1, 10);
/// cache.insert(2, 20); // full of live records: not stored
/// assert_eq!((cache.get(&1), cache.get(&2)), (Some(10), None));
/// assert!(matches!(cache.claim(3, None), Claim::Full)); // answer 503
/// # Ok::<(), idemcache::BuildError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum CapacityPolicy {
    /// Idempotency-safe (the default): never forget an unexpired record. A
    /// new claim gets [`Claim::Full`](crate::Claim::Full) (answer 503), a
    /// plain `insert` or a computed value is not stored (counted in
    /// [`Stats::refused_inserts`](crate::Stats::refused_inserts)), until
    /// records expire or lapsed claims can be reclaimed.
    #[default]
    Refuse,
    /// For pure cache use only: evict the live record with the soonest
    /// deadline, so the cache always has room for new work. **Unsafe for
    /// idempotency**: a retry of an evicted request runs again.
    EvictSoonest,
}

/// The bound, shared by all shards. `used` counts stored entries, claims in
/// progress and units reserved by writes inserting right now; `claims`
/// counts the claims.
pub(crate) struct Capacity {
    max: usize,
    used: AtomicUsize,
    claims: AtomicUsize,
    policy: CapacityPolicy,
}

/// What one attempt to write under a shard lock came to.
pub(crate) enum Admission<T, R> {
    /// The write is done (or needed no new unit).
    Done(R),
    /// The cache is full and the written shard had nothing to give up:
    /// what the write needs comes back for another attempt.
    NeedRoom(T),
}

impl Capacity {
    pub(crate) fn new(max: usize, policy: CapacityPolicy) -> Self {
        Self {
            max,
            used: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
            policy,
        }
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Whether a full cache may evict live entries.
    pub(crate) fn evicts_live(&self) -> bool {
        self.policy == CapacityPolicy::EvictSoonest
    }

    /// Entries stored: units used minus those held by claims. `used` is
    /// read first, so the result never exceeds the bound even while claims
    /// complete concurrently; exact once writes are done.
    pub(crate) fn entries(&self) -> usize {
        let used = self.used.load(Ordering::Acquire);
        used.saturating_sub(self.claims())
    }

    /// Claims in progress holding a unit.
    pub(crate) fn claims(&self) -> usize {
        self.claims.load(Ordering::Acquire)
    }

    /// Reserves room for one more entry or claim, if there is any.
    pub(crate) fn try_acquire(&self) -> bool {
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

    /// Returns the units of `n` removed entries.
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            let before = self.used.fetch_sub(n, Ordering::Relaxed);
            debug_assert!(before >= n, "released more units than held");
        }
    }

    /// A claim now holds a unit it acquired.
    pub(crate) fn start_claim(&self) {
        self.claims.fetch_add(1, Ordering::AcqRel);
    }

    /// A claim ended: its unit passes on (to the entry it became, or to a
    /// write that needed room: `keep_unit`) or is freed.
    pub(crate) fn end_claim(&self, keep_unit: bool) {
        self.claims.fetch_sub(1, Ordering::AcqRel);
        if !keep_unit {
            self.release(1);
        }
    }

    /// The make-room-or-refuse loop shared by every write that may need a
    /// new unit (insert, completion, claim, restore).
    ///
    /// `attempt` runs under the written shard's lock: it stores, or frees a
    /// unit in that shard, or hands `input` back. Then `free_elsewhere`
    /// tries the other shards (one lock at a time) and the attempt is
    /// repeated. The write is refused (`Err(input)`) when no shard could
    /// give a unit up and waiting cannot help: the write may not evict
    /// (`evicting` is false: the `Refuse` policy, or a restore, which never
    /// evicts), or every unit is held by a claim (never evicted). An
    /// evicting write otherwise goes on: units held by writes inserting
    /// right now under other locks become entries in a moment.
    pub(crate) fn admit<T, R>(
        &self,
        evicting: bool,
        mut input: T,
        mut attempt: impl FnMut(T) -> Admission<T, R>,
        mut free_elsewhere: impl FnMut() -> bool,
    ) -> Result<R, T> {
        let mut waits = 0;
        loop {
            match attempt(input) {
                Admission::Done(result) => return Ok(result),
                Admission::NeedRoom(back) => input = back,
            }
            if free_elsewhere() {
                continue;
            }
            if !evicting || self.entries() == 0 || waits == MAX_WAIT_ROUNDS {
                return Err(input);
            }
            waits += 1;
            thread::yield_now();
        }
    }
}
