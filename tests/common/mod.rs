//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use idemcache::clock::ManualClock;
use idemcache::{Cache, CapacityPolicy};

/// A cache on a manual clock with a fixed-seed hasher, so runs repeat,
/// with the default capacity policy.
pub fn manual_cache<K, V>(
    ttl: Duration,
    shards: usize,
    max_entries: Option<usize>,
) -> (Cache<K, V, ahash::RandomState>, ManualClock)
where
    K: std::hash::Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    manual_cache_with(ttl, shards, max_entries, CapacityPolicy::default())
}

/// [`manual_cache`] with the given capacity policy.
pub fn manual_cache_with<K, V>(
    ttl: Duration,
    shards: usize,
    max_entries: Option<usize>,
    policy: CapacityPolicy,
) -> (Cache<K, V, ahash::RandomState>, ManualClock)
where
    K: std::hash::Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let clock = ManualClock::new();
    let mut builder = Cache::builder()
        .time_to_live(ttl)
        .shards(shards)
        .capacity_policy(policy)
        .clock(clock.clone())
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4));
    if let Some(max) = max_entries {
        builder = builder.max_entries(max);
    }
    (builder.build().expect("valid test configuration"), clock)
}

/// Waits until `condition` holds, failing the test (instead of hanging) if
/// it does not within 10 s. For waiting on *other threads*, never on expiry.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A value that counts its live instances, to check that nothing leaks.
#[derive(Debug)]
pub struct Tracked {
    pub id: u64,
    live: Arc<AtomicIsize>,
}

impl Tracked {
    pub fn new(id: u64, live: &Arc<AtomicIsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self {
            id,
            live: Arc::clone(live),
        }
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        Tracked::new(self.id, &self.live)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// A key whose `Hash` panics for key 0 while [`FRAGILE_HASH`] is set: a
/// stored key 0 shows which operations hash stored keys (none may, beyond
/// the caller's own key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FragileKey(pub u64);

/// Arms [`FragileKey`]'s panic (one flag per test binary). Tests that set
/// it hold [`fragile_serial`] first, so tests running in parallel do not
/// see each other's panics.
pub static FRAGILE_HASH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Serializes the tests of one binary that arm [`FRAGILE_HASH`].
pub fn fragile_serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::hash::Hash for FragileKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if self.0 == 0 && FRAGILE_HASH.load(Ordering::SeqCst) {
            panic!("planted panic in Hash");
        }
        self.0.hash(state);
    }
}
