//! The optional local tier: an in-process [`Cache`] of **completed**
//! records in front of Redis, so that a replay costs no round trip.
//!
//! Only completed records go in (a claim in progress, an abandoned claim
//! or a mismatch is always asked of Redis: a local "in progress" would be
//! stale the moment the holder completes). Each is kept for the record's
//! remaining retention, but at most the cap: a record
//! [removed](idemcache::store::Store::remove) on one replica is removed
//! from that replica's tier at once, and from the others' only when their
//! copy expires, up to the cap later. Values are kept encoded, so `V`
//! needs no `Clone`; a hit decodes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use idemcache::{BuildError, Cache, CapacityPolicy, Fingerprint};

/// A completed record, as Redis answered it.
pub(crate) struct LocalRecord {
    pub(crate) value: Vec<u8>,
    pub(crate) fingerprint: Option<Fingerprint>,
    pub(crate) expires_at: SystemTime,
}

pub(crate) struct LocalTier {
    records: Cache<String, Arc<LocalRecord>>,
    cap: Duration,
}

impl LocalTier {
    pub(crate) fn new(cap: Duration, max_entries: usize) -> Result<Self, BuildError> {
        let records = Cache::builder()
            .time_to_live(cap)
            .max_entries(max_entries)
            // A cache, not a store of record: forgetting a copy only costs
            // a round trip.
            .capacity_policy(CapacityPolicy::EvictSoonest)
            .build()?;
        Ok(LocalTier { records, cap })
    }

    /// The record of `key`, if kept and not expired, for a request with
    /// `fingerprint`: a record with another fingerprint is not answered
    /// here (Redis answers the mismatch).
    pub(crate) fn get(
        &self,
        key: &str,
        fingerprint: Option<Fingerprint>,
    ) -> Option<(Arc<LocalRecord>, Duration)> {
        let record = self.records.get(key)?;
        let matches = match (fingerprint, record.fingerprint) {
            (Some(request), Some(stored)) => request == stored,
            _ => true,
        };
        let left = record.expires_at.duration_since(SystemTime::now()).ok()?;
        (matches && !left.is_zero()).then_some((record, left))
    }

    /// Keeps a completed record that expires `expires_in` from now.
    pub(crate) fn put(&self, key: &str, record: LocalRecord, expires_in: Duration) {
        let ttl = expires_in.min(self.cap);
        if !ttl.is_zero() {
            self.records
                .insert_with_ttl(key.to_string(), Arc::new(record), ttl);
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        self.records.remove(key);
    }
}
