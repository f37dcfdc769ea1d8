//! The idempotency protocol: one test group per numbered point of the
//! protocol issue (claims, fingerprints, outcomes, leases and fencing,
//! waiting, capacity, replay metadata, stats, key helpers, scoping).

#![cfg(all(feature = "digest", feature = "uuid"))]

mod common;

use std::convert::Infallible;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, mpsc};
use std::time::Duration;

use common::wait_until;
use idemcache::clock::{Clock, ManualClock};
use idemcache::{
    BuildError, Cache, CapacityPolicy, Claim, Completion, DEFAULT_LEASE, Fingerprint, NotStored,
    Replay, Waited, key,
};

const SEC: Duration = Duration::from_secs(1);

type TestCache = Cache<String, String, ahash::RandomState>;

fn cache_with(
    lease: Duration,
    max_entries: Option<usize>,
    policy: CapacityPolicy,
) -> (TestCache, ManualClock) {
    let clock = ManualClock::new();
    let mut builder = Cache::builder()
        .time_to_live(SEC * 3600)
        .lease(lease)
        .capacity_policy(policy)
        .shards(4)
        .clock(clock.clone())
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4));
    if let Some(max) = max_entries {
        builder = builder.max_entries(max);
    }
    (builder.build().unwrap(), clock)
}

fn cache() -> (TestCache, ManualClock) {
    cache_with(SEC * 60, None, CapacityPolicy::EvictSoonest)
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of(["POST", "/v1/charges", body])
}

fn k(s: &str) -> String {
    s.to_string()
}

// 1. Atomic claim ------------------------------------------------------------

#[test]
fn exactly_one_concurrent_claim_acquires() {
    const CALLERS: usize = 8;
    let (cache, _clock) = cache();
    let start = Barrier::new(CALLERS);
    let answered = Barrier::new(CALLERS);
    let acquired = AtomicUsize::new(0);
    let in_progress = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..CALLERS {
            s.spawn(|| {
                start.wait();
                let claim = cache.claim(k("key"), fp("a"));
                // Hold every outcome (a reservation especially) until all
                // callers have their answer.
                answered.wait();
                match claim {
                    Claim::Acquired(r) => {
                        acquired.fetch_add(1, Ordering::SeqCst);
                        r.complete(k("done")).unwrap();
                    }
                    Claim::InProgress(_) => {
                        in_progress.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            });
        }
    });
    assert_eq!(acquired.load(Ordering::SeqCst), 1);
    assert_eq!(in_progress.load(Ordering::SeqCst), CALLERS - 1);
    let stats = cache.stats();
    assert_eq!((stats.acquired, stats.in_progress), (1, CALLERS as u64 - 1));
}

#[test]
fn claims_and_get_or_compute_share_one_flight() {
    let (cache, _clock) = cache();
    // A claim in progress: get_or_compute waits for it, runs nothing.
    let Claim::Acquired(reservation) = cache.claim(k("a"), None) else {
        panic!("free key")
    };
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            cache.get_or_compute(k("a"), || -> Result<String, Infallible> {
                panic!("the claim's result must be shared")
            })
        });
        wait_until("the computation to join the claim", || {
            cache.stats().coalesced == 1
        });
        reservation.complete(k("from the claim")).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(k("from the claim")));
    });

    // A computation in progress: a claim sees it in progress, with no lease.
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let cache_ref = &cache;
        let computing = s.spawn(move || {
            cache_ref.get_or_compute(k("b"), || {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok::<_, Infallible>(k("computed"))
            })
        });
        entered_rx.recv().unwrap();
        let Claim::InProgress(pending) = cache.claim(k("b"), fp("x")) else {
            panic!("the computation holds the key")
        };
        assert_eq!(pending.lease_remaining(), None);
        assert_eq!(pending.retry_after(), SEC);
        release_tx.send(()).unwrap();
        match pending.wait_timeout(SEC * 10) {
            Waited::Completed(replay) => assert_eq!(replay.value(), "computed"),
            other => panic!("unexpected {other:?}"),
        }
        computing.join().unwrap().unwrap();
    });
}

// 2. Fingerprints ------------------------------------------------------------

#[test]
fn fingerprint_is_a_fixed_length_prefixed_digest() {
    // Golden values computed independently (Python hashlib) from the
    // documented function: SHA-256("idemcache.fingerprint.v1" ‖ (len u64 LE
    // ‖ bytes)*), first 16 bytes. A change here breaks persisted records.
    assert_eq!(
        Fingerprint::of(["POST", "/v1/charges", r#"{"amount":100}"#]).to_string(),
        "99b4d96765a95ac0311cc6c19ea50dd8"
    );
    assert_eq!(
        Fingerprint::of(Vec::<&[u8]>::new()).to_string(),
        "f2096811363994c947e6b74e3b516c34"
    );
    assert_ne!(Fingerprint::of(["ab", "c"]), Fingerprint::of(["a", "bc"]));
    assert_ne!(Fingerprint::of(["a"]), Fingerprint::of(["a", ""]));
    let built = Fingerprint::builder().part("ab").part(b"c").finish();
    assert_eq!(built, Fingerprint::of(["ab", "c"]));
    let bytes = built.to_bytes();
    assert_eq!(Fingerprint::from_bytes(bytes), built);
    assert_eq!(built.to_string().parse::<Fingerprint>(), Ok(built));
    assert!("xyz".parse::<Fingerprint>().is_err());
    assert!("zz".repeat(16).parse::<Fingerprint>().is_err());
}

#[test]
fn a_reused_key_with_another_request_is_a_mismatch_even_while_in_progress() {
    let (cache, _clock) = cache();
    let Claim::Acquired(reservation) = cache.claim(k("key"), fp("amount=100")) else {
        panic!()
    };
    // Checked before the in-progress state.
    assert!(matches!(
        cache.claim(k("key"), fp("amount=999")),
        Claim::Mismatch
    ));
    assert!(matches!(
        cache.claim(k("key"), fp("amount=100")),
        Claim::InProgress(_)
    ));
    reservation.complete(k("charged")).unwrap();
    assert!(matches!(
        cache.claim(k("key"), fp("amount=999")),
        Claim::Mismatch
    ));
    match cache.claim(k("key"), fp("amount=100")) {
        Claim::Completed(replay) => {
            assert_eq!(replay.value(), "charged");
            assert_eq!(replay.fingerprint(), Some(fp("amount=100")));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(cache.stats().mismatches, 2);
}

#[test]
fn records_without_a_fingerprint_match_any_request() {
    let (cache, _clock) = cache();
    cache.insert(k("plain"), k("v"));
    assert!(matches!(
        cache.claim(k("plain"), fp("anything")),
        Claim::Completed(_)
    ));
    // A claim without a fingerprint matches a record that has one.
    let Claim::Acquired(r) = cache.claim(k("fp"), fp("a")) else {
        panic!()
    };
    r.complete(k("v")).unwrap();
    assert!(matches!(cache.claim(k("fp"), None), Claim::Completed(_)));
}

// 3. Outcomes ----------------------------------------------------------------

#[test]
fn complete_stores_the_result_and_wakes_waiters() {
    let (cache, _clock) = cache();
    let Claim::Acquired(reservation) = cache.claim(k("key"), fp("a")) else {
        panic!()
    };
    let Claim::InProgress(pending) = cache.claim(k("key"), fp("a")) else {
        panic!()
    };
    std::thread::scope(|s| {
        let waiter = s.spawn(|| pending.wait_timeout(SEC * 30));
        reservation.complete(k("result")).unwrap();
        match waiter.join().unwrap() {
            Waited::Completed(replay) => assert_eq!(replay.into_value(), "result"),
            other => panic!("unexpected {other:?}"),
        }
    });
    assert_eq!(cache.get("key"), Some(k("result")));
}

#[test]
fn release_frees_the_key_at_once_and_tells_waiters() {
    let (cache, _clock) = cache();
    let Claim::Acquired(reservation) = cache.claim(k("key"), fp("a")) else {
        panic!()
    };
    let Claim::InProgress(pending) = cache.claim(k("key"), fp("a")) else {
        panic!()
    };
    reservation.release();
    assert_eq!(pending.wait_timeout(SEC * 10), Waited::Released);
    assert_eq!(cache.get("key"), None, "nothing stored");
    // Nothing kept, not even the fingerprint: another request may use it.
    let Claim::Acquired(again) = cache.claim(k("key"), fp("b")) else {
        panic!("free again")
    };
    again.release();
    assert_eq!(cache.stats().releases, 2);
}

#[test]
fn dropping_or_panicking_abandons_the_claim_until_its_lease_lapses() {
    let (cache, clock) = cache_with(SEC * 30, None, CapacityPolicy::Refuse);
    for how in ["drop", "panic", "abandon"] {
        let key = k(how);
        let Claim::Acquired(reservation) = cache.claim(key.clone(), fp("a")) else {
            panic!()
        };
        let token = reservation.token();
        let Claim::InProgress(pending) = cache.claim(key.clone(), fp("a")) else {
            panic!()
        };
        clock.advance(SEC * 5);
        match how {
            "drop" => drop(reservation),
            "abandon" => reservation.abandon(),
            _ => {
                let unwound = catch_unwind(AssertUnwindSafe(move || {
                    let _held = reservation;
                    panic!("handler bug");
                }));
                assert!(unwound.is_err());
            }
        }
        // Waiters are told at once, with the time until the key frees.
        assert_eq!(
            pending.wait_timeout(SEC * 10),
            Waited::Abandoned { frees_in: SEC * 25 },
            "{how}"
        );
        assert_eq!(cache.get(&key), None, "{how}: nothing stored");
        // Retries do not run the request again while the lease lasts.
        clock.advance(SEC * 25 - Duration::from_nanos(1));
        let Claim::InProgress(retry) = cache.claim(key.clone(), fp("a")) else {
            panic!("{how}: the key is still held")
        };
        assert!(retry.is_abandoned(), "{how}");
        assert_eq!(retry.lease_remaining(), Some(Duration::from_nanos(1)));
        assert_eq!(retry.retry_after(), SEC, "{how}: the time until it frees");
        assert_eq!(
            retry.wait_timeout(SEC),
            Waited::Abandoned {
                frees_in: Duration::from_nanos(1)
            }
        );
        // Once it lapses, the next claim takes over with a larger token.
        clock.advance(Duration::from_nanos(1));
        let Claim::Acquired(next) = cache.claim(key, fp("a")) else {
            panic!("{how}: free after the lease")
        };
        assert!(next.token() > token);
        next.release();
    }
    let stats = cache.stats();
    assert_eq!((stats.abandoned, stats.lease_expiries), (3, 3));
}

/// The trial's first failure: a client timed out, the server dropped the
/// handler's future (and with it the reservation) after the charge, and
/// every retry charged again (9 charges for 1 request).
#[tokio::test]
async fn a_claim_whose_holder_is_dropped_mid_flight_is_not_reexecuted_before_its_lease_lapses() {
    let (cache, clock) = cache_with(SEC * 60, None, CapacityPolicy::Refuse);
    let charges = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handle = |cache: TestCache, charges: std::sync::Arc<std::sync::atomic::AtomicUsize>| {
        tokio::spawn(async move {
            match cache.claim(k("key"), fp("charge 42")) {
                Claim::Acquired(reservation) => {
                    charges.fetch_add(1, Ordering::SeqCst); // the side effect
                    std::future::pending::<()>().await; // a slow downstream
                    reservation.complete(k("receipt")).unwrap();
                    "executed"
                }
                Claim::InProgress(_) => "409",
                Claim::Completed(_) => "replayed",
                _ => "other",
            }
        })
    };
    let first = handle(cache.clone(), charges.clone());
    while charges.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let Claim::InProgress(pending) = cache.claim(k("key"), fp("charge 42")) else {
        panic!()
    };
    first.abort(); // the client disconnected: the server drops the future
    let waited = tokio::time::timeout(SEC * 10, pending.wait_async())
        .await
        .unwrap();
    assert!(matches!(waited, Waited::Abandoned { .. }), "{waited:?}");
    for _retry in 0..8 {
        clock.advance(SEC * 5);
        let answer = handle(cache.clone(), charges.clone()).await.unwrap();
        assert_eq!(answer, "409", "a retry within the lease does not run");
    }
    assert_eq!(charges.load(Ordering::SeqCst), 1, "charged once");
    clock.advance(SEC * 20); // 60 s after the claim: the lease lapsed
    assert!(matches!(
        cache.claim(k("key"), fp("charge 42")),
        Claim::Acquired(_)
    ));
}

#[test]
fn complete_with_ttl_keeps_the_record_for_the_retention() {
    let (cache, clock) = cache();
    let Claim::Acquired(r) = cache.claim(k("key"), None) else {
        panic!()
    };
    r.complete_with_ttl(k("v"), SEC * 10).unwrap();
    clock.advance(SEC * 10 - Duration::from_nanos(1));
    assert!(matches!(cache.claim(k("key"), None), Claim::Completed(_)));
    clock.advance(Duration::from_nanos(1));
    // An expired record is a new request.
    assert!(matches!(cache.claim(k("key"), None), Claim::Acquired(_)));
}

// 4. Leases and fencing --------------------------------------------------------

#[test]
fn a_lapsed_lease_lets_a_new_claim_in_and_fences_the_old_one() {
    let (cache, clock) = cache_with(SEC * 30, None, CapacityPolicy::EvictSoonest);
    assert_eq!(cache.lease(), SEC * 30);
    let Claim::Acquired(old) = cache.claim(k("key"), fp("a")) else {
        panic!()
    };
    let Claim::InProgress(pending) = cache.claim(k("key"), fp("a")) else {
        panic!()
    };
    assert_eq!(pending.lease_remaining(), Some(SEC * 30));
    assert_eq!(pending.running_for(), Duration::ZERO);
    assert_eq!(pending.retry_after(), SEC, "just started: a short hint");
    clock.advance(SEC * 10);
    assert_eq!(pending.running_for(), SEC * 10);
    assert_eq!(pending.lease_remaining(), Some(SEC * 20), "live, not fixed");
    assert_eq!(pending.retry_after(), SEC * 10, "about as long again");
    clock.advance(SEC * 10);
    assert_eq!(pending.retry_after(), SEC * 10, "never past the lease");
    clock.advance(SEC * 10);
    assert_eq!(
        old.renew().unwrap(),
        SEC * 30,
        "renewed before anyone took over"
    );

    clock.advance(SEC * 30 - Duration::from_nanos(1));
    assert!(matches!(
        cache.claim(k("key"), fp("a")),
        Claim::InProgress(_)
    ));
    clock.advance(Duration::from_nanos(1));
    let Claim::Acquired(new) = cache.claim(k("key"), fp("a")) else {
        panic!("the lease lapsed")
    };
    assert!(new.token() > old.token(), "fencing tokens increase per key");
    // The waiter on the old claim is told it is gone.
    assert_eq!(pending.wait_timeout(SEC), Waited::Lapsed);

    // The stale holder can neither renew nor complete; its value comes back.
    assert!(old.renew().is_err());
    let stale = old.complete(k("late")).unwrap_err();
    assert_eq!(stale.into_value(), "late");
    new.complete(k("fresh")).unwrap();
    assert_eq!(cache.get("key"), Some(k("fresh")));
    let stats = cache.stats();
    assert_eq!((stats.lease_expiries, stats.fenced), (1, 2));
}

#[test]
fn a_stale_completion_never_overwrites_a_newer_result() {
    let (cache, clock) = cache_with(SEC, None, CapacityPolicy::EvictSoonest);
    let Claim::Acquired(old) = cache.claim(k("key"), None) else {
        panic!()
    };
    clock.advance(SEC);
    let Claim::Acquired(new) = cache.claim(k("key"), None) else {
        panic!()
    };
    new.complete(k("new")).unwrap();
    assert!(old.complete(k("old")).is_err());
    assert_eq!(cache.get("key"), Some(k("new")));
}

#[test]
fn renew_extends_the_lease() {
    let (cache, clock) = cache_with(SEC * 60, None, CapacityPolicy::EvictSoonest);
    let Claim::Acquired(r) = cache.claim(k("key"), None) else {
        panic!()
    };
    clock.advance(SEC * 50);
    assert_eq!(r.lease_remaining(), SEC * 10);
    r.renew().unwrap();
    assert_eq!(r.lease_remaining(), SEC * 60);
    clock.advance(SEC * 50);
    assert!(
        matches!(cache.claim(k("key"), None), Claim::InProgress(_)),
        "still held"
    );
    r.complete(k("v")).unwrap();
}

#[test]
fn a_lapsed_but_untaken_lease_can_still_complete() {
    let (cache, clock) = cache_with(SEC, None, CapacityPolicy::EvictSoonest);
    let Claim::Acquired(r) = cache.claim(k("key"), None) else {
        panic!()
    };
    clock.advance(SEC * 5);
    r.complete(k("v")).unwrap();
    assert_eq!(cache.get("key"), Some(k("v")));
}

#[test]
fn get_or_compute_takes_over_a_lapsed_claim() {
    let (cache, clock) = cache_with(SEC, None, CapacityPolicy::EvictSoonest);
    let Claim::Acquired(stale) = cache.claim(k("key"), None) else {
        panic!()
    };
    clock.advance(SEC);
    assert_eq!(
        cache.get_or_compute(k("key"), || Ok::<_, Infallible>(k("computed"))),
        Ok(k("computed"))
    );
    assert!(stale.complete(k("late")).is_err());
    assert_eq!(cache.get("key"), Some(k("computed")));
}

#[test]
fn a_blocked_get_or_compute_wakes_when_the_claims_lease_lapses() {
    let (cache, clock) = cache_with(SEC, None, CapacityPolicy::EvictSoonest);
    let Claim::Acquired(_held) = cache.claim(k("key"), None) else {
        panic!()
    };
    std::thread::scope(|s| {
        let waiter = s.spawn(|| cache.get_or_compute(k("key"), || Ok::<_, Infallible>(k("mine"))));
        wait_until("the waiter to join", || cache.stats().coalesced == 1);
        clock.advance(SEC); // nobody ends the claim: the waiter must notice
        assert_eq!(waiter.join().unwrap(), Ok(k("mine")));
    });
    assert_eq!(cache.stats().lease_expiries, 1);
}

#[test]
fn zero_lease_is_a_build_error() {
    let err = Cache::<String, String>::builder()
        .lease(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::ZeroLease);
    assert_eq!(err.field(), "lease");
    assert_eq!(Cache::<String, String>::new().lease(), DEFAULT_LEASE);
    assert_eq!(DEFAULT_LEASE, SEC * 60);
}

// 5. Waiting ------------------------------------------------------------------

#[test]
fn wait_timeout_times_out_while_the_key_is_held() {
    let (cache, _clock) = cache();
    let Claim::Acquired(r) = cache.claim(k("key"), None) else {
        panic!()
    };
    let Claim::InProgress(pending) = cache.claim(k("key"), None) else {
        panic!()
    };
    assert_eq!(
        pending.wait_timeout(Duration::from_millis(20)),
        Waited::TimedOut
    );
    r.complete(k("v")).unwrap();
    assert!(matches!(pending.wait_timeout(SEC), Waited::Completed(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_async_resolves_on_complete_and_on_release() {
    let (cache, _clock) = cache();
    for release in [false, true] {
        let key = format!("key-{release}");
        let Claim::Acquired(r) = cache.claim(key.clone(), None) else {
            panic!()
        };
        let Claim::InProgress(pending) = cache.claim(key.clone(), None) else {
            panic!()
        };
        let waiter = tokio::spawn(async move { pending.wait_async().await });
        tokio::task::yield_now().await;
        if release {
            r.release();
        } else {
            r.complete(k("v")).unwrap();
        }
        let waited = tokio::time::timeout(SEC * 10, waiter)
            .await
            .unwrap()
            .unwrap();
        if release {
            assert_eq!(waited, Waited::Released);
        } else {
            assert!(matches!(waited, Waited::Completed(ref replay) if replay.value() == "v"));
        }
    }
}

#[test]
fn a_dropped_wait_async_future_is_cancelled_cleanly() {
    let (cache, _clock) = cache();
    let Claim::Acquired(r) = cache.claim(k("key"), None) else {
        panic!()
    };
    let Claim::InProgress(pending) = cache.claim(k("key"), None) else {
        panic!()
    };
    {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut wait = std::pin::pin!(pending.wait_async());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
    }
    r.complete(k("v")).unwrap();
    assert!(matches!(pending.wait_timeout(SEC), Waited::Completed(_)));
}

// 6. Capacity -----------------------------------------------------------------

#[test]
fn claims_count_against_max_entries_and_are_never_evicted() {
    let (cache, _clock) = cache_with(SEC * 60, Some(2), CapacityPolicy::EvictSoonest);
    let Claim::Acquired(a) = cache.claim(k("a"), None) else {
        panic!()
    };
    let Claim::Acquired(b) = cache.claim(k("b"), None) else {
        panic!()
    };
    assert_eq!(cache.len(), 0, "claims are not entries");
    assert!(
        matches!(cache.claim(k("c"), None), Claim::Full),
        "every slot is in flight"
    );
    cache.insert(k("d"), k("v"));
    assert!(
        !cache.contains_key("d"),
        "no room: the insert is refused, no flight evicted"
    );
    assert_eq!(
        (cache.stats().refused_claims, cache.stats().refused_inserts),
        (1, 1)
    );
    a.complete(k("a")).unwrap();
    b.complete(k("b")).unwrap();
    assert_eq!(cache.len(), 2);
    // Completed records may be evicted under the opt-in EvictSoonest.
    assert!(matches!(cache.claim(k("c"), None), Claim::Acquired(_)));
    assert_eq!(cache.stats().evictions, 1);
}

#[test]
fn refuse_policy_never_evicts_unexpired_records() {
    let (cache, clock) = cache_with(SEC * 60, Some(2), CapacityPolicy::Refuse);
    for key in ["a", "b"] {
        let Claim::Acquired(r) = cache.claim(k(key), None) else {
            panic!()
        };
        r.complete_with_ttl(k(key), SEC * 10).unwrap();
    }
    assert!(matches!(cache.claim(k("c"), None), Claim::Full));
    cache.insert(k("d"), k("v"));
    assert_eq!(
        cache.get_or_compute(k("e"), || Ok::<_, Infallible>(k("e"))),
        Ok(k("e"))
    );
    assert_eq!(
        (cache.get("a"), cache.get("b")),
        (Some(k("a")), Some(k("b")))
    );
    assert_eq!(cache.get("d"), None);
    assert_eq!(cache.get("e"), None, "computed and returned, not stored");
    assert_eq!(cache.stats().evictions, 0);
    assert_eq!(
        (cache.stats().refused_claims, cache.stats().refused_inserts),
        (1, 2)
    );
    // Once records expire, there is room again.
    clock.advance(SEC * 10);
    assert!(matches!(cache.claim(k("c"), None), Claim::Acquired(_)));
}

#[test]
fn a_lapsed_claim_hands_its_room_to_the_next_claim() {
    let (cache, clock) = cache_with(SEC, Some(1), CapacityPolicy::EvictSoonest);
    let Claim::Acquired(old) = cache.claim(k("a"), None) else {
        panic!()
    };
    clock.advance(SEC);
    let Claim::Acquired(new) = cache.claim(k("a"), None) else {
        panic!()
    };
    drop(old); // stale: releases nothing
    assert!(
        matches!(cache.claim(k("b"), None), Claim::Full),
        "the new claim holds the unit"
    );
    new.complete(k("v")).unwrap();
    assert_eq!(cache.len(), 1);
}

// 7. Replay metadata -----------------------------------------------------------

#[test]
fn a_replay_says_when_it_expires_and_that_it_is_a_replay() {
    let (cache, clock) = cache();
    let Claim::Acquired(r) = cache.claim(k("key"), None) else {
        panic!()
    };
    r.complete_with_ttl(k("v"), SEC * 100).unwrap();
    clock.advance(SEC * 40);
    let Claim::Completed(replay) = cache.claim(k("key"), None) else {
        panic!()
    };
    assert_eq!(replay.expires_in(), SEC * 60);
    // Wall-clock time as the cache's clock sees it: a manual clock's moves
    // with it, exactly.
    assert_eq!(replay.expires_at(), clock.system_time() + SEC * 60);
    assert_eq!(Replay::<String>::HEADER, ("Idempotent-Replayed", "true"));
}

// 8. Stats --------------------------------------------------------------------

#[test]
fn protocol_outcomes_are_counted() {
    let (cache, clock) = cache_with(SEC, Some(1), CapacityPolicy::EvictSoonest);
    let Claim::Acquired(r) = cache.claim(k("a"), fp("1")) else {
        panic!()
    };
    let _ = cache.claim(k("a"), fp("1")); // in progress
    let _ = cache.claim(k("a"), fp("2")); // mismatch
    let _ = cache.claim(k("b"), None); // full
    r.release();
    let Claim::Acquired(r) = cache.claim(k("a"), fp("1")) else {
        panic!()
    };
    clock.advance(SEC);
    let Claim::Acquired(r2) = cache.claim(k("a"), fp("1")) else {
        panic!()
    }; // lease expiry
    assert!(r.complete(k("late")).is_err()); // fenced
    r2.complete(k("v")).unwrap();
    let _ = cache.claim(k("a"), fp("1")); // replayed
    let s = cache.stats();
    assert_eq!(
        (s.acquired, s.replayed, s.in_progress, s.mismatches),
        (3, 1, 1, 1)
    );
    assert_eq!(
        (s.releases, s.lease_expiries, s.fenced, s.refused_claims),
        (1, 1, 1, 1)
    );
}

// 9. Key helpers --------------------------------------------------------------

#[test]
fn random_keys_are_uuid_v4_strings() {
    let a = key::random();
    let b = key::random();
    assert_ne!(a, b);
    assert_eq!(a.len(), 36);
    let groups: Vec<&str> = a.split('-').collect();
    assert_eq!(
        groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );
    assert!(groups[2].starts_with('4'), "version 4: {a}");
    assert!(
        matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
        "RFC 4122 variant: {a}"
    );
    assert!(
        a.chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
}

#[test]
fn deterministic_keys_are_a_stable_length_prefixed_sha256() {
    // Computed independently (Python hashlib) from the documented function.
    assert_eq!(
        key::deterministic(["user-7", "checkout", "cart-1234"]),
        "d4a9602152474847b3d0635e24b6a3f23cd0e7ca98a3ffdba64930916e0fc377"
    );
    assert_ne!(
        key::deterministic(["ab", "c"]),
        key::deterministic(["a", "bc"])
    );
}

// 10. Scoping -------------------------------------------------------------------

#[test]
fn keys_scoped_by_tenant_never_replay_across_tenants() {
    let cache: Cache<(u64, String), String> = Cache::new();
    let Claim::Acquired(r) = cache.claim((1, k("key")), None) else {
        panic!()
    };
    r.complete(k("tenant 1's receipt")).unwrap();
    // Tenant 2 reuses the same client-chosen key: a different record.
    assert!(matches!(
        cache.claim((2, k("key")), None),
        Claim::Acquired(_)
    ));
}

#[test]
fn remove_or_insert_during_a_claim_wins_over_its_completion() {
    let (cache, _clock) = cache_with(SEC * 60, Some(4), CapacityPolicy::EvictSoonest);
    let Claim::Acquired(r) = cache.claim(k("removed"), None) else {
        panic!()
    };
    let Claim::InProgress(pending) = cache.claim(k("removed"), None) else {
        panic!()
    };
    cache.remove("removed");
    r.complete(k("late")).unwrap();
    assert!(
        matches!(pending.wait_timeout(SEC), Waited::Completed(ref replay) if replay.value() == "late"),
        "waiters still get the result"
    );
    assert_eq!(cache.get("removed"), None, "the removal wins");

    let Claim::Acquired(r) = cache.claim(k("overwritten"), None) else {
        panic!()
    };
    cache.insert(k("overwritten"), k("newer"));
    r.complete(k("late")).unwrap();
    assert_eq!(cache.get("overwritten"), Some(k("newer")));
    assert_eq!(cache.len(), 1, "the invalidated claim gave its room back");
}

// Regressions from review -------------------------------------------------------

#[test]
fn a_refused_insert_does_not_cancel_a_running_claim() {
    let cache: Cache<u32, u32> = Cache::builder().max_entries(1).shards(1).build().unwrap();
    let Claim::Acquired(r) = cache.claim(1, None) else {
        panic!()
    };
    cache.insert(1, 5); // the claim holds the only unit: refused
    assert_eq!(cache.stats().refused_inserts, 1);
    r.complete(7).unwrap();
    assert_eq!(cache.get(&1), Some(7), "the claim's result is stored");
    assert!(matches!(cache.claim(1, None), Claim::Completed(_)));
}

/// A key whose `clone` panics when asked to.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PanickyKey(u32);

impl Clone for PanickyKey {
    fn clone(&self) -> Self {
        assert!(self.0 != 1, "planted panic in K::clone");
        PanickyKey(self.0)
    }
}

#[test]
fn a_panicking_key_clone_in_claim_leaks_no_room() {
    let cache: Cache<PanickyKey, u32> = Cache::builder().max_entries(1).shards(1).build().unwrap();
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let _ = cache.claim(PanickyKey(1), None);
    }));
    assert!(panicked.is_err());
    assert_eq!(cache.len(), 0);
    assert!(
        matches!(cache.claim(PanickyKey(2), None), Claim::Acquired(_)),
        "the unit was not leaked"
    );
}

/// A value whose `clone` panics once armed.
#[derive(Debug)]
struct PanickyValue(u32, std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Clone for PanickyValue {
    fn clone(&self) -> Self {
        assert!(!self.1.load(Ordering::SeqCst), "planted panic in V::clone");
        PanickyValue(self.0, self.1.clone())
    }
}

impl PartialEq for PanickyValue {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

#[test]
fn a_panicking_value_clone_in_complete_abandons_the_claim_and_wakes_waiters() {
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clock = ManualClock::new();
    let cache: Cache<u32, PanickyValue> = Cache::builder()
        .max_entries(1)
        .lease(SEC * 10)
        .clock(clock.clone())
        .build()
        .unwrap();
    let Claim::Acquired(r) = cache.claim(1, None) else {
        panic!()
    };
    let Claim::InProgress(pending) = cache.claim(1, None) else {
        panic!()
    };
    armed.store(true, Ordering::SeqCst);
    let value = PanickyValue(1, armed.clone());
    assert!(catch_unwind(AssertUnwindSafe(move || r.complete(value))).is_err());
    armed.store(false, Ordering::SeqCst);
    assert_eq!(
        pending.wait_timeout(SEC * 10),
        Waited::Abandoned { frees_in: SEC * 10 },
        "the waiter is not left hanging"
    );
    assert!(matches!(cache.claim(1, None), Claim::InProgress(_)), "held");
    clock.advance(SEC * 10);
    assert!(
        matches!(cache.claim(1, None), Claim::Acquired(_)),
        "the key and its room are free after the lease"
    );
}

#[test]
fn purge_ends_lapsed_claims_that_nobody_took_over() {
    let (cache, clock) = cache_with(SEC, Some(1), CapacityPolicy::Refuse);
    let Claim::Acquired(forgotten) = cache.claim(k("a"), None) else {
        panic!()
    };
    let Claim::InProgress(pending) = cache.claim(k("a"), None) else {
        panic!()
    };
    assert!(
        matches!(cache.claim(k("b"), None), Claim::Full),
        "the live claim holds the room"
    );
    clock.advance(SEC);
    cache.purge_expired();
    assert_eq!(
        pending.wait_timeout(SEC),
        Waited::Lapsed,
        "its waiters are told"
    );
    assert_eq!(cache.claims_in_progress(), 0);
    assert!(matches!(cache.claim(k("b"), None), Claim::Acquired(_)));
    assert!(
        forgotten.complete(k("late")).is_err(),
        "the ended claim is fenced"
    );
    assert_eq!(cache.stats().lease_expiries, 1);
}

#[test]
fn completion_reports_whether_the_value_was_stored() {
    let (cache, _clock) = cache();
    let Claim::Acquired(r) = cache.claim(k("a"), None) else {
        panic!()
    };
    assert!(matches!(r.complete(k("v")), Ok(Completion::Stored { .. })));
    let Claim::Acquired(r) = cache.claim(k("b"), None) else {
        panic!()
    };
    cache.remove("b"); // invalidates the running claim's result
    assert_eq!(
        r.complete(k("v")),
        Ok(Completion::NotStored(NotStored::Invalidated))
    );
    assert_eq!(cache.get("b"), None);
}

#[test]
fn a_reservation_knows_when_it_is_stale() {
    let (cache, clock) = cache_with(SEC * 10, None, CapacityPolicy::Refuse);
    let Claim::Acquired(r) = cache.claim(k("a"), None) else {
        panic!()
    };
    assert!(!r.is_stale());
    clock.advance(SEC * 10);
    assert!(r.is_stale(), "lapsed: a newer claim may take over");
    let Claim::Acquired(newer) = cache.claim(k("a"), None) else {
        panic!()
    };
    assert!(r.is_stale());
    assert_eq!(r.renew().unwrap_err().token(), r.token());
    assert!(!newer.is_stale());
    newer.release();
}

#[tokio::test]
async fn the_reaper_ends_lapsed_claims_so_async_waiters_take_over() {
    let clock = ManualClock::new();
    let cache: TestCache = Cache::builder()
        .lease(SEC)
        .clock(clock.clone())
        .background_eviction(Duration::from_millis(5))
        .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
        .build()
        .unwrap();
    let Claim::Acquired(_stuck) = cache.claim(k("a"), None) else {
        panic!()
    };
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute_async(k("a"), || async { Ok::<_, Infallible>(k("mine")) })
                .await
        })
    };
    while cache.stats().coalesced == 0 {
        tokio::task::yield_now().await;
    }
    clock.advance(SEC); // the holder is stuck; only the reaper can notice
    let got = tokio::time::timeout(SEC * 10, waiter)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(got, Ok(k("mine")));
}
