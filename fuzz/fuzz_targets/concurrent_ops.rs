//! Two threads apply fuzzed operation lists to one cache, under either
//! capacity policy. Only invariants that hold under any interleaving are
//! checked: no panic, `len()` within `max_entries`, every returned value
//! (read, computed, replayed, or seen by a waiter) was written for that key,
//! and nothing is returned past its deadline. Claims are ended within the
//! operation that made them: completed, released, or abandoned (explicitly
//! or by a drop); an abandoning thread then moves the clock past the lease,
//! so a `get_or_compute` waiting on the abandoned key goes on. At the end,
//! once every deadline has passed, a purge must leave nothing behind: no
//! entry, no claim, and every unit of the bound free again.
#![no_main]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use idemcache::clock::ManualClock;
use idemcache::{Cache, CapacityPolicy, Claim, Fingerprint, Waited};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, arbitrary::Arbitrary)]
enum Op {
    Insert {
        key: u8,
        ttl: u8,
    },
    Get {
        key: u8,
    },
    Remove {
        key: u8,
    },
    Compute {
        key: u8,
        fail: bool,
    },
    Purge,
    Clear,
    Advance {
        ticks: u8,
    },
    Claim {
        key: u8,
        fingerprint: u8,
        then: Then,
    },
}

/// How a claim that acquired its key is ended, in the same operation.
#[derive(Debug, Clone, Copy, arbitrary::Arbitrary)]
enum Then {
    Complete,
    Release,
    Abandon,
    Drop,
}

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    shards: u8,
    max_entries: u8,
    evict_when_full: bool,
    a: Vec<Op>,
    b: Vec<Op>,
}

/// What was written under a value id: its key, and an upper bound on its
/// deadline (the clock read after the write returned, plus the TTL), or
/// `None` while the write is still running.
type Log = Mutex<HashMap<u64, (u8, Option<Duration>)>>;

const KEYS: u8 = 4;
const TTL: Duration = Duration::from_millis(10);
const LEASE: Duration = Duration::from_millis(4);

struct World {
    cache: Cache<u8, u64, ahash::RandomState>,
    clock: ManualClock,
    max_entries: Option<usize>,
    log: Log,
}

impl World {
    fn write(&self, id: u64, key: u8, ttl: Duration, write: impl FnOnce()) {
        self.log.lock().unwrap().insert(id, (key, None));
        write();
        let bound = self.clock.elapsed() + ttl;
        self.log.lock().unwrap().insert(id, (key, Some(bound)));
    }

    fn check_read(&self, key: u8, read_at: Duration, value: Option<u64>) {
        let Some(id) = value else { return };
        let log = self.log.lock().unwrap();
        let (written_key, bound) = *log.get(&id).expect("a returned value was written");
        assert_eq!(written_key, key, "value {id} returned for key {key}");
        if let Some(deadline) = bound {
            assert!(read_at < deadline, "value {id} returned past its deadline");
        }
    }

    fn claim(&self, id: u64, key: u8, fingerprint: u8, then: Then, read_at: Duration) {
        let fingerprint = fingerprint % 3;
        let fingerprint = (fingerprint != 0).then(|| Fingerprint::from_bytes([fingerprint; 16]));
        match self.cache.claim(key, fingerprint) {
            Claim::Acquired(reservation) => match then {
                // Fenced if the other thread moved the clock past the lease
                // and took the key over meanwhile: then nothing is stored.
                Then::Complete => self.write(id, key, TTL, || drop(reservation.complete(id))),
                Then::Release => reservation.release(),
                Then::Abandon | Then::Drop => {
                    if matches!(then, Then::Abandon) {
                        reservation.abandon();
                    } else {
                        drop(reservation);
                    }
                    // The key stays held until the lease lapses: let it.
                    self.clock.advance(LEASE);
                }
            },
            Claim::Completed(replay) => self.check_read(key, read_at, Some(*replay.value())),
            Claim::InProgress(pending) => {
                if let Waited::Completed(replay) = pending.wait_timeout(Duration::ZERO) {
                    self.check_read(key, read_at, Some(*replay.value()));
                }
            }
            Claim::Mismatch => {}
            Claim::Full => assert!(self.max_entries.is_some(), "Full from an unbounded cache"),
        }
    }

    fn run(&self, thread: u64, ops: &[Op]) {
        for (i, op) in ops.iter().enumerate() {
            let id = (thread << 32) | i as u64;
            let read_at = self.clock.elapsed();
            match *op {
                Op::Insert { key, ttl } => {
                    let key = key % KEYS;
                    let ttl = Duration::from_millis(u64::from(ttl % 21));
                    self.write(id, key, ttl, || self.cache.insert_with_ttl(key, id, ttl));
                }
                Op::Get { key } => {
                    let key = key % KEYS;
                    self.check_read(key, read_at, self.cache.get(&key));
                }
                Op::Remove { key } => {
                    let key = key % KEYS;
                    self.check_read(key, read_at, self.cache.remove(&key));
                }
                Op::Compute { key, fail } => {
                    let key = key % KEYS;
                    self.log.lock().unwrap().insert(id, (key, None));
                    let got = self
                        .cache
                        .get_or_compute(key, || if fail { Err(()) } else { Ok(id) });
                    if got == Ok(id) {
                        let bound = self.clock.elapsed() + TTL;
                        self.log.lock().unwrap().insert(id, (key, Some(bound)));
                    } else {
                        self.check_read(key, read_at, got.ok());
                    }
                }
                Op::Purge => {
                    self.cache.purge_expired();
                }
                Op::Clear => self.cache.clear(),
                Op::Advance { ticks } => self
                    .clock
                    .advance(Duration::from_millis(u64::from(ticks % 8))),
                Op::Claim {
                    key,
                    fingerprint,
                    then,
                } => self.claim(id, key % KEYS, fingerprint, then, read_at),
            }
            if let Some(max) = self.max_entries {
                assert!(self.cache.len() <= max, "len() above max_entries");
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let clock = ManualClock::new();
    let max_entries = match input.max_entries % 5 {
        0 => None,
        max => Some(usize::from(max)),
    };
    let mut builder = Cache::builder()
        .shards(usize::from(input.shards % 4) + 1)
        .time_to_live(TTL)
        .lease(LEASE)
        .clock(clock.clone())
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4));
    if let Some(max) = max_entries {
        builder = builder.max_entries(max);
    }
    if input.evict_when_full {
        builder = builder.capacity_policy(CapacityPolicy::EvictSoonest);
    }
    let world = World {
        cache: builder.build().unwrap(),
        clock,
        max_entries,
        log: Mutex::new(HashMap::new()),
    };
    let (a, b) = (
        &input.a[..input.a.len().min(200)],
        &input.b[..input.b.len().min(200)],
    );
    std::thread::scope(|s| {
        s.spawn(|| world.run(1, a));
        world.run(2, b);
    });
    let cache = &world.cache;
    if let Some(max) = max_entries {
        assert!(cache.len() <= max);
        assert!(cache.len() + cache.claims_in_progress() <= max);
    }
    // Past every deadline and lease, a purge leaves nothing behind.
    world.clock.advance(Duration::from_millis(21));
    cache.purge_expired();
    assert_eq!(cache.len(), 0, "entries left after the purge");
    assert_eq!(cache.claims_in_progress(), 0, "claims left after the purge");
    // No unit of the bound leaked: a full cache's worth of claims fits.
    let room = max_entries.unwrap_or(usize::from(KEYS));
    for key in 0..room {
        let key = u8::try_from(key).expect("small") + KEYS;
        match cache.claim(key, None) {
            Claim::Acquired(reservation) => reservation.release(),
            other => panic!("claim({key}) in an empty cache: {other:?}"),
        }
        cache.insert(key, 0);
    }
    assert_eq!(cache.len(), room, "every unit is free again");
});
