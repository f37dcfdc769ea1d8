//! A plain reference model of the cache, and a harness that applies one
//! operation to both and compares every result.
//!
//! Shared by the proptest suite (`tests/model_based.rs`) and the `ops` fuzz
//! target. The model is a `BTreeMap` from key to (value, deadline, write
//! sequence, fingerprint), plus the claims in progress with their leases and
//! fencing order. Which expired entries a write reclaims is the cache's
//! choice (a bounded amount of work per write): the harness learns it after
//! each step by asking which keys are still stored, and checks that only
//! expired entries vanished that way. Everything else is exact: return
//! values, `len()`, the eviction victim (with one shard), claim outcomes,
//! fencing, and every counter.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use idemcache::clock::ManualClock;
use idemcache::{Cache, CapacityPolicy, Claim, Fingerprint, Reservation};

/// Keys come from a small space so that collisions are frequent.
pub const KEYS: u8 = 6;
/// The default time-to-live, in ticks of one millisecond.
pub const TTL_TICKS: u64 = 10;
/// The claim lease, in ticks: shorter than the TTL so leases lapse often.
pub const LEASE_TICKS: u64 = 7;

/// One operation on the cache.
#[derive(Clone, Debug)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Op {
    Insert {
        key: u8,
        value: u8,
    },
    InsertWithTtl {
        key: u8,
        value: u8,
        ttl: u8,
    },
    Get {
        key: u8,
    },
    ContainsKey {
        key: u8,
    },
    Remove {
        key: u8,
    },
    Clear,
    PurgeExpired,
    ComputeOk {
        key: u8,
        value: u8,
    },
    ComputeErr {
        key: u8,
    },
    Advance {
        ticks: u8,
    },
    /// Claim `key` with fingerprint `fingerprint % 3` (0: none).
    Claim {
        key: u8,
        fingerprint: u8,
    },
    /// Complete the `reservation % held`-th reservation held.
    Complete {
        reservation: u8,
        value: u8,
        ttl: Option<u8>,
    },
    Release {
        reservation: u8,
    },
    Renew {
        reservation: u8,
    },
}

/// The configurations every suite runs: 1 shard and many, unbounded and
/// bounded, evicting and refusing.
pub const CONFIGS: [Config; 6] = [
    Config {
        shards: 1,
        max_entries: None,
        refuse_when_full: false,
    },
    Config {
        shards: 8,
        max_entries: None,
        refuse_when_full: false,
    },
    Config {
        shards: 1,
        max_entries: Some(3),
        refuse_when_full: false,
    },
    Config {
        shards: 4,
        max_entries: Some(3),
        refuse_when_full: false,
    },
    Config {
        shards: 1,
        max_entries: Some(3),
        refuse_when_full: true,
    },
    Config {
        shards: 4,
        max_entries: Some(3),
        refuse_when_full: true,
    },
];

/// A cache configuration the model is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub shards: usize,
    pub max_entries: Option<usize>,
    pub refuse_when_full: bool,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    value: u64,
    deadline: u64,
    seq: u64,
    fingerprint: Option<Fingerprint>,
}

/// A claim in progress, as the model sees it.
#[derive(Clone, Copy, Debug)]
struct ModelClaim {
    /// Which claim of the model this is (order of acquisition).
    id: u64,
    fingerprint: Option<Fingerprint>,
    lease_deadline: u64,
    invalidated: bool,
}

/// A reservation the harness holds, with the model claim it was for.
struct Held {
    key: u8,
    id: u64,
    reservation: Reservation<u8, u64, ahash::RandomState>,
}

/// The model's counters, compared with `stats()` after every step.
#[derive(Default, Debug, PartialEq)]
struct Counters {
    evictions: u64,
    expirations: u64,
    acquired: u64,
    replayed: u64,
    in_progress: u64,
    mismatches: u64,
    releases: u64,
    lease_expiries: u64,
    fenced: u64,
    refused: u64,
}

/// The cache under test, its clock, and the model it must agree with.
pub struct Harness {
    config: Config,
    cache: Cache<u8, u64, ahash::RandomState>,
    clock: ManualClock,
    entries: BTreeMap<u8, Record>,
    claims: BTreeMap<u8, ModelClaim>,
    held: Vec<Held>,
    /// The largest fencing token seen per key.
    tokens: BTreeMap<u8, u64>,
    now: u64,
    seq: u64,
    next_claim: u64,
    counters: Counters,
    /// Set by a write into a full multi-shard cache: the cache may evict one
    /// live entry (of the written shard, which the model does not know).
    may_evict_one_live: bool,
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fingerprint(n: u8) -> Option<Fingerprint> {
    (n % 3 != 0).then(|| Fingerprint::from_bytes([n % 3; 16]))
}

fn matches(stored: Option<Fingerprint>, asked: Option<Fingerprint>) -> bool {
    stored.is_none() || asked.is_none() || stored == asked
}

impl Harness {
    pub fn new(config: Config) -> Self {
        let clock = ManualClock::new();
        let mut builder = Cache::builder()
            .shards(config.shards)
            .time_to_live(ticks(TTL_TICKS))
            .lease(ticks(LEASE_TICKS))
            .clock(clock.clone())
            .hasher(ahash::RandomState::with_seeds(7, 8, 9, 10));
        if let Some(max) = config.max_entries {
            builder = builder.max_entries(max);
        }
        if config.refuse_when_full {
            builder = builder.capacity_policy(CapacityPolicy::Refuse);
        }
        Harness {
            config,
            cache: builder.build().expect("valid configuration"),
            clock,
            entries: BTreeMap::new(),
            claims: BTreeMap::new(),
            held: Vec::new(),
            tokens: BTreeMap::new(),
            now: 0,
            seq: 0,
            next_claim: 0,
            counters: Counters::default(),
            may_evict_one_live: false,
        }
    }

    pub fn cache(&self) -> &Cache<u8, u64, ahash::RandomState> {
        &self.cache
    }

    fn live(&self, key: u8) -> Option<&Record> {
        self.entries.get(&key).filter(|r| self.now < r.deadline)
    }

    fn live_value(&self, key: u8) -> Option<u64> {
        self.live(key).map(|r| r.value)
    }

    /// Units of the bound in use: entries plus claims in progress.
    fn units(&self) -> usize {
        self.entries.len() + self.claims.len()
    }

    fn invalidate_claim(&mut self, key: u8) {
        if let Some(claim) = self.claims.get_mut(&key) {
            claim.invalidated = true;
        }
    }

    /// Makes room for one more unit in a full bounded cache, as the cache
    /// does: an expired entry (which one: `sync` learns), else the soonest
    /// live entry if the policy allows. `false` if the cache must refuse.
    fn make_room(&mut self, except: u8) -> bool {
        let Some(max) = self.config.max_entries else {
            return true;
        };
        if self.units() < max {
            return true;
        }
        let any_expired = self
            .entries
            .iter()
            .any(|(k, r)| *k != except && r.deadline <= self.now);
        let any_other = self.entries.keys().any(|k| *k != except);
        if self.config.shards > 1 {
            // The written shard reclaims or evicts within itself first, so
            // a live entry may go even while another shard holds expired
            // ones: allow one to vanish (`sync` checks the rest).
            if !self.config.refuse_when_full && any_other {
                self.may_evict_one_live = true;
                return true;
            }
            return any_expired;
        }
        if any_expired {
            // One expired entry gives up its unit; which one, `sync` learns.
            return true;
        }
        if self.config.refuse_when_full || !any_other {
            return false;
        }
        // Exactly the live entry with the soonest (deadline, seq).
        let (&victim, _) = self
            .entries
            .iter()
            .filter(|(k, _)| **k != except)
            .min_by_key(|(_, r)| (r.deadline, r.seq))
            .expect("checked");
        self.entries.remove(&victim);
        self.counters.evictions += 1;
        true
    }

    /// The model's plain write (`insert`, a computation's result):
    /// overwrite in place, or take a unit (making room) for a new entry.
    /// Returns whether it was stored (a full cache may refuse).
    fn write(&mut self, key: u8, value: u64, ttl: u64) -> bool {
        self.seq += 1;
        let record = Record {
            value,
            deadline: self.now + ttl,
            seq: self.seq,
            fingerprint: None,
        };
        if let Some(existing) = self.entries.get_mut(&key) {
            *existing = record;
            return true;
        }
        if !self.make_room(key) {
            self.counters.refused += 1;
            return false;
        }
        self.entries.insert(key, record);
        true
    }

    /// An `insert`: when stored, it wins over a claim of the key.
    fn insert(&mut self, key: u8, value: u64, ttl: u64) {
        if self.write(key, value, ttl) {
            self.invalidate_claim(key);
        }
    }

    /// Holds `key` for a claim, if one is in progress and its lease has not
    /// lapsed. A lapsed one is taken over (and forgotten) here.
    fn live_claim(&mut self, key: u8) -> Option<ModelClaim> {
        let claim = *self.claims.get(&key)?;
        if self.now < claim.lease_deadline {
            return Some(claim);
        }
        None
    }

    fn take_over_lapsed(&mut self, key: u8) {
        if self.claims.remove(&key).is_some() {
            self.counters.lease_expiries += 1;
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
            Op::Claim { key, fingerprint } => Op::Claim {
                key: key % KEYS,
                fingerprint,
            },
            other => other,
        };
        match *op {
            Op::Insert { key, value } => {
                self.cache.insert(key, u64::from(value));
                self.insert(key, u64::from(value), TTL_TICKS);
            }
            Op::InsertWithTtl { key, value, ttl } => {
                let ttl = u64::from(ttl % 21);
                self.cache
                    .insert_with_ttl(key, u64::from(value), ticks(ttl));
                self.insert(key, u64::from(value), ttl);
            }
            Op::Get { key } => {
                assert_eq!(self.cache.get(&key), self.live_value(key), "get({key})");
            }
            Op::ContainsKey { key } => {
                assert_eq!(
                    self.cache.contains_key(&key),
                    self.live(key).is_some(),
                    "contains_key({key})"
                );
            }
            Op::Remove { key } => {
                let expected = self.live_value(key);
                assert_eq!(self.cache.remove(&key), expected, "remove({key})");
                self.entries.remove(&key);
                self.invalidate_claim(key);
            }
            Op::Clear => {
                self.cache.clear();
                self.entries.clear();
                for claim in self.claims.values_mut() {
                    claim.invalidated = true;
                }
            }
            Op::PurgeExpired => {
                let now = self.now;
                let before = self.entries.len();
                self.entries.retain(|_, r| now < r.deadline);
                let expired = (before - self.entries.len()) as u64;
                self.counters.expirations += expired;
                // A purge also ends claims whose lease lapsed.
                let claims = self.claims.len();
                self.claims.retain(|_, c| now < c.lease_deadline);
                self.counters.lease_expiries += (claims - self.claims.len()) as u64;
                assert_eq!(
                    self.cache.purge_expired() as u64,
                    expired,
                    "purge_expired()"
                );
            }
            Op::ComputeOk { key, value } => {
                if self.live_value(key).is_none() && self.live_claim(key).is_some() {
                    return self.sync(op); // would wait for the claim: skip
                }
                let expected = self.live_value(key).unwrap_or(u64::from(value));
                let computes = self.live_value(key).is_none();
                let mut ran = false;
                let got = self.cache.get_or_compute(key, || {
                    ran = true;
                    Ok::<_, ()>(u64::from(value))
                });
                assert_eq!(got, Ok(expected), "get_or_compute({key}) -> Ok");
                assert_eq!(ran, computes, "closure runs iff no live value");
                if computes {
                    self.take_over_lapsed(key);
                    self.write(key, u64::from(value), TTL_TICKS);
                }
            }
            Op::ComputeErr { key } => {
                if self.live_value(key).is_none() && self.live_claim(key).is_some() {
                    return self.sync(op);
                }
                let expected = self.live_value(key).ok_or("failed");
                let got = self.cache.get_or_compute(key, || Err("failed"));
                assert_eq!(got, expected, "get_or_compute({key}) -> Err");
                if expected.is_err() {
                    self.take_over_lapsed(key);
                }
            }
            Op::Advance { ticks: n } => {
                let n = u64::from(n % 16);
                self.clock.advance(ticks(n));
                self.now += n;
            }
            Op::Claim {
                key,
                fingerprint: fp,
            } => self.claim(key, fingerprint(fp)),
            Op::Complete {
                reservation,
                value,
                ttl,
            } => self.complete(reservation, u64::from(value), ttl),
            Op::Release { reservation } => {
                if let Some(held) = self.take_held(reservation) {
                    if self.is_current(&held) {
                        self.claims.remove(&held.key);
                        self.counters.releases += 1;
                    }
                    held.reservation.release();
                }
            }
            Op::Renew { reservation } => {
                if !self.held.is_empty() {
                    let index = usize::from(reservation) % self.held.len();
                    let current = self.is_current(&self.held[index]);
                    let renewed = self.held[index].reservation.renew();
                    assert_eq!(renewed.is_ok(), current, "renew: fenced iff taken over");
                    if current {
                        let key = self.held[index].key;
                        self.claims.get_mut(&key).expect("current").lease_deadline =
                            self.now + LEASE_TICKS;
                    } else {
                        self.counters.fenced += 1;
                    }
                }
            }
        }
        self.sync(op);
    }

    fn take_held(&mut self, index: u8) -> Option<Held> {
        if self.held.is_empty() {
            return None;
        }
        let index = usize::from(index) % self.held.len();
        Some(self.held.swap_remove(index))
    }

    /// Whether a held reservation is still its key's claim.
    fn is_current(&self, held: &Held) -> bool {
        self.claims.get(&held.key).is_some_and(|c| c.id == held.id)
    }

    fn claim(&mut self, key: u8, fingerprint: Option<Fingerprint>) {
        let got = self.cache.claim(key, fingerprint);
        // The expected outcome, in the protocol's order.
        let expected = if let Some(record) = self.live(key).copied() {
            if matches(record.fingerprint, fingerprint) {
                self.counters.replayed += 1;
                "completed"
            } else {
                self.counters.mismatches += 1;
                "mismatch"
            }
        } else if let Some(claim) = self.claims.get(&key).copied()
            && self.now < claim.lease_deadline
            && !matches(claim.fingerprint, fingerprint)
        {
            self.counters.mismatches += 1;
            "mismatch"
        } else if self.live_claim(key).is_some() {
            self.counters.in_progress += 1;
            "in progress"
        } else if self.claims.contains_key(&key) {
            // A lapsed claim: taken over, its unit passes on.
            self.take_over_lapsed(key);
            self.acquire(key, fingerprint);
            "acquired"
        } else if self.make_room(u8::MAX) {
            // (`u8::MAX`: the key's own expired entry may be reclaimed too.)
            self.acquire(key, fingerprint);
            "acquired"
        } else {
            self.counters.refused += 1;
            "full"
        };
        match (expected, got) {
            ("completed", Claim::Completed(replay)) => {
                let record = self.live(key).expect("live");
                assert_eq!(*replay.value(), record.value, "claim({key}) replay");
                assert_eq!(replay.fingerprint(), record.fingerprint);
                assert_eq!(replay.expires_in(), ticks(record.deadline - self.now));
            }
            ("mismatch", Claim::Mismatch) | ("full", Claim::Full) => {}
            ("in progress", Claim::InProgress(pending)) => {
                let claim = self.claims[&key];
                assert_eq!(
                    pending.lease_remaining(),
                    Some(ticks(claim.lease_deadline - self.now))
                );
            }
            ("acquired", Claim::Acquired(reservation)) => {
                let last = self.tokens.insert(key, reservation.token()).unwrap_or(0);
                assert!(
                    reservation.token() > last,
                    "fencing tokens increase per key"
                );
                assert_eq!(reservation.fingerprint(), fingerprint);
                let id = self.claims[&key].id;
                self.held.push(Held {
                    key,
                    id,
                    reservation,
                });
            }
            (expected, got) => panic!("claim({key}): expected {expected}, got {got:?}"),
        }
    }

    fn acquire(&mut self, key: u8, fingerprint: Option<Fingerprint>) {
        self.next_claim += 1;
        self.counters.acquired += 1;
        self.claims.insert(
            key,
            ModelClaim {
                id: self.next_claim,
                fingerprint,
                lease_deadline: self.now + LEASE_TICKS,
                invalidated: false,
            },
        );
    }

    fn complete(&mut self, index: u8, value: u64, ttl: Option<u8>) {
        let Some(held) = self.take_held(index) else {
            return;
        };
        let ttl_ticks = ttl.map_or(TTL_TICKS, |t| u64::from(t % 21));
        let current = self.is_current(&held);
        let result = match ttl {
            None => held.reservation.complete(value),
            Some(_) => held.reservation.complete_with_ttl(value, ticks(ttl_ticks)),
        };
        if !current {
            let stale = result.expect_err("a taken-over reservation is fenced");
            assert_eq!(stale.into_value(), value, "the value comes back");
            self.counters.fenced += 1;
            return;
        }
        assert!(result.is_ok(), "the current claim completes");
        let claim = self.claims.remove(&held.key).expect("current");
        if claim.invalidated {
            return; // the newer state wins; the unit is freed
        }
        self.seq += 1;
        // The claim's unit becomes the entry's (or is freed on overwrite).
        self.entries.insert(
            held.key,
            Record {
                value,
                deadline: self.now + ttl_ticks,
                seq: self.seq,
                fingerprint: claim.fingerprint,
            },
        );
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
                        self.counters.expirations += 1;
                    }
                }
                Some(_) if stored => {}
                Some(_) => {
                    assert!(
                        std::mem::take(&mut self.may_evict_one_live),
                        "{op:?}: live key {key} vanished"
                    );
                    self.entries.remove(&key);
                    self.counters.evictions += 1;
                }
            }
        }
        self.may_evict_one_live = false;
        assert_eq!(self.cache.len(), self.entries.len(), "{op:?}: len()");
        let stored = (0..KEYS).filter(|k| self.cache.__is_stored(k)).count();
        assert_eq!(stored, self.entries.len(), "{op:?}: stored entries");
        if let Some(max) = self.config.max_entries {
            assert!(
                self.units() <= max,
                "{op:?}: entries + claims above max_entries"
            );
        }
        let s = self.cache.stats();
        let seen = Counters {
            evictions: s.evictions,
            expirations: s.expirations,
            acquired: s.acquired,
            replayed: s.replayed,
            in_progress: s.in_progress,
            mismatches: s.mismatches,
            releases: s.releases,
            lease_expiries: s.lease_expiries,
            fenced: s.fenced,
            refused: s.refused,
        };
        assert_eq!(seen, self.counters, "{op:?}: counters");
    }
}

/// Runs `ops` against a fresh harness for `config`.
pub fn run(config: Config, ops: &[Op]) {
    let mut harness = Harness::new(config);
    for op in ops {
        harness.step(op);
    }
}
