//! A flight: one key's computation or claim in progress, and the callers
//! waiting for it.
//!
//! The shard's flight table maps a key to its `Flight` while the holder
//! works. Waiters clone the `Arc<Flight>` under the shard lock, release that
//! lock, and then wait on the flight's own lock and condition variable
//! (blocking callers) or register a waker (async callers). The two locks are
//! never held together.
//!
//! # Invariants
//!
//! - A flight ends at most once with a result ([`Outcome::Completed`],
//!   [`Outcome::Released`] or [`Outcome::Lapsed`]); the one later change
//!   allowed is [`Outcome::Abandoned`] → [`Outcome::Lapsed`], when the
//!   abandoned claim's slot finally leaves the table. Every other later
//!   call to [`Flight::finish`] is ignored, so every path that may end a
//!   flight (its guard, a claim taking over a lapsed lease, a purge) simply
//!   calls it.
//! - Every change of outcome wakes every waiter, blocking and async, after
//!   the flight's lock is released.
//! - A flight's holder ends it through a drop guard
//!   ([`FlightGuard`](crate::engine::FlightGuard)) on every path: `Ok`,
//!   `Err`, panic, dropped future.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::Fingerprint;
use crate::clock::CacheTime;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Condvar, Mutex};

/// Where a flight stands, as waiters see it.
pub(crate) enum Outcome<V> {
    /// The holder is still working.
    Running,
    /// The holder succeeded; waiters return clones of this value, which is
    /// stored until `expires_at`.
    Completed { value: V, expires_at: CacheTime },
    /// Ended without a result and the key is free: a `get_or_compute`
    /// leader failed, panicked or was dropped, or a claim was released.
    Released,
    /// A claim's holder gave up without knowing what happened (dropped
    /// unfinished, or [`abandon`](crate::Reservation::abandon)ed): the key
    /// stays held until the lease lapses.
    Abandoned,
    /// The lease lapsed without a result and the claim left the table (a
    /// newer claim took the key over, or a purge or a full cache
    /// reclaimed it).
    Lapsed,
}

/// What a waiter saw.
pub(crate) enum Ended<V> {
    Completed(V, CacheTime),
    Released,
    Abandoned,
    Lapsed,
    /// Only from a wait with a timeout.
    TimedOut,
}

/// What a waiter waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// Any news: a result, a release, an abandonment, a lapse (protocol
    /// waiters, who answer each differently).
    Outcome,
    /// The key being free or completed (`get_or_compute` waiters, who
    /// must not run while an abandoned claim still holds the key).
    Free,
}

struct State<V> {
    outcome: Outcome<V>,
    /// Wakers of pending async waiters. A slot is cleared (not removed)
    /// when its future is dropped, so indices held by other futures stay
    /// valid; the list is taken whenever the outcome changes, which starts
    /// a new `generation` of indices.
    wakers: Vec<Option<Waker>>,
    generation: u64,
}

/// One computation or claim in progress, and its waiters.
pub(crate) struct Flight<V> {
    state: Mutex<State<V>>,
    changed: Condvar,
    /// The claim's request fingerprint; `None` matches any request.
    pub(crate) fingerprint: Option<Fingerprint>,
    /// Fencing token: increases with every flight of a key.
    pub(crate) token: u64,
    /// Chosen by a [`Store`](crate::store::Store) caller, so that a claim
    /// resent after a timeout finds its own acquisition.
    pub(crate) claim_id: Option<u128>,
    /// When the holder claimed the key (cache time).
    pub(crate) started_at: CacheTime,
    /// Cache time at which a claim's lease lapses ([`CacheTime::NEVER`]
    /// for computations). Written under the shard lock, read by anyone.
    lease_deadline: AtomicU64,
}

/// How a flight is created.
pub(crate) struct FlightInit {
    pub(crate) token: u64,
    pub(crate) fingerprint: Option<Fingerprint>,
    pub(crate) claim_id: Option<u128>,
    pub(crate) started_at: CacheTime,
    pub(crate) lease_deadline: CacheTime,
}

impl<V> Flight<V> {
    pub(crate) fn new(init: FlightInit) -> Self {
        Self {
            state: Mutex::new(State {
                outcome: Outcome::Running,
                wakers: Vec::new(),
                generation: 0,
            }),
            changed: Condvar::new(),
            fingerprint: init.fingerprint,
            token: init.token,
            claim_id: init.claim_id,
            started_at: init.started_at,
            lease_deadline: AtomicU64::new(init.lease_deadline.as_nanos()),
        }
    }

    /// When the lease lapses ([`CacheTime::NEVER`] if never).
    pub(crate) fn lease_deadline(&self) -> CacheTime {
        CacheTime::from_nanos(self.lease_deadline.load(Ordering::Acquire))
    }

    /// Whether this flight is a claim (it has a lease).
    pub(crate) fn has_lease(&self) -> bool {
        self.lease_deadline() != CacheTime::NEVER
    }

    /// Moves the lease deadline (under the shard lock).
    pub(crate) fn set_lease_deadline(&self, deadline: CacheTime) {
        self.lease_deadline
            .store(deadline.as_nanos(), Ordering::Release);
    }

    /// Whether the lease has lapsed at `now`.
    pub(crate) fn lease_lapsed(&self, now: CacheTime) -> bool {
        self.lease_deadline() <= now
    }

    /// Whether the holder abandoned the claim and the lease has not lapsed
    /// (locks the flight: never called under a shard lock).
    pub(crate) fn is_abandoned(&self) -> bool {
        matches!(self.state.lock().outcome, Outcome::Abandoned)
    }

    /// Ends the flight with `outcome` (see the module's invariants) and
    /// wakes every waiter; wakers run after the flight's lock is released.
    pub(crate) fn finish(&self, outcome: Outcome<V>) {
        debug_assert!(!matches!(outcome, Outcome::Running));
        let wakers = {
            let mut state = self.state.lock();
            let allowed = match state.outcome {
                Outcome::Running => true,
                Outcome::Abandoned => matches!(outcome, Outcome::Lapsed),
                _ => false,
            };
            if !allowed {
                return;
            }
            state.outcome = outcome;
            state.generation += 1;
            std::mem::take(&mut state.wakers)
        };
        self.changed.notify_all();
        // A waker is the waiter's executor's code: one that panics must not
        // leave the waiters after it asleep.
        run_all(
            wakers
                .into_iter()
                .flatten()
                .map(|waker| move || waker.wake()),
        );
    }
}

/// Runs every task even if some panic, then resumes the first panic (unless
/// the thread is already unwinding, where a second panic would abort).
/// For wake-ups: one waiter's broken waker must not strand the others.
pub(crate) fn run_all<F: FnOnce()>(tasks: impl IntoIterator<Item = F>) {
    let mut panicked = None;
    for task in tasks {
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(task)) {
            panicked.get_or_insert(panic);
        }
    }
    if let Some(panic) = panicked
        && !std::thread::panicking()
    {
        std::panic::resume_unwind(panic);
    }
}

impl<V: Clone> Flight<V> {
    /// What a waiter that waits `until` sees now, or `None` to go on
    /// waiting.
    fn seen(outcome: &Outcome<V>, until: Until) -> Option<Ended<V>> {
        match outcome {
            Outcome::Running => None,
            Outcome::Completed { value, expires_at } => {
                Some(Ended::Completed(value.clone(), *expires_at))
            }
            Outcome::Released => Some(Ended::Released),
            Outcome::Lapsed => Some(Ended::Lapsed),
            Outcome::Abandoned => (until == Until::Outcome).then_some(Ended::Abandoned),
        }
    }

    /// Blocks until the flight has news for a waiter that waits `until`,
    /// or until `timeout` (real time) passes.
    pub(crate) fn wait(&self, until: Until, timeout: Option<Duration>) -> Ended<V> {
        let give_up = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.state.lock();
        loop {
            if let Some(ended) = Self::seen(&state.outcome, until) {
                return ended;
            }
            match give_up {
                None => self.changed.wait(&mut state),
                Some(give_up) => {
                    let left = give_up.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ended::TimedOut;
                    }
                    self.changed.wait_for(&mut state, left);
                }
            }
        }
    }

    /// Polls for news, registering `cx`'s waker in `slot` (a generation
    /// and an index into the waker list).
    fn poll_wait(
        &self,
        until: Until,
        cx: &mut Context<'_>,
        slot: &mut Option<(u64, usize)>,
    ) -> Poll<Ended<V>> {
        let mut state = self.state.lock();
        if let Some(ended) = Self::seen(&state.outcome, until) {
            return Poll::Ready(ended);
        }
        let waker = cx.waker();
        let generation = state.generation;
        match *slot {
            Some((seen, index)) if seen == generation => match &mut state.wakers[index] {
                Some(registered) if registered.will_wake(waker) => {}
                registered => *registered = Some(waker.clone()),
            },
            _ => {
                *slot = Some((generation, state.wakers.len()));
                state.wakers.push(Some(waker.clone()));
            }
        }
        Poll::Pending
    }

    /// Forgets the waker in `slot` (its future was dropped).
    fn deregister(&self, (generation, index): (u64, usize)) {
        let removed = {
            let mut state = self.state.lock();
            // A list of an older generation has been taken already.
            if state.generation == generation {
                state.wakers.get_mut(index).and_then(Option::take)
            } else {
                None
            }
        };
        drop(removed);
    }
}

/// Future returned by [`wait_async`]: resolves like [`Flight::wait`] with no
/// timeout. Dropping it deregisters its waker.
pub(crate) struct WaitFlight<V: Clone> {
    flight: Arc<Flight<V>>,
    until: Until,
    slot: Option<(u64, usize)>,
}

/// Waits for `flight` without blocking the thread.
pub(crate) fn wait_async<V: Clone>(flight: Arc<Flight<V>>, until: Until) -> WaitFlight<V> {
    WaitFlight {
        flight,
        until,
        slot: None,
    }
}

impl<V: Clone> Future for WaitFlight<V> {
    type Output = Ended<V>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended<V>> {
        let this = self.get_mut();
        let result = this.flight.poll_wait(this.until, cx, &mut this.slot);
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
