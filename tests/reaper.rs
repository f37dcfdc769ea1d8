//! Semantic 4: the background reaper exists only when asked for, purges
//! without any write, and exits once the last handle is dropped.
//!
//! Tests here count this process's threads by name, so they run one at a
//! time (the `SERIAL` lock) and this file holds nothing else.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::wait_until;
use idemcache::Cache;
use idemcache::clock::ManualClock;

static SERIAL: Mutex<()> = Mutex::new(());

/// Threads of this process whose name starts like the reaper's (Linux
/// truncates thread names to 15 bytes).
fn reaper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("procfs is available")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("idemcache-reap"))
        .count()
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn no_thread_unless_asked() {
    let _serial = serial();
    let before = reaper_threads();
    let cache: Cache<u64, u64> = Cache::builder().build().unwrap();
    cache.insert(1, 1);
    assert_eq!(reaper_threads(), before);
}

#[test]
fn reaper_purges_expired_entries_without_writes_and_exits_with_the_last_handle() {
    let _serial = serial();
    let before = reaper_threads();
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .time_to_live(Duration::from_secs(60))
        .clock(clock.clone())
        .background_eviction(Duration::from_millis(5))
        .build()
        .unwrap();
    // The thread names itself as it starts: wait for that, not for time.
    // Every test here also waits for its reaper to be gone before it ends,
    // so `before` is stable.
    wait_until("one named reaper thread", || reaper_threads() == before + 1);

    for i in 0..10_000 {
        cache.insert(i, i);
    }
    cache.insert_with_ttl(u64::MAX, 0, Duration::from_secs(3600));
    clock.advance(Duration::from_secs(60));
    // No write, no purge_expired: only the reaper can reclaim these.
    wait_until("the reaper to purge", || cache.len() == 1);
    assert_eq!(cache.get(&u64::MAX), Some(0), "live entries are left alone");
    assert_eq!(cache.stats().expirations, 10_000);

    // A clone keeps the cache (and its reaper) alive.
    let clone = cache.clone();
    drop(cache);
    assert_eq!(reaper_threads(), before + 1);
    clock.advance(Duration::from_secs(3600));
    wait_until("the reaper to purge for the clone", || clone.is_empty());
    // Dropping the last handle stops and joins the thread (the kernel may
    // list the exited task for a moment after the join).
    drop(clone);
    wait_until("the reaper to exit", || reaper_threads() == before);
}

#[test]
fn reaper_with_a_long_interval_still_exits_promptly() {
    let _serial = serial();
    let before = reaper_threads();
    let cache: Cache<u64, u64> = Cache::builder()
        .background_eviction(Duration::from_secs(3600))
        .build()
        .unwrap();
    wait_until("the reaper to start", || reaper_threads() == before + 1);
    // The reaper is asleep for an hour; dropping the cache must wake it.
    drop(cache);
    wait_until("the reaper to exit", || reaper_threads() == before);
}

#[test]
fn dropping_the_last_handle_from_inside_a_purged_value_does_not_deadlock() {
    // A value that owns the last handle of its own cache, reclaimed by the
    // reaper: the handle is dropped on the reaper thread itself.
    #[derive(Clone)]
    struct OwnsCache(#[allow(dead_code)] Option<Cache<u64, OwnsCache>>);

    let _serial = serial();
    let before = reaper_threads();
    let clock = ManualClock::new();
    let cache: Cache<u64, OwnsCache> = Cache::builder()
        .time_to_live(Duration::from_secs(1))
        .clock(clock.clone())
        .background_eviction(Duration::from_millis(1))
        .build()
        .unwrap();
    wait_until("the reaper to start", || reaper_threads() == before + 1);
    cache.insert(1, OwnsCache(Some(cache.clone())));
    drop(cache); // the entry now holds the only handle
    clock.advance(Duration::from_secs(1));
    wait_until("the reaper to exit", || reaper_threads() == before);
}
