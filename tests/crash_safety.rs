//! Crash safety of `save_to`: a child process saves snapshot after snapshot
//! to one file and is killed (SIGKILL) at a random moment, many times; after
//! every kill the file must load as a complete snapshot, the one before or
//! a newer one, never an error and never a mix.
//!
//! This file is its own harness (`harness = false` in Cargo.toml): run
//! without arguments it is the parent; with `IDEMCACHE_CRASH_CHILD` set it
//! is the child that saves until it is killed.
//!
//! What this shows is a process crash at any instruction of a save: the
//! kernel keeps what was written, so it exercises the temporary file, the
//! rename and the reader's checks. A power cut additionally relies on the
//! fsyncs `save_to` issues, which no test on a running machine can cut.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use std::io::{Read, Write};

use idemcache::{Cache, Snapshot, SnapshotEntry, SnapshotError};

const CHILD_ENV: &str = "IDEMCACHE_CRASH_CHILD";
const FIRST_GENERATION_ENV: &str = "IDEMCACHE_CRASH_FIRST_GENERATION";

/// Records per snapshot, and the length of each value: about 1 MB per
/// file, so a save takes several writes (256 KiB each) and a kill often
/// lands in the middle of one.
const RECORDS: u32 = 4_000;
const VALUE_LEN: usize = 240;

const KILLS: u32 = 60;
/// Kills land uniformly within this long after the child starts.
const MAX_KILL_DELAY: Duration = Duration::from_millis(300);

fn main() {
    // Test runners that list before they run (cargo-nextest) get the one
    // test this harness is; listing runs nothing.
    if std::env::args().any(|arg| arg == "--list") {
        if !std::env::args().any(|arg| arg == "--ignored") {
            println!("crash_safety: test");
        }
        return;
    }
    match std::env::var_os(CHILD_ENV) {
        Some(path) => child(Path::new(&path)),
        None => parent(),
    }
}

/// The value of record `i` in generation `generation`: the generation and
/// index up front, padded to `VALUE_LEN`.
fn value(generation: u64, i: u32) -> String {
    let mut value = format!("{generation}:{i}:");
    let pad = (b'a' + (generation % 26) as u8) as char;
    while value.len() < VALUE_LEN {
        value.push(pad);
    }
    value
}

/// Saves generations `first, first + 1, ...` to `path` until killed,
/// writing `B` to stdout as each save begins and `E` when it has returned,
/// so the parent can tell where the kill landed.
fn child(path: &Path) -> ! {
    let mut generation: u64 = std::env::var(FIRST_GENERATION_ENV)
        .expect("the parent says where to start")
        .parse()
        .expect("a generation number");
    let mut stdout = std::io::stdout();
    loop {
        // Built directly rather than through a cache so that most of the
        // child's time is spent inside `save_to` (`Cache::save_to` is
        // `snapshot()` followed by this same call).
        let expires_at = SystemTime::now() + Duration::from_secs(3600);
        let entries = (0..RECORDS)
            .map(|i| SnapshotEntry {
                key: format!("key-{i}"),
                value: value(generation, i),
                fingerprint: None,
                expires_at,
            })
            .collect();
        let snapshot = Snapshot::new(SystemTime::now(), entries);
        stdout
            .write_all(b"B")
            .and_then(|()| stdout.flush())
            .unwrap();
        snapshot.save_to(path).expect("the save itself succeeds");
        stdout
            .write_all(b"E")
            .and_then(|()| stdout.flush())
            .unwrap();
        generation += 1;
    }
}

/// The generation a loaded snapshot holds, if it is a complete one.
fn generation_of(snapshot: &Snapshot<String, String>) -> Result<u64, String> {
    if snapshot.len() != RECORDS as usize {
        return Err(format!("{} records, not {RECORDS}", snapshot.len()));
    }
    let first = &snapshot.entries()[0].value;
    let generation: u64 = first
        .split(':')
        .next()
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("unreadable value {first:?}"))?;
    let mut seen = vec![false; RECORDS as usize];
    for entry in snapshot {
        let i: u32 = entry
            .key
            .strip_prefix("key-")
            .and_then(|i| i.parse().ok())
            .filter(|&i| i < RECORDS)
            .ok_or_else(|| format!("unexpected key {:?}", entry.key))?;
        if std::mem::replace(&mut seen[i as usize], true) {
            return Err(format!("key-{i} twice"));
        }
        if entry.value != value(generation, i) {
            return Err(format!(
                "key-{i} holds {:?}: generations mixed",
                entry.value
            ));
        }
    }
    Ok(generation)
}

fn load(path: &Path) -> Result<u64, String> {
    let snapshot = Snapshot::<String, String>::load_from(path)
        .map_err(|e: SnapshotError| format!("load failed: {e}"))?;
    generation_of(&snapshot)
}

/// A small xorshift generator: kill delays must vary, and the seed is
/// printed so that a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn parent() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crash_safety");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("records.snapshot");
    let temp = dir.join(".records.snapshot.idemcache-tmp");

    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash_safety: seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = Rng(seed);

    // Generation 0, saved completely before any crash.
    let cache: Cache<String, String> = Cache::new();
    for i in 0..RECORDS {
        cache.insert(format!("key-{i}"), value(0, i));
    }
    cache.save_to(&path).unwrap();
    let mut last = load(&path).expect("generation 0 loads");
    assert_eq!(last, 0);

    let exe = std::env::current_exe().unwrap();
    let mut mid_save = 0;
    let mut temp_left = 0;
    let mut advanced = 0;
    for kill in 0..KILLS {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, &path)
            .env(FIRST_GENERATION_ENV, (last + 1).to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the child");
        let mut markers = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let _ = markers.read_to_end(&mut seen);
            seen
        });
        let delay = rng.next() % MAX_KILL_DELAY.as_micros() as u64;
        std::thread::sleep(Duration::from_micros(delay));
        child.kill().expect("kill the child");
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child only ends by being killed");

        // Killed inside `save_to` if a save began and did not return.
        if reader.join().unwrap().last() == Some(&b'B') {
            mid_save += 1;
        }
        if temp.exists() {
            temp_left += 1; // between creating and renaming the temp file
        }
        let generation = load(&path)
            .unwrap_or_else(|e| panic!("after kill {kill} (delay {delay} µs): {e}; seed {seed}"));
        assert!(
            generation >= last,
            "after kill {kill}: generation {generation} after {last}: went back; seed {seed}"
        );
        if generation > last {
            advanced += 1;
        }
        last = generation;
    }
    println!(
        "crash_safety: {KILLS} kills: {mid_save} inside save_to ({temp_left} of them with the \
         temporary file written but not renamed), {advanced} after a newer save completed; \
         generations 0..={last}: every load was a complete generation"
    );
    // The kills must have exercised both outcomes, or the test showed
    // nothing. The child spends most of its time inside `save_to`, over
    // half of that in file I/O (tests are built optimized for this, see
    // Cargo.toml), and the delays span many saves: each kind of kill has
    // a probability near 0.25 or more per kill, so all three happen in
    // practically every run of 60 (planting a non-atomic write, truncate
    // and write in place, fails this test at its first kill).
    assert!(mid_save > 0, "no kill landed during a save; seed {seed}");
    assert!(
        temp_left > 0,
        "no kill landed between writing and renaming; seed {seed}"
    );
    assert!(advanced > 0, "no save completed before a kill; seed {seed}");
    std::fs::remove_dir_all(&dir).unwrap();
}
