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
use std::time::{Duration, SystemTime};

use crate::clock::{Span, system_time_after};
use crate::engine::{Batch, Engine};
use crate::shard::{Restore, Restored};
use crate::{Cache, Fingerprint};

/// Slab slots a snapshot copies per lock hold, so that requests to a shard
/// wait microseconds rather than the time to copy it all.
const SNAPSHOT_BATCH: usize = 128;

/// Batched copies of a shard restarted (because a compaction moved entries
/// between holds) before the shard is copied in one hold.
const MAX_RESTARTS: usize = 3;

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
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use idemcache::{Snapshot, SnapshotEntry};
    ///
    /// let now = SystemTime::now();
    /// let entry = SnapshotEntry { key: "k", value: 1, fingerprint: None, expires_at: now + Duration::from_secs(60) };
    /// let snapshot = Snapshot::new(now, vec![entry]);
    /// assert_eq!(snapshot.len(), 1);
    /// ```
    pub fn new(taken_at: SystemTime, entries: Vec<SnapshotEntry<K, V>>) -> Self {
        Snapshot { taken_at, entries }
    }

    /// When the snapshot was taken (wall-clock time, as the cache's clock
    /// saw it).
    ///
    /// ```
    /// # use idemcache::Cache;
    /// let cache: Cache<u8, u8> = Cache::new();
    /// let snapshot = cache.snapshot();
    /// assert!(snapshot.taken_at() <= std::time::SystemTime::now());
    /// ```
    pub fn taken_at(&self) -> SystemTime {
        self.taken_at
    }

    /// The records, in no particular order.
    ///
    /// ```
    /// # use idemcache::Cache;
    /// let cache: Cache<u8, u8> = Cache::new();
    /// cache.insert(1, 10);
    /// assert_eq!(cache.snapshot().entries()[0].value, 10);
    /// ```
    pub fn entries(&self) -> &[SnapshotEntry<K, V>] {
        &self.entries
    }

    /// The number of records.
    ///
    /// ```
    /// # use idemcache::Cache;
    /// let cache: Cache<u8, u8> = Cache::new();
    /// cache.insert(1, 10);
    /// assert_eq!(cache.snapshot().len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the snapshot holds no record.
    ///
    /// ```
    /// # use idemcache::Cache;
    /// let cache: Cache<u8, u8> = Cache::new();
    /// assert!(cache.snapshot().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records, in no particular order.
    ///
    /// ```
    /// # use idemcache::Cache;
    /// let cache: Cache<u8, u8> = Cache::new();
    /// cache.insert(1, 10);
    /// cache.insert(2, 20);
    /// let total: u32 = cache.snapshot().iter().map(|e| u32::from(e.value)).sum();
    /// assert_eq!(total, 30);
    /// ```
    pub fn iter(&self) -> std::slice::Iter<'_, SnapshotEntry<K, V>> {
        self.entries.iter()
    }

    /// The records, by value.
    ///
    /// ```
    /// # use idemcache::Cache;
    /// let cache: Cache<u8, String> = Cache::new();
    /// cache.insert(1, "receipt".to_string());
    /// let entries = cache.snapshot().into_entries();
    /// assert_eq!(entries[0].value, "receipt");
    /// ```
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
        take_snapshot(&self.engine, copy_record::<K, V>, || {})
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
        let _restoring = self.engine.snapshot_lock.lock();
        restore(&self.engine, snapshot)
    }
}

/// Copies every live entry into a snapshot, one shard at a time, in
/// batches of slots, with deadlines converted to wall-clock time. `copy`
/// clones a record; `between_holds` runs after each batch with no lock
/// held (tests use it to move entries at exactly that moment).
pub(crate) fn take_snapshot<K, V, S>(
    engine: &Engine<K, V, S>,
    copy: fn(&K, &V) -> (K, V),
    mut between_holds: impl FnMut(),
) -> Snapshot<K, V> {
    // One reading of both clocks for the whole snapshot, so deadlines
    // keep their order and spacing.
    let now = engine.now();
    let system_now = engine.system_now();
    // Sized up front, so that no push reallocates (copies everything
    // copied so far) while a shard is locked.
    let mut entries = Vec::with_capacity(engine.stored_entries());
    for index in 0..engine.shard_count() {
        // Should a compaction move entries between holds, the shard is
        // copied again; after a few restarts, in one hold.
        let first = entries.len();
        let mut from = Some(0);
        let mut layout = None;
        let mut restarts = 0;
        while let Some(start) = from {
            let batch = if restarts < MAX_RESTARTS {
                SNAPSHOT_BATCH
            } else {
                usize::MAX
            };
            let copied =
                engine.copy_live_batch(index, layout, start, batch, now, |entry, fingerprint| {
                    let (key, value) = copy(&entry.key, &entry.value);
                    let left: Duration = now.until(entry.deadline);
                    entries.push(SnapshotEntry {
                        key,
                        value,
                        fingerprint,
                        expires_at: system_time_after(system_now, left),
                    });
                });
            match copied {
                Batch::Restart => {
                    entries.truncate(first); // user `Drop`, with no lock held
                    restarts += 1;
                    layout = None;
                    from = Some(0);
                    continue;
                }
                Batch::Copied { layout: seen, next } => {
                    layout = Some(seen);
                    from = next;
                }
            }
            between_holds();
        }
    }
    Snapshot::new(system_now, entries)
}

/// See [`Cache::restore`]. The caller holds the engine's snapshot lock.
fn restore<K, V, S>(engine: &Engine<K, V, S>, snapshot: Snapshot<K, V>) -> RestoreReport
where
    K: Hash + Eq,
    S: BuildHasher,
{
    let mut report = RestoreReport::default();
    if engine.max_entries().is_some() {
        // Expired entries must not hold room that live records need.
        engine.purge(&|| false);
    }
    // Wall-clock deadlines become cache deadlines through one reading of
    // both clocks.
    let now = engine.now();
    let system_now = engine.system_now();
    let mut records = Vec::with_capacity(snapshot.len());
    for entry in snapshot {
        match entry.expires_at.duration_since(system_now) {
            Ok(left) if !left.is_zero() => {
                records.push((now.after(Span::from_duration(left)), entry));
            }
            _ => report.skipped_expired += 1,
        }
    }
    // Latest deadlines first: if room runs out, the records kept are those
    // that would have been kept longest, and a key listed twice keeps its
    // latest record.
    records.sort_by_key(|&(deadline, _)| std::cmp::Reverse(deadline));
    for (deadline, entry) in records {
        let record = Restore {
            hash: engine.hash(&entry.key),
            key: entry.key,
            value: entry.value,
            deadline,
            fingerprint: entry.fingerprint,
        };
        match engine.restore_record(record) {
            Some(Restored::Stored) => report.restored += 1,
            Some(Restored::Expired) => report.skipped_expired += 1,
            Some(Restored::Present) => report.skipped_present += 1,
            None => report.refused_capacity += 1,
        }
    }
    report
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
        let snapshot = take_snapshot(&cache.engine, copy_record, || {
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
        let snapshot = take_snapshot(&cache.engine, copy_record, || {
            // After every hold: expire, compact and refill (no limit).
            round += 1;
            clock.advance(Duration::from_secs(2));
            cache.purge_expired();
            refill(1_000_000 * (round + 1));
        });
        assert!(snapshot.iter().any(|e| e.key == 7));
    }
}
