//! User code in keys (`Drop`, `Eq`) and extreme configurations must not
//! deadlock, leak room of `max_entries`, or spin. Found by the second review
//! of the engine restructuring; each test failed before its fix.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use idemcache::{Cache, CapacityPolicy, Claim};

// A key whose `Drop` uses the cache: dropped under a shard lock, it would
// deadlock (the locks are not re-entrant).

static ON_DROP: Mutex<Option<Box<dyn FnOnce() + Send>>> = Mutex::new(None);
static DROP_SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct DropHookKey(u32);

impl Drop for DropHookKey {
    fn drop(&mut self) {
        let hook = ON_DROP.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(hook) = hook {
            hook();
        }
    }
}

/// Runs `op` with a hook that uses the (one-shard) cache at the next key
/// drop; fails if `op` deadlocks.
fn no_key_drop_under_lock(
    cache: &Cache<DropHookKey, u32>,
    what: &str,
    op: impl FnOnce(&Cache<DropHookKey, u32>) + Send + 'static,
) {
    let _serial = DROP_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (done, finished) = mpsc::channel();
    let worker = cache.clone();
    std::thread::spawn(move || {
        let probe = worker.clone();
        *ON_DROP.lock().unwrap() = Some(Box::new(move || {
            let _ = probe.stats();
        }));
        op(&worker);
        let _ = done.send(());
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(5)).is_ok(),
        "{what}: deadlocked: the caller's key was dropped under the shard lock"
    );
}

#[test]
fn a_replayed_claim_drops_the_callers_key_after_unlocking() {
    let cache: Cache<DropHookKey, u32> = Cache::builder().shards(1).build().unwrap();
    let Claim::Acquired(r) = cache.claim(DropHookKey(1), None) else {
        panic!()
    };
    r.complete(7).unwrap();
    no_key_drop_under_lock(&cache, "replay", |c| {
        assert!(matches!(c.claim(DropHookKey(1), None), Claim::Completed(_)));
    });
}

#[test]
fn a_claim_in_progress_drops_the_callers_key_after_unlocking() {
    let cache: Cache<DropHookKey, u32> = Cache::builder().shards(1).build().unwrap();
    let Claim::Acquired(r) = cache.claim(DropHookKey(1), None) else {
        panic!()
    };
    std::mem::forget(r); // a deadlocked worker would hold the lock for good
    no_key_drop_under_lock(&cache, "in progress", |c| {
        assert!(matches!(
            c.claim(DropHookKey(1), None),
            Claim::InProgress(_)
        ));
    });
}

#[test]
fn a_get_or_compute_hit_drops_the_callers_key_after_unlocking() {
    let cache: Cache<DropHookKey, u32> = Cache::builder().shards(1).build().unwrap();
    cache.insert(DropHookKey(1), 7);
    no_key_drop_under_lock(&cache, "hit", |c| {
        assert_eq!(c.get_or_compute(DropHookKey(1), || Ok::<_, ()>(0)), Ok(7));
    });
}

// A key whose `Eq` panics while an insert overtakes a claim of it.

static PANIC_EQ: AtomicBool = AtomicBool::new(false);
static EQ_SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Debug)]
struct EqKey(u32);

impl std::hash::Hash for EqKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for EqKey {
    fn eq(&self, other: &Self) -> bool {
        assert!(!PANIC_EQ.load(Ordering::SeqCst), "planted panic in Eq");
        self.0 == other.0
    }
}

impl Eq for EqKey {}

/// Claims key 1, then inserts it with `Eq` armed to panic.
fn insert_over_a_claim_with_a_panicking_eq(cache: &Cache<EqKey, u32>) -> Claim<EqKey, u32> {
    let claim = cache.claim(EqKey(1), None);
    assert!(matches!(claim, Claim::Acquired(_)));
    PANIC_EQ.store(true, Ordering::SeqCst);
    let unwound = catch_unwind(AssertUnwindSafe(|| cache.insert(EqKey(1), 1)));
    PANIC_EQ.store(false, Ordering::SeqCst);
    assert!(unwound.is_err());
    claim
}

#[test]
fn a_panicking_eq_while_an_insert_overtakes_a_claim_leaks_no_room() {
    let _serial = EQ_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cache: Cache<EqKey, u32> = Cache::builder().shards(1).max_entries(2).build().unwrap();
    let Claim::Acquired(r) = insert_over_a_claim_with_a_panicking_eq(&cache) else {
        unreachable!()
    };
    r.release();
    assert_eq!(cache.len(), 0, "nothing is stored, and no unit is counted");
    cache.insert(EqKey(2), 2);
    cache.insert(EqKey(3), 3);
    assert!(cache.contains_key(&EqKey(2)) && cache.contains_key(&EqKey(3)));
}

#[test]
fn an_evicting_insert_never_spins_on_a_cache_full_of_claims() {
    let _serial = EQ_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cache: Cache<EqKey, u32> = Cache::builder()
        .shards(1)
        .max_entries(2)
        .capacity_policy(CapacityPolicy::EvictSoonest)
        .build()
        .unwrap();
    let held = insert_over_a_claim_with_a_panicking_eq(&cache);
    let (done, finished) = mpsc::channel();
    let writer = cache.clone();
    std::thread::spawn(move || {
        writer.insert(EqKey(2), 2);
        let _ = done.send(());
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the insert spun in the make-room loop"
    );
    drop(held);
}

/// Polls a future that must be ready at once (the in-process store's are).
fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the in-process store's futures are ready at once"),
    }
}

#[test]
fn a_lease_of_duration_max_is_still_a_lease() {
    use idemcache::store::{ClaimId, ClaimOutcome, Store};
    let cache: Cache<u32, u32> = Cache::builder().lease(Duration::MAX).build().unwrap();
    let ClaimOutcome::Acquired(acquired) =
        ready(Store::claim(&cache, &1, None, ClaimId::random())).unwrap()
    else {
        panic!("a new key")
    };
    assert_eq!(cache.claims_in_progress(), 1);
    ready(Store::complete(&cache, &1, acquired.token, 7, None)).expect("the holder completes");
}

// A blocked `get_or_compute` on an abandoned claim waits for the lease,
// without spinning on the shard lock while the coarse read clock catches up.

static EQ_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Debug)]
struct CountingKey(u32);

impl std::hash::Hash for CountingKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for CountingKey {
    fn eq(&self, other: &Self) -> bool {
        EQ_CALLS.fetch_add(1, Ordering::SeqCst);
        self.0 == other.0
    }
}

impl Eq for CountingKey {}

#[test]
fn a_get_or_compute_waiter_on_an_abandoned_claim_does_not_spin() {
    let cache: Cache<CountingKey, u32> = Cache::builder()
        .lease(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut worst = 0;
    for _ in 0..5 {
        let Claim::Acquired(r) = cache.claim(CountingKey(1), None) else {
            panic!()
        };
        r.abandon();
        EQ_CALLS.store(0, Ordering::SeqCst);
        assert_eq!(
            cache.get_or_compute(CountingKey(1), || Ok::<_, ()>(1)),
            Ok(1)
        );
        worst = worst.max(EQ_CALLS.load(Ordering::SeqCst));
        cache.remove(&CountingKey(1));
    }
    // A few lookups (before the lapse, after it), not thousands.
    assert!(worst < 20, "the waiter spun: {worst} key comparisons");
}
