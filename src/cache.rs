//! The cache handle: what users hold and call. Every operation is the
//! engine's (`engine.rs`); this file holds the public API and its docs.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use crate::background::Background;
use crate::builder::CacheBuilder;
use crate::capacity::CapacityPolicy;
use crate::clock::Span;
use crate::engine::{Caller, Engine, Step};
use crate::flight::{self, Ended, Until};
use crate::stats::Stats;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Arc, Mutex};

/// An expiring, sharded, concurrent map from idempotency keys to results,
/// with single-flight computation and the idempotency-key protocol
/// ([`claim`](Self::claim)).
///
/// `Cache` is a cheap handle: [`Clone`] it freely (one reference count), and
/// every clone shares one map. It is `Send + Sync` when `K` and `V` are
/// `Send` (and the hasher is `Send + Sync`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idemcache::Cache;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Receipt { charge_id: u64 }
///
/// let cache: Cache<String, Receipt> = Cache::builder()
///     .time_to_live(Duration::from_secs(24 * 3600))
///     .build()?;
///
/// // The first request with this key charges the card...
/// let first = cache.get_or_compute("key-123".to_string(), || {
///     Ok::<_, std::io::Error>(Receipt { charge_id: 1 })
/// })?;
/// // ...a retry with the same key replays the stored receipt.
/// let retry = cache.get_or_compute("key-123".to_string(), || -> Result<_, std::io::Error> {
///     unreachable!("the retry must not charge again")
/// })?;
/// assert_eq!(first, retry);
/// assert_eq!(cache.get("key-123"), Some(Receipt { charge_id: 1 }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Expiry
///
/// An entry written at time `t` with time-to-live `d` is returned while
/// `now < t + d` and never once `now >= t + d`, by every read
/// (`get`, `contains_key`, `remove`, `get_or_compute`, `claim`), whether or
/// not it has been reclaimed yet. Expired entries still count in
/// [`len`](Self::len) until they are reclaimed: by writes to their shard (a
/// few per write), by [`purge_expired`](Self::purge_expired), or by the
/// background thread.
///
/// # Capacity
///
/// With [`max_entries`](CacheBuilder::max_entries), entries plus claims in
/// progress never exceed the bound. A write of a new key into a full cache
/// first reclaims an expired entry, then a claim whose lease has lapsed, in
/// its shard and then in the others. If that frees nothing, the default
/// policy ([`CapacityPolicy::Refuse`]) refuses the write: a claim answers
/// [`Claim::Full`](crate::Claim::Full), an insert is not stored. So a live
/// record is never forgotten early. Only the opt-in
/// [`CapacityPolicy::EvictSoonest`] evicts the live entry with the soonest
/// deadline (exactly the soonest in the cache with one shard). Claims in
/// progress are never evicted.
pub struct Cache<K, V, S = ahash::RandomState> {
    pub(crate) engine: Arc<Engine<K, V, S>>,
    /// Shared by handles only (the background thread holds the engine, not
    /// this), so it is dropped with the last handle, which stops the thread.
    handles: Arc<Handles>,
}

/// What only handles share.
pub(crate) struct Handles {
    /// Taken (stopped and joined) by `shutdown`, or dropped with the last
    /// handle.
    background: Mutex<Option<Background>>,
    /// Set by the first `shutdown`: a second one saves nothing.
    shut_down: AtomicBool,
    /// The periodic snapshot, if the cache has one.
    #[cfg(feature = "persistence")]
    pub(crate) snapshots: Option<Arc<dyn crate::persistence::PeriodicSnapshots>>,
}

impl<K, V> Cache<K, V, ahash::RandomState> {
    /// A builder with the default configuration (see [`CacheBuilder`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .time_to_live(Duration::from_secs(3600))
    ///     .max_entries(100_000)
    ///     .build()?;
    /// assert_eq!(cache.max_entries(), Some(100_000));
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn builder() -> CacheBuilder<K, V, ahash::RandomState> {
        CacheBuilder::new()
    }
}

impl<K, V> Cache<K, V, ahash::RandomState>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// A cache with the default configuration: 24 h time-to-live, 60 s
    /// lease, unbounded, no background thread.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u64, String> = Cache::new();
    /// assert!(cache.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid and starts no thread")
    }
}

impl<K, V> Default for Cache<K, V, ahash::RandomState>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, S> Clone for Cache<K, V, S> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
            handles: Arc::clone(&self.handles),
        }
    }
}

impl<K, V, S> Cache<K, V, S> {
    pub(crate) fn from_parts(
        engine: Arc<Engine<K, V, S>>,
        background: Option<Background>,
        #[cfg(feature = "persistence")] snapshots: Option<
            Arc<dyn crate::persistence::PeriodicSnapshots>,
        >,
    ) -> Self {
        Self {
            engine,
            handles: Arc::new(Handles {
                background: Mutex::new(background),
                shut_down: AtomicBool::new(false),
                #[cfg(feature = "persistence")]
                snapshots,
            }),
        }
    }

    #[cfg(feature = "persistence")]
    pub(crate) fn handles(&self) -> &Handles {
        &self.handles
    }

    /// The default time-to-live of entries.
    ///
    /// ```
    /// use idemcache::{Cache, DEFAULT_TIME_TO_LIVE};
    ///
    /// let cache: Cache<u64, u64> = Cache::new();
    /// assert_eq!(cache.time_to_live(), DEFAULT_TIME_TO_LIVE);
    /// ```
    pub fn time_to_live(&self) -> Duration {
        self.engine.time_to_live()
    }

    /// How long a claim holds its key unless renewed.
    ///
    /// ```
    /// use idemcache::{Cache, DEFAULT_LEASE};
    ///
    /// let cache: Cache<u64, u64> = Cache::new();
    /// assert_eq!(cache.lease(), DEFAULT_LEASE);
    /// ```
    pub fn lease(&self) -> Duration {
        self.engine.lease()
    }

    /// The bound on entries and claims, if any.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u64, u64> = Cache::builder().max_entries(10).build()?;
    /// assert_eq!(cache.max_entries(), Some(10));
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn max_entries(&self) -> Option<usize> {
        self.engine.max_entries()
    }

    /// What the cache does when it is full (see [`CapacityPolicy`]). A
    /// layer handed a cache checks it: only [`CapacityPolicy::Refuse`] keeps
    /// every live record until it expires.
    ///
    /// ```
    /// use idemcache::{Cache, CapacityPolicy};
    ///
    /// let cache: Cache<u64, u64> = Cache::builder().max_entries(10).build()?;
    /// assert_eq!(cache.capacity_policy(), CapacityPolicy::Refuse);
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn capacity_policy(&self) -> CapacityPolicy {
        self.engine.policy()
    }

    /// The number of shards.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u64, u64> = Cache::builder().shards(4).build()?;
    /// assert_eq!(cache.shard_count(), 4);
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn shard_count(&self) -> usize {
        self.engine.shard_count()
    }

    /// The number of entries stored (completed records and inserted
    /// values), including expired entries that have not been reclaimed
    /// yet. Exact when no other thread is writing; after
    /// [`purge_expired`](Self::purge_expired) it counts live entries only.
    ///
    /// Claims in progress are not entries and are not counted here, though
    /// each holds a unit of [`max_entries`](Self::max_entries): see
    /// [`claims_in_progress`](Self::claims_in_progress). A bounded cache is
    /// full when the two add up to the bound.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u32, u32> = Cache::new();
    /// cache.insert(1, 10);
    /// cache.insert(1, 11);
    /// cache.insert(2, 20);
    /// let _held = cache.claim(3, None); // a claim, not an entry
    /// assert_eq!(cache.len(), 2);
    /// assert_eq!(cache.claims_in_progress(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.engine.len()
    }

    /// Claims in progress: held by a [`Reservation`](crate::Reservation),
    /// or abandoned and holding their key until their lease lapses (until
    /// a claim, a purge or a full cache reclaims them). `get_or_compute`
    /// computations are not counted.
    ///
    /// ```
    /// use idemcache::{Cache, Claim};
    ///
    /// let cache: Cache<u32, u32> = Cache::new();
    /// let Claim::Acquired(reservation) = cache.claim(1, None) else { unreachable!() };
    /// assert_eq!(cache.claims_in_progress(), 1);
    /// reservation.complete(10)?;
    /// assert_eq!(cache.claims_in_progress(), 0);
    /// # Ok::<(), idemcache::StaleReservation<u32>>(())
    /// ```
    pub fn claims_in_progress(&self) -> usize {
        self.engine.claims_in_progress()
    }

    /// Whether [`len`](Self::len) is zero.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u32, u32> = Cache::new();
    /// assert!(cache.is_empty());
    /// cache.insert(1, 1);
    /// assert!(!cache.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache's counters, summed over shards.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u32, u32> = Cache::new();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.get(&1), Some(1));
    /// assert_eq!((cache.stats().inserts, cache.stats().hits), (1, 1));
    /// ```
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Stops the cache's background thread (if it has one) after the work
    /// it is doing, then, if the cache has a
    /// [periodic snapshot](CacheBuilder::snapshot_every), saves a final one
    /// and returns how that went. Call it on the way out of a graceful
    /// shutdown (after the server stops taking requests): records
    /// completed since the last periodic save would otherwise be lost.
    ///
    /// Only the first call does this; later calls return `Ok(())` at once.
    /// The cache keeps working afterwards, without background work:
    /// expired entries are still reclaimed by writes, but nothing more is
    /// saved unless you save it. Dropping the last handle stops the thread
    /// too, but saves nothing: a drop does no I/O.
    ///
    /// # Errors
    ///
    /// The final save's [`SnapshotError`](crate::SnapshotError), including
    /// `WouldOverwrite` when the cache never restored the file it would
    /// replace (see [`CacheBuilder::snapshot_every`]); the thread is
    /// stopped either way.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .background_eviction(Duration::from_secs(1))
    ///     .build()?;
    /// cache.insert("key".to_string(), "value".to_string());
    /// cache.shutdown()?; // the background thread is joined here
    /// assert_eq!(cache.get("key").as_deref(), Some("value"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self) -> Result<(), crate::SnapshotError> {
        if self.handles.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let background = self.handles.background.lock().take();
        drop(background); // stops and joins the thread, outside the lock
        #[cfg(feature = "persistence")]
        if let Some(snapshots) = &self.handles.snapshots {
            return snapshots.save_now();
        }
        Ok(())
    }

    /// Removes every entry. Computations and claims in progress are not
    /// cancelled, but their results will not be stored (their callers and
    /// waiters still receive them).
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u32, u32> = Cache::new();
    /// cache.insert(1, 10);
    /// cache.clear();
    /// assert!(cache.is_empty());
    /// ```
    pub fn clear(&self) {
        self.engine.clear();
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// The value of `key`, if it is stored and live.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<String, u32> = Cache::new();
    /// cache.insert("a".to_string(), 1);
    /// assert_eq!(cache.get("a"), Some(1)); // looked up with a &str
    /// assert_eq!(cache.get("b"), None);
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        self.engine.get(key)
    }

    /// Whether `key` is stored and live. Counts neither a hit nor a miss.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<&str, u32> = Cache::new();
    /// cache.insert("a", 1);
    /// assert!(cache.contains_key("a"));
    /// assert!(!cache.contains_key("b"));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.engine.contains_key(key)
    }

    /// Stores `value` under `key` with the cache's time-to-live, replacing
    /// any previous value. If a computation or claim of `key` is in
    /// progress, its result will not overwrite this value.
    ///
    /// In a full cache under [`CapacityPolicy::Refuse`] (the default) a new
    /// key that finds no room is not stored (counted in
    /// [`Stats::refused_inserts`]).
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<&str, u32> = Cache::new();
    /// cache.insert("a", 1);
    /// cache.insert("a", 2);
    /// assert_eq!(cache.get("a"), Some(2));
    /// ```
    pub fn insert(&self, key: K, value: V) {
        self.engine.insert(key, value, self.engine.ttl());
    }

    /// Stores `value` under `key`, live for `time_to_live` from now instead
    /// of the cache's default. A zero duration stores an entry that is
    /// already expired (it replaces the previous value and is never
    /// returned).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    /// use idemcache::clock::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// let cache: Cache<&str, u32> = Cache::builder().clock(clock.clone()).build()?;
    /// cache.insert_with_ttl("short", 1, Duration::from_secs(5));
    /// clock.advance(Duration::from_secs(5));
    /// assert_eq!(cache.get("short"), None);
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn insert_with_ttl(&self, key: K, value: V, time_to_live: Duration) {
        self.engine
            .insert(key, value, Span::from_duration(time_to_live));
    }

    /// Removes `key`, returning its value if it was live. An expired entry is
    /// removed too, but its value is not returned. A computation or claim of
    /// `key` in progress is not cancelled (a claim still holds the key), but
    /// its result will not be stored.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<&str, u32> = Cache::new();
    /// cache.insert("a", 1);
    /// assert_eq!(cache.remove("a"), Some(1));
    /// assert_eq!(cache.remove("a"), None);
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.engine.remove(key)
    }

    /// Reclaims every expired entry and every claim whose lease has lapsed
    /// now, in bounded batches (no shard is locked for long), and returns
    /// how many entries it removed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    /// use idemcache::clock::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .time_to_live(Duration::from_secs(1))
    ///     .clock(clock.clone())
    ///     .build()?;
    /// cache.insert(1, 1);
    /// cache.insert(2, 2);
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(cache.len(), 2); // expired, not yet reclaimed
    /// assert_eq!(cache.purge_expired(), 2);
    /// assert_eq!(cache.len(), 0);
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn purge_expired(&self) -> usize {
        self.engine.purge(&|| false)
    }

    /// Whether an entry for `key` is stored, live or expired: for the
    /// model-based tests and the fuzz targets, which must learn which
    /// expired entries have been reclaimed. Compiled for them only.
    #[cfg(any(test, fuzzing))]
    #[doc(hidden)]
    pub fn __is_stored<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.engine.is_stored(key)
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq,
    V: Clone,
    S: BuildHasher,
{
    /// Returns the live value of `key`, or computes it once, however many
    /// callers ask at the same time.
    ///
    /// If `key` has a live value, it is returned and `compute` is not
    /// called. Otherwise one caller, the leader, runs its `compute`; callers
    /// that arrive meanwhile block until it ends.
    ///
    /// # Concurrent calls on the same key
    ///
    /// - At most one computation per key runs at a time, across all clones
    ///   of the cache, blocking and async callers together.
    /// - Leader `Ok(v)`: `v` is stored with the default time-to-live and
    ///   every waiter returns `Ok(v.clone())` without running its closure.
    /// - Leader `Err(e)`: nothing is stored, the leader returns `Err(e)`,
    ///   and one waiter becomes the new leader and runs its own closure
    ///   (errors are never shared or cached).
    /// - `compute` runs with no lock held: it may use the cache freely for
    ///   other keys. Calling `get_or_compute` for the *same* key from inside
    ///   `compute` deadlocks, as it would wait for itself.
    /// - A [`remove`](Self::remove), [`clear`](Self::clear) or newer
    ///   [`insert`](Self::insert) of `key` while `compute` runs wins: the
    ///   leader and its waiters still receive the computed value, but it is
    ///   not stored over the newer state. So does a full cache that refuses
    ///   the value.
    /// - A key held by a [claim](Self::claim) is waited for like a
    ///   computation; if that claim is abandoned, callers wait until its
    ///   lease lapses, then compute (the claim's outcome is unknown, so the
    ///   key is not free before).
    ///
    /// Flights are per key, not per error type: callers with different `E`
    /// share one flight.
    ///
    /// This call blocks the thread while waiting; in async code use
    /// [`get_or_compute_async`](Self::get_or_compute_async).
    ///
    /// # Panics
    ///
    /// A panic in `compute` propagates to the leader's caller. Nothing is
    /// stored or poisoned, and a waiter becomes the new leader.
    ///
    /// # Errors
    ///
    /// The leader's `Err`, returned to the leader only.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Barrier;
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<&str, u64> = Cache::new();
    /// let charges = AtomicUsize::new(0);
    /// let start = Barrier::new(4);
    /// std::thread::scope(|s| {
    ///     for _ in 0..4 {
    ///         s.spawn(|| {
    ///             start.wait();
    ///             let receipt = cache.get_or_compute("order-7", || {
    ///                 charges.fetch_add(1, Ordering::SeqCst);
    ///                 Ok::<_, String>(42)
    ///             });
    ///             assert_eq!(receipt, Ok(42));
    ///         });
    ///     }
    /// });
    /// assert_eq!(charges.load(Ordering::SeqCst), 1); // charged once
    ///
    /// // Errors are not cached: the next caller tries again.
    /// let failed: Result<u64, &str> = cache.get_or_compute("order-8", || Err("declined"));
    /// assert_eq!(failed, Err("declined"));
    /// assert_eq!(cache.get_or_compute("order-8", || Ok::<_, &str>(8)), Ok(8));
    /// ```
    pub fn get_or_compute<E, F>(&self, key: K, compute: F) -> Result<V, E>
    where
        F: FnOnce() -> Result<V, E>,
    {
        let hash = self.engine.hash(&key);
        let mut caller = Caller::default();
        let mut key = key;
        let leader = loop {
            match Engine::lookup_or_lead(&self.engine, hash, key, &mut caller) {
                Step::Hit(value) => return Ok(value),
                Step::Lead(leader) => break leader,
                Step::Wait(flight, returned) => {
                    if let Some(value) = self.engine.wait_for_computation(&flight) {
                        return Ok(value);
                    }
                    key = returned; // released, lapsed, or time to look again
                }
            }
        };
        // On `Err` or a panic, `leader` is dropped here, which hands over.
        let value = compute()?;
        leader.complete(&value, self.engine.ttl());
        Ok(value)
    }

    /// The async form of [`get_or_compute`](Self::get_or_compute), with the
    /// same semantics; waiting callers stay pending (with a registered
    /// waker) instead of blocking a thread. Works under any executor: it
    /// depends on no runtime.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future is safe at any point. A dropped waiter
    /// leaves the flight. A dropped leader (a timeout, a client gone) hands
    /// over like an `Err`: nothing is stored and a waiter takes over. A
    /// leader that is neither polled nor dropped keeps its waiters waiting.
    /// Without a runtime timer, a waiter on an abandoned claim resumes when
    /// something reclaims it after its lease lapses (a claim of the key, a
    /// purge, the background thread), not at the lapse itself.
    ///
    /// # Errors
    ///
    /// The leader's `Err`, returned to the leader only.
    ///
    /// # Examples
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<String, String> = Cache::new();
    /// let receipt = cache
    ///     .get_or_compute_async("key-1".to_string(), || async {
    ///         Ok::<_, std::io::Error>("charged".to_string())
    ///     })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(receipt, "charged");
    /// # }
    /// ```
    pub async fn get_or_compute_async<E, F, Fut>(&self, key: K, compute: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let hash = self.engine.hash(&key);
        let mut caller = Caller::default();
        let mut key = key;
        let leader = loop {
            match Engine::lookup_or_lead(&self.engine, hash, key, &mut caller) {
                Step::Hit(value) => return Ok(value),
                Step::Lead(leader) => break leader,
                Step::Wait(flight, returned) => {
                    if let Ended::Completed(value, _) =
                        flight::wait_async(flight, Until::Free).await
                    {
                        return Ok(value);
                    }
                    key = returned;
                }
            }
        };
        // On `Err`, or if this future is dropped, `leader` is dropped, which
        // hands over.
        let value = compute().await?;
        leader.complete(&value, self.engine.ttl());
        Ok(value)
    }
}

impl<K, V, S> fmt::Debug for Cache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("len", &self.len())
            .field("shards", &self.shard_count())
            .field("time_to_live", &self.time_to_live())
            .field("max_entries", &self.max_entries())
            .field("capacity_policy", &self.capacity_policy())
            .field("clock", &self.engine.describe_clock())
            .finish_non_exhaustive()
    }
}
