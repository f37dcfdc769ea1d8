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
#[non_exhaustive]
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
    /// Claims that acquired their key ([`Claim::Acquired`](crate::Claim::Acquired)).
    pub acquired: u64,
    /// Claims answered with the completed record ([`Claim::Completed`](crate::Claim::Completed)).
    pub replayed: u64,
    /// Claims that found the key in progress ([`Claim::InProgress`](crate::Claim::InProgress)).
    pub in_progress: u64,
    /// Claims whose fingerprint differed from the record's or the claim in
    /// progress ([`Claim::Mismatch`](crate::Claim::Mismatch)).
    pub mismatches: u64,
    /// Claims released without a result ([`Reservation::release`](crate::Reservation::release)).
    pub releases: u64,
    /// Claims abandoned: their reservation was dropped unfinished (by a
    /// panic or a dropped future, say) or
    /// [`abandon`](crate::Reservation::abandon)ed. Each holds its key until
    /// its lease lapses.
    pub abandoned: u64,
    /// Claims whose lease lapsed, ended when a newer caller took the key
    /// over, or reclaimed by a purge or a full cache.
    pub lease_expiries: u64,
    /// Completions and renewals refused because a newer claim holds the key.
    pub fenced: u64,
    /// Claims refused because the cache was full and no room could be made
    /// ([`Claim::Full`](crate::Claim::Full)).
    pub refused_claims: u64,
    /// Writes (`insert`, computed values) not stored because the cache was
    /// full and no room could be made.
    pub refused_inserts: u64,
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
        self.acquired += other.acquired;
        self.replayed += other.replayed;
        self.in_progress += other.in_progress;
        self.mismatches += other.mismatches;
        self.releases += other.releases;
        self.abandoned += other.abandoned;
        self.lease_expiries += other.lease_expiries;
        self.fenced += other.fenced;
        self.refused_claims += other.refused_claims;
        self.refused_inserts += other.refused_inserts;
    }

    /// Fraction of lookups that were hits, or `0.0` before any lookup.
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let cache: Cache<u8, u8> = Cache::new();
    /// cache.insert(1, 1);
    /// cache.get(&1);
    /// cache.get(&2);
    /// assert_eq!(cache.stats().hit_ratio(), 0.5);
    /// ```
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}
