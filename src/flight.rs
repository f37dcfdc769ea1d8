//! A flight: one in-progress computation for a key, and the callers waiting
//! for it.
//!
//! The shard's flight table maps a key to its `Flight` while the leader runs
//! its closure. Waiters clone the `Arc<Flight>` under the shard lock, release
//! that lock, and then wait on the flight's own lock and condition variable
//! (blocking callers) or register a waker (async callers). The two locks are
//! never held together.
//!
//! The leader always ends the flight through [`Flight::finish`], called by the
//! leader's drop guard on every path (`Ok`, `Err`, panic, dropped future), so
//! a waiter can rely on one of two terminal outcomes: the value, or
//! "abandoned", after which it retries and one retrier becomes the new leader.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::Fingerprint;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Condvar, Mutex};

/// A flight's lease deadline when it has none (a `get_or_compute` leader
/// runs in this process and ends through its drop guard).
pub(crate) const NO_LEASE: u64 = u64::MAX;

/// How a flight ended, as seen by a waiter.
pub(crate) enum Outcome<V> {
    /// The leader is still running.
    Running,
    /// The leader succeeded; waiters return clones of this value, which is
    /// stored until `expires_at` (cache time).
    Completed { value: V, expires_at: u64 },
    /// The leader returned `Err`, panicked, was dropped, released its claim,
    /// or lost it to a newer claim after its lease lapsed: nothing to share.
    Abandoned,
}

/// What a waiter saw.
pub(crate) enum Ended<V> {
    Completed(V, u64),
    Abandoned,
    /// Only from a wait with a timeout.
    TimedOut,
}

struct State<V> {
    outcome: Outcome<V>,
    /// Wakers of pending async waiters. A slot is cleared (not removed) when
    /// its future is dropped, so the indices held by other futures stay valid.
    wakers: Vec<Option<Waker>>,
}

/// One in-progress computation or claim, and its waiters.
pub(crate) struct Flight<V> {
    state: Mutex<State<V>>,
    finished: Condvar,
    /// The claim's request fingerprint; `None` matches any request.
    pub(crate) fingerprint: Option<Fingerprint>,
    /// Fencing token: increases with every flight of a key.
    pub(crate) token: u64,
    /// Cache time at which a claim's lease lapses ([`NO_LEASE`] for
    /// computations). Written under the shard lock, read by anyone.
    lease_deadline: AtomicU64,
}

impl<V> Flight<V> {
    pub(crate) fn new(token: u64, fingerprint: Option<Fingerprint>, lease_deadline: u64) -> Self {
        Self {
            state: Mutex::new(State {
                outcome: Outcome::Running,
                wakers: Vec::new(),
            }),
            finished: Condvar::new(),
            fingerprint,
            token,
            lease_deadline: AtomicU64::new(lease_deadline),
        }
    }

    /// When the lease lapses, in cache time ([`NO_LEASE`] if never).
    pub(crate) fn lease_deadline(&self) -> u64 {
        self.lease_deadline.load(Ordering::Acquire)
    }

    /// Moves the lease deadline (under the shard lock).
    pub(crate) fn set_lease_deadline(&self, deadline: u64) {
        self.lease_deadline.store(deadline, Ordering::Release);
    }

    /// Whether the lease has lapsed at `now`.
    pub(crate) fn lease_lapsed(&self, now: u64) -> bool {
        self.lease_deadline() <= now
    }

    /// Ends the flight with `outcome` and wakes every waiter, blocking and
    /// async; wakers run after the flight's lock is released. The first end
    /// wins: a later call is ignored, so every path that may end a flight
    /// (its owner, a drop guard, a claim taking over a lapsed lease, a
    /// purge) can simply call this.
    pub(crate) fn finish(&self, outcome: Outcome<V>) {
        debug_assert!(!matches!(outcome, Outcome::Running));
        let wakers = {
            let mut state = self.state.lock();
            if !matches!(state.outcome, Outcome::Running) {
                return;
            }
            state.outcome = outcome;
            std::mem::take(&mut state.wakers)
        };
        self.finished.notify_all();
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }
}

impl<V: Clone> Flight<V> {
    /// Blocks until the flight ends, or until `timeout` (real time) passes.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> Ended<V> {
        let give_up = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.state.lock();
        loop {
            match &state.outcome {
                Outcome::Completed { value, expires_at } => {
                    return Ended::Completed(value.clone(), *expires_at);
                }
                Outcome::Abandoned => return Ended::Abandoned,
                Outcome::Running => match give_up {
                    None => self.finished.wait(&mut state),
                    Some(give_up) => {
                        let left = give_up.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Ended::TimedOut;
                        }
                        self.finished.wait_for(&mut state, left);
                    }
                },
            }
        }
    }

    /// Polls for the end of the flight, registering `cx`'s waker in `slot`.
    fn poll_wait(&self, cx: &mut Context<'_>, slot: &mut Option<usize>) -> Poll<Ended<V>> {
        let mut state = self.state.lock();
        match &state.outcome {
            Outcome::Completed { value, expires_at } => {
                Poll::Ready(Ended::Completed(value.clone(), *expires_at))
            }
            Outcome::Abandoned => Poll::Ready(Ended::Abandoned),
            Outcome::Running => {
                let waker = cx.waker();
                match slot {
                    Some(index) => match &mut state.wakers[*index] {
                        Some(registered) if registered.will_wake(waker) => {}
                        registered => *registered = Some(waker.clone()),
                    },
                    None => {
                        *slot = Some(state.wakers.len());
                        state.wakers.push(Some(waker.clone()));
                    }
                }
                Poll::Pending
            }
        }
    }

    /// Forgets the waker in `slot` (its future was dropped).
    fn deregister(&self, slot: usize) {
        let removed = {
            let mut state = self.state.lock();
            // After `finish` the list has been taken: nothing to remove.
            state.wakers.get_mut(slot).and_then(Option::take)
        };
        drop(removed);
    }
}

/// Future returned by [`wait_async`]: resolves like [`Flight::wait`] with no
/// timeout. Dropping it deregisters its waker.
pub(crate) struct WaitFlight<V: Clone> {
    flight: Arc<Flight<V>>,
    slot: Option<usize>,
}

/// Waits for `flight` without blocking the thread.
pub(crate) fn wait_async<V: Clone>(flight: Arc<Flight<V>>) -> WaitFlight<V> {
    WaitFlight { flight, slot: None }
}

impl<V: Clone> Future for WaitFlight<V> {
    type Output = Ended<V>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended<V>> {
        let this = self.get_mut();
        let result = this.flight.poll_wait(cx, &mut this.slot);
        if result.is_ready() {
            // The flight no longer holds our waker: nothing to deregister.
            this.slot = None;
        }
        result
    }
}

impl<V: Clone> Drop for WaitFlight<V> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.flight.deregister(slot);
        }
    }
}

// `WaitFlight` holds no self-references.
impl<V: Clone> Unpin for WaitFlight<V> {}
