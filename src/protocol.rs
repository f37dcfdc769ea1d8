//! The idempotency protocol on top of the cache: claims, fingerprints,
//! leases with fencing, bounded waits and replays.
//!
//! See [`Cache::claim`] and the crate docs' "Protocol" chapter.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, SystemTime};

use crate::Fingerprint;
use crate::cache::Cache;
use crate::clock::{CacheTime, Span};
use crate::engine::{Engine, FlightGuard, Stored};
use crate::flight::{self, Ended, Flight, Until};
use crate::shard::{ClaimLookup, ClaimRequest, GiveUp};
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
///
/// Dropping a `Claim` drops what it holds: an `Acquired` claim's
/// [`Reservation`] is then *abandoned*, so the key stays held until its
/// lease lapses. `matches!(cache.claim(k, None), Claim::Acquired(_))` holds
/// `k` for a whole lease.
#[must_use = "an Acquired claim dropped unused holds its key until the lease lapses"]
pub enum Claim<K, V, S = ahash::RandomState> {
    /// The caller holds the key: run the request once, then
    /// [`complete`](Reservation::complete) or
    /// [`release`](Reservation::release) the reservation.
    Acquired(Reservation<K, V, S>),
    /// The request already completed: replay its stored result.
    Completed(Replay<V>),
    /// Another caller holds the key right now (a claim, an abandoned claim
    /// whose lease has not lapsed, or a `get_or_compute` of the same key).
    InProgress(Pending<K, V, S>),
    /// The key's record, or the claim in progress, has a different request
    /// fingerprint: the key was reused for another request. Checked before
    /// the in-progress state.
    Mismatch,
    /// The cache is at `max_entries` and no room can be made: every unit is
    /// held by a live record or a claim in progress (expired records and
    /// lapsed claims are reclaimed first), and the
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
///
/// ```
/// use idemcache::{Cache, Claim, Replay};
///
/// let cache: Cache<&str, &str> = Cache::new();
/// cache.insert("key", "201 created");
/// let Claim::Completed(replay) = cache.claim("key", None) else { unreachable!() };
/// assert_eq!(*replay.value(), "201 created");
/// assert_eq!(Replay::<&str>::HEADER, ("Idempotent-Replayed", "true"));
/// ```
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

    /// A replay of `value`, kept `expires_in` from now, until `expires_at`
    /// (wall-clock): for [`Store`](crate::store::Store) implementations.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use idemcache::Replay;
    ///
    /// let in_a_minute = Duration::from_secs(60);
    /// let replay = Replay::from_parts("201", None, in_a_minute, SystemTime::now() + in_a_minute);
    /// assert_eq!(*replay.value(), "201");
    /// ```
    pub fn from_parts(
        value: V,
        fingerprint: Option<Fingerprint>,
        expires_in: Duration,
        expires_at: SystemTime,
    ) -> Self {
        Replay {
            value,
            expires_in,
            expires_at,
            fingerprint,
        }
    }

    /// A replay of a record found at `now`.
    fn new<K, S>(
        engine: &Engine<K, V, S>,
        now: CacheTime,
        value: V,
        expires_at: CacheTime,
        fingerprint: Option<Fingerprint>,
    ) -> Self {
        let expires_in = now.until(expires_at);
        Replay {
            value,
            expires_in,
            expires_at: crate::clock::system_time_after(engine.system_now(), expires_in),
            fingerprint,
        }
    }

    /// The stored result.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// # let cache: Cache<u8, u8> = Cache::new();
    /// cache.insert(1, 7);
    /// if let Claim::Completed(replay) = cache.claim(1, None) {
    ///     assert_eq!(*replay.value(), 7);
    /// }
    /// ```
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The stored result, by value.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// # let cache: Cache<u8, String> = Cache::new();
    /// cache.insert(1, "receipt".to_string());
    /// if let Claim::Completed(replay) = cache.claim(1, None) {
    ///     assert_eq!(replay.into_value(), "receipt");
    /// }
    /// ```
    pub fn into_value(self) -> V {
        self.value
    }

    /// How long the record is kept from now (as the cache's clock sees it).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<u8, u8> = Cache::builder().time_to_live(Duration::from_secs(60)).build()?;
    /// cache.insert(1, 7);
    /// if let Claim::Completed(replay) = cache.claim(1, None) {
    ///     assert!(replay.expires_in() <= Duration::from_secs(60));
    /// }
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// When the record expires, in wall-clock time, for an expiry header.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// # let cache: Cache<u8, u8> = Cache::new();
    /// cache.insert(1, 7);
    /// if let Claim::Completed(replay) = cache.claim(1, None) {
    ///     assert!(replay.expires_at() > std::time::SystemTime::now());
    /// }
    /// ```
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// The fingerprint the record was stored with, if any.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim, Fingerprint};
    /// # let cache: Cache<u8, u8> = Cache::new();
    /// let request = Fingerprint::from_bytes([7; 16]);
    /// if let Claim::Acquired(r) = cache.claim(1, request) {
    ///     r.complete(1).unwrap();
    /// }
    /// if let Claim::Completed(replay) = cache.claim(1, request) {
    ///     assert_eq!(replay.fingerprint(), Some(request));
    /// }
    /// ```
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }
}

/// What waiting on a [`Pending`] claim ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waited<V> {
    /// The holder completed: its result, as a replay.
    Completed(Replay<V>),
    /// The holder released the key without a result (nothing happened):
    /// claim again to run the request.
    Released,
    /// The holder gave up without knowing the outcome (it was dropped
    /// unfinished, panicked, or called [`Reservation::abandon`]). The key
    /// stays held until the lease lapses, `frees_in` from now: answer 409
    /// (`Retry-After: frees_in`), then claim again.
    Abandoned {
        /// How long until the abandoned claim's lease lapses.
        frees_in: Duration,
    },
    /// The holder's lease lapsed before it finished, and the claim was
    /// taken over or reclaimed: claim again (the key may be free, or held
    /// by the newer claim).
    Lapsed,
    /// The wait timed out; the key is still held. Answer 409.
    TimedOut,
}

/// The key is held by another request; wait for it or answer 409.
///
/// Dropping a `Pending` changes nothing: it only watches the holder.
///
/// ```
/// use idemcache::{Cache, Claim};
///
/// let cache: Cache<&str, u32> = Cache::new();
/// let Claim::Acquired(holder) = cache.claim("key", None) else { unreachable!() };
/// let Claim::InProgress(pending) = cache.claim("key", None) else { unreachable!() };
/// assert_eq!(pending.token(), holder.token());
/// # holder.release();
/// ```
#[must_use = "a Pending claim is answered with 409 or waited for"]
pub struct Pending<K, V, S = ahash::RandomState> {
    engine: Arc<Engine<K, V, S>>,
    flight: Arc<Flight<V>>,
    /// The holder had abandoned the claim when this was answered (the
    /// flight's own state may not say so yet: it ends after the shard
    /// lock is released).
    abandoned: bool,
}

impl<K, V, S> Pending<K, V, S> {
    /// How long until the holder's lease lapses, now (zero once it has);
    /// `None` for a `get_or_compute` computation, which has no lease.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<u8, u8> = Cache::builder().lease(Duration::from_secs(30)).build()?;
    /// let Claim::Acquired(_holder) = cache.claim(1, None) else { unreachable!() };
    /// let Claim::InProgress(pending) = cache.claim(1, None) else { unreachable!() };
    /// assert!(pending.lease_remaining().unwrap() <= Duration::from_secs(30));
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn lease_remaining(&self) -> Option<Duration> {
        self.flight
            .has_lease()
            .then(|| self.engine.now().until(self.flight.lease_deadline()))
    }

    /// How long since the holder claimed the key (or a computation
    /// started).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim, clock::ManualClock};
    /// let clock = ManualClock::new();
    /// let cache: Cache<u8, u8> = Cache::builder().clock(clock.clone()).build()?;
    /// let Claim::Acquired(_holder) = cache.claim(1, None) else { unreachable!() };
    /// clock.advance(Duration::from_millis(300));
    /// let Claim::InProgress(pending) = cache.claim(1, None) else { unreachable!() };
    /// assert_eq!(pending.running_for(), Duration::from_millis(300));
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn running_for(&self) -> Duration {
        self.flight.started_at.until(self.engine.now())
    }

    /// Whether the holder abandoned the claim: its outcome is unknown and
    /// the key stays held until the lease lapses
    /// ([`lease_remaining`](Self::lease_remaining)).
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<u8, u8> = Cache::new();
    /// let Claim::Acquired(holder) = cache.claim(1, None) else { unreachable!() };
    /// drop(holder); // a handler's future dropped mid-flight
    /// let Claim::InProgress(pending) = cache.claim(1, None) else { unreachable!() };
    /// assert!(pending.is_abandoned());
    /// ```
    pub fn is_abandoned(&self) -> bool {
        self.abandoned || self.flight.is_abandoned()
    }

    /// A `Retry-After` hint in whole seconds, at least 1 s:
    ///
    /// - for a claim in progress, about as long again as it has been
    ///   running ([`running_for`](Self::running_for), rounded up), but no
    ///   longer than its lease has left: a 300 ms handler gets 1 s, not the
    ///   whole lease;
    /// - for an abandoned claim, the time until its lease lapses and the
    ///   key frees;
    /// - for a computation (no lease), about as long again as it has run.
    ///
    /// HTTP layers usually clamp it further (to 1–5 s, say).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim, clock::ManualClock};
    /// let clock = ManualClock::new();
    /// let cache: Cache<u8, u8> = Cache::builder().clock(clock.clone()).build()?;
    /// let Claim::Acquired(_holder) = cache.claim(1, None) else { unreachable!() };
    /// clock.advance(Duration::from_millis(300));
    /// let Claim::InProgress(pending) = cache.claim(1, None) else { unreachable!() };
    /// assert_eq!(pending.retry_after(), Duration::from_secs(1));
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn retry_after(&self) -> Duration {
        retry_hint(
            self.running_for(),
            self.lease_remaining(),
            self.is_abandoned(),
        )
    }

    /// The fingerprint of the request holding the key, if it gave one.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim, Fingerprint};
    /// let cache: Cache<u8, u8> = Cache::new();
    /// let request = Fingerprint::from_bytes([1; 16]);
    /// let Claim::Acquired(_holder) = cache.claim(1, request) else { unreachable!() };
    /// let Claim::InProgress(pending) = cache.claim(1, None) else { unreachable!() };
    /// assert_eq!(pending.fingerprint(), Some(request));
    /// ```
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.flight.fingerprint
    }

    /// The holder's fencing token.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<u8, u8> = Cache::new();
    /// let Claim::Acquired(holder) = cache.claim(1, None) else { unreachable!() };
    /// let Claim::InProgress(pending) = cache.claim(1, None) else { unreachable!() };
    /// assert_eq!(pending.token(), holder.token());
    /// # holder.release();
    /// ```
    pub fn token(&self) -> u64 {
        self.flight.token
    }
}

impl<K, V: Clone, S> Pending<K, V, S> {
    /// Blocks until the holder completes, releases or abandons the key, or
    /// its lease lapses and the claim is taken over, or `timeout` (real
    /// time) passes. No busy waiting: the thread sleeps until woken.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::{Cache, Claim, Waited};
    ///
    /// let cache: Cache<&str, u32> = Cache::new();
    /// let Claim::Acquired(holder) = cache.claim("key", None) else { unreachable!() };
    /// let Claim::InProgress(pending) = cache.claim("key", None) else { unreachable!() };
    /// std::thread::spawn(move || holder.complete(42).unwrap());
    /// match pending.wait_timeout(Duration::from_secs(10)) {
    ///     Waited::Completed(replay) => assert_eq!(*replay.value(), 42),
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Waited<V> {
        let ended = self.flight.wait(Until::Outcome, Some(timeout));
        self.waited(ended)
    }

    /// Waits without blocking a thread, under any executor; cancel it by
    /// dropping the future (add your runtime's timeout to bound it). It
    /// resolves as [`wait_timeout`](Self::wait_timeout) does, except that a
    /// lease lapsing by itself does not wake it (there is no runtime timer
    /// to do so): a claim, a purge or the background thread reclaiming the
    /// lapsed claim does.
    ///
    /// ```
    /// use idemcache::{Cache, Claim, Waited};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: Cache<&str, u32> = Cache::new();
    /// let Claim::Acquired(holder) = cache.claim("key", None) else { unreachable!() };
    /// let Claim::InProgress(pending) = cache.claim("key", None) else { unreachable!() };
    /// holder.release();
    /// assert_eq!(pending.wait_async().await, Waited::Released);
    /// # }
    /// ```
    pub fn wait_async(&self) -> impl Future<Output = Waited<V>> + '_ {
        let wait = flight::wait_async(Arc::clone(&self.flight), Until::Outcome);
        async move { self.waited(wait.await) }
    }

    fn waited(&self, ended: Ended<V>) -> Waited<V> {
        match ended {
            Ended::Completed(value, expires_at) => Waited::Completed(Replay::new(
                &self.engine,
                self.engine.now(),
                value,
                expires_at,
                self.flight.fingerprint,
            )),
            Ended::Released => Waited::Released,
            Ended::Abandoned => Waited::Abandoned {
                frees_in: self.engine.now().until(self.flight.lease_deadline()),
            },
            Ended::Lapsed => Waited::Lapsed,
            Ended::TimedOut => Waited::TimedOut,
        }
    }
}

impl<K, V, S> fmt::Debug for Pending<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("token", &self.flight.token)
            .field("lease_remaining", &self.lease_remaining())
            .field("running_for", &self.running_for())
            .field("fingerprint", &self.flight.fingerprint)
            .finish()
    }
}

/// The `Retry-After` hint of [`Pending::retry_after`], from what a waiter
/// knows of the holder.
pub(crate) fn retry_hint(
    running_for: Duration,
    lease_remaining: Option<Duration>,
    abandoned: bool,
) -> Duration {
    fn whole_seconds(d: Duration) -> u64 {
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
    let lease = lease_remaining.map(whole_seconds);
    let secs = match lease {
        Some(lease) if abandoned => lease,
        Some(lease) => whole_seconds(running_for).min(lease),
        None => whole_seconds(running_for),
    };
    Duration::from_secs(secs)
}

/// Whether a completed request's result was stored.
///
/// ```
/// use idemcache::{Cache, Claim, Completion};
///
/// let cache: Cache<&str, u32> = Cache::new();
/// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
/// assert!(matches!(r.complete(7), Ok(Completion::Stored { .. })));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Stored: retries are replayed until `expires_at` (wall-clock time).
    Stored {
        /// When the record expires.
        expires_at: SystemTime,
    },
    /// Not stored: waiters received the result, but a retry will run the
    /// request again. Log it: that request is not protected.
    NotStored(NotStored),
}

impl Completion {
    /// Whether the result was stored.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// # let cache: Cache<&str, u32> = Cache::new();
    /// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
    /// assert!(r.complete(7).unwrap().is_stored());
    /// ```
    pub fn is_stored(&self) -> bool {
        matches!(self, Completion::Stored { .. })
    }
}

/// Why a completed result was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotStored {
    /// The key was removed, cleared or overwritten while the request ran:
    /// the newer state wins.
    Invalidated,
    /// The cache was full and could not make room (a store out of memory,
    /// or a computation's result in a full cache).
    Full,
}

/// The right to run a request once: [`complete`](Self::complete) it with
/// the result, [`release`](Self::release) it if nothing happened, or
/// [`abandon`](Self::abandon) it if you cannot tell.
///
/// # Dropping it fails closed
///
/// A reservation dropped unfinished (explicitly, by unwinding from a panic,
/// or with the future that holds it when a client disconnects) is
/// *abandoned*: nothing is stored, and the key stays held until its lease
/// lapses, as if the process had crashed mid-request. Side effects may have
/// happened, so no retry may run them again before then. Waiters are told
/// at once ([`Waited::Abandoned`]); after the lapse the next claim takes the
/// key over with a larger fencing token.
///
/// # Fencing
///
/// Each reservation carries a [fencing token](Self::token) that increases
/// with every claim of a key: once a newer claim has taken the key over
/// after this one's lease lapsed, [`complete`](Self::complete) and
/// [`renew`](Self::renew) fail and change nothing. Check
/// [`is_stale`](Self::is_stale) (or renew) before a side effect in a long
/// handler.
#[must_use = "a Reservation dropped unfinished is abandoned: its key stays held until the lease lapses"]
pub struct Reservation<K, V, S = ahash::RandomState> {
    guard: FlightGuard<K, V, S>,
    key: K,
}

impl<K, V, S> Reservation<K, V, S> {
    /// The key this reservation holds.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<&str, u8> = Cache::new();
    /// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
    /// assert_eq!(*r.key(), "key");
    /// # r.release();
    /// ```
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The fencing token: larger for every later claim of the key.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<&str, u8> = Cache::new();
    /// let Claim::Acquired(first) = cache.claim("key", None) else { unreachable!() };
    /// let token = first.token();
    /// first.release();
    /// let Claim::Acquired(second) = cache.claim("key", None) else { unreachable!() };
    /// assert!(second.token() > token);
    /// # second.release();
    /// ```
    pub fn token(&self) -> u64 {
        self.guard.flight().token
    }

    /// The request fingerprint this claim was made with.
    ///
    /// ```
    /// # use idemcache::{Cache, Claim, Fingerprint};
    /// let cache: Cache<&str, u8> = Cache::new();
    /// let request = Fingerprint::from_bytes([3; 16]);
    /// let Claim::Acquired(r) = cache.claim("key", request) else { unreachable!() };
    /// assert_eq!(r.fingerprint(), Some(request));
    /// # r.release();
    /// ```
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.guard.flight().fingerprint
    }

    /// How long until the lease lapses, now (zero once it has). Renew well
    /// before.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<&str, u8> = Cache::builder().lease(Duration::from_secs(30)).build()?;
    /// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
    /// assert!(r.lease_remaining() <= Duration::from_secs(30));
    /// # r.release();
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn lease_remaining(&self) -> Duration {
        let engine = self.guard.engine();
        engine.now().until(self.guard.flight().lease_deadline())
    }

    /// Whether this reservation may no longer hold its key: its lease has
    /// lapsed (a newer claim, a purge or a full cache may take the key at
    /// any moment) or that has already happened. Ask before a side effect.
    /// Until the key is actually taken, [`renew`](Self::renew) succeeds and
    /// makes it fresh again, and [`complete`](Self::complete) still
    /// stores; after, both fail and change nothing.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim, clock::ManualClock};
    /// let clock = ManualClock::new();
    /// let cache: Cache<&str, u8> = Cache::builder()
    ///     .lease(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build()?;
    /// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
    /// assert!(!r.is_stale());
    /// clock.advance(Duration::from_secs(10));
    /// assert!(r.is_stale());
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn is_stale(&self) -> bool {
        !self
            .guard
            .engine()
            .holds(self.guard.hash(), self.guard.flight())
    }

    /// Extends the lease to a full [`lease`](crate::CacheBuilder::lease)
    /// from now and returns it. Call it from long handlers, well before the
    /// lease lapses.
    ///
    /// # Errors
    ///
    /// [`Fenced`] if a newer claim has taken the key over.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim, clock::ManualClock};
    /// let clock = ManualClock::new();
    /// let cache: Cache<&str, u8> = Cache::builder()
    ///     .lease(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build()?;
    /// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
    /// clock.advance(Duration::from_secs(8));
    /// assert_eq!(r.renew()?, Duration::from_secs(10));
    /// # r.release();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn renew(&self) -> Result<Duration, Fenced> {
        let engine = self.guard.engine();
        match engine.renew(self.guard.hash(), self.guard.flight()) {
            Some(deadline) => Ok(engine.now().until(deadline)),
            None => Err(Fenced {
                token: self.token(),
            }),
        }
    }

    /// Releases the key without a result, because nothing happened (the
    /// request failed before any side effect): a retry runs the request
    /// again at once, and nothing is kept, not even the fingerprint.
    /// Waiters are told ([`Waited::Released`]).
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<&str, u8> = Cache::new();
    /// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
    /// r.release(); // e.g. the payment provider was unreachable
    /// assert!(matches!(cache.claim("key", None), Claim::Acquired(_)));
    /// ```
    pub fn release(self) {
        self.guard.give_up(GiveUp::Release);
    }

    /// Gives the claim up without a result because its outcome is unknown
    /// (a side effect may or may not have happened): the key stays held
    /// until the lease lapses, so no retry runs the request again before
    /// then. What dropping the reservation does, said explicitly. Waiters
    /// are told ([`Waited::Abandoned`]).
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<&str, u8> = Cache::new();
    /// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
    /// r.abandon(); // the charge request timed out: it may have gone through
    /// let Claim::InProgress(pending) = cache.claim("key", None) else { unreachable!() };
    /// assert!(pending.is_abandoned());
    /// ```
    pub fn abandon(self) {
        self.guard.give_up(GiveUp::Abandon);
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
    /// Returns whether the value was stored ([`Completion`]): if the key
    /// was removed, cleared or overwritten while the request ran, the newer
    /// state wins, and waiters still receive `value`.
    ///
    /// # Errors
    ///
    /// [`StaleReservation`], carrying `value` back, if a newer claim has
    /// taken the key over: nothing is stored or overwritten.
    ///
    /// # Examples
    ///
    /// ```
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<&str, String> = Cache::new();
    /// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
    /// let completion = r.complete("201 charged".to_string())?;
    /// assert!(completion.is_stored());
    /// assert_eq!(cache.get("key").as_deref(), Some("201 charged"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn complete(self, value: V) -> Result<Completion, StaleReservation<V>> {
        let ttl = self.guard.engine().ttl();
        self.finish(value, ttl)
    }

    /// [`complete`](Self::complete), keeping the result for `retention`
    /// instead of the cache's time-to-live.
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim};
    /// let cache: Cache<&str, u32> = Cache::new();
    /// let Claim::Acquired(r) = cache.claim("key", None) else { unreachable!() };
    /// r.complete_with_ttl(402, Duration::from_secs(60))?; // keep a decline briefly
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn complete_with_ttl(
        self,
        value: V,
        retention: Duration,
    ) -> Result<Completion, StaleReservation<V>> {
        self.finish(value, Span::from_duration(retention))
    }

    fn finish(self, value: V, ttl: Span) -> Result<Completion, StaleReservation<V>> {
        let Reservation { guard, key } = self;
        let engine = Arc::clone(guard.engine());
        let token = guard.flight().token;
        // If cloning `value` panics in there, the guard is dropped
        // unfinished: the claim is abandoned.
        let stored = guard.complete(&value, ttl);
        drop(key);
        match stored {
            Stored::Yes { now, expires_at } => Ok(Completion::Stored {
                expires_at: engine.system_time_from(now, expires_at),
            }),
            Stored::No { reason, .. } => Ok(Completion::NotStored(reason)),
            Stored::Fenced(_) => Err(StaleReservation { token, value }),
        }
    }
}

impl<K: fmt::Debug, V, S> fmt::Debug for Reservation<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.key)
            .field("token", &self.token())
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A reservation completed after a newer claim took its key over (its
/// lease had lapsed). Nothing was changed;
/// [`into_value`](Self::into_value) gives back the value.
///
/// ```
/// # use std::time::Duration;
/// # use idemcache::{Cache, Claim, clock::ManualClock};
/// let clock = ManualClock::new();
/// let cache: Cache<&str, u32> = Cache::builder()
///     .lease(Duration::from_secs(10))
///     .clock(clock.clone())
///     .build()?;
/// let Claim::Acquired(slow) = cache.claim("key", None) else { unreachable!() };
/// clock.advance(Duration::from_secs(10));
/// let Claim::Acquired(newer) = cache.claim("key", None) else { unreachable!() };
/// let stale = slow.complete(1).unwrap_err();
/// assert_eq!(stale.into_value(), 1);
/// # newer.release();
/// # Ok::<(), idemcache::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleReservation<V> {
    token: u64,
    value: V,
}

impl<V> StaleReservation<V> {
    /// The stale reservation's fencing token.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim, clock::ManualClock};
    /// # let clock = ManualClock::new();
    /// # let cache: Cache<&str, u32> = Cache::builder().lease(Duration::from_secs(1)).clock(clock.clone()).build()?;
    /// let Claim::Acquired(slow) = cache.claim("key", None) else { unreachable!() };
    /// let token = slow.token();
    /// clock.advance(Duration::from_secs(1));
    /// let _newer = cache.claim("key", None); // takes the lapsed key over
    /// assert_eq!(slow.complete(1).unwrap_err().token(), token);
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The value that was not stored.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use idemcache::{Cache, Claim, clock::ManualClock};
    /// # let clock = ManualClock::new();
    /// # let cache: Cache<&str, String> = Cache::builder().lease(Duration::from_secs(1)).clock(clock.clone()).build()?;
    /// let Claim::Acquired(slow) = cache.claim("key", None) else { unreachable!() };
    /// clock.advance(Duration::from_secs(1));
    /// let _newer = cache.claim("key", None);
    /// let response = slow.complete("201".to_string()).unwrap_err().into_value();
    /// assert_eq!(response, "201"); // still the caller's to send
    /// # Ok::<(), idemcache::BuildError>(())
    /// ```
    pub fn into_value(self) -> V {
        self.value
    }
}

impl<V> fmt::Display for StaleReservation<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reservation with fencing token {} is stale: its lease lapsed and a newer claim holds the key; nothing was stored",
            self.token
        )
    }
}

impl<V: fmt::Debug> std::error::Error for StaleReservation<V> {}

/// A claim no longer holds its key: a newer claim took it over after its
/// lease lapsed (or, through a [`Store`](crate::store::Store), it was
/// already completed, released or abandoned). Nothing was changed.
///
/// ```
/// # use std::time::Duration;
/// # use idemcache::{Cache, Claim, clock::ManualClock};
/// let clock = ManualClock::new();
/// let cache: Cache<&str, u32> = Cache::builder()
///     .lease(Duration::from_secs(10))
///     .clock(clock.clone())
///     .build()?;
/// let Claim::Acquired(slow) = cache.claim("key", None) else { unreachable!() };
/// clock.advance(Duration::from_secs(10));
/// let Claim::Acquired(_newer) = cache.claim("key", None) else { unreachable!() };
/// assert_eq!(slow.renew().unwrap_err().token(), slow.token());
/// # Ok::<(), idemcache::BuildError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced {
    pub(crate) token: u64,
}

impl Fenced {
    /// The error for the claim with `token` (for [`Store`](crate::store::Store)
    /// implementations).
    ///
    /// ```
    /// use idemcache::Fenced;
    ///
    /// assert_eq!(Fenced::new(7).token(), 7);
    /// ```
    pub fn new(token: u64) -> Self {
        Fenced { token }
    }

    /// The fencing token of the claim that no longer holds its key.
    ///
    /// ```
    /// use idemcache::Fenced;
    ///
    /// let fenced = Fenced::new(7);
    /// assert_eq!(fenced.token(), 7);
    /// println!("{fenced}"); // says nothing was changed
    /// ```
    pub fn token(&self) -> u64 {
        self.token
    }
}

impl fmt::Display for Fenced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "claim with fencing token {} no longer holds its key (its lease lapsed and a newer claim took over, or it already ended); nothing was changed",
            self.token
        )
    }
}

impl std::error::Error for Fenced {}

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
    ///   fencing token. An abandoned claim (its reservation dropped
    ///   unfinished) holds the key until then too.
    /// - In a bounded cache a claim in progress holds a unit of
    ///   `max_entries` and is never evicted; when no room can be made (after
    ///   reclaiming expired records and lapsed claims) the answer is
    ///   [`Claim::Full`].
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
        self.claim_with_id(key, fingerprint.into(), None).0
    }

    /// [`claim`](Self::claim) with a store caller's claim id; also says
    /// whether an `Acquired` answer is a resent claim's.
    pub(crate) fn claim_with_id(
        &self,
        key: K,
        fingerprint: Option<Fingerprint>,
        claim_id: Option<u128>,
    ) -> (Claim<K, V, S>, bool) {
        let claim = match self.claim_lookup(key, fingerprint, claim_id) {
            ClaimFound::Acquired {
                hash,
                flight,
                key,
                resent,
                ..
            } => {
                let engine = Arc::clone(&self.engine);
                let guard = FlightGuard::new(engine, hash, flight, GiveUp::Abandon);
                return (Claim::Acquired(Reservation { guard, key }), resent);
            }
            ClaimFound::Completed(replay) => Claim::Completed(replay),
            ClaimFound::InProgress(pending) => Claim::InProgress(pending),
            ClaimFound::Mismatch => Claim::Mismatch,
            ClaimFound::Full => Claim::Full,
        };
        (claim, false)
    }

    /// The claim's answer, or an acquired flight not yet guarded: the
    /// [`Store`](crate::store::Store) implementation ends it by its token
    /// and needs no [`Reservation`].
    pub(crate) fn claim_lookup(
        &self,
        key: K,
        fingerprint: Option<Fingerprint>,
        claim_id: Option<u128>,
    ) -> ClaimFound<K, V, S> {
        let engine = &self.engine;
        let hash = engine.hash(&key);
        let request = ClaimRequest {
            hash,
            key,
            fingerprint,
            claim_id,
            lease_deadline: CacheTime::NEVER, // set under the lock
        };
        let Ok((found, now)) = engine.claim(request) else {
            return ClaimFound::Full;
        };
        match found {
            ClaimLookup::Completed {
                value,
                expires_at,
                fingerprint,
            } => ClaimFound::Completed(Replay::new(engine, now, value, expires_at, fingerprint)),
            ClaimLookup::Mismatch => ClaimFound::Mismatch,
            ClaimLookup::InProgress { flight, abandoned } => ClaimFound::InProgress(Pending {
                engine: Arc::clone(engine),
                flight,
                abandoned,
            }),
            ClaimLookup::Acquired {
                flight,
                key,
                resent,
            } => ClaimFound::Acquired {
                hash,
                flight,
                key,
                resent,
                now,
            },
        }
    }
}

/// What [`Cache::claim_lookup`] found: [`Claim`]'s answers, with an
/// acquisition's flight not yet guarded.
pub(crate) enum ClaimFound<K, V, S> {
    Completed(Replay<V>),
    InProgress(Pending<K, V, S>),
    Mismatch,
    Full,
    /// The caller holds the key. The flight is not guarded: if it is
    /// dropped without one (a panic, or the store, which ends claims by
    /// their tokens), the key stays held until its lease lapses.
    Acquired {
        hash: u64,
        flight: Arc<Flight<V>>,
        key: K,
        resent: bool,
        /// When the claim was made (read under the shard lock).
        now: CacheTime,
    },
}
