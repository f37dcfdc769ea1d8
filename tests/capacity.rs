//! Semantic 5: `max_entries` is a hard bound; a full cache reclaims expired
//! entries and lapsed claims first; then, by default (`Refuse`), it refuses
//! rather than forget a live record, and only under the opt-in
//! `EvictSoonest` evicts the soonest deadline; the written entry and
//! computations in progress are never evicted.
//!
//! Most eviction tests here opt into `EvictSoonest` (`evicting_cache`);
//! the default policy has its own section at the end.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

use common::{FRAGILE_HASH, FragileKey, manual_cache, manual_cache_with};
use idemcache::clock::ManualClock;
use idemcache::{Cache, CapacityPolicy, Claim, Waited};

const SEC: Duration = Duration::from_secs(1);

/// A manual-clock cache that evicts live entries when full (the opt-in
/// pure-cache policy).
fn evicting_cache<K, V>(
    ttl: Duration,
    shards: usize,
    max_entries: Option<usize>,
) -> (Cache<K, V, ahash::RandomState>, ManualClock)
where
    K: std::hash::Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    manual_cache_with(ttl, shards, max_entries, CapacityPolicy::EvictSoonest)
}

#[test]
fn len_never_exceeds_max_entries() {
    for shards in [1, 3, 16] {
        let (cache, clock) = evicting_cache::<u64, u64>(SEC * 100, shards, Some(10));
        for i in 0..1_000 {
            cache.insert(i, i);
            assert!(
                cache.len() <= 10,
                "{shards} shards: len {} after {i}",
                cache.len()
            );
            if i % 7 == 0 {
                clock.advance(SEC);
            }
        }
        assert_eq!(cache.len(), 10, "a full cache stays full");
        let stats = cache.stats();
        assert_eq!(stats.inserts, 1_000);
        assert_eq!(stats.evictions + stats.expirations, 990);
    }
}

#[test]
fn bound_holds_under_concurrent_writers() {
    const WRITES: u64 = if cfg!(miri) { 300 } else { 20_000 };
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(64)
        .shards(8)
        .capacity_policy(CapacityPolicy::EvictSoonest)
        .build()
        .unwrap();
    let start = Barrier::new(3);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (cache, start) = (&cache, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..WRITES {
                    cache.insert(t * 1_000_000 + i, i);
                }
            });
        }
        start.wait();
        for _ in 0..WRITES / 10 {
            assert!(cache.len() <= 64);
        }
    });
    assert_eq!(cache.len(), 64, "concurrent writers fill the cache exactly");
    assert_eq!(cache.stats().evictions, 2 * WRITES - 64);
}

#[test]
fn full_single_shard_evicts_exactly_the_soonest_deadline() {
    let (cache, _clock) = evicting_cache::<&str, u32>(SEC * 100, 1, Some(3));
    cache.insert_with_ttl("a", 1, SEC * 30);
    cache.insert_with_ttl("b", 2, SEC * 10);
    cache.insert_with_ttl("c", 3, SEC * 20);
    cache.insert("d", 4);
    assert_eq!(cache.get("b"), None, "b had the soonest deadline");
    assert_eq!(
        (cache.get("a"), cache.get("c"), cache.get("d")),
        (Some(1), Some(3), Some(4))
    );
    assert_eq!(cache.stats().evictions, 1);
}

#[test]
fn equal_deadlines_evict_the_oldest_write_first() {
    let (cache, _clock) = evicting_cache::<&str, u32>(SEC * 100, 1, Some(2));
    cache.insert("a", 1);
    cache.insert("b", 2);
    cache.insert("c", 3); // same instant, same TTL: "a" was written first
    assert_eq!(cache.get("a"), None);
    assert_eq!((cache.get("b"), cache.get("c")), (Some(2), Some(3)));
}

#[test]
fn full_cache_reclaims_expired_before_evicting_live() {
    let (cache, clock) = evicting_cache::<&str, u32>(SEC * 100, 1, Some(3));
    cache.insert("live-soon", 1); // deadline 100 s
    cache.insert_with_ttl("expiring", 2, SEC * 150);
    cache.insert_with_ttl("short", 3, SEC);
    clock.advance(SEC * 2); // "short" is now expired
    cache.insert("new", 4);
    assert_eq!(cache.stats().evictions, 0, "no live entry evicted");
    assert_eq!(cache.stats().expirations, 1);
    assert_eq!(cache.get("live-soon"), Some(1));
    assert_eq!(cache.get("expiring"), Some(2));
    assert_eq!(cache.get("new"), Some(4));
}

#[test]
fn the_entry_being_written_is_never_evicted() {
    let (cache, _clock) = evicting_cache::<u32, u32>(SEC * 100, 1, Some(2));
    cache.insert(1, 1);
    cache.insert(2, 2);
    // The new entry has by far the soonest deadline, yet it is stored.
    cache.insert_with_ttl(3, 3, Duration::from_nanos(1));
    assert!(cache.contains_key(&3));
    assert_eq!(cache.len(), 2);
    // Overwriting a present key in a full cache evicts nothing.
    cache.insert(2, 20);
    assert_eq!(cache.stats().evictions, 1);
    assert_eq!(cache.get(&2), Some(20));
}

#[test]
fn multi_shard_full_cache_makes_room_even_when_the_written_shard_is_empty() {
    // One entry allowed across 16 shards: every other write lands on a shard
    // that holds nothing and must take room from another.
    let (cache, _clock) = evicting_cache::<u32, u32>(SEC * 100, 16, Some(1));
    for i in 0..200 {
        cache.insert(i, i);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&i), Some(i), "the written entry survives");
    }
}

#[test]
fn computations_in_progress_do_not_count_and_are_not_evicted() {
    let (cache, _clock) = evicting_cache::<u32, u32>(SEC * 100, 1, Some(2));
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let cache_ref = &cache;
        let computing = s.spawn(move || {
            cache_ref.get_or_compute(99, || {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok::<_, Infallible>(990)
            })
        });
        entered_rx.recv().unwrap();
        // The computation is not an entry: two entries still fit.
        cache.insert(1, 1);
        cache.insert(2, 2);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.stats().evictions, 0);
        // Filling past the bound evicts entries, never the flight.
        cache.insert(3, 3);
        assert_eq!(cache.len(), 2);
        release_tx.send(()).unwrap();
        assert_eq!(computing.join().unwrap(), Ok(990));
    });
    assert_eq!(cache.get(&99), Some(990), "the computed value is stored");
    assert_eq!(cache.len(), 2);
}

#[test]
fn evicted_and_reclaimed_values_are_dropped() {
    let live = Arc::new(std::sync::atomic::AtomicIsize::new(0));
    let (cache, clock) = evicting_cache::<u32, common::Tracked>(SEC, 2, Some(5));
    for i in 0..50 {
        cache.insert(i, common::Tracked::new(u64::from(i), &live));
    }
    assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 5);
    clock.advance(SEC);
    cache.purge_expired();
    assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Growing the index and purging use the hashes the entries keep: a key
/// whose `Hash` panics once stored cannot break either (and the bound's
/// room stays exact).
#[test]
fn growing_the_index_hashes_no_stored_key() {
    use std::sync::atomic::Ordering;
    let _serial = common::fragile_serial();
    let (cache, _clock) = manual_cache::<FragileKey, u64>(SEC * 100, 1, Some(100));
    cache.insert(FragileKey(0), 0);
    FRAGILE_HASH.store(true, Ordering::SeqCst);
    // 59 more keys: the one shard's index grows several times on the way.
    for i in 1..60 {
        cache.insert(FragileKey(i), i);
    }
    FRAGILE_HASH.store(false, Ordering::SeqCst);
    assert_eq!(cache.len(), 60);
    assert!((0..60).all(|i| cache.get(&FragileKey(i)) == Some(i)));
    // The room is all there: 40 more keys fit without evicting.
    for i in 100..140 {
        cache.insert(FragileKey(i), i);
    }
    assert_eq!(cache.len(), 100);
    assert_eq!(cache.stats().evictions, 0);
}

#[test]
fn a_purge_hashes_no_key() {
    use std::sync::atomic::Ordering;
    let _serial = common::fragile_serial();
    let (cache, clock) = manual_cache::<FragileKey, u64>(SEC, 1, Some(10));
    for key in [1, 2, 0, 3] {
        cache.insert(FragileKey(key), key);
    }
    cache.insert_with_ttl(FragileKey(9), 9, SEC * 100);
    clock.advance(SEC * 2);
    FRAGILE_HASH.store(true, Ordering::SeqCst);
    let purged = cache.purge_expired();
    FRAGILE_HASH.store(false, Ordering::SeqCst);
    assert_eq!(purged, 4, "key 0 was purged without hashing it");
    assert_eq!(cache.len(), 1);
    // All ten units are free but one: nine new keys fit without eviction.
    for key in 100..109 {
        cache.insert(FragileKey(key), key);
    }
    assert_eq!(cache.len(), 10);
    assert_eq!(cache.stats().evictions, 0);
}

// The default policy: never forget a live record --------------------------------

/// The trial's second failure: with `max_entries` set and default settings,
/// a retried key was evicted and ran again (4 charges for 3 requests). Now
/// every retry of a live record replays, and new keys get `Full` instead.
#[test]
fn a_bounded_cache_with_default_settings_never_reexecutes_a_retried_key_while_its_record_is_live() {
    for shards in [1, 4] {
        let (cache, _clock) = manual_cache::<u32, u32>(SEC * 3600, shards, Some(3));
        let mut executions = 0;
        let mut full = 0;
        // Ten requests, each retried three times; the cache holds three.
        for request in 0..10 {
            for _attempt in 0..3 {
                match cache.claim(request, None) {
                    Claim::Acquired(r) => {
                        executions += 1;
                        r.complete(request * 10).unwrap();
                    }
                    Claim::Completed(replay) => assert_eq!(*replay.value(), request * 10),
                    Claim::Full => full += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(
            executions, 3,
            "{shards} shards: each stored request ran once"
        );
        assert_eq!(
            full,
            7 * 3,
            "{shards} shards: the rest were refused, never run"
        );
        for request in 0..3 {
            assert!(
                matches!(cache.claim(request, None), Claim::Completed(_)),
                "{shards} shards: request {request} is still replayed"
            );
        }
        assert_eq!(cache.stats().evictions, 0);
        assert_eq!(cache.stats().refused_claims, 21);
    }
}

/// Reproduced in the issue: two abandoned claims with `max_entries(2)`,
/// leases lapsed, and a third key got `Full` until `purge_expired()` ran.
#[test]
fn a_full_cache_reclaims_lapsed_claims_before_answering_full() {
    for shards in [1, 8] {
        let clock = ManualClock::new();
        let cache: Cache<u32, u32> = Cache::builder()
            .max_entries(2)
            .shards(shards)
            .lease(SEC * 10)
            .clock(clock.clone())
            .build()
            .unwrap();
        for key in [1, 2] {
            let Claim::Acquired(r) = cache.claim(key, None) else {
                panic!("room for two claims")
            };
            drop(r); // abandoned: holds its unit until the lease lapses
        }
        assert!(
            matches!(cache.claim(3, None), Claim::Full),
            "leases still live"
        );
        clock.advance(SEC * 10);
        let Claim::Acquired(r) = cache.claim(3, None) else {
            panic!("{shards} shards: a lapsed claim's room is reclaimed without a purge")
        };
        r.complete(30).unwrap();
        cache.insert(4, 40); // the other lapsed claim's room
        assert_eq!((cache.get(&3), cache.get(&4)), (Some(30), Some(40)));
        assert_eq!(cache.claims_in_progress(), 0);
        assert_eq!(cache.stats().lease_expiries, 2);
    }
}

#[test]
fn a_full_cache_refuses_inserts_and_computed_values_but_keeps_live_records() {
    let (cache, clock) = manual_cache::<u32, u32>(SEC * 10, 1, Some(2));
    cache.insert(1, 10);
    cache.insert(2, 20);
    cache.insert(3, 30);
    assert_eq!(cache.get_or_compute(4, || Ok::<_, Infallible>(40)), Ok(40));
    assert_eq!((cache.get(&1), cache.get(&2)), (Some(10), Some(20)));
    assert_eq!((cache.get(&3), cache.get(&4)), (None, None));
    assert_eq!(cache.stats().refused_inserts, 2);
    assert_eq!(cache.stats().evictions, 0);
    // Expired records make room again, without a purge.
    clock.advance(SEC * 10);
    cache.insert(3, 30);
    assert_eq!(cache.get(&3), Some(30));
}

#[test]
fn waiters_of_an_abandoned_claim_are_told_at_once_with_the_time_until_it_frees() {
    let clock = ManualClock::new();
    let cache: Cache<u32, u32> = Cache::builder()
        .lease(SEC * 30)
        .clock(clock.clone())
        .build()
        .unwrap();
    let Claim::Acquired(r) = cache.claim(1, None) else {
        panic!()
    };
    let Claim::InProgress(pending) = cache.claim(1, None) else {
        panic!()
    };
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || tx.send(pending.wait_timeout(SEC * 3600)).unwrap());
    clock.advance(SEC * 10);
    drop(r);
    let waited = rx
        .recv_timeout(SEC * 10)
        .expect("woken at once, not at the lapse");
    assert_eq!(waited, Waited::Abandoned { frees_in: SEC * 20 });
    waiter.join().unwrap();
}
