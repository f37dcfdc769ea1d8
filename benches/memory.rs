//! Heap bytes per entry and allocations per insert, measured with a
//! counting global allocator: 1,000,000 entries with 36-byte `String` keys
//! and 8-byte values (`Arc<u64>`, as servers share results) loaded into
//! each structure. Reported overhead = bytes allocated per entry minus the
//! 44-byte payload (36 key bytes + 8 value bytes), so it includes the
//! `String` (24 B) and `Arc` (16 B) headers, as in the reference.
//!
//! `cargo bench --bench memory`

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::BenchKey;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; the
// counters are plain atomics and do not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const N: usize = 1_000_000;
const PAYLOAD: f64 = 36.0 + 8.0;
const TTL: Duration = Duration::from_secs(24 * 3600);

type V = Arc<u64>;

/// Loads N entries through `insert` and reports heap bytes per entry
/// (everything still allocated afterwards, key and value blocks included),
/// that minus the payload, and the structure's own allocations per insert.
fn measure(name: &str, build: impl FnOnce() -> Box<dyn FnMut(String, V) + 'static>) {
    let before_bytes = LIVE_BYTES.load(Ordering::SeqCst);
    let keys: Vec<String> = (0..N as u64).map(String::make).collect();
    let values: Vec<V> = (0..N as u64).map(Arc::new).collect();
    let mut insert = build();
    let before_allocs = ALLOCATIONS.load(Ordering::SeqCst);
    for (key, value) in keys.into_iter().zip(values) {
        insert(key, value);
    }
    let allocs = ALLOCATIONS.load(Ordering::SeqCst) - before_allocs;
    // The two input Vecs' buffers are freed by now; what is live is the
    // keys' and values' blocks and the structure.
    let per_entry = (LIVE_BYTES.load(Ordering::SeqCst) - before_bytes) as f64 / N as f64;
    println!(
        "| {name} | {per_entry:.0} | {:.0} | {:.2} |",
        per_entry - PAYLOAD,
        allocs as f64 / N as f64,
    );
    drop(insert);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it (and in a debug build): only check that it starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark harness: run it with `cargo bench`");
        return;
    }
    let started = Instant::now();
    println!(
        "| structure (1M entries, 36-byte String keys, Arc<u64> values) | heap bytes/entry | overhead bytes/entry (minus 44 B payload) | allocations/insert (structure's own) |"
    );
    println!("|---|---|---|---|");
    measure("std HashMap (hashbrown), no TTL", || {
        let mut map = std::collections::HashMap::new();
        Box::new(move |k, v| {
            map.insert(k, v);
        })
    });
    measure("idemcache", || {
        let cache: idemcache::Cache<String, V> = idemcache::Cache::builder()
            .time_to_live(TTL)
            .build()
            .unwrap();
        Box::new(move |k, v| cache.insert(k, v))
    });
    measure("dashmap + Instant", || {
        let map = dashmap::DashMap::new();
        Box::new(move |k, v| {
            map.insert(k, (v, Instant::now() + TTL));
        })
    });
    measure("quick_cache", || {
        let cache = quick_cache::sync::Cache::new(N);
        Box::new(move |k, v| cache.insert(k, v))
    });
    measure("moka (TTL)", || {
        let cache = moka::sync::Cache::builder().time_to_live(TTL).build();
        Box::new(move |k, v| {
            cache.insert(k, v);
            if cache.entry_count() == 0 {
                cache.run_pending_tasks();
            }
        })
    });
    measure("mini-moka (TTL)", || {
        let cache = mini_moka::sync::Cache::builder().time_to_live(TTL).build();
        Box::new(move |k, v| cache.insert(k, v))
    });
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
}
