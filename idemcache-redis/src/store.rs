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
use redis::{Cmd, Value};

use crate::builder::{Durability, RedisStoreBuilder};
use crate::codec::Codec;
use crate::conn::{Backend, is_oom, store_error, within};
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
}

impl<V, C: Codec<V>> RedisStore<V, C> {
    /// Runs one script within the response timeout.
    async fn eval(
        &self,
        operation: &'static str,
        script: &redis::Script,
        key: &[u8],
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let inner = &*self.inner;
        within(inner.timeout, async {
            inner
                .backend
                .eval(script, key, args)
                .await
                .map_err(|err| store_error(err, operation, inner.timeout))
        })
        .await
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

    /// What a `claim` or `peek` script answered.
    fn lookup_answer(&self, key: &str, answer: Value) -> Result<Looked<V>, StoreError> {
        let items = Reply::new(answer)?;
        Ok(match items.tag()? {
            b'M' => Looked::Mismatch,
            b'F' => Looked::Free,
            b'C' => {
                let bytes = items.bytes(1)?;
                let fingerprint = items.fingerprint(2)?;
                let expires_in = items.micros(3)?;
                let expires_at = SystemTime::now() + expires_in;
                let value = self
                    .inner
                    .codec
                    .decode(bytes)
                    .map_err(|err| StoreError::Codec {
                        reason: format!("decoding the stored value: {err}"),
                    })?;
                if let Some(local) = &self.inner.local {
                    let record = LocalRecord {
                        value: bytes.to_vec(),
                        fingerprint,
                        expires_at,
                    };
                    local.put(key, record, expires_in);
                }
                Looked::Completed(Replay::from_parts(
                    value,
                    fingerprint,
                    expires_in,
                    expires_at,
                ))
            }
            b'A' => Looked::Acquired(Acquired {
                token: items.token(1)?,
                lease: items.micros(2)?,
                resent: items.int(3)? == 1,
            }),
            b'P' => Looked::InProgress(InFlight {
                token: items.token(1)?,
                fingerprint: items.fingerprint(2)?,
                lease_remaining: Some(items.micros(3)?),
                running_for: items.micros(4)?,
                abandoned: items.int(5)? == 1,
            }),
            other => return Err(items.unexpected(other)),
        })
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
        let redis_key = self.inner.layout.redis_key(key)?;
        let fp = fingerprint_arg(fingerprint);
        let id = claim_id.as_u128().to_be_bytes();
        let lease_ms = millis(self.inner.lease).to_string();
        let grace_ms = millis(self.inner.grace).to_string();
        let args: [&[u8]; 4] = [&fp, &id, lease_ms.as_bytes(), grace_ms.as_bytes()];
        let inner = &*self.inner;
        let answer = within(inner.timeout, async {
            match inner.backend.eval(&SCRIPTS.claim, &redis_key, &args).await {
                Ok(answer) => Ok(Some(answer)),
                // Refused before it ran: Redis is out of memory.
                Err(err) if is_oom(&err) => Ok(None),
                Err(err) => Err(store_error(err, "claim", inner.timeout)),
            }
        })
        .await?;
        let looked = match answer {
            Some(answer) => self.lookup_answer(key, answer)?,
            None => {
                // Out of memory: no new claim, but what exists is still
                // answered (replays, 409s, 422s, and this claim's own
                // acquisition if an earlier send of it got in).
                let answer = self
                    .eval("peek", &SCRIPTS.peek, &redis_key, &[&fp, &id])
                    .await?;
                match self.lookup_answer(key, answer)? {
                    Looked::Free => return Ok(ClaimOutcome::Full),
                    looked => looked,
                }
            }
        };
        Ok(match looked {
            Looked::Acquired(acquired) => ClaimOutcome::Acquired(acquired),
            Looked::Completed(replay) => ClaimOutcome::Completed(replay),
            Looked::InProgress(in_flight) => ClaimOutcome::InProgress(in_flight),
            Looked::Mismatch => ClaimOutcome::Mismatch,
            Looked::Free => {
                return Err(StoreError::Unavailable {
                    reason: "the claim script answered `free`; is another version of the script loaded under this prefix?".into(),
                    source: None,
                });
            }
        })
    }

    async fn complete_record(
        &self,
        redis_key: Result<Vec<u8>, StoreError>,
        token: u64,
        value: Result<Vec<u8>, StoreError>,
        retention: Option<Duration>,
    ) -> Result<Completion, StoreError> {
        let redis_key = redis_key?;
        let value = value?;
        let token_arg = token.to_string();
        let retention_ms = millis(retention.unwrap_or(self.inner.retention)).to_string();
        let args: [&[u8]; 3] = [token_arg.as_bytes(), &value, retention_ms.as_bytes()];
        let answer = self
            .eval("complete", &SCRIPTS.complete, &redis_key, &args)
            .await?;
        let items = Reply::new(answer)?;
        let expires_in = match items.tag()? {
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

    /// Runs `release`, `abandon` (ARGV token) or `renew` (token, lease,
    /// grace) and answers the reply, or Fenced.
    async fn by_token(
        &self,
        operation: &'static str,
        script: &redis::Script,
        key: &str,
        token: u64,
    ) -> Result<Reply, StoreError> {
        let redis_key = self.inner.layout.redis_key(key)?;
        let token_arg = token.to_string();
        let lease_ms = millis(self.inner.lease).to_string();
        let grace_ms = millis(self.inner.grace).to_string();
        let args: [&[u8]; 3] = [
            token_arg.as_bytes(),
            lease_ms.as_bytes(),
            grace_ms.as_bytes(),
        ];
        let answer = self.eval(operation, script, &redis_key, &args).await?;
        let items = Reply::new(answer)?;
        match items.tag()? {
            b'X' => Err(Fenced::new(token).into()),
            _ => Ok(items),
        }
    }

    async fn end_by_token(
        &self,
        operation: &'static str,
        script: &redis::Script,
        key: &str,
        token: u64,
    ) -> Result<(), StoreError> {
        self.by_token(operation, script, key, token).await.map(drop)
    }

    async fn renew_record(&self, key: &str, token: u64) -> Result<Duration, StoreError> {
        self.by_token("renew", &SCRIPTS.renew, key, token)
            .await?
            .micros(1)
    }

    async fn peek_record(
        &self,
        key: &str,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Peek<V>, StoreError> {
        if let Some(replay) = self.local_replay(key, fingerprint) {
            return Ok(Peek::Completed(replay));
        }
        let redis_key = self.inner.layout.redis_key(key)?;
        let fp = fingerprint_arg(fingerprint);
        let answer = self
            .eval("peek", &SCRIPTS.peek, &redis_key, &[&fp, b""])
            .await?;
        Ok(match self.lookup_answer(key, answer)? {
            Looked::Completed(replay) => Peek::Completed(replay),
            Looked::InProgress(in_flight) => Peek::InProgress(in_flight),
            Looked::Mismatch => Peek::Mismatch,
            Looked::Free => Peek::Free,
            Looked::Acquired(acquired) => Peek::InProgress(InFlight {
                token: acquired.token,
                fingerprint,
                lease_remaining: Some(acquired.lease),
                running_for: Duration::ZERO,
                abandoned: false,
            }),
        })
    }

    async fn remove_record(&self, key: &str) -> Result<bool, StoreError> {
        if let Some(local) = &self.inner.local {
            local.remove(key);
        }
        let redis_key = self.inner.layout.redis_key(key)?;
        match self
            .eval("remove", &SCRIPTS.remove, &redis_key, &[])
            .await?
        {
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
        self.complete_record(redis_key, token, encoded, retention)
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

    // `changed` keeps the trait's default (never resolves): a waiter polls
    // `peek` with capped backoff and jitter (`wait_for_outcome`), which
    // works the same whichever replica holds the key.
}

/// What a `claim` or `peek` script answered.
enum Looked<V> {
    Acquired(Acquired),
    Completed(Replay<V>),
    InProgress(InFlight),
    Mismatch,
    Free,
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

    fn tag(&self) -> Result<u8, StoreError> {
        match self.0.first() {
            Some(Value::BulkString(tag)) if tag.len() == 1 => Ok(tag[0]),
            Some(Value::SimpleString(tag)) if tag.len() == 1 => Ok(tag.as_bytes()[0]),
            _ => Err(unexpected_reply(&Value::Array(self.0.clone()))),
        }
    }

    fn field(&self, at: usize) -> Result<&Value, StoreError> {
        self.0
            .get(at)
            .ok_or_else(|| unexpected_reply(&Value::Array(self.0.clone())))
    }

    fn bytes(&self, at: usize) -> Result<&[u8], StoreError> {
        match self.field(at)? {
            Value::BulkString(bytes) => Ok(bytes),
            Value::SimpleString(text) => Ok(text.as_bytes()),
            other => Err(unexpected_reply(other)),
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

    fn token(&self, at: usize) -> Result<u64, StoreError> {
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

/// A fingerprint as a script argument: its 16 bytes, or empty for none.
fn fingerprint_arg(fingerprint: Option<Fingerprint>) -> Vec<u8> {
    fingerprint.map_or_else(Vec::new, |fp| fp.to_bytes().to_vec())
}

/// Whole milliseconds, at least 1.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
