//! What persistence costs: the time of each step of a save and a restore
//! of 1M records, the file's size, and `get` latency on live keys while
//! another thread takes snapshots back to back (shard locks are held while
//! a snapshot copies their entries).
//!
//! `cargo bench --features persistence --bench persistence` (about a
//! minute on 2 cores). `PERSIST_RECORDS` changes the record count.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idemcache::{Cache, Snapshot};

/// A 36-byte key, as a UUID in text, and a 64-byte value, as a small JSON
/// receipt would be.
fn key(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i as u32, i)
}

fn value(i: usize) -> String {
    format!("{{\"charge\":\"ch_{i:016}\",\"amount\":4200,\"ok\":true}}      ")
}

fn filled(records: usize) -> Cache<String, String> {
    let cache = Cache::builder()
        .time_to_live(Duration::from_secs(3600))
        .build()
        .unwrap();
    for i in 0..records {
        cache.insert(key(i), value(i));
    }
    cache
}

fn timed<T>(what: &str, records: usize, run: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = run();
    let took = start.elapsed();
    println!(
        "| {what} | {:.1} | {:.0} |",
        took.as_secs_f64() * 1e3,
        records as f64 / took.as_secs_f64() / 1e6 * 1e3
    );
    out
}

/// `get` latency percentiles and maximum (ns) over live keys, with or
/// without a thread snapshotting the cache in a loop meanwhile. Closed
/// loop (one get after another): a long stall shows in the maximum rather
/// than in the percentiles, so both are reported.
fn get_latency(cache: &Cache<String, String>, records: usize, snapshotting: bool) -> [f64; 4] {
    let stop = AtomicBool::new(false);
    let snapshots = AtomicUsize::new(0);
    let keys: Vec<String> = (0..records).step_by(7).map(key).collect();
    let mut samples = Vec::with_capacity(4_000_000);
    std::thread::scope(|s| {
        if snapshotting {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    black_box(cache.snapshot());
                    snapshots.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let until = Instant::now() + Duration::from_secs(5);
        let mut i = 0;
        while Instant::now() < until {
            let k = &keys[(i * 7919) % keys.len()];
            let start = Instant::now();
            black_box(cache.get(k));
            samples.push(start.elapsed().as_nanos() as f64);
            i += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    if snapshotting {
        assert!(
            snapshots.load(Ordering::Relaxed) > 0,
            "a snapshot ran meanwhile"
        );
        println!(
            "({} snapshots taken during the measurement)",
            snapshots.load(Ordering::Relaxed)
        );
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    [at(0.5), at(0.99), at(0.999), samples[samples.len() - 1]]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark harness: run it with `cargo bench`");
        return;
    }
    let records: usize = std::env::var("PERSIST_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("idemcache-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.snapshot");

    let cache = filled(records);
    println!("\n{records} records, 36-byte String keys, 64-byte String values\n");
    println!("| step | ms | thousand records/s |\n|---|---|---|");
    let snapshot = timed("`cache.snapshot()`", records, || cache.snapshot());
    let bytes = timed("`snapshot.encode()`", records, || {
        snapshot.encode().unwrap()
    });
    timed(
        "`snapshot.save_to(path)` (encode + write + fsync + rename)",
        records,
        || snapshot.save_to(&path).unwrap(),
    );
    let loaded = timed(
        "`Snapshot::load_from(path)` (read + verify + decode)",
        records,
        || Snapshot::<String, String>::load_from(&path).unwrap(),
    );
    let fresh: Cache<String, String> = Cache::new();
    let report = timed(
        "`cache.restore(snapshot)` into an empty cache",
        records,
        || fresh.restore(loaded),
    );
    assert_eq!(report.restored, records);
    println!(
        "\nfile size: {} bytes ({:.1} bytes/record)\n",
        bytes.len(),
        bytes.len() as f64 / records as f64
    );
    drop((snapshot, bytes, fresh));

    let quiet = get_latency(&cache, records, false);
    let busy = get_latency(&cache, records, true);
    println!("| get latency (µs) | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|");
    for (name, l) in [("no snapshot", quiet), ("snapshots back to back", busy)] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            l[0] / 1e3,
            l[1] / 1e3,
            l[2] / 1e3,
            l[3] / 1e3
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
