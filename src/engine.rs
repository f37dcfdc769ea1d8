//! The engine behind every [`Cache`](crate::Cache) handle: the shards, the
//! hasher, the clock and the bound, and every operation on them.
//!
//! **This is the only module that locks a shard**, and it does so through
//! one helper, [`Engine::with_shard`], which creates a [`Graveyard`] before
//! taking the lock and drops it after releasing it. Shard operations put
//! whatever they displace (entries, replaced values, keys, flights to end)
//! in the graveyard, and anything else they hand back is returned out of
//! the helper, so the crate's central rule holds by construction: no value
//! is dropped, no waiter woken and no user closure run under a shard lock.
//! (`Hash`, `Eq` and `Clone` of keys and values do run under it.)
//!
//! A [`FlightGuard`] owns every flight a caller holds (a `get_or_compute`
//! leader, a claim's [`Reservation`](crate::Reservation)): completing
//! through it stores the value and wakes the waiters; dropping it gives the
//! flight up, which one guard does for both (a leader releases the key, a
//! reservation abandons its claim).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::ops::Deref;
use std::time::{Duration, SystemTime};

use crate::capacity::{Admission, Capacity, CapacityPolicy};
use crate::clock::{CacheTime, Span, TimeSource, system_time_after};
use crate::flight::{Ended, Flight, Outcome, Until};
use crate::shard::{
    ClaimLookup, ClaimRequest, Ctx, Entry, GiveUp, Graveyard, Lookup, Peeked, Restore, Restored,
    Shard, Write, WriteKey, WriteResult,
};
use crate::stats::Stats;
use crate::sync::{Arc, Mutex, thread, unlock_fair};
use crate::{Fingerprint, NotStored};

/// Queue items a purge (explicit or in the background) looks at per lock
/// hold, so that no shard is locked for long.
const PURGE_BATCH: usize = 256;

/// Keeps each shard's lock on its own cache lines, so that threads working
/// on neighbouring shards do not slow each other down.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A shard behind its lock, alone on its cache lines.
type ShardLock<K, V> = Padded<Mutex<Shard<K, V>>>;

/// The validated configuration an engine is built from.
pub(crate) struct Settings {
    pub(crate) shards: usize,
    pub(crate) time_to_live: Duration,
    pub(crate) max_entries: Option<usize>,
    pub(crate) lease: Duration,
    pub(crate) capacity_policy: CapacityPolicy,
}

/// The state every handle of one cache shares.
pub(crate) struct Engine<K, V, S> {
    shards: Box<[ShardLock<K, V>]>,
    hasher: S,
    time: TimeSource,
    ttl: Span,
    time_to_live: Duration,
    lease: Span,
    lease_duration: Duration,
    capacity: Option<Capacity>,
    policy: CapacityPolicy,
    /// Held by a restore and by a save to a file (from snapshot to rename),
    /// so they run one at a time and a save never writes a half-restored
    /// cache.
    pub(crate) snapshot_lock: Mutex<()>,
}

/// How a write ended.
pub(crate) enum Stored<V> {
    /// Stored at `now`, live until `expires_at`.
    Yes {
        now: CacheTime,
        expires_at: CacheTime,
    },
    /// Not stored (waiters still receive the value: it expires at once,
    /// at `now`).
    No { now: CacheTime, reason: NotStored },
    /// The flight no longer holds its key: the value comes back.
    Fenced(V),
}

/// The next step of a `get_or_compute` call.
pub(crate) enum Step<K, V, S> {
    Hit(V),
    Lead(FlightGuard<K, V, S>),
    /// Wait for the flight; the key comes back for a retry if it fails.
    Wait(Arc<Flight<V>>, K),
}

/// What one `get_or_compute` call has been counted as so far, so that a
/// waiter that retries after a failed leader is counted once.
#[derive(Default)]
pub(crate) struct Caller {
    looked_up: bool,
    waited: bool,
}

/// One batch of a snapshot copy; see [`Engine::copy_live_batch`].
pub(crate) enum Batch {
    /// Entries moved since the previous batch: start the shard over.
    Restart,
    /// Copied; where the next batch starts, `None` at the end.
    Copied { layout: u64, next: Option<usize> },
}

impl<K, V, S> Engine<K, V, S> {
    pub(crate) fn new(settings: Settings, time: TimeSource, hasher: S) -> Self {
        let policy = settings.capacity_policy;
        Self {
            shards: (0..settings.shards)
                .map(|_| Padded(Mutex::new(Shard::new())))
                .collect(),
            hasher,
            time,
            ttl: Span::from_duration(settings.time_to_live),
            time_to_live: settings.time_to_live,
            lease: Span::from_duration(settings.lease),
            lease_duration: settings.lease,
            capacity: settings.max_entries.map(|max| Capacity::new(max, policy)),
            policy,
            snapshot_lock: Mutex::new(()),
        }
    }

    /// Runs `f` on shard `index` under its lock. The graveyard is created
    /// before the lock and dropped after it: the one way the crate locks a
    /// shard (see the module docs).
    #[inline]
    fn with_shard<R>(
        &self,
        index: usize,
        f: impl FnOnce(&mut Shard<K, V>, &mut Graveyard<K, V>) -> R,
    ) -> R {
        let mut grave = Graveyard::new();
        let result = {
            let mut shard = self.shards[index].lock();
            f(&mut shard, &mut grave)
        };
        drop(grave);
        result
    }

    /// [`with_shard`](Self::with_shard) for operations that displace
    /// nothing (reads, counters, lease changes): the hit path builds no
    /// graveyard.
    #[inline]
    fn touch_shard<R>(&self, index: usize, f: impl FnOnce(&mut Shard<K, V>) -> R) -> R {
        f(&mut self.shards[index].lock())
    }

    pub(crate) fn time_to_live(&self) -> Duration {
        self.time_to_live
    }

    pub(crate) fn lease(&self) -> Duration {
        self.lease_duration
    }

    pub(crate) fn ttl(&self) -> Span {
        self.ttl
    }

    pub(crate) fn max_entries(&self) -> Option<usize> {
        self.capacity.as_ref().map(Capacity::max)
    }

    pub(crate) fn policy(&self) -> CapacityPolicy {
        self.policy
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub(crate) fn describe_clock(&self) -> &'static str {
        self.time.describe()
    }

    /// The cache clock's time, exactly (for deadlines).
    pub(crate) fn now(&self) -> CacheTime {
        self.time.now()
    }

    /// The wall-clock time matching [`now`](Self::now).
    pub(crate) fn system_now(&self) -> SystemTime {
        self.time.system_now()
    }

    /// The wall-clock time of cache time `at`.
    pub(crate) fn system_time_of(&self, at: CacheTime) -> SystemTime {
        self.system_time_from(self.now(), at)
    }

    /// [`system_time_of`](Self::system_time_of) with the cache time just
    /// read (one clock read fewer).
    pub(crate) fn system_time_from(&self, now: CacheTime, at: CacheTime) -> SystemTime {
        system_time_after(self.system_now(), now.until(at))
    }

    fn ctx(&self, now: CacheTime) -> Ctx<'_> {
        Ctx {
            now,
            capacity: self.capacity.as_ref(),
        }
    }

    /// The shard for `hash`. Uses the bits just below the top 7 (the flight
    /// table's hashbrown tag) and far above the low 32 (the entry index's
    /// position and tag), so shard choice and in-shard position stay
    /// independent; the multiply maps them onto any shard count without a
    /// division.
    #[inline]
    pub(crate) fn shard_index(&self, hash: u64) -> usize {
        ((u128::from(hash << 7) * self.shards.len() as u128) >> 64) as usize
    }

    /// The counters, summed shard by shard.
    pub(crate) fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for index in 0..self.shards.len() {
            self.touch_shard(index, |shard| total.merge(&shard.stats));
        }
        total
    }

    /// Entries stored: exact when no write runs. From the bound's counters
    /// when there is one (never above the bound, even while other threads
    /// move room between shards), else summed shard by shard.
    pub(crate) fn len(&self) -> usize {
        match &self.capacity {
            Some(capacity) => capacity.entries(),
            None => self.stored_entries(),
        }
    }

    /// Entries stored, summed shard by shard (one lock at a time).
    pub(crate) fn stored_entries(&self) -> usize {
        (0..self.shards.len())
            .map(|index| self.touch_shard(index, |shard| shard.len()))
            .sum()
    }

    /// Claims in progress, including abandoned claims whose lease has not
    /// been reclaimed yet.
    pub(crate) fn claims_in_progress(&self) -> usize {
        match &self.capacity {
            Some(capacity) => capacity.claims(),
            None => (0..self.shards.len())
                .map(|index| self.touch_shard(index, |shard| shard.claims()))
                .sum(),
        }
    }

    /// Gives back the units of `n` removed entries.
    fn release(&self, n: usize) {
        if let Some(capacity) = &self.capacity {
            capacity.release(n);
        }
    }

    /// Removes every entry. Flights are not cancelled, but their results
    /// will not be stored.
    pub(crate) fn clear(&self) {
        for index in 0..self.shards.len() {
            let count = self.with_shard(index, |shard, grave| shard.clear(grave));
            self.release(count);
        }
    }

    /// Calls `visit` with up to `batch` slots' live entries of shard
    /// `index` from slot `from`, in one lock hold released fairly (a
    /// request waiting for the shard goes next). `Restart` if the shard's
    /// layout is no longer `layout` (a compaction moved entries).
    pub(crate) fn copy_live_batch(
        &self,
        index: usize,
        layout: Option<u64>,
        from: usize,
        batch: usize,
        now: CacheTime,
        visit: impl FnMut(&Entry<K, V>, Option<Fingerprint>),
    ) -> Batch {
        let shard = self.shards[index].lock();
        if layout.is_some_and(|seen| seen != shard.layout()) {
            return Batch::Restart;
        }
        let copied = Batch::Copied {
            layout: shard.layout(),
            next: shard.for_each_live(now, from, batch, visit),
        };
        // parking_lot's default unlock would let this thread take the lock
        // straight back for the next batch, for up to 0.5 ms.
        unlock_fair(shard);
        copied
    }

    /// A real-time sleep after which the cache clock has surely reached
    /// `at` (a short slice for manual and custom clocks).
    pub(crate) fn real_time_until(&self, at: CacheTime) -> Duration {
        self.time.real_time_until(at)
    }

    /// How long a blocked `get_or_compute` waiter may sleep before it must
    /// look at a claim's lease again; `None` when the flight has no lease.
    fn recheck_after(&self, flight: &Flight<V>) -> Option<Duration> {
        flight
            .has_lease()
            .then(|| self.real_time_until(flight.lease_deadline()))
    }
}

impl<K, V, S> Engine<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Runs `attempt` (a write under the written shard's lock) until it is
    /// done, making room in other shards between attempts, or until the
    /// bound refuses it (see [`Capacity::admit`]). `evicting`: whether the
    /// write may evict live entries elsewhere, as the policy allows (a
    /// restore never does).
    fn admit<T, R>(
        &self,
        index: usize,
        evicting: bool,
        input: T,
        mut attempt: impl FnMut(T) -> Admission<T, R>,
    ) -> Result<R, T> {
        match &self.capacity {
            Some(capacity) => {
                let evicting = evicting && capacity.evicts_live();
                capacity.admit(evicting, input, attempt, || {
                    self.make_room_elsewhere(index, evicting)
                })
            }
            // Without a bound no write ever needs room.
            None => match attempt(input) {
                Admission::Done(result) => Ok(result),
                Admission::NeedRoom(input) => Err(input),
            },
        }
    }

    /// Frees one unit of the bound in a shard other than `written` (see
    /// [`Shard::give_up_one`]; without evicting live entries unless
    /// `evicting`), one lock at a time. `false` if none could.
    fn make_room_elsewhere(&self, written: usize, evicting: bool) -> bool {
        let Some(capacity) = &self.capacity else {
            return true;
        };
        let count = self.shards.len();
        for offset in 1..count {
            let index = (written + offset) % count;
            let freed = self.with_shard(index, |shard, grave| {
                let ctx = self.ctx(self.now());
                if evicting {
                    shard.give_up_one(&ctx, grave)
                } else {
                    shard.give_up_one_reclaimable(&ctx, grave)
                }
            });
            if freed {
                capacity.release(1);
                return true;
            }
        }
        // Units may be held by writes inserting right now under another
        // shard's lock; they will be stored in a moment.
        thread::yield_now();
        false
    }

    /// The value of `key` if it is live; counts a hit or a miss.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.hash(key);
        let now = self.time.now_for_reads();
        self.touch_shard(self.shard_index(hash), |shard| {
            let value = shard.get_live(hash, key, now).cloned();
            match value {
                Some(_) => shard.stats.hits += 1,
                None => shard.stats.misses += 1,
            }
            value
        })
    }

    /// Whether `key` is live; counts nothing.
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let now = self.time.now_for_reads();
        self.touch_shard(self.shard_index(hash), |shard| {
            shard.get_live(hash, key, now).is_some()
        })
    }

    /// Whether an entry for `key` is stored, live or expired.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn is_stored<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.touch_shard(self.shard_index(hash), |shard| shard.is_stored(hash, key))
    }

    /// Removes `key`, returning its value if it was live.
    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let now = self.time.now_for_reads();
        let removed =
            self.with_shard(self.shard_index(hash), |shard, _| shard.remove(hash, key))?;
        self.release(1);
        // The entry (its key, and its value if expired) is dropped here,
        // unlocked.
        let Entry {
            value, deadline, ..
        } = removed;
        (now < deadline).then_some(value)
    }

    /// Stores `value` under `key`, live for `ttl`.
    pub(crate) fn insert(&self, key: K, value: V, ttl: Span) -> Stored<V> {
        let hash = self.hash(&key);
        self.write(hash, WriteKey::Owned(key), value, ttl)
    }

    /// Stores `value` under the key `key` names (see [`Shard::write`]),
    /// making room or refusing when the cache is full.
    fn write(&self, hash: u64, key: WriteKey<'_, K, V>, value: V, ttl: Span) -> Stored<V> {
        let index = self.shard_index(hash);
        // Read under the lock, at every attempt (a write that waited for
        // the lock or for room gets its deadline from when it is stored).
        let mut now = CacheTime::from_nanos(0);
        let write = Write {
            hash,
            key,
            value,
            deadline: now,
        };
        let written = self.admit(index, true, write, |mut write| {
            self.with_shard(index, |shard, grave| {
                now = self.now();
                write.deadline = now.after(ttl);
                shard.write(write, &self.ctx(now), grave)
            })
        });
        match written {
            Ok(WriteResult::Stored) => Stored::Yes {
                now,
                expires_at: now.after(ttl),
            },
            Ok(WriteResult::Invalidated) => Stored::No {
                now,
                reason: NotStored::Invalidated,
            },
            Ok(WriteResult::Fenced(value)) => Stored::Fenced(value),
            Err(refused) => {
                // A flight that cannot store its result leaves the table:
                // its waiters still receive the value.
                let flight = match refused.key {
                    WriteKey::Flight(flight) => Some(flight),
                    WriteKey::Owned(_) => None,
                };
                self.with_shard(index, |shard, grave| {
                    shard.stats.refused_inserts += 1;
                    if let Some(flight) = flight {
                        shard.free_slot(hash, flight, self.capacity.as_ref(), grave);
                    }
                });
                Stored::No {
                    now,
                    reason: NotStored::Full,
                }
            }
        }
    }

    /// Purges expired entries and lapsed claims shard by shard,
    /// `PURGE_BATCH` queue items per lock hold, asking `stop` between
    /// batches. Returns how many entries it removed.
    pub(crate) fn purge(&self, stop: &dyn Fn() -> bool) -> usize {
        let mut total = 0;
        for index in 0..self.shards.len() {
            // Claims whose holders vanished or gave up: free their room,
            // tell their waiters.
            self.with_shard(index, |shard, grave| {
                shard.end_lapsed_claims(self.now(), self.capacity.as_ref(), grave)
            });
            loop {
                let reclaimed = self.with_shard(index, |shard, grave| {
                    shard.reclaim_due(&self.ctx(self.now()), PURGE_BATCH, grave)
                });
                total += reclaimed.entries;
                if !reclaimed.more_due {
                    // Give a slab that the purge left mostly empty back to
                    // the allocator.
                    self.touch_shard(index, |shard| shard.compact());
                    break;
                }
                if stop() {
                    return total;
                }
            }
        }
        total
    }

    /// The first step of `get_or_compute`: a hit, a flight to wait on, or
    /// the lead of a new flight.
    pub(crate) fn lookup_or_lead(
        engine: &Arc<Self>,
        hash: u64,
        key: K,
        caller: &mut Caller,
    ) -> Step<K, V, S>
    where
        V: Clone,
    {
        let this = &**engine;
        let now = this.time.now_for_reads();
        let index = this.shard_index(hash);
        // The hit path first, without a graveyard: a cache that serves
        // mostly hits pays for a plain `get` (the key is dropped after
        // unlocking). A miss locks again for the full lookup below.
        let hit = this.touch_shard(index, |shard| {
            let value = shard.get_live(hash, &key, now).cloned();
            if value.is_some() && !caller.looked_up {
                shard.stats.hits += 1;
            }
            value
        });
        if let Some(value) = hit {
            caller.looked_up = true;
            drop(key);
            return Step::Hit(value);
        }
        this.with_shard(index, |shard, grave| {
            let lookup = shard.lookup_or_lead(hash, key, &this.ctx(now), grave);
            let first = !std::mem::replace(&mut caller.looked_up, true);
            let stats = &mut shard.stats;
            match &lookup {
                Lookup::Hit(_) if first => stats.hits += 1,
                Lookup::Hit(_) => {}
                Lookup::Join(..) => {
                    stats.misses += u64::from(first);
                    if !std::mem::replace(&mut caller.waited, true) {
                        stats.coalesced += 1;
                    }
                }
                Lookup::Lead(_) => {
                    stats.misses += u64::from(first);
                    stats.computations += 1;
                }
            }
            lookup
        })
        .into_step(engine, hash)
    }

    /// Waits (blocking) for a flight joined by `get_or_compute`: `Some` of
    /// its value, or `None` to look the key up again.
    pub(crate) fn wait_for_computation(&self, flight: &Flight<V>) -> Option<V>
    where
        V: Clone,
    {
        // A claim's lease can lapse without anyone ending its flight: wake
        // in time to take it over.
        match flight.wait(Until::Free, self.recheck_after(flight)) {
            Ended::Completed(value, _) => Some(value),
            _ => None,
        }
    }

    /// Claims a key: see [`Shard::claim`]. `Err` when the cache is full and
    /// no room can be made.
    pub(crate) fn claim(
        &self,
        request: ClaimRequest<K>,
    ) -> Result<(ClaimLookup<K, V>, CacheTime), ()>
    where
        K: Clone,
        V: Clone,
    {
        let index = self.shard_index(request.hash);
        let mut now = CacheTime::from_nanos(0); // read under the lock
        let claimed = self.admit(index, true, request, |mut request| {
            self.with_shard(index, |shard, grave| {
                now = self.now();
                request.lease_deadline = now.after(self.lease).min(CacheTime::LATEST);
                shard.claim(request, &self.ctx(now), grave)
            })
        });
        match claimed {
            Ok(found) => Ok((found, now)),
            Err(_refused) => {
                self.touch_shard(index, |shard| shard.stats.refused_claims += 1);
                Err(())
            }
        }
    }

    /// What `key` holds now, without changing anything.
    pub(crate) fn peek<Q>(
        &self,
        key: &Q,
        fingerprint: Option<Fingerprint>,
    ) -> (Peeked<V>, CacheTime)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let hash = self.hash(key);
        let now = self.now();
        let peeked = self.touch_shard(self.shard_index(hash), |shard| {
            shard.peek(hash, key, fingerprint, now)
        });
        (peeked, now)
    }

    /// The claim of `key` with fencing token `token`, if it still holds
    /// the key: for token-addressed callers (the [`Store`](crate::store::Store)
    /// implementation).
    pub(crate) fn claim_by_token<Q>(&self, key: &Q, token: u64) -> Option<(u64, Arc<Flight<V>>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.touch_shard(self.shard_index(hash), |shard| {
            shard.claim_by_token(hash, key, token)
        })
        .map(|flight| (hash, flight))
    }

    /// Stores a flight's result for `ttl` and hands it to the flight's
    /// waiters (also when it is not stored: invalidated, or refused by a
    /// full cache). A fenced flight's value comes back, counted.
    pub(crate) fn complete_flight(
        &self,
        hash: u64,
        flight: &Arc<Flight<V>>,
        value: &V,
        ttl: Span,
    ) -> Stored<V>
    where
        V: Clone,
    {
        // If this clone panics nothing has changed: the caller's guard
        // gives the flight up.
        let stored = self.write(hash, WriteKey::Flight(flight), value.clone(), ttl);
        let expires_at = match &stored {
            Stored::Yes { expires_at, .. } => *expires_at,
            Stored::No { now, .. } => *now,
            Stored::Fenced(_) => {
                self.touch_shard(self.shard_index(hash), |shard| shard.stats.fenced += 1);
                return stored;
            }
        };
        // The flight has left the table, so no new waiter can join: if
        // nobody else holds it, nobody can observe the outcome.
        if Arc::strong_count(flight) == 1 {
            return stored;
        }
        // Should this clone panic, the waiters are still woken (to retry)
        // rather than left waiting.
        struct ReleaseOnUnwind<'a, V>(&'a Flight<V>);
        impl<V> Drop for ReleaseOnUnwind<'_, V> {
            fn drop(&mut self) {
                self.0.finish(Outcome::Released);
            }
        }
        let guard = ReleaseOnUnwind(flight);
        flight.finish(Outcome::Completed {
            value: value.clone(),
            expires_at,
        });
        drop(guard); // a no-op now: the flight has ended
        stored
    }

    /// Restores one snapshot record; `None` when the cache is full (a
    /// restore never evicts).
    pub(crate) fn restore_record(&self, record: Restore<K, V>) -> Option<Restored> {
        let index = self.shard_index(record.hash);
        self.admit(index, false, record, |record| {
            self.with_shard(index, |shard, grave| {
                shard.restore(record, &self.ctx(self.now()), grave)
            })
        })
        .ok()
    }
}

impl<K, V> Lookup<K, V> {
    fn into_step<S>(self, engine: &Arc<Engine<K, V, S>>, hash: u64) -> Step<K, V, S> {
        match self {
            Lookup::Hit(value) => Step::Hit(value),
            Lookup::Join(flight, key) => Step::Wait(flight, key),
            Lookup::Lead(flight) => Step::Lead(FlightGuard::new(
                Arc::clone(engine),
                hash,
                flight,
                GiveUp::Release,
            )),
        }
    }
}

/// The obligation to end a flight: completing through it stores the value
/// and wakes the waiters; dropping it unfinished (`Err`, panic, a dropped
/// future) gives the flight up as `on_drop` says. The one guard for
/// `get_or_compute` leaders (which release) and claims (which abandon).
pub(crate) struct FlightGuard<K, V, S> {
    engine: Arc<Engine<K, V, S>>,
    hash: u64,
    flight: Arc<Flight<V>>,
    on_drop: GiveUp,
    done: bool,
}

impl<K, V, S> FlightGuard<K, V, S> {
    pub(crate) fn new(
        engine: Arc<Engine<K, V, S>>,
        hash: u64,
        flight: Arc<Flight<V>>,
        on_drop: GiveUp,
    ) -> Self {
        Self {
            engine,
            hash,
            flight,
            on_drop,
            done: false,
        }
    }

    pub(crate) fn engine(&self) -> &Arc<Engine<K, V, S>> {
        &self.engine
    }

    pub(crate) fn flight(&self) -> &Arc<Flight<V>> {
        &self.flight
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// Ends the flight without a result, as `how` says.
    pub(crate) fn give_up(mut self, how: GiveUp) -> bool {
        self.done = true;
        self.engine.give_up(self.hash, &self.flight, how)
    }
}

impl<K, V, S> FlightGuard<K, V, S>
where
    K: Hash + Eq,
    V: Clone,
    S: BuildHasher,
{
    /// Stores `value` for `ttl` and wakes the waiters (see
    /// [`Engine::complete_flight`]).
    pub(crate) fn complete(mut self, value: &V, ttl: Span) -> Stored<V> {
        let stored = self
            .engine
            .complete_flight(self.hash, &self.flight, value, ttl);
        self.done = true;
        stored
    }
}

impl<K, V, S> Drop for FlightGuard<K, V, S> {
    fn drop(&mut self) {
        if !self.done {
            self.engine.give_up(self.hash, &self.flight, self.on_drop);
        }
    }
}

impl<K, V, S> Engine<K, V, S> {
    /// Ends `flight` without a result (see [`Shard::give_up_flight`]).
    /// Returns whether it still held its key.
    pub(crate) fn give_up(&self, hash: u64, flight: &Arc<Flight<V>>, how: GiveUp) -> bool {
        self.with_shard(self.shard_index(hash), |shard, grave| {
            shard.give_up_flight(hash, flight, how, &self.ctx(self.now()), grave)
        })
    }

    /// Extends a claim's lease to a full lease from now; `None` (counted as
    /// fenced) if it no longer holds its key.
    pub(crate) fn renew(&self, hash: u64, flight: &Arc<Flight<V>>) -> Option<CacheTime> {
        self.touch_shard(self.shard_index(hash), |shard| {
            let deadline = self.now().after(self.lease).min(CacheTime::LATEST);
            if shard.renew(hash, flight, deadline) {
                Some(deadline)
            } else {
                shard.stats.fenced += 1;
                None
            }
        })
    }

    /// Whether `flight` still holds its key (not taken over, not
    /// abandoned, lease not lapsed).
    pub(crate) fn holds(&self, hash: u64, flight: &Arc<Flight<V>>) -> bool {
        let now = self.now();
        self.touch_shard(self.shard_index(hash), |shard| {
            shard.holds(hash, flight, now)
        })
    }
}
