//! A cache's periodic snapshot (the `persistence` feature): a job of the
//! background thread, its status, and the rules that keep the file from
//! going backwards.
//!
//! Three rules keep a snapshot file from ever going backwards or losing
//! records:
//!
//! 1. **One save or restore at a time, per cache, from snapshot to
//!    rename.** A save takes its snapshot and writes it under the engine's
//!    snapshot lock, so
//!    an older snapshot can never be renamed over a newer one (the lock
//!    inside the file writer only orders the writes, not the snapshots).
//! 2. **No periodic save during a restore.** A restore holds the same lock,
//!    so the file is never replaced by a half-restored cache.
//! 3. **No periodic save over records the cache has not loaded.** Until
//!    the cache has loaded that very file (`Cache::load_from` with the
//!    periodic path) or the user saved to it explicitly, periodic and
//!    shutdown saves refuse to replace an existing file
//!    ([`SnapshotError::WouldOverwrite`]): a service that forgot to call
//!    `load_from`, whose load failed, or that restored something else,
//!    keeps the previous records on disk for someone to recover.
//!
//! The save lock is held while keys' and values' `Clone` and `Serialize`
//! run (saves) and while replaced values are dropped (restores); values
//! taken for a save are dropped after it is released.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::background::Job;
use crate::engine::Engine;
use crate::snapshot::{copy_record, take_snapshot};
use crate::sync::{Arc, Mutex};
use crate::{Snapshot, SnapshotError};

/// What a cache handle needs of its periodic snapshot, whatever the
/// cache's hasher type.
pub(crate) trait PeriodicSnapshots: Send + Sync {
    /// Saves a snapshot now (periodically, and at shutdown); see the
    /// module docs for when it refuses.
    fn save_now(&self) -> Result<(), SnapshotError>;

    fn status(&self) -> SnapshotStatus;

    /// The cache loaded the file at `path` (`Cache::load_from`) or saved
    /// to it explicitly: if that is the periodic file, periodic saves may
    /// replace it (rule 3).
    fn loaded_or_saved(&self, path: &Path);
}

/// A periodic snapshot as the builder knows it: it knows `K` and `V` are
/// serializable and fixes the two functions then (the cache's hasher type
/// is not known yet).
pub(crate) struct SnapshotSchedule<K, V> {
    /// Made absolute at build, so that a later change of working directory
    /// does not move the snapshots.
    pub(crate) path: PathBuf,
    pub(crate) interval: Duration,
    copy: fn(&K, &V) -> (K, V),
    save: fn(&Snapshot<K, V>, &Path) -> Result<(), SnapshotError>,
}

impl<K, V> SnapshotSchedule<K, V> {
    pub(crate) fn new(path: PathBuf, interval: Duration) -> Self
    where
        K: Clone + serde::Serialize,
        V: Clone + serde::Serialize,
    {
        fn save<K: serde::Serialize, V: serde::Serialize>(
            snapshot: &Snapshot<K, V>,
            path: &Path,
        ) -> Result<(), SnapshotError> {
            snapshot.save_to(path)
        }
        SnapshotSchedule {
            path,
            interval,
            copy: copy_record::<K, V>,
            save: save::<K, V>,
        }
    }

    /// Binds the schedule to the cache's engine: the handle's view of it,
    /// and the background job that saves every interval.
    pub(crate) fn bind<S>(self, engine: Arc<Engine<K, V, S>>) -> (Arc<dyn PeriodicSnapshots>, Job)
    where
        K: Send + 'static,
        V: Send + 'static,
        S: Send + Sync + 'static,
    {
        let periodic = Arc::new(Periodic {
            state: Mutex::new(PeriodicState {
                status: SnapshotStatus {
                    path: self.path.clone(),
                    ..SnapshotStatus::default()
                },
                armed: false,
            }),
            engine,
            path: self.path,
            copy: self.copy,
            save: self.save,
        });
        let saver = Arc::clone(&periodic);
        let job = Job {
            every: self.interval,
            // Recorded in the status for `Cache::snapshot_status`.
            work: Box::new(move |_stop| {
                let _ = saver.save_now();
            }),
        };
        (periodic, job)
    }
}

/// A cache's periodic snapshot: where, how it went.
struct Periodic<K, V, S> {
    engine: Arc<Engine<K, V, S>>,
    path: PathBuf,
    copy: fn(&K, &V) -> (K, V),
    save: fn(&Snapshot<K, V>, &Path) -> Result<(), SnapshotError>,
    state: Mutex<PeriodicState>,
}

struct PeriodicState {
    status: SnapshotStatus,
    /// Whether saves may replace an existing file (rule 3).
    armed: bool,
}

impl<K, V, S> PeriodicSnapshots for Periodic<K, V, S>
where
    K: Send + 'static,
    V: Send + 'static,
    S: Send + Sync + 'static,
{
    /// Never panics: a panicking `Clone`, `Serialize` or `Drop` of a key or
    /// value is recorded as a failure or ignored, so the background thread
    /// lives on.
    fn save_now(&self) -> Result<(), SnapshotError> {
        let (result, taken) = {
            let _saving = self.engine.snapshot_lock.lock();
            // Rule 3: a file this cache has not loaded holds records it
            // would lose. (`metadata` follows a symlink, as saves do: a
            // dangling one holds nothing.)
            if !self.state.lock().armed && std::fs::metadata(&self.path).is_ok() {
                let refused = SnapshotError::WouldOverwrite {
                    path: self.path.clone(),
                };
                let mut state = self.state.lock();
                state.status.skipped += 1;
                state.status.last_error = Some(refused.to_string());
                return Err(refused);
            }
            let saved = catch_unwind(AssertUnwindSafe(|| {
                let snapshot = take_snapshot(&self.engine, self.copy, || {});
                ((self.save)(&snapshot, &self.path), snapshot)
            }));
            let mut state = self.state.lock();
            match saved {
                Ok((Ok(()), snapshot)) => {
                    state.armed = true;
                    state.status.saved += 1;
                    state.status.last_saved_at = Some(snapshot.taken_at());
                    state.status.last_saved_records = snapshot.len();
                    (Ok(()), Some(snapshot))
                }
                Ok((Err(e), snapshot)) => {
                    state.status.failed += 1;
                    state.status.last_error = Some(e.to_string());
                    (Err(e), Some(snapshot))
                }
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_string());
                    let e = SnapshotError::Encode {
                        reason: format!(
                            "a key's or value's Clone or Serialize panicked: {message}"
                        ),
                    };
                    state.status.failed += 1;
                    state.status.last_error = Some(e.to_string());
                    (Err(e), None)
                }
            }
        };
        // Dropped after the snapshot lock is released (user `Drop` code may
        // use the cache); a panic there must not end the background thread.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(taken)));
        result
    }

    fn status(&self) -> SnapshotStatus {
        self.state.lock().status.clone()
    }

    fn loaded_or_saved(&self, path: &Path) {
        if std::path::absolute(path).is_ok_and(|path| path == self.path) {
            self.state.lock().armed = true;
        }
    }
}

/// How a cache's periodic snapshots are going: see
/// [`Cache::snapshot_status`](crate::Cache::snapshot_status). A failed save
/// (a full disk, a removed directory) is counted and described here, and
/// tried again at the next interval; the previous file stays intact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotStatus {
    /// Where the snapshots go (absolute).
    pub path: PathBuf,
    /// Saves that succeeded (periodic and at shutdown).
    pub saved: u64,
    /// Saves that failed.
    pub failed: u64,
    /// Saves not made because the file holds a snapshot this cache has not
    /// restored ([`SnapshotError::WouldOverwrite`]): call
    /// [`Cache::load_from`](crate::Cache::load_from) first.
    pub skipped: u64,
    /// When the last successful save's snapshot was taken: the file holds
    /// the records as of then.
    pub last_saved_at: Option<SystemTime>,
    /// How many records the last successful save wrote.
    pub last_saved_records: usize,
    /// The last failure's or refusal's message, if any.
    pub last_error: Option<String>,
}
