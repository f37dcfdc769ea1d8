//! Semantics 6, 7 and 11 for `get_or_compute_async`: single flight under
//! any executor, shared with blocking callers, with hand-over when a leader
//! fails or its future is dropped.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use common::wait_until;
use idemcache::Cache;

/// A minimal executor: polls on the calling thread, parks while pending.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

fn cache() -> Cache<String, u64> {
    Cache::builder().build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_compute_once() {
    const TASKS: usize = 16;
    let cache = cache();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let (cache, runs) = (cache.clone(), runs.clone());
        handles.push(tokio::spawn(async move {
            cache
                .get_or_compute_async("k".to_string(), || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // Stay in flight until every other task joined.
                    while cache.stats().coalesced < TASKS as u64 - 1 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok::<_, Infallible>(11)
                })
                .await
        }));
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap(), Ok(11));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().coalesced, TASKS as u64 - 1);
    assert_eq!(cache.get("k"), Some(11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_async_leader_hands_over_to_a_waiter() {
    let cache = cache();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute_async("k".to_string(), || async {
                    std::future::pending::<()>().await; // a handler that hangs
                    Ok::<_, Infallible>(1)
                })
                .await
        })
    };
    while cache.stats().computations == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute_async("k".to_string(), || async { Ok::<_, Infallible>(2) })
                .await
        })
    };
    while cache.stats().coalesced == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    leader.abort(); // the client went away: the leader's future is dropped
    assert!(leader.await.unwrap_err().is_cancelled());
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter was woken and took over")
        .unwrap();
    assert_eq!(got, Ok(2));
    assert_eq!(cache.get("k"), Some(2));
    assert_eq!(cache.stats().computations, 2);
}

#[tokio::test]
async fn timed_out_leader_stores_nothing_and_the_next_caller_computes() {
    let cache = cache();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(10),
        cache.get_or_compute_async("k".to_string(), || async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(1)
        }),
    )
    .await;
    assert!(timed_out.is_err());
    assert_eq!(cache.get("k"), None);
    let got = cache
        .get_or_compute_async("k".to_string(), || async { Ok::<_, Infallible>(3) })
        .await;
    assert_eq!(got, Ok(3));
}

#[tokio::test]
async fn async_err_is_not_cached() {
    let cache = cache();
    let failed = cache
        .get_or_compute_async("k".to_string(), || async { Err::<u64, _>("no") })
        .await;
    assert_eq!(failed, Err("no"));
    assert_eq!(cache.get("k"), None);
}

#[test]
fn blocking_and_async_callers_share_one_flight_under_a_hand_written_executor() {
    let cache = cache();
    let runs = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache.get_or_compute("k".to_string(), || {
                runs.fetch_add(1, Ordering::SeqCst);
                wait_until("both waiters to join", || cache.stats().coalesced == 2);
                Ok::<_, Infallible>(4)
            })
        });
        wait_until("the leader to start", || cache.stats().computations == 1);
        let async_waiter = s.spawn(|| {
            block_on(cache.get_or_compute_async("k".to_string(), || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(5)
            }))
        });
        let blocking_waiter = s.spawn(|| {
            cache.get_or_compute("k".to_string(), || {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(6)
            })
        });
        assert_eq!(leader.join().unwrap(), Ok(4));
        assert_eq!(async_waiter.join().unwrap(), Ok(4));
        assert_eq!(blocking_waiter.join().unwrap(), Ok(4));
    });
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn async_leader_err_hands_over_to_a_blocking_waiter() {
    let cache = cache();
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            block_on(cache.get_or_compute_async("k".to_string(), || async {
                wait_until("the waiter to join", || cache.stats().coalesced == 1);
                Err::<u64, _>("failed")
            }))
        });
        wait_until("the leader to start", || cache.stats().computations == 1);
        let waiter = s.spawn(|| cache.get_or_compute("k".to_string(), || Ok::<_, &str>(8)));
        assert_eq!(leader.join().unwrap(), Err("failed"));
        assert_eq!(waiter.join().unwrap(), Ok(8));
    });
}

#[test]
fn a_dropped_waiting_future_leaves_the_flight_cleanly() {
    let cache = cache();
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache.get_or_compute("k".to_string(), || {
                wait_until("the waiter to join", || cache.stats().coalesced == 1);
                // Give the waiter time to be dropped while we still run.
                std::thread::sleep(Duration::from_millis(20));
                Ok::<_, Infallible>(9)
            })
        });
        wait_until("the leader to start", || cache.stats().computations == 1);
        {
            let waker = Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut waiting = pin!(
                cache.get_or_compute_async("k".to_string(), || async { Ok::<_, Infallible>(0) })
            );
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
        } // dropped while pending
        assert_eq!(leader.join().unwrap(), Ok(9));
    });
    assert_eq!(cache.get("k"), Some(9));
}

#[test]
fn async_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let cache = cache();
    let future = cache.get_or_compute_async("k".to_string(), || async { Ok::<_, Infallible>(1) });
    assert_send(&future);
    assert_eq!(block_on(future), Ok(1));
}

/// A waker whose executor is broken: waking it panics.
struct PanickingWaker;
impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("a broken executor's waker");
    }
}

/// A waker that counts its wake-ups.
struct CountingWaker(AtomicUsize);
impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Two waiters on one claim, the first with a waker that panics: how the
/// claim ends (`end`) must still wake the second, then report the panic.
fn a_panicking_waker_does_not_strand(end: impl FnOnce(idemcache::Reservation<String, u64>)) {
    use idemcache::{Claim, Waited};
    let cache = cache();
    let Claim::Acquired(holder) = cache.claim("k".to_string(), None) else {
        panic!("the key is new");
    };
    let (Claim::InProgress(first), Claim::InProgress(second)) = (
        cache.claim("k".to_string(), None),
        cache.claim("k".to_string(), None),
    ) else {
        panic!("the key is held");
    };
    let broken = Waker::from(Arc::new(PanickingWaker));
    let counting = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let woken = Waker::from(Arc::clone(&counting));
    let mut first_wait = Box::pin(first.wait_async());
    let mut second_wait = Box::pin(second.wait_async());
    assert!(
        first_wait
            .as_mut()
            .poll(&mut Context::from_waker(&broken))
            .is_pending()
    );
    assert!(
        second_wait
            .as_mut()
            .poll(&mut Context::from_waker(&woken))
            .is_pending()
    );

    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| end(holder)));
    assert!(ended.is_err(), "the waker's panic reaches the caller");
    assert_eq!(
        counting.0.load(Ordering::SeqCst),
        1,
        "the other waiter was woken"
    );
    let Poll::Ready(seen) = second_wait.as_mut().poll(&mut Context::from_waker(&woken)) else {
        panic!("the claim has ended");
    };
    match seen {
        Waited::Completed(replay) => assert_eq!(*replay.value(), 7),
        Waited::Released => assert_eq!(cache.get("k"), None),
        _ => panic!("the claim was completed or released"),
    }
    // Nothing is left locked or half done: the key can be used again.
    let again = cache.claim("k".to_string(), None);
    assert!(matches!(again, Claim::Completed(_) | Claim::Acquired(_)));
}

#[test]
fn a_panicking_waker_does_not_strand_the_other_waiters_of_a_completion() {
    a_panicking_waker_does_not_strand(|holder| {
        holder.complete(7).unwrap();
    });
}

#[test]
fn a_panicking_waker_does_not_strand_the_other_waiters_of_a_release() {
    a_panicking_waker_does_not_strand(|holder| holder.release());
}
