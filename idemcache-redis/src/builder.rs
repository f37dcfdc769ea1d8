//! [`RedisStoreBuilder`]: every option, its default, and connecting.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Value};

use crate::codec::Codec;
use crate::conn::Backend;
use crate::error::ConnectError;
use crate::flight::Flights;
use crate::key::{KeyLayout, check_prefix};
use crate::local::LocalTier;
use crate::store::{Inner, RedisStore, millis};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "idemcache";
/// The default lease of a claim: 60 s, as the core's.
pub const DEFAULT_LEASE: Duration = idemcache::DEFAULT_LEASE;
/// The default retention of a completed record: 24 h, as the core's.
pub const DEFAULT_RETENTION: Duration = idemcache::DEFAULT_TIME_TO_LIVE;
/// How long a lapsed claim's record outlives its lease by default: 30 s.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// The default cap on an encoded key's length: 512 bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 512;
/// The default connect timeout: 1 s (redis-rs' own default, made explicit).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The default response timeout: 500 ms (redis-rs' own default, made
/// explicit).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// What to do when a node's `maxmemory-policy` is not `noeviction`
/// (checked once, at connect, on every primary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvictionPolicyCheck {
    /// Refuse to connect with [`ConnectError::EvictionPolicy`] (the
    /// default), also when the policy cannot be read (`CONFIG` renamed or
    /// forbidden, as on some managed services).
    #[default]
    Refuse,
    /// Connect, and write one warning line to standard error per node.
    Warn,
    /// Do not check.
    Skip,
}

/// How durable a completion must be before
/// [`complete`](idemcache::store::Store::complete) answers: what Redis must
/// have acknowledged, on the connection that wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// The primary applied it (the default): lost if the primary dies
    /// before replicating it, or restarts without an fsynced AOF.
    #[default]
    Primary,
    /// `WAIT replicas timeout` after the write: at least `replicas`
    /// replicas received it. Fewer within `timeout` answers
    /// [`StoreError::Unavailable`](idemcache::store::StoreError::Unavailable)
    /// (the record is stored on the primary; resending the complete with
    /// the same token succeeds and waits again).
    Replicas {
        /// How many replicas must acknowledge.
        replicas: u32,
        /// How long to wait for them.
        timeout: Duration,
    },
    /// `WAITAOF local replicas timeout` (Redis 7.2+, checked at connect):
    /// the write is fsynced to the AOF of the primary (`local` 1, which
    /// needs `appendonly yes`) and of `replicas` replicas. Shortfalls as
    /// for [`Replicas`](Self::Replicas).
    Aof {
        /// 1 to require the primary's own fsync, 0 not to.
        local: u32,
        /// How many replicas must have fsynced it.
        replicas: u32,
        /// How long to wait.
        timeout: Duration,
    },
}

/// Where the store connects.
#[derive(Clone, Debug)]
enum Target {
    Single(String),
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
}

/// Configures and connects a [`RedisStore`]. Made by
/// [`RedisStore::builder`] (one server) or `RedisStore::cluster_builder`
/// (feature `cluster`).
///
/// | option | default |
/// |---|---|
/// | [`prefix`](Self::prefix) | `"idemcache"` ([`DEFAULT_PREFIX`]) |
/// | [`lease`](Self::lease) | 60 s ([`DEFAULT_LEASE`]) |
/// | [`retention`](Self::retention) | 24 h ([`DEFAULT_RETENTION`]) |
/// | [`grace`](Self::grace) | 30 s ([`DEFAULT_GRACE`]) |
/// | [`max_key_len`](Self::max_key_len) | 512 bytes ([`DEFAULT_MAX_KEY_LEN`]) |
/// | [`connect_timeout`](Self::connect_timeout) | 1 s ([`DEFAULT_CONNECT_TIMEOUT`]) |
/// | [`response_timeout`](Self::response_timeout) | 500 ms ([`DEFAULT_RESPONSE_TIMEOUT`]) |
/// | [`eviction_policy_check`](Self::eviction_policy_check) | [`Refuse`](EvictionPolicyCheck::Refuse) |
/// | [`durability`](Self::durability) | [`Primary`](Durability::Primary) |
/// | [`local_tier`](Self::local_tier) | none |
///
/// ```no_run
/// use std::time::Duration;
/// use idemcache_redis::{Raw, RedisStore};
///
/// # async fn run() -> Result<(), idemcache_redis::ConnectError> {
/// let store: RedisStore<String, Raw> = RedisStore::builder("redis://127.0.0.1:6380")
///     .prefix("orders")
///     .lease(Duration::from_secs(30))
///     .retention(Duration::from_secs(24 * 3600))
///     .response_timeout(Duration::from_millis(250))
///     .connect_with_codec(Raw)
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until connected"]
pub struct RedisStoreBuilder {
    target: Target,
    prefix: String,
    lease: Duration,
    retention: Duration,
    grace: Duration,
    max_key_len: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    eviction_policy_check: EvictionPolicyCheck,
    durability: Durability,
    local_tier: Option<(Duration, usize)>,
}

impl RedisStoreBuilder {
    pub(crate) fn single(url: String) -> Self {
        Self::new(Target::Single(url))
    }

    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(nodes: Vec<String>) -> Self {
        Self::new(Target::Cluster(nodes))
    }

    fn new(target: Target) -> Self {
        RedisStoreBuilder {
            target,
            prefix: DEFAULT_PREFIX.to_string(),
            lease: DEFAULT_LEASE,
            retention: DEFAULT_RETENTION,
            grace: DEFAULT_GRACE,
            max_key_len: DEFAULT_MAX_KEY_LEN,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            eviction_policy_check: EvictionPolicyCheck::default(),
            durability: Durability::default(),
            local_tier: None,
        }
    }

    /// The namespace of every key: `<prefix>:v1:{<key>}`. One per service
    /// (and per stored type); no `{` or `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a claim holds its key unless renewed (non-zero;
    /// millisecond resolution). Measured on the server's clock.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a completed record is kept when
    /// [`complete`](idemcache::store::Store::complete) names no retention.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long a claim's record outlives its lease (the key's TTL is
    /// lease + grace while in progress). The record of a lapsed claim is
    /// free to take over; keeping it a while keeps its fencing token, so a
    /// late holder is answered [`Fenced`](idemcache::Fenced) from the
    /// record rather than from its absence. Zero is allowed.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The cap on a key's encoded length (bytes, after escaping braces); a
    /// longer key is refused with
    /// [`StoreError::InvalidKey`](idemcache::store::StoreError::InvalidKey).
    pub fn max_key_len(mut self, max_key_len: usize) -> Self {
        self.max_key_len = max_key_len;
        self
    }

    /// How long connecting (and each reconnection attempt) may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long any one operation may wait for its answer (non-zero): past
    /// it, the operation answers
    /// [`StoreError::Timeout`](idemcache::store::StoreError::Timeout) (its
    /// outcome unknown: resend it). With [`Durability::Replicas`] or
    /// [`Durability::Aof`], make it longer than their timeout.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// What to do when a node may evict keys (see
    /// [`EvictionPolicyCheck`]).
    pub fn eviction_policy_check(mut self, check: EvictionPolicyCheck) -> Self {
        self.eviction_policy_check = check;
        self
    }

    /// What a completion waits for (see [`Durability`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Puts an in-process [`Cache`](idemcache::Cache) of at most
    /// `max_entries` **completed** records in front of Redis, each kept for
    /// the record's remaining retention but at most `cap`. A replay found
    /// there costs no round trip; claims in progress and mismatches always
    /// go to Redis. The trade-off: a record
    /// [removed](idemcache::store::Store::remove) on one replica is still
    /// replayed by the others for up to `cap`.
    pub fn local_tier(mut self, cap: Duration, max_entries: usize) -> Self {
        self.local_tier = Some((cap, max_entries));
        self
    }

    /// Connects, with `codec` for values.
    ///
    /// # Errors
    ///
    /// [`ConnectError`]: an invalid option, the server unreachable within
    /// the connect timeout, a node that may evict keys (unless
    /// [allowed](Self::eviction_policy_check)), or a durability the server
    /// cannot give.
    pub async fn connect_with_codec<V, C: Codec<V>>(
        self,
        codec: C,
    ) -> Result<RedisStore<V, C>, ConnectError> {
        self.check()?;
        let backend = match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(backend) => backend?,
            Err(_) => {
                return Err(ConnectError::Unavailable {
                    reason: format!(
                        "no connection within the connect timeout ({:?})",
                        self.connect_timeout
                    ),
                    source: None,
                });
            }
        };
        let policies = self.check_eviction_policy(&backend).await?;
        self.check_durability(&backend).await?;
        let local =
            match self.local_tier {
                Some((cap, max_entries)) => Some(LocalTier::new(cap, max_entries).map_err(
                    |err| ConnectError::Config {
                        reason: format!("local tier: {err}"),
                    },
                )?),
                None => None,
            };
        Ok(RedisStore::from_inner(Arc::new(Inner {
            backend,
            layout: KeyLayout::new(&self.prefix, self.max_key_len),
            codec,
            lease: self.lease,
            retention: self.retention,
            grace: self.grace,
            timeout: self.response_timeout,
            durability: self.durability,
            local,
            eviction_policies: policies,
            lease_ms: millis(self.lease),
            grace_ms: millis(self.grace),
            retention_ms: millis(self.retention),
            flights: Flights::new(),
        })))
    }

    /// Connects, with the [`Postcard`](crate::Postcard) codec: any
    /// `Serialize + DeserializeOwned` value.
    ///
    /// # Errors
    ///
    /// As [`connect_with_codec`](Self::connect_with_codec).
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub async fn connect<V>(self) -> Result<RedisStore<V, crate::Postcard>, ConnectError>
    where
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.connect_with_codec(crate::Postcard).await
    }

    fn check(&self) -> Result<(), ConnectError> {
        let config = |reason: String| Err(ConnectError::Config { reason });
        check_prefix(&self.prefix).or_else(config)?;
        if self.lease < Duration::from_millis(1) {
            return config(format!(
                "the lease must be at least 1 ms, not {:?}",
                self.lease
            ));
        }
        if self.retention < Duration::from_millis(1) {
            return config(format!(
                "the retention must be at least 1 ms, not {:?}",
                self.retention
            ));
        }
        if self.response_timeout.is_zero() || self.connect_timeout.is_zero() {
            return config("timeouts must be non-zero".into());
        }
        let wait = match self.durability {
            Durability::Primary => None,
            Durability::Replicas { timeout, .. } | Durability::Aof { timeout, .. } => Some(timeout),
        };
        if let Some(wait) = wait {
            if wait.is_zero() || wait >= self.response_timeout {
                return config(format!(
                    "the durability wait ({wait:?}) must be non-zero (0 would block forever) and shorter than the response timeout ({:?})",
                    self.response_timeout
                ));
            }
        }
        if let Durability::Aof { local, .. } = self.durability {
            if local > 1 {
                return config(format!("WAITAOF's local count is 0 or 1, not {local}"));
            }
        }
        Ok(())
    }

    async fn open(&self) -> Result<Backend, ConnectError> {
        let unavailable = |reason: &str, err: redis::RedisError| ConnectError::Unavailable {
            reason: reason.to_string(),
            source: Some(Box::new(err)),
        };
        match &self.target {
            Target::Single(url) => {
                let client =
                    redis::Client::open(url.as_str()).map_err(|err| ConnectError::Config {
                        reason: format!("redis URL {url:?}: {err}"),
                    })?;
                let address = client.get_connection_info().addr().to_string();
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_number_of_retries(3)
                    .set_max_delay(Duration::from_millis(500));
                let connection = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|err| unavailable(&format!("connecting to {address}"), err))?;
                Ok(Backend::Single {
                    connection,
                    address,
                })
            }
            #[cfg(feature = "cluster")]
            Target::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .retries(2)
                    .build()
                    .map_err(|err| ConnectError::Config {
                        reason: format!("cluster nodes {nodes:?}: {err}"),
                    })?;
                let connection = client
                    .get_async_connection()
                    .await
                    .map_err(|err| unavailable("connecting to the cluster", err))?;
                Ok(Backend::Cluster(connection))
            }
        }
    }

    /// Reads `maxmemory-policy` on every primary; answers (node, policy).
    async fn check_eviction_policy(
        &self,
        backend: &Backend,
    ) -> Result<Vec<(String, String)>, ConnectError> {
        let check = self.eviction_policy_check;
        if check == EvictionPolicyCheck::Skip {
            return Ok(Vec::new());
        }
        let mut cmd = Cmd::new();
        cmd.arg("CONFIG").arg("GET").arg("maxmemory-policy");
        let answers = within(self.response_timeout, backend.on_every_primary(&cmd)).await?;
        let mut policies = Vec::new();
        for (node, answer) in answers {
            let policy = match answer {
                Ok(value) => config_value(&value)
                    .unwrap_or_else(|| format!("unknown (unexpected CONFIG GET answer {value:?})")),
                Err(err) => format!("unknown (CONFIG GET failed: {err})"),
            };
            if policy != "noeviction" {
                match check {
                    EvictionPolicyCheck::Refuse => {
                        return Err(ConnectError::EvictionPolicy { node, policy });
                    }
                    _ => eprintln!(
                        "idemcache-redis: warning: {}",
                        ConnectError::EvictionPolicy {
                            node: node.clone(),
                            policy: policy.clone(),
                        }
                    ),
                }
            }
            policies.push((node, policy));
        }
        Ok(policies)
    }

    /// Checks that every primary can give the configured durability.
    async fn check_durability(&self, backend: &Backend) -> Result<(), ConnectError> {
        let Durability::Aof { local, .. } = self.durability else {
            return Ok(());
        };
        let mut info = Cmd::new();
        info.arg("INFO").arg("server");
        let versions = within(self.response_timeout, backend.on_every_primary(&info)).await?;
        for (node, answer) in versions {
            let version = answer
                .ok()
                .and_then(|value| text(&value))
                .and_then(|info| {
                    info.lines()
                        .find_map(|line| line.strip_prefix("redis_version:"))
                        .map(|v| v.trim().to_string())
                })
                .unwrap_or_else(|| "an unknown version".to_string());
            let mut probe = Cmd::new();
            probe.arg("COMMAND").arg("INFO").arg("WAITAOF");
            let known = match within(self.response_timeout, backend.on_key_node_of(&probe, &node))
                .await
            {
                Ok(Value::Array(items)) => items.first().is_some_and(|item| *item != Value::Nil),
                _ => false,
            };
            if !known {
                return Err(ConnectError::Unsupported {
                    node,
                    reason: format!(
                        "Durability::Aof needs WAITAOF, which Redis added in 7.2; this node runs {version}. Upgrade, or use Durability::Replicas (WAIT) with appendfsync always on the replicas"
                    ),
                });
            }
            if local > 0 {
                let mut cmd = Cmd::new();
                cmd.arg("CONFIG").arg("GET").arg("appendonly");
                if let Ok(value) =
                    within(self.response_timeout, backend.on_key_node_of(&cmd, &node)).await
                {
                    if config_value(&value).as_deref() == Some("no") {
                        return Err(ConnectError::Unsupported {
                            node,
                            reason: "Durability::Aof with local 1 needs `appendonly yes`".into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// `call` within `timeout`, its errors as connect errors.
async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(ConnectError::Unavailable {
            reason: "checking the server's configuration".into(),
            source: Some(Box::new(err)),
        }),
        Err(_) => Err(ConnectError::Unavailable {
            reason: format!(
                "no answer within the response timeout ({timeout:?}) while checking the server's configuration"
            ),
            source: None,
        }),
    }
}

/// The value of a one-parameter `CONFIG GET` answer (RESP2 or RESP3).
fn config_value(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) if items.len() == 2 => text(&items[1]),
        Value::Map(pairs) if pairs.len() == 1 => text(&pairs[0].1),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}
