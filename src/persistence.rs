//! A cache's saving machinery (the `persistence` feature): the lock that
//! orders its saves and restores, and the periodic snapshot with its
//! status.
//!
//! Three rules keep a snapshot file from ever going backwards or losing
//! records:
//!
//! 1. **One save or restore at a time, per cache, from snapshot to
//!    rename.** A save takes its snapshot and writes it under one lock, so
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

use crate::cache::Shared;
use crate::snapshot::copy_record;
use crate::sync::Mutex;
use crate::{Snapshot, SnapshotError};

/// Per-cache persistence state, in the cache's shared state.
pub(crate) struct Persistence<K, V> {
    /// Held from taking a snapshot to renaming its file, and for a whole
    /// restore (rules 1 and 2).
    save_lock: Mutex<()>,
    pub(crate) periodic: Option<Periodic<K, V>>,
}

impl<K, V> Persistence<K, V> {
    pub(crate) fn new(periodic: Option<Periodic<K, V>>) -> Self {
        Persistence {
            save_lock: Mutex::new(()),
            periodic,
        }
    }

    /// For a restore: no save may run until the guard is dropped.
    pub(crate) fn lock_for_restore(&self) -> impl Sized + '_ {
        self.save_lock.lock()
    }

    /// The cache loaded the file at `path` (`Cache::load_from`) or saved
    /// to it explicitly: if that is the periodic file, periodic saves may
    /// replace it (rule 3).
    pub(crate) fn loaded_or_saved(&self, path: &Path) {
        if let Some(periodic) = &self.periodic
            && std::path::absolute(path).is_ok_and(|path| path == periodic.path)
        {
            periodic.state.lock().armed = true;
        }
    }

    /// Runs an explicit save (`Cache::save_to`) to `path` under the save
    /// lock. An explicit save to the periodic path arms periodic saves:
    /// the user chose to replace that file.
    pub(crate) fn save_explicitly<T>(
        &self,
        path: &Path,
        save: impl FnOnce() -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let _saving = self.save_lock.lock();
        let saved = save()?;
        self.loaded_or_saved(path);
        Ok(saved)
    }

    /// The periodic (or shutdown) save, under the save lock; see the module
    /// docs. Never panics: a panicking `Clone`, `Serialize` or `Drop` of a
    /// key or value is recorded as a failure or ignored, so the background
    /// thread lives on.
    pub(crate) fn save_periodic<S>(&self, shared: &Shared<K, V, S>) -> Result<(), SnapshotError> {
        let Some(periodic) = &self.periodic else {
            return Ok(());
        };
        let (result, taken) = {
            let _saving = self.save_lock.lock();
            // Rule 3: a file this cache has not loaded holds records it
            // would lose. (`metadata` follows a symlink, as saves do: a
            // dangling one holds nothing.)
            if !periodic.state.lock().armed && std::fs::metadata(&periodic.path).is_ok() {
                let refused = SnapshotError::WouldOverwrite {
                    path: periodic.path.clone(),
                };
                let mut state = periodic.state.lock();
                state.status.skipped += 1;
                state.status.last_error = Some(refused.to_string());
                return Err(refused);
            }
            let saved = catch_unwind(AssertUnwindSafe(|| {
                let snapshot = shared.take_snapshot(periodic.copy);
                ((periodic.save)(&snapshot, &periodic.path), snapshot)
            }));
            let mut state = periodic.state.lock();
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
        // Dropped after the save lock is released (user `Drop` code may use
        // the cache); a panic there must not end the background thread.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(taken)));
        result
    }
}

/// A cache's periodic snapshot: where, how often, how it went. Built by
/// [`CacheBuilder::snapshot_every`](crate::CacheBuilder::snapshot_every),
/// which knows `K` and `V` are serializable and fixes the two functions
/// then (the cache's hasher type is not known yet).
pub(crate) struct Periodic<K, V> {
    /// Absolute, so that a later change of working directory does not
    /// move the snapshots.
    pub(crate) path: PathBuf,
    pub(crate) interval: Duration,
    copy: fn(&K, &V) -> (K, V),
    save: fn(&Snapshot<K, V>, &Path) -> Result<(), SnapshotError>,
    state: Mutex<PeriodicState>,
}

struct PeriodicState {
    status: SnapshotStatus,
    /// Whether saves may replace an existing file (rule 3).
    armed: bool,
}

impl<K, V> Periodic<K, V> {
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
        Periodic {
            state: Mutex::new(PeriodicState {
                status: SnapshotStatus {
                    path: path.clone(),
                    ..SnapshotStatus::default()
                },
                armed: false,
            }),
            path,
            interval,
            copy: copy_record::<K, V>,
            save: save::<K, V>,
        }
    }

    /// Makes the path absolute (against the current directory, once).
    pub(crate) fn resolve_path(&mut self) -> std::io::Result<()> {
        self.path = std::path::absolute(&self.path)?;
        self.state.lock().status.path = self.path.clone();
        Ok(())
    }

    pub(crate) fn status(&self) -> SnapshotStatus {
        self.state.lock().status.clone()
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
