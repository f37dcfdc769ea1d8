//! Errors reported when a cache is built.

use std::fmt;

/// Why [`CacheBuilder::build`](crate::CacheBuilder::build) refused a
/// configuration.
///
/// Every variant names the builder option at fault ([`field`](Self::field)),
/// so a configuration loaded from a file can point at the bad line.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idemcache::{BuildError, Cache};
///
/// let err = Cache::<String, u32>::builder()
///     .time_to_live(Duration::ZERO)
///     .build()
///     .unwrap_err();
/// assert_eq!(err, BuildError::ZeroTimeToLive);
/// assert_eq!(err.field(), "time_to_live");
/// println!("{err}"); // time_to_live must be greater than zero ...
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `time_to_live` was zero: every entry would be expired when written.
    ZeroTimeToLive,
    /// `max_entries` was zero: nothing could ever be stored.
    ZeroMaxEntries,
    /// `shards` was zero.
    ZeroShards,
    /// `shards` was larger than [`MAX_SHARDS`](crate::MAX_SHARDS).
    TooManyShards {
        /// The number asked for.
        requested: usize,
    },
    /// `background_eviction` was given a zero interval, which would make
    /// the reaper spin.
    ZeroEvictionInterval,
    /// `lease` was zero: every claim would lapse as it is made.
    ZeroLease,
    /// The operating system refused to start the reaper thread.
    SpawnReaper {
        /// The operating system's reason.
        reason: String,
    },
}

impl BuildError {
    /// The builder option this error is about, spelled as the builder
    /// method (and the configuration field) is.
    pub fn field(&self) -> &'static str {
        match self {
            BuildError::ZeroTimeToLive => "time_to_live",
            BuildError::ZeroMaxEntries => "max_entries",
            BuildError::ZeroShards | BuildError::TooManyShards { .. } => "shards",
            BuildError::ZeroEvictionInterval | BuildError::SpawnReaper { .. } => {
                "background_eviction"
            }
            BuildError::ZeroLease => "lease",
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroTimeToLive => f.write_str(
                "time_to_live must be greater than zero (every entry would expire as it is written)",
            ),
            BuildError::ZeroMaxEntries => f.write_str(
                "max_entries must be at least 1 (leave it unset for an unbounded cache)",
            ),
            BuildError::ZeroShards => f.write_str("shards must be at least 1"),
            BuildError::TooManyShards { requested } => write!(
                f,
                "shards must be at most {} (got {requested})",
                crate::MAX_SHARDS
            ),
            BuildError::ZeroEvictionInterval => f.write_str(
                "background_eviction interval must be greater than zero (the reaper would spin)",
            ),
            BuildError::ZeroLease => f.write_str(
                "lease must be greater than zero (every claim would lapse as it is made)",
            ),
            BuildError::SpawnReaper { reason } => {
                write!(f, "background_eviction: could not start the reaper thread: {reason}")
            }
        }
    }
}

impl std::error::Error for BuildError {}
