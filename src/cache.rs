//! The cache handle and the state its clones share.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::ops::Deref;
use std::time::Duration;

use crate::builder::{CacheBuilder, CapacityPolicy};
use crate::clock::{TimeSource, duration_to_nanos, system_time_after};
use crate::flight::{self, Ended, Flight, NO_LEASE, Outcome};
use crate::reaper::{Reap, Reaper};
use crate::shard::{Graveyard, Lapsed, Limit, Lookup, Restored, Shard, WriteKey, WriteResult};
use crate::snapshot::{RestoreReport, Snapshot, SnapshotEntry};
use crate::stats::Stats;
use crate::sync::{Arc, Mutex, thread};

/// Queue items a purge (explicit or by the reaper) looks at per lock hold,
/// so that no shard is locked for long.
const PURGE_BATCH: usize = 256;

/// Slab slots a snapshot copies per lock hold, for the same reason.
const SNAPSHOT_BATCH: usize = 128;

/// An expiring, sharded, concurrent map from idempotency keys to results,
/// with single-flight computation.
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
/// (`get`, `contains_key`, `remove`, `get_or_compute`), whether or not it has
/// been reclaimed yet. Expired entries still count in [`len`](Self::len)
/// until they are reclaimed: by writes to their shard (a few per write),
/// by [`purge_expired`](Self::purge_expired), or by the background reaper.
///
/// # Capacity
///
/// With [`max_entries`](CacheBuilder::max_entries), [`len`](Self::len) never
/// exceeds the bound. A write of a new key into a full cache first reclaims
/// an expired entry of its shard, else evicts the live entry of its shard
/// with the soonest deadline (the oldest write among equal deadlines);
/// with one shard that is exactly the soonest in the cache. If the written
/// shard has no entry at all, room is made in another shard the same way.
/// The entry being written is never the one evicted, and computations in
/// progress are not entries: they are never evicted and do not count.
pub struct Cache<K, V, S = ahash::RandomState> {
    pub(crate) shared: Arc<Shared<K, V, S>>,
    /// Shared by handles only (the reaper holds `shared`, not this), so it
    /// is dropped with the last handle, which stops the reaper.
    lifetime: Arc<Lifetime>,
}

struct Lifetime {
    /// Taken (stopped and joined) by `shutdown`, or dropped with the last
    /// handle.
    reaper: Mutex<Option<Reaper>>,
}

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

/// The state all handles of one cache share.
pub(crate) struct Shared<K, V, S> {
    shards: Box<[ShardLock<K, V>]>,
    pub(crate) hasher: S,
    time: TimeSource,
    /// Default time-to-live in nanoseconds.
    pub(crate) ttl: u64,
    time_to_live: Duration,
    /// Claim lease in nanoseconds.
    pub(crate) lease: u64,
    lease_duration: Duration,
    pub(crate) limit: Option<Limit>,
    #[cfg(feature = "persistence")]
    pub(crate) persistence: crate::persistence::Persistence<K, V>,
}

/// The validated configuration a cache is built from.
pub(crate) struct Settings {
    pub(crate) shards: usize,
    pub(crate) time_to_live: Duration,
    pub(crate) max_entries: Option<usize>,
    pub(crate) lease: Duration,
    pub(crate) capacity_policy: CapacityPolicy,
}

/// How a write through a flight ended.
pub(crate) enum Stored<V> {
    /// Stored, live until `expires_at` (cache time).
    Yes { expires_at: u64 },
    /// Not stored: invalidated while in flight, or refused by a full cache.
    /// Callers still receive the value; it expires at once (`now`).
    No { now: u64 },
    /// The flight is no longer the key's: the value comes back.
    Fenced(V),
}

impl<K, V> Cache<K, V, ahash::RandomState> {
    /// A builder with the default configuration (see [`CacheBuilder`]).
    pub fn builder() -> CacheBuilder<K, V, ahash::RandomState> {
        CacheBuilder::new()
    }
}

impl<K, V> Cache<K, V, ahash::RandomState>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// A cache with the default configuration: 24 h time-to-live, unbounded,
    /// no background thread.
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
            shared: Arc::clone(&self.shared),
            lifetime: Arc::clone(&self.lifetime),
        }
    }
}

impl<K, V, S> Cache<K, V, S> {
    pub(crate) fn from_parts(shared: Arc<Shared<K, V, S>>, reaper: Option<Reaper>) -> Self {
        Self {
            shared,
            lifetime: Arc::new(Lifetime {
                reaper: Mutex::new(reaper),
            }),
        }
    }

    /// The default time-to-live of entries.
    pub fn time_to_live(&self) -> Duration {
        self.shared.time_to_live
    }

    /// How long a claim holds its key unless renewed.
    pub fn lease(&self) -> Duration {
        self.shared.lease_duration
    }

    /// The bound on entries, if any.
    pub fn max_entries(&self) -> Option<usize> {
        self.shared.limit.as_ref().map(Limit::max)
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shared.shards.len()
    }

    /// The number of entries stored, including expired entries that have
    /// not been reclaimed yet. Exact when no other thread is writing; after
    /// [`purge_expired`](Self::purge_expired) it counts live entries only.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u32, u32> = Cache::new();
    /// cache.insert(1, 10);
    /// cache.insert(1, 11);
    /// cache.insert(2, 20);
    /// assert_eq!(cache.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        match &self.shared.limit {
            // From the bound's counters: never above the bound, even while
            // other threads move room between shards (a sum over shards,
            // read one shard at a time, could be), and exact when writes
            // are done. Claims in progress hold room but are not entries.
            Some(limit) => limit.entries(),
            None => self.shared.stored_entries(),
        }
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache's counters, summed over shards.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for shard in self.shared.shards.iter() {
            total.merge(&shard.lock().stats);
        }
        total
    }

    /// Stops the cache's background thread (if it has one) after the work
    /// it is doing, then, if the cache has a
    /// [periodic snapshot](CacheBuilder::snapshot_every), saves a final one
    /// and returns how that went. Call it on the way out of a graceful
    /// shutdown (after the server stops taking requests): records
    /// completed since the last periodic save would otherwise be lost.
    ///
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
    /// cache.shutdown()?; // the reaper thread is joined here
    /// assert_eq!(cache.get("key").as_deref(), Some("value"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self) -> Result<(), crate::SnapshotError> {
        let reaper = self.lifetime.reaper.lock().take();
        drop(reaper); // stops and joins the thread, outside the lock
        #[cfg(feature = "persistence")]
        return self.shared.persistence.save_periodic(&self.shared);
        #[cfg(not(feature = "persistence"))]
        Ok(())
    }

    /// How the [periodic snapshots](CacheBuilder::snapshot_every) are
    /// going; `None` when the cache has none.
    #[cfg(feature = "persistence")]
    pub fn snapshot_status(&self) -> Option<crate::SnapshotStatus> {
        let periodic = self.shared.persistence.periodic.as_ref();
        periodic.map(crate::persistence::Periodic::status)
    }

    /// Removes every entry. Computations in progress are not cancelled, but
    /// their results will not be stored (their callers still receive them).
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
        for shard in self.shared.shards.iter() {
            let (count, removed) = shard.lock().clear();
            self.shared.release(count);
            drop(removed); // after unlocking: user `Drop` runs unlocked
        }
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
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
    {
        let hash = self.shared.hash(key);
        let now = self.shared.time.now_for_reads();
        let mut shard = self.shared.shard(hash).lock();
        let value = shard.get_live(hash, key, now).cloned();
        match value {
            Some(_) => shard.stats.hits += 1,
            None => shard.stats.misses += 1,
        }
        value
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
        let hash = self.shared.hash(key);
        let now = self.shared.time.now_for_reads();
        self.shared
            .shard(hash)
            .lock()
            .get_live(hash, key, now)
            .is_some()
    }

    /// Stores `value` under `key` with the cache's time-to-live, replacing
    /// any previous value. If a computation of `key` is in progress, its
    /// result will not overwrite this value.
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
        self.shared.insert(key, value, self.shared.ttl);
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
        self.shared
            .insert(key, value, duration_to_nanos(time_to_live));
    }

    /// Removes `key`, returning its value if it was live. An expired entry is
    /// removed too, but its value is not returned. A computation of `key` in
    /// progress is not cancelled, but its result will not be stored.
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
        let hash = self.shared.hash(key);
        let now = self.shared.time.now_for_reads();
        let removed = self.shared.shard(hash).lock().remove(hash, key)?;
        self.shared.release(1);
        // Dropped (key, and value if expired) after the lock is released.
        (now < removed.deadline).then_some(removed.value)
    }

    /// Reclaims every expired entry now, in bounded batches (no shard is
    /// locked for long), and returns how many it removed.
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
        self.shared.purge(&|| false)
    }

    /// Whether an entry for `key` is stored, live or expired. For the
    /// model-based tests, which must learn which expired entries have been
    /// reclaimed; not part of the stable API.
    #[doc(hidden)]
    pub fn __is_stored<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.shared.hash(key);
        self.shared.shard(hash).lock().is_stored(hash, key)
    }

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
    ///   (errors are never shared or cached). A panic in `compute`
    ///   propagates to the leader's caller and hands over the same way;
    ///   nothing is poisoned.
    /// - `compute` runs with no lock held: it may use the cache freely for
    ///   other keys. Calling `get_or_compute` for the *same* key from inside
    ///   `compute` deadlocks, as it would wait for itself.
    /// - A [`remove`](Self::remove), [`clear`](Self::clear) or newer
    ///   [`insert`](Self::insert) of `key` while `compute` runs wins: the
    ///   leader and its waiters still receive the computed value, but it is
    ///   not stored over the newer state.
    ///
    /// Flights are per key, not per error type: callers with different `E`
    /// share one flight.
    ///
    /// This call blocks the thread while waiting; in async code use
    /// [`get_or_compute_async`](Self::get_or_compute_async).
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
        let hash = self.shared.hash(&key);
        let mut caller = Caller::default();
        let mut key = key;
        let leader = loop {
            match self.shared.lookup_or_lead(hash, key, &mut caller) {
                Step::Hit(value) => return Ok(value),
                Step::Lead(leader) => break leader,
                Step::Wait(flight, returned) => {
                    // A claim's lease can lapse without anyone ending its
                    // flight: wake in time to take it over.
                    let recheck = self.shared.recheck_after(&flight);
                    match flight.wait(recheck) {
                        Ended::Completed(value, _) => return Ok(value),
                        // Abandoned: try to lead. Timed out: look again.
                        Ended::Abandoned | Ended::TimedOut => key = returned,
                    }
                }
            }
        };
        // On `Err` or a panic, `leader` is dropped here, which hands over.
        let value = compute()?;
        Ok(leader.complete(value))
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
        let hash = self.shared.hash(&key);
        let mut caller = Caller::default();
        let mut key = key;
        let leader = loop {
            match self.shared.lookup_or_lead(hash, key, &mut caller) {
                Step::Hit(value) => return Ok(value),
                Step::Lead(leader) => break leader,
                Step::Wait(flight, returned) => match flight::wait_async(flight).await {
                    Ended::Completed(value, _) => return Ok(value),
                    Ended::Abandoned | Ended::TimedOut => key = returned,
                },
            }
        };
        // On `Err`, or if this future is dropped, `leader` is dropped, which
        // hands over.
        let value = compute().await?;
        Ok(leader.complete(value))
    }
}

impl<K, V, S> fmt::Debug for Cache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("len", &self.len())
            .field("shards", &self.shard_count())
            .field("time_to_live", &self.time_to_live())
            .field("max_entries", &self.max_entries())
            .field("clock", &self.shared.time.describe())
            .finish_non_exhaustive()
    }
}

/// What one `get_or_compute` call has been counted as so far, so that a
/// waiter that retries after a failed leader is counted once.
#[derive(Default)]
struct Caller {
    looked_up: bool,
    waited: bool,
}

/// The next step of a `get_or_compute` call.
enum Step<'a, K, V, S> {
    Hit(V),
    Lead(Leader<'a, K, V, S>),
    /// Wait for the flight; the key comes back for a retry if it fails.
    Wait(Arc<Flight<V>>, K),
}

/// The leader's obligation to end its flight. Dropping it without calling
/// [`complete`](Self::complete), on `Err`, panic or a dropped future,
/// abandons the flight: nothing is stored and the waiters retry.
struct Leader<'a, K, V, S> {
    shared: &'a Shared<K, V, S>,
    hash: u64,
    flight: Arc<Flight<V>>,
    done: bool,
}

impl<K, V, S> Leader<'_, K, V, S>
where
    K: Hash + Eq,
    V: Clone,
    S: BuildHasher,
{
    /// Stores `value` (unless the key was invalidated meanwhile), hands it
    /// to the waiters, and returns it to the leader.
    fn complete(mut self, value: V) -> V {
        let stored = self.shared.store(
            self.hash,
            WriteKey::Flight(&self.flight),
            value.clone(),
            self.shared.ttl,
        );
        self.done = true;
        self.shared.finish_stored(&self.flight, stored, &value);
        value
    }
}

impl<K, V, S> Drop for Leader<'_, K, V, S> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.end_flight(self.hash, &self.flight, false);
        }
    }
}

impl<K, V, S> Shared<K, V, S> {
    pub(crate) fn new(settings: Settings, time: TimeSource, hasher: S) -> Self {
        let evicts_live = settings.capacity_policy == CapacityPolicy::EvictSoonest;
        Self {
            shards: (0..settings.shards)
                .map(|_| Padded(Mutex::new(Shard::new())))
                .collect(),
            hasher,
            time,
            ttl: duration_to_nanos(settings.time_to_live),
            time_to_live: settings.time_to_live,
            lease: duration_to_nanos(settings.lease),
            lease_duration: settings.lease,
            limit: settings.max_entries.map(|max| Limit::new(max, evicts_live)),
            #[cfg(feature = "persistence")]
            persistence: crate::persistence::Persistence::new(None),
        }
    }

    /// The current time of the cache's clock (nanoseconds since its epoch).
    pub(crate) fn now(&self) -> u64 {
        self.time.now()
    }

    /// The wall-clock time matching [`now`](Self::now).
    pub(crate) fn system_now(&self) -> std::time::SystemTime {
        self.time.system_now()
    }

    /// How long a blocked waiter may sleep before it must look at a claim's
    /// lease again; `None` when the flight has no lease.
    fn recheck_after(&self, flight: &Flight<V>) -> Option<Duration> {
        let deadline = flight.lease_deadline();
        (deadline != NO_LEASE).then(|| {
            self.time
                .real_time_until(deadline.saturating_sub(self.time.now()))
        })
    }

    /// Ends `flight` without a result, if it is still its key's: frees its
    /// slot (and a claim's unit), counts a release for claims, and wakes
    /// its waiters so one can take over.
    pub(crate) fn end_flight(&self, hash: u64, flight: &Arc<Flight<V>>, released: bool) {
        let key = {
            let mut shard = self.shard(hash).lock();
            let key = shard.abandon_flight(hash, flight, self.limit.as_ref());
            if released && key.is_some() {
                shard.stats.releases += 1;
            }
            key
        };
        drop(key);
        // Ends the flight unless something else (a claim taking over a
        // lapsed lease, a purge) already did.
        flight.finish(Outcome::Abandoned);
    }

    /// Counts a fenced completion or renewal.
    pub(crate) fn count_fenced(&self, hash: u64) {
        self.shard(hash).lock().stats.fenced += 1;
    }

    /// Hands a flight's value to its waiters after [`store`](Self::store).
    pub(crate) fn finish_stored(&self, flight: &Arc<Flight<V>>, stored: Stored<V>, value: &V)
    where
        V: Clone,
    {
        let expires_at = match stored {
            Stored::Yes { expires_at } => expires_at,
            Stored::No { now } => now,
            // Already ended by the claim that took the key over.
            Stored::Fenced(_) => return,
        };
        // If cloning the value for the waiters panics, they are still woken
        // (to retry) rather than left waiting.
        struct EndOnUnwind<'a, V>(&'a Flight<V>);
        impl<V> Drop for EndOnUnwind<'_, V> {
            fn drop(&mut self) {
                self.0.finish(Outcome::Abandoned);
            }
        }
        let guard = EndOnUnwind(flight);
        // The flight has left the shard, so no new waiter can join: if
        // nobody else holds it, nobody can observe the outcome and the clone
        // is skipped.
        let outcome = if Arc::strong_count(flight) > 1 {
            Outcome::Completed {
                value: value.clone(),
                expires_at,
            }
        } else {
            Outcome::Abandoned
        };
        flight.finish(outcome);
        drop(guard); // a no-op now: the first end wins
    }

    /// The shard for `hash`. Uses the bits below hashbrown's 7-bit tag (the
    /// top bits) so shard choice and in-table position stay independent;
    /// the multiply maps them onto any shard count without a division.
    #[inline]
    pub(crate) fn shard_index(&self, hash: u64) -> usize {
        ((u128::from(hash << 7) * self.shards.len() as u128) >> 64) as usize
    }

    #[inline]
    pub(crate) fn shard(&self, hash: u64) -> &Mutex<Shard<K, V>> {
        &self.shards[self.shard_index(hash)]
    }

    /// Copies every live entry into a snapshot, one shard at a time, with
    /// deadlines converted to wall-clock time. `copy` clones a record.
    pub(crate) fn take_snapshot(&self, copy: fn(&K, &V) -> (K, V)) -> Snapshot<K, V> {
        self.take_snapshot_with(copy, || {})
    }

    /// [`take_snapshot`](Self::take_snapshot), calling `between_holds`
    /// after each batch, with no lock held (tests use it to move entries
    /// at exactly that moment).
    fn take_snapshot_with(
        &self,
        copy: fn(&K, &V) -> (K, V),
        mut between_holds: impl FnMut(),
    ) -> Snapshot<K, V> {
        // One reading of both clocks for the whole snapshot, so deadlines
        // keep their order and spacing.
        let now = self.time.now();
        let system_now = self.time.system_now();
        // Sized up front, so that no push reallocates (copies everything
        // copied so far) while a shard is locked.
        let mut entries = Vec::with_capacity(self.stored_entries());
        for shard in self.shards.iter() {
            // In batches of slots, one short lock hold each, so requests
            // to this shard wait microseconds rather than the time to copy
            // it all. Should a compaction move entries between holds, the
            // shard is copied again; after a few, in one hold.
            let first = entries.len();
            let mut from = Some(0);
            let mut layout = None;
            let mut restarts = 0;
            while let Some(start) = from {
                let guard = shard.lock();
                if layout.is_some_and(|seen| seen != guard.layout()) {
                    drop(guard);
                    entries.truncate(first); // user `Drop`, after unlocking
                    restarts += 1;
                    layout = None;
                    from = Some(0);
                    continue;
                }
                layout = Some(guard.layout());
                let batch = if restarts < 3 {
                    SNAPSHOT_BATCH
                } else {
                    usize::MAX
                };
                from = guard.for_each_live(now, start, batch, |entry, fingerprint| {
                    let (key, value) = copy(&entry.key, &entry.value);
                    let left = Duration::from_nanos(entry.deadline - now);
                    entries.push(SnapshotEntry {
                        key,
                        value,
                        fingerprint,
                        expires_at: system_time_after(system_now, left),
                    });
                });
                // Fair: a request waiting for this shard goes next, instead
                // of this loop re-taking the lock at once (parking_lot's
                // default lets it, for up to 0.5 ms).
                crate::sync::unlock_fair(guard);
                between_holds();
            }
        }
        Snapshot::new(system_now, entries)
    }

    /// Entries stored, summed shard by shard (one lock at a time).
    pub(crate) fn stored_entries(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Gives back room for `n` removed entries.
    fn release(&self, n: usize) {
        if let Some(limit) = &self.limit {
            limit.release(n);
        }
    }
}

impl<K, V, S> Shared<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    fn insert(&self, key: K, value: V, ttl: u64) {
        let hash = self.hash(&key);
        self.store(hash, WriteKey::Owned(key), value, ttl);
    }

    /// Stores `value`; see [`Shard::write`]. Loops only when the cache is
    /// full and the written shard has nothing to give up.
    pub(crate) fn store(
        &self,
        hash: u64,
        key: WriteKey<'_, K, V>,
        value: V,
        ttl: u64,
    ) -> Stored<V> {
        let index = self.shard_index(hash);
        let flight = match key {
            WriteKey::Flight(flight) => Some(flight),
            WriteKey::Owned(_) => None,
        };
        let (mut key, mut value) = (key, value);
        loop {
            // Declared before the guard, so dropped after it is released.
            let mut grave = Graveyard::new();
            let now = self.time.now();
            let deadline = now.saturating_add(ttl);
            let result = self.shards[index].lock().write(
                hash,
                key,
                value,
                deadline,
                now,
                self.limit.as_ref(),
                &self.hasher,
                &mut grave,
            );
            match result {
                WriteResult::Stored => {
                    return Stored::Yes {
                        expires_at: deadline,
                    };
                }
                WriteResult::Invalidated => return Stored::No { now },
                WriteResult::Fenced(value) => return Stored::Fenced(value),
                WriteResult::NeedRoom(returned_key, returned_value) => {
                    if !self.make_room_elsewhere(index, now) && self.cannot_make_room() {
                        let mut shard = self.shards[index].lock();
                        shard.stats.refused += 1;
                        let spare_key =
                            flight.and_then(|f| shard.abandon_flight(hash, f, self.limit.as_ref()));
                        drop(shard);
                        drop((spare_key, returned_key, returned_value));
                        return Stored::No { now };
                    }
                    key = match (returned_key, flight) {
                        (Some(owned), _) => WriteKey::Owned(owned),
                        (None, Some(flight)) => WriteKey::Flight(flight),
                        (None, None) => unreachable!("an owned key is always handed back"),
                    };
                    value = returned_value;
                }
            }
        }
    }

    /// See [`Cache::restore`].
    pub(crate) fn restore(&self, snapshot: Snapshot<K, V>) -> RestoreReport {
        // No save may write a half-restored cache over the file.
        #[cfg(feature = "persistence")]
        let _restoring = self.persistence.lock_for_restore();
        let mut report = RestoreReport::default();
        if self.limit.is_some() {
            // Expired entries must not hold room that live records need.
            self.purge(&|| false);
        }
        // Wall-clock deadlines become cache deadlines through one reading
        // of both clocks.
        let now = self.time.now();
        let system_now = self.time.system_now();
        let mut records = Vec::with_capacity(snapshot.len());
        for entry in snapshot {
            match entry.expires_at.duration_since(system_now) {
                Ok(left) if !left.is_zero() => {
                    records.push((now.saturating_add(duration_to_nanos(left)), entry));
                }
                _ => report.skipped_expired += 1,
            }
        }
        // Latest deadlines first: if room runs out, the records kept are
        // those that would have been kept longest, and a key listed twice
        // keeps its latest record.
        records.sort_by_key(|&(deadline, _)| std::cmp::Reverse(deadline));
        for (deadline, entry) in records {
            let hash = self.hash(&entry.key);
            // Declared before the guard: what is not stored is dropped
            // after unlocking.
            let mut grave = Graveyard::new();
            let now = self.time.now();
            let outcome = self.shard(hash).lock().restore(
                hash,
                entry.key,
                entry.value,
                deadline,
                entry.fingerprint,
                now,
                self.limit.as_ref(),
                &self.hasher,
                &mut grave,
            );
            match outcome {
                Restored::Stored => report.restored += 1,
                Restored::Expired => report.skipped_expired += 1,
                Restored::Present => report.skipped_present += 1,
                Restored::Full => report.refused_capacity += 1,
            }
        }
        report
    }

    /// Whether a full cache must refuse rather than wait for room: it never
    /// evicts live records, or every unit of the bound is held by a claim in
    /// progress (claims are never evicted).
    pub(crate) fn cannot_make_room(&self) -> bool {
        self.limit
            .as_ref()
            .is_some_and(|limit| !limit.evicts_live || limit.entries() == 0)
    }

    /// Frees one unit of the bound from a shard other than `written` (an
    /// expired entry, else, if the policy allows, the soonest deadline).
    /// Locks one shard at a time. `false` if no shard could give one up.
    pub(crate) fn make_room_elsewhere(&self, written: usize, now: u64) -> bool {
        let Some(limit) = &self.limit else {
            return true;
        };
        let count = self.shards.len();
        for offset in 1..count {
            let mut grave = Graveyard::new();
            let freed = self.shards[(written + offset) % count].lock().give_up_one(
                now,
                limit.evicts_live,
                &self.hasher,
                &mut grave,
            );
            if freed {
                limit.release(1);
                return true;
            }
        }
        // Units may be held by writes inserting right now under another
        // shard's lock; they will be stored in a moment.
        thread::yield_now();
        false
    }

    /// Purges expired entries shard by shard, `PURGE_BATCH` queue items per
    /// lock hold, asking `stop` between batches. Returns how many it removed.
    fn purge(&self, stop: &dyn Fn() -> bool) -> usize {
        let mut total = 0;
        for shard in self.shards.iter() {
            {
                // Claims whose holders vanished: free their room, tell
                // their waiters (after unlocking, when `grave` drops).
                let mut grave = Graveyard::new();
                let now = self.time.now();
                shard
                    .lock()
                    .end_lapsed_claims(now, self.limit.as_ref(), &mut grave);
            }
            loop {
                let mut grave = Graveyard::new();
                let now = self.time.now();
                let reclaimed = shard.lock().reclaim_due(
                    now,
                    PURGE_BATCH,
                    self.limit.as_ref(),
                    &self.hasher,
                    &mut grave,
                );
                total += reclaimed.entries;
                drop(grave);
                if !reclaimed.more_due {
                    // Give a slab that the purge left mostly empty back to
                    // the allocator.
                    shard.lock().compact(&self.hasher);
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
    fn lookup_or_lead(&self, hash: u64, key: K, caller: &mut Caller) -> Step<'_, K, V, S>
    where
        V: Clone,
    {
        let now = self.time.now_for_reads();
        // Declared before the guard: a lapsed claim taken over here is
        // ended (its waiters woken) after the lock is released.
        let mut lapsed = Lapsed::none();
        let mut shard = self.shard(hash).lock();
        let (lookup, key) = shard.lookup_or_lead(hash, key, now, self.limit.as_ref(), &mut lapsed);
        let first = !std::mem::replace(&mut caller.looked_up, true);
        let stats = &mut shard.stats;
        match lookup {
            Lookup::Hit(value) => {
                if first {
                    stats.hits += 1;
                }
                drop(shard);
                Step::Hit(value)
            }
            Lookup::Join(flight) => {
                if first {
                    stats.misses += 1;
                }
                if !std::mem::replace(&mut caller.waited, true) {
                    stats.coalesced += 1;
                }
                drop(shard);
                Step::Wait(flight, key.expect("a joining caller keeps its key"))
            }
            Lookup::Lead(flight) => {
                if first {
                    stats.misses += 1;
                }
                stats.computations += 1;
                drop(shard);
                Step::Lead(Leader {
                    shared: self,
                    hash,
                    flight,
                    done: false,
                })
            }
        }
    }
}

impl<K, V, S> Reap for Shared<K, V, S>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn reap(&self, stop: &dyn Fn() -> bool) {
        self.purge(stop);
    }

    fn save_snapshot(&self) {
        // Recorded in the status for `Cache::snapshot_status`.
        #[cfg(feature = "persistence")]
        let _ = self.persistence.save_periodic(self);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// One shard, so every key shares one slab; manual time.
    fn one_shard() -> (Cache<u32, u32>, ManualClock) {
        let clock = ManualClock::new();
        let cache = Cache::builder()
            .shards(1)
            .clock(clock.clone())
            .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
            .build()
            .unwrap();
        (cache, clock)
    }

    #[test]
    fn a_snapshot_copied_in_batches_misses_nothing_when_a_compaction_moves_entries() {
        let (cache, clock) = one_shard();
        // Miri is slow: fewer batches there, still several.
        let churn = if cfg!(miri) { 4 } else { 32 } * SNAPSHOT_BATCH as u32;
        for key in 0..churn {
            cache.insert_with_ttl(key, key, Duration::from_secs(1));
        }
        // The records that must be in the snapshot sit in the last slots.
        let stable = churn..churn + 100;
        for key in stable.clone() {
            cache.insert(key, key);
        }
        clock.advance(Duration::from_secs(2));
        let mut holds = 0;
        let snapshot = cache
            .shared
            .take_snapshot_with(crate::snapshot::copy_record, || {
                holds += 1;
                if holds == 1 {
                    // Between the first two holds: reclaim the churn, which
                    // leaves the slab 2% full, so it is compacted and the
                    // stable records move to the first slots.
                    assert_eq!(cache.purge_expired(), churn as usize);
                }
            });
        let mut keys: Vec<u32> = snapshot.iter().map(|e| e.key).collect();
        keys.sort_unstable();
        assert_eq!(keys, stable.collect::<Vec<_>>());
        assert!(holds >= 2, "the shard was copied in several holds");
    }

    #[test]
    fn a_shard_compacted_over_and_over_is_copied_in_one_hold_at_last() {
        let (cache, clock) = one_shard();
        let churn = if cfg!(miri) { 2 } else { 16 } * SNAPSHOT_BATCH as u32;
        let refill = |base: u32| {
            for key in base..base + churn {
                cache.insert_with_ttl(key, key, Duration::from_secs(1));
            }
        };
        refill(1_000_000);
        cache.insert(7, 7);
        let mut round = 0;
        let snapshot = cache
            .shared
            .take_snapshot_with(crate::snapshot::copy_record, || {
                // After every hold: expire, compact and refill (no limit).
                round += 1;
                clock.advance(Duration::from_secs(2));
                cache.purge_expired();
                refill(1_000_000 * (round + 1));
            });
        assert!(snapshot.iter().any(|e| e.key == 7));
    }
}
