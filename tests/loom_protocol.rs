//! loom models of the claim protocol: the race for a key, hand-over after a
//! release, fencing after a lapsed lease, and async waiters woken on
//! completion and on release.
//!
//! Run as `tests/loom.rs` says, with `--test loom_protocol`.
#![cfg(loom)]

use std::time::Duration;

use idemcache::clock::ManualClock;
use idemcache::{Cache, Claim, Waited};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

type TestCache = Cache<u64, u64, ahash::RandomState>;

const LEASE: Duration = Duration::from_secs(10);
/// A wait long enough never to time out (loom has no clock anyway: timed
/// waits end only when notified).
const FOREVER: Duration = Duration::from_secs(3600);

fn cache() -> (TestCache, ManualClock) {
    let clock = ManualClock::new();
    let cache = Cache::builder()
        .shards(1)
        .lease(LEASE)
        .clock(clock.clone())
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
        .build()
        .unwrap();
    (cache, clock)
}

/// Two claims race for a free key: exactly one acquires.
#[test]
fn two_claims_race_and_exactly_one_acquires() {
    loom::model(|| {
        let (cache, _clock) = cache();
        let acquired = Arc::new(AtomicUsize::new(0));
        let other = {
            let (cache, acquired) = (cache.clone(), acquired.clone());
            thread::spawn(move || {
                if let Claim::Acquired(r) = cache.claim(1, None) {
                    acquired.fetch_add(1, Ordering::SeqCst);
                    r.complete(1).unwrap();
                }
            })
        };
        if let Claim::Acquired(r) = cache.claim(1, None) {
            acquired.fetch_add(1, Ordering::SeqCst);
            r.complete(2).unwrap();
        }
        other.join().unwrap();
        assert_eq!(acquired.load(Ordering::SeqCst), 1);
        assert!(cache.get(&1).is_some());
    });
}

/// A release wakes a waiter, which then acquires the key.
#[test]
fn release_wakes_a_waiter_that_then_acquires() {
    loom::model(|| {
        let (cache, _clock) = cache();
        let Claim::Acquired(first) = cache.claim(1, None) else {
            panic!("free key")
        };
        let waiter = {
            let cache = cache.clone();
            thread::spawn(move || {
                loop {
                    match cache.claim(1, None) {
                        Claim::Acquired(r) => {
                            r.complete(7).unwrap();
                            return;
                        }
                        Claim::InProgress(pending) => {
                            assert_eq!(pending.wait_timeout(FOREVER), Waited::Released);
                        }
                        _ => panic!("nothing else is possible here"),
                    }
                }
            })
        };
        first.release();
        waiter.join().unwrap();
        assert_eq!(cache.get(&1), Some(7));
    });
}

/// After the lease lapses a newer claim takes over; the stale holder's
/// completion is fenced and never overwrites the newer result.
#[test]
fn stale_completion_after_a_lapsed_lease_is_fenced() {
    loom::model(|| {
        let (cache, clock) = cache();
        let Claim::Acquired(stale) = cache.claim(1, None) else {
            panic!("free key")
        };
        clock.advance(LEASE);
        let newer = {
            let cache = cache.clone();
            thread::spawn(move || match cache.claim(1, None) {
                Claim::Acquired(r) => {
                    r.complete(2).unwrap();
                    true
                }
                // The stale holder completed before the takeover.
                Claim::Completed(replay) => {
                    assert_eq!(*replay.value(), 1);
                    false
                }
                _ => panic!("the lease has lapsed"),
            })
        };
        let stale_result = stale.complete(1);
        let took_over = newer.join().unwrap();
        if took_over {
            assert!(stale_result.is_err(), "a taken-over reservation is fenced");
            assert_eq!(cache.get(&1), Some(2));
        } else {
            assert!(stale_result.is_ok());
            assert_eq!(cache.get(&1), Some(1));
        }
    });
}

/// An async waiter is woken when the holder completes, and when it releases.
#[test]
fn wait_async_is_woken_on_complete_and_on_release() {
    for release in [false, true] {
        loom::model(move || {
            let (cache, _clock) = cache();
            let Claim::Acquired(holder) = cache.claim(1, None) else {
                panic!("free key")
            };
            let waiter = {
                let cache = cache.clone();
                thread::spawn(move || match cache.claim(1, None) {
                    Claim::InProgress(pending) => loom::future::block_on(pending.wait_async()),
                    Claim::Completed(replay) => Waited::Completed(replay),
                    Claim::Acquired(_) => Waited::Released, // after the release
                    _ => panic!("unexpected claim"),
                })
            };
            if release {
                holder.release();
            } else {
                holder.complete(5).unwrap();
            }
            match waiter.join().unwrap() {
                Waited::Completed(replay) => {
                    assert!(!release);
                    assert_eq!(*replay.value(), 5);
                }
                Waited::Released => assert!(release),
                other => panic!("only a completion or a release happened: {other:?}"),
            }
        });
    }
}

/// A holder that drops its reservation unfinished abandons the claim: a
/// blocked waiter and an async waiter are both woken at once and told so,
/// and the key stays held.
#[test]
fn an_abandoned_claim_wakes_blocking_and_async_waiters() {
    loom::model(|| {
        let (cache, _clock) = cache();
        let Claim::Acquired(holder) = cache.claim(1, None) else {
            panic!("free key")
        };
        let Claim::InProgress(blocking) = cache.claim(1, None) else {
            panic!("held")
        };
        let Claim::InProgress(asynchronous) = cache.claim(1, None) else {
            panic!("held")
        };
        let blocked = thread::spawn(move || blocking.wait_timeout(FOREVER));
        let pending = thread::spawn(move || loom::future::block_on(asynchronous.wait_async()));
        drop(holder);
        assert!(matches!(blocked.join().unwrap(), Waited::Abandoned { .. }));
        assert!(matches!(pending.join().unwrap(), Waited::Abandoned { .. }));
        assert!(
            matches!(cache.claim(1, None), Claim::InProgress(_)),
            "still held"
        );
    });
}

/// A `get_or_compute` waiter on an abandoned claim does not run before the
/// lease lapses; a purge after the lapse ends the claim (the flight's
/// second change of outcome) and wakes the async waiter, which computes.
#[test]
fn get_or_compute_waits_out_an_abandoned_claim_until_a_purge_ends_it() {
    loom::model(|| {
        let (cache, clock) = cache();
        let Claim::Acquired(holder) = cache.claim(1, None) else {
            panic!("free key")
        };
        let computer = {
            let cache = cache.clone();
            thread::spawn(move || {
                loom::future::block_on(cache.get_or_compute_async(1, || async { Ok::<_, ()>(9) }))
            })
        };
        holder.abandon();
        clock.advance(LEASE);
        cache.purge_expired();
        assert_eq!(computer.join().unwrap(), Ok(9));
        assert_eq!(cache.get(&1), Some(9));
    });
}

/// Two claims of new keys race in a full cache whose only unit a lapsed
/// claim holds: exactly one reclaims it and acquires, the other is refused,
/// and the bound stays exact.
#[test]
fn racing_claims_reclaim_a_lapsed_claims_room_exactly_once() {
    loom::model(|| {
        let clock = ManualClock::new();
        let cache: TestCache = Cache::builder()
            .shards(2)
            .max_entries(1)
            .lease(LEASE)
            .clock(clock.clone())
            .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
            .build()
            .unwrap();
        let Claim::Acquired(lapsing) = cache.claim(1, None) else {
            panic!("free key")
        };
        lapsing.abandon();
        clock.advance(LEASE);
        let acquire = |cache: &TestCache, key: u64| match cache.claim(key, None) {
            Claim::Acquired(r) => r.complete(key).is_ok(),
            Claim::Full => false,
            other => panic!("unexpected {other:?}"),
        };
        let other = {
            let cache = cache.clone();
            thread::spawn(move || acquire(&cache, 2))
        };
        let mine = acquire(&cache, 3);
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "exactly one acquires");
        assert_eq!(cache.len() + cache.claims_in_progress(), 1);
    });
}
