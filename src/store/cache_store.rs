//! The in-process [`Cache`] as a [`Store`]: every future is ready at once.

use std::future::{Future, ready};
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use super::{Acquired, ClaimId, ClaimOutcome, InFlight, Peek, Store, StoreError};
use crate::clock::Span;
use crate::engine::Stored;
use crate::flight::{self, Until};
use crate::protocol::ClaimFound;
use crate::shard::{GiveUp, Peeked};
use crate::{Cache, Completion, Fenced, Fingerprint, Replay};

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    fn store_claim(
        &self,
        key: &K,
        fingerprint: Option<Fingerprint>,
        id: ClaimId,
    ) -> ClaimOutcome<V> {
        // No `Reservation` (and no clock read for its lease): the holder
        // ends the claim by its token, or its lease lapses.
        match self.claim_lookup(key.clone(), fingerprint, Some(id.as_u128())) {
            ClaimFound::Acquired {
                flight,
                resent,
                now,
                ..
            } => ClaimOutcome::Acquired(Acquired {
                token: flight.token,
                lease: now.until(flight.lease_deadline()),
                resent,
            }),
            ClaimFound::Completed(replay) => ClaimOutcome::Completed(replay),
            ClaimFound::InProgress(pending) => ClaimOutcome::InProgress(InFlight {
                token: pending.token(),
                fingerprint: pending.fingerprint(),
                lease_remaining: pending.lease_remaining(),
                running_for: pending.running_for(),
                abandoned: pending.is_abandoned(),
            }),
            ClaimFound::Mismatch => ClaimOutcome::Mismatch,
            ClaimFound::Full => ClaimOutcome::Full,
        }
    }

    fn store_complete(
        &self,
        key: &K,
        token: u64,
        value: V,
        retention: Option<Duration>,
    ) -> Result<Completion, StoreError> {
        let engine = &self.engine;
        let (hash, flight) = engine
            .claim_by_token(key, token)
            .ok_or(Fenced::new(token))?;
        let ttl = retention.map_or(engine.ttl(), Span::from_duration);
        match engine.complete_flight(hash, &flight, &value, ttl) {
            Stored::Yes { now, expires_at } => Ok(Completion::Stored {
                expires_at: engine.system_time_from(now, expires_at),
            }),
            Stored::No { reason, .. } => Ok(Completion::NotStored(reason)),
            Stored::Fenced(_) => Err(Fenced::new(token).into()),
        }
    }

    fn store_give_up(&self, key: &K, token: u64, how: GiveUp) -> Result<(), StoreError> {
        let engine = &self.engine;
        match engine.claim_by_token(key, token) {
            Some((hash, flight)) if engine.give_up(hash, &flight, how) => Ok(()),
            _ => Err(Fenced::new(token).into()),
        }
    }

    fn store_renew(&self, key: &K, token: u64) -> Result<Duration, StoreError> {
        let engine = &self.engine;
        let (hash, flight) = engine
            .claim_by_token(key, token)
            .ok_or(Fenced::new(token))?;
        let deadline = engine.renew(hash, &flight).ok_or(Fenced::new(token))?;
        Ok(engine.now().until(deadline))
    }

    fn store_peek(&self, key: &K, fingerprint: Option<Fingerprint>) -> Peek<V> {
        let engine = &self.engine;
        let (peeked, now) = engine.peek(key, fingerprint);
        match peeked {
            Peeked::Completed {
                value,
                expires_at,
                fingerprint,
            } => {
                let expires_in = now.until(expires_at);
                Peek::Completed(Replay::from_parts(
                    value,
                    fingerprint,
                    expires_in,
                    engine.system_time_of(expires_at),
                ))
            }
            Peeked::InProgress { flight, abandoned } => Peek::InProgress(InFlight {
                token: flight.token,
                fingerprint: flight.fingerprint,
                lease_remaining: flight
                    .has_lease()
                    .then(|| now.until(flight.lease_deadline())),
                running_for: flight.started_at.until(now),
                abandoned,
            }),
            Peeked::Mismatch => Peek::Mismatch,
            Peeked::Free => Peek::Free,
        }
    }
}

impl<K, V, S> Store for Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Clone + Send + Sync,
    S: BuildHasher + Send + Sync,
{
    type Key = K;
    type Value = V;

    fn claim(
        &self,
        key: &K,
        fingerprint: Option<Fingerprint>,
        claim_id: ClaimId,
    ) -> impl Future<Output = Result<ClaimOutcome<V>, StoreError>> + Send {
        ready(Ok(self.store_claim(key, fingerprint, claim_id)))
    }

    fn complete(
        &self,
        key: &K,
        token: u64,
        value: V,
        retention: Option<Duration>,
    ) -> impl Future<Output = Result<Completion, StoreError>> + Send {
        ready(self.store_complete(key, token, value, retention))
    }

    fn release(&self, key: &K, token: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.store_give_up(key, token, GiveUp::Release))
    }

    fn renew(
        &self,
        key: &K,
        token: u64,
    ) -> impl Future<Output = Result<Duration, StoreError>> + Send {
        ready(self.store_renew(key, token))
    }

    fn abandon(&self, key: &K, token: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.store_give_up(key, token, GiveUp::Abandon))
    }

    fn peek(
        &self,
        key: &K,
        fingerprint: Option<Fingerprint>,
    ) -> impl Future<Output = Result<Peek<V>, StoreError>> + Send {
        ready(Ok(self.store_peek(key, fingerprint)))
    }

    fn remove(&self, key: &K) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(Cache::remove(self, key).is_some()))
    }

    fn lease(&self) -> Duration {
        Cache::lease(self)
    }

    /// Resolves when the key's holder ends (completes, releases, abandons)
    /// or its lapsed claim is reclaimed; at once if nothing holds the key.
    fn changed(&self, key: &K) -> impl Future<Output = ()> + Send {
        let flight = match self.engine.peek(key, None).0 {
            Peeked::InProgress { flight, .. } => Some(flight),
            _ => None,
        };
        async move {
            if let Some(flight) = flight {
                flight::wait_async(flight, Until::Outcome).await;
            }
        }
    }
}
