//! Configuration of a cache before it is built.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::time::Duration;

use crate::background::{Background, Job};
use crate::cache::Cache;
use crate::capacity::CapacityPolicy;
use crate::clock::{Clock, TimeSource};
use crate::engine::{Engine, Settings};
use crate::error::BuildError;
use crate::sync::Arc;

/// Time-to-live used when none is set: 24 hours, the retention Stripe
/// documents for idempotency keys.
pub const DEFAULT_TIME_TO_LIVE: Duration = Duration::from_secs(24 * 3600);

/// The largest shard count a cache accepts.
pub const MAX_SHARDS: usize = 1 << 16;

/// How long a claim holds its key when not renewed: 60 s. Long enough for a
/// typical handler, short enough that a crashed handler's key frees up soon.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// Builds a [`Cache`]; start from [`Cache::builder`].
///
/// | option | default |
/// |---|---|
/// | [`time_to_live`](Self::time_to_live) | 24 h ([`DEFAULT_TIME_TO_LIVE`]) |
/// | [`max_entries`](Self::max_entries) | unbounded |
/// | [`shards`](Self::shards) | `(4 × available cores).next_power_of_two()` |
/// | [`background_eviction`](Self::background_eviction) | off: no thread |
/// | [`lease`](Self::lease) | 60 s ([`DEFAULT_LEASE`]) |
/// | [`capacity_policy`](Self::capacity_policy) | [`CapacityPolicy::Refuse`]: never forget a live record |
/// | [`clock`](Self::clock) | the monotonic clock ([`MonotonicClock`](crate::clock::MonotonicClock)) |
/// | [`hasher`](Self::hasher) | [`ahash::RandomState`] (randomly seeded) |
///
/// Invalid values are reported by [`build`](Self::build) as a [`BuildError`]
/// naming the option, never by a panic.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idemcache::Cache;
///
/// # #[derive(Clone)] struct Receipt;
/// let cache: Cache<String, Receipt> = Cache::builder()
///     .time_to_live(Duration::from_secs(24 * 3600))
///     .max_entries(1_000_000)
///     .shards(64)
///     .background_eviction(Duration::from_secs(1))
///     .build()?;
/// # Ok::<(), idemcache::BuildError>(())
/// ```
#[must_use = "a builder does nothing until .build() is called"]
pub struct CacheBuilder<K, V, S = ahash::RandomState> {
    time_to_live: Duration,
    max_entries: Option<usize>,
    shards: Option<usize>,
    background_eviction: Option<Duration>,
    lease: Duration,
    capacity_policy: CapacityPolicy,
    time: Option<TimeSource>,
    hasher: S,
    #[cfg(feature = "persistence")]
    snapshot: Option<crate::persistence::SnapshotSchedule<K, V>>,
    /// A snapshot section of a configuration given to
    /// [`config`](Self::config), which cannot apply it.
    #[cfg(feature = "persistence")]
    unapplied_snapshot: bool,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> CacheBuilder<K, V, ahash::RandomState> {
    pub(crate) fn new() -> Self {
        Self {
            time_to_live: DEFAULT_TIME_TO_LIVE,
            max_entries: None,
            shards: None,
            background_eviction: None,
            lease: DEFAULT_LEASE,
            capacity_policy: CapacityPolicy::default(),
            time: None,
            hasher: ahash::RandomState::new(),
            #[cfg(feature = "persistence")]
            snapshot: None,
            #[cfg(feature = "persistence")]
            unapplied_snapshot: false,
            _types: PhantomData,
        }
    }
}

impl<K, V, S> CacheBuilder<K, V, S> {
    /// How long an entry stays live after it is written, unless written with
    /// [`Cache::insert_with_ttl`]. An entry written at `t` is returned while
    /// `now < t + time_to_live` and never after. Must be non-zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .time_to_live(Duration::from_secs(7 * 24 * 3600)) // keep outcomes a week
    ///     .build()?;
    /// assert_eq!(cache.time_to_live(), Duration::from_secs(7 * 24 * 3600));
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn time_to_live(mut self, time_to_live: Duration) -> Self {
        self.time_to_live = time_to_live;
        self
    }

    /// A hard bound on the number of entries (see [`Cache`]'s "Capacity"
    /// section for what a full cache evicts). Must be at least 1. Unbounded
    /// by default.
    ///
    /// ```
    /// use idemcache::{BuildError, Cache};
    ///
    /// let cache: Cache<String, String> = Cache::builder().max_entries(1_000_000).build()?;
    /// assert_eq!(cache.max_entries(), Some(1_000_000));
    /// let zero = Cache::<String, String>::builder().max_entries(0).build();
    /// assert_eq!(zero.unwrap_err(), BuildError::ZeroMaxEntries);
    /// # Ok::<(), BuildError>(())
    /// ```
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = Some(max_entries);
        self
    }

    /// Number of independently locked shards. More shards mean less lock
    /// contention between threads; any count from 1 to [`MAX_SHARDS`] works
    /// (a power of two is not required).
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u64, u64> = Cache::builder().shards(12).build()?;
    /// assert_eq!(cache.shard_count(), 12);
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Starts a background thread, named `idemcache-reaper`, that purges
    /// expired entries every `interval` in bounded batches. It stops when the
    /// last handle of the cache is dropped. Without this option no thread is
    /// ever started: writes reclaim expired entries as they go.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u64, u64> = Cache::builder()
    ///     .background_eviction(Duration::from_secs(1))
    ///     .build()?;
    /// cache.shutdown()?; // joins the thread (dropping the last handle does too)
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn background_eviction(mut self, interval: Duration) -> Self {
        self.background_eviction = Some(interval);
        self
    }

    /// Saves a [snapshot](Cache::snapshot) of the cache to `path` every
    /// `interval`, on the background thread (started for it if
    /// [`background_eviction`](Self::background_eviction) did not), and a
    /// final one on [`Cache::shutdown`]. Each save replaces the file
    /// atomically ([`Snapshot::save_to`](crate::Snapshot::save_to)); a
    /// failed save is recorded in [`Cache::snapshot_status`] and tried
    /// again at the next interval.
    ///
    /// **What a crash can lose:** records completed after the last
    /// successful save, so up to `interval` of them plus the time a save
    /// takes, while saves succeed (watch [`Cache::snapshot_status`]: saves
    /// that fail or are skipped widen the window). A graceful stop that
    /// calls [`Cache::shutdown`] loses none.
    ///
    /// Load the file back with [`Cache::load_from`]`(path)` when the
    /// process starts, before serving. Until this cache has loaded that
    /// file (or saved to `path` explicitly with [`Cache::save_to`]),
    /// periodic and shutdown saves do not replace an existing file at
    /// `path`: they are skipped with
    /// [`SnapshotError::WouldOverwrite`](crate::SnapshotError::WouldOverwrite)
    /// (counted in [`SnapshotStatus::skipped`](crate::SnapshotStatus::skipped)),
    /// so a service that forgot to load, whose load failed, or that
    /// restored something else does not erase the previous run's records.
    /// No save runs while a restore does, and saves of one cache never
    /// overtake each other. Each save copies and writes the whole cache:
    /// intervals of seconds suit it.
    ///
    /// Keys' and values' `Hash`, `Eq`, `Clone`, `Serialize` and `Drop` must
    /// not call this cache's `save_to`, `load_from`, `restore` or
    /// `shutdown`: those wait for the save or restore in progress, which
    /// would be waiting for them.
    ///
    /// `interval` must be non-zero, and `path` must name a file in an
    /// existing directory; [`build`](Self::build) checks both and makes
    /// `path` absolute (a later change of working directory does not move
    /// the snapshots).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    ///
    /// let dir = std::env::temp_dir().join(format!("idemcache-doc-every-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("records.snapshot");
    ///
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .snapshot_every(&path, Duration::from_secs(10))
    ///     .build()?;
    /// match cache.load_from(&path) {
    ///     Ok(report) => println!("restored {} records", report.restored),
    ///     Err(e) if e.is_not_found() => {} // first start
    ///     Err(e) => return Err(e.into()),
    /// }
    /// cache.insert("key".to_string(), "receipt".to_string());
    /// cache.shutdown()?; // final snapshot
    /// assert_eq!(cache.snapshot_status().unwrap().last_saved_records, 1);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "persistence")]
    #[cfg_attr(docsrs, doc(cfg(feature = "persistence")))]
    pub fn snapshot_every(mut self, path: impl AsRef<std::path::Path>, interval: Duration) -> Self
    where
        K: Clone + serde::Serialize,
        V: Clone + serde::Serialize,
    {
        self.snapshot = Some(crate::persistence::SnapshotSchedule::new(
            path.as_ref().to_path_buf(),
            interval,
        ));
        self
    }

    /// How long a [claim](Cache::claim) holds its key before another claim
    /// may take it over, unless renewed with
    /// [`Reservation::renew`](crate::Reservation::renew). Separate from the
    /// time-to-live, which is how long the completed record is kept.
    /// Default: [`DEFAULT_LEASE`] (60 s). Must be non-zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    ///
    /// // Handlers take up to 10 s: a 30 s lease, renewed by the slow ones.
    /// let cache: Cache<String, String> = Cache::builder().lease(Duration::from_secs(30)).build()?;
    /// assert_eq!(cache.lease(), Duration::from_secs(30));
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// What a full bounded cache does when no expired entry or lapsed claim
    /// can be reclaimed: refuse (the default, idempotency-safe) or evict
    /// the soonest deadline (pure cache use only). See [`CapacityPolicy`].
    ///
    /// ```
    /// use idemcache::{Cache, CapacityPolicy};
    ///
    /// // A plain cache of computed values, where forgetting early is fine:
    /// let cache: Cache<u64, u64> = Cache::builder()
    ///     .max_entries(1_000)
    ///     .capacity_policy(CapacityPolicy::EvictSoonest)
    ///     .build()?;
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn capacity_policy(mut self, policy: CapacityPolicy) -> Self {
        self.capacity_policy = policy;
        self
    }

    /// Takes every cache option from `config` (a
    /// [`CacheConfig`](crate::CacheConfig) loaded from a file, say); options
    /// it leaves unset keep the builder's defaults. Values are checked by
    /// [`build`](Self::build).
    ///
    /// A `[snapshot]` section needs serializable keys and values, which
    /// this method cannot require of every cache: use
    /// [`config_with_snapshots`](Self::config_with_snapshots) for it.
    /// Given one here, `build` fails with
    /// [`BuildError::SnapshotNotApplied`] rather than ignore it.
    ///
    /// ```
    /// use idemcache::{Cache, CacheConfig};
    ///
    /// let config: CacheConfig = serde_json::from_str(r#"{ "max_entries": 1000 }"#)?;
    /// let cache: Cache<String, String> = Cache::builder().config(&config).build()?;
    /// assert_eq!(cache.max_entries(), Some(1000));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn config(mut self, config: &crate::CacheConfig) -> Self {
        self.time_to_live = config.time_to_live;
        self.max_entries = config.max_entries;
        self.shards = config.shards;
        self.background_eviction = config.background_eviction;
        self.lease = config.lease;
        self.capacity_policy = config.capacity_policy;
        #[cfg(feature = "persistence")]
        {
            self.unapplied_snapshot = config.snapshot.is_some();
        }
        self
    }

    /// [`config`](Self::config), and the configuration's `[snapshot]`
    /// section, if any, as [`snapshot_every`](Self::snapshot_every).
    ///
    /// ```
    /// use idemcache::{Cache, CacheConfig};
    ///
    /// # let dir = std::env::temp_dir().join(format!("idemcache-doc-cfgsnap-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let config: CacheConfig = toml::from_str(&format!(r#"
    ///     time_to_live = "24h"
    ///     [snapshot]
    ///     path = "{}"
    ///     every = "10s"
    /// "#, dir.join("records.snapshot").display()))?;
    /// let cache: Cache<String, String> = Cache::builder().config_with_snapshots(&config).build()?;
    /// assert!(cache.snapshot_status().is_some());
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "persistence")]
    #[cfg_attr(docsrs, doc(cfg(feature = "persistence")))]
    pub fn config_with_snapshots(self, config: &crate::CacheConfig) -> Self
    where
        K: Clone + serde::Serialize,
        V: Clone + serde::Serialize,
    {
        let mut builder = self.config(config);
        builder.unapplied_snapshot = false;
        match &config.snapshot {
            Some(snapshot) => builder.snapshot_every(&snapshot.path, snapshot.every),
            None => builder,
        }
    }

    /// The clock expiry is measured against. Pass a
    /// [`ManualClock`](crate::clock::ManualClock) in tests to move time by
    /// hand; the cache's type does not change.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    /// use idemcache::clock::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// let cache: Cache<u64, u64> = Cache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build()?;
    /// cache.insert(1, 1);
    /// clock.advance(Duration::from_secs(10));
    /// assert_eq!(cache.get(&1), None);
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.time = Some(TimeSource::from_clock(clock));
        self
    }

    /// The hasher for keys and shard selection, for example a fixed-seed
    /// hasher in tests so runs are reproducible.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u64, u64, ahash::RandomState> = Cache::builder()
    ///     .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
    ///     .build()
    ///     .unwrap();
    /// # cache.insert(1, 1);
    /// ```
    pub fn hasher<S2>(self, hasher: S2) -> CacheBuilder<K, V, S2> {
        CacheBuilder {
            time_to_live: self.time_to_live,
            max_entries: self.max_entries,
            shards: self.shards,
            background_eviction: self.background_eviction,
            lease: self.lease,
            capacity_policy: self.capacity_policy,
            time: self.time,
            hasher,
            #[cfg(feature = "persistence")]
            snapshot: self.snapshot,
            #[cfg(feature = "persistence")]
            unapplied_snapshot: self.unapplied_snapshot,
            _types: PhantomData,
        }
    }

    /// Checks the configuration and builds the cache.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] for a zero `time_to_live`, `max_entries`, `shards` or
    /// eviction interval, more than [`MAX_SHARDS`] shards, or a reaper thread
    /// the operating system would not start.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::{BuildError, Cache};
    ///
    /// let err = Cache::<u64, u64>::builder().lease(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err, BuildError::ZeroLease);
    /// ```
    pub fn build(self) -> Result<Cache<K, V, S>, BuildError>
    where
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
        S: BuildHasher + Send + Sync + 'static,
    {
        if self.time_to_live.is_zero() {
            return Err(BuildError::ZeroTimeToLive);
        }
        if self.max_entries == Some(0) {
            return Err(BuildError::ZeroMaxEntries);
        }
        let shards = match self.shards {
            Some(0) => return Err(BuildError::ZeroShards),
            Some(n) if n > MAX_SHARDS => return Err(BuildError::TooManyShards { requested: n }),
            Some(n) => n,
            None => default_shards(),
        };
        if self.background_eviction.is_some_and(|d| d.is_zero()) {
            return Err(BuildError::ZeroEvictionInterval);
        }
        if self.lease.is_zero() {
            return Err(BuildError::ZeroLease);
        }
        let engine = Arc::new(Engine::new(
            Settings {
                shards,
                time_to_live: self.time_to_live,
                max_entries: self.max_entries,
                lease: self.lease,
                capacity_policy: self.capacity_policy,
            },
            self.time.unwrap_or_else(TimeSource::monotonic),
            self.hasher,
        ));
        let mut jobs = Vec::new();
        if let Some(every) = self.background_eviction {
            let engine = Arc::clone(&engine);
            jobs.push(Job {
                every,
                work: Box::new(move |stop| {
                    engine.purge(stop);
                }),
            });
        }
        #[cfg(feature = "persistence")]
        let snapshots = match self.snapshot {
            _ if self.unapplied_snapshot => return Err(BuildError::SnapshotNotApplied),
            Some(mut schedule) => {
                check_snapshot_schedule(&schedule.path, schedule.interval)?;
                schedule.path = std::path::absolute(&schedule.path).map_err(|_| {
                    BuildError::InvalidSnapshotPath {
                        path: schedule.path.clone(),
                        reason: "it cannot be made absolute",
                    }
                })?;
                let (snapshots, job) = schedule.bind(Arc::clone(&engine));
                jobs.push(job);
                Some(snapshots)
            }
            None => None,
        };
        let background = Background::spawn(jobs).map_err(|e| BuildError::SpawnReaper {
            reason: e.to_string(),
        })?;
        Ok(Cache::from_parts(
            engine,
            background,
            #[cfg(feature = "persistence")]
            snapshots,
        ))
    }
}

/// A periodic snapshot needs a non-zero interval and a file name in an
/// existing directory: checked here so that a typo fails at startup, not
/// at every save.
#[cfg(feature = "persistence")]
fn check_snapshot_schedule(path: &std::path::Path, interval: Duration) -> Result<(), BuildError> {
    if interval.is_zero() {
        return Err(BuildError::ZeroSnapshotInterval);
    }
    let invalid = |reason| BuildError::InvalidSnapshotPath {
        path: path.to_path_buf(),
        reason,
    };
    if path.file_name().is_none() {
        return Err(invalid("the path names no file"));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(invalid("its directory does not exist"));
    }
    if path.is_dir() {
        return Err(invalid("it is a directory"));
    }
    Ok(())
}

/// `(4 × available cores).next_power_of_two()`: enough shards that threads
/// rarely meet on one lock.
fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).next_power_of_two().min(MAX_SHARDS)
}

impl<K, V, S> fmt::Debug for CacheBuilder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("time_to_live", &self.time_to_live)
            .field("max_entries", &self.max_entries)
            .field("shards", &self.shards)
            .field("background_eviction", &self.background_eviction)
            .field("lease", &self.lease)
            .field("capacity_policy", &self.capacity_policy)
            .field(
                "clock",
                &self.time.as_ref().map_or("monotonic", |t| t.describe()),
            )
            .finish_non_exhaustive()
    }
}
