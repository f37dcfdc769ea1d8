//! [`RedisStore`]: the [`Store`] trait, one script call per operation.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use idemcache::Fingerprint;
use idemcache::store::{
    Acquired, ClaimId, ClaimOutcome, Completion, Fenced, InFlight, Peek, Replay, Store, StoreError,
};
use redis::{Cmd, RedisError, Script, Value};

use crate::builder::{Durability, RedisStoreBuilder};
use crate::codec::Codec;
use crate::conn::{Backend, is_oom, script_call, store_error, within};
use crate::flight::Flights;
use crate::key::KeyLayout;
use crate::local::{LocalRecord, LocalTier};
use crate::scripts::SCRIPTS;

/// Idempotency records in Redis, shared by every replica of a service: an
/// [`idemcache::store::Store`]. Keys are `String`s; values go through the
/// codec `C` ([`Raw`](crate::Raw) for bytes and strings,
/// [`Postcard`](crate::Postcard) for serde types).
///
/// Cheap to clone: clones share the connection (and the local tier).
/// See the [crate docs](crate) for the key layout, durability and the
/// local tier.
pub struct RedisStore<V, C> {
    inner: Arc<Inner<C>>,
    value: PhantomData<fn() -> V>,
}

pub(crate) struct Inner<C> {
    pub(crate) backend: Backend,
    pub(crate) layout: KeyLayout,
    pub(crate) codec: C,
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) grace: Duration,
    pub(crate) timeout: Duration,
    pub(crate) durability: Durability,
    pub(crate) local: Option<LocalTier>,
    pub(crate) eviction_policies: Vec<(String, String)>,
    /// `lease`, `grace` and `retention` in whole milliseconds (at least
    /// 1), as the scripts take them.
    pub(crate) lease_ms: u64,
    pub(crate) grace_ms: u64,
    pub(crate) retention_ms: u64,
    /// This process's single flights of `peek`, per key.
    pub(crate) flights: Flights<Shared>,
}

impl<V, C> Clone for RedisStore<V, C> {
    fn clone(&self) -> Self {
        RedisStore {
            inner: Arc::clone(&self.inner),
            value: PhantomData,
        }
    }
}

impl<V, C> fmt::Debug for RedisStore<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("layout", &self.inner.layout)
            .field("lease", &self.inner.lease)
            .field("retention", &self.inner.retention)
            .field("grace", &self.inner.grace)
            .field("timeout", &self.inner.timeout)
            .field("durability", &self.inner.durability)
            .field("local_tier", &self.inner.local.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStore<(), ()> {
    /// A builder for a store on one server (or a primary with replicas),
    /// at `url` (`redis://host:port/db`, `rediss://` needs a TLS feature
    /// of redis-rs).
    ///
    /// ```no_run
    /// use idemcache_redis::{Raw, RedisStore};
    ///
    /// # async fn run() -> Result<(), idemcache_redis::ConnectError> {
    /// let store: RedisStore<Vec<u8>, Raw> = RedisStore::builder("redis://127.0.0.1:6380")
    ///     .prefix("payments")
    ///     .connect_with_codec(Raw)
    ///     .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::single(url.into())
    }

    /// A builder for a store on a Redis Cluster, discovered from `nodes`
    /// (any of its nodes' URLs).
    ///
    /// ```no_run
    /// use idemcache_redis::{Raw, RedisStore};
    ///
    /// # async fn run() -> Result<(), idemcache_redis::ConnectError> {
    /// let store: RedisStore<String, Raw> =
    ///     RedisStore::cluster_builder(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///         .prefix("orders")
    ///         .connect_with_codec(Raw)
    ///         .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster_builder<I, S>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisStoreBuilder::cluster(nodes.into_iter().map(Into::into).collect())
    }
}

impl<V, C> RedisStore<V, C> {
    pub(crate) fn from_inner(inner: Arc<Inner<C>>) -> Self {
        RedisStore {
            inner,
            value: PhantomData,
        }
    }

    /// The default retention of completed records.
    pub fn retention(&self) -> Duration {
        self.inner.retention
    }

    /// The Redis key of the record of `key`: `<prefix>:v1:{<encoded key>}`
    /// (for operators: `HGETALL` it, `PTTL` it).
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidKey`] for a key whose encoding is longer than
    /// the [cap](RedisStoreBuilder::max_key_len).
    pub fn redis_key(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.inner.layout.redis_key(key)
    }

    /// Each primary's `maxmemory-policy` as read at connect (node,
    /// policy); empty if the check was
    /// [skipped](crate::EvictionPolicyCheck::Skip).
    pub fn eviction_policies(&self) -> &[(String, String)] {
        &self.inner.eviction_policies
    }

    /// How many `peek` round trips this store (and its clones) has made:
    /// one per flight, however many callers shared it (see [`Store::peek`]
    /// and "Waiting across replicas" in the [crate docs](crate)). For
    /// metrics and tests.
    pub fn peek_round_trips(&self) -> u64 {
        self.inner.flights.round_trips()
    }
}

impl<V, C: Codec<V>> RedisStore<V, C> {
    /// Runs one script call within the response timeout.
    async fn run(
        &self,
        operation: &'static str,
        script: &Script,
        call: &Cmd,
    ) -> Result<Value, StoreError> {
        let inner = &*self.inner;
        within(inner.timeout, async {
            inner
                .backend
                .run_script(script, call)
                .await
                .map_err(|err| store_error(err, operation, inner.timeout))
        })
        .await
    }

    /// The lease of an acquisition made now.
    fn lease_granted(&self) -> Duration {
        Duration::from_millis(self.inner.lease_ms)
    }

    fn local_replay(&self, key: &str, fingerprint: Option<Fingerprint>) -> Option<Replay<V>> {
        let local = self.inner.local.as_ref()?;
        let (record, left) = local.get(key, fingerprint)?;
        // A copy that does not decode is not answered from here: Redis's
        // answer (and its codec error) is the one to give.
        let value = self.inner.codec.decode(&record.value).ok()?;
        Some(Replay::from_parts(
            value,
            record.fingerprint,
            left,
            record.expires_at,
        ))
    }

    /// Decodes a completed record's value.
    fn decode_replay(
        &self,
        value: &[u8],
        fingerprint: Option<Fingerprint>,
        expires_in: Duration,
    ) -> Result<Replay<V>, StoreError> {
        let decoded = self
            .inner
            .codec
            .decode(value)
            .map_err(|err| StoreError::Codec {
                reason: format!("decoding the stored value: {err}"),
            })?;
        Ok(Replay::from_parts(
            decoded,
            fingerprint,
            expires_in,
            SystemTime::now() + expires_in,
        ))
    }

    /// Keeps a completed record in the local tier, if there is one.
    fn keep_local(
        &self,
        key: &str,
        value: Vec<u8>,
        fingerprint: Option<Fingerprint>,
        expires_in: Duration,
    ) {
        if let Some(local) = &self.inner.local {
            let record = LocalRecord {
                value,
                fingerprint,
                expires_at: SystemTime::now() + expires_in,
            };
            local.put(key, record, expires_in);
        }
    }

    async fn claim_record(
        &self,
        key: &str,
        fingerprint: Option<Fingerprint>,
        claim_id: ClaimId,
    ) -> Result<ClaimOutcome<V>, StoreError> {
        if let Some(replay) = self.local_replay(key, fingerprint) {
            return Ok(ClaimOutcome::Completed(replay));
        }
        let inner = &*self.inner;
        let redis_key = inner.layout.redis_key(key)?;
        let fp = fingerprint.map(Fingerprint::to_bytes);
        let fp: &[u8] = fp.as_ref().map_or(&[], |fp| &fp[..]);
        let id = claim_id.as_u128().to_be_bytes();
        let mut call = script_call(&SCRIPTS.claim, &redis_key, 4, 16 + 16 + 40);
        call.arg(fp)
            .arg(&id[..])
            .arg(inner.lease_ms)
            .arg(inner.grace_ms);
        let answer = within(inner.timeout, async {
            match inner.backend.run_script(&SCRIPTS.claim, &call).await {
                Ok(answer) => Ok(Some(answer)),
                // Refused before it ran: Redis is out of memory.
                Err(err) if is_oom(&err) => Ok(None),
                Err(err) => Err(store_error(err, "claim", inner.timeout)),
            }
        })
        .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(err) => {
                // It may have acquired the key.
                inner.flights.invalidate(key);
                return Err(err);
            }
        };
        let observed = match answer {
            Some(answer) => parse_lookup(answer, self.lease_granted())?,
            None => {
                // Out of memory: no new claim, but what exists is still
                // answered (replays, 409s, 422s, and this claim's own
                // acquisition if an earlier send of it got in).
                let mut call = script_call(&SCRIPTS.peek, &redis_key, 2, 32);
                call.arg(fp).arg(&id[..]);
                let answer = self.run("peek", &SCRIPTS.peek, &call).await?;
                match parse_lookup(answer, self.lease_granted())? {
                    Observed::Free => return Ok(ClaimOutcome::Full),
                    observed => observed,
                }
            }
        };
        Ok(match observed {
            Observed::Acquired(acquired) => {
                inner.flights.invalidate(key);
                ClaimOutcome::Acquired(acquired)
            }
            Observed::Completed {
                value,
                fingerprint,
                expires_in,
            } => {
                let replay = self.decode_replay(&value, fingerprint, expires_in)?;
                self.keep_local(key, value, fingerprint, expires_in);
                ClaimOutcome::Completed(replay)
            }
            Observed::InProgress(in_flight) => ClaimOutcome::InProgress(in_flight),
            Observed::Mismatch => ClaimOutcome::Mismatch,
            Observed::Free => {
                return Err(StoreError::Unavailable {
                    reason: "the claim script answered `free`; is another version of the script loaded under this prefix?".into(),
                    source: None,
                });
            }
        })
    }

    async fn complete_record(
        &self,
        key: &str,
        redis_key: Result<Vec<u8>, StoreError>,
        token: u64,
        value: Result<Vec<u8>, StoreError>,
        retention: Option<Duration>,
    ) -> Result<Completion, StoreError> {
        let redis_key = redis_key?;
        let value = value?;
        let retention_ms = retention.map_or(self.inner.retention_ms, millis);
        let mut call = script_call(&SCRIPTS.complete, &redis_key, 3, 40 + value.len());
        call.arg(token).arg(&value[..]).arg(retention_ms);
        let answer = self.run("complete", &SCRIPTS.complete, &call).await;
        // Whatever the answer (a timeout may have stored it), what this
        // process knew of the key is stale.
        self.inner.flights.invalidate(key);
        let items = Reply::new(answer?)?;
        let expires_in = match items.tag()? {
            // Stored now, for the retention asked.
            b'S' if items.len() == 1 => Duration::from_millis(retention_ms),
            // A resend of a complete that had stored it.
            b'S' => items.micros(1)?,
            b'X' => return Err(Fenced::new(token).into()),
            other => return Err(items.unexpected(other)),
        };
        self.wait_durable(&redis_key).await?;
        Ok(Completion::Stored {
            expires_at: SystemTime::now() + expires_in,
        })
    }

    /// Waits until the configured [`Durability`] holds for the writes made
    /// so far on `redis_key`'s connection.
    async fn wait_durable(&self, redis_key: &[u8]) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut cmd = Cmd::new();
        let (wanted, wait) = match inner.durability {
            Durability::Primary => return Ok(()),
            Durability::Replicas { replicas, timeout } => {
                cmd.arg("WAIT").arg(replicas).arg(millis(timeout));
                ((0, replicas), timeout)
            }
            Durability::Aof {
                local,
                replicas,
                timeout,
            } => {
                cmd.arg("WAITAOF")
                    .arg(local)
                    .arg(replicas)
                    .arg(millis(timeout));
                ((local, replicas), timeout)
            }
        };
        let answer = within(inner.timeout, async {
            inner
                .backend
                .on_key_node(&cmd, redis_key)
                .await
                .map_err(|err| store_error(err, "waiting for durability", inner.timeout))
        })
        .await?;
        let got = match answer {
            Value::Int(replicas) => (0, replicas),
            Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
                (Value::Int(local), Value::Int(replicas)) => (*local, *replicas),
                _ => (-1, -1),
            },
            _ => (-1, -1),
        };
        if got.0 >= i64::from(wanted.0) && got.1 >= i64::from(wanted.1) {
            Ok(())
        } else {
            Err(StoreError::Unavailable {
                reason: format!(
                    "the record is stored on the primary, but within {wait:?} only {} local and {} replica acknowledgements of the {} and {} required came; resend the complete with the same token to wait again",
                    got.0.max(0),
                    got.1.max(0),
                    wanted.0,
                    wanted.1
                ),
                source: None,
            })
        }
    }

    /// Runs `release`, `abandon` or `renew` for the claim with `token`:
    /// the reply, or [`Fenced`].
    async fn by_token(
        &self,
        operation: &'static str,
        script: &Script,
        key: &str,
        token: u64,
    ) -> Result<Reply, StoreError> {
        let inner = &*self.inner;
        let redis_key = inner.layout.redis_key(key)?;
        let renew = operation == "renew";
        let mut call = script_call(script, &redis_key, 3, 60);
        call.arg(token);
        if renew {
            call.arg(inner.lease_ms).arg(inner.grace_ms);
        }
        let answer = self.run(operation, script, &call).await;
        inner.flights.invalidate(key);
        let items = Reply::new(answer?)?;
        match items.tag()? {
            b'X' => Err(Fenced::new(token).into()),
            _ => Ok(items),
        }
    }

    async fn end_by_token(
        &self,
        operation: &'static str,
        script: &Script,
        key: &str,
        token: u64,
    ) -> Result<(), StoreError> {
        self.by_token(operation, script, key, token).await.map(drop)
    }

    async fn renew_record(&self, key: &str, token: u64) -> Result<Duration, StoreError> {
        let items = self.by_token("renew", &SCRIPTS.renew, key, token).await?;
        match items.tag()? {
            // Renewed for the whole lease asked.
            b'R' => Ok(self.lease_granted()),
            other => Err(items.unexpected(other)),
        }
    }

    async fn peek_record(
        &self,
        key: &str,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Peek<V>, StoreError> {
        if let Some(replay) = self.local_replay(key, fingerprint) {
            return Ok(Peek::Completed(replay));
        }
        let inner = &*self.inner;
        let redis_key = inner.layout.redis_key(key)?;
        let shared = inner
            .flights
            .get(
                key,
                inner.timeout,
                |shared, age| matches!(shared, Ok(observed) if observed.holds_after(age)),
                |left| self.peek_round_trip(key, &redis_key, left),
            )
            .await;
        let Some((shared, at)) = shared else {
            return Err(StoreError::Timeout {
                after: inner.timeout,
            });
        };
        let observed = shared.map_err(|failure| failure.into_error(inner.timeout))?;
        Ok(match observed.seen_by(fingerprint, at.elapsed()) {
            Observed::Completed {
                value,
                fingerprint,
                expires_in,
            } => Peek::Completed(self.decode_replay(&value, fingerprint, expires_in)?),
            Observed::InProgress(in_flight) => Peek::InProgress(in_flight),
            Observed::Mismatch => Peek::Mismatch,
            Observed::Free => Peek::Free,
            // A peek names no claim id, so the script never answers this.
            Observed::Acquired(acquired) => Peek::InProgress(InFlight {
                token: acquired.token,
                fingerprint,
                lease_remaining: Some(acquired.lease),
                running_for: Duration::ZERO,
                abandoned: false,
            }),
        })
    }

    /// One `peek` round trip, led for every caller of this flight: asks
    /// without a fingerprint (each caller checks its own, as the script
    /// would), within `left`.
    async fn peek_round_trip(&self, key: &str, redis_key: &[u8], left: Duration) -> Shared {
        let inner = &*self.inner;
        let mut call = script_call(&SCRIPTS.peek, redis_key, 2, 0);
        call.arg(&b""[..]).arg(&b""[..]);
        let answer = match tokio::time::timeout(
            left,
            inner.backend.run_script(&SCRIPTS.peek, &call),
        )
        .await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => return Err(Failure::Redis(err)),
            Err(_elapsed) => return Err(Failure::Timeout),
        };
        let observed = parse_lookup(answer, self.lease_granted()).map_err(Failure::from)?;
        if let Observed::Completed {
            value,
            fingerprint,
            expires_in,
        } = &observed
        {
            self.keep_local(key, value.clone(), *fingerprint, *expires_in);
        }
        Ok(observed)
    }

    async fn remove_record(&self, key: &str) -> Result<bool, StoreError> {
        if let Some(local) = &self.inner.local {
            local.remove(key);
        }
        let redis_key = self.inner.layout.redis_key(key)?;
        let call = script_call(&SCRIPTS.remove, &redis_key, 0, 0);
        let answer = self.run("remove", &SCRIPTS.remove, &call).await;
        self.inner.flights.invalidate(key);
        match answer? {
            Value::Int(removed) => Ok(removed == 1),
            other => Err(unexpected_reply(&other)),
        }
    }
}

impl<V, C> Store for RedisStore<V, C>
where
    V: Send + 'static,
    C: Codec<V>,
{
    type Key = String;
    type Value = V;

    fn claim(
        &self,
        key: &String,
        fingerprint: Option<Fingerprint>,
        claim_id: ClaimId,
    ) -> impl Future<Output = Result<ClaimOutcome<V>, StoreError>> + Send {
        self.claim_record(key, fingerprint, claim_id)
    }

    /// Stores `value` for the claim with `token`. A complete resent with
    /// the same token after it succeeded (its answer lost) succeeds again
    /// and changes nothing. With a [`Durability`] other than `Primary`, it
    /// answers only once the write is as durable as asked.
    fn complete(
        &self,
        key: &String,
        token: u64,
        value: V,
        retention: Option<Duration>,
    ) -> impl Future<Output = Result<Completion, StoreError>> + Send {
        // Encoded now, so the future does not hold the value (V need not
        // be Sync).
        let redis_key = self.inner.layout.redis_key(key);
        let encoded = self
            .inner
            .codec
            .encode(&value)
            .map_err(|err| StoreError::Codec {
                reason: format!("encoding the value: {err}"),
            });
        drop(value);
        self.complete_record(key, redis_key, token, encoded, retention)
    }

    fn release(
        &self,
        key: &String,
        token: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.end_by_token("release", &SCRIPTS.release, key, token)
    }

    fn renew(
        &self,
        key: &String,
        token: u64,
    ) -> impl Future<Output = Result<Duration, StoreError>> + Send {
        self.renew_record(key, token)
    }

    fn abandon(
        &self,
        key: &String,
        token: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.end_by_token("abandon", &SCRIPTS.abandon, key, token)
    }

    /// What `key` holds, for a request with `fingerprint`.
    ///
    /// Peeks of one key in this process share round trips (a single
    /// flight): a peek joins the one already on its way rather than
    /// sending another, so Redis sees at most one `peek` of a key at a
    /// time from this process. A waiter woken by
    /// [`changed`](Store::changed) takes the answer that woke it (at most
    /// 20 ms old) instead of asking again. A write of the key through this
    /// store (any operation but `peek`) discards what is known of it, so a
    /// peek always sees this process's own writes.
    fn peek(
        &self,
        key: &String,
        fingerprint: Option<Fingerprint>,
    ) -> impl Future<Output = Result<Peek<V>, StoreError>> + Send {
        self.peek_record(key, fingerprint)
    }

    /// Deletes `key`'s completed record in Redis, and this replica's local
    /// copy; other replicas' local copies live on up to the tier's cap.
    fn remove(&self, key: &String) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.remove_record(key)
    }

    fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// Resolves when this process learns something new about `key`: a
    /// `peek` round trip for it (any caller's) brings an answer, or this
    /// store writes it (claim, complete, release, renew, abandon, remove).
    ///
    /// So the duplicates of a request waiting on one key in one process
    /// ([`wait_for_outcome`](idemcache::store::wait_for_outcome)) wake
    /// together whenever one of them polls, take that answer without a
    /// round trip of their own, and back off in step: the key is polled
    /// once per backoff step by whichever waiter's timer fires first (the
    /// leader), not once per waiter. A holder completing in the same
    /// process wakes its waiters at once; one on another replica is seen
    /// at the next poll.
    fn changed(&self, key: &String) -> impl Future<Output = ()> + Send {
        self.inner.flights.changed(key)
    }
}

/// What a `claim` or `peek` script answered, its value still encoded.
#[derive(Clone, Debug)]
pub(crate) enum Observed {
    Acquired(Acquired),
    Completed {
        value: Vec<u8>,
        fingerprint: Option<Fingerprint>,
        expires_in: Duration,
    },
    InProgress(InFlight),
    Mismatch,
    Free,
}

impl Observed {
    /// As a request with `fingerprint` sees it, `age` after Redis answered:
    /// a live record with another fingerprint is a mismatch (the scripts'
    /// rule, for an answer asked without one), and the times move on.
    fn seen_by(self, fingerprint: Option<Fingerprint>, age: Duration) -> Observed {
        let other = |stored: Option<Fingerprint>| matches!((fingerprint, stored), (Some(asked), Some(stored)) if asked != stored);
        match self {
            Observed::Completed {
                value,
                fingerprint: stored,
                expires_in,
            } => {
                if other(stored) {
                    Observed::Mismatch
                } else {
                    Observed::Completed {
                        value,
                        fingerprint: stored,
                        expires_in: expires_in.saturating_sub(age),
                    }
                }
            }
            Observed::InProgress(in_flight) => {
                if other(in_flight.fingerprint) {
                    Observed::Mismatch
                } else {
                    Observed::InProgress(InFlight {
                        lease_remaining: in_flight.lease_remaining.map(|l| l.saturating_sub(age)),
                        running_for: in_flight.running_for + age,
                        ..in_flight
                    })
                }
            }
            other => other,
        }
    }

    /// Whether the answer still holds `age` after it came: a record not
    /// yet expired, a lease not yet lapsed.
    fn holds_after(&self, age: Duration) -> bool {
        match self {
            Observed::Completed { expires_in, .. } => *expires_in > age,
            Observed::InProgress(in_flight) => in_flight.lease_remaining.is_none_or(|l| l > age),
            _ => true,
        }
    }
}

/// What a `peek` flight answers all its callers.
pub(crate) type Shared = Result<Observed, Failure>;

/// Why a shared `peek` failed; each caller makes its own [`StoreError`]
/// of it.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    Redis(RedisError),
    Timeout,
    Unavailable(String),
    Codec(String),
}

impl Failure {
    fn into_error(self, timeout: Duration) -> StoreError {
        match self {
            Failure::Redis(err) => store_error(err, "peek", timeout),
            Failure::Timeout => StoreError::Timeout { after: timeout },
            Failure::Unavailable(reason) => StoreError::Unavailable {
                reason,
                source: None,
            },
            Failure::Codec(reason) => StoreError::Codec { reason },
        }
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Timeout { .. } => Failure::Timeout,
            StoreError::Codec { reason } => Failure::Codec(reason),
            StoreError::Unavailable {
                reason,
                source: None,
            } => Failure::Unavailable(reason),
            other => Failure::Unavailable(other.to_string()),
        }
    }
}

/// Parses a `claim` or `peek` answer. `lease` is what an acquisition made
/// now holds (the script answers only its token).
fn parse_lookup(answer: Value, lease: Duration) -> Result<Observed, StoreError> {
    let mut items = Reply::new(answer)?;
    Ok(match items.tag()? {
        b'M' => Observed::Mismatch,
        b'F' => Observed::Free,
        b'C' => Observed::Completed {
            fingerprint: items.fingerprint(2)?,
            expires_in: items.micros(3)?,
            value: items.take_bytes(1)?,
        },
        b'A' if items.len() == 2 => Observed::Acquired(Acquired {
            token: items.token(1)?,
            lease,
            resent: false,
        }),
        b'A' => Observed::Acquired(Acquired {
            token: items.token(1)?,
            lease: items.micros(2)?,
            resent: true,
        }),
        b'P' => Observed::InProgress(InFlight {
            token: items.token(1)?,
            fingerprint: items.fingerprint(2)?,
            lease_remaining: Some(items.micros(3)?),
            running_for: items.micros(4)?,
            abandoned: items.int(5)? == 1,
        }),
        other => return Err(items.unexpected(other)),
    })
}

/// A script's array answer: a one-letter tag, then fields.
struct Reply(Vec<Value>);

impl Reply {
    fn new(value: Value) -> Result<Self, StoreError> {
        match value {
            Value::Array(items) if !items.is_empty() => Ok(Reply(items)),
            other => Err(unexpected_reply(&other)),
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn tag(&self) -> Result<u8, StoreError> {
        match self.0.first() {
            Some(Value::BulkString(tag)) if tag.len() == 1 => Ok(tag[0]),
            Some(Value::SimpleString(tag)) if tag.len() == 1 => Ok(tag.as_bytes()[0]),
            _ => Err(self.malformed()),
        }
    }

    fn malformed(&self) -> StoreError {
        unexpected_reply(&Value::Array(self.0.clone()))
    }

    fn field(&self, at: usize) -> Result<&Value, StoreError> {
        self.0.get(at).ok_or_else(|| self.malformed())
    }

    fn bytes(&self, at: usize) -> Result<&[u8], StoreError> {
        match self.field(at)? {
            Value::BulkString(bytes) => Ok(bytes),
            Value::SimpleString(text) => Ok(text.as_bytes()),
            other => Err(unexpected_reply(other)),
        }
    }

    /// The bytes at `at`, moved out (no copy).
    fn take_bytes(&mut self, at: usize) -> Result<Vec<u8>, StoreError> {
        match self.0.get_mut(at) {
            Some(Value::BulkString(bytes)) => Ok(std::mem::take(bytes)),
            Some(Value::SimpleString(text)) => Ok(std::mem::take(text).into_bytes()),
            _ => Err(self.malformed()),
        }
    }

    fn int(&self, at: usize) -> Result<i64, StoreError> {
        match self.field(at)? {
            Value::Int(n) => Ok(*n),
            other => Err(unexpected_reply(other)),
        }
    }

    fn micros(&self, at: usize) -> Result<Duration, StoreError> {
        Ok(Duration::from_micros(self.int(at)?.max(0) as u64))
    }

    /// A fencing token: the record's decimal string (or a number).
    fn token(&self, at: usize) -> Result<u64, StoreError> {
        if let Value::Int(n) = self.field(at)? {
            return u64::try_from(*n).map_err(|_| StoreError::Codec {
                reason: format!("a fencing token is negative: {n}"),
            });
        }
        let bytes = self.bytes(at)?;
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| StoreError::Codec {
                reason: format!(
                    "a stored fencing token is not a number: {:?}",
                    String::from_utf8_lossy(bytes)
                ),
            })
    }

    fn fingerprint(&self, at: usize) -> Result<Option<Fingerprint>, StoreError> {
        let bytes = self.bytes(at)?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Codec {
            reason: format!("a stored fingerprint has {} bytes, not 16", bytes.len()),
        })?;
        Ok(Some(Fingerprint::from_bytes(bytes)))
    }

    fn unexpected(&self, tag: u8) -> StoreError {
        StoreError::Unavailable {
            reason: format!(
                "unexpected script answer tag {:?}: is another version of idemcache-redis writing under this prefix?",
                tag as char
            ),
            source: None,
        }
    }
}

fn unexpected_reply(value: &Value) -> StoreError {
    StoreError::Unavailable {
        reason: format!("unexpected answer from redis: {value:?}"),
        source: None,
    }
}

/// Whole milliseconds, at least 1.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
