//! Why a store could not be built ([`ConnectError`]). Errors of store
//! operations are the core's [`StoreError`](idemcache::store::StoreError).

use std::error::Error;
use std::fmt;

/// Why [`RedisStoreBuilder::connect`](crate::RedisStoreBuilder::connect)
/// (or `connect_with_codec`) failed. Every message says what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// An option is invalid (an empty lease, a prefix with a brace, a
    /// malformed URL).
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached within the connect timeout, or
    /// refused the connection.
    Unavailable {
        /// What failed.
        reason: String,
        /// The underlying error, if any.
        source: Option<Box<dyn Error + Send + Sync>>,
    },
    /// A node's `maxmemory-policy` lets Redis evict keys: a record evicted
    /// under memory pressure is a request that runs twice. Set
    /// `maxmemory-policy noeviction`, or choose
    /// [`EvictionPolicyCheck::Warn`](crate::EvictionPolicyCheck::Warn).
    EvictionPolicy {
        /// The node (`host:port`).
        node: String,
        /// Its policy, or why it could not be read.
        policy: String,
    },
    /// The server lacks what an option needs (`WAITAOF` before Redis 7.2,
    /// say).
    Unsupported {
        /// The node (`host:port`).
        node: String,
        /// What is missing, and what to do.
        reason: String,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Config { reason } => write!(f, "invalid store configuration: {reason}"),
            ConnectError::Unavailable { reason, source } => match source {
                Some(source) => write!(f, "redis unavailable: {reason}: {source}"),
                None => write!(f, "redis unavailable: {reason}"),
            },
            ConnectError::EvictionPolicy { node, policy } => write!(
                f,
                "redis node {node} has maxmemory-policy {policy}: it may evict idempotency records under memory pressure, and an evicted record's request runs again; set `maxmemory-policy noeviction` (or build the store with EvictionPolicyCheck::Warn to accept the risk)"
            ),
            ConnectError::Unsupported { node, reason } => {
                write!(
                    f,
                    "redis node {node} cannot do what the store was configured for: {reason}"
                )
            }
        }
    }
}

impl Error for ConnectError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ConnectError::Unavailable {
                source: Some(source),
                ..
            } => Some(&**source),
            _ => None,
        }
    }
}
