//! loom models: every interleaving of small cases of each synchronisation
//! path (waiting, waking, hand-over after failure, invalidation, shutdown).
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom -C debug-assertions" CARGO_TARGET_DIR=target/loom \
//!  LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom`
//!
//! Under `--cfg loom` the crate's `sync` module swaps parking_lot and std
//! for loom's instrumented types. Caches here use one shard, a fixed-seed
//! hasher and a manual clock, so each run explores the same state space.
#![cfg(loom)]

use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use idemcache::clock::ManualClock;
use idemcache::{Cache, CapacityPolicy};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

type TestCache = Cache<u64, u64, ahash::RandomState>;

fn cache_with(max_entries: Option<usize>) -> (TestCache, ManualClock) {
    let clock = ManualClock::new();
    let mut builder = Cache::builder()
        .shards(1)
        .time_to_live(Duration::from_secs(60))
        .clock(clock.clone())
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4));
    if let Some(max) = max_entries {
        builder = builder.max_entries(max);
    }
    (builder.build().unwrap(), clock)
}

fn cache() -> TestCache {
    cache_with(None).0
}

/// Panics planted by model 3 would print once per explored interleaving.
fn silence_planted_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("planted panic") {
            default(info);
        }
    }));
}

/// Model 1: two callers, one key: the closure runs exactly once and both
/// get the value.
#[test]
fn two_callers_one_key_compute_once() {
    loom::model(|| {
        let cache = cache();
        let runs = Arc::new(AtomicUsize::new(0));
        let other = {
            let (cache, runs) = (cache.clone(), runs.clone());
            thread::spawn(move || {
                cache.get_or_compute(1, || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(10)
                })
            })
        };
        let mine = cache.get_or_compute(1, || {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(10)
        });
        assert_eq!(mine, Ok(10));
        assert_eq!(other.join().unwrap(), Ok(10));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(&1), Some(10));
    });
}

/// Model 2: the leader returns `Err`: nothing is stored, the waiter takes
/// over and runs its own closure, nobody hangs.
#[test]
fn leader_err_hands_over_to_the_waiter() {
    loom::model(|| {
        let cache = cache();
        let failing = {
            let cache = cache.clone();
            thread::spawn(move || cache.get_or_compute(1, || Err::<u64, _>("declined")))
        };
        let succeeding = cache.get_or_compute(1, || Ok::<_, &str>(2));
        let failed = failing.join().unwrap();
        // Whoever ran first: the Ok caller always ends with its own value,
        // and the Err caller either failed (it led) or read that value.
        assert_eq!(succeeding, Ok(2));
        assert!(failed == Err("declined") || failed == Ok(2));
        assert_eq!(cache.get(&1), Some(2));
    });
}

/// Model 3: the leader panics (caught): the waiter takes over, and no lock
/// is poisoned.
#[test]
fn leader_panic_hands_over_without_poison() {
    silence_planted_panics();
    loom::model(|| {
        let cache = cache();
        let panicking = {
            let cache = cache.clone();
            thread::spawn(move || {
                catch_unwind(AssertUnwindSafe(|| {
                    cache.get_or_compute(1, || -> Result<u64, Infallible> {
                        panic!("planted panic")
                    })
                }))
            })
        };
        let value = cache.get_or_compute(1, || Ok::<_, Infallible>(3));
        let panicked = panicking.join().unwrap();
        assert_eq!(value, Ok(3));
        // The panicking caller either panicked (it led) or read the value.
        assert!(matches!(panicked, Err(_) | Ok(Ok(3))));
        cache.insert(2, 2);
        assert_eq!(cache.get(&1), Some(3));
    });
}

/// Model 4: an async leader's future is dropped mid-flight; a waiting
/// future is woken and takes over.
#[test]
fn dropped_async_leader_wakes_a_waiter_that_takes_over() {
    loom::model(|| {
        let cache = cache();
        let dropping = {
            let cache = cache.clone();
            thread::spawn(move || {
                let mut cx = Context::from_waker(Waker::noop());
                let mut leader = pin!(cache.get_or_compute_async(1, || async {
                    std::future::pending::<()>().await;
                    Ok::<_, Infallible>(1)
                }));
                // Leads (pending in its computation), waits (pending), or
                // reads the other caller's value; then it is dropped.
                match leader.as_mut().poll(&mut cx) {
                    Poll::Pending => None,
                    Poll::Ready(value) => Some(value),
                }
            })
        };
        let waited = loom::future::block_on(
            cache.get_or_compute_async(1, || async { Ok::<_, Infallible>(4) }),
        );
        assert_eq!(waited, Ok(4));
        let early = dropping.join().unwrap();
        assert!(early.is_none() || early == Some(Ok(4)));
        assert_eq!(cache.get(&1), Some(4));
    });
}

/// Model 5: `remove` racing a completing computation: once the computation
/// has started, a `remove` is never undone by its result.
#[test]
fn remove_racing_a_computation_stays_removed() {
    loom::model(|| {
        let cache = cache();
        let started = Arc::new(AtomicBool::new(false));
        let computing = {
            let (cache, started) = (cache.clone(), started.clone());
            thread::spawn(move || {
                cache.get_or_compute(1, || {
                    started.store(true, Ordering::SeqCst);
                    Ok::<_, Infallible>(5)
                })
            })
        };
        let removed_after_start = started.load(Ordering::SeqCst);
        cache.remove(&1);
        assert_eq!(
            computing.join().unwrap(),
            Ok(5),
            "the caller gets its value"
        );
        if removed_after_start {
            assert_eq!(
                cache.get(&1),
                None,
                "the late result was stored over a remove"
            );
        }
    });
}

/// Model 6: insert, get, remove and purge racing on one shard of a bounded
/// cache: the bound holds and `len()` agrees with the map at the end.
#[test]
fn racing_writers_keep_len_and_bound_consistent() {
    loom::model(|| {
        let (cache, clock) = cache_with(Some(2));
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.insert(1, 1);
                cache.insert_with_ttl(2, 2, Duration::from_secs(1));
                assert!(cache.len() <= 2);
            })
        };
        let remover = {
            let (cache, clock) = (cache.clone(), clock.clone());
            thread::spawn(move || {
                clock.advance(Duration::from_secs(1));
                cache.remove(&1);
                cache.purge_expired();
            })
        };
        cache.insert(3, 3);
        let _ = cache.get(&2);
        writer.join().unwrap();
        remover.join().unwrap();
        cache.purge_expired();
        let live = (1..=3).filter(|k| cache.contains_key(k)).count();
        assert_eq!(cache.len(), live, "len() counts exactly the stored entries");
        assert!(cache.len() <= 2);
        // The bound's counter agrees with the map: the cache fills to its
        // bound again, and no further.
        cache.insert(10, 10);
        cache.insert(11, 11);
        assert_eq!(cache.len(), 2);
    });
}

/// One shard and a reaper thread (whose wait never times out under loom).
fn cache_with_reaper() -> TestCache {
    Cache::builder()
        .shards(1)
        .clock(ManualClock::new())
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
        .background_eviction(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Model 7: the reaper's shutdown racing the last handle's drop: the thread
/// always exits (loom has no timeouts, so only a notification ends its
/// wait; a missed one shows up as a deadlock).
#[test]
fn reaper_always_exits_when_the_last_handle_drops() {
    loom::model(|| {
        let cache = cache_with_reaper();
        let other = cache.clone();
        let dropper = thread::spawn(move || drop(other));
        drop(cache);
        dropper.join().unwrap();
    });
}

/// Model 7b: an explicit `shutdown` racing a second `shutdown` and the
/// drop of another handle: the thread is stopped and joined exactly once,
/// nobody waits forever, and the cache keeps working afterwards.
#[test]
fn shutdown_racing_shutdown_and_drop_always_stops_the_reaper() {
    loom::model(|| {
        let cache = cache_with_reaper();
        let racing = cache.clone();
        let dropped = cache.clone();
        let shutdown = thread::spawn(move || racing.shutdown().unwrap());
        let dropper = thread::spawn(move || drop(dropped));
        cache.shutdown().unwrap();
        shutdown.join().unwrap();
        dropper.join().unwrap();
        cache.insert(1, 1);
        assert_eq!(cache.get(&1), Some(1));
    });
}

/// Regression (found by the `concurrent_ops` fuzz target): with several
/// shards, a full cache moves room between shards (evict in one, insert in
/// another); `len()` summed shard by shard could then read above the bound.
#[test]
fn len_never_exceeds_the_bound_while_room_moves_between_shards() {
    loom::model(|| {
        let cache: TestCache = Cache::builder()
            .shards(2)
            .max_entries(1)
            .capacity_policy(CapacityPolicy::EvictSoonest)
            .clock(ManualClock::new())
            .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
            .build()
            .unwrap();
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || {
                // With this hasher and two shards, keys 0 and 1 land on
                // shard 0 and keys 6 and 7 on shard 1: every insert moves
                // the one unit of room to the other shard.
                for key in [0, 6, 1, 7] {
                    cache.insert(key, key);
                }
            })
        };
        // loom switches threads at yields and lock operations; yielding
        // lets it place each read anywhere among the writer's moves.
        for _ in 0..3 {
            thread::yield_now();
            assert!(cache.len() <= 1, "len() read above max_entries");
        }
        writer.join().unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&7), Some(7));
    });
}
