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

use crate::sync::{Arc, Condvar, Mutex};

/// How a flight ended, as seen by a waiter.
pub(crate) enum Outcome<V> {
    /// The leader is still running.
    Running,
    /// The leader succeeded; waiters return clones of this value.
    Completed(V),
    /// The leader returned `Err`, panicked or was dropped: nothing to share.
    Abandoned,
}

struct State<V> {
    outcome: Outcome<V>,
    /// Wakers of pending async waiters. A slot is cleared (not removed) when
    /// its future is dropped, so the indices held by other futures stay valid.
    wakers: Vec<Option<Waker>>,
}

/// One in-progress computation and its waiters.
pub(crate) struct Flight<V> {
    state: Mutex<State<V>>,
    finished: Condvar,
}

impl<V> Flight<V> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                outcome: Outcome::Running,
                wakers: Vec::new(),
            }),
            finished: Condvar::new(),
        }
    }

    /// Ends the flight with `outcome` and wakes every waiter, blocking and
    /// async. Wakers run after the flight's lock is released.
    pub(crate) fn finish(&self, outcome: Outcome<V>) {
        debug_assert!(!matches!(outcome, Outcome::Running));
        let wakers = {
            let mut state = self.state.lock();
            debug_assert!(matches!(state.outcome, Outcome::Running), "finished twice");
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
    /// Blocks until the flight ends: `Some(value)` if the leader succeeded,
    /// `None` if it abandoned the flight.
    pub(crate) fn wait(&self) -> Option<V> {
        let mut state = self.state.lock();
        loop {
            match &state.outcome {
                Outcome::Running => self.finished.wait(&mut state),
                Outcome::Completed(value) => return Some(value.clone()),
                Outcome::Abandoned => return None,
            }
        }
    }

    /// Polls for the end of the flight, registering `cx`'s waker in `slot`.
    fn poll_wait(&self, cx: &mut Context<'_>, slot: &mut Option<usize>) -> Poll<Option<V>> {
        let mut state = self.state.lock();
        match &state.outcome {
            Outcome::Completed(value) => Poll::Ready(Some(value.clone())),
            Outcome::Abandoned => Poll::Ready(None),
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

/// Future returned by [`wait_async`]: resolves like [`Flight::wait`].
/// Dropping it deregisters its waker.
pub(crate) struct WaitFlight<V: Clone> {
    flight: Arc<Flight<V>>,
    slot: Option<usize>,
}

/// Waits for `flight` without blocking the thread.
pub(crate) fn wait_async<V: Clone>(flight: Arc<Flight<V>>) -> WaitFlight<V> {
    WaitFlight { flight, slot: None }
}

impl<V: Clone> Future for WaitFlight<V> {
    type Output = Option<V>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<V>> {
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
