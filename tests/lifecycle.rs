//! Semantic 10 (nothing leaks), build errors, handles and auto traits.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use common::{Tracked, manual_cache, wait_until};
use idemcache::{BuildError, Cache, MAX_SHARDS};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn values_are_dropped_when_removed_overwritten_reclaimed_evicted_or_cleared() {
    let live = Arc::new(AtomicIsize::new(0));
    let count = || live.load(Ordering::SeqCst);
    let (cache, clock) = manual_cache::<u64, Tracked>(SEC * 10, 4, Some(100));

    cache.insert(1, Tracked::new(1, &live));
    cache.insert(1, Tracked::new(2, &live)); // overwrite drops the old value
    assert_eq!(count(), 1);
    let removed = cache.remove(&1).unwrap();
    assert_eq!(removed.id, 2);
    drop(removed);
    assert_eq!(count(), 0, "remove hands the value out and keeps no copy");

    for i in 0..150 {
        cache.insert(i, Tracked::new(i, &live)); // 50 evicted
    }
    assert_eq!(count(), 100);
    clock.advance(SEC * 10);
    assert_eq!(cache.purge_expired(), 100);
    assert_eq!(count(), 0, "reclaimed values are dropped");

    for i in 0..10 {
        cache.insert(i, Tracked::new(i, &live));
    }
    cache.clear();
    assert_eq!(count(), 0, "clear drops values");

    for i in 0..10 {
        cache.insert(i, Tracked::new(i, &live));
    }
    let got = cache.get_or_compute(500, || Ok::<_, Infallible>(Tracked::new(500, &live)));
    drop(got);
    let clone = cache.clone();
    drop(cache);
    assert_eq!(count(), 11, "a clone keeps the map alive");
    drop(clone);
    assert_eq!(count(), 0, "the last handle drops every value");
}

#[test]
fn computed_values_shared_with_waiters_are_not_leaked() {
    let live = Arc::new(AtomicIsize::new(0));
    let cache: Cache<u64, Tracked> = Cache::builder().build().unwrap();
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache.get_or_compute(1, || {
                wait_until("the waiter", || cache.stats().coalesced == 1);
                Ok::<_, Infallible>(Tracked::new(1, &live))
            })
        });
        wait_until("the leader", || cache.stats().computations == 1);
        let waiter =
            s.spawn(|| cache.get_or_compute(1, || Ok::<_, Infallible>(Tracked::new(2, &live))));
        assert_eq!(leader.join().unwrap().unwrap().id, 1);
        assert_eq!(waiter.join().unwrap().unwrap().id, 1);
    });
    assert_eq!(
        live.load(Ordering::SeqCst),
        1,
        "only the stored copy remains"
    );
    drop(cache);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn invalid_configuration_is_a_typed_error_not_a_panic() {
    fn build(b: idemcache::CacheBuilder<u64, u64>) -> Result<Cache<u64, u64>, BuildError> {
        b.build()
    }
    let err = build(Cache::builder().time_to_live(Duration::ZERO)).unwrap_err();
    assert_eq!(err, BuildError::ZeroTimeToLive);
    assert_eq!(err.field(), "time_to_live");
    let err = build(Cache::builder().max_entries(0)).unwrap_err();
    assert_eq!(err, BuildError::ZeroMaxEntries);
    assert_eq!(err.field(), "max_entries");
    let err = build(Cache::builder().shards(0)).unwrap_err();
    assert_eq!(err, BuildError::ZeroShards);
    assert_eq!(err.field(), "shards");
    let err = build(Cache::builder().shards(MAX_SHARDS + 1)).unwrap_err();
    assert_eq!(
        err,
        BuildError::TooManyShards {
            requested: MAX_SHARDS + 1
        }
    );
    let err = build(Cache::builder().background_eviction(Duration::ZERO)).unwrap_err();
    assert_eq!(err, BuildError::ZeroEvictionInterval);
    assert_eq!(err.field(), "background_eviction");
    // Messages name the option, for logs and config files.
    assert!(BuildError::ZeroShards.to_string().contains("shards"));
    let _: &dyn std::error::Error = &err;
}

#[test]
fn any_shard_count_works_and_defaults_are_documented_values() {
    for shards in [1, 3, 7, 64, 1000] {
        let cache: Cache<u64, u64> = Cache::builder().shards(shards).build().unwrap();
        assert_eq!(cache.shard_count(), shards);
        for i in 0..2_000 {
            cache.insert(i, i);
        }
        assert_eq!(cache.len(), 2_000);
        assert!((0..2_000).all(|i| cache.get(&i) == Some(i)));
    }
    let cache: Cache<u64, u64> = Cache::new();
    assert_eq!(cache.time_to_live(), Duration::from_secs(24 * 3600));
    assert_eq!(cache.max_entries(), None);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(cache.shard_count(), (4 * cores).next_power_of_two());
    assert!(format!("{cache:?}").contains("Cache"));
}

#[test]
fn cache_is_send_sync_and_clone_shares_one_map() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<Cache<String, Arc<Vec<u8>>>>();
    let a: Cache<String, u32> = Cache::new();
    let b = a.clone();
    a.insert("x".into(), 1);
    assert_eq!(b.get("x"), Some(1));
    b.remove("x");
    assert!(a.is_empty());
}

#[test]
fn stats_count_hits_misses_and_inserts() {
    let (cache, _clock) = manual_cache::<&str, u32>(SEC, 2, None);
    cache.insert("a", 1);
    cache.insert_with_ttl("b", 2, SEC);
    assert_eq!(cache.get("a"), Some(1));
    assert_eq!(cache.get("zzz"), None);
    assert!(cache.contains_key("a")); // not counted
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.inserts), (1, 1, 2));
    assert!((stats.hit_ratio() - 0.5).abs() < f64::EPSILON);
}
