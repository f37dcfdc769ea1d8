//! Cache counters.

/// A snapshot of a cache's counters since it was built.
///
/// Counters are kept per shard under the shard lock (no shared atomic on the
/// read path) and summed by [`Cache::stats`](crate::Cache::stats). The sum is
/// taken shard by shard, so under concurrent use it is a recent view, not an
/// instant one.
///
/// # Examples
///
/// ```
/// use idemcache::Cache;
///
/// let cache: Cache<&str, u32> = Cache::new();
/// cache.insert("a", 1);
/// cache.get("a");
/// cache.get("b");
/// let stats = cache.stats();
/// assert_eq!((stats.inserts, stats.hits, stats.misses), (1, 1, 1));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// Lookups (`get`, `get_or_compute`) that found a live value.
    pub hits: u64,
    /// Lookups that found no live value (a `get_or_compute` caller counts
    /// once, whether it then computes or waits).
    pub misses: u64,
    /// Values stored: by `insert`, `insert_with_ttl` and successful
    /// computations.
    pub inserts: u64,
    /// Expired entries reclaimed (by writes, `purge_expired`, the reaper,
    /// or to make room in a full cache).
    pub expirations: u64,
    /// Live entries evicted to respect `max_entries`.
    pub evictions: u64,
    /// Closures run by `get_or_compute` and `get_or_compute_async` leaders.
    pub computations: u64,
    /// Callers that waited for another caller's computation instead of
    /// running their own closure.
    pub coalesced: u64,
}

impl Stats {
    /// Adds another set of counters (one shard's) to these.
    pub(crate) fn merge(&mut self, other: &Stats) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.inserts += other.inserts;
        self.expirations += other.expirations;
        self.evictions += other.evictions;
        self.computations += other.computations;
        self.coalesced += other.coalesced;
    }

    /// Fraction of lookups that were hits, or `0.0` before any lookup.
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}
