//! Semantics 6-9: single flight, only `Ok` stored with hand-over on `Err`
//! and panic, no user code under a lock, invalidation wins.

mod common;

use std::convert::Infallible;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, mpsc};
use std::time::Duration;

use common::{manual_cache, wait_until};
use idemcache::Cache;

const HOUR: Duration = Duration::from_secs(3600);

fn cache() -> Cache<String, u64> {
    Cache::builder().build().unwrap()
}

#[test]
fn concurrent_callers_run_the_closure_once_and_all_get_the_value() {
    const CALLERS: usize = 8;
    let cache = cache();
    let runs = AtomicUsize::new(0);
    let start = Barrier::new(CALLERS);
    let results: Vec<Result<u64, Infallible>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (cache, runs, start) = (cache.clone(), &runs, &start);
                s.spawn(move || {
                    start.wait();
                    cache.get_or_compute("k".to_string(), || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        // Hold the flight until every other caller has
                        // either joined it or will find the stored value.
                        wait_until("waiters to join", || {
                            cache.stats().coalesced as usize == CALLERS - 1
                        });
                        Ok(7)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| *r == Ok(7)));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(stats.computations, 1);
    assert_eq!(stats.coalesced, CALLERS as u64 - 1);
    assert_eq!(stats.misses, CALLERS as u64);
    assert_eq!(stats.inserts, 1);
    assert_eq!(cache.get("k"), Some(7));
}

#[test]
fn a_live_value_is_returned_without_calling_the_closure() {
    let cache = cache();
    cache.insert("k".into(), 1);
    let got = cache.get_or_compute("k".into(), || -> Result<u64, Infallible> {
        panic!("must not run")
    });
    assert_eq!(got, Ok(1));
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.stats().computations, 0);
}

#[test]
fn leader_err_stores_nothing_and_a_waiter_takes_over_with_its_own_closure() {
    let cache = cache();
    let (led_tx, led_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let leader = {
            let cache = cache.clone();
            s.spawn(move || {
                cache.get_or_compute("k".to_string(), || {
                    led_tx.send(()).unwrap();
                    wait_until("the waiter to join", || cache.stats().coalesced == 1);
                    Err("declined")
                })
            })
        };
        led_rx.recv().unwrap();
        let waiter = {
            let cache = cache.clone();
            s.spawn(move || cache.get_or_compute("k".to_string(), || Ok::<_, &str>(2)))
        };
        assert_eq!(leader.join().unwrap(), Err("declined"));
        assert_eq!(
            waiter.join().unwrap(),
            Ok(2),
            "the waiter ran its own closure"
        );
    });
    assert_eq!(cache.get("k"), Some(2));
    assert_eq!(cache.stats().computations, 2);
}

#[test]
fn errors_are_never_cached() {
    let cache = cache();
    assert_eq!(
        cache.get_or_compute("k".into(), || Err::<u64, _>("no")),
        Err("no")
    );
    assert_eq!(cache.get("k"), None);
    assert_eq!(cache.len(), 0);
    assert_eq!(cache.get_or_compute("k".into(), || Ok::<_, &str>(3)), Ok(3));
}

#[test]
fn leader_panic_propagates_hands_over_and_poisons_nothing() {
    let cache = cache();
    let (led_tx, led_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let leader = {
            let cache = cache.clone();
            s.spawn(move || {
                catch_unwind(AssertUnwindSafe(|| {
                    cache.get_or_compute("k".to_string(), || -> Result<u64, Infallible> {
                        led_tx.send(()).unwrap();
                        wait_until("the waiter to join", || cache.stats().coalesced == 1);
                        panic!("handler bug")
                    })
                }))
            })
        };
        led_rx.recv().unwrap();
        let waiter = {
            let cache = cache.clone();
            s.spawn(move || cache.get_or_compute("k".to_string(), || Ok::<_, Infallible>(5)))
        };
        assert!(
            leader.join().unwrap().is_err(),
            "the panic reaches the leader's caller"
        );
        assert_eq!(waiter.join().unwrap(), Ok(5));
    });
    // Nothing is poisoned: every operation still works, on every shard.
    cache.insert("other".into(), 1);
    assert_eq!(cache.get("k"), Some(5));
    assert_eq!(cache.remove("other"), Some(1));
    cache.clear();
    assert_eq!(
        cache.get_or_compute("k".into(), || Ok::<_, Infallible>(6)),
        Ok(6)
    );
}

#[test]
fn callers_with_different_error_types_share_one_flight() {
    #[derive(Debug, PartialEq)]
    struct DbError;
    #[derive(Debug, PartialEq)]
    struct HttpError;
    let cache = cache();
    let (led_tx, led_rx) = mpsc::channel();
    let runs = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let leader = {
            let (cache, runs) = (cache.clone(), &runs);
            s.spawn(move || {
                cache.get_or_compute("k".to_string(), || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    led_tx.send(()).unwrap();
                    wait_until("the waiter to join", || cache.stats().coalesced == 1);
                    Ok::<_, DbError>(1)
                })
            })
        };
        led_rx.recv().unwrap();
        let waiter = {
            let (cache, runs) = (cache.clone(), &runs);
            s.spawn(move || {
                cache.get_or_compute("k".to_string(), || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, HttpError>(2)
                })
            })
        };
        assert_eq!(leader.join().unwrap(), Ok(1));
        assert_eq!(waiter.join().unwrap(), Ok(1));
    });
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn closures_may_use_the_cache_for_other_keys() {
    let cache = cache();
    let got = cache.get_or_compute("outer".to_string(), || {
        cache.insert("side".into(), 1);
        assert_eq!(cache.get("side"), Some(1));
        let inner = cache.get_or_compute("inner".to_string(), || {
            assert_eq!(cache.remove("side"), Some(1));
            Ok::<_, Infallible>(2)
        })?;
        Ok::<_, Infallible>(inner + 10)
    });
    assert_eq!(got, Ok(12));
    assert_eq!(cache.get("inner"), Some(2));
    assert_eq!(cache.get("outer"), Some(12));
}

#[test]
fn different_keys_never_wait_on_each_other() {
    // With one shard, both keys share a lock; key A's computation blocks
    // until key B's computation has finished on another thread. If B waited
    // on A (or on the shard lock held during A) this would time out.
    let (cache, _clock) = manual_cache::<&str, u64>(HOUR, 1, None);
    let (b_done_tx, b_done_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let cache_a = &cache;
        let a = s.spawn(move || {
            cache_a.get_or_compute("a", || {
                let cache = cache_a.clone();
                let b = std::thread::spawn(move || {
                    let r = cache.get_or_compute("b", || Ok::<_, Infallible>(2));
                    b_done_tx.send(()).unwrap();
                    r
                });
                b_done_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("key b finished while key a was computing");
                b.join().unwrap()
            })
        });
        assert_eq!(a.join().unwrap(), Ok(2));
    });
}

#[test]
fn remove_during_computation_wins_but_callers_get_the_value() {
    invalidation_wins(|cache| {
        cache.remove("k");
    });
}

#[test]
fn clear_during_computation_wins() {
    invalidation_wins(|cache| cache.clear());
}

#[test]
fn newer_insert_during_computation_wins() {
    let cache = invalidation_wins(|cache| cache.insert("k".into(), 99));
    assert_eq!(cache.get("k"), Some(99));
}

/// Runs a computation of "k" with one waiter, applies `invalidate` while it
/// runs, and checks that both callers get the computed value while the
/// cache does not hold it.
fn invalidation_wins(invalidate: impl Fn(&Cache<String, u64>) + Sync) -> Cache<String, u64> {
    let cache = cache();
    let (led_tx, led_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let leader = {
            let cache = cache.clone();
            let invalidate = &invalidate;
            s.spawn(move || {
                cache.get_or_compute("k".to_string(), || {
                    led_tx.send(()).unwrap();
                    wait_until("the waiter to join", || cache.stats().coalesced == 1);
                    invalidate(&cache);
                    Ok::<_, Infallible>(1)
                })
            })
        };
        led_rx.recv().unwrap();
        let waiter = {
            let cache = cache.clone();
            s.spawn(move || cache.get_or_compute("k".to_string(), || Ok::<_, Infallible>(2)))
        };
        assert_eq!(leader.join().unwrap(), Ok(1));
        assert_eq!(
            waiter.join().unwrap(),
            Ok(1),
            "the waiter shares the leader's value"
        );
    });
    assert_ne!(cache.get("k"), Some(1), "the late result was not stored");
    cache
}

#[test]
fn remove_before_the_computation_starts_does_not_block_storing() {
    let cache = cache();
    cache.insert("k".into(), 1);
    cache.remove("k");
    assert_eq!(
        cache.get_or_compute("k".into(), || Ok::<_, Infallible>(2)),
        Ok(2)
    );
    assert_eq!(cache.get("k"), Some(2));
}

#[test]
fn flights_are_shared_across_clones_and_key_borrowing_works() {
    let cache = cache();
    let clone = cache.clone();
    clone.insert("shared".into(), 1);
    assert_eq!(cache.get("shared"), Some(1));
    assert_eq!(cache.get(&"shared".to_string()), Some(1));
    assert!(cache.contains_key("shared"));
}

/// A value whose `clone` panics exactly once, after `remaining` clones.
#[derive(Debug)]
struct PanickyValue(u32, std::sync::Arc<std::sync::atomic::AtomicIsize>);

impl Clone for PanickyValue {
    fn clone(&self) -> Self {
        assert!(
            self.1.fetch_sub(1, Ordering::SeqCst) != 0,
            "planted panic in V::clone"
        );
        PanickyValue(self.0, self.1.clone())
    }
}

#[test]
fn a_panicking_value_clone_while_handing_over_leaves_no_waiter_hanging() {
    let remaining = std::sync::Arc::new(std::sync::atomic::AtomicIsize::new(isize::MAX));
    let cache: Cache<u32, PanickyValue> = Cache::builder().build().unwrap();
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            catch_unwind(AssertUnwindSafe(|| {
                cache.get_or_compute(1, || {
                    wait_until("the waiter to join", || cache.stats().coalesced == 1);
                    // One clone is stored; the clone for the waiters panics.
                    remaining.store(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(PanickyValue(1, remaining.clone()))
                })
            }))
        });
        wait_until("the leader to start", || cache.stats().computations == 1);
        let waiter = s.spawn(|| {
            cache.get_or_compute(1, || {
                Ok::<_, Infallible>(PanickyValue(2, std::sync::Arc::new(isize::MAX.into())))
            })
        });
        assert!(
            leader.join().unwrap().is_err(),
            "the panic reaches the leader"
        );
        let got = waiter.join().unwrap().unwrap();
        assert_eq!(got.0, 1, "the waiter was woken and read the stored value");
    });
}
