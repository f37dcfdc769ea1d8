//! The comparison table: every workload on idemcache and the crates a user
//! would pick instead, in one run, printed as ratios idemcache/peer.
//!
//! `cargo bench --bench compare` (about 10 minutes on 2 cores). Set
//! `COMPARE_OPS` to change the operations per thread per run (default
//! 1,000,000) and `COMPARE_REPS` the runs per cell (default 3; the median
//! is reported). Ratios above 1 mean idemcache is faster.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{BenchKey, Peer, Runs, Store, indices, keys, timed, value};

const PRELOAD: usize = 1_000_000;

/// A new range of key numbers for every call, so "fresh" keys never repeat.
fn fresh_base() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) * 1_000_000_000_000
}
const SMALL_PRELOAD: usize = 100_000;
const FULL_CAPACITY: usize = 100_000;

struct Config {
    ops: usize,
    reps: usize,
    /// `COMPARE_PEERS`: peer names to run (`|`-separated; all if unset).
    peers: Option<Vec<String>>,
    /// `COMPARE_ONLY`: run the workloads whose name contains one of these
    /// (`|`-separated; all if unset). For A/B runs while iterating.
    only: Option<Vec<String>>,
}

impl Config {
    fn wants(&self, workload: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|w| workload.contains(w.as_str())))
    }

    fn runs(&self, peer: Peer) -> bool {
        self.peers
            .as_ref()
            .is_none_or(|peers| peers.iter().any(|p| p == peer.name()))
    }
}

fn list_var(name: &str) -> Option<Vec<String>> {
    let value = std::env::var(name).ok()?;
    Some(value.split('|').map(|s| s.trim().to_string()).collect())
}

struct Row {
    workload: String,
    threads: usize,
    /// Million operations per second, per peer (`None`: not applicable).
    mops: Vec<Option<f64>>,
    note: String,
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(|a, b| a.total_cmp(b));
    runs[runs.len() / 2]
}

/// Median throughput of `reps` timed runs of `ops` operations per thread.
fn throughput(cfg: &Config, threads: usize, mut run: impl FnMut() -> Duration) -> f64 {
    let runs = (0..cfg.reps)
        .map(|_| {
            let took = run();
            (cfg.ops * threads) as f64 / took.as_secs_f64() / 1e6
        })
        .collect();
    median(runs)
}

/// Measures `peer` on the row `(workload, threads)` unless the run
/// filters the workload out (`run` gives `None` where it does not apply).
fn measure(
    cfg: &Config,
    rows: &mut Vec<Row>,
    workload: &str,
    threads: usize,
    peer: Peer,
    run: impl FnOnce() -> Option<f64>,
) {
    if cfg.wants(workload) {
        record(rows, workload, threads, peer, run());
    }
}

/// Adds a measurement for `peer` to the row `(workload, threads)`.
fn record(rows: &mut Vec<Row>, workload: &str, threads: usize, peer: Peer, mops: Option<f64>) {
    let column = Peer::ALL.iter().position(|p| *p == peer).unwrap();
    let row = match rows
        .iter_mut()
        .position(|r| r.workload == workload && r.threads == threads)
    {
        Some(i) => &mut rows[i],
        None => {
            rows.push(Row {
                workload: workload.to_string(),
                threads,
                mops: vec![None; Peer::ALL.len()],
                note: String::new(),
            });
            rows.last_mut().unwrap()
        }
    };
    row.mops[column] = mops;
}

/// Reads and mixed reads/writes on a preloaded store.
fn preloaded_workloads<K: BenchKey>(
    cfg: &Config,
    rows: &mut Vec<Row>,
    peer: Peer,
    label: &str,
    n: usize,
    full_set: bool,
) {
    let (present, absent) = keys::<K>(n);
    let uniform = indices(n, cfg.ops * 2, false, 1);
    let skewed = indices(n, cfg.ops * 2, true, 2);
    let mut store = peer.build::<K>(n, false);
    store.preload(
        present
            .iter()
            .enumerate()
            .map(|(i, key)| (key.clone(), value(i as u64)))
            .collect(),
    );
    let store = &*store;
    // Owned copies of the keys `uniform` picks, one list per thread,
    // prepared outside the timing (as a request handler owns its key).
    let owned_keys = |threads: usize| -> Vec<std::sync::Mutex<Vec<K>>> {
        (0..threads)
            .map(|t| {
                std::sync::Mutex::new(
                    uniform[t * cfg.ops..(t + 1) * cfg.ops]
                        .iter()
                        .map(|&i| present[i as usize].clone())
                        .collect(),
                )
            })
            .collect()
    };
    for threads in [1, 2] {
        let get = |idx: &[u32]| {
            throughput(cfg, threads, || {
                timed(threads, |t| {
                    for &i in &idx[t * cfg.ops..(t + 1) * cfg.ops] {
                        black_box(store.get(&present[i as usize]));
                    }
                })
            })
        };
        measure(
            cfg,
            rows,
            &format!("get hit, uniform{label}"),
            threads,
            peer,
            || Some(get(&uniform)),
        );
        if !full_set {
            continue;
        }
        measure(
            cfg,
            rows,
            &format!("get hit, skewed{label}"),
            threads,
            peer,
            || Some(get(&skewed)),
        );
        measure(
            cfg,
            rows,
            &format!("get miss{label}"),
            threads,
            peer,
            || {
                Some(throughput(cfg, threads, || {
                    timed(threads, |t| {
                        for &i in &uniform[t * cfg.ops..(t + 1) * cfg.ops] {
                            black_box(store.get(&absent[i as usize]));
                        }
                    })
                }))
            },
        );
        measure(
            cfg,
            rows,
            &format!("get_or_compute hit{label}"),
            threads,
            peer,
            || {
                Some(throughput(cfg, threads, || {
                    let owned = owned_keys(threads);
                    timed(threads, |t| {
                        for key in std::mem::take(&mut *owned[t].lock().unwrap()) {
                            black_box(store.get_or_compute(key, &|| unreachable!("hit")));
                        }
                    })
                }))
            },
        );
        // The same owned keys through `get`, dropped after: what the
        // get_or_compute hit above should cost.
        measure(
            cfg,
            rows,
            &format!("get hit, caller-owned key{label}"),
            threads,
            peer,
            || {
                Some(throughput(cfg, threads, || {
                    let owned = owned_keys(threads);
                    timed(threads, |t| {
                        for key in std::mem::take(&mut *owned[t].lock().unwrap()) {
                            black_box(store.get(&key));
                        }
                    })
                }))
            },
        );
    }
    if !full_set {
        return;
    }
    // Mixed 90% get / 10% insert of fresh keys (grows the store: last).
    for threads in [1, 2] {
        let workload = format!("mixed 90% get / 10% insert{label}");
        measure(cfg, rows, &workload, threads, peer, || {
            store.writable().then(|| {
                throughput(cfg, threads, || {
                    let fresh: Vec<std::sync::Mutex<Vec<K>>> = (0..threads)
                        .map(|t| {
                            let base = fresh_base() + t as u64 * 100_000_000;
                            std::sync::Mutex::new(
                                (0..cfg.ops as u64 / 10 + 1)
                                    .map(|j| K::make(base + j))
                                    .collect(),
                            )
                        })
                        .collect();
                    timed(threads, |t| {
                        let mut fresh = std::mem::take(&mut *fresh[t].lock().unwrap()).into_iter();
                        for (j, &i) in uniform[t * cfg.ops..(t + 1) * cfg.ops].iter().enumerate() {
                            if j % 10 == 0 {
                                store.insert(fresh.next().unwrap(), value(j as u64));
                            } else {
                                black_box(store.get(&present[i as usize]));
                            }
                        }
                    })
                })
            })
        });
    }
}

/// Times each thread inserting its own list of fresh keys.
fn insert_all<K: BenchKey>(store: &dyn Store<K>, fresh: Vec<std::sync::Mutex<Vec<K>>>) -> Duration {
    timed(fresh.len(), |t| {
        let keys = std::mem::take(&mut *fresh[t].lock().unwrap());
        for (j, key) in keys.into_iter().enumerate() {
            store.insert(key, value(j as u64));
        }
    })
}

/// Inserts of fresh keys into an empty store, and into a full bounded one.
fn insert_workloads<K: BenchKey>(cfg: &Config, rows: &mut Vec<Row>, peer: Peer, label: &str) {
    let fresh_keys = |threads: usize| -> Vec<std::sync::Mutex<Vec<K>>> {
        (0..threads)
            .map(|t| {
                let base = fresh_base() + t as u64 * 100_000_000;
                std::sync::Mutex::new((0..cfg.ops as u64).map(|j| K::make(base + j)).collect())
            })
            .collect()
    };
    let writable = peer.build::<K>(1, false).writable();
    for threads in [1, 2] {
        let workload = format!("insert fresh, empty{label}");
        measure(cfg, rows, &workload, threads, peer, || {
            writable.then(|| {
                throughput(cfg, threads, || {
                    let store = peer.build::<K>(cfg.ops * threads, false);
                    let took = insert_all(&*store, fresh_keys(threads));
                    drop(store);
                    took
                })
            })
        });
        let workload = format!("insert fresh, full {FULL_CAPACITY} (evicts){label}");
        measure(cfg, rows, &workload, threads, peer, || {
            (writable && peer != Peer::DashMapTtl).then(|| {
                throughput(cfg, threads, || {
                    let store = peer.build::<K>(FULL_CAPACITY, true);
                    let base = fresh_base();
                    for j in 0..FULL_CAPACITY as u64 {
                        store.insert(K::make(base + j), value(j));
                    }
                    let took = insert_all(&*store, fresh_keys(threads));
                    drop(store);
                    took
                })
            })
        });
    }
}

/// get_or_compute on misses where half the keys are requested twice: by
/// the other thread (2 threads), or right after (1 thread). Reports
/// closure runs per distinct key too.
fn single_flight_workload<K: BenchKey>(
    cfg: &Config,
    rows: &mut Vec<Row>,
    peer: Peer,
) -> Vec<String> {
    let mut notes = Vec::new();
    let workload = "get_or_compute miss, 50% duplicates";
    if !cfg.wants(workload) || !peer.build::<K>(1, false).writable() {
        return notes;
    }
    for threads in [1, 2] {
        let mut worst_ratio: f64 = 0.0;
        let mops = throughput(cfg, threads, || {
            let seed = fresh_base() / 1_000_000_000;
            let store = peer.build::<K>(cfg.ops * 2, false);
            let runs = Runs::new();
            // Thread t's sequence: shared keys interleaved with its own.
            let sequences: Vec<std::sync::Mutex<Vec<K>>> = (0..threads)
                .map(|t| {
                    std::sync::Mutex::new(
                        (0..cfg.ops as u64)
                            .map(|j| {
                                // One thread: every key twice in a row. Two
                                // threads: even positions are shared.
                                if j % 2 == 0 || threads == 1 {
                                    K::make(seed * 1_000_000_000 + j / 2)
                                } else {
                                    K::make(
                                        seed * 1_000_000_000
                                            + 500_000_000
                                            + t as u64 * 100_000_000
                                            + j,
                                    )
                                }
                            })
                            .collect(),
                    )
                })
                .collect();
            let distinct = if threads == 1 {
                cfg.ops.div_ceil(2)
            } else {
                cfg.ops / 2 + threads * (cfg.ops / 2)
            };
            let took = timed(threads, |t| {
                for key in std::mem::take(&mut *sequences[t].lock().unwrap()) {
                    black_box(store.get_or_compute(key, &|| {
                        runs.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        value(1)
                    }));
                }
            });
            worst_ratio = worst_ratio.max(runs.count() as f64 / distinct as f64);
            drop(store);
            took
        });
        record(rows, workload, threads, peer, Some(mops));
        notes.push(format!("{}: {threads} thread(s): closure runs / distinct keys = {worst_ratio:.4} (worst of runs)", peer.name()));
    }
    notes
}

/// The idempotency cycle, as each crate's user would write it: claim a
/// fresh key (it must be free), store the result under it, then claim it
/// again as a retry does (it must replay the result). One cycle per
/// operation; the key is cloned for the second claim inside the timing,
/// for every peer. idemcache uses `claim` → `Reservation::complete` →
/// `claim`; moka its `entry` API over a `Running`/`Done` record; dashmap
/// its entry API over the same record with a deadline.
fn protocol_workload(cfg: &Config, rows: &mut Vec<Row>, peer: Peer) {
    use common::{ProtocolStore, Record};
    let workload = "claim → complete → replay (String keys)";
    if !cfg.wants(workload) {
        return;
    }
    let make = || -> Option<Box<dyn ProtocolStore>> {
        match peer {
            Peer::Idemcache => Some(Box::new(
                idemcache::Cache::<String, common::Value>::builder()
                    .time_to_live(common::TTL)
                    .build()
                    .unwrap(),
            )),
            Peer::Moka => Some(Box::new(
                moka::sync::Cache::<String, Record>::builder()
                    .time_to_live(common::TTL)
                    .build(),
            )),
            Peer::DashMapTtl => Some(Box::new(
                dashmap::DashMap::<String, (Record, Instant)>::new(),
            )),
            _ => None,
        }
    };
    if make().is_none() {
        return;
    }
    for threads in [1, 2] {
        let mops = throughput(cfg, threads, || {
            let store = make().expect("checked above");
            let fresh: Vec<std::sync::Mutex<Vec<String>>> = (0..threads)
                .map(|t| {
                    let base = fresh_base() + t as u64 * 100_000_000;
                    std::sync::Mutex::new(
                        (0..cfg.ops as u64)
                            .map(|j| <String as BenchKey>::make(base + j))
                            .collect(),
                    )
                })
                .collect();
            let v = value(7);
            let took = timed(threads, |t| {
                for key in std::mem::take(&mut *fresh[t].lock().unwrap()) {
                    black_box(store.cycle(key, &v));
                }
            });
            drop(store);
            took
        });
        record(rows, workload, threads, peer, Some(mops));
    }
}

/// `get` latency on live keys while the reaper purges 1M expired entries,
/// against the same store with no reaper.
fn reaper_latency() -> String {
    fn percentiles(with_reaper: bool) -> (f64, f64, f64) {
        let mut builder =
            idemcache::Cache::<String, common::Value>::builder().time_to_live(common::TTL);
        if with_reaper {
            builder = builder.background_eviction(Duration::from_millis(20));
        }
        let cache = builder.build().unwrap();
        let (live, doomed) = keys::<String>(PRELOAD);
        for (i, key) in live.iter().take(100_000).enumerate() {
            cache.insert(key.clone(), value(i as u64));
        }
        for (i, key) in doomed.into_iter().enumerate() {
            cache.insert_with_ttl(key, value(i as u64), Duration::from_millis(300));
        }
        std::thread::sleep(Duration::from_millis(300)); // all 1M expire now
        let idx = indices(100_000, 2_000_000, false, 9);
        let mut samples = Vec::with_capacity(idx.len());
        for &i in &idx {
            let start = Instant::now();
            black_box(cache.get(&live[i as usize]));
            samples.push(start.elapsed().as_nanos() as f64);
        }
        let purged = PRELOAD + 100_000 - cache.len();
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        if with_reaper {
            assert!(purged > 0, "the reaper purged during the measurement");
        }
        (at(0.5), at(0.99), at(0.999))
    }
    let (a50, a99, a999) = percentiles(false);
    let (b50, b99, b999) = percentiles(true);
    format!(
        "| get latency (ns), 100k live + 1M expired | p50 | p99 | p99.9 |\n|---|---|---|---|\n\
         | no reaper | {a50:.0} | {a99:.0} | {a999:.0} |\n\
         | reaper purging the 1M | {b50:.0} | {b99:.0} | {b999:.0} |\n\
         | ratio | {:.2} | {:.2} | {:.2} |",
        b50 / a50,
        b99 / a99,
        b999 / a999
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it (and in a debug build): only check that it starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark harness: run it with `cargo bench`");
        return;
    }
    let cfg = Config {
        ops: std::env::var("COMPARE_OPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000),
        reps: std::env::var("COMPARE_REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
        peers: list_var("COMPARE_PEERS"),
        only: list_var("COMPARE_ONLY"),
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for peer in Peer::ALL.into_iter().filter(|&p| cfg.runs(p)) {
        eprintln!(
            "[{:>5.0} s] {}",
            started.elapsed().as_secs_f64(),
            peer.name()
        );
        preloaded_workloads::<String>(&cfg, &mut rows, peer, "", PRELOAD, true);
        preloaded_workloads::<u64>(
            &cfg,
            &mut rows,
            peer,
            " (u64 keys, 100k)",
            SMALL_PRELOAD,
            false,
        );
        insert_workloads::<String>(&cfg, &mut rows, peer, "");
        insert_workloads::<u64>(&cfg, &mut rows, peer, " (u64 keys)");
        notes.extend(single_flight_workload::<String>(&cfg, &mut rows, peer));
        protocol_workload(&cfg, &mut rows, peer);
    }
    let reaper = (cfg.runs(Peer::Idemcache) && cfg.wants("reaper")).then(reaper_latency);

    println!("\n## idemcache / peer throughput ratios (one run; > 1 means idemcache is faster)\n");
    println!(
        "String keys are 36-byte UUIDs, 1M preloaded unless noted; values Arc<[u8; 256]>; {} ops per thread per run, median of {} runs.\n",
        cfg.ops, cfg.reps
    );
    print!("| workload | threads | idemcache Mops/s |");
    for peer in &Peer::ALL[1..] {
        print!(" vs {} |", peer.name());
    }
    println!();
    println!("|---|---|---|{}", "---|".repeat(Peer::ALL.len() - 1));
    for row in &rows {
        let ours = row.mops[0];
        print!(
            "| {} | {} | {} |",
            row.workload,
            row.threads,
            ours.map_or("n/a".into(), |m| format!("{m:.2}"))
        );
        for theirs in &row.mops[1..] {
            match (ours, theirs) {
                (Some(a), Some(b)) => print!(" {:.2}× |", a / b),
                _ => print!(" n/a |"),
            }
        }
        println!("{}", row.note);
    }
    println!("\n## Absolute throughput, same run (Mops/s)\n");
    print!("| workload | threads |");
    for peer in Peer::ALL {
        print!(" {} |", peer.name());
    }
    println!();
    println!("|---|---|{}", "---|".repeat(Peer::ALL.len()));
    for row in &rows {
        print!("| {} | {} |", row.workload, row.threads);
        for m in &row.mops {
            print!(" {} |", m.map_or("n/a".into(), |m| format!("{m:.2}")));
        }
        println!();
    }
    println!("\n## Single flight: closure runs per distinct key\n");
    for note in notes {
        println!("- {note}");
    }
    if let Some(reaper) = reaper {
        println!("\n## Reaper\n\n{reaper}");
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
}
