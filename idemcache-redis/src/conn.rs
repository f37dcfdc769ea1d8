//! The connection: one multiplexed [`ConnectionManager`] (or a Cluster
//! connection, one multiplexed connection per node), shared by every task
//! of the process. No pool: Redis runs one command at a time per node
//! anyway, and pipelining many tasks' commands on one socket is what
//! makes a claim cost one round trip under load.
//!
//! Every call is bounded by the store's response timeout here, around
//! whatever redis-rs does (its own timeout, reconnecting), so a caller
//! never waits longer than it asked for; the error is typed:
//! [`StoreError::Timeout`] when the outcome is unknown,
//! [`StoreError::Unavailable`] when it did not happen.

use std::time::Duration;

use idemcache::store::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, RedisError, Script, Value};

/// A connection to a single server or a Cluster; cheap to clone (clones
/// share the socket).
#[derive(Clone)]
pub(crate) enum Backend {
    Single {
        connection: ConnectionManager,
        /// `host:port`, for messages.
        address: String,
    },
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Backend {
    /// Runs `call` (made by [`script_call`]) of `script`. A server (or
    /// Cluster node) that does not know the script yet answers
    /// `NOSCRIPT`: the script is loaded and the call sent again, as
    /// redis-rs' `ScriptInvocation` does (once per script and node, not
    /// per call).
    pub(crate) async fn run_script(
        &self,
        script: &Script,
        call: &Cmd,
    ) -> Result<Value, RedisError> {
        match self {
            Backend::Single { connection, .. } => {
                query_loading_script(&mut connection.clone(), script, call).await
            }
            #[cfg(feature = "cluster")]
            Backend::Cluster(connection) => {
                query_loading_script(&mut connection.clone(), script, call).await
            }
        }
    }

    /// Sends `cmd` (a keyless command such as `WAIT`) on the connection to
    /// the primary that holds `key`: the connection the key's write went
    /// through.
    pub(crate) async fn on_key_node(&self, cmd: &Cmd, key: &[u8]) -> Result<Value, RedisError> {
        match self {
            // One server: the multiplexed connection every write uses.
            Backend::Single { connection, .. } => {
                let _ = key;
                cmd.query_async(&mut connection.clone()).await
            }
            #[cfg(feature = "cluster")]
            Backend::Cluster(connection) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                connection
                    .clone()
                    .route_command(cmd.clone(), routing)
                    .await?
                    .extract_error()
            }
        }
    }

    /// Sends `cmd` to the node at `address` (as
    /// [`on_every_primary`](Self::on_every_primary) names it).
    pub(crate) async fn on_key_node_of(
        &self,
        cmd: &Cmd,
        address: &str,
    ) -> Result<Value, RedisError> {
        match self {
            Backend::Single { connection, .. } => {
                let _ = address;
                cmd.query_async(&mut connection.clone()).await
            }
            #[cfg(feature = "cluster")]
            Backend::Cluster(connection) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let (host, port) = address.rsplit_once(':').ok_or_else(|| {
                    RedisError::from((
                        redis::ErrorKind::Client,
                        "a node address without a port",
                        address.to_string(),
                    ))
                })?;
                let port = port.parse().map_err(|_| {
                    RedisError::from((
                        redis::ErrorKind::Client,
                        "a node address with an invalid port",
                        address.to_string(),
                    ))
                })?;
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_string(),
                    port,
                });
                connection
                    .clone()
                    .route_command(cmd.clone(), routing)
                    .await?
                    .extract_error()
            }
        }
    }

    /// Sends `cmd` to every primary; answers per node address.
    pub(crate) async fn on_every_primary(
        &self,
        cmd: &Cmd,
    ) -> Result<Vec<(String, Result<Value, RedisError>)>, RedisError> {
        match self {
            Backend::Single {
                connection,
                address,
            } => {
                let answer = cmd.query_async(&mut connection.clone()).await;
                Ok(vec![(address.clone(), answer)])
            }
            #[cfg(feature = "cluster")]
            Backend::Cluster(connection) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let answers = connection
                    .clone()
                    .route_command(cmd.clone(), routing)
                    .await?;
                let Value::Map(answers) = answers else {
                    return Ok(vec![("cluster".to_string(), Ok(answers))]);
                };
                Ok(answers
                    .into_iter()
                    .map(|(node, answer)| {
                        let node = match node {
                            Value::BulkString(bytes) => {
                                String::from_utf8_lossy(&bytes).into_owned()
                            }
                            other => format!("{other:?}"),
                        };
                        (node, answer.extract_error())
                    })
                    .collect())
            }
        }
    }
}

/// An `EVALSHA` of `script` on `key` (its only key), sized for `args`
/// more arguments of about `args_len` bytes in all, which the caller
/// appends (`Cmd::arg` encodes numbers without allocating). One buffer per
/// call: the key and arguments are written once, straight into the
/// command.
pub(crate) fn script_call(script: &Script, key: &[u8], args: usize, args_len: usize) -> Cmd {
    let mut call = Cmd::with_capacity(4 + args, 48 + key.len() + args_len);
    call.arg("EVALSHA").arg(script.get_hash()).arg(1).arg(key);
    call
}

fn is_noscript(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Whether Redis refused a write because it is out of memory.
pub(crate) fn is_oom(err: &RedisError) -> bool {
    err.code() == Some("OOM")
}

/// The store error for a failed call of `operation`.
pub(crate) fn store_error(err: RedisError, operation: &str, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        return StoreError::Timeout { after: timeout };
    }
    let reason = if is_oom(&err) {
        format!("redis refused {operation}: out of memory (maxmemory reached)")
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        format!(
            "redis connection failed during {operation}; the outcome is unknown if it was a write, resend it"
        )
    } else {
        format!("redis {operation} failed")
    };
    StoreError::unavailable(reason, err)
}

/// Runs `call` within `timeout`; no answer in time is
/// [`StoreError::Timeout`].
pub(crate) async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_elapsed) => Err(StoreError::Timeout { after: timeout }),
    }
}

/// Runs `call` (an `EVALSHA` of `script`); if the server does not know the
/// script (`NOSCRIPT`: restarted, flushed, or a new cluster node), loads it
/// and runs `call` once more.
async fn query_loading_script<C: ConnectionLike + Send>(
    connection: &mut C,
    script: &Script,
    call: &Cmd,
) -> Result<Value, RedisError> {
    match call.query_async(connection).await {
        Err(err) if is_noscript(&err) => {
            script.load_async(connection).await?;
            call.query_async(connection).await
        }
        answer => answer,
    }
}
