//! A plain reference model of the cache, and a harness that applies one
//! operation to both and compares every result.
//!
//! Shared by the proptest suite (`tests/model_based.rs`) and the `ops` fuzz
//! target. The model is a `BTreeMap` from key to (value, deadline, write
//! sequence). Which expired entries a write reclaims is the cache's choice
//! (a bounded amount of work per write): the harness learns it after each
//! step by asking which keys are still stored, and checks that only expired
//! entries vanished that way. Everything else is exact: return values,
//! `len()`, the eviction victim (with one shard), and the counters.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use idemcache::Cache;
use idemcache::clock::ManualClock;

/// Keys come from a small space so that collisions are frequent.
pub const KEYS: u8 = 6;
/// The default time-to-live, in ticks of one millisecond.
pub const TTL_TICKS: u64 = 10;

/// One operation on the cache.
#[derive(Clone, Debug)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Op {
    Insert { key: u8, value: u8 },
    InsertWithTtl { key: u8, value: u8, ttl: u8 },
    Get { key: u8 },
    ContainsKey { key: u8 },
    Remove { key: u8 },
    Clear,
    PurgeExpired,
    ComputeOk { key: u8, value: u8 },
    ComputeErr { key: u8 },
    Advance { ticks: u8 },
}

/// A cache configuration the model is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub shards: usize,
    pub max_entries: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    value: u64,
    deadline: u64,
    seq: u64,
}

/// The cache under test, its clock, and the model it must agree with.
pub struct Harness {
    config: Config,
    cache: Cache<u8, u64, ahash::RandomState>,
    clock: ManualClock,
    entries: BTreeMap<u8, Record>,
    now: u64,
    seq: u64,
    evictions: u64,
    expirations: u64,
    /// Set by a write into a full multi-shard cache: the cache may evict one
    /// live entry (of the written shard, which the model does not know).
    may_evict_one_live: bool,
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Harness {
    pub fn new(config: Config) -> Self {
        let clock = ManualClock::new();
        let mut builder = Cache::builder()
            .shards(config.shards)
            .time_to_live(ticks(TTL_TICKS))
            .clock(clock.clone())
            .hasher(ahash::RandomState::with_seeds(7, 8, 9, 10));
        if let Some(max) = config.max_entries {
            builder = builder.max_entries(max);
        }
        Harness {
            config,
            cache: builder.build().expect("valid configuration"),
            clock,
            entries: BTreeMap::new(),
            now: 0,
            seq: 0,
            evictions: 0,
            expirations: 0,
            may_evict_one_live: false,
        }
    }

    pub fn cache(&self) -> &Cache<u8, u64, ahash::RandomState> {
        &self.cache
    }

    fn live(&self, key: u8) -> Option<u64> {
        self.entries
            .get(&key)
            .filter(|r| self.now < r.deadline)
            .map(|r| r.value)
    }

    /// The model's write: overwrite in place, or make room then insert.
    fn write(&mut self, key: u8, value: u64, ttl: u64) {
        self.seq += 1;
        let record = Record {
            value,
            deadline: self.now + ttl,
            seq: self.seq,
        };
        if self.entries.insert(key, record).is_some() {
            return;
        }
        let Some(max) = self.config.max_entries else {
            return;
        };
        if self.entries.len() <= max {
            return;
        }
        let any_expired = self
            .entries
            .iter()
            .any(|(k, r)| *k != key && r.deadline <= self.now);
        if self.config.shards == 1 {
            if !any_expired {
                // Exactly the live entry with the soonest (deadline, seq).
                let (&victim, _) = self
                    .entries
                    .iter()
                    .filter(|(k, _)| **k != key)
                    .min_by_key(|(_, r)| (r.deadline, r.seq))
                    .expect("a full cache has another entry");
                self.entries.remove(&victim);
                self.evictions += 1;
            }
            // else: one expired entry is reclaimed; `sync` learns which.
        } else {
            self.may_evict_one_live = true;
        }
    }

    /// Applies `op` to the cache and the model, comparing results, then
    /// compares the stored keys, `len()` and counters.
    pub fn step(&mut self, op: &Op) {
        // Fuzzed keys can be anything: fold them into the key space the
        // harness checks after every step.
        let op = &match op.clone() {
            Op::Insert { key, value } => Op::Insert {
                key: key % KEYS,
                value,
            },
            Op::InsertWithTtl { key, value, ttl } => Op::InsertWithTtl {
                key: key % KEYS,
                value,
                ttl,
            },
            Op::Get { key } => Op::Get { key: key % KEYS },
            Op::ContainsKey { key } => Op::ContainsKey { key: key % KEYS },
            Op::Remove { key } => Op::Remove { key: key % KEYS },
            Op::ComputeOk { key, value } => Op::ComputeOk {
                key: key % KEYS,
                value,
            },
            Op::ComputeErr { key } => Op::ComputeErr { key: key % KEYS },
            other => other,
        };
        match *op {
            Op::Insert { key, value } => {
                self.cache.insert(key, u64::from(value));
                self.write(key, u64::from(value), TTL_TICKS);
            }
            Op::InsertWithTtl { key, value, ttl } => {
                let ttl = u64::from(ttl % 21);
                self.cache
                    .insert_with_ttl(key, u64::from(value), ticks(ttl));
                self.write(key, u64::from(value), ttl);
            }
            Op::Get { key } => {
                assert_eq!(self.cache.get(&key), self.live(key), "get({key})");
            }
            Op::ContainsKey { key } => {
                assert_eq!(
                    self.cache.contains_key(&key),
                    self.live(key).is_some(),
                    "contains_key({key})"
                );
            }
            Op::Remove { key } => {
                let expected = self.live(key);
                assert_eq!(self.cache.remove(&key), expected, "remove({key})");
                self.entries.remove(&key);
            }
            Op::Clear => {
                self.cache.clear();
                self.entries.clear();
            }
            Op::PurgeExpired => {
                let now = self.now;
                let before = self.entries.len();
                self.entries.retain(|_, r| now < r.deadline);
                let expired = (before - self.entries.len()) as u64;
                self.expirations += expired;
                assert_eq!(
                    self.cache.purge_expired() as u64,
                    expired,
                    "purge_expired()"
                );
            }
            Op::ComputeOk { key, value } => {
                let expected = self.live(key).unwrap_or(u64::from(value));
                let computes = self.live(key).is_none();
                let mut ran = false;
                let got = self.cache.get_or_compute(key, || {
                    ran = true;
                    Ok::<_, ()>(u64::from(value))
                });
                assert_eq!(got, Ok(expected), "get_or_compute({key}) -> Ok");
                assert_eq!(ran, computes, "closure runs iff no live value");
                if computes {
                    self.write(key, u64::from(value), TTL_TICKS);
                }
            }
            Op::ComputeErr { key } => {
                let expected = self.live(key).ok_or("failed");
                let got = self.cache.get_or_compute(key, || Err("failed"));
                assert_eq!(got, expected, "get_or_compute({key}) -> Err");
            }
            Op::Advance { ticks: n } => {
                let n = u64::from(n % 16);
                self.clock.advance(ticks(n));
                self.now += n;
            }
        }
        self.sync(op);
    }

    /// Learns which expired entries the cache reclaimed, checks that nothing
    /// else vanished or appeared, and compares `len()` and the counters.
    fn sync(&mut self, op: &Op) {
        for key in 0..KEYS {
            let stored = self.cache.__is_stored(&key);
            match self.entries.get(&key) {
                None => assert!(
                    !stored,
                    "{op:?}: key {key} is stored but the model has none"
                ),
                Some(r) if r.deadline <= self.now => {
                    if !stored {
                        // Reclaimed: allowed for expired entries only.
                        self.entries.remove(&key);
                        self.expirations += 1;
                    }
                }
                Some(_) if stored => {}
                Some(_) => {
                    assert!(
                        std::mem::take(&mut self.may_evict_one_live),
                        "{op:?}: live key {key} vanished"
                    );
                    self.entries.remove(&key);
                    self.evictions += 1;
                }
            }
        }
        self.may_evict_one_live = false;
        assert_eq!(self.cache.len(), self.entries.len(), "{op:?}: len()");
        let stored = (0..KEYS).filter(|k| self.cache.__is_stored(k)).count();
        assert_eq!(stored, self.entries.len(), "{op:?}: stored entries");
        if let Some(max) = self.config.max_entries {
            assert!(self.cache.len() <= max, "{op:?}: len() above max_entries");
        }
        let stats = self.cache.stats();
        assert_eq!(stats.evictions, self.evictions, "{op:?}: evictions");
        assert_eq!(stats.expirations, self.expirations, "{op:?}: expirations");
    }
}

/// Runs `ops` against a fresh harness for `config`.
pub fn run(config: Config, ops: &[Op]) {
    let mut harness = Harness::new(config);
    for op in ops {
        harness.step(op);
    }
}
