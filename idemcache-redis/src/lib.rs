//! Idempotency records shared between the replicas of a service, on Redis
//! (a single server, a primary with replicas, or a Cluster): an
//! [`idemcache::store::Store`].
//!
//! A service runs several replicas behind a load balancer; a retry lands
//! on another replica and, with an in-process store, runs again.
//! [`RedisStore`] keeps the claims and records in Redis, so every replica
//! sees the same ones, and speaks the core's protocol by token: claim,
//! then complete, release, renew or abandon with the fencing token.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use idemcache::store::{ClaimId, ClaimOutcome, Store};
//! use idemcache_redis::{Raw, RedisStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: RedisStore<String, Raw> = RedisStore::builder("redis://127.0.0.1:6380")
//!     .prefix("orders")
//!     .lease(Duration::from_secs(30))
//!     .connect_with_codec(Raw)
//!     .await?;
//!
//! let key = "customer-42/order-7".to_string();
//! match store.claim(&key, None, ClaimId::random()).await? {
//!     ClaimOutcome::Acquired(claim) => {
//!         // Run the request once, passing a downstream idempotency key
//!         // derived from `key` (see "Durability" below), then:
//!         store.complete(&key, claim.token, "201 charged".to_string(), None).await?;
//!     }
//!     ClaimOutcome::Completed(replay) => println!("replay: {}", replay.value()),
//!     ClaimOutcome::InProgress(in_flight) => println!("409, Retry-After {:?}", in_flight.retry_after()),
//!     ClaimOutcome::Mismatch => println!("422"),
//!     ClaimOutcome::Full => println!("503"),
//!     _ => unreachable!("a future outcome"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! An error of any operation is a [`StoreError`](idemcache::store::StoreError):
//! [`Unavailable`](idemcache::store::StoreError::Unavailable) when Redis
//! is down or refused, [`Timeout`](idemcache::store::StoreError::Timeout)
//! when no answer came within the [response
//! timeout](RedisStoreBuilder::response_timeout) (the outcome is unknown:
//! resend the claim with the same [`ClaimId`](idemcache::store::ClaimId),
//! the complete with the same token), never a panic. An HTTP layer
//! answers both with 503.
//!
//! # Key layout
//!
//! One Redis hash per logical key, at `<prefix>:v1:{<encoded key>}`:
//!
//! | part | why |
//! |---|---|
//! | `<prefix>` | one namespace per service and stored type ([`RedisStoreBuilder::prefix`]); no braces |
//! | `v1` | the record format: a new format gets a new segment |
//! | `{<encoded key>}` | the whole logical key is the Cluster hash tag, so records spread over all slots; `%`, `{`, `}` are escaped as `%25`, `%7B`, `%7D`; an encoded key longer than [`max_key_len`](RedisStoreBuilder::max_key_len) (512 bytes) is [`InvalidKey`](idemcache::store::StoreError::InvalidKey) |
//!
//! The hash has four fields: the state (in progress, abandoned,
//! completed), the fingerprint, the fencing token, and the holder while
//! in progress (lease deadline from Redis `TIME`, start, claim id), which
//! the encoded value replaces on completion. Every operation is **one Lua
//! script touching that one key**, so it is atomic and Cluster-safe, with
//! no WATCH/MULTI, no second key and no global counter. The key's TTL is
//! the garbage collector: lease + [grace](RedisStoreBuilder::grace) while
//! in progress, the retention once completed (and a completed record's
//! time left is its `PTTL`). `release` deletes the record.
//!
//! # Fencing and ambiguous timeouts
//!
//! A claim's fencing token is `max(previous token + 1, server time in
//! µs)`, kept in the record: it increases per key without a counter key.
//! `complete`, `release`, `renew` and `abandon` check it by equality, so a
//! holder whose lease lapsed and whose key a newer claim took over changes
//! nothing ([`Fenced`](idemcache::Fenced)). The record also keeps the
//! claim id, so a claim resent after a lost answer gets the same
//! acquisition back (`Acquired { resent: true }`), and the completing
//! token, so a complete resent after a lost answer succeeds.
//!
//! # Memory
//!
//! Every script starts with a `#!lua` shebang, so Redis enforces
//! `maxmemory` on it. A claim is refused when Redis is out of memory, and
//! the store then peeks: a completed record is still replayed, a claim in
//! progress is still in progress (409), and only a free key answers
//! [`ClaimOutcome::Full`](idemcache::store::ClaimOutcome::Full) (503).
//! `complete`, `release`, `renew` and `abandon` run out of memory too
//! (`allow-oom`), so admitted claims can finish. Redis must not evict
//! records: the store checks `maxmemory-policy noeviction` on every
//! primary at connect and refuses otherwise
//! ([`EvictionPolicyCheck`]).
//!
//! # Durability
//!
//! A key executes at most once **while the primary keeps its data**.
//! What survives what:
//!
//! | event | records completed before it | claims in progress |
//! |---|---|---|
//! | a replica of the service crashes | kept | held until the lease lapses, then taken over |
//! | Redis restarts, no persistence | **lost**: their retries run again | lost: a retry may run while the first still runs |
//! | Redis restarts, AOF `appendfsync everysec` | kept, except up to ~1 s of writes before a crash | as records |
//! | Redis restarts, AOF `appendfsync always` | kept | kept |
//! | failover to a replica (asynchronous replication) | kept, except those not yet replicated (measured: see the README) | as records |
//! | failover with [`Durability::Replicas`] (`WAIT`) | kept once `complete` answered | not waited for |
//! | `maxmemory` reached (`noeviction`) | kept, replayed | kept; new claims answer `Full` |
//! | an operator `FLUSHALL` / key eviction | lost | lost |
//!
//! Run Redis with AOF (`appendfsync everysec` costs little; `always`
//! fsyncs every write) and, with replicas, choose
//! [`Durability::Replicas`] if a failover must not lose completions (it
//! costs the replication round trip on every complete, and blocks the
//! shared connection meanwhile). `WAITAOF`
//! ([`Durability::Aof`]) needs Redis 7.2; the store checks at connect.
//!
//! Because a record can still be lost, **pass a downstream idempotency key
//! derived from the request's key** to whatever the handler calls (a
//! payment provider, another service): if a lost record lets a retry run
//! again, the downstream call is still deduplicated there.
//!
//! # Local tier
//!
//! [`RedisStoreBuilder::local_tier`] puts an in-process
//! [`Cache`](idemcache::Cache) in front of Redis for **completed records
//! only**: a replay found there costs no round trip. Claims in progress,
//! abandoned claims and mismatches always go to Redis. Each copy lives
//! for the record's remaining retention but at most the cap, and that is
//! the trade-off: a record [removed](idemcache::store::Store::remove) on
//! one replica is still replayed by the other replicas for up to the cap.
//!
//! # Waiting across replicas
//!
//! A request that finds its key in progress may wait for the outcome
//! ([`wait_for_outcome`](idemcache::store::wait_for_outcome)) instead of
//! answering 409. Waiters poll `peek` (a read-only script, one round trip)
//! with capped exponential backoff and jitter, whichever replica holds
//! the key. (Keyspace notifications are not used: on Cluster they are
//! node-local, and they fire late.)
//!
//! Duplicates waiting on one key **in one process** share a local single
//! flight, so Redis sees the key polled once per backoff step, not once
//! per waiter:
//!
//! - Peeks of one key share round trips: a peek joins the one already on
//!   its way, so a process has at most one `peek` of a key outstanding
//!   ([`RedisStore::peek_round_trips`] counts them). The script is asked
//!   without a fingerprint and each caller applies its own (a live record
//!   with another fingerprint is a mismatch), so callers with different
//!   fingerprints share the round trip too.
//! - [`Store::changed`](idemcache::store::Store::changed) resolves when a
//!   round trip for the key brings an answer: the parked waiters wake,
//!   take that answer without asking again (it is at most 20 ms old), and
//!   back off in step. Whichever waiter's timer fires first leads the
//!   next poll; the others follow.
//! - A leader whose request is cancelled mid-flight hands over: a
//!   follower sends the round trip instead. One that is kept but never
//!   polled is replaced after the response timeout.
//! - A write through the store (claim, complete, release, renew, abandon,
//!   remove) discards what the process knew of the key and wakes its
//!   waiters: a holder completing in the same process releases its
//!   waiters at once, and a peek always sees its own process's writes.
//!
//! Measured (`tests/waiting.rs`): 32 duplicates waiting 1.5 s for a holder
//! on another replica made 12 peek round trips; polling each on its own,
//! they made 384. Sharded pub/sub as an early wake-up across replicas is
//! not implemented: a waiter on another replica than the holder learns of
//! the completion at its next poll (at most `max_poll` later, 500 ms by
//! default).
//!
//! # Feature flags
//!
//! | feature | adds |
//! |---|---|
//! | `cluster` | `RedisStore::cluster_builder` (redis-rs `cluster-async`) |
//! | `serde` | the [`Postcard`] codec and `RedisStoreBuilder::connect` |

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod codec;
mod conn;
mod error;
mod flight;
mod key;
mod local;
mod scripts;
mod store;

pub use builder::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_GRACE, DEFAULT_LEASE, DEFAULT_MAX_KEY_LEN, DEFAULT_PREFIX,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_RETENTION, Durability, EvictionPolicyCheck,
    RedisStoreBuilder,
};
#[cfg(feature = "serde")]
pub use codec::Postcard;
pub use codec::{Codec, CodecError, Raw};
pub use error::ConnectError;
pub use store::RedisStore;
