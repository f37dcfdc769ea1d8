//! Where records live: the [`Store`] trait that the HTTP layer and the
//! shared (Redis) store are built on, implemented here by the in-process
//! [`Cache`](crate::Cache).
//!
//! A store speaks the idempotency protocol **by token**, not through
//! objects: a claim returns a fencing token, and `complete`, `release`,
//! `renew` and `abandon` name the key and the token. That is what a
//! network store can offer (the holder's process may restart between the
//! calls), and it makes every write fenced: a holder whose lease lapsed and
//! whose key a newer claim took over gets [`StoreError::Fenced`] and
//! changes nothing.
//!
//! | operation | answers |
//! |---|---|
//! | [`claim`](Store::claim) | [`ClaimOutcome`]: acquired (token, lease), completed (a [`Replay`]), in progress ([`InFlight`]), mismatch, full |
//! | [`complete`](Store::complete) | [`Completion`]: stored until…, or not stored and why |
//! | [`release`](Store::release) | the key is free now, nothing kept |
//! | [`abandon`](Store::abandon) | outcome unknown: the key stays held until the lease lapses |
//! | [`renew`](Store::renew) | the lease left after renewing |
//! | [`peek`](Store::peek) | [`Peek`]: what a waiter polls, without claiming |
//! | [`remove`](Store::remove) | an operator forgets a completed record |
//!
//! Every operation can fail with a [`StoreError`]: a network store that is
//! down answers [`StoreError::Unavailable`], which a server turns into 503
//! (fail closed), never a panic.
//!
//! # Claim ids
//!
//! A claim carries a caller-chosen [`ClaimId`] (one per attempt,
//! [`ClaimId::random`]): if the answer to a claim is lost (a timeout), the
//! caller resends the same claim with the same id and gets the same
//! acquisition back ([`Acquired::resent`]), instead of finding its own
//! claim "in progress".
//!
//! # The in-process store
//!
//! [`Cache`](crate::Cache) implements `Store` with futures that are ready at once; its
//! own synchronous API ([`Cache::claim`](crate::Cache::claim)) is unchanged. Where a `Cache`'s
//! inherent method has the same name (`claim`, `remove`, `lease`), call the
//! trait's as `Store::claim(&cache, ..)`; generic code over `S: Store` needs
//! nothing special. A claim acquired
//! through the trait has no [`Reservation`](crate::Reservation) object: it
//! ends by its token, or when its lease lapses.
//!
//! ```
//! use idemcache::Cache;
//! use idemcache::store::{ClaimId, ClaimOutcome, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idemcache::store::StoreError> {
//! let store: Cache<String, String> = Cache::new();
//! let key = "order-7".to_string();
//! let ClaimOutcome::Acquired(claim) = Store::claim(&store, &key, None, ClaimId::random()).await? else {
//!     unreachable!("a new key")
//! };
//! store.complete(&key, claim.token, "201 charged".to_string(), None).await?;
//! match Store::claim(&store, &key, None, ClaimId::random()).await? {
//!     ClaimOutcome::Completed(replay) => assert_eq!(replay.value(), "201 charged"),
//!     other => unreachable!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```

mod cache_store;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod wait;

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::time::Duration;

pub use crate::protocol::{Completion, Fenced, NotStored, Replay};
pub use wait::{WaitPolicy, wait_for_outcome};

use crate::Fingerprint;

/// A store of idempotency records, shared by every request of a service:
/// the in-process [`Cache`](crate::Cache), or a network store shared
/// between replicas. See the [module docs](self).
///
/// Futures are `Send`, so a store works under multi-threaded runtimes.
/// The trait uses `impl Future` returns, so it is not object-safe: layers
/// take a store as a type parameter.
pub trait Store: Send + Sync {
    /// The idempotency key (scoped to the caller by the layer above).
    type Key: Send + Sync;
    /// The stored result of a request.
    type Value: Send;

    /// Claims `key` for a request with `fingerprint`: acquires a free key
    /// (or one whose claim's lease lapsed, with a larger token), or says
    /// why not. The fingerprint is checked first, so a reused key is a
    /// mismatch even while the first request runs. A claim resent with the
    /// `claim_id` of a live acquisition gets that acquisition again.
    fn claim(
        &self,
        key: &Self::Key,
        fingerprint: Option<Fingerprint>,
        claim_id: ClaimId,
    ) -> impl Future<Output = Result<ClaimOutcome<Self::Value>, StoreError>> + Send;

    /// Stores `value` as the result of the claim with `token`, kept for
    /// `retention` (or the store's default), and ends the claim; waiters
    /// see it.
    ///
    /// A network store must let a complete resent after an ambiguous
    /// failure (a timeout) with the same token succeed; the in-process
    /// store, whose calls cannot time out, answers a second complete with
    /// [`StoreError::Fenced`].
    fn complete(
        &self,
        key: &Self::Key,
        token: u64,
        value: Self::Value,
        retention: Option<Duration>,
    ) -> impl Future<Output = Result<Completion, StoreError>> + Send;

    /// Ends the claim with `token` without a result because nothing
    /// happened: the key is free at once and nothing is kept, not even the
    /// fingerprint.
    fn release(
        &self,
        key: &Self::Key,
        token: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Extends the claim with `token` to a full lease from now; returns
    /// the lease left.
    fn renew(
        &self,
        key: &Self::Key,
        token: u64,
    ) -> impl Future<Output = Result<Duration, StoreError>> + Send;

    /// Ends the claim with `token` without a result because its outcome is
    /// unknown: the key stays held until the lease lapses (fail closed).
    fn abandon(
        &self,
        key: &Self::Key,
        token: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// What `key` holds for a request with `fingerprint`, without claiming
    /// it: what a waiter polls.
    fn peek(
        &self,
        key: &Self::Key,
        fingerprint: Option<Fingerprint>,
    ) -> impl Future<Output = Result<Peek<Self::Value>, StoreError>> + Send;

    /// Forgets `key`'s completed record (an operator's action); returns
    /// whether there was a live one. A claim in progress keeps its key.
    fn remove(&self, key: &Self::Key) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// How long a claim holds its key unless renewed.
    fn lease(&self) -> Duration;

    /// Resolves when `key`'s claim in progress may have ended: a hint for
    /// waiters, which poll [`peek`](Self::peek) anyway. The in-process
    /// store resolves at once when the holder ends; the default never
    /// resolves (waiters then poll on their schedule alone).
    fn changed(&self, key: &Self::Key) -> impl Future<Output = ()> + Send {
        let _ = key;
        std::future::pending()
    }
}

/// Identifies one claim attempt, so that a claim resent after a lost answer
/// finds its own acquisition. Make one per request attempt with
/// [`random`](Self::random) and reuse it only to resend that claim.
///
/// ```
/// use idemcache::store::ClaimId;
///
/// assert_ne!(ClaimId::random(), ClaimId::random());
/// assert_eq!(ClaimId::from_u128(7).as_u128(), 7);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClaimId(u128);

impl ClaimId {
    /// A fresh id: unique within the process (a counter, counted per
    /// thread in blocks so that concurrent requests share no cache line)
    /// and, with 64 random bits per process, between processes. Not a
    /// secret.
    ///
    /// ```
    /// use idemcache::store::ClaimId;
    ///
    /// let id = ClaimId::random(); // one per attempt; resend only that claim with it
    /// assert_ne!(id, ClaimId::random());
    /// ```
    pub fn random() -> Self {
        use std::cell::Cell;
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        /// Ids a thread takes from the process's counter at a time: each
        /// request then counts on its own thread, without touching a
        /// shared cache line.
        const BLOCK: u64 = 1 << 32;
        static SEED: OnceLock<u64> = OnceLock::new();
        static BLOCKS: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            /// The next id of this thread's block, and the block's end.
            static NEXT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        let process = SEED.get_or_init(|| {
            // `ahash::RandomState::new` is seeded from the operating system.
            ahash::RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
        });
        let count = NEXT.with(|next| {
            let (mut id, mut end) = next.get();
            if id == end {
                // 2³² blocks of 2³² ids: the process never repeats one.
                id = BLOCKS.fetch_add(1, Ordering::Relaxed).wrapping_mul(BLOCK);
                end = id.wrapping_add(BLOCK);
            }
            next.set((id.wrapping_add(1), end));
            id
        });
        // The high half tells processes apart (random per process), the
        // low half ids within this one (a counter: never repeats).
        ClaimId((u128::from(*process) << 64) | u128::from(count))
    }

    /// An id from its 128 bits (one stored elsewhere).
    ///
    /// ```
    /// use idemcache::store::ClaimId;
    ///
    /// let id = ClaimId::from_u128(0x1234);
    /// assert_eq!(id.as_u128(), 0x1234);
    /// ```
    pub fn from_u128(bits: u128) -> Self {
        ClaimId(bits)
    }

    /// The id's 128 bits.
    ///
    /// ```
    /// use idemcache::store::ClaimId;
    ///
    /// let id = ClaimId::random();
    /// assert_eq!(ClaimId::from_u128(id.as_u128()), id);
    /// ```
    pub fn as_u128(self) -> u128 {
        self.0
    }
}

/// What a [claim](Store::claim) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome<V> {
    /// The caller holds the key: run the request, then complete, release
    /// or abandon with the token.
    Acquired(Acquired),
    /// The request already completed: replay its result.
    Completed(Replay<V>),
    /// Another request holds the key: answer 409 or wait.
    InProgress(InFlight),
    /// The key was used for a different request (422).
    Mismatch,
    /// The store cannot take the claim (503, fail closed).
    Full,
}

/// A claim acquired through a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquired {
    /// The fencing token to complete, release, renew or abandon with.
    pub token: u64,
    /// How long the claim holds the key unless renewed.
    pub lease: Duration,
    /// Whether this answers a resent claim (same [`ClaimId`]) that had
    /// already acquired the key.
    pub resent: bool,
}

/// A claim in progress, as another request sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// The holder's fencing token.
    pub token: u64,
    /// The holder's request fingerprint, if it gave one.
    pub fingerprint: Option<Fingerprint>,
    /// How long until the holder's lease lapses; `None` for a computation
    /// without a lease.
    pub lease_remaining: Option<Duration>,
    /// How long since the holder claimed the key.
    pub running_for: Duration,
    /// Whether the holder abandoned the claim (its outcome is unknown): the
    /// key frees when the lease lapses.
    pub abandoned: bool,
}

impl InFlight {
    /// A `Retry-After` hint, as [`Pending::retry_after`](crate::Pending::retry_after)
    /// computes it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::store::InFlight;
    ///
    /// let in_flight = InFlight {
    ///     token: 1,
    ///     fingerprint: None,
    ///     lease_remaining: Some(Duration::from_secs(59)),
    ///     running_for: Duration::from_millis(300),
    ///     abandoned: false,
    /// };
    /// assert_eq!(in_flight.retry_after(), Duration::from_secs(1));
    /// ```
    pub fn retry_after(&self) -> Duration {
        crate::protocol::retry_hint(self.running_for, self.lease_remaining, self.abandoned)
    }
}

/// What [`peek`](Store::peek) saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peek<V> {
    /// A completed record.
    Completed(Replay<V>),
    /// A claim in progress.
    InProgress(InFlight),
    /// Nothing: a claim would acquire the key.
    Free,
    /// The key's record or claim has another fingerprint.
    Mismatch,
}

/// Why a [`Store`] operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The token no longer holds its key (its lease lapsed and a newer
    /// claim took over, or the claim already ended): nothing was changed.
    /// Look at what the key holds now ([`peek`](Store::peek)).
    Fenced(Fenced),
    /// The store could not be reached or refused to work (a network store
    /// down, out of memory for a write that must succeed): answer 503.
    Unavailable {
        /// What failed, for logs.
        reason: String,
        /// The underlying error, if any.
        source: Option<Box<dyn Error + Send + Sync>>,
    },
    /// No answer in time: the operation may or may not have happened.
    /// Resend it (a claim with the same [`ClaimId`], a completion with the
    /// same token) while the lease lasts.
    Timeout {
        /// How long the store waited.
        after: Duration,
    },
    /// The key cannot be stored (too long for the store's key layout, say).
    InvalidKey {
        /// Why.
        reason: String,
    },
    /// A value could not be encoded or a stored one decoded.
    Codec {
        /// What failed.
        reason: String,
    },
}

impl StoreError {
    /// An [`Unavailable`](Self::Unavailable) error caused by `source`.
    ///
    /// ```
    /// use idemcache::store::StoreError;
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// let err = StoreError::unavailable("connecting to redis", io);
    /// assert!(err.is_unavailable());
    /// ```
    pub fn unavailable(
        reason: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> Self {
        StoreError::Unavailable {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }

    /// Whether the token no longer holds its key.
    ///
    /// ```
    /// use idemcache::Fenced;
    /// use idemcache::store::StoreError;
    ///
    /// assert!(StoreError::Fenced(Fenced::new(3)).is_fenced());
    /// ```
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced(_))
    }

    /// Whether the store is down or refused (a server answers 503);
    /// timeouts count, as their outcome is unknown.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::store::StoreError;
    ///
    /// assert!(StoreError::Timeout { after: Duration::from_secs(1) }.is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Timeout { .. }
        )
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Fenced(fenced) => fenced.fmt(f),
            StoreError::Unavailable { reason, source } => match source {
                Some(source) => write!(f, "store unavailable: {reason}: {source}"),
                None => write!(f, "store unavailable: {reason}"),
            },
            StoreError::Timeout { after } => write!(
                f,
                "store did not answer within {after:?}: the operation may or may not have happened; resend it"
            ),
            StoreError::InvalidKey { reason } => write!(f, "invalid key: {reason}"),
            StoreError::Codec { reason } => write!(f, "value encoding: {reason}"),
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StoreError::Fenced(fenced) => Some(fenced),
            StoreError::Unavailable {
                source: Some(source),
                ..
            } => Some(&**source),
            _ => None,
        }
    }
}

impl From<Fenced> for StoreError {
    fn from(fenced: Fenced) -> Self {
        StoreError::Fenced(fenced)
    }
}

#[cfg(test)]
mod claim_id_tests {
    use super::ClaimId;

    #[test]
    fn ids_from_many_threads_never_repeat() {
        let per_thread = if cfg!(miri) { 50 } else { 10_000 };
        let ids: Vec<Vec<ClaimId>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..per_thread).map(|_| ClaimId::random()).collect()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let all: std::collections::HashSet<ClaimId> = ids.iter().flatten().copied().collect();
        assert_eq!(all.len(), 4 * per_thread);
        // One process: one random high half.
        assert_eq!(
            ids.iter()
                .flatten()
                .map(|id| id.as_u128() >> 64)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            1
        );
    }
}
