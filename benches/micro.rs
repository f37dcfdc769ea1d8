//! One idemcache workload per process, one thread, printing `name Mops/s`:
//! the microbenchmark behind the README's A/B table. Build it at two
//! commits and run the two binaries alternately (a shared machine drifts;
//! alternating spreads the drift over both):
//!
//! ```sh
//! cargo bench --bench micro -- get      # get | get64 | goc | ins | ins64 | cycle
//! ```
//!
//! - `get`: 2M `get` hits on 1M String keys (36-byte UUIDs);
//! - `get64`: 2M `get` hits on 100k u64 keys;
//! - `goc`: 2M `get_or_compute` hits on 1M String keys, keys owned by the
//!   caller (cloned before the timing);
//! - `ins`: 1M inserts of fresh String keys into an empty cache;
//! - `ins64`: 5M inserts of u64 keys (1M, then cleared, five times);
//! - `cycle`: 1M `claim` → `complete` → `claim` (replay) cycles on fresh
//!   String keys.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use common::{BenchKey, Rng, TTL, Value};

fn cache<K: BenchKey>() -> idemcache::Cache<K, Value> {
    idemcache::Cache::builder()
        .time_to_live(TTL)
        .build()
        .expect("a valid configuration")
}

fn report(name: &str, ops: usize, started: Instant) {
    println!(
        "{name} {:.3}",
        ops as f64 / started.elapsed().as_secs_f64() / 1e6
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and then it only checks that it starts.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let workload = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map_or("get", String::as_str);
    let n = 1_000_000usize;
    let mut rng = Rng::new(1);
    let picks: Vec<u32> = (0..2_000_000)
        .map(|_| (rng.next() % n as u64) as u32)
        .collect();
    let string_keys = || -> Vec<String> { (0..n as u64).map(String::make).collect() };
    let result = Arc::new([1u8; 256]);
    match workload {
        "get" => {
            let keys = string_keys();
            let cache = cache::<String>();
            for (i, key) in keys.iter().enumerate() {
                cache.insert(key.clone(), common::value(i as u64));
            }
            let started = Instant::now();
            for &i in &picks {
                black_box(cache.get(&keys[i as usize]));
            }
            report("get", picks.len(), started);
        }
        "get64" => {
            let keys: Vec<u64> = (0..100_000).map(u64::make).collect();
            let cache = cache::<u64>();
            for (i, &key) in keys.iter().enumerate() {
                cache.insert(key, common::value(i as u64));
            }
            let started = Instant::now();
            for &i in &picks {
                black_box(cache.get(&keys[i as usize % keys.len()]));
            }
            report("get64", picks.len(), started);
        }
        "goc" => {
            let keys = string_keys();
            let cache = cache::<String>();
            for (i, key) in keys.iter().enumerate() {
                cache.insert(key.clone(), common::value(i as u64));
            }
            let owned: Vec<String> = picks.iter().map(|&i| keys[i as usize].clone()).collect();
            let started = Instant::now();
            for key in owned {
                black_box(
                    cache
                        .get_or_compute(key, || Ok::<_, ()>(Arc::clone(&result)))
                        .ok(),
                );
            }
            report("goc", picks.len(), started);
        }
        "ins" => {
            let fresh: Vec<String> = (0..n as u64).map(|i| String::make(i + (1 << 40))).collect();
            let cache = cache::<String>();
            let started = Instant::now();
            for key in fresh {
                cache.insert(key, Arc::clone(&result));
            }
            report("ins", n, started);
        }
        "ins64" => {
            let fresh: Vec<u64> = (0..n as u64).map(u64::make).collect();
            let cache = cache::<u64>();
            let started = Instant::now();
            for _ in 0..5 {
                for &key in &fresh {
                    cache.insert(key, Arc::clone(&result));
                }
                cache.clear();
            }
            report("ins64", 5 * n, started);
        }
        "cycle" => {
            let fresh: Vec<String> = (0..n as u64).map(|i| String::make(i + (2 << 40))).collect();
            let cache = cache::<String>();
            let started = Instant::now();
            for key in fresh {
                let idemcache::Claim::Acquired(holder) = cache.claim(key.clone(), None) else {
                    panic!("a fresh key is free");
                };
                holder
                    .complete(Arc::clone(&result))
                    .expect("the holder completes");
                let idemcache::Claim::Completed(replay) = cache.claim(key, None) else {
                    panic!("a completed key replays");
                };
                black_box(replay.into_value());
            }
            report("cycle", n, started);
        }
        other => {
            eprintln!("unknown workload {other:?}: get | get64 | goc | ins | ins64 | cycle");
            std::process::exit(2);
        }
    }
}
