//! Errors reported when a cache is built, and when a snapshot is saved
//! or loaded.

use std::fmt;
use std::io;
use std::path::PathBuf;

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
    /// `snapshot_every` was given a zero interval.
    ZeroSnapshotInterval,
    /// `snapshot_every` was given a path that cannot hold a snapshot: it
    /// names no file, or its directory does not exist.
    InvalidSnapshotPath {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configuration with a `[snapshot]` section was given to
    /// [`CacheBuilder::config`](crate::CacheBuilder::config), which cannot
    /// apply it: use
    /// [`CacheBuilder::config_with_snapshots`](crate::CacheBuilder::config_with_snapshots).
    SnapshotNotApplied,
    /// The operating system refused to start the background thread.
    SpawnReaper {
        /// The operating system's reason.
        reason: String,
    },
}

impl BuildError {
    /// The builder option this error is about, spelled as the builder
    /// method (and the configuration field) is.
    ///
    /// ```
    /// use idemcache::{BuildError, Cache};
    ///
    /// let err = Cache::<u8, u8>::builder().shards(0).build().unwrap_err();
    /// assert_eq!(err.field(), "shards");
    /// ```
    pub fn field(&self) -> &'static str {
        match self {
            BuildError::ZeroTimeToLive => "time_to_live",
            BuildError::ZeroMaxEntries => "max_entries",
            BuildError::ZeroShards | BuildError::TooManyShards { .. } => "shards",
            BuildError::ZeroEvictionInterval | BuildError::SpawnReaper { .. } => {
                "background_eviction"
            }
            BuildError::ZeroLease => "lease",
            BuildError::ZeroSnapshotInterval | BuildError::InvalidSnapshotPath { .. } => {
                "snapshot_every"
            }
            BuildError::SnapshotNotApplied => "snapshot",
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
            BuildError::ZeroSnapshotInterval => f.write_str(
                "snapshot_every interval must be greater than zero (the background thread would spin)",
            ),
            BuildError::InvalidSnapshotPath { path, reason } => {
                write!(f, "snapshot_every: {}: {reason}", path.display())
            }
            BuildError::SnapshotNotApplied => f.write_str(
                "snapshot: the configuration's [snapshot] section needs serializable keys and values: build with CacheBuilder::config_with_snapshots instead of config",
            ),
            BuildError::SpawnReaper { reason } => {
                write!(f, "background_eviction: could not start the background thread: {reason}")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Why a snapshot could not be saved or loaded.
///
/// Loading verifies everything before anything is restored: a file that
/// fails any check yields one of these and restores nothing.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "persistence")] {
/// use idemcache::{Snapshot, SnapshotError};
///
/// let err = Snapshot::<String, String>::decode(b"IDEMSNAP\x01").unwrap_err();
/// assert!(matches!(err, SnapshotError::Truncated { .. }));
/// println!("{err}"); // snapshot truncated: expected 50 bytes, found 9
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    Io {
        /// The file (or, for the final directory sync, directory).
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The bytes do not start with the snapshot format's magic bytes: this
    /// is not a snapshot file.
    NotASnapshot,
    /// The file was written in a format version this build does not read.
    WrongVersion {
        /// The version in the file.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },
    /// The file ends before the length its header announces (a copy cut
    /// short, a disk full).
    Truncated {
        /// Bytes the header announces (or a whole header).
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The checksum does not match, or bytes follow the announced end:
    /// the file was damaged after it was written.
    Corrupted {
        /// Which check failed.
        reason: &'static str,
    },
    /// The file holds a snapshot of other key or value types.
    WrongType {
        /// The types asked for, as `Snapshot<K, V>`.
        expected: String,
        /// The types the file was written with.
        found: String,
    },
    /// A periodic or shutdown save refused to replace a snapshot file that
    /// this cache has not restored: the file's records would be lost. Call
    /// [`Cache::load_from`](crate::Cache::load_from) first (or remove the
    /// file to start empty); an explicit
    /// [`Cache::save_to`](crate::Cache::save_to) replaces it.
    WouldOverwrite {
        /// The snapshot file.
        path: PathBuf,
    },
    /// The snapshot could not be encoded (a key's or value's `Serialize`
    /// failed).
    Encode {
        /// The encoder's message.
        reason: String,
    },
    /// The file is intact and of the right types by name, but its content
    /// does not decode as them (a type changed shape since it was written).
    Decode {
        /// The decoder's message.
        reason: String,
    },
}

impl SnapshotError {
    /// Whether this is an I/O error for a file that does not exist: the
    /// usual case on a first start, before any snapshot was saved.
    ///
    /// ```
    /// # #[cfg(feature = "persistence")] {
    /// use idemcache::Snapshot;
    ///
    /// let missing = Snapshot::<String, String>::load_from("/nonexistent/idemcache.snapshot");
    /// assert!(missing.unwrap_err().is_not_found()); // a first start
    /// # }
    /// ```
    pub fn is_not_found(&self) -> bool {
        matches!(self, SnapshotError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io { path, source } => {
                write!(f, "snapshot file {}: {source}", path.display())
            }
            SnapshotError::NotASnapshot => {
                f.write_str("not an idemcache snapshot (wrong magic bytes)")
            }
            SnapshotError::WrongVersion { found, supported } => write!(
                f,
                "snapshot format version {found} is not supported (this build reads version {supported})"
            ),
            SnapshotError::Truncated { expected, found } => write!(
                f,
                "snapshot truncated: expected {expected} bytes, found {found}"
            ),
            SnapshotError::Corrupted { reason } => write!(f, "snapshot corrupted: {reason}"),
            SnapshotError::WrongType { expected, found } => write!(
                f,
                "snapshot holds {found}, not {expected} (if the types were renamed or moved, \
                 see Snapshot::decode_unchecked)"
            ),
            SnapshotError::WouldOverwrite { path } => write!(
                f,
                "not replacing {}: it holds a snapshot this cache has not restored \
                 (call Cache::load_from first, or remove the file to start empty)",
                path.display()
            ),
            SnapshotError::Encode { reason } => {
                write!(f, "snapshot could not be encoded: {reason}")
            }
            SnapshotError::Decode { reason } => {
                write!(f, "snapshot could not be decoded: {reason}")
            }
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
