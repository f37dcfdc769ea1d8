//! The comparison table: every workload on idemcache and the crates a user
//! would pick instead, in one run, printed as ratios idemcache/peer.
//!
//! `cargo bench --bench compare` (about 20 minutes on 2 cores). Set
//! `COMPARE_OPS` to change the operations per thread per run (default
//! 1,000,000) and `COMPARE_REPS` the runs per cell (default 3; the median
//! is reported). Ratios above 1 mean idemcache is faster.
//!
//! The peers of one row are measured in interleaved rounds (each round
//! runs every peer once, one after the other), so that a shared machine's
//! drift — which moves absolute numbers by 20% or more over minutes —
//! lands on all of them rather than on whichever peer ran at a bad moment.

mod common;

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{BenchKey, Peer, Runs, Store, indices, keys, timed, value};

const PRELOAD: usize = 1_000_000;
const SMALL_PRELOAD: usize = 100_000;
const FULL_CAPACITY: usize = 100_000;

/// A new range of key numbers for every call, so "fresh" keys never repeat.
fn fresh_base() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) * 1_000_000_000_000
}

struct Config {
    ops: usize,
    reps: usize,
    /// `COMPARE_PEERS`: peer names to run (`|`-separated; all if unset).
    peers: Vec<Peer>,
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
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(|a, b| a.total_cmp(b));
    runs[runs.len() / 2]
}

/// Measures the row `(workload, threads)` unless the run filters it out:
/// `reps` rounds, each timing one run of every peer in turn (`run(i)` for
/// the i-th peer of `cfg.peers`, `None` where the workload does not apply
/// to it); each peer's median becomes its cell, in Mops/s.
fn measure(
    cfg: &Config,
    rows: &mut Vec<Row>,
    workload: &str,
    threads: usize,
    mut run: impl FnMut(usize) -> Option<Duration>,
) {
    if !cfg.wants(workload) {
        return;
    }
    eprintln!("  {workload}, {threads} thread(s)");
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); cfg.peers.len()];
    for _ in 0..cfg.reps {
        for (i, peer_runs) in runs.iter_mut().enumerate() {
            if let Some(took) = run(i) {
                peer_runs.push((cfg.ops * threads) as f64 / took.as_secs_f64() / 1e6);
            }
        }
    }
    let mut mops = vec![None; Peer::ALL.len()];
    for (peer, peer_runs) in cfg.peers.iter().zip(runs) {
        let column = Peer::ALL.iter().position(|p| p == peer).unwrap();
        mops[column] = (!peer_runs.is_empty()).then(|| median(peer_runs));
    }
    rows.push(Row {
        workload: workload.to_string(),
        threads,
        mops,
    });
}

/// One list of keys per thread, for workloads that hand keys over.
fn per_thread<K>(threads: usize, make: impl Fn(usize) -> Vec<K>) -> Vec<Mutex<Vec<K>>> {
    (0..threads).map(|t| Mutex::new(make(t))).collect()
}

/// Thread `t`'s list, taken (each list is used by one timed run).
fn take<K>(lists: &[Mutex<Vec<K>>], t: usize) -> Vec<K> {
    std::mem::take(&mut *lists[t].lock().unwrap())
}

/// Reads and mixed reads/writes on preloaded stores (one per peer).
fn preloaded_workloads<K: BenchKey>(
    cfg: &Config,
    rows: &mut Vec<Row>,
    label: &str,
    n: usize,
    full_set: bool,
) {
    let (present, absent) = keys::<K>(n);
    let uniform = indices(n, cfg.ops * 2, false, 1);
    let skewed = indices(n, cfg.ops * 2, true, 2);
    let stores: Vec<Box<dyn Store<K>>> = cfg
        .peers
        .iter()
        .map(|peer| peer.preloaded(&present))
        .collect();
    // Owned copies of the keys `uniform` picks, one list per thread,
    // prepared outside the timing (as a request handler owns its key).
    let owned_keys = |threads: usize| {
        per_thread(threads, |t| {
            uniform[t * cfg.ops..(t + 1) * cfg.ops]
                .iter()
                .map(|&i| present[i as usize].clone())
                .collect()
        })
    };
    for threads in [1, 2] {
        let get = |store: &dyn Store<K>, idx: &[u32]| {
            timed(threads, |t| {
                for &i in &idx[t * cfg.ops..(t + 1) * cfg.ops] {
                    black_box(store.get(&present[i as usize]));
                }
            })
        };
        measure(
            cfg,
            rows,
            &format!("get hit, uniform{label}"),
            threads,
            |p| Some(get(&*stores[p], &uniform)),
        );
        if !full_set {
            continue;
        }
        measure(
            cfg,
            rows,
            &format!("get hit, skewed{label}"),
            threads,
            |p| Some(get(&*stores[p], &skewed)),
        );
        measure(cfg, rows, &format!("get miss{label}"), threads, |p| {
            Some(timed(threads, |t| {
                for &i in &uniform[t * cfg.ops..(t + 1) * cfg.ops] {
                    black_box(stores[p].get(&absent[i as usize]));
                }
            }))
        });
        measure(
            cfg,
            rows,
            &format!("get_or_compute hit{label}"),
            threads,
            |p| {
                let owned = owned_keys(threads);
                Some(timed(threads, |t| {
                    for key in take(&owned, t) {
                        black_box(stores[p].get_or_compute(key, &|| unreachable!("hit")));
                    }
                }))
            },
        );
        // The same owned keys through `get`, dropped after: what the
        // get_or_compute hit above should cost.
        let workload = format!("get hit, caller-owned key{label}");
        measure(cfg, rows, &workload, threads, |p| {
            let owned = owned_keys(threads);
            Some(timed(threads, |t| {
                for key in take(&owned, t) {
                    black_box(stores[p].get(&key));
                }
            }))
        });
    }
    if !full_set {
        return;
    }
    // Mixed 90% get / 10% insert of fresh keys (grows the stores: last).
    for threads in [1, 2] {
        let workload = format!("mixed 90% get / 10% insert{label}");
        measure(cfg, rows, &workload, threads, |p| {
            let store = &*stores[p];
            if !store.writable() {
                return None;
            }
            let fresh = per_thread(threads, |t| {
                let base = fresh_base() + t as u64 * 100_000_000;
                (0..cfg.ops as u64 / 10 + 1)
                    .map(|j| K::make(base + j))
                    .collect()
            });
            Some(timed(threads, |t| {
                let mut fresh = take(&fresh, t).into_iter();
                for (j, &i) in uniform[t * cfg.ops..(t + 1) * cfg.ops].iter().enumerate() {
                    if j % 10 == 0 {
                        store.insert(fresh.next().unwrap(), value(j as u64));
                    } else {
                        black_box(store.get(&present[i as usize]));
                    }
                }
            }))
        });
    }
}

/// Times each thread inserting its own list of fresh keys.
fn insert_all<K: BenchKey>(store: &dyn Store<K>, fresh: Vec<Mutex<Vec<K>>>) -> Duration {
    timed(fresh.len(), |t| {
        for (j, key) in take(&fresh, t).into_iter().enumerate() {
            store.insert(key, value(j as u64));
        }
    })
}

/// Inserts of fresh keys into an empty store, and into a full bounded one.
fn insert_workloads<K: BenchKey>(cfg: &Config, rows: &mut Vec<Row>, label: &str) {
    let fresh_keys = |threads: usize| {
        per_thread(threads, |t| {
            let base = fresh_base() + t as u64 * 100_000_000;
            (0..cfg.ops as u64).map(|j| K::make(base + j)).collect()
        })
    };
    let writable = |peer: Peer| peer.build::<K>(1, false).writable();
    for threads in [1, 2] {
        let workload = format!("insert fresh, empty{label}");
        measure(cfg, rows, &workload, threads, |p| {
            let peer = cfg.peers[p];
            writable(peer).then(|| {
                let store = peer.build::<K>(cfg.ops * threads, false);
                let took = insert_all(&*store, fresh_keys(threads));
                drop(store);
                took
            })
        });
        let workload = format!("insert fresh, full {FULL_CAPACITY} (evicts){label}");
        measure(cfg, rows, &workload, threads, |p| {
            let peer = cfg.peers[p];
            (writable(peer) && peer != Peer::DashMapTtl).then(|| {
                let store = peer.build::<K>(FULL_CAPACITY, true);
                let base = fresh_base();
                for j in 0..FULL_CAPACITY as u64 {
                    store.insert(K::make(base + j), value(j));
                }
                let took = insert_all(&*store, fresh_keys(threads));
                drop(store);
                took
            })
        });
    }
}

/// get_or_compute on misses where half the keys are requested twice: by
/// the other thread (2 threads), or right after (1 thread). Reports
/// closure runs per distinct key too.
fn single_flight_workload<K: BenchKey>(cfg: &Config, rows: &mut Vec<Row>) -> Vec<String> {
    let workload = "get_or_compute miss, 50% duplicates";
    let mut notes = Vec::new();
    for threads in [1, 2] {
        let mut worst_ratio = vec![0.0f64; cfg.peers.len()];
        measure(cfg, rows, workload, threads, |p| {
            let peer = cfg.peers[p];
            let store = peer.build::<K>(cfg.ops * 2, false);
            if !store.writable() {
                return None;
            }
            let seed = fresh_base() / 1_000_000_000;
            let runs = Runs::new();
            // Thread t's sequence: shared keys interleaved with its own.
            let sequences = per_thread(threads, |t| {
                (0..cfg.ops as u64)
                    .map(|j| {
                        // One thread: every key twice in a row. Two
                        // threads: even positions are shared.
                        if j % 2 == 0 || threads == 1 {
                            K::make(seed * 1_000_000_000 + j / 2)
                        } else {
                            K::make(seed * 1_000_000_000 + 500_000_000 + t as u64 * 100_000_000 + j)
                        }
                    })
                    .collect()
            });
            let distinct = if threads == 1 {
                cfg.ops.div_ceil(2)
            } else {
                cfg.ops / 2 + threads * (cfg.ops / 2)
            };
            let took = timed(threads, |t| {
                for key in take(&sequences, t) {
                    black_box(store.get_or_compute(key, &|| {
                        runs.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        value(1)
                    }));
                }
            });
            worst_ratio[p] = worst_ratio[p].max(runs.count() as f64 / distinct as f64);
            drop(store);
            Some(took)
        });
        for (p, ratio) in worst_ratio.iter().enumerate() {
            if *ratio > 0.0 {
                notes.push(format!(
                    "{}: {threads} thread(s): closure runs / distinct keys = {ratio:.4} (worst of runs)",
                    cfg.peers[p].name()
                ));
            }
        }
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
fn protocol_workload(cfg: &Config, rows: &mut Vec<Row>) {
    use common::{ProtocolStore, Record};
    let make = |peer: Peer| -> Option<Box<dyn ProtocolStore>> {
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
    for threads in [1, 2] {
        measure(
            cfg,
            rows,
            "claim → complete → replay (String keys)",
            threads,
            |p| {
                let store = make(cfg.peers[p])?;
                let fresh = per_thread(threads, |t| {
                    let base = fresh_base() + t as u64 * 100_000_000;
                    (0..cfg.ops as u64)
                        .map(|j| <String as BenchKey>::make(base + j))
                        .collect()
                });
                let v = value(7);
                let took = timed(threads, |t| {
                    for key in take(&fresh, t) {
                        black_box(store.cycle(key, &v));
                    }
                });
                drop(store);
                Some(took)
            },
        );
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
    let peers = list_var("COMPARE_PEERS");
    let cfg = Config {
        ops: std::env::var("COMPARE_OPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000),
        reps: std::env::var("COMPARE_REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
        peers: Peer::ALL
            .into_iter()
            .filter(|p| {
                peers
                    .as_ref()
                    .is_none_or(|names| names.iter().any(|n| n == p.name()))
            })
            .collect(),
        only: list_var("COMPARE_ONLY"),
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let stage = |name: &str| eprintln!("[{:>5.0} s] {name}", started.elapsed().as_secs_f64());
    stage("preloaded, String keys");
    preloaded_workloads::<String>(&cfg, &mut rows, "", PRELOAD, true);
    stage("preloaded, u64 keys");
    preloaded_workloads::<u64>(&cfg, &mut rows, " (u64 keys, 100k)", SMALL_PRELOAD, false);
    stage("inserts, String keys");
    insert_workloads::<String>(&cfg, &mut rows, "");
    stage("inserts, u64 keys");
    insert_workloads::<u64>(&cfg, &mut rows, " (u64 keys)");
    stage("single flight");
    notes.extend(single_flight_workload::<String>(&cfg, &mut rows));
    stage("protocol");
    protocol_workload(&cfg, &mut rows);
    let reaper = (cfg.peers.contains(&Peer::Idemcache) && cfg.wants("reaper")).then(reaper_latency);

    println!("\n## idemcache / peer throughput ratios (one run; > 1 means idemcache is faster)\n");
    println!(
        "String keys are 36-byte UUIDs, 1M preloaded unless noted; values Arc<[u8; 256]>; {} ops per thread per run, median of {} interleaved rounds.\n",
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
        println!();
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
