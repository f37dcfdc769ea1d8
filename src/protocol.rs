//! The idempotency protocol on top of the cache: claims, fingerprints,
//! leases with fencing, bounded waits and replays.
//!
//! See [`Cache::claim`] and the crate docs' "Protocol" chapter.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, SystemTime};

use crate::Fingerprint;
use crate::cache::{Cache, Stored};
use crate::clock::{duration_to_nanos, system_time_after};
use crate::flight::{self, Ended, Flight, NO_LEASE};
use crate::shard::{ClaimLookup, Graveyard, WriteKey};
use crate::sync::Arc;

/// The outcome of [`Cache::claim`]: what a server does with a request that
/// carries an idempotency key.
///
/// | outcome | HTTP (IETF draft, Stripe) |
/// |---|---|
/// | [`Acquired`](Self::Acquired) | run the handler, then [`complete`](Reservation::complete) |
/// | [`Completed`](Self::Completed) | replay the stored response, with `Idempotent-Replayed: true` |
/// | [`InProgress`](Self::InProgress) | 409 + `Retry-After` ([`Pending::retry_after`]), or [wait](Pending::wait_timeout) |
/// | [`Mismatch`](Self::Mismatch) | 422: the key was used for a different request |
/// | [`Full`](Self::Full) | 503: the store cannot take the claim (fail closed) |
#[must_use = "dropping an Acquired claim releases the key at once"]
pub enum Claim<K, V, S = ahash::RandomState> {
    /// The caller holds the key: run the request once, then
    /// [`complete`](Reservation::complete) or
    /// [`release`](Reservation::release) the reservation.
    Acquired(Reservation<K, V, S>),
    /// The request already completed: replay its stored result.
    Completed(Replay<V>),
    /// Another caller holds the key right now (a claim, or a
    /// `get_or_compute` of the same key).
    InProgress(Pending<K, V, S>),
    /// The key's record, or the claim in progress, has a different request
    /// fingerprint: the key was reused for another request. Checked before
    /// the in-progress state.
    Mismatch,
    /// The cache is at `max_entries` and no room can be made: every unit is
    /// held by a claim in progress, or the
    /// [`Refuse`](crate::CapacityPolicy::Refuse) policy forbids evicting a
    /// live record.
    Full,
}

impl<K, V, S> fmt::Debug for Claim<K, V, S>
where
    K: fmt::Debug,
    V: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Acquired(r) => f.debug_tuple("Acquired").field(r).finish(),
            Claim::Completed(r) => f.debug_tuple("Completed").field(r).finish(),
            Claim::InProgress(p) => f.debug_tuple("InProgress").field(p).finish(),
            Claim::Mismatch => f.write_str("Mismatch"),
            Claim::Full => f.write_str("Full"),
        }
    }
}

/// A stored result returned to a retry of its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay<V> {
    value: V,
    expires_in: Duration,
    expires_at: SystemTime,
    fingerprint: Option<Fingerprint>,
}

impl<V> Replay<V> {
    /// The header a server adds to a replayed response.
    pub const HEADER: (&'static str, &'static str) = ("Idempotent-Replayed", "true");

    /// `system_now` is the cache clock's wall-clock time (see
    /// [`Clock::system_time`](crate::clock::Clock::system_time)).
    fn new(
        value: V,
        expires_in_nanos: u64,
        fingerprint: Option<Fingerprint>,
        system_now: SystemTime,
    ) -> Self {
        let expires_in = Duration::from_nanos(expires_in_nanos);
        Replay {
            value,
            expires_in,
            expires_at: system_time_after(system_now, expires_in),
            fingerprint,
        }
    }

    /// The stored result.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The stored result, by value.
    pub fn into_value(self) -> V {
        self.value
    }

    /// Always `true`: a `Replay` is a result another request produced. For
    /// code that sets [`Replay::HEADER`] from a flag.
    pub fn is_replay(&self) -> bool {
        true
    }

    /// How long the record is kept from now (as the cache's clock sees it).
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// When the record expires, in wall-clock time, for an expiry header.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// The fingerprint the record was stored with, if any.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }
}

/// What waiting on a [`Pending`] claim ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waited<V> {
    /// The holder completed: its result, as a replay.
    Completed(Replay<V>),
    /// The holder released the key (or lost it when its lease lapsed)
    /// without a result: claim again to run the request.
    Released,
    /// The wait timed out; the key is still held. Answer 409.
    TimedOut,
}

/// The key is held by another request; wait for it or answer 409.
pub struct Pending<K, V, S = ahash::RandomState> {
    cache: Cache<K, V, S>,
    flight: Arc<Flight<V>>,
    lease_remaining: Option<Duration>,
}

impl<K, V, S> Pending<K, V, S> {
    /// How long the holder's lease had left when the claim was answered;
    /// `None` for a `get_or_compute` computation, which has no lease.
    pub fn lease_remaining(&self) -> Option<Duration> {
        self.lease_remaining
    }

    /// A `Retry-After` value: the remaining lease in whole seconds, rounded
    /// up, at least 1 s (1 s when there is no lease).
    pub fn retry_after(&self) -> Duration {
        let remaining = self.lease_remaining.unwrap_or(Duration::ZERO);
        let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
        Duration::from_secs(secs.max(1))
    }

    /// The fingerprint of the request holding the key, if it gave one.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.flight.fingerprint
    }
}

impl<K, V: Clone, S> Pending<K, V, S> {
    /// Blocks until the holder completes or releases the key, or `timeout`
    /// (real time) passes. No busy waiting: the thread sleeps until woken.
    pub fn wait_timeout(&self, timeout: Duration) -> Waited<V> {
        let ended = self.flight.wait(Some(timeout));
        self.waited(ended)
    }

    /// Waits without blocking a thread, under any executor; cancel it by
    /// dropping the future (add your runtime's timeout to bound it). It
    /// resolves when the holder completes or releases the key, or when a
    /// newer claim takes over a lapsed lease; a lease lapsing by itself
    /// does not wake it (there is no runtime timer to do so).
    pub fn wait_async(&self) -> impl Future<Output = Waited<V>> + '_ {
        let wait = flight::wait_async(Arc::clone(&self.flight));
        async move { self.waited(wait.await) }
    }

    fn waited(&self, ended: Ended<V>) -> Waited<V> {
        match ended {
            Ended::Completed(value, expires_at) => {
                let shared = &self.cache.shared;
                let left = expires_at.saturating_sub(shared.now());
                Waited::Completed(Replay::new(
                    value,
                    left,
                    self.flight.fingerprint,
                    shared.system_now(),
                ))
            }
            Ended::Abandoned => Waited::Released,
            Ended::TimedOut => Waited::TimedOut,
        }
    }
}

impl<K, V, S> fmt::Debug for Pending<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("token", &self.flight.token)
            .field("lease_remaining", &self.lease_remaining)
            .field("fingerprint", &self.flight.fingerprint)
            .finish()
    }
}

/// The right to run a request once: complete it with the result, or
/// release it so a retry runs again.
///
/// Dropping a reservation (explicitly, by unwinding from a panic, or with
/// the future that holds it) releases it. Each reservation carries a
/// [fencing token](Self::token) that increases with every claim of a key:
/// once a newer claim has taken the key over after this one's lease lapsed,
/// [`complete`](Self::complete) and [`renew`](Self::renew) fail with
/// [`StaleReservation`] and change nothing.
pub struct Reservation<K, V, S = ahash::RandomState> {
    cache: Cache<K, V, S>,
    key: K,
    hash: u64,
    flight: Arc<Flight<V>>,
    done: bool,
}

impl<K, V, S> Reservation<K, V, S> {
    /// The key this reservation holds.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The fencing token: larger for every later claim of the key.
    pub fn token(&self) -> u64 {
        self.flight.token
    }

    /// The request fingerprint this claim was made with.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.flight.fingerprint
    }

    /// How long until the lease lapses (zero once it has).
    pub fn lease_remaining(&self) -> Duration {
        let deadline = self.flight.lease_deadline();
        Duration::from_nanos(deadline.saturating_sub(self.cache.shared.now()))
    }

    /// Extends the lease to a full [`lease`](crate::CacheBuilder::lease)
    /// from now. Call it from long handlers, well before the lease lapses.
    ///
    /// # Errors
    ///
    /// [`StaleReservation`] if a newer claim has taken the key over.
    pub fn renew(&self) -> Result<(), StaleReservation> {
        let shared = &self.cache.shared;
        let deadline = shared.now().saturating_add(shared.lease);
        let renewed = shared
            .shard(self.hash)
            .lock()
            .renew(self.hash, &self.flight, deadline);
        if renewed {
            Ok(())
        } else {
            shared.count_fenced(self.hash);
            Err(StaleReservation {
                token: self.token(),
                value: (),
            })
        }
    }

    /// Releases the key without a result, so a retry runs the request
    /// again: how a retryable failure is reported. Waiters are told
    /// ([`Waited::Released`]). Dropping the reservation does the same.
    pub fn release(mut self) {
        self.done = true;
        self.cache.shared.end_flight(self.hash, &self.flight, true);
    }
}

impl<K, V, S> Reservation<K, V, S>
where
    K: Hash + Eq,
    V: Clone,
    S: BuildHasher,
{
    /// Stores `value` as the request's result, kept for the cache's
    /// time-to-live, and hands it to every waiter. A terminal failure that
    /// must be replayed is a value too (for example a response with an
    /// error status).
    ///
    /// If the key was removed, cleared or overwritten while the request ran,
    /// the newer state wins: waiters still receive `value`, but it is not
    /// stored. The same holds when a full cache with the
    /// [`Refuse`](crate::CapacityPolicy::Refuse) policy cannot store it.
    ///
    /// # Errors
    ///
    /// [`StaleReservation`], carrying `value` back, if a newer claim has
    /// taken the key over: nothing is stored or overwritten.
    pub fn complete(self, value: V) -> Result<(), StaleReservation<V>> {
        let ttl = self.cache.shared.ttl;
        self.finish(value, ttl)
    }

    /// [`complete`](Self::complete), keeping the result for `retention`
    /// instead of the cache's time-to-live.
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete).
    pub fn complete_with_ttl(
        self,
        value: V,
        retention: Duration,
    ) -> Result<(), StaleReservation<V>> {
        self.finish(value, duration_to_nanos(retention))
    }

    fn finish(mut self, value: V, ttl: u64) -> Result<(), StaleReservation<V>> {
        let shared = &self.cache.shared;
        // If this clone panics, `done` is still false: dropping the
        // reservation releases the key.
        let stored = shared.store(
            self.hash,
            WriteKey::Flight(&self.flight),
            value.clone(),
            ttl,
        );
        self.done = true;
        if let Stored::Fenced(_) = stored {
            shared.count_fenced(self.hash);
            return Err(StaleReservation {
                token: self.token(),
                value,
            });
        }
        shared.finish_stored(&self.flight, stored, &value);
        Ok(())
    }
}

impl<K, V, S> Drop for Reservation<K, V, S> {
    fn drop(&mut self) {
        if !self.done {
            self.cache.shared.end_flight(self.hash, &self.flight, true);
        }
    }
}

impl<K: fmt::Debug, V, S> fmt::Debug for Reservation<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.key)
            .field("token", &self.flight.token)
            .field("fingerprint", &self.flight.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A reservation was used after a newer claim took its key over (its lease
/// had lapsed). Nothing was changed; [`into_value`](Self::into_value) gives
/// back the value a [`complete`](Reservation::complete) tried to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleReservation<T = ()> {
    token: u64,
    value: T,
}

impl<T> StaleReservation<T> {
    /// The stale reservation's fencing token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The value that was not stored.
    pub fn into_value(self) -> T {
        self.value
    }
}

impl<T> fmt::Display for StaleReservation<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reservation with fencing token {} is stale: its lease lapsed and a newer claim holds the key",
            self.token
        )
    }
}

impl<T: fmt::Debug> std::error::Error for StaleReservation<T> {}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    /// Claims `key` for a request with `fingerprint` (or `None`): the one
    /// call an idempotent endpoint makes before doing any work.
    ///
    /// - Exactly one concurrent caller acquires a free key; the others see
    ///   [`Claim::InProgress`] or [`Claim::Completed`], never a second
    ///   `Acquired` for one live claim. Claims and
    ///   [`get_or_compute`](Self::get_or_compute) of a key share one flight.
    /// - The fingerprint is compared first: a record or claim in progress
    ///   with another fingerprint gives [`Claim::Mismatch`], even while the
    ///   original request runs. Records written without one match any.
    /// - A claim holds the key for the [lease](crate::CacheBuilder::lease);
    ///   after it lapses, a new claim takes the key over with a larger
    ///   fencing token.
    /// - In a bounded cache a claim in progress holds a unit of
    ///   `max_entries` and is never evicted; when no room can be made the
    ///   answer is [`Claim::Full`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "digest")] {
    /// use idemcache::{Cache, Claim, Fingerprint};
    ///
    /// let cache: Cache<String, String> = Cache::new();
    /// let request = Fingerprint::of(["POST", "/charges", "amount=100"]);
    ///
    /// match cache.claim("key-1".to_string(), request) {
    ///     Claim::Acquired(reservation) => {
    ///         let response = "201 charged".to_string(); // run the handler once
    ///         reservation.complete(response).unwrap();
    ///     }
    ///     _ => unreachable!("the key is new"),
    /// }
    /// // The client retries: the stored response is replayed.
    /// match cache.claim("key-1".to_string(), request) {
    ///     Claim::Completed(replay) => assert_eq!(replay.value(), "201 charged"),
    ///     _ => unreachable!(),
    /// }
    /// // The same key with another request body is refused (422).
    /// let other = Fingerprint::of(["POST", "/charges", "amount=999"]);
    /// assert!(matches!(cache.claim("key-1".to_string(), other), Claim::Mismatch));
    /// # }
    /// ```
    pub fn claim(&self, key: K, fingerprint: impl Into<Option<Fingerprint>>) -> Claim<K, V, S> {
        let fingerprint = fingerprint.into();
        let shared = &self.shared;
        let hash = shared.hash(&key);
        let index = shared.shard_index(hash);
        let mut key = key;
        loop {
            let mut grave = Graveyard::new();
            let now = shared.now();
            let lease_deadline = now.saturating_add(shared.lease);
            let (found, returned) = shared.shard(hash).lock().claim(
                hash,
                key,
                fingerprint,
                now,
                lease_deadline,
                shared.limit.as_ref(),
                &shared.hasher,
                &mut grave,
            );
            // After unlocking: drops what the claim displaced and ends a
            // lapsed claim it took over (its waiters learn it is gone).
            drop(grave);
            match found {
                ClaimLookup::Completed {
                    value,
                    expires_at,
                    fingerprint,
                } => {
                    return Claim::Completed(Replay::new(
                        value,
                        expires_at.saturating_sub(now),
                        fingerprint,
                        self.shared.system_now(),
                    ));
                }
                ClaimLookup::Mismatch => return Claim::Mismatch,
                ClaimLookup::InProgress(flight) => {
                    let deadline = flight.lease_deadline();
                    let lease_remaining = (deadline != NO_LEASE)
                        .then(|| Duration::from_nanos(deadline.saturating_sub(now)));
                    return Claim::InProgress(Pending {
                        cache: self.clone(),
                        flight,
                        lease_remaining,
                    });
                }
                ClaimLookup::Acquired(flight, key) => {
                    return Claim::Acquired(Reservation {
                        cache: self.clone(),
                        key,
                        hash,
                        flight,
                        done: false,
                    });
                }
                ClaimLookup::NeedRoom => {
                    key = returned.expect("a claim that is not acquired hands its key back");
                    if !shared.make_room_elsewhere(index, now) && shared.cannot_make_room() {
                        shared.shard(hash).lock().stats.refused += 1;
                        return Claim::Full;
                    }
                }
            }
        }
    }
}
