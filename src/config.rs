//! Cache configuration as data, for loading from TOML, JSON or YAML files
//! (the `serde` feature).
//!
//! ```
//! use idemcache::{Cache, CacheConfig};
//!
//! let config: CacheConfig = serde_json::from_str(r#"{
//!     "time_to_live": "24h",
//!     "max_entries": 1000000,
//!     "background_eviction": "1s",
//!     "lease": "90s"
//! }"#)?;
//! let cache: Cache<String, String> = config.build()?;
//! assert_eq!(cache.lease(), std::time::Duration::from_secs(90));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::hash::Hash;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::builder::{CapacityPolicy, DEFAULT_LEASE, DEFAULT_TIME_TO_LIVE};
use crate::{BuildError, Cache};

/// Every [`CacheBuilder`](crate::CacheBuilder) option as plain data. Missing
/// fields take the builder's defaults; unknown fields are an error, so a
/// typo in a configuration file does not silently fall back to a default.
/// Durations are written as humans write them: `"24h"`, `"90s"`, `"1m 30s"`.
/// Invalid values are reported by [`build`](Self::build) as the same
/// [`BuildError`] the builder gives, naming the field
/// ([`BuildError::field`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// See [`CacheBuilder::time_to_live`](crate::CacheBuilder::time_to_live).
    #[serde(with = "humantime_serde")]
    pub time_to_live: Duration,
    /// See [`CacheBuilder::max_entries`](crate::CacheBuilder::max_entries);
    /// absent means unbounded.
    pub max_entries: Option<usize>,
    /// See [`CacheBuilder::shards`](crate::CacheBuilder::shards); absent
    /// means the default for this machine.
    pub shards: Option<usize>,
    /// See [`CacheBuilder::background_eviction`](crate::CacheBuilder::background_eviction);
    /// absent means no reaper thread.
    #[serde(with = "humantime_serde")]
    pub background_eviction: Option<Duration>,
    /// See [`CacheBuilder::lease`](crate::CacheBuilder::lease).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// See [`CacheBuilder::capacity_policy`](crate::CacheBuilder::capacity_policy):
    /// `"evict_soonest"` (default) or `"refuse"`.
    pub capacity_policy: CapacityPolicy,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            time_to_live: DEFAULT_TIME_TO_LIVE,
            max_entries: None,
            shards: None,
            background_eviction: None,
            lease: DEFAULT_LEASE,
            capacity_policy: CapacityPolicy::default(),
        }
    }
}

impl CacheConfig {
    /// Builds a cache with this configuration (and the default clock and
    /// hasher).
    ///
    /// # Errors
    ///
    /// The [`BuildError`] the builder gives for an invalid value.
    pub fn build<K, V>(&self) -> Result<Cache<K, V>, BuildError>
    where
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
    {
        Cache::builder().config(self).build()
    }
}
