//! A plain reference model of the cache, and a harness that applies one
//! operation to both and compares every result.
//!
//! Shared by the model-based proptest suite (`src/tests/model_based.rs`)
//! and the `ops` fuzz target (`fuzz/fuzz_targets/ops.rs`, which includes
//! this file by path). Both are built with the test-only hook
//! `Cache::__is_stored` (under `cfg(test)` and `cfg(fuzzing)`), and both
//! name the crate `idemcache` (inside the crate through the root's
//! `extern crate self as idemcache`).
//!
//! The model is a `BTreeMap` from key to (value, deadline, write sequence,
//! fingerprint), plus the claims in progress with their leases, fencing
//! order, and whether their holder abandoned them. A claim ends when it is
//! completed, released, taken over after its lease lapsed, purged, or
//! reclaimed by a full cache; an abandoned claim (its reservation dropped
//! unfinished) keeps its key and its unit of the bound until then.
//!
//! What the model cannot know is learned after each step and checked to be
//! allowed:
//!
//! - which expired entries a write reclaimed (a bounded amount of work per
//!   write): by asking which keys are still stored; only expired entries
//!   may vanish that way;
//! - which lapsed claim a full cache reclaimed to make room: every claim is
//!   watched by a [`Pending`] taken right after it was acquired (one extra
//!   `claim` of the key, which answers `InProgress` and is counted as such),
//!   whose [`Waited`] outcome tells whether the claim left the cache. With
//!   one shard exactly one lapsed claim goes (which one is the flight
//!   table's order); with several, the model does not know which shard was
//!   written, so one lapsed claim or (evicting) one live entry may go.
//!
//! Everything else is exact: return values, `len()`, claims in progress,
//! whether a full cache makes room or refuses, the eviction victim (with
//! one shard), claim outcomes, staleness, fencing, every watcher's outcome,
//! and every counter.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use idemcache::clock::ManualClock;
use idemcache::{
    Cache, CapacityPolicy, Claim, Completion, Fingerprint, NotStored, Pending, Reservation, Waited,
};

/// Keys come from a small space so that collisions are frequent.
pub(crate) const KEYS: u8 = 6;
/// The default time-to-live, in ticks of one millisecond.
pub(crate) const TTL_TICKS: u64 = 10;
/// The claim lease, in ticks: shorter than the TTL so leases lapse often.
pub(crate) const LEASE_TICKS: u64 = 7;

/// One operation on the cache.
#[derive(Clone, Debug)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub(crate) enum Op {
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
    /// Drop the `reservation % held`-th reservation held, unfinished: the
    /// claim is abandoned and keeps its key until its lease lapses.
    Abandon {
        reservation: u8,
    },
}

/// The configurations every suite runs: 1 shard and many, unbounded and
/// bounded, evicting and refusing (the default policy).
pub(crate) const CONFIGS: [Config; 6] = [
    Config {
        shards: 1,
        max_entries: None,
        policy: CapacityPolicy::Refuse,
    },
    Config {
        shards: 8,
        max_entries: None,
        policy: CapacityPolicy::Refuse,
    },
    Config {
        shards: 1,
        max_entries: Some(3),
        policy: CapacityPolicy::EvictSoonest,
    },
    Config {
        shards: 4,
        max_entries: Some(3),
        policy: CapacityPolicy::EvictSoonest,
    },
    Config {
        shards: 1,
        max_entries: Some(3),
        policy: CapacityPolicy::Refuse,
    },
    Config {
        shards: 4,
        max_entries: Some(3),
        policy: CapacityPolicy::Refuse,
    },
];

/// A cache configuration the model is checked against. A `Refuse` policy
/// is left to the builder's default (and checked to be it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) shards: usize,
    pub(crate) max_entries: Option<usize>,
    pub(crate) policy: CapacityPolicy,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    value: u64,
    deadline: u64,
    seq: u64,
    fingerprint: Option<Fingerprint>,
}

/// A claim that holds its key, as the model sees it: in progress,
/// abandoned, or lapsed but not yet taken over or reclaimed.
#[derive(Clone, Copy, Debug)]
struct ModelClaim {
    /// Which claim of the model this is (order of acquisition).
    id: u64,
    token: u64,
    fingerprint: Option<Fingerprint>,
    lease_deadline: u64,
    invalidated: bool,
    /// The reservation was dropped unfinished before the lease lapsed.
    abandoned: bool,
}

/// A reservation the harness holds, with the model claim it was for.
struct Held {
    key: u8,
    id: u64,
    token: u64,
    reservation: Reservation<u8, u64, ahash::RandomState>,
}

/// How the model ended a claim, as its watcher must see it.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Completed with `value`; a replay expires at tick `expires_at` (the
    /// completion's time when the value was not stored).
    Completed {
        value: u64,
        expires_at: u64,
    },
    Released,
    Lapsed,
}

/// Watches one claim from its acquisition until its end.
struct Watcher {
    key: u8,
    id: u64,
    fingerprint: Option<Fingerprint>,
    pending: Pending<u8, u64, ahash::RandomState>,
}

/// The model's counters, compared with `stats()` after every step.
#[derive(Default, Debug, PartialEq)]
struct Counters {
    hits: u64,
    misses: u64,
    inserts: u64,
    computations: u64,
    evictions: u64,
    expirations: u64,
    acquired: u64,
    replayed: u64,
    in_progress: u64,
    mismatches: u64,
    releases: u64,
    abandoned: u64,
    lease_expiries: u64,
    fenced: u64,
    refused_claims: u64,
    refused_inserts: u64,
}

/// What a write into a full cache may give up beyond expired entries,
/// which `sync` learns and checks. At most one unit is given up per write.
#[derive(Clone, Copy, Debug, Default)]
struct Room {
    /// One shard: exactly one lapsed claim was reclaimed.
    reclaims_lapsed: bool,
    /// Several shards: one lapsed claim may have been reclaimed.
    may_reclaim_lapsed: bool,
    /// Several shards, evicting: one live entry (of the written shard,
    /// which the model does not know) may have been evicted.
    may_evict_live: bool,
}

/// The cache under test, its clock, and the model it must agree with.
pub(crate) struct Harness {
    config: Config,
    cache: Cache<u8, u64, ahash::RandomState>,
    clock: ManualClock,
    entries: BTreeMap<u8, Record>,
    claims: BTreeMap<u8, ModelClaim>,
    held: Vec<Held>,
    watchers: Vec<Watcher>,
    /// Claims the model ended, by id, until their watcher confirms it.
    ended: BTreeMap<u64, End>,
    /// The largest fencing token seen per key.
    tokens: BTreeMap<u8, u64>,
    now: u64,
    seq: u64,
    next_claim: u64,
    counters: Counters,
    /// Set by a write into a full cache, for `sync`.
    room: Room,
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fingerprint(n: u8) -> Option<Fingerprint> {
    match n % 3 {
        0 => None,
        n => Some(Fingerprint::from_bytes([n; 16])),
    }
}

fn matches(stored: Option<Fingerprint>, asked: Option<Fingerprint>) -> bool {
    stored.is_none() || asked.is_none() || stored == asked
}

impl Harness {
    pub(crate) fn new(config: Config) -> Self {
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
        if config.policy != CapacityPolicy::Refuse {
            builder = builder.capacity_policy(config.policy);
        }
        let cache = builder.build().expect("valid configuration");
        assert_eq!(
            cache.capacity_policy(),
            config.policy,
            "Refuse is the default"
        );
        Harness {
            config,
            cache,
            clock,
            entries: BTreeMap::new(),
            claims: BTreeMap::new(),
            held: Vec::new(),
            watchers: Vec::new(),
            ended: BTreeMap::new(),
            tokens: BTreeMap::new(),
            now: 0,
            seq: 0,
            next_claim: 0,
            counters: Counters::default(),
            room: Room::default(),
        }
    }

    pub(crate) fn cache(&self) -> &Cache<u8, u64, ahash::RandomState> {
        &self.cache
    }

    fn live(&self, key: u8) -> Option<&Record> {
        self.entries.get(&key).filter(|r| self.now < r.deadline)
    }

    fn live_value(&self, key: u8) -> Option<u64> {
        self.live(key).map(|r| r.value)
    }

    /// Units of the bound in use: entries plus claims (abandoned and
    /// lapsed ones included, until they are reclaimed).
    fn units(&self) -> usize {
        self.entries.len() + self.claims.len()
    }

    fn invalidate_claim(&mut self, key: u8) {
        if let Some(claim) = self.claims.get_mut(&key) {
            claim.invalidated = true;
        }
    }

    /// Makes room for one more unit in a full bounded cache, as the cache
    /// does: an expired entry (which one: `sync` learns), else a lapsed
    /// claim (which one: `sync` learns from the watchers), else the
    /// soonest live entry if the policy evicts. `false` if the cache must
    /// refuse.
    fn make_room(&mut self) -> bool {
        let Some(max) = self.config.max_entries else {
            return true;
        };
        if self.units() < max {
            return true;
        }
        let now = self.now;
        let any_expired = self.entries.values().any(|r| r.deadline <= now);
        let any_lapsed = self.claims.values().any(|c| c.lease_deadline <= now);
        let evicts = self.config.policy == CapacityPolicy::EvictSoonest;
        if self.config.shards > 1 {
            // The written shard gives up an expired entry, a lapsed claim
            // or (evicting) its soonest live entry before the other shards
            // are asked, so any of these may go while another shard holds
            // something reclaimable: allow one (`sync` checks the rest).
            self.room.may_reclaim_lapsed = any_lapsed;
            if evicts && !self.entries.is_empty() {
                self.room.may_evict_live = true;
                return true;
            }
            return any_expired || any_lapsed;
        }
        if any_expired {
            // One expired entry gives up its unit; which one, `sync` learns.
            return true;
        }
        if any_lapsed {
            self.room.reclaims_lapsed = true;
            return true;
        }
        if !evicts || self.entries.is_empty() {
            return false;
        }
        // Exactly the live entry with the soonest (deadline, seq).
        let (&victim, _) = self
            .entries
            .iter()
            .min_by_key(|(_, r)| (r.deadline, r.seq))
            .expect("checked");
        self.entries.remove(&victim);
        self.counters.evictions += 1;
        true
    }

    /// The model's plain write (`insert`, a computation's result):
    /// overwrite in place (even an expired entry), or take a unit (making
    /// room) for a new entry. Returns whether it was stored (a full cache
    /// may refuse).
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
            self.counters.inserts += 1;
            return true;
        }
        if !self.make_room() {
            self.counters.refused_inserts += 1;
            return false;
        }
        self.entries.insert(key, record);
        self.counters.inserts += 1;
        true
    }

    /// An `insert`: when stored, it wins over a claim of the key.
    fn insert(&mut self, key: u8, value: u64, ttl: u64) {
        if self.write(key, value, ttl) {
            self.invalidate_claim(key);
        }
    }

    /// The claim holding `key` whose lease has not lapsed (abandoned or
    /// not), if any.
    fn live_claim(&self, key: u8) -> Option<ModelClaim> {
        let claim = *self.claims.get(&key)?;
        (self.now < claim.lease_deadline).then_some(claim)
    }

    /// Ends `key`'s claim as `end`, which its watcher must then see.
    fn end_claim(&mut self, key: u8, end: End) -> ModelClaim {
        let claim = self.claims.remove(&key).expect("a claim to end");
        self.ended.insert(claim.id, end);
        claim
    }

    /// A claim or computation of `key` takes its lapsed claim (if any)
    /// over.
    fn take_over_lapsed(&mut self, key: u8) {
        if self.claims.contains_key(&key) {
            self.end_claim(key, End::Lapsed);
            self.counters.lease_expiries += 1;
        }
    }

    /// Applies `op` to the cache and the model, comparing results, then
    /// compares the stored keys, claims, watchers, `len()` and counters.
    pub(crate) fn step(&mut self, op: &Op) {
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
                let expected = self.live_value(key);
                assert_eq!(self.cache.get(&key), expected, "get({key})");
                match expected {
                    Some(_) => self.counters.hits += 1,
                    None => self.counters.misses += 1,
                }
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
                // A purge also ends claims whose lease lapsed, abandoned
                // or not.
                let lapsed: Vec<u8> = self
                    .claims
                    .iter()
                    .filter(|(_, c)| c.lease_deadline <= now)
                    .map(|(k, _)| *k)
                    .collect();
                for key in lapsed {
                    self.end_claim(key, End::Lapsed);
                    self.counters.lease_expiries += 1;
                }
                assert_eq!(
                    self.cache.purge_expired() as u64,
                    expired,
                    "purge_expired()"
                );
            }
            Op::ComputeOk { key, value } => {
                if self.live_value(key).is_none() && self.live_claim(key).is_some() {
                    // Would wait for the claim (an abandoned one until its
                    // lease lapses): skip.
                    return self.sync(op);
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
                    self.counters.misses += 1;
                    self.counters.computations += 1;
                    self.take_over_lapsed(key);
                    self.write(key, u64::from(value), TTL_TICKS);
                } else {
                    self.counters.hits += 1;
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
                    self.counters.misses += 1;
                    self.counters.computations += 1;
                    self.take_over_lapsed(key);
                } else {
                    self.counters.hits += 1;
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
                        self.end_claim(held.key, End::Released);
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
                    if current {
                        assert_eq!(renewed, Ok(ticks(LEASE_TICKS)), "renew: a full lease");
                        let key = self.held[index].key;
                        self.claims.get_mut(&key).expect("current").lease_deadline =
                            self.now + LEASE_TICKS;
                    } else {
                        let fenced = renewed.expect_err("renew: fenced iff no longer the key's");
                        assert_eq!(fenced.token(), self.held[index].token);
                        self.counters.fenced += 1;
                    }
                }
            }
            Op::Abandon { reservation } => {
                if let Some(held) = self.take_held(reservation) {
                    self.abandon(&held);
                    drop(held.reservation);
                }
            }
        }
        self.sync(op);
    }

    /// Discards every reservation still held, as a server that stops
    /// without finishing its handlers does: each is abandoned (here with
    /// [`Reservation::abandon`], which is what dropping one does, said
    /// explicitly), and checked like any step.
    pub(crate) fn discard_held(&mut self) {
        while let Some(held) = self.held.pop() {
            self.abandon(&held);
            held.reservation.abandon();
            self.sync(&Op::Abandon { reservation: 0 });
        }
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

    /// The model's side of abandoning `held`: a claim still in its lease
    /// keeps the key until the lease lapses; one whose lease already
    /// lapsed ends at once (abandoned and lapsed); a claim that no longer
    /// holds its key changes nothing.
    fn abandon(&mut self, held: &Held) {
        if !self.is_current(held) {
            return;
        }
        self.counters.abandoned += 1;
        let now = self.now;
        let claim = self.claims.get_mut(&held.key).expect("current");
        if now < claim.lease_deadline {
            claim.abandoned = true;
        } else {
            self.end_claim(held.key, End::Lapsed);
            self.counters.lease_expiries += 1;
        }
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
        } else if let Some(claim) = self.live_claim(key) {
            if matches(claim.fingerprint, fingerprint) {
                self.counters.in_progress += 1;
                "in progress"
            } else {
                self.counters.mismatches += 1;
                "mismatch"
            }
        } else if self.claims.contains_key(&key) {
            // A lapsed claim (abandoned or not): taken over, its unit
            // passes on.
            self.take_over_lapsed(key);
            "acquired"
        } else if self.make_room() {
            "acquired"
        } else {
            self.counters.refused_claims += 1;
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
                    Some(ticks(claim.lease_deadline - self.now)),
                    "claim({key}): the holder's lease"
                );
                assert_eq!(pending.token(), claim.token, "claim({key}): the holder");
                assert_eq!(pending.fingerprint(), claim.fingerprint);
                assert_eq!(
                    pending.is_abandoned(),
                    claim.abandoned,
                    "claim({key}): abandoned"
                );
            }
            ("acquired", Claim::Acquired(reservation)) => self.acquired(key, reservation),
            (expected, got) => panic!("claim({key}): expected {expected}, got {got:?}"),
        }
    }

    /// Records a claim the cache granted, and starts watching it.
    fn acquired(&mut self, key: u8, reservation: Reservation<u8, u64, ahash::RandomState>) {
        let token = reservation.token();
        let last = self.tokens.insert(key, token).unwrap_or(0);
        assert!(token > last, "fencing tokens increase per key");
        let fingerprint = reservation.fingerprint();
        self.next_claim += 1;
        self.counters.acquired += 1;
        let id = self.next_claim;
        self.claims.insert(
            key,
            ModelClaim {
                id,
                token,
                fingerprint,
                lease_deadline: self.now + LEASE_TICKS,
                invalidated: false,
                abandoned: false,
            },
        );
        assert_eq!(reservation.lease_remaining(), ticks(LEASE_TICKS));
        self.held.push(Held {
            key,
            id,
            token,
            reservation,
        });
        // The watcher: a second claim of the key, which waits on this one.
        let Claim::InProgress(pending) = self.cache.claim(key, None) else {
            panic!("claim({key}) just after acquiring it: expected in progress");
        };
        self.counters.in_progress += 1;
        assert_eq!(pending.token(), token, "the watcher watches the new claim");
        self.watchers.push(Watcher {
            key,
            id,
            fingerprint,
            pending,
        });
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
            let stale = result.expect_err("a reservation that lost its key is fenced");
            assert_eq!(stale.token(), held.token);
            assert_eq!(stale.into_value(), value, "the value comes back");
            self.counters.fenced += 1;
            return;
        }
        let completion = result.expect("the current claim completes");
        let claim = self.claims[&held.key];
        if claim.invalidated {
            // The newer state wins; the unit is freed. Waiters still get
            // the value.
            assert_eq!(
                completion,
                Completion::NotStored(NotStored::Invalidated),
                "complete: invalidated"
            );
            self.end_claim(
                held.key,
                End::Completed {
                    value,
                    expires_at: self.now,
                },
            );
            return;
        }
        assert!(
            completion.is_stored(),
            "complete: stored, got {completion:?}"
        );
        let deadline = self.now + ttl_ticks;
        self.end_claim(
            held.key,
            End::Completed {
                value,
                expires_at: deadline,
            },
        );
        self.seq += 1;
        self.counters.inserts += 1;
        // The claim's unit becomes the entry's (or is freed on overwrite).
        self.entries.insert(
            held.key,
            Record {
                value,
                deadline,
                seq: self.seq,
                fingerprint: claim.fingerprint,
            },
        );
    }

    /// Learns which lapsed claims a full cache reclaimed and checks every
    /// watcher's outcome; returns how many claims were reclaimed.
    fn sync_claims(&mut self, op: &Op) -> usize {
        let now = self.now;
        let mut reclaimed = 0;
        for watcher in std::mem::take(&mut self.watchers) {
            let seen = watcher.pending.wait_timeout(Duration::ZERO);
            let key = watcher.key;
            let holds = self
                .claims
                .get(&key)
                .filter(|c| c.id == watcher.id)
                .copied();
            let end = match holds {
                Some(claim) if seen == Waited::Lapsed => {
                    // Reclaimed to make room: checked by the caller.
                    assert!(
                        claim.lease_deadline <= now,
                        "{op:?}: the claim of key {key} ended before its lease lapsed"
                    );
                    self.claims.remove(&key);
                    self.counters.lease_expiries += 1;
                    reclaimed += 1;
                    continue;
                }
                Some(claim) => {
                    let left = ticks(claim.lease_deadline.saturating_sub(now));
                    let expected = if claim.abandoned {
                        Waited::Abandoned { frees_in: left }
                    } else {
                        Waited::TimedOut
                    };
                    assert_eq!(seen, expected, "{op:?}: the claim of key {key}");
                    assert_eq!(watcher.pending.is_abandoned(), claim.abandoned);
                    assert_eq!(watcher.pending.lease_remaining(), Some(left));
                    self.watchers.push(watcher);
                    continue;
                }
                None => self
                    .ended
                    .remove(&watcher.id)
                    .unwrap_or_else(|| panic!("{op:?}: a claim of key {key} vanished")),
            };
            match (end, seen) {
                (End::Completed { value, expires_at }, Waited::Completed(replay)) => {
                    assert_eq!(*replay.value(), value, "{op:?}: key {key}'s waiters' value");
                    assert_eq!(replay.fingerprint(), watcher.fingerprint);
                    assert_eq!(replay.expires_in(), ticks(expires_at.saturating_sub(now)));
                }
                (End::Released, Waited::Released) | (End::Lapsed, Waited::Lapsed) => {}
                (end, seen) => {
                    panic!("{op:?}: the claim of key {key} ended {end:?}, seen {seen:?}")
                }
            }
        }
        reclaimed
    }

    /// Learns which expired entries the cache reclaimed and which lapsed
    /// claim or live entry a full cache gave up, checks that nothing else
    /// vanished or appeared, and compares `len()`, the claims in progress,
    /// the reservations held and the counters.
    fn sync(&mut self, op: &Op) {
        let room = std::mem::take(&mut self.room);
        let reclaimed = self.sync_claims(op);
        let mut evicted = 0;
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
                    assert!(room.may_evict_live, "{op:?}: live key {key} vanished");
                    self.entries.remove(&key);
                    self.counters.evictions += 1;
                    evicted += 1;
                }
            }
        }
        if room.reclaims_lapsed {
            assert_eq!(
                (reclaimed, evicted),
                (1, 0),
                "{op:?}: one lapsed claim reclaimed to make room"
            );
        } else {
            assert!(
                reclaimed == 0 || room.may_reclaim_lapsed,
                "{op:?}: a lapsed claim was reclaimed"
            );
            assert!(
                reclaimed + evicted <= 1,
                "{op:?}: one unit given up at most"
            );
        }
        assert_eq!(self.cache.len(), self.entries.len(), "{op:?}: len()");
        let stored = (0..KEYS).filter(|k| self.cache.__is_stored(k)).count();
        assert_eq!(stored, self.entries.len(), "{op:?}: stored entries");
        assert_eq!(
            self.cache.claims_in_progress(),
            self.claims.len(),
            "{op:?}: claims_in_progress()"
        );
        if let Some(max) = self.config.max_entries {
            assert!(
                self.units() <= max,
                "{op:?}: entries + claims above max_entries"
            );
        }
        for held in &self.held {
            let claim = self.claims.get(&held.key).filter(|c| c.id == held.id);
            let holds = claim.is_some_and(|c| self.now < c.lease_deadline);
            assert_eq!(
                held.reservation.is_stale(),
                !holds,
                "{op:?}: is_stale() of the claim of key {}",
                held.key
            );
            if let Some(claim) = claim {
                assert_eq!(
                    held.reservation.lease_remaining(),
                    ticks(claim.lease_deadline.saturating_sub(self.now))
                );
            }
        }
        let s = self.cache.stats();
        let seen = Counters {
            hits: s.hits,
            misses: s.misses,
            inserts: s.inserts,
            computations: s.computations,
            evictions: s.evictions,
            expirations: s.expirations,
            acquired: s.acquired,
            replayed: s.replayed,
            in_progress: s.in_progress,
            mismatches: s.mismatches,
            releases: s.releases,
            abandoned: s.abandoned,
            lease_expiries: s.lease_expiries,
            fenced: s.fenced,
            refused_claims: s.refused_claims,
            refused_inserts: s.refused_inserts,
        };
        assert_eq!(seen, self.counters, "{op:?}: counters");
        assert_eq!(s.coalesced, 0, "{op:?}: nobody waited");
    }
}

/// Runs `ops` against a fresh harness for `config`, then discards the
/// reservations still held.
pub(crate) fn run(config: Config, ops: &[Op]) {
    let mut harness = Harness::new(config);
    for op in ops {
        harness.step(op);
    }
    harness.discard_held();
}
