//! Two threads apply fuzzed operation lists to one cache. Only invariants
//! that hold under any interleaving are checked: no panic, `len()` within
//! `max_entries`, every returned value was written for that key, and nothing
//! is returned past its deadline.
#![no_main]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use idemcache::Cache;
use idemcache::clock::ManualClock;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, arbitrary::Arbitrary)]
enum Op {
    Insert { key: u8, ttl: u8 },
    Get { key: u8 },
    Remove { key: u8 },
    Compute { key: u8, fail: bool },
    Purge,
    Clear,
    Advance { ticks: u8 },
}

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    shards: u8,
    max_entries: u8,
    a: Vec<Op>,
    b: Vec<Op>,
}

/// What was written under a value id: its key, and an upper bound on its
/// deadline (the clock read after the write returned, plus the TTL), or
/// `None` while the write is still running.
type Log = Mutex<HashMap<u64, (u8, Option<Duration>)>>;

const KEYS: u8 = 4;
const TTL: Duration = Duration::from_millis(10);

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
            }
            if let Some(max) = self.max_entries {
                assert!(self.cache.len() <= max, "len() above max_entries");
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let clock = ManualClock::new();
    let max_entries = (input.max_entries % 5 > 0).then_some(usize::from(input.max_entries % 5));
    let mut builder = Cache::builder()
        .shards(usize::from(input.shards % 4) + 1)
        .time_to_live(TTL)
        .clock(clock.clone())
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4));
    if let Some(max) = max_entries {
        builder = builder.max_entries(max);
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
    if let Some(max) = max_entries {
        assert!(world.cache.len() <= max);
    }
    world.cache.purge_expired();
});
