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

use crate::builder::{DEFAULT_LEASE, DEFAULT_TIME_TO_LIVE};
use crate::capacity::CapacityPolicy;
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
    /// `"refuse"` (default) or `"evict_soonest"`.
    pub capacity_policy: CapacityPolicy,
    /// Where and how often to snapshot the cache (a `[snapshot]` section
    /// with `path` and `every`); see
    /// [`CacheBuilder::config_with_snapshots`](crate::CacheBuilder::config_with_snapshots).
    /// Absent means no periodic snapshot.
    #[cfg(feature = "persistence")]
    #[cfg_attr(docsrs, doc(cfg(feature = "persistence")))]
    pub snapshot: Option<SnapshotConfig>,
}

/// The `[snapshot]` section of a [`CacheConfig`]: see
/// [`CacheBuilder::snapshot_every`](crate::CacheBuilder::snapshot_every).
///
/// ```
/// use idemcache::CacheConfig;
///
/// let config: CacheConfig = toml::from_str(r#"
///     [snapshot]
///     path = "/var/lib/payments/idempotency.snapshot"
///     every = "10s"
/// "#)?;
/// let snapshot = config.snapshot.unwrap();
/// assert_eq!(snapshot.every, std::time::Duration::from_secs(10));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "persistence")]
#[cfg_attr(docsrs, doc(cfg(feature = "persistence")))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// The snapshot file (its directory must exist).
    pub path: std::path::PathBuf,
    /// How often to save it, as humans write it (`"10s"`).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
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
            #[cfg(feature = "persistence")]
            snapshot: None,
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
    ///
    /// ```
    /// use idemcache::{Cache, CacheConfig};
    ///
    /// let config: CacheConfig = toml::from_str(r#"time_to_live = "1h""#)?;
    /// let cache: Cache<String, String> = config.build()?;
    /// assert_eq!(cache.time_to_live(), std::time::Duration::from_secs(3600));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build<K, V>(&self) -> Result<Cache<K, V>, BuildError>
    where
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
    {
        Cache::builder().config(self).build()
    }
}
