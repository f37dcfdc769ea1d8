//! One `peek` round trip per key at a time, per process: the local single
//! flight that waiters on one replica share.
//!
//! Every `peek` of a key goes through its [`Flights`] entry:
//!
//! - a round trip for the key already on its way is **joined**: the caller
//!   gets its answer, and Redis sees one `peek` however many callers;
//! - otherwise the caller **leads** a new round trip, and its answer is
//!   published to everyone who joined meanwhile;
//! - a caller woken by [`Flights::changed`] (a waiter) may **take** the
//!   answer that woke it instead of asking again: each answer carries one
//!   credit per waiter parked on the key when it came, good for
//!   [`SHARE_FOR`]. A peek with no waiters around finds no credit and
//!   always makes (or joins) a round trip.
//!
//! [`Flights::changed`] resolves when a round trip for the key brings an
//! answer, or when this process writes the key ([`Flights::invalidate`]):
//! waiters parked in `wait_for_outcome` then wake together, take the fresh
//! answer on their credits, and back off in step again. So however many
//! duplicates wait on one key in one process, the key is polled once per
//! backoff step, by whichever waiter's timer fires first: that waiter is
//! the leader, the others follow.
//!
//! A leader is a caller's future: if it is dropped mid-flight (a cancelled
//! request), the flight ends unanswered and one of its followers takes
//! over with a round trip of its own. A leader that is kept but not polled
//! is given up on after the response timeout: a follower then leads
//! instead, within its own deadline.
//!
//! A write of the key through this store discards the key's answer and
//! detaches its flight on the way, so a `peek` that starts after a write
//! returned never sees the state from before it (read your writes within
//! the process). Across processes a shared answer is at most
//! [`SHARE_FOR`] plus a round trip old, and only for the waiters it woke.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long an answer stays good for the waiters it woke. Waking and
/// polling a woken task takes microseconds; this only bounds the age of
/// an answer taken by a waiter that ran late.
pub(crate) const SHARE_FOR: Duration = Duration::from_millis(20);

/// How long past the response timeout a follower waits for a leader that
/// has not answered (its timeout fires only when it is polled) before
/// leading instead.
const LEADER_SLACK: Duration = Duration::from_millis(5);

/// The smallest number of entries at which a sweep of idle ones runs.
const SWEEP_AT_LEAST: usize = 64;

/// The per-key single flights of one store.
pub(crate) struct Flights<T> {
    state: Mutex<State<T>>,
    /// Mirrors the number of entries, so that a write of a key nobody
    /// peeks or waits on costs no lock.
    entries: AtomicUsize,
    next_id: AtomicU64,
    /// Round trips led (for tests and diagnostics).
    round_trips: AtomicU64,
}

struct State<T> {
    keys: HashMap<String, Entry<T>>,
    /// Sweep idle entries when there are more than this many.
    sweep_above: usize,
}

struct Entry<T> {
    /// Counts answers and writes; [`Flights::changed`] waits for it to
    /// move. Its receivers are the waiters parked on the key.
    generation: watch::Sender<u64>,
    /// The round trip on its way, if any.
    outstanding: Option<Outstanding<T>>,
    /// The last answer, while waiters it woke may still take it.
    last: Option<Last<T>>,
}

struct Outstanding<T> {
    id: u64,
    started: Instant,
    answer: watch::Receiver<Option<(T, Instant)>>,
}

struct Last<T> {
    value: T,
    at: Instant,
    /// How many woken waiters may still take it.
    credits: usize,
}

impl<T> Entry<T> {
    fn new() -> Self {
        Entry {
            generation: watch::Sender::new(0),
            outstanding: None,
            last: None,
        }
    }

    /// Whether nothing needs the entry: no round trip on its way, no
    /// waiter parked, no credit left to take.
    fn idle(&self) -> bool {
        self.outstanding.is_none()
            && self.generation.receiver_count() == 0
            && self
                .last
                .as_ref()
                .is_none_or(|last| last.credits == 0 || last.at.elapsed() >= SHARE_FOR)
    }

    fn bump(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }
}

/// What a caller does, decided under the lock.
enum Role<T> {
    Join {
        answer: watch::Receiver<Option<(T, Instant)>>,
        give_up_at: Instant,
    },
    Lead {
        id: u64,
        publish: watch::Sender<Option<(T, Instant)>>,
    },
    Done(T, Instant),
}

impl<T: Clone> Flights<T> {
    pub(crate) fn new() -> Self {
        Flights {
            state: Mutex::new(State {
                keys: HashMap::new(),
                sweep_above: SWEEP_AT_LEAST,
            }),
            entries: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic under this lock leaves the maps consistent (every
        // change is one statement), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Round trips led so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Entries held (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().keys.len()
    }

    /// The answer for `key`: joined, taken on a credit (when `reusable`
    /// says the answer, at its age, still holds), or from a round trip
    /// this call leads (`round_trip`, given the time left of `budget`).
    /// Returns the answer and when it came, or `None` if no answer came
    /// within `budget` (a leader that is never polled).
    pub(crate) async fn get<F, Fut>(
        &self,
        key: &str,
        budget: Duration,
        reusable: impl Fn(&T, Duration) -> bool,
        round_trip: F,
    ) -> Option<(T, Instant)>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = T>,
    {
        let deadline = Instant::now() + budget;
        loop {
            match self.role(key, budget, &reusable) {
                Role::Done(value, at) => return Some((value, at)),
                Role::Join {
                    mut answer,
                    give_up_at,
                } => {
                    let until = give_up_at.min(deadline);
                    loop {
                        if let Some((value, at)) = answer.borrow_and_update().as_ref() {
                            return Some((value.clone(), *at));
                        }
                        match tokio::time::timeout_at(until, answer.changed()).await {
                            Ok(Ok(())) => {}
                            // The leader was dropped (or detached and
                            // done): look again; someone leads anew.
                            Ok(Err(_closed)) => {
                                if let Some((value, at)) = answer.borrow().as_ref() {
                                    return Some((value.clone(), *at));
                                }
                                break;
                            }
                            Err(_elapsed) if Instant::now() >= deadline => return None,
                            // The leader is not being polled: lead instead.
                            Err(_elapsed) => break,
                        }
                    }
                }
                Role::Lead { id, publish } => {
                    let mut guard = LeadGuard {
                        flights: self,
                        key,
                        id,
                        armed: true,
                    };
                    self.round_trips.fetch_add(1, Ordering::Relaxed);
                    let left = deadline.saturating_duration_since(Instant::now());
                    let value = round_trip(left).await;
                    let at = Instant::now();
                    guard.finish(&value, at);
                    // Joiners get it even if a write detached the flight:
                    // they asked before that write returned.
                    publish.send_replace(Some((value.clone(), at)));
                    return Some((value, at));
                }
            }
        }
    }

    fn role(
        &self,
        key: &str,
        budget: Duration,
        reusable: &impl Fn(&T, Duration) -> bool,
    ) -> Role<T> {
        let mut state = self.lock();
        let now = Instant::now();
        if !state.keys.contains_key(key) {
            self.sweep(&mut state);
            self.entries.fetch_add(1, Ordering::SeqCst);
            state.keys.insert(key.to_string(), Entry::new());
        }
        let Some(entry) = state.keys.get_mut(key) else {
            unreachable!("inserted above")
        };
        if let Some(outstanding) = &entry.outstanding {
            let give_up_at = outstanding.started + budget + LEADER_SLACK;
            if give_up_at > now {
                return Role::Join {
                    answer: outstanding.answer.clone(),
                    give_up_at,
                };
            }
            // A leader past its own timeout is not being polled: replace it.
        }
        if let Some(last) = &mut entry.last {
            let age = now.saturating_duration_since(last.at);
            if last.credits > 0 && age < SHARE_FOR && reusable(&last.value, age) {
                last.credits -= 1;
                let done = Role::Done(last.value.clone(), last.at);
                if entry.idle() {
                    self.remove(&mut state, key);
                }
                return done;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (publish, answer) = watch::channel(None);
        entry.outstanding = Some(Outstanding {
            id,
            started: now,
            answer,
        });
        Role::Lead { id, publish }
    }

    /// Resolves when a round trip for `key` brings an answer, or this
    /// process writes `key` ([`invalidate`](Self::invalidate)), after this
    /// call. Subscribes at once, not when first polled.
    pub(crate) fn changed(&self, key: &str) -> impl Future<Output = ()> + Send + '_
    where
        T: Send + Sync,
    {
        let receiver = {
            let mut state = self.lock();
            if !state.keys.contains_key(key) {
                self.sweep(&mut state);
                self.entries.fetch_add(1, Ordering::SeqCst);
                state.keys.insert(key.to_string(), Entry::new());
            }
            state.keys[key].generation.subscribe()
        };
        let mut parked = Parked {
            flights: self,
            key: key.to_string(),
            receiver: Some(receiver),
        };
        async move {
            if let Some(receiver) = parked.receiver.as_mut() {
                // An error means the entry is gone: wake anyway (a hint).
                let _ = receiver.changed().await;
            }
        }
    }

    /// Forgets what is known of `key` after this process wrote it: its
    /// answer, and the round trip on its way (which may predate the write;
    /// its joiners still get it), and wakes its waiters.
    pub(crate) fn invalidate(&self, key: &str) {
        if self.entries.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut state = self.lock();
        let Some(entry) = state.keys.get_mut(key) else {
            return;
        };
        entry.outstanding = None;
        entry.last = None;
        entry.bump();
        if entry.idle() {
            self.remove(&mut state, key);
        }
    }

    fn remove(&self, state: &mut State<T>, key: &str) {
        if state.keys.remove(key).is_some() {
            self.entries.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Drops idle entries once the map has doubled since the last sweep:
    /// amortized constant time per new entry.
    fn sweep(&self, state: &mut State<T>) {
        if state.keys.len() < state.sweep_above {
            return;
        }
        state.keys.retain(|_, entry| !entry.idle());
        self.entries.store(state.keys.len(), Ordering::SeqCst);
        state.sweep_above = (state.keys.len() * 2).max(SWEEP_AT_LEAST);
    }
}

/// The leader's side of a flight: publishes its answer to the entry, or,
/// dropped before that (cancelled), clears the flight so that a follower
/// leads.
struct LeadGuard<'a, T: Clone> {
    flights: &'a Flights<T>,
    key: &'a str,
    id: u64,
    /// Cleared once the answer is published.
    armed: bool,
}

impl<T: Clone> LeadGuard<'_, T> {
    fn finish(&mut self, value: &T, at: Instant) {
        self.armed = false;
        let flights = self.flights;
        let mut state = flights.lock();
        if let Some(entry) = state.keys.get_mut(self.key) {
            if entry.outstanding.as_ref().is_some_and(|o| o.id == self.id) {
                entry.outstanding = None;
                entry.last = Some(Last {
                    value: value.clone(),
                    at,
                    credits: entry.generation.receiver_count(),
                });
                entry.bump();
                if entry.idle() {
                    flights.remove(&mut state, self.key);
                }
            }
        }
    }
}

impl<T: Clone> Drop for LeadGuard<'_, T> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Cancelled mid-flight: end the flight unanswered. The publisher
        // is dropped after this guard, which wakes the followers; they
        // find no flight and one of them leads.
        let mut state = self.flights.lock();
        if let Some(entry) = state.keys.get_mut(self.key) {
            if entry.outstanding.as_ref().is_some_and(|o| o.id == self.id) {
                entry.outstanding = None;
                if entry.idle() {
                    self.flights.remove(&mut state, self.key);
                }
            }
        }
    }
}

/// A waiter parked on a key by [`Flights::changed`]; leaving removes the
/// key's entry if nothing else needs it.
struct Parked<'a, T: Clone> {
    flights: &'a Flights<T>,
    key: String,
    receiver: Option<watch::Receiver<u64>>,
}

impl<T: Clone> Drop for Parked<'_, T> {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut state = self.flights.lock();
        if state.keys.get(&self.key).is_some_and(Entry::idle) {
            self.flights.remove(&mut state, &self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Waker};

    use tokio::sync::Notify;

    use super::*;

    const BUDGET: Duration = Duration::from_secs(5);

    fn always(_: &u32, _: Duration) -> bool {
        true
    }

    /// A round trip that answers `value` once `gate` is notified.
    async fn gated(gate: &Notify, calls: &AtomicUsize, value: u32) -> u32 {
        calls.fetch_add(1, Ordering::SeqCst);
        gate.notified().await;
        value
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_gets_share_one_round_trip() {
        let flights = Flights::<u32>::new();
        let gate = Notify::new();
        let calls = AtomicUsize::new(0);
        let (gate_ref, calls_ref) = (&gate, &calls);
        let gets = (0..32).map(|n| {
            flights.get("k", BUDGET, always, move |_| {
                gated(gate_ref, calls_ref, 7 + n)
            })
        });
        let all = futures_join_all(gets);
        let release = async {
            tokio::task::yield_now().await;
            gate.notify_waiters();
        };
        let (answers, ()) = tokio::join!(all, release);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one round trip");
        assert!(
            answers
                .iter()
                .all(|a| a.as_ref().map(|(v, _)| *v) == Some(7))
        );
        assert_eq!(flights.round_trips(), 1);
        assert_eq!(flights.len(), 0, "nothing kept without waiters");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_leader_hands_over_to_a_follower() {
        let flights = Flights::<u32>::new();
        let gate = Notify::new();
        let calls = AtomicUsize::new(0);
        let mut leader = Box::pin(flights.get("k", BUDGET, always, |_| gated(&gate, &calls, 1)));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(
            leader.as_mut().poll(&mut cx).is_pending(),
            "the leader is on its way"
        );
        let mut follower = pin!(flights.get("k", BUDGET, always, |_| async { 2 }));
        assert!(
            follower.as_mut().poll(&mut cx).is_pending(),
            "the follower joined"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        drop(leader); // cancelled mid-flight
        let (answer, _) = follower.await.expect("an answer");
        assert_eq!(answer, 2, "the follower led a round trip of its own");
        assert_eq!(flights.round_trips(), 2);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_leader_never_polled_is_replaced_after_the_budget() {
        let flights = Flights::<u32>::new();
        let budget = Duration::from_millis(100);
        let gate = Notify::new();
        let calls = AtomicUsize::new(0);
        let mut stuck = Box::pin(flights.get("k", budget, always, |_| gated(&gate, &calls, 1)));
        let waker = Waker::noop();
        assert!(
            stuck
                .as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_pending()
        );
        // A follower that joins at once waits out its own budget.
        let started = Instant::now();
        let joined = flights.get("k", budget, always, |_| async { 2 }).await;
        assert_eq!(joined, None, "no answer within the budget");
        assert!(started.elapsed() >= budget);
        // Past its leader's budget, the flight is replaced: the next call
        // leads (after waiting out the leader's slack at most).
        let (answer, _) = flights
            .get("k", budget, always, |_| async { 3 })
            .await
            .expect("an answer");
        assert_eq!(answer, 3);
        assert!(started.elapsed() < budget * 2);
        drop(stuck);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn woken_waiters_take_the_answer_that_woke_them() {
        let flights = Flights::<u32>::new();
        let mut parked: Vec<_> = (0..3).map(|_| Box::pin(flights.changed("k"))).collect();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for p in &mut parked {
            assert!(p.as_mut().poll(&mut cx).is_pending());
        }
        let (answer, _) = flights
            .get("k", BUDGET, always, |_| async { 5 })
            .await
            .unwrap();
        assert_eq!(answer, 5);
        for p in &mut parked {
            assert_eq!(
                p.as_mut().poll(&mut cx),
                Poll::Ready(()),
                "an answer wakes waiters"
            );
        }
        drop(parked);
        // Three credits: three peeks take the answer, the fourth asks.
        for _ in 0..3 {
            let (answer, _) = flights
                .get("k", BUDGET, always, |_| async { 6 })
                .await
                .unwrap();
            assert_eq!(answer, 5);
        }
        let (answer, _) = flights
            .get("k", BUDGET, always, |_| async { 6 })
            .await
            .unwrap();
        assert_eq!(answer, 6);
        assert_eq!(flights.round_trips(), 2);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_that_no_longer_holds_is_not_taken() {
        let flights = Flights::<u32>::new();
        let mut parked = Box::pin(flights.changed("k"));
        let waker = Waker::noop();
        assert!(
            parked
                .as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_pending()
        );
        flights
            .get("k", BUDGET, always, |_| async { 5 })
            .await
            .unwrap();
        drop(parked);
        let never = |_: &u32, _: Duration| false;
        let (answer, _) = flights
            .get("k", BUDGET, never, |_| async { 6 })
            .await
            .unwrap();
        assert_eq!(answer, 6);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_discards_the_answer_detaches_the_flight_and_wakes_waiters() {
        let flights = Flights::<u32>::new();
        let gate = Notify::new();
        let calls = AtomicUsize::new(0);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut parked = Box::pin(flights.changed("k"));
        assert!(parked.as_mut().poll(&mut cx).is_pending());
        let mut before = Box::pin(flights.get("k", BUDGET, always, |_| gated(&gate, &calls, 1)));
        assert!(before.as_mut().poll(&mut cx).is_pending());
        flights.invalidate("k");
        assert_eq!(
            parked.as_mut().poll(&mut cx),
            Poll::Ready(()),
            "a write wakes waiters"
        );
        // A peek after the write does not join the flight from before it.
        let (after, _) = flights
            .get("k", BUDGET, always, |_| async { 2 })
            .await
            .unwrap();
        assert_eq!(after, 2);
        gate.notify_waiters();
        let (old, _) = before.await.unwrap();
        assert_eq!(old, 1, "the detached flight still answers its own caller");
    }

    #[test]
    fn a_write_of_an_unwatched_key_takes_no_lock() {
        let flights = Flights::<u32>::new();
        let _held = flights.lock();
        flights.invalidate("k"); // would deadlock if it locked
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_entries_are_swept() {
        let flights = Flights::<u32>::new();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        // Woken waiters that never come back for their credit.
        for n in 0..(SWEEP_AT_LEAST * 4) {
            let key = format!("k{n}");
            let mut parked = Box::pin(flights.changed(&key));
            assert!(parked.as_mut().poll(&mut cx).is_pending());
            flights
                .get(&key, BUDGET, always, |_| async { 1 })
                .await
                .unwrap();
            drop(parked);
        }
        tokio::time::sleep(SHARE_FOR).await;
        drop(flights.changed("last")); // a new entry triggers the sweep
        assert!(
            flights.len() <= SWEEP_AT_LEAST * 2,
            "{} entries",
            flights.len()
        );
    }

    /// Polls every future to completion, concurrently (no `futures` crate).
    async fn futures_join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut futures: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
        let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
                if let Some(future) = slot {
                    match future.as_mut().poll(cx) {
                        Poll::Ready(value) => {
                            *output = Some(value);
                            *slot = None;
                        }
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        outputs
            .into_iter()
            .map(|o| o.expect("polled to completion"))
            .collect()
    }
}
