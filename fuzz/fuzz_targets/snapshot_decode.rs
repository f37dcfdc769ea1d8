//! The snapshot file decoder on arbitrary bytes: it returns an error or a
//! snapshot, never panics, and never allocates more than a small multiple
//! of its input (a forged length must not make it reserve gigabytes).
//!
//! The first input byte picks the mode. Raw mode decodes the rest as a
//! whole file, so the header checks (magic, version, length, checksum) are
//! fuzzed; framed mode wraps the rest in a valid header, checksum and type
//! tag first, so the fuzzer reaches the snapshot decoder itself, which a
//! checksum would otherwise shield. Its other bit picks the key and value
//! types. A snapshot that decodes must re-encode to one that decodes
//! equal, and restore into a small bounded cache without breaking it.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

use idemcache::{Cache, Snapshot};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Counts live heap bytes and their peak, to bound what decoding
/// allocates.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged, so it upholds `GlobalAlloc`'s contract exactly as
// `System` does; the counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received (see the impl's comment).
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What decoding `len` bytes may allocate at its peak: serde reserves at
/// most 1 MiB ahead of the elements it has actually decoded, and each
/// decoded byte can become at most a few dozen bytes of structure.
fn allocation_bound(len: usize) -> usize {
    (1 << 20) + 64 * len + 4096
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 2 == 0 {
        check::<String, Vec<u8>>(mode, rest);
    } else {
        check::<(u32, String), Option<(bool, u64)>>(mode, rest);
    }
});

fn check<K, V>(mode: u8, rest: &[u8])
where
    K: Hash + Eq + Clone + Debug + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + PartialEq + Debug + Send + Serialize + DeserializeOwned + 'static,
{
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        Snapshot::<K, V>::__frame_payload(rest)
    };
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = Snapshot::<K, V>::decode(&bytes);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert!(
        peak <= allocation_bound(bytes.len()),
        "decoding {} bytes allocated {peak} bytes at its peak",
        bytes.len()
    );
    let Ok(snapshot) = decoded else {
        return;
    };
    let again = Snapshot::<K, V>::decode(&snapshot.encode().expect("a decoded snapshot encodes"))
        .expect("an encoded snapshot decodes");
    assert_eq!(again, snapshot);

    let cache: Cache<K, V> = Cache::builder()
        .max_entries(8)
        .shards(2)
        .build()
        .unwrap();
    let records = snapshot.len();
    let report = cache.restore(snapshot);
    assert_eq!(
        report.restored + report.skipped_expired + report.skipped_present + report.refused_capacity,
        records,
        "{report:?}"
    );
    assert!(cache.len() <= 8);
    assert_eq!(cache.len(), report.restored);
}
