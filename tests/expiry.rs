//! Semantics 1-3: exact lazy expiry, exact `len()`, and active expiry on
//! writes without any thread.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::manual_cache;

const NS: Duration = Duration::from_nanos(1);

#[test]
fn entry_is_live_until_exactly_written_plus_ttl_on_every_read_path() {
    for shards in [1, 8] {
        let ttl = Duration::from_secs(10);
        let (cache, clock) = manual_cache::<String, u32>(ttl, shards, None);
        cache.insert("k".into(), 1);

        clock.advance(ttl - NS);
        assert_eq!(cache.get("k"), Some(1), "live one nanosecond before");
        assert!(cache.contains_key("k"));
        assert_eq!(
            cache.get_or_compute("k".into(), || -> Result<u32, Infallible> {
                panic!("a live value must be returned without computing")
            }),
            Ok(1)
        );

        clock.advance(NS);
        assert_eq!(cache.get("k"), None, "expired at exactly t + ttl");
        assert!(!cache.contains_key("k"));
        assert_eq!(cache.len(), 1, "expired but not reclaimed: still counted");
        // get_or_compute does not return the expired value: it recomputes.
        assert_eq!(
            cache.get_or_compute("k".into(), || Ok::<_, Infallible>(2)),
            Ok(2)
        );
        assert_eq!(cache.get("k"), Some(2));
        assert_eq!(cache.len(), 1);
    }
}

#[test]
fn remove_does_not_return_an_expired_value_but_removes_it() {
    let (cache, clock) = manual_cache::<&str, u32>(Duration::from_secs(1), 1, None);
    cache.insert("k", 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.remove("k"), None);
    assert_eq!(cache.len(), 0);
}

#[test]
fn insert_with_ttl_is_exact_and_independent_of_the_default() {
    let (cache, clock) = manual_cache::<&str, u32>(Duration::from_secs(100), 4, None);
    cache.insert_with_ttl("short", 1, Duration::from_millis(5));
    cache.insert("long", 2);
    clock.advance(Duration::from_millis(5) - NS);
    assert_eq!(cache.get("short"), Some(1));
    clock.advance(NS);
    assert_eq!(cache.get("short"), None);
    assert_eq!(cache.get("long"), Some(2));

    // A zero TTL stores an entry that is never returned.
    cache.insert_with_ttl("zero", 3, Duration::ZERO);
    assert_eq!(cache.get("zero"), None);
    // A huge TTL saturates instead of overflowing.
    cache.insert_with_ttl("forever", 4, Duration::MAX);
    clock.advance(Duration::from_secs(1_000_000_000));
    assert_eq!(cache.get("forever"), Some(4));
}

#[test]
fn overwrite_restarts_the_ttl() {
    let (cache, clock) = manual_cache::<&str, u32>(Duration::from_secs(10), 1, None);
    cache.insert("k", 1);
    clock.advance(Duration::from_secs(6));
    cache.insert("k", 2);
    clock.advance(Duration::from_secs(6));
    assert_eq!(
        cache.get("k"),
        Some(2),
        "the second write's deadline counts"
    );
    clock.advance(Duration::from_secs(4));
    assert_eq!(cache.get("k"), None);
}

#[test]
fn len_counts_stored_entries_and_purge_leaves_only_live_ones() {
    for shards in [1, 16] {
        let (cache, clock) = manual_cache::<u64, u64>(Duration::from_secs(10), shards, None);
        for i in 0..100 {
            cache.insert(i, i);
        }
        cache.insert(0, 1); // overwrite: not a new entry
        assert_eq!(cache.len(), 100);
        clock.advance(Duration::from_secs(5));
        for i in 100..130 {
            cache.insert_with_ttl(i, i, Duration::from_secs(60));
        }
        // The first 100 (and the overwrite) expire; the 30 do not.
        clock.advance(Duration::from_secs(5));
        // No write happened since the 100 expired: all are still counted.
        assert_eq!(cache.len(), 130);
        assert_eq!(cache.purge_expired(), 100);
        assert_eq!(cache.len(), 30);
        assert_eq!(cache.purge_expired(), 0);
        assert!(!cache.is_empty());
    }
}

#[test]
fn writes_reclaim_expired_entries_without_purge_or_reaper() {
    // A write-only workload: each key is written once, time moves one tick
    // per write, and entries live for `live` ticks. Memory must stay near
    // the live set.
    let live = 200u64;
    for shards in [1, 4, 16] {
        let (cache, clock) =
            manual_cache::<u64, [u8; 16]>(Duration::from_millis(live), shards, None);
        let mut peak = 0;
        let writes = if cfg!(miri) { 1_500 } else { 50_000u64 };
        for i in 0..writes {
            cache.insert(i, [0; 16]);
            clock.advance(Duration::from_millis(1));
            if i % 97 == 0 {
                peak = peak.max(cache.len());
            }
        }
        // Live entries are the last `live` writes; a shard that happens to
        // receive no write for a while keeps its expired entries until the
        // next write, so allow a small constant per shard.
        let bound = live as usize + 8 * shards;
        assert!(
            peak <= bound,
            "{shards} shards: peak len {peak} exceeds live set bound {bound}"
        );
        assert!(cache.stats().expirations >= writes - bound as u64);
    }
}

#[test]
fn repeated_overwrites_do_not_grow_memory_or_lose_values() {
    let (cache, clock) = manual_cache::<u64, u64>(Duration::from_secs(3600), 2, None);
    let rounds = if cfg!(miri) { 500 } else { 10_000u64 };
    for round in 0..rounds {
        cache.insert(round % 10, round);
        clock.advance(NS);
    }
    assert_eq!(cache.len(), 10);
    for k in 0..10 {
        assert_eq!(cache.get(&k), Some(rounds - 10 + k));
    }
}

#[test]
fn reads_never_reclaim_and_expired_entries_are_counted_as_expirations_when_reclaimed() {
    let (cache, clock) = manual_cache::<u64, u64>(Duration::from_secs(1), 1, None);
    cache.insert(1, 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.stats().expirations, 0);
    cache.insert(2, 2); // a write reclaims the expired entry of its shard
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.stats().expirations, 1);
}

#[test]
fn default_clock_never_expires_early_and_is_late_by_at_most_its_granularity() {
    let granularity = idemcache::clock::default_clock_granularity();
    assert!(
        granularity < Duration::from_millis(100),
        "a timer tick: {granularity:?}"
    );
    let cache: idemcache::Cache<u32, u32> = idemcache::Cache::new();
    let ttl = Duration::from_millis(40);
    let written = std::time::Instant::now();
    cache.insert_with_ttl(1, 1, ttl);
    // Reads right after the write see it live: the coarse read clock is
    // never ahead of the clock that set the deadline.
    for _ in 0..1_000 {
        if written.elapsed() >= ttl {
            break;
        }
        assert_eq!(cache.get(&1), Some(1), "expired early");
    }
    // Waiting for real time here is the point: this checks the real clock.
    std::thread::sleep(ttl + granularity + Duration::from_millis(10));
    assert_eq!(cache.get(&1), None, "expired at most one tick late");
}
