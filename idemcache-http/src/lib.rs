//! # idemcache-http
//!
//! An `Idempotency-Key` layer for tower and axum servers, speaking the IETF
//! draft (`draft-ietf-httpapi-idempotency-key-header`), on any
//! [`idemcache::store::Store`]: retries of an unsafe request with the same
//! key run it once and replay its first response. With the `reqwest`
//! feature, the [client] that retries with one key per logical request.
//!
//! ## One line for axum
//!
//! ```
//! use axum::{Router, routing::post};
//! use idemcache::Cache;
//! use idemcache_http::{IdempotencyLayer, Scope, ScopedKey, StoredResponse};
//!
//! # fn app() -> Result<Router, idemcache::BuildError> {
//! let store: Cache<ScopedKey, StoredResponse> = Cache::builder().max_entries(1_000_000).build()?;
//! let app = Router::new()
//!     .route("/charges", post(|| async { "charged" }))
//!     .layer(IdempotencyLayer::scoped(store, |parts: &http::request::Parts| {
//!         // A digest of the principal, never the credential itself.
//!         parts.headers.get("authorization").map_or_else(Scope::anonymous, |c| Scope::of([c.as_bytes()]))
//!     }));
//! # Ok(app) }
//! ```
//!
//! ## What it does by default
//!
//! POST and PATCH are protected; other methods pass through.
//!
//! | situation | answer |
//! |---|---|
//! | no `Idempotency-Key`, a repeated one, or a malformed one (empty, over 255 bytes, not an RFC 8941 string or token of visible ASCII, a comma) | **400** problem |
//! | request body over 1 MiB | **413** problem, handler not run |
//! | request body that cannot be read | **400** problem |
//! | first request with the key | the handler runs once, **detached** from the connection; its response is returned as it came |
//! | handler answered 2xx or 4xx | stored (status, allow-listed headers, body) and replayed to retries with `Idempotent-Replayed: true` |
//! | handler answered 5xx | returned, nothing kept: the key is released and a retry runs again |
//! | handler panicked, or its response streams or is over 1 MiB | returned (500 for a panic); outcome unknown, so the key stays held until its lease lapses |
//! | the key was used for another request (method, path, query or body differ) | **422** problem, checked before "in progress" ([`MismatchStatus`] for 400 or 409) |
//! | the first request is still running | **409** problem with `Retry-After` of 1–5 s (from how long it has run); opt-in: wait for it and replay ([`IdempotencyLayerBuilder::wait_for_in_flight`]) |
//! | store full or unavailable | **503** problem with `Retry-After: 1`: fail closed |
//! | shutting down ([`ShutdownHandle::shutdown`]) | **503** problem with `Retry-After: 1` |
//! | the handler outlived its lease and another request took the key over | answered with what the key holds now (a replay, or 409) |
//!
//! Problems are `application/problem+json` (RFC 9457: `type`, `title`,
//! `status`, `detail`), with the draft's titles. Stored headers are, by
//! default, [`DEFAULT_STORED_HEADERS`] (`Content-Type`, `Location`, `ETag`,
//! ...): never `Set-Cookie`, `Date` or hop-by-hop headers.
//!
//! ## Exactly once, as servers fail
//!
//! - **A client that disconnects** drops its request, not the handler: the
//!   work goes on (on a task of its own from that moment), its response is
//!   stored, and the retry replays it.
//! - **A slow handler** keeps its key: its lease is renewed every third of
//!   a lease while it runs, up to [`IdempotencyLayerBuilder::renew_ceiling`]
//!   (10 minutes).
//! - **A full or unreachable store** answers 503 before anything runs.
//! - **A crash** mid-request leaves the claim to lapse: no retry runs
//!   before the lease ends.
//! - **Several replicas** need a shared store (`idemcache-redis`); the
//!   in-process `Cache` protects one process. Use the default
//!   `CapacityPolicy::Refuse` with a bounded `Cache`: the opt-in
//!   `EvictSoonest` forgets live records when full.
//!
//! ## Graceful shutdown
//!
//! Handlers run detached, so the server's own graceful shutdown does not
//! wait for them: see [`ShutdownHandle`].
//!
//! ## Events
//!
//! [`IdempotencyLayerBuilder::on_event`] sees every decision ([`Event`]),
//! for `tracing` or `metrics` without depending on either.
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod client;
mod config;
mod event;
mod key;
#[cfg(feature = "tower")]
mod layer;
mod problem;
mod shutdown;
mod stored;

pub use body::Body;
pub use config::{ConfigError, MismatchStatus, default_fingerprint};
pub use event::{Event, EventKind};
pub use key::{KeyError, MAX_KEY_LEN, Scope, ScopedKey, parse_key};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{IdempotencyLayer, IdempotencyLayerBuilder, IdempotencyService, ResponseFuture};
pub use problem::Problem;
pub use shutdown::ShutdownHandle;
pub use stored::{DEFAULT_STORED_HEADERS, DecodeError, StoredResponse};

/// The in-process store for the layer: `idemcache::Cache` keyed by
/// [`ScopedKey`], holding [`StoredResponse`]s.
///
/// ```
/// use idemcache_http::{IdempotencyLayer, MemoryStore};
///
/// let store = MemoryStore::builder().max_entries(1_000_000).build()?;
/// let layer = IdempotencyLayer::unscoped(store);
/// # Ok::<(), idemcache::BuildError>(())
/// ```
pub type MemoryStore = idemcache::Cache<ScopedKey, StoredResponse>;

/// The errors bodies carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
