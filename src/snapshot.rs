//! Snapshots: a cache's completed records as plain data, to carry them
//! across a restart.
//!
//! A [`Snapshot`] holds every live completed record (key, value,
//! fingerprint) with its deadline as **wall-clock** time: an `Instant`
//! means nothing in the next process, a `SystemTime` does. Claims and
//! computations in progress are not records and are not saved: their
//! clients get no response from the old process and retry, and the retry
//! claims the key afresh in the new one.
//!
//! The `persistence` feature adds a file format (`Snapshot::save_to`,
//! `Snapshot::load_from`, `Cache::save_to`, `Cache::load_from`) and
//! periodic snapshots (`CacheBuilder::snapshot_every`); without it a
//! snapshot is still `Serialize + Deserialize` (with the `serde` feature)
//! for any format you like.
//!
//! ```
//! use std::time::Duration;
//! use idemcache::Cache;
//!
//! let old: Cache<String, u64> = Cache::builder()
//!     .time_to_live(Duration::from_secs(3600))
//!     .build()?;
//! old.insert("charge-1".to_string(), 4200);
//! let snapshot = old.snapshot();
//!
//! // ... in the next process:
//! let new: Cache<String, u64> = Cache::builder()
//!     .time_to_live(Duration::from_secs(3600))
//!     .build()?;
//! let report = new.restore(snapshot);
//! assert_eq!(report.restored, 1);
//! assert_eq!(new.get("charge-1"), Some(4200));
//! # Ok::<(), idemcache::BuildError>(())
//! ```

use std::hash::{BuildHasher, Hash};
use std::time::SystemTime;

use crate::{Cache, Fingerprint};

/// One completed record of a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SnapshotEntry<K, V> {
    /// The idempotency key.
    pub key: K,
    /// The stored result.
    pub value: V,
    /// The request fingerprint the record was completed with, if any; a
    /// restored record keeps catching a key reused with another request.
    pub fingerprint: Option<Fingerprint>,
    /// When the record expires, in wall-clock time.
    pub expires_at: SystemTime,
}

/// The live completed records of a cache at one moment, with wall-clock
/// deadlines; see [Surviving restarts](crate#surviving-restarts) and
/// [`Cache::snapshot`].
///
/// `Serialize + Deserialize` (with the `serde` feature) when `K` and `V`
/// are, so it can go through any serde format; with the `persistence`
/// feature, `save_to` and `load_from` write and read a versioned,
/// checksummed file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Snapshot<K, V> {
    taken_at: SystemTime,
    entries: Vec<SnapshotEntry<K, V>>,
}

impl<K, V> Snapshot<K, V> {
    /// A snapshot of `entries`, taken at `taken_at`: for moving records in
    /// from another store. Entries may be in any order; expired ones and
    /// repeated keys are sorted out by [`Cache::restore`].
    pub fn new(taken_at: SystemTime, entries: Vec<SnapshotEntry<K, V>>) -> Self {
        Snapshot { taken_at, entries }
    }

    /// When the snapshot was taken (wall-clock time, as the cache's clock
    /// saw it).
    pub fn taken_at(&self) -> SystemTime {
        self.taken_at
    }

    /// The records, in no particular order.
    pub fn entries(&self) -> &[SnapshotEntry<K, V>] {
        &self.entries
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the snapshot holds no record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records, in no particular order.
    pub fn iter(&self) -> std::slice::Iter<'_, SnapshotEntry<K, V>> {
        self.entries.iter()
    }

    /// The records, by value.
    pub fn into_entries(self) -> Vec<SnapshotEntry<K, V>> {
        self.entries
    }
}

impl<K, V> IntoIterator for Snapshot<K, V> {
    type Item = SnapshotEntry<K, V>;
    type IntoIter = std::vec::IntoIter<SnapshotEntry<K, V>>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, K, V> IntoIterator for &'a Snapshot<K, V> {
    type Item = &'a SnapshotEntry<K, V>;
    type IntoIter = std::slice::Iter<'a, SnapshotEntry<K, V>>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

/// What [`Cache::restore`] did with each record of a snapshot. The four
/// counts add up to the snapshot's length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Records stored, each with the deadline it had in the snapshot.
    pub restored: usize,
    /// Records whose deadline had passed (by the restoring cache's clock).
    pub skipped_expired: usize,
    /// Records whose key the cache already holds (a live entry, or a claim
    /// or computation in progress), which is newer than any snapshot of
    /// it; also later duplicates of a key within the snapshot.
    pub skipped_present: usize,
    /// Records refused because the cache was full: a restore never evicts
    /// a live entry. The records kept are those with the latest deadlines.
    pub refused_capacity: usize,
}

/// Clones a record out of the cache; a function pointer, so that periodic
/// snapshots can be set up before the cache's hasher type is known.
pub(crate) fn copy_record<K: Clone, V: Clone>(key: &K, value: &V) -> (K, V) {
    (key.clone(), value.clone())
}

impl<K, V, S> Cache<K, V, S>
where
    K: Clone,
    V: Clone,
{
    /// Every live completed record, with its value, fingerprint and
    /// wall-clock deadline. Claims and computations in progress are not
    /// included, nor are expired entries.
    ///
    /// Shards are copied one at a time, in batches of slots, each batch
    /// under the shard's lock (keys and values are cloned there: wrap large
    /// values in `Arc`), so requests wait microseconds, not the time to copy
    /// a shard. Every record that is neither written nor removed while the
    /// snapshot runs is in it exactly once. A record written meanwhile may
    /// be missing, or be there twice (its old and new versions: a
    /// [restore](Cache::restore) keeps the one with the later deadline).
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<&str, u32> = Cache::new();
    /// cache.insert("a", 1);
    /// let snapshot = cache.snapshot();
    /// assert_eq!(snapshot.len(), 1);
    /// assert_eq!(snapshot.entries()[0].key, "a");
    /// assert!(snapshot.entries()[0].expires_at > snapshot.taken_at());
    /// ```
    pub fn snapshot(&self) -> Snapshot<K, V> {
        self.shared.take_snapshot(copy_record::<K, V>)
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// Loads the records of `snapshot`, each with the deadline it had, and
    /// reports what happened to each (see [`RestoreReport`]).
    ///
    /// - Records whose deadline has passed are skipped.
    /// - A key the cache already holds (live, or claimed or being computed)
    ///   keeps its newer state.
    /// - `max_entries` is respected and nothing live is evicted: expired
    ///   entries are purged first, and when the records do not all fit,
    ///   those with the latest deadlines are kept.
    /// - Fingerprints come back with their records, so a restored record
    ///   still answers [`Claim::Mismatch`](crate::Claim::Mismatch) to a
    ///   reused key, and [`Claim::Completed`](crate::Claim::Completed) to a
    ///   retry.
    ///
    /// Restore before serving requests: a claim made before its key is
    /// restored wins over the snapshot's record.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    /// use idemcache::clock::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// let old: Cache<u32, u32> = Cache::builder().clock(clock.clone()).build()?;
    /// old.insert_with_ttl(1, 10, Duration::from_secs(60));
    /// old.insert_with_ttl(2, 20, Duration::from_secs(3600));
    /// let snapshot = old.snapshot();
    ///
    /// clock.advance(Duration::from_secs(120)); // a slow restart
    /// let new: Cache<u32, u32> = Cache::builder().clock(clock.clone()).build()?;
    /// let report = new.restore(snapshot);
    /// assert_eq!((report.restored, report.skipped_expired), (1, 1));
    /// assert_eq!(new.get(&2), Some(20));
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn restore(&self, snapshot: Snapshot<K, V>) -> RestoreReport {
        self.shared.restore(snapshot)
    }
}
