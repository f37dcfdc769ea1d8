//! # idemcache
//!
//! The memory that makes retried requests safe, embedded in your process.
//!
//! A client retries after a timeout or a 500; without protection the server
//! charges twice. With an idempotency key the server remembers the outcome of
//! the first request under the key and replays it. `idemcache` is that
//! memory: a sharded concurrent map from keys to results, with exact TTL
//! expiry and a single-flight [`get_or_compute`](Cache::get_or_compute), so
//! concurrent duplicates run the work once.
//!
//! ## Quick start
//!
//! ```
//! use std::time::Duration;
//! use idemcache::Cache;
//!
//! #[derive(Clone, Debug, PartialEq)]
//! struct Receipt { charge_id: u64, amount_cents: u64 }
//!
//! let cache: Cache<String, Receipt> = Cache::builder()
//!     .time_to_live(Duration::from_secs(24 * 3600)) // keep outcomes a day
//!     .max_entries(1_000_000)                        // hard memory bound
//!     .build()?;
//!
//! fn charge(amount_cents: u64) -> Result<Receipt, String> {
//!     Ok(Receipt { charge_id: 1, amount_cents })
//! }
//!
//! // Every attempt of one logical request carries the same key.
//! let key = "5f1c7a0e-charge-42".to_string();
//! let first = cache.get_or_compute(key.clone(), || charge(4200))?;
//! let retry = cache.get_or_compute(key.clone(), || charge(4200))?; // replayed
//! assert_eq!(first, retry);
//! assert_eq!(cache.stats().computations, 1); // charged once
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Scope keys to the caller (for example `(tenant_id, key)` tuples as `K`):
//! an unscoped key lets one client replay another's response.
//!
//! ## Concurrent calls on the same key
//!
//! [`Cache::get_or_compute`] and [`Cache::get_or_compute_async`] form one
//! single-flight mechanism:
//!
//! - **One computation per key at a time**, across all clones of the cache,
//!   blocking and async callers together. A live value is returned without
//!   calling the closure; otherwise one caller (the leader) runs its closure
//!   and the others wait: blocked without spinning, or pending with a
//!   registered waker. They never run their closures if the leader succeeds.
//! - **Only `Ok` is stored.** On `Ok(v)`, `v` is stored with the default TTL
//!   and every waiter returns a clone. On `Err(e)` nothing is stored, the
//!   leader alone gets `e`, and one waiter becomes the new leader and runs
//!   its own closure. A panicking closure, or a dropped async leader, hands
//!   over the same way; no lock is poisoned and no waiter hangs.
//! - **No user code under a lock.** Closures run with no shard lock held and
//!   may use the cache for other keys; different keys never wait on each
//!   other. (`Hash`, `Eq` and `Clone` of keys and values do run under the
//!   shard lock: keep them cheap, and wrap large values in `Arc`.)
//! - **Invalidation wins.** A `remove`, `clear` or newer `insert` of the key
//!   while its computation runs is not undone by the late result: the
//!   leader and waiters still receive the value, but it is not stored.
//!
//! ## Protocol
//!
//! [`Cache::claim`] is the idempotency-key protocol of the IETF
//! `Idempotency-Key` draft and Stripe, done in one atomic call. A handler
//! maps each outcome to a response:
//!
//! | situation | outcome | HTTP status |
//! |---|---|---|
//! | key missing or malformed (empty, too long, repeated header) | (checked before `claim`) | **400** |
//! | first request with this key | [`Claim::Acquired`]: run the handler once, then [`Reservation::complete`] | the handler's own |
//! | a retry of a finished request | [`Claim::Completed`]: replay [`Replay::value`], add [`Replay::HEADER`] (`Idempotent-Replayed: true`), and [`Replay::expires_at`] for an expiry header | the stored one |
//! | the same request is still running (or its holder gave up and the lease has not lapsed) | [`Claim::InProgress`]: **409** with `Retry-After: `[`Pending::retry_after`], or wait with [`Pending::wait_timeout`] / [`Pending::wait_async`] and fall back to 409 | **409** |
//! | the key was used for a different request | [`Claim::Mismatch`] (checked before "in progress") | **422** |
//! | the store cannot take the claim | [`Claim::Full`]: fail closed | **503** |
//! | the record expired | a new request: [`Claim::Acquired`] | |
//!
//! - **Fingerprints.** Pass a [`Fingerprint`] of what identifies the
//!   request (method, route, body): [`Fingerprint::of`] is a documented,
//!   stable 128-bit digest of length-prefixed parts, so it can be persisted
//!   and shared between replicas. Records written without one (by `insert` or
//!   `get_or_compute`) match any request.
//! - **Outcomes.** [`Reservation::complete`] stores the result for the
//!   time-to-live ([`Reservation::complete_with_ttl`] for another retention),
//!   wakes waiters with it, and says whether it was stored
//!   ([`Completion`]). A failure before any side effect is reported by
//!   [`Reservation::release`]: nothing is kept and a retry runs at once. A
//!   terminal failure that must be replayed is just a completed value (a
//!   response with an error status).
//! - **Fail closed.** A reservation dropped unfinished (unwinding from a
//!   panic, or the future that holds it dropped because the client
//!   disconnected) or [abandoned](Reservation::abandon) leaves its outcome
//!   unknown: nothing is stored and the key stays held until the lease
//!   lapses, as if the process had crashed. Retries get
//!   [`Claim::InProgress`] ([`Pending::is_abandoned`]) and never run the
//!   request twice meanwhile; waiters are told at once
//!   ([`Waited::Abandoned`]).
//! - **Leases and fencing.** A claim holds its key for the
//!   [lease](CacheBuilder::lease) (60 s by default, separate from the
//!   retention), renewable with [`Reservation::renew`]. Once it lapses, a new
//!   claim may take the key over; every reservation carries a fencing
//!   [token](Reservation::token) that increases per key, and a stale
//!   reservation's `complete` or `renew` fails with [`StaleReservation`]
//!   without touching the newer claim or its result.
//! - **Capacity.** In a bounded cache, claims in progress hold room and are
//!   never evicted. Under the default [`CapacityPolicy::Refuse`], completed
//!   records are never evicted before they expire either: a full cache
//!   reclaims expired records and lapsed claims, and otherwise answers
//!   [`Claim::Full`]. [`CapacityPolicy::EvictSoonest`] is for pure caches.
//! - **Shared stores.** The [`store::Store`] trait speaks the same protocol
//!   by fencing token, for stores shared between replicas; `Cache`
//!   implements it.
//! - **Scoping.** Keys come from clients: scope them to the caller, or one
//!   client can replay another's response. Use `(tenant, key)` tuples (or
//!   add the route) as the cache's key:
//!
//! ```
//! use idemcache::{Cache, Claim};
//!
//! type TenantId = u64;
//! let cache: Cache<(TenantId, String), String> = Cache::new();
//! if let Claim::Acquired(r) = cache.claim((1, "retry-me".to_string()), None) {
//!     r.complete("tenant 1's receipt".to_string()).unwrap();
//! }
//! // Another tenant that happens to send the same key is a new request.
//! assert!(matches!(cache.claim((2, "retry-me".to_string()), None), Claim::Acquired(_)));
//! ```
//!
//! Clients get keys from [`key::random`] (a UUID v4 per logical request) or
//! [`key::deterministic`] (the same key for the same request, for form
//! resubmission). `examples/handler.rs` is a complete handler.
//!
//! ## Expiry
//!
//! An entry written at `t` with time-to-live `d` is returned while
//! `now < t + d` and never once `now >= t + d`, on every read path, whether
//! or not it has been reclaimed. Time comes from the cache's
//! [`Clock`](clock::Clock): a [`ManualClock`](clock::ManualClock) in tests
//! is exact to the nanosecond. The default monotonic clock sets deadlines
//! exactly; on Linux, reads compare them against the coarse monotonic clock
//! (`CLOCK_MONOTONIC_COARSE`, several times cheaper on the hit path), so an
//! entry is never seen expired early and at most one timer tick late
//! ([`clock::default_clock_granularity`], typically 1–4 ms).
//!
//! Expired entries are reclaimed without anyone calling cleanup: each write
//! reclaims up to a few expired entries of its shard (bounded, amortised
//! O(1) work found through a per-shard deadline queue, never by scanning
//! live entries), [`Cache::purge_expired`] reclaims all of them, and
//! [`CacheBuilder::background_eviction`] adds a thread that purges every
//! interval. No thread exists unless asked for.
//!
//! ## Capacity
//!
//! [`CacheBuilder::max_entries`] is a hard bound on entries plus claims in
//! progress ([`Cache::len`] + [`Cache::claims_in_progress`]). A write of a
//! new key into a full cache reclaims an expired entry, then a claim whose
//! lease lapsed (in its shard, then the others); if that frees nothing, the
//! default [`CapacityPolicy::Refuse`] refuses it (a claim gets
//! [`Claim::Full`], an insert is not stored and counted), so no live record
//! is forgotten early. Only the opt-in [`CapacityPolicy::EvictSoonest`]
//! evicts the live entry with the soonest deadline in the written shard
//! (exactly the soonest in the cache when there is one shard). The entry
//! being written is never evicted; computations in progress are not entries
//! and are never evicted.
//!
//! ## Surviving restarts
//!
//! A record that vanishes on a deploy is a duplicate charge waiting to
//! happen. [`Cache::snapshot`] copies every live completed record (key,
//! value, [fingerprint](Fingerprint), and deadline as **wall-clock**
//! `SystemTime`, since an `Instant` means nothing after a restart) into a
//! [`Snapshot`]; [`Cache::restore`] loads one back, skipping records whose
//! deadline has passed, never overwriting a key the cache already holds,
//! never evicting, and keeping the latest deadlines when `max_entries` is
//! short; it reports each count ([`RestoreReport`]). Claims and
//! computations in progress are not records and are not saved: their
//! clients got no answer and will retry against the new process.
//!
//! With the `persistence` feature, snapshots go to files:
//!
//! - [`Snapshot::save_to`] / [`Cache::save_to`] write atomically: a
//!   temporary file in the same directory, fsync, rename over the target,
//!   fsync the directory. A crash leaves the old file or the new one,
//!   never a mix (`tests/crash_safety.rs` SIGKILLs a saving process 60
//!   times at random points and loads the file after each kill).
//! - The format is versioned and checksummed: magic `IDEMSNAP`, format
//!   version, body length, SHA-256, then a [postcard] body holding the key
//!   and value type names and the snapshot. [`Snapshot::load_from`] /
//!   [`Cache::load_from`] check all of it before restoring anything and
//!   return a [`SnapshotError`] (truncated, corrupted, wrong version, wrong
//!   type, I/O) instead of a partial restore or a panic.
//! - [`CacheBuilder::snapshot_every`] saves on the background thread every
//!   interval; [`Cache::shutdown`] saves a final snapshot. **A crash loses
//!   the records completed since the last successful save** (at most one
//!   interval plus a save's duration while saves succeed); a graceful stop
//!   that calls `shutdown` loses none. A failed periodic save keeps the
//!   previous file, is retried next interval and shows in
//!   [`Cache::snapshot_status`]. Saves of one cache never overtake each
//!   other, none runs during a restore, and until the cache has loaded
//!   the file ([`Cache::load_from`] with that path), periodic and shutdown
//!   saves will not replace it ([`SnapshotError::WouldOverwrite`]): records
//!   a service forgot to load stay on disk.
//!
//! ```
//! # #[cfg(feature = "persistence")] {
//! use std::path::PathBuf;
//! use std::time::Duration;
//! use idemcache::{Cache, CacheConfig};
//!
//! /// The service's configuration file: the cache's settings, and where
//! /// and how often to snapshot (set in code, as it needs `K` and `V` to be
//! /// serializable).
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     cache: CacheConfig,
//!     snapshot_path: PathBuf,
//!     #[serde(with = "humantime_serde")]
//!     snapshot_every: Duration,
//! }
//!
//! # let dir = std::env::temp_dir().join(format!("idemcache-doc-restart-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("idempotency.snapshot");
//! let config: Config = toml::from_str(&format!(r#"
//!     snapshot_path = "{}"
//!     snapshot_every = "10s"
//!
//!     [cache]
//!     time_to_live = "24h"
//!     max_entries = 1000000
//!     background_eviction = "1s"
//!     capacity_policy = "refuse"
//! "#, path.display()))?;
//!
//! let start = || -> Result<Cache<String, String>, Box<dyn std::error::Error>> {
//!     let cache = Cache::builder()
//!         .config(&config.cache)
//!         .snapshot_every(&config.snapshot_path, config.snapshot_every)
//!         .build()?;
//!     match cache.load_from(&config.snapshot_path) {
//!         Ok(report) => println!("restored {report:?}"),
//!         Err(e) if e.is_not_found() => println!("first start: nothing to restore"),
//!         Err(e) => return Err(e.into()), // damaged: decide, don't guess
//!     }
//!     Ok(cache)
//! };
//!
//! let cache = start()?;
//! cache.insert("order-7".to_string(), "charge ch_1".to_string());
//! cache.shutdown()?; // graceful stop: the final snapshot
//!
//! let restarted = start()?;
//! assert_eq!(restarted.get("order-7").as_deref(), Some("charge ch_1"));
//! # restarted.shutdown()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Deadlines cross the restart as wall-clock times, so a system clock set
//! back (or forward) between save and restore lengthens (or shortens) what
//! is left of each record. One process should write a given snapshot path.
//! The type check compares Rust type names; a file written before `K` or
//! `V` was renamed or moved loads with [`Snapshot::decode_unchecked`].
//!
//! [postcard]: https://docs.rs/postcard
//!
//! ## What is and is not guaranteed
//!
//! - Guaranteed: the points above; `len()` exact when no write is running;
//!   values dropped when removed, reclaimed, evicted or when the last handle
//!   goes (and never under a shard lock when avoidable).
//! - Not guaranteed: which entry a multi-shard full cache evicts beyond "the
//!   soonest of the written shard"; a consistent snapshot across shards from
//!   `len()` or `stats()` while writers run; progress for waiters of an async
//!   leader that is neither polled nor dropped.
//!
//! ## Correctness
//!
//! Every synchronisation path is checked by a tool, and CI (`.ci/run`) runs
//! all of them on every submission:
//!
//! | what | tool | bound | where |
//! |---|---|---|---|
//! | single flight, hand-over after `Err`/panic/dropped future, wake-ups, invalidation, `len()`/bound consistency, background-thread shutdown (last drop, racing `shutdown` calls); claims racing, release and abandonment wake-ups (blocking and async), waiting out an abandoned claim, racing reclaim of a lapsed claim's room, fencing | [loom] (all interleavings) | 2–3 threads; `LOOM_MAX_PREEMPTIONS=2` in CI | `tests/loom.rs`, `tests/loom_protocol.rs` |
//! | every operation's result, `len()`, eviction victim, counters, abandonment | [proptest], against a `BTreeMap` reference model | 1..200 ops over 6 keys; 1,000 cases × 6 configurations in CI | `src/tests/model_based.rs`, `src/tests/model.rs` |
//! | the [`store::Store`] protocol: every point above through the trait | the store conformance suite (`conformance` feature), run against `Cache` | | `src/store/conformance.rs`, `tests/store_conformance.rs` |
//! | the same model, differentially | cargo-fuzz (`ops`) | corpus replay + 30 s in CI | `fuzz/` |
//! | invariants under real threads: no panic, `len() <= max_entries`, values belong to their key, nothing returned past its deadline | cargo-fuzz (`concurrent_ops`) | corpus replay + 30 s in CI | `fuzz/` |
//! | a save killed at any point leaves a loadable file, the previous or the new snapshot | crash test: a child process SIGKILLed at random moments | 60 kills per run | `tests/crash_safety.rs` |
//! | the snapshot decoder on arbitrary bytes: errors only, allocation bounded by input size | cargo-fuzz (`snapshot_decode`) | corpus replay + 30 s in CI | `fuzz/` |
//! | undefined behaviour | miri | unit tests + the expiry, capacity and single-flight suites | `cargo +nightly miri test` |
//! | each semantic point of the docs above | integration tests | | `tests/*.rs` |
//!
//! Under `--cfg loom`, `src/sync.rs` swaps parking_lot and std for loom's
//! types; loom models use one or two shards, a fixed-seed hasher and a
//! manual clock so every run explores the same space. To rerun:
//!
//! ```sh
//! # loom (CI bound; drop LOOM_MAX_PREEMPTIONS for the exhaustive run)
//! RUSTFLAGS="--cfg loom -C debug-assertions" CARGO_TARGET_DIR=target/loom \
//!   LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom
//! # proptest model, more cases
//! PROPTEST_CASES=10000 cargo test --release --lib model_based
//! # fuzzing (stable; RUSTC_BOOTSTRAP=1 and no `-s none` for AddressSanitizer)
//! cargo install cargo-fuzz --locked
//! cd fuzz && cargo fuzz run -s none ops -- -max_total_time=600 -timeout=5
//! cd fuzz && cargo fuzz run -s none concurrent_ops -- -max_total_time=600 -timeout=5
//! cd fuzz && cargo fuzz run -s none snapshot_decode -- -max_total_time=600 -timeout=5
//! # crash safety of snapshot files (its own harness)
//! cargo test --features persistence --test crash_safety
//! # miri
//! rustup component add --toolchain nightly miri rust-src
//! MIRIFLAGS=-Zmiri-disable-isolation cargo +nightly miri test --lib --test expiry --test capacity --test single_flight
//! ```
//!
//! [loom]: https://docs.rs/loom
//! [proptest]: https://docs.rs/proptest
//!
//! ## Design
//!
//! | module | what it is |
//! |---|---|
//! | `cache.rs` | the handle: the public API and its docs, nothing else |
//! | `engine.rs` | the engine behind every handle, and **the only module that locks a shard**: one helper creates a graveyard before the lock and drops it after, so no value is dropped, no waiter woken and no closure run under a shard lock, by construction; the flight guard that ends every flight |
//! | `shard/` | one shard's parts, each a type with its invariants: `entries.rs` (a dense slab of entries, each keeping the low half of its key's hash), `index.rs` (the hash index of 4-byte slot numbers: one 64-byte cache line per 12 tags and their slots), `queue.rs` (a min-heap of 16-byte `(deadline, write sequence, slot)` items with lazy deletion), `flights.rs` (keys in progress), `graveyard.rs` (what an operation displaced) |
//! | `capacity.rs` | the global bound, the policy, and the one make-room-or-refuse loop every write shares |
//! | `flight.rs` | single flight: one key's computation or claim, its outcome and its waiters (blocking and async) |
//! | `protocol.rs` | claims, reservations, waits, replays, fencing |
//! | `store/` | the token-addressed [`store::Store`] trait, `Cache`'s implementation, the waiting helper, the conformance suite |
//! | `snapshot.rs`, `snapshot_file.rs`, `persistence.rs` | snapshots, their file format, and the periodic save (a job of the background thread) |
//! | `clock.rs`, `background.rs`, `sync.rs` | cache time (`CacheTime`), the optional background thread's jobs, and the loom shim |
//!
//! Keys are hashed once (ahash) to pick a shard (from the top bits) and a
//! slot in the shard's index (from the low 32 bits, which the entry keeps:
//! growing, compacting and expiring hash no key again). Each shard is a
//! cache-line-aligned parking_lot mutex over its parts and its own counters
//! (no shared atomic on the read path). Deadlines are `CacheTime`s,
//! nanoseconds since the cache was built. A flight carries its own mutex,
//! condition variable and waker list, so waiters never hold the shard lock
//! while they wait, and a drop guard ends every flight, so `Ok`, `Err`,
//! panic and cancellation all take the same path. The bound is one shared
//! counter touched only by writes that add or remove entries or claims.
//! Every synchronisation primitive comes through one internal module so
//! the model checker (loom) can replace them.
#![deny(missing_docs, unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The guide links to the `persistence` and `serde` features' items, which
// a build without them does not have (docs.rs builds with every feature).
#![cfg_attr(
    not(all(feature = "persistence", feature = "serde")),
    allow(rustdoc::broken_intra_doc_links)
)]

// The handle, and the engine that owns every shard lock.
mod builder;
mod cache;
mod engine;
// A shard's parts: entries, deadline queue, flight table, graveyard.
mod shard;
// The bound on entries and what a full cache does.
mod capacity;
// Single flight: one key's computation or claim, and its waiters.
mod flight;
// The idempotency protocol and the store trait built on it.
mod fingerprint;
mod protocol;
pub mod store;
// Snapshots and their files.
#[cfg(feature = "persistence")]
mod persistence;
mod snapshot;
#[cfg(feature = "persistence")]
mod snapshot_file;
// Time, the background thread, the loom shim, and the rest.
mod background;
pub mod clock;
#[cfg(feature = "serde")]
mod config;
mod error;
#[cfg(any(feature = "digest", feature = "uuid"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "digest", feature = "uuid"))))]
pub mod key;
mod stats;
mod sync;
// Lets the reference model shared with the `ops` fuzz target name the crate
// `idemcache` from inside it (the unit tests in `src/tests/`).
#[cfg(all(test, not(loom)))]
extern crate self as idemcache;
#[cfg(all(test, not(loom)))]
mod tests;

pub use builder::{CacheBuilder, DEFAULT_LEASE, DEFAULT_TIME_TO_LIVE, MAX_SHARDS};
pub use cache::Cache;
pub use capacity::CapacityPolicy;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use config::CacheConfig;
#[cfg(feature = "persistence")]
#[cfg_attr(docsrs, doc(cfg(feature = "persistence")))]
pub use config::SnapshotConfig;
pub use error::{BuildError, SnapshotError};
#[cfg(feature = "digest")]
#[cfg_attr(docsrs, doc(cfg(feature = "digest")))]
pub use fingerprint::FingerprintBuilder;
pub use fingerprint::{Fingerprint, ParseFingerprintError};
#[cfg(feature = "persistence")]
#[cfg_attr(docsrs, doc(cfg(feature = "persistence")))]
pub use persistence::SnapshotStatus;
pub use protocol::{
    Claim, Completion, Fenced, NotStored, Pending, Replay, Reservation, StaleReservation, Waited,
};
pub use snapshot::{RestoreReport, Snapshot, SnapshotEntry};
pub use stats::Stats;
