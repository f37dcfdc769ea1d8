//! The snapshot file: atomic saves, verified loads (every kind of damaged
//! file is a typed error and restores nothing), periodic snapshots on the
//! background thread, and the final snapshot of `Cache::shutdown`.
#![cfg(feature = "persistence")]

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::wait_until;
use idemcache::clock::{Clock, ManualClock};
use idemcache::{BuildError, Cache, Snapshot, SnapshotError};

const SEC: Duration = Duration::from_secs(1);

/// A fresh, empty directory for one test, under cargo's per-target temp
/// dir (a real file system, not necessarily tmpfs).
fn scratch_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("snapshot_file")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn filled_cache(n: u32) -> Cache<String, u32> {
    let cache = Cache::builder().shards(4).build().unwrap();
    for i in 0..n {
        cache.insert(format!("key-{i}"), i);
    }
    cache
}

#[test]
fn save_and_load_round_trip_through_a_file() {
    let dir = scratch_dir("round_trip");
    let path = dir.join("records.snapshot");
    let old = filled_cache(500);
    assert_eq!(old.save_to(&path).unwrap(), 500);

    let new: Cache<String, u32> = Cache::new();
    let report = new.load_from(&path).unwrap();
    assert_eq!(report.restored, 500);
    for i in 0..500 {
        assert_eq!(new.get(&format!("key-{i}")), Some(i));
    }
    // Only the snapshot is left in the directory: no temporary file.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["records.snapshot"]);
}

#[test]
fn a_save_replaces_the_previous_snapshot_and_ignores_a_stale_temporary_file() {
    let dir = scratch_dir("replace");
    let path = dir.join("s.snapshot");
    filled_cache(3).save_to(&path).unwrap();
    // A crash mid-save leaves this behind; it is never read, only replaced.
    fs::write(dir.join(".s.snapshot.idemcache-tmp"), b"half a snapshot").unwrap();
    assert_eq!(Snapshot::<String, u32>::load_from(&path).unwrap().len(), 3);
    filled_cache(7).save_to(&path).unwrap();
    assert_eq!(Snapshot::<String, u32>::load_from(&path).unwrap().len(), 7);
    assert!(!dir.join(".s.snapshot.idemcache-tmp").exists());
}

#[test]
fn a_failed_save_leaves_the_previous_file_untouched() {
    let dir = scratch_dir("failed_save");
    let path = dir.join("s.snapshot");
    filled_cache(3).save_to(&path).unwrap();
    let before = fs::read(&path).unwrap();
    // The temporary file cannot be created: a directory is in its way.
    fs::create_dir(dir.join(".s.snapshot.idemcache-tmp")).unwrap();
    let err = filled_cache(9).save_to(&path).unwrap_err();
    assert!(matches!(err, SnapshotError::Io { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), before);

    let missing = dir.join("no-such-dir").join("s.snapshot");
    let err = filled_cache(1).save_to(&missing).unwrap_err();
    assert!(matches!(err, SnapshotError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[test]
fn a_missing_file_is_a_not_found_error() {
    let dir = scratch_dir("missing");
    let err = Snapshot::<String, u32>::load_from(dir.join("nothing-here")).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

/// Saves a snapshot, damages the file with `damage`, and checks that
/// loading it fails as `expected` says and restores nothing.
fn load_damaged(
    test: &str,
    damage: impl FnOnce(&mut Vec<u8>),
    expected: fn(&SnapshotError) -> bool,
) {
    let dir = scratch_dir(test);
    let path = dir.join("s.snapshot");
    filled_cache(50).save_to(&path).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    damage(&mut bytes);
    fs::write(&path, &bytes).unwrap();

    let cache: Cache<String, u32> = Cache::new();
    let err = cache.load_from(&path).unwrap_err();
    assert!(expected(&err), "{test}: unexpected {err:?}");
    assert!(cache.is_empty(), "{test}: a failed load restored something");
    // The same verdict from memory as from the file.
    let from_memory = Snapshot::<String, u32>::decode(&bytes).unwrap_err();
    assert!(
        expected(&from_memory),
        "{test}: decode gave {from_memory:?}"
    );
}

#[test]
fn a_truncated_file_is_rejected() {
    load_damaged(
        "truncated_body",
        |b| b.truncate(b.len() - 1),
        |e| matches!(e, SnapshotError::Truncated { .. }),
    );
    load_damaged(
        "truncated_header",
        |b| b.truncate(20),
        |e| {
            matches!(
                e,
                SnapshotError::Truncated {
                    expected: 50,
                    found: 20
                }
            )
        },
    );
    load_damaged("empty", Vec::clear, |e| {
        matches!(e, SnapshotError::Truncated { .. })
    });
}

#[test]
fn a_corrupted_file_is_rejected() {
    load_damaged(
        "flipped_body_byte",
        |b| {
            let at = b.len() - 10;
            b[at] ^= 0x40;
        },
        |e| matches!(e, SnapshotError::Corrupted { .. }),
    );
    load_damaged(
        "flipped_checksum",
        |b| b[30] ^= 1,
        |e| matches!(e, SnapshotError::Corrupted { .. }),
    );
    load_damaged(
        "appended",
        |b| b.extend_from_slice(b"trailing"),
        |e| matches!(e, SnapshotError::Corrupted { .. }),
    );
    load_damaged(
        "not_a_snapshot",
        |b| b[..8].copy_from_slice(b"GIF89a\0\0"),
        |e| matches!(e, SnapshotError::NotASnapshot),
    );
}

#[test]
fn a_file_of_another_format_version_is_rejected() {
    load_damaged(
        "version",
        |b| b[8..10].copy_from_slice(&2u16.to_le_bytes()),
        |e| {
            matches!(
                e,
                SnapshotError::WrongVersion {
                    found: 2,
                    supported: 1
                }
            )
        },
    );
}

#[test]
fn a_file_of_other_key_or_value_types_is_rejected() {
    let dir = scratch_dir("wrong_type");
    let path = dir.join("s.snapshot");
    filled_cache(5).save_to(&path).unwrap();
    // Same key type, other value type: u64 would even decode from u32's
    // varints, so only the type check can tell.
    let err = Snapshot::<String, u64>::load_from(&path).unwrap_err();
    match &err {
        SnapshotError::WrongType { expected, found } => {
            assert!(expected.contains("u64"), "{expected}");
            assert!(found.contains("u32"), "{found}");
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
    let err = Snapshot::<u64, String>::load_from(&path).unwrap_err();
    assert!(matches!(err, SnapshotError::WrongType { .. }), "{err:?}");
    let cache: Cache<u64, String> = Cache::new();
    assert!(cache.load_from(&path).is_err());
    assert!(cache.is_empty());
}

#[test]
fn decode_unchecked_reads_a_renamed_type_but_still_rejects_what_does_not_decode() {
    mod v1 {
        #[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
        pub struct Receipt {
            pub id: u64,
        }
    }
    mod v2 {
        // The same type, moved to another module.
        #[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
        pub struct Receipt {
            pub id: u64,
        }
    }
    let old: Cache<String, v1::Receipt> = Cache::new();
    old.insert("k".into(), v1::Receipt { id: 9 });
    let bytes = old.snapshot().encode().unwrap();
    assert!(matches!(
        Snapshot::<String, v2::Receipt>::decode(&bytes),
        Err(SnapshotError::WrongType { .. })
    ));
    let moved = Snapshot::<String, v2::Receipt>::decode_unchecked(&bytes).unwrap();
    assert_eq!(moved.entries()[0].value, v2::Receipt { id: 9 });
    // A shape that does not fit is a decode error, not garbage.
    assert!(matches!(
        Snapshot::<String, (u64, String, String)>::decode_unchecked(&bytes),
        Err(SnapshotError::Decode { .. })
    ));
}

// Periodic snapshots and shutdown ------------------------------------------

#[test]
fn snapshot_every_saves_on_the_background_thread_and_shutdown_saves_the_rest() {
    let dir = scratch_dir("periodic");
    let path = dir.join("s.snapshot");
    let cache: Cache<String, u32> = Cache::builder()
        .snapshot_every(&path, Duration::from_millis(20))
        .build()
        .unwrap();
    cache.insert("first".into(), 1);
    wait_until("a periodic save", || {
        cache.snapshot_status().unwrap().saved >= 1
            && Snapshot::<String, u32>::load_from(&path).is_ok_and(|s| s.len() == 1)
    });
    let status = cache.snapshot_status().unwrap();
    assert_eq!(status.path, path);
    assert_eq!(status.failed, 0);
    assert_eq!(status.last_error, None);

    cache.shutdown().unwrap();
    let saved_at_shutdown = cache.snapshot_status().unwrap().saved;
    // After shutdown no thread saves any more: a later record reaches the
    // file only through an explicit save.
    cache.insert("late".into(), 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(cache.snapshot_status().unwrap().saved, saved_at_shutdown);
    assert_eq!(Snapshot::<String, u32>::load_from(&path).unwrap().len(), 1);
    // A second shutdown is a no-op: it neither stops nor saves again.
    cache.shutdown().unwrap();
    assert_eq!(cache.snapshot_status().unwrap().saved, saved_at_shutdown);
    assert_eq!(Snapshot::<String, u32>::load_from(&path).unwrap().len(), 1);
    assert_eq!(
        cache.save_to(&path).unwrap(),
        2,
        "an explicit save still works"
    );
}

#[test]
fn shutdown_saves_what_the_last_interval_had_not() {
    let dir = scratch_dir("shutdown");
    let path = dir.join("s.snapshot");
    // An interval no test waits for: only the final snapshot writes.
    let cache: Cache<String, u32> = Cache::builder()
        .snapshot_every(&path, Duration::from_secs(3600))
        .build()
        .unwrap();
    for i in 0..100 {
        cache.insert(format!("k{i}"), i);
    }
    assert!(!path.exists());
    cache.shutdown().unwrap();
    let status = cache.snapshot_status().unwrap();
    assert_eq!((status.saved, status.last_saved_records), (1, 100));

    let restarted: Cache<String, u32> = Cache::new();
    assert_eq!(restarted.load_from(&path).unwrap().restored, 100);
}

#[test]
fn a_failing_periodic_save_is_recorded_and_retried_and_shutdown_reports_it() {
    let dir = scratch_dir("failing");
    let path = dir.join("s.snapshot");
    let cache: Cache<String, u32> = Cache::builder()
        .snapshot_every(&path, Duration::from_millis(10))
        .build()
        .unwrap();
    cache.insert("k".into(), 1);
    // Make the directory unusable after the build checked it.
    fs::remove_dir_all(&dir).unwrap();
    wait_until("two failed saves", || {
        cache.snapshot_status().unwrap().failed >= 2
    });
    let status = cache.snapshot_status().unwrap();
    assert!(status.last_error.is_some());
    let err = cache.shutdown().unwrap_err();
    assert!(matches!(err, SnapshotError::Io { .. }), "{err:?}");
    // The cache itself is unaffected.
    assert_eq!(cache.get("k"), Some(1));
}

#[test]
fn periodic_snapshots_use_the_caches_clock() {
    let dir = scratch_dir("clock");
    let path = dir.join("s.snapshot");
    let clock = ManualClock::new();
    let cache: Cache<String, u32> = Cache::builder()
        .clock(clock.clone())
        .time_to_live(SEC * 60)
        .snapshot_every(&path, Duration::from_secs(3600))
        .build()
        .unwrap();
    cache.insert("k".into(), 1);
    clock.advance(SEC * 10);
    cache.shutdown().unwrap();
    let snapshot = Snapshot::<String, u32>::load_from(&path).unwrap();
    assert_eq!(snapshot.taken_at(), clock.system_time());
    assert_eq!(
        snapshot.entries()[0].expires_at,
        clock.system_time() + SEC * 50
    );
}

#[test]
fn shutdown_without_snapshots_only_stops_the_thread() {
    let cache: Cache<u32, u32> = Cache::builder()
        .background_eviction(Duration::from_millis(5))
        .build()
        .unwrap();
    assert_eq!(cache.snapshot_status(), None);
    cache.insert(1, 1);
    cache.shutdown().unwrap();
    assert_eq!(cache.get(&1), Some(1));
}

#[test]
fn snapshot_every_rejects_a_zero_interval_and_an_unusable_path() {
    let dir = scratch_dir("build_errors");
    let zero = Cache::<String, u32>::builder()
        .snapshot_every(dir.join("s"), Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(zero, BuildError::ZeroSnapshotInterval);
    assert_eq!(zero.field(), "snapshot_every");

    let no_dir = Cache::<String, u32>::builder()
        .snapshot_every(dir.join("missing").join("s"), SEC)
        .build()
        .unwrap_err();
    assert!(
        matches!(no_dir, BuildError::InvalidSnapshotPath { .. }),
        "{no_dir:?}"
    );
    assert_eq!(no_dir.field(), "snapshot_every");

    let is_dir = Cache::<String, u32>::builder()
        .snapshot_every(&dir, SEC)
        .build()
        .unwrap_err();
    assert!(
        matches!(is_dir, BuildError::InvalidSnapshotPath { .. }),
        "{is_dir:?}"
    );

    let no_file = Cache::<String, u32>::builder()
        .snapshot_every("/", SEC)
        .build()
        .unwrap_err();
    assert!(
        matches!(no_file, BuildError::InvalidSnapshotPath { .. }),
        "{no_file:?}"
    );
}

// Ordering, refusal and survival of saves ----------------------------------

/// A value whose `Serialize` misbehaves for two marked values: `SLOW` is
/// slow on the reaper thread while `SLOW_ON_REAPER` is set, `PANICS`
/// always panics. (Marked values, not global switches, so that tests
/// running in parallel do not disturb each other.)
#[derive(Clone, Debug, PartialEq)]
struct Probe(u32);

impl Probe {
    const SLOW: u32 = 1;
    const PANICS: u32 = u32::MAX;
}

static SLOW_ON_REAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static REAPER_SERIALIZING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

impl serde::Serialize for Probe {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use std::sync::atomic::Ordering::SeqCst;
        let on_reaper = std::thread::current().name() == Some("idemcache-reaper");
        if self.0 == Probe::SLOW && on_reaper && SLOW_ON_REAPER.load(SeqCst) {
            REAPER_SERIALIZING.store(true, SeqCst);
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(self.0 != Probe::PANICS, "planted panic in Serialize");
        serializer.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <u32 as serde::Deserialize>::deserialize(deserializer).map(Probe)
    }
}

#[test]
fn an_older_periodic_snapshot_never_replaces_a_newer_explicit_save() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = scratch_dir("ordering");
    let path = dir.join("s.snapshot");
    let cache: Cache<String, Probe> = Cache::builder()
        .snapshot_every(&path, Duration::from_millis(10))
        .build()
        .unwrap();
    cache.insert("k".into(), Probe(Probe::SLOW));
    SLOW_ON_REAPER.store(true, SeqCst);
    wait_until("the reaper serializing value 1", || {
        REAPER_SERIALIZING.load(SeqCst)
    });
    cache.insert("k".into(), Probe(2));
    cache.save_to(&path).unwrap(); // waits for the reaper's older save
    SLOW_ON_REAPER.store(false, SeqCst);
    drop(cache); // joins the reaper, whatever it was writing
    let snapshot = Snapshot::<String, Probe>::load_from(&path).unwrap();
    assert_eq!(snapshot.entries()[0].value, Probe(2));
}

#[test]
fn a_panicking_serialize_is_recorded_and_the_background_thread_lives_on() {
    let dir = scratch_dir("panicking_serialize");
    let path = dir.join("s.snapshot");
    let clock = ManualClock::new();
    let cache: Cache<String, Probe> = Cache::builder()
        .clock(clock.clone())
        .time_to_live(SEC)
        .snapshot_every(&path, Duration::from_millis(5))
        .background_eviction(Duration::from_millis(5))
        .build()
        .unwrap();
    cache.insert("k".into(), Probe(7));
    cache.insert("bad".into(), Probe(Probe::PANICS));
    wait_until("two failed saves", || {
        cache.snapshot_status().unwrap().failed >= 2
    });
    cache.remove("bad");
    let status = cache.snapshot_status().unwrap();
    assert!(
        status.last_error.as_deref().unwrap().contains("panicked"),
        "{status:?}"
    );
    let saved = status.saved;
    wait_until("a save after the panics", || {
        cache.snapshot_status().unwrap().saved > saved
    });
    // The same thread still purges.
    clock.advance(SEC);
    wait_until("the purge", || cache.is_empty());
}

#[test]
fn periodic_and_shutdown_saves_refuse_to_replace_a_file_the_cache_has_not_restored() {
    let dir = scratch_dir("not_restored");
    let path = dir.join("s.snapshot");
    filled_cache(30).save_to(&path).unwrap(); // the previous run's records
    let before = fs::read(&path).unwrap();

    let cache: Cache<String, u32> = Cache::builder()
        .snapshot_every(&path, Duration::from_millis(5))
        .build()
        .unwrap();
    cache.insert("new".into(), 1);
    wait_until("a refused save", || {
        cache.snapshot_status().unwrap().skipped >= 1
    });
    let status = cache.snapshot_status().unwrap();
    assert_eq!(status.saved, 0);
    assert!(status.last_error.unwrap().contains("has not restored"));
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "the records on disk are intact"
    );
    let err = cache.shutdown().unwrap_err();
    assert!(
        matches!(err, SnapshotError::WouldOverwrite { .. }),
        "{err:?}"
    );

    // Restoring something else is not loading this file (a second
    // process, as a second shutdown of one cache saves nothing).
    let restarted = || {
        Cache::<String, u32>::builder()
            .snapshot_every(&path, Duration::from_secs(3600))
            .build()
            .unwrap()
    };
    let cache = restarted();
    cache.insert("new".into(), 1);
    let other = dir.join("other.snapshot");
    filled_cache(2).save_to(&other).unwrap();
    assert_eq!(cache.load_from(&other).unwrap().restored, 2);
    cache.restore(Snapshot::new(std::time::SystemTime::now(), Vec::new()));
    let err = cache.shutdown().unwrap_err();
    assert!(
        matches!(err, SnapshotError::WouldOverwrite { .. }),
        "{err:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);

    // Once this file is loaded, saves go ahead and hold everything: its 30
    // records ("key-0".."key-29", which include the other file's two keys)
    // and "new".
    let cache = restarted();
    cache.insert("new".into(), 1);
    assert_eq!(cache.load_from(&other).unwrap().restored, 2);
    assert_eq!(cache.load_from(&path).unwrap().restored, 28);
    cache.shutdown().unwrap();
    assert_eq!(Snapshot::<String, u32>::load_from(&path).unwrap().len(), 31);
}

#[test]
fn an_explicit_save_replaces_a_file_the_cache_has_not_restored() {
    let dir = scratch_dir("explicit_replaces");
    let path = dir.join("s.snapshot");
    filled_cache(30).save_to(&path).unwrap();
    let cache: Cache<String, u32> = Cache::builder()
        .snapshot_every(&path, Duration::from_secs(3600))
        .build()
        .unwrap();
    cache.insert("only".into(), 1);
    cache.save_to(&path).unwrap(); // the user's explicit choice
    cache.shutdown().unwrap(); // and periodic saves follow it
    assert_eq!(Snapshot::<String, u32>::load_from(&path).unwrap().len(), 1);
}

/// A key whose hashing takes a while, so a restore of a few thousand of
/// them spans many snapshot intervals.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SlowKey(u32);

impl std::hash::Hash for SlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::thread::sleep(Duration::from_micros(20));
        self.0.hash(state);
    }
}

#[test]
fn no_save_writes_a_half_restored_cache() {
    const RECORDS: u32 = 3_000;
    let dir = scratch_dir("half_restored");
    let path = dir.join("s.snapshot");
    let expires_at = std::time::SystemTime::now() + SEC * 3600;
    let records = (0..RECORDS)
        .map(|i| idemcache::SnapshotEntry {
            key: SlowKey(i),
            value: i,
            fingerprint: None,
            expires_at,
        })
        .collect();
    Snapshot::new(std::time::SystemTime::now(), records)
        .save_to(&path)
        .unwrap();
    let cache: Cache<SlowKey, u32> = Cache::builder()
        .snapshot_every(&path, Duration::from_millis(1))
        .build()
        .unwrap();
    // An explicit save (of the empty cache) lets periodic saves replace
    // the file; the records to restore are in memory.
    let snapshot = Snapshot::<SlowKey, u32>::load_from(&path).unwrap();
    cache.save_to(&path).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut loads = 0;
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            // Every file seen during the restore is a whole snapshot: the
            // one restored (RECORDS) or the empty cache's (0).
            let mut loads = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(seen) = Snapshot::<SlowKey, u32>::load_from(&path) {
                    let n = seen.len() as u32;
                    assert!(
                        n == 0 || n == RECORDS,
                        "a save wrote {n} of {RECORDS} records"
                    );
                    loads += 1;
                }
            }
            loads
        });
        assert_eq!(cache.restore(snapshot).restored, RECORDS as usize);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        loads = watcher.join().unwrap();
    });
    assert!(loads > 0);
    cache.shutdown().unwrap();
    assert_eq!(
        Snapshot::<SlowKey, u32>::load_from(&path).unwrap().len(),
        RECORDS as usize
    );
}

#[cfg(unix)]
#[test]
fn the_temporary_file_is_never_followed_and_permissions_are_kept_private() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = scratch_dir("permissions");
    let path = dir.join("s.snapshot");
    let victim = dir.join("victim");
    fs::write(&victim, b"do not touch").unwrap();
    symlink(&victim, dir.join(".s.snapshot.idemcache-tmp")).unwrap();
    filled_cache(3).save_to(&path).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"do not touch");
    assert!(
        !fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "a new snapshot is private");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    filled_cache(4).save_to(&path).unwrap();
    assert_eq!(
        mode(&path),
        0o640,
        "a replaced snapshot keeps its permissions"
    );
}

#[cfg(unix)]
#[test]
fn a_symlinked_snapshot_path_is_followed_by_saves_as_by_loads() {
    use std::os::unix::fs::symlink;
    let dir = scratch_dir("symlinked");
    fs::create_dir(dir.join("volume")).unwrap();
    let target = dir.join("volume").join("real.snapshot");
    let link = dir.join("s.snapshot");
    // Dangling at first: a first start, and the first save creates the
    // file the link names.
    symlink("volume/real.snapshot", &link).unwrap();
    let cache: Cache<String, u32> = Cache::builder()
        .snapshot_every(&link, Duration::from_secs(3600))
        .build()
        .unwrap();
    assert!(cache.load_from(&link).unwrap_err().is_not_found());
    cache.insert("a".into(), 1);
    cache.shutdown().unwrap();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        Snapshot::<String, u32>::load_from(&target).unwrap().len(),
        1
    );

    // Live: loaded through the link, saved through it again.
    let restarted: Cache<String, u32> = Cache::builder()
        .snapshot_every(&link, Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(restarted.load_from(&link).unwrap().restored, 1);
    restarted.insert("b".into(), 2);
    restarted.shutdown().unwrap();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        Snapshot::<String, u32>::load_from(&target).unwrap().len(),
        2
    );
}
