//! Shared by the benchmarks: the value type, key sets, the peers behind one
//! trait, and a multi-threaded timing loop.
#![allow(dead_code)]

use std::convert::Infallible;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Values are `Arc<[u8; 256]>`: what a server caches (a response body
/// behind a shared pointer).
pub type Value = Arc<[u8; 256]>;

pub const TTL: Duration = Duration::from_secs(24 * 3600);

pub fn value(i: u64) -> Value {
    Arc::new([i as u8; 256])
}

/// A small deterministic PRNG (splitmix64), so every run uses the same keys.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A key type the benchmarks can generate: 36-byte UUID strings or `u64`.
pub trait BenchKey: Hash + Eq + Clone + Send + Sync + 'static {
    fn make(n: u64) -> Self;
}

impl BenchKey for u64 {
    fn make(n: u64) -> Self {
        Rng::new(n).next()
    }
}

impl BenchKey for String {
    /// A UUID-v4-shaped string (36 bytes), distinct for each `n`.
    fn make(n: u64) -> Self {
        let mut rng = Rng::new(n ^ 0xA5A5_A5A5);
        let (a, b) = (rng.next(), rng.next());
        let mut key = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        );
        key.shrink_to_fit(); // exactly 36 bytes on the heap
        key
    }
}

/// Keys `0..n` (present) and `n..2n` (absent, for misses).
pub fn keys<K: BenchKey>(n: usize) -> (Vec<K>, Vec<K>) {
    let present = (0..n as u64).map(K::make).collect();
    let absent = (n as u64..2 * n as u64).map(K::make).collect();
    (present, absent)
}

/// Indices into a key set of `n`: uniform, or skewed (`⌊n·u⁴⌋`: half of
/// the lookups go to the hottest 6.25% of keys).
pub fn indices(n: usize, count: usize, skewed: bool, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let u = rng.unit();
            let u = if skewed { u.powi(4) } else { u };
            ((u * n as f64) as usize).min(n - 1) as u32
        })
        .collect()
}

/// A cache under test, behind the operations the workloads need.
pub trait Store<K>: Send + Sync {
    /// Loads `items` before a workload (inserts, unless the store is built
    /// once and then only read).
    fn preload(&mut self, items: Vec<(K, Value)>) {
        for (key, value) in items {
            self.insert(key, value);
        }
    }
    /// Whether the workloads may write (the reference map is read-only).
    fn writable(&self) -> bool {
        true
    }
    fn get(&self, key: &K) -> Option<Value>;
    fn insert(&self, key: K, value: Value);
    /// The crate's single-flight API (or the closest thing it has).
    fn get_or_compute(&self, key: K, compute: &(dyn Fn() -> Value + Sync)) -> Value;
}

/// The crates compared, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Idemcache,
    Moka,
    MiniMoka,
    QuickCache,
    DashMapTtl,
    /// Not a cache: a plain hashbrown map of `(value, deadline)` read
    /// against a coarse clock, the limit a locked sharded map approaches.
    Reference,
}

impl Peer {
    pub const ALL: [Peer; 6] = [
        Peer::Idemcache,
        Peer::Moka,
        Peer::MiniMoka,
        Peer::QuickCache,
        Peer::DashMapTtl,
        Peer::Reference,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Idemcache => "idemcache",
            Peer::Moka => "moka",
            Peer::MiniMoka => "mini-moka",
            Peer::QuickCache => "quick_cache",
            Peer::DashMapTtl => "dashmap+ttl",
            Peer::Reference => "hashbrown ref",
        }
    }

    /// A store sized for `present` and loaded with it (key `i` holding
    /// `value(i)`), as the read workloads start.
    pub fn preloaded<K: BenchKey>(self, present: &[K]) -> Box<dyn Store<K>> {
        let mut store = self.build::<K>(present.len(), false);
        store.preload(
            present
                .iter()
                .enumerate()
                .map(|(i, key)| (key.clone(), value(i as u64)))
                .collect(),
        );
        store
    }

    /// A store with a 24 h TTL; `capacity` bounds it (where the crate
    /// supports a bound) or sizes it (quick_cache, which is always bounded).
    pub fn build<K: BenchKey>(self, capacity: usize, bounded: bool) -> Box<dyn Store<K>> {
        match self {
            Peer::Idemcache => {
                let mut b = idemcache::Cache::builder().time_to_live(TTL);
                if bounded {
                    // Compared with caches that evict: the opt-in policy
                    // that evicts too (the default refuses when full).
                    b = b
                        .max_entries(capacity)
                        .capacity_policy(idemcache::CapacityPolicy::EvictSoonest);
                }
                Box::new(b.build().unwrap())
            }
            Peer::Moka => {
                let mut b = moka::sync::Cache::builder().time_to_live(TTL);
                if bounded {
                    b = b.max_capacity(capacity as u64);
                }
                Box::new(b.build())
            }
            Peer::MiniMoka => {
                let mut b = mini_moka::sync::Cache::builder().time_to_live(TTL);
                if bounded {
                    b = b.max_capacity(capacity as u64);
                }
                Box::new(b.build())
            }
            Peer::QuickCache => {
                let cap = if bounded { capacity } else { capacity * 2 };
                Box::new(quick_cache::sync::Cache::new(cap))
            }
            // No capacity hint: idemcache, moka and mini-moka get none either.
            Peer::DashMapTtl => Box::new(DashTtl::<K>(dashmap::DashMap::new())),
            Peer::Reference => Box::new(Reference::<K>(hashbrown::HashMap::default())),
        }
    }
}

impl<K: BenchKey> Store<K> for idemcache::Cache<K, Value> {
    fn get(&self, key: &K) -> Option<Value> {
        idemcache::Cache::get(self, key)
    }
    fn insert(&self, key: K, value: Value) {
        idemcache::Cache::insert(self, key, value)
    }
    fn get_or_compute(&self, key: K, compute: &(dyn Fn() -> Value + Sync)) -> Value {
        match idemcache::Cache::get_or_compute(self, key, || Ok::<_, Infallible>(compute())) {
            Ok(v) => v,
        }
    }
}

impl<K: BenchKey> Store<K> for moka::sync::Cache<K, Value> {
    fn get(&self, key: &K) -> Option<Value> {
        moka::sync::Cache::get(self, key)
    }
    fn insert(&self, key: K, value: Value) {
        moka::sync::Cache::insert(self, key, value)
    }
    fn get_or_compute(&self, key: K, compute: &(dyn Fn() -> Value + Sync)) -> Value {
        self.get_with(key, compute)
    }
}

impl<K: BenchKey> Store<K> for mini_moka::sync::Cache<K, Value> {
    fn get(&self, key: &K) -> Option<Value> {
        mini_moka::sync::Cache::get(self, key)
    }
    fn insert(&self, key: K, value: Value) {
        mini_moka::sync::Cache::insert(self, key, value)
    }
    /// mini-moka has no single-flight API: check, compute, insert.
    fn get_or_compute(&self, key: K, compute: &(dyn Fn() -> Value + Sync)) -> Value {
        if let Some(v) = mini_moka::sync::Cache::get(self, &key) {
            return v;
        }
        let v = compute();
        mini_moka::sync::Cache::insert(self, key, v.clone());
        v
    }
}

impl<K: BenchKey> Store<K> for quick_cache::sync::Cache<K, Value> {
    fn get(&self, key: &K) -> Option<Value> {
        quick_cache::sync::Cache::get(self, key)
    }
    fn insert(&self, key: K, value: Value) {
        quick_cache::sync::Cache::insert(self, key, value)
    }
    fn get_or_compute(&self, key: K, compute: &(dyn Fn() -> Value + Sync)) -> Value {
        match self.get_or_insert_with(&key, || Ok::<_, Infallible>(compute())) {
            Ok(v) => v,
        }
    }
}

/// What people write when they skip a crate: a DashMap of (value, deadline)
/// with the expiry check by hand.
pub struct DashTtl<K: BenchKey>(pub dashmap::DashMap<K, (Value, Instant)>);

impl<K: BenchKey> Store<K> for DashTtl<K> {
    fn get(&self, key: &K) -> Option<Value> {
        let entry = self.0.get(key)?;
        (Instant::now() < entry.1).then(|| entry.0.clone())
    }
    fn insert(&self, key: K, value: Value) {
        self.0.insert(key, (value, Instant::now() + TTL));
    }
    /// The entry API holds the shard's write lock while computing.
    fn get_or_compute(&self, key: K, compute: &(dyn Fn() -> Value + Sync)) -> Value {
        let now = Instant::now();
        let mut entry = self.0.entry(key).or_insert_with(|| (compute(), now + TTL));
        if entry.1 <= now {
            *entry = (compute(), now + TTL);
        }
        entry.0.clone()
    }
}

/// A record of the idempotency cycle for crates without a protocol: a
/// request in progress, or its stored result.
#[derive(Clone)]
pub enum Record {
    Running,
    Done(Value),
}

/// The claim → complete → replay cycle (see `protocol_workload`).
pub trait ProtocolStore: Send + Sync {
    /// Claims the fresh `key`, stores `result` under it, claims it again
    /// and returns the replayed result.
    fn cycle(&self, key: String, result: &Value) -> Value;
}

impl ProtocolStore for idemcache::Cache<String, Value> {
    fn cycle(&self, key: String, result: &Value) -> Value {
        use idemcache::Claim;
        let Claim::Acquired(reservation) = self.claim(key.clone(), None) else {
            panic!("a fresh key is free");
        };
        reservation
            .complete(result.clone())
            .expect("the holder completes");
        match self.claim(key, None) {
            Claim::Completed(replay) => replay.into_value(),
            _ => panic!("a completed key replays"),
        }
    }
}

impl ProtocolStore for moka::sync::Cache<String, Record> {
    fn cycle(&self, key: String, result: &Value) -> Value {
        let claimed = self.entry(key.clone()).or_insert_with(|| Record::Running);
        assert!(claimed.is_fresh(), "a fresh key is free");
        self.insert(key.clone(), Record::Done(result.clone()));
        match self
            .entry(key)
            .or_insert_with(|| Record::Running)
            .into_value()
        {
            Record::Done(value) => value,
            Record::Running => panic!("a completed key replays"),
        }
    }
}

impl ProtocolStore for dashmap::DashMap<String, (Record, Instant)> {
    fn cycle(&self, key: String, result: &Value) -> Value {
        use dashmap::mapref::entry::Entry;
        let now = Instant::now();
        match self.entry(key.clone()) {
            Entry::Vacant(free) => {
                free.insert((Record::Running, now + Duration::from_secs(30)));
            }
            Entry::Occupied(_) => panic!("a fresh key is free"),
        }
        self.insert(
            key.clone(),
            (Record::Done(result.clone()), Instant::now() + TTL),
        );
        match self.entry(key) {
            Entry::Occupied(held) if Instant::now() < held.get().1 => match &held.get().0 {
                Record::Done(value) => value.clone(),
                Record::Running => panic!("a completed key replays"),
            },
            _ => panic!("a completed key replays"),
        }
    }
}

/// Nanoseconds since the first call, advanced by a thread every
/// millisecond: the cheapest clock a TTL check can read (one relaxed load).
pub fn coarse_now() -> u64 {
    static NOW: AtomicU64 = AtomicU64::new(0);
    static TICKER: std::sync::Once = std::sync::Once::new();
    TICKER.call_once(|| {
        let start = Instant::now();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(1));
                NOW.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        });
    });
    NOW.load(Ordering::Relaxed)
}

/// The reference column: one `hashbrown::HashMap` (ahash, as idemcache
/// uses) of `(value, deadline)`, loaded once and then read through `&self`
/// with the deadline checked against [`coarse_now`]. No lock, no shards,
/// no counters: what a lookup costs when nothing else is paid for.
pub struct Reference<K: BenchKey>(hashbrown::HashMap<K, (Value, u64), ahash::RandomState>);

impl<K: BenchKey> Store<K> for Reference<K> {
    fn preload(&mut self, items: Vec<(K, Value)>) {
        let deadline = coarse_now() + TTL.as_nanos() as u64;
        self.0
            .extend(items.into_iter().map(|(k, v)| (k, (v, deadline))));
    }
    fn writable(&self) -> bool {
        false
    }
    fn get(&self, key: &K) -> Option<Value> {
        let (value, deadline) = self.0.get(key)?;
        (coarse_now() < *deadline).then(|| value.clone())
    }
    fn insert(&self, _: K, _: Value) {
        unreachable!("the reference map is read-only: workloads check `writable`")
    }
    fn get_or_compute(&self, key: K, compute: &(dyn Fn() -> Value + Sync)) -> Value {
        self.get(&key).unwrap_or_else(compute)
    }
}

/// Runs `work(thread)` on `threads` threads started together; returns the
/// time from the first worker's start to the last worker's end, as the
/// workers themselves measure it (the calling thread only waits, taking no
/// core from them).
pub fn timed<F>(threads: usize, work: F) -> Duration
where
    F: Fn(usize) + Sync,
{
    let start = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (start, work) = (&start, &work);
                s.spawn(move || {
                    start.wait();
                    let began = Instant::now();
                    work(t);
                    (began, Instant::now())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    last - first
}

/// Counts closure runs, for the single-flight workloads.
pub struct Runs(pub AtomicU64);

impl Runs {
    pub fn new() -> Self {
        Runs(AtomicU64::new(0))
    }
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
