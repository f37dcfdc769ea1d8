//! The store conformance suite: the behaviour every [`Store`] must have,
//! written once as async test functions that any store crate runs against
//! its own implementation (the in-process [`Cache`](crate::Cache), a Redis
//! store, ...).
//!
//! # What it checks
//!
//! The protocol, by token, as the [`Store`] trait documents it:
//!
//! - **Claims**: a free key is acquired, once, even by concurrent claims;
//!   a claim while another runs is in progress (with the holder's token,
//!   fingerprint and lease); a completed claim is replayed with its value
//!   and fingerprint.
//! - **Fingerprints**: another fingerprint is a mismatch, while the first
//!   request runs and after it completed; a request (or record) without
//!   one matches any; a released key keeps no fingerprint.
//! - **Leases and fencing**: an abandoned claim holds its key until the
//!   lease lapses; a lapsed lease is taken over with a larger token;
//!   renewing extends the lease; a stale or ended token cannot complete,
//!   release, renew or abandon ([`StoreError::Fenced`]) and changes
//!   nothing.
//! - **Claim ids**: a claim resent with the same [`ClaimId`] gets the same
//!   acquisition back, or the replay once completed.
//! - **Peek, retention, remove**: what [`Store::peek`] reports in each
//!   state; records expire after their retention (given to `complete`, or
//!   the store's default); `remove` forgets a completed record and leaves
//!   a claim in progress holding its key.
//! - **Capacity** (optional, see below): a full store refuses claims
//!   ([`ClaimOutcome::Full`]), keeps its live records, and reclaims lapsed
//!   claims by itself.
//! - **Waiting**: [`wait_for_outcome`] over the store returns the
//!   completed record, the freed key, or an abandoned claim at once.
//!
//! It does not test a complete resent with the same token: a network store
//! must accept it (the first answer may have been lost), while the
//! in-process store answers [`StoreError::Fenced`] (its calls cannot time
//! out); both are correct.
//!
//! # Running it
//!
//! A store crate enables the `conformance` feature in its
//! `[dev-dependencies]`, implements [`Harness`] for its store, and expands
//! [`store_conformance_tests!`](crate::store_conformance_tests) in a test
//! file, which makes one `#[test]` per suite test:
//!
//! ```toml
//! [dev-dependencies]
//! idemcache = { version = "0.1", features = ["conformance"] }
//! ```
//!
//! ```text
//! idemcache::store_conformance_tests!(MyHarness::new(), my_block_on);
//! ```
//!
//! The tests, each named as the rule it checks (each is also a `pub async
//! fn` here, to run one by hand):
//!
//! - [`claim_of_a_free_key_acquires`]
//! - [`a_completed_claim_is_replayed_with_its_value_and_fingerprint`]
//! - [`a_claim_while_one_runs_is_in_progress`]
//! - [`another_fingerprint_is_a_mismatch_while_the_first_runs`]
//! - [`another_fingerprint_is_a_mismatch_after_completion`]
//! - [`a_request_without_fingerprint_matches_any_record`]
//! - [`release_frees_the_key_and_keeps_no_fingerprint`]
//! - [`abandon_holds_the_key_until_the_lease_lapses`]
//! - [`a_lapsed_lease_is_taken_over_with_a_larger_token`]
//! - [`a_stale_token_cannot_complete_release_renew_or_abandon`]
//! - [`an_ended_claim_cannot_be_released_renewed_or_abandoned`]
//! - [`complete_after_release_is_fenced`]
//! - [`renew_extends_the_lease`]
//! - [`a_resent_claim_id_gets_the_same_acquisition`]
//! - [`a_resent_claim_after_completion_is_replayed`]
//! - [`peek_reports_free_in_progress_completed_and_mismatch`]
//! - [`a_record_expires_after_its_retention`]
//! - [`remove_forgets_a_completed_record`]
//! - [`concurrent_claims_acquire_exactly_once`]
//! - [`a_full_store_refuses_claims_and_reclaims_lapsed_ones`]
//! - [`a_full_store_keeps_its_completed_records`]
//! - [`wait_for_outcome_returns_the_completed_record`]
//! - [`wait_for_outcome_returns_free_after_a_release`]
//! - [`wait_for_outcome_returns_an_abandoned_claim_at_once`]
//!
//! Each test makes its own store ([`Harness::store`]) and uses keys of its
//! own, so tests may run in parallel against one server when the harness
//! gives every store a unique key prefix.
//!
//! # Time
//!
//! Leases and retentions are multiples of [`Harness::unit`] (one second by
//! default): a store on a manual clock advances it
//! ([`Harness::advance`]), a network store whose time is the server's
//! sleeps for real, with a short unit (300 ms, say) so that the suite stays
//! quick. Checks on durations allow half a unit of slack for such real
//! clocks. [`Harness::sleep`] is the runtime's real sleep, used by the
//! [`wait_for_outcome`] tests.
//!
//! # Why capacity is optional
//!
//! A bound on the number of records (`max_entries`) is a property of the
//! in-process store, which must not grow without limit in the service's
//! memory. A network store's bound is its server's business (Redis'
//! `maxmemory`, say), which a test cannot set per store; such a harness
//! returns `false` from [`Harness::supports_max_entries`], the capacity
//! tests then return early (they pass without checking anything), and
//! [`Options::max_entries`] is always `None` for it.
//!
//! # Example
//!
//! The suite against [`Cache`](crate::Cache) on a manual clock, with a tiny
//! executor (the cache's futures are ready at once):
//!
//! ```
//! use std::future::Future;
//! use std::pin::pin;
//! use std::task::{Context, Poll, Waker};
//! use std::time::Duration;
//!
//! use idemcache::Cache;
//! use idemcache::clock::ManualClock;
//! use idemcache::store::conformance::{self, Harness, Options};
//!
//! struct CacheHarness {
//!     clock: ManualClock,
//! }
//!
//! impl Harness for CacheHarness {
//!     type Store = Cache<String, String>;
//!
//!     async fn store(&self, options: Options) -> Self::Store {
//!         let mut builder = Cache::builder()
//!             .lease(options.lease)
//!             .time_to_live(options.retention)
//!             .clock(self.clock.clone());
//!         if let Some(max_entries) = options.max_entries {
//!             builder = builder.max_entries(max_entries);
//!         }
//!         builder.build().expect("valid options")
//!     }
//!
//!     async fn advance(&self, _store: &Self::Store, by: Duration) {
//!         self.clock.advance(by);
//!     }
//!
//!     async fn sleep(&self, by: Duration) {
//!         std::thread::sleep(by); // this executor runs one future
//!     }
//! }
//!
//! fn block_on<F: Future>(future: F) -> F::Output {
//!     let mut future = pin!(future);
//!     let mut cx = Context::from_waker(Waker::noop());
//!     loop {
//!         if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
//!             return output;
//!         }
//!     }
//! }
//!
//! let harness = CacheHarness { clock: ManualClock::new() };
//! block_on(conformance::claim_of_a_free_key_acquires(&harness));
//! block_on(conformance::a_stale_token_cannot_complete_release_renew_or_abandon(&harness));
//! ```
//!
//! In a test file, `idemcache::store_conformance_tests!(CacheHarness {
//! clock: ManualClock::new() }, block_on);` makes every test a `#[test]`
//! (the crate's own `tests/store_conformance.rs` does so, on tokio).

use std::fmt::Debug;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use super::{
    Acquired, ClaimId, ClaimOutcome, InFlight, Peek, Store, StoreError, WaitPolicy,
    wait_for_outcome,
};
use crate::{Completion, Fingerprint, Replay};

/// What a test needs from a store implementation: fresh stores, and time.
///
/// Implement it in your store's tests and expand
/// [`store_conformance_tests!`](crate::store_conformance_tests); see the
/// [module docs](self) for a complete harness. Methods may be written as
/// `async fn`.
pub trait Harness {
    /// The store under test.
    type Store: Store<Key = String, Value = String>;

    /// A fresh, empty store configured with `options` (a network store
    /// uses a key prefix of its own for each store, so that tests do not
    /// see each other's keys). `options.max_entries` is `Some` only if
    /// [`supports_max_entries`](Self::supports_max_entries).
    fn store(&self, options: Options) -> impl Future<Output = Self::Store>;

    /// Lets `by` of the store's time pass: advances a manual clock, or
    /// sleeps for real for a store whose time is a server's.
    fn advance(&self, store: &Self::Store, by: Duration) -> impl Future<Output = ()>;

    /// Sleeps `by` of real time on the runtime the suite runs on
    /// (`tokio::time::sleep`, say): the timer given to
    /// [`wait_for_outcome`], while another future of the test runs.
    fn sleep(&self, by: Duration) -> impl Future<Output = ()>;

    /// The time unit every lease and retention of the suite is a multiple
    /// of (leases are 4 units). One second by default; a store on real
    /// time uses a short one (300 ms, say).
    fn unit(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Whether the store can be bounded by [`Options::max_entries`]. If
    /// not, the capacity tests return early without checking anything.
    fn supports_max_entries(&self) -> bool {
        true
    }
}

/// How a test wants its store configured ([`Harness::store`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// How long a claim holds its key unless renewed ([`Store::lease`]
    /// must answer it).
    pub lease: Duration,
    /// How long a completed record is kept when
    /// [`complete`](Store::complete) is given no retention (`None`).
    pub retention: Duration,
    /// The bound on records and claims in progress; `None` for unbounded.
    /// Only `Some` for a harness that
    /// [supports it](Harness::supports_max_entries).
    pub max_entries: Option<usize>,
}

/// The lease of every store of the suite, in units.
const LEASE_UNITS: u32 = 4;
/// The default retention of a store of the suite, in units.
const RETENTION_UNITS: u32 = 20;

fn options<H: Harness>(h: &H) -> Options {
    Options {
        lease: h.unit() * LEASE_UNITS,
        retention: h.unit() * RETENTION_UNITS,
        max_entries: None,
    }
}

async fn fresh<H: Harness>(h: &H) -> H::Store {
    h.store(options(h)).await
}

/// Half a unit: the slack allowed to durations read off a real clock.
fn slack<H: Harness>(h: &H) -> Duration {
    h.unit() / 2
}

fn key(name: &str) -> String {
    name.to_string()
}

fn value(text: &str) -> String {
    text.to_string()
}

/// A request fingerprint, `n` telling requests apart.
fn fp(n: u8) -> Option<Fingerprint> {
    Some(Fingerprint::from_bytes([n; 16]))
}

type Found = Result<ClaimOutcome<String>, StoreError>;
type Peeked = Result<Peek<String>, StoreError>;

async fn claim<St: Store<Key = String, Value = String>>(
    store: &St,
    key: &String,
    fingerprint: Option<Fingerprint>,
) -> Found {
    store.claim(key, fingerprint, ClaimId::random()).await
}

fn ok<T>(result: Result<T, StoreError>, context: &str) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{context}: the store failed: {err:?} ({err})"),
    }
}

fn acquired(found: Found, context: &str) -> Acquired {
    match found {
        Ok(ClaimOutcome::Acquired(acquired)) => acquired,
        other => panic!("{context}: expected Ok(Acquired), got {other:?}"),
    }
}

fn in_progress(found: Found, context: &str) -> InFlight {
    match found {
        Ok(ClaimOutcome::InProgress(in_flight)) => in_flight,
        other => panic!("{context}: expected Ok(InProgress), got {other:?}"),
    }
}

fn completed(found: Found, context: &str) -> Replay<String> {
    match found {
        Ok(ClaimOutcome::Completed(replay)) => replay,
        other => panic!("{context}: expected Ok(Completed), got {other:?}"),
    }
}

fn mismatch(found: Found, context: &str) {
    assert!(
        matches!(found, Ok(ClaimOutcome::Mismatch)),
        "{context}: expected Ok(Mismatch), got {found:?}"
    );
}

fn full(found: Found, context: &str) {
    assert!(
        matches!(found, Ok(ClaimOutcome::Full)),
        "{context}: expected Ok(Full), got {found:?}"
    );
}

fn peeked_free(peeked: Peeked, context: &str) {
    assert!(
        matches!(peeked, Ok(Peek::Free)),
        "{context}: expected peek to answer Ok(Free), got {peeked:?}"
    );
}

fn peeked_mismatch(peeked: Peeked, context: &str) {
    assert!(
        matches!(peeked, Ok(Peek::Mismatch)),
        "{context}: expected peek to answer Ok(Mismatch), got {peeked:?}"
    );
}

fn peeked_in_progress(peeked: Peeked, context: &str) -> InFlight {
    match peeked {
        Ok(Peek::InProgress(in_flight)) => in_flight,
        other => panic!("{context}: expected peek to answer Ok(InProgress), got {other:?}"),
    }
}

fn peeked_completed(peeked: Peeked, context: &str) -> Replay<String> {
    match peeked {
        Ok(Peek::Completed(replay)) => replay,
        other => panic!("{context}: expected peek to answer Ok(Completed), got {other:?}"),
    }
}

fn stored(completion: Result<Completion, StoreError>, context: &str) {
    match completion {
        Ok(Completion::Stored { .. }) => {}
        other => panic!("{context}: expected Ok(Completion::Stored), got {other:?}"),
    }
}

fn fenced<T: Debug>(result: Result<T, StoreError>, token: u64, context: &str) {
    match result {
        Err(StoreError::Fenced(fenced)) => assert_eq!(
            fenced.token(),
            token,
            "{context}: Fenced must name the stale token"
        ),
        other => panic!("{context}: expected Err(Fenced) for token {token}, got {other:?}"),
    }
}

fn replays(
    replay: &Replay<String>,
    expected: &str,
    fingerprint: Option<Fingerprint>,
    context: &str,
) {
    assert_eq!(
        replay.value(),
        expected,
        "{context}: the replay must carry the stored value"
    );
    assert_eq!(
        replay.fingerprint(),
        fingerprint,
        "{context}: the replay must carry the fingerprint of the completed claim"
    );
}

/// Polls two futures together until both are ready.
async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let mut out_a = None;
    let mut out_b = None;
    poll_fn(move |cx| {
        if out_a.is_none() {
            if let Poll::Ready(out) = a.as_mut().poll(cx) {
                out_a = Some(out);
            }
        }
        if out_b.is_none() {
            if let Poll::Ready(out) = b.as_mut().poll(cx) {
                out_b = Some(out);
            }
        }
        match (out_a.is_some(), out_b.is_some()) {
            (true, true) => {
                Poll::Ready((out_a.take().expect("ready"), out_b.take().expect("ready")))
            }
            _ => Poll::Pending,
        }
    })
    .await
}

/// Polls all `futures` together (each is created before any is polled)
/// until all are ready; outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(move |cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(out) => *output = Some(out),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(
                outputs
                    .iter_mut()
                    .map(|o| o.take().expect("ready"))
                    .collect(),
            )
        }
    })
    .await
}

/// A claim of a free key acquires it (not as a resent claim, with a lease
/// of at most the store's), and holds it: a second claim is in progress.
/// [`Store::lease`] answers the configured lease; other keys are
/// independent.
pub async fn claim_of_a_free_key_acquires<H: Harness>(h: &H) {
    let options = options(h);
    let store = h.store(options).await;
    let k = key("free");
    assert_eq!(
        store.lease(),
        options.lease,
        "Store::lease must answer the lease the store was built with"
    );
    peeked_free(store.peek(&k, fp(1)).await, "peek of a key never used");
    let first = acquired(claim(&store, &k, fp(1)).await, "first claim of a free key");
    assert!(!first.resent, "a first claim is not resent: {first:?}");
    assert!(
        !first.lease.is_zero() && first.lease <= options.lease,
        "an acquisition's lease must be in (0, {:?}]: {first:?}",
        options.lease
    );
    let second = in_progress(
        claim(&store, &k, fp(1)).await,
        "a second claim of an acquired key",
    );
    assert_eq!(
        second.token, first.token,
        "in progress must name the holder's token"
    );
    acquired(
        claim(&store, &key("another"), fp(1)).await,
        "a claim of another free key",
    );
}

/// A completed claim is stored, and every later claim (and peek) of the
/// same request gets its value and fingerprint back.
pub async fn a_completed_claim_is_replayed_with_its_value_and_fingerprint<H: Harness>(h: &H) {
    let options = options(h);
    let store = h.store(options).await;
    let k = key("replayed");
    let claimed = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    let completion = ok(
        store
            .complete(&k, claimed.token, value("201 created"), None)
            .await,
        "complete by the holder",
    );
    assert!(
        completion.is_stored(),
        "the holder's completion must be stored: {completion:?}"
    );
    for attempt in ["first retry", "second retry"] {
        let replay = completed(claim(&store, &k, fp(1)).await, attempt);
        replays(&replay, "201 created", fp(1), attempt);
        assert!(
            !replay.expires_in().is_zero() && replay.expires_in() <= options.retention,
            "{attempt}: a replay expires within the retention ({:?}): {replay:?}",
            options.retention
        );
    }
    let peeked = peeked_completed(store.peek(&k, fp(1)).await, "peek after completion");
    replays(&peeked, "201 created", fp(1), "peek after completion");
}

/// A claim of a key that another claim holds is in progress, naming the
/// holder's token, fingerprint, lease left and time running.
pub async fn a_claim_while_one_runs_is_in_progress<H: Harness>(h: &H) {
    let options = options(h);
    let store = h.store(options).await;
    let k = key("running");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    h.advance(&store, h.unit()).await;
    let seen = in_progress(
        claim(&store, &k, fp(1)).await,
        "claim while the holder runs",
    );
    assert_eq!(seen.token, holder.token, "the holder's token: {seen:?}");
    assert_eq!(
        seen.fingerprint,
        fp(1),
        "the holder's fingerprint: {seen:?}"
    );
    assert!(!seen.abandoned, "the holder did not abandon: {seen:?}");
    let left = seen
        .lease_remaining
        .unwrap_or_else(|| panic!("a claim has a lease: {seen:?}"));
    assert!(
        !left.is_zero() && left <= options.lease - h.unit() + slack(h),
        "after one unit, less than the lease is left: {seen:?}"
    );
    assert!(
        seen.running_for + slack(h) >= h.unit(),
        "the holder has run for about one unit: {seen:?}"
    );
    assert!(
        !seen.retry_after().is_zero(),
        "a Retry-After hint is never zero: {seen:?}"
    );
    let again = in_progress(
        claim(&store, &k, None).await,
        "claim without fingerprint while the holder runs",
    );
    assert_eq!(again.token, holder.token, "the holder's token: {again:?}");
}

/// A claim with another fingerprint while the first request runs is a
/// mismatch (checked before "in progress"); the holder is not disturbed.
pub async fn another_fingerprint_is_a_mismatch_while_the_first_runs<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("reused-while-running");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    mismatch(
        claim(&store, &k, fp(2)).await,
        "claim with another fingerprint while the first runs",
    );
    peeked_mismatch(
        store.peek(&k, fp(2)).await,
        "peek with another fingerprint while the first runs",
    );
    stored(
        store.complete(&k, holder.token, value("200"), None).await,
        "complete by the holder after a mismatch",
    );
    let replay = completed(claim(&store, &k, fp(1)).await, "retry of the first request");
    replays(&replay, "200", fp(1), "retry of the first request");
}

/// A claim with another fingerprint after the first request completed is a
/// mismatch; the record stays replayable for its own request.
pub async fn another_fingerprint_is_a_mismatch_after_completion<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("reused-after-completion");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    stored(
        store.complete(&k, holder.token, value("200"), None).await,
        "complete by the holder",
    );
    mismatch(
        claim(&store, &k, fp(2)).await,
        "claim with another fingerprint after completion",
    );
    let replay = completed(claim(&store, &k, fp(1)).await, "retry of the first request");
    replays(&replay, "200", fp(1), "retry of the first request");
}

/// A request without fingerprint matches a claim or record with one, and a
/// claim or record without fingerprint matches any request.
pub async fn a_request_without_fingerprint_matches_any_record<H: Harness>(h: &H) {
    let store = fresh(h).await;

    let with = key("with-fingerprint");
    let holder = acquired(
        claim(&store, &with, fp(1)).await,
        "claim with a fingerprint",
    );
    let seen = in_progress(
        claim(&store, &with, None).await,
        "claim without fingerprint of a claim with one",
    );
    assert_eq!(seen.token, holder.token, "the holder's token: {seen:?}");
    stored(
        store.complete(&with, holder.token, value("a"), None).await,
        "complete of the claim with a fingerprint",
    );
    let replay = completed(
        claim(&store, &with, None).await,
        "claim without fingerprint of a record with one",
    );
    replays(
        &replay,
        "a",
        fp(1),
        "claim without fingerprint of a record with one",
    );
    peeked_completed(
        store.peek(&with, None).await,
        "peek without fingerprint of a record with one",
    );

    let without = key("without-fingerprint");
    let holder = acquired(
        claim(&store, &without, None).await,
        "claim without fingerprint",
    );
    let seen = in_progress(
        claim(&store, &without, fp(2)).await,
        "claim with a fingerprint of a claim without one",
    );
    assert_eq!(
        seen.fingerprint, None,
        "the holder has no fingerprint: {seen:?}"
    );
    stored(
        store
            .complete(&without, holder.token, value("b"), None)
            .await,
        "complete of the claim without fingerprint",
    );
    let replay = completed(
        claim(&store, &without, fp(2)).await,
        "claim with a fingerprint of a record without one",
    );
    replays(
        &replay,
        "b",
        None,
        "claim with a fingerprint of a record without one",
    );
}

/// A released claim frees its key at once and keeps nothing, not even its
/// fingerprint: a claim with a different fingerprint acquires.
pub async fn release_frees_the_key_and_keeps_no_fingerprint<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("released");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    ok(
        store.release(&k, holder.token).await,
        "release by the holder",
    );
    peeked_free(
        store.peek(&k, fp(2)).await,
        "peek with another fingerprint after release",
    );
    let next = acquired(
        claim(&store, &k, fp(2)).await,
        "claim with another fingerprint after release",
    );
    assert_ne!(
        next.token, holder.token,
        "a new claim gets a new token: {next:?}"
    );
    let seen = in_progress(
        claim(&store, &k, fp(2)).await,
        "claim while the new holder runs",
    );
    assert_eq!(
        seen.fingerprint,
        fp(2),
        "the new holder's fingerprint: {seen:?}"
    );
}

/// An abandoned claim (its outcome unknown) holds its key, as in progress
/// and abandoned, until its lease lapses; then a new claim acquires it
/// with a larger token.
pub async fn abandon_holds_the_key_until_the_lease_lapses<H: Harness>(h: &H) {
    let options = options(h);
    let store = h.store(options).await;
    let k = key("abandoned");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    ok(
        store.abandon(&k, holder.token).await,
        "abandon by the holder",
    );
    let seen = in_progress(claim(&store, &k, fp(1)).await, "claim after abandon");
    assert!(seen.abandoned, "an abandoned claim says so: {seen:?}");
    assert_eq!(
        seen.token, holder.token,
        "the abandoned claim's token: {seen:?}"
    );
    let peeked = peeked_in_progress(store.peek(&k, fp(1)).await, "peek after abandon");
    assert!(
        peeked.abandoned,
        "peek of an abandoned claim says so: {peeked:?}"
    );
    mismatch(
        claim(&store, &k, fp(2)).await,
        "claim with another fingerprint of an abandoned claim",
    );

    h.advance(&store, options.lease - h.unit()).await;
    let seen = in_progress(
        claim(&store, &k, fp(1)).await,
        "claim one unit before the abandoned lease lapses",
    );
    assert!(seen.abandoned, "still abandoned: {seen:?}");

    h.advance(&store, h.unit() * 2).await;
    let next = acquired(
        claim(&store, &k, fp(1)).await,
        "claim after the abandoned lease lapsed",
    );
    assert!(
        next.token > holder.token,
        "a takeover gets a larger token: {} after {}",
        next.token,
        holder.token
    );
}

/// A claim whose lease lapsed (its holder crashed) is taken over by a new
/// claim, with a larger token; meanwhile peek sees the key free.
pub async fn a_lapsed_lease_is_taken_over_with_a_larger_token<H: Harness>(h: &H) {
    let options = options(h);
    let store = h.store(options).await;
    let k = key("lapsed");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    h.advance(&store, options.lease + h.unit()).await;
    peeked_free(store.peek(&k, fp(1)).await, "peek after the lease lapsed");
    let next = acquired(
        claim(&store, &k, fp(1)).await,
        "claim after the lease lapsed",
    );
    assert!(
        next.token > holder.token,
        "a takeover gets a larger token: {} after {}",
        next.token,
        holder.token
    );
    assert!(!next.resent, "a takeover is not resent: {next:?}");
    let seen = in_progress(
        claim(&store, &k, fp(1)).await,
        "claim while the new holder runs",
    );
    assert_eq!(seen.token, next.token, "the new holder's token: {seen:?}");
}

/// After a takeover, the old token cannot complete, release, renew or
/// abandon: each answers [`StoreError::Fenced`] naming it, and the new
/// claim, then its result, are untouched.
pub async fn a_stale_token_cannot_complete_release_renew_or_abandon<H: Harness>(h: &H) {
    let options = options(h);
    let store = h.store(options).await;
    let k = key("fenced");
    let stale = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    h.advance(&store, options.lease + h.unit()).await;
    let newer = acquired(
        claim(&store, &k, fp(1)).await,
        "claim after the lease lapsed",
    );

    fenced(
        store.complete(&k, stale.token, value("stale"), None).await,
        stale.token,
        "complete with the stale token",
    );
    fenced(
        store.release(&k, stale.token).await,
        stale.token,
        "release with the stale token",
    );
    fenced(
        store.renew(&k, stale.token).await,
        stale.token,
        "renew with the stale token",
    );
    fenced(
        store.abandon(&k, stale.token).await,
        stale.token,
        "abandon with the stale token",
    );

    let seen = peeked_in_progress(
        store.peek(&k, fp(1)).await,
        "peek after the stale token's attempts",
    );
    assert_eq!(
        seen.token, newer.token,
        "the newer claim holds the key: {seen:?}"
    );
    assert!(
        !seen.abandoned,
        "the newer claim was not abandoned: {seen:?}"
    );
    ok(
        store.renew(&k, newer.token).await,
        "renew by the newer holder",
    );
    stored(
        store.complete(&k, newer.token, value("fresh"), None).await,
        "complete by the newer holder",
    );
    fenced(
        store.complete(&k, stale.token, value("stale"), None).await,
        stale.token,
        "complete with the stale token after the newer completed",
    );
    let replay = completed(claim(&store, &k, fp(1)).await, "retry after completion");
    replays(&replay, "fresh", fp(1), "retry after completion");
}

/// A claim that ended (completed, or abandoned) cannot be ended or renewed
/// again by its token: [`StoreError::Fenced`], and the record or abandoned
/// claim is untouched. (A *complete* resent after success is not checked:
/// network stores accept it, the in-process store fences it.)
pub async fn an_ended_claim_cannot_be_released_renewed_or_abandoned<H: Harness>(h: &H) {
    let store = fresh(h).await;

    let done = key("completed");
    let holder = acquired(claim(&store, &done, fp(1)).await, "claim of a free key");
    stored(
        store
            .complete(&done, holder.token, value("200"), None)
            .await,
        "complete by the holder",
    );
    fenced(
        store.release(&done, holder.token).await,
        holder.token,
        "release after complete",
    );
    fenced(
        store.renew(&done, holder.token).await,
        holder.token,
        "renew after complete",
    );
    fenced(
        store.abandon(&done, holder.token).await,
        holder.token,
        "abandon after complete",
    );
    let replay = completed(
        claim(&store, &done, fp(1)).await,
        "retry after the late calls",
    );
    replays(&replay, "200", fp(1), "retry after the late calls");

    let dropped = key("abandoned");
    let holder = acquired(claim(&store, &dropped, fp(1)).await, "claim of a free key");
    ok(
        store.abandon(&dropped, holder.token).await,
        "abandon by the holder",
    );
    fenced(
        store
            .complete(&dropped, holder.token, value("late"), None)
            .await,
        holder.token,
        "complete after abandon",
    );
    fenced(
        store.release(&dropped, holder.token).await,
        holder.token,
        "release after abandon",
    );
    fenced(
        store.renew(&dropped, holder.token).await,
        holder.token,
        "renew after abandon",
    );
    let seen = in_progress(
        claim(&store, &dropped, fp(1)).await,
        "claim after the late calls on an abandoned claim",
    );
    assert!(seen.abandoned, "still abandoned: {seen:?}");
}

/// A released claim cannot complete: [`StoreError::Fenced`], and the key
/// stays free.
pub async fn complete_after_release_is_fenced<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("released-then-completed");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    ok(
        store.release(&k, holder.token).await,
        "release by the holder",
    );
    fenced(
        store.complete(&k, holder.token, value("late"), None).await,
        holder.token,
        "complete after release",
    );
    peeked_free(store.peek(&k, fp(1)).await, "peek after the late complete");
    acquired(
        claim(&store, &k, fp(1)).await,
        "claim after the late complete",
    );
}

/// Renewing a claim extends it to a full lease from now (and answers
/// that): the key stays held past the original lease, and lapses a lease
/// after the renewal.
pub async fn renew_extends_the_lease<H: Harness>(h: &H) {
    let options = options(h);
    let store = h.store(options).await;
    let k = key("renewed");
    let unit = h.unit();
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    h.advance(&store, options.lease - unit).await;
    let left = ok(
        store.renew(&k, holder.token).await,
        "renew one unit before the lease lapses",
    );
    assert!(
        left <= options.lease && left + slack(h) >= options.lease,
        "renew answers a full lease ({:?}) left: {left:?}",
        options.lease
    );
    // One unit past the original lease, lease - 2 units before the new one.
    h.advance(&store, unit * 2).await;
    let seen = in_progress(
        claim(&store, &k, fp(1)).await,
        "claim after the original lease, within the renewed one",
    );
    assert_eq!(
        seen.token, holder.token,
        "the renewed claim holds the key: {seen:?}"
    );
    assert!(!seen.abandoned, "the renewed claim runs: {seen:?}");
    // One unit past the renewed lease.
    h.advance(&store, options.lease - unit).await;
    let next = acquired(
        claim(&store, &k, fp(1)).await,
        "claim after the renewed lease lapsed",
    );
    assert!(
        next.token > holder.token,
        "a takeover gets a larger token: {} after {}",
        next.token,
        holder.token
    );
}

/// A claim resent with the [`ClaimId`] of a live acquisition (its answer
/// was lost) gets the same acquisition back, marked resent; a claim with
/// another id is in progress; the acquisition completes as usual.
pub async fn a_resent_claim_id_gets_the_same_acquisition<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("resent");
    let id = ClaimId::random();
    let first = acquired(store.claim(&k, fp(1), id).await, "claim of a free key");
    assert!(!first.resent, "a first claim is not resent: {first:?}");
    let again = acquired(
        store.claim(&k, fp(1), id).await,
        "the same claim, resent with its id",
    );
    assert_eq!(
        again.token, first.token,
        "a resent claim gets the same token"
    );
    assert!(again.resent, "a resent claim says so: {again:?}");
    let other = in_progress(claim(&store, &k, fp(1)).await, "a claim with another id");
    assert_eq!(other.token, first.token, "the holder's token: {other:?}");
    stored(
        store.complete(&k, again.token, value("200"), None).await,
        "complete with the resent acquisition's token",
    );
    let replay = completed(claim(&store, &k, fp(1)).await, "retry after completion");
    replays(&replay, "200", fp(1), "retry after completion");
}

/// A claim resent with its [`ClaimId`] after its acquisition completed
/// gets the replay.
pub async fn a_resent_claim_after_completion_is_replayed<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("resent-after-completion");
    let id = ClaimId::random();
    let first = acquired(store.claim(&k, fp(1), id).await, "claim of a free key");
    stored(
        store.complete(&k, first.token, value("201"), None).await,
        "complete by the holder",
    );
    let replay = completed(
        store.claim(&k, fp(1), id).await,
        "the claim resent with its id after completion",
    );
    replays(&replay, "201", fp(1), "the resent claim");
}

/// [`Store::peek`] reports each state without claiming: free, in progress
/// (for the same request or one without fingerprint), completed, and
/// mismatch for another fingerprint.
pub async fn peek_reports_free_in_progress_completed_and_mismatch<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("peeked");
    peeked_free(store.peek(&k, fp(1)).await, "peek of a free key");
    peeked_free(
        store.peek(&k, None).await,
        "peek without fingerprint of a free key",
    );
    let holder = acquired(
        claim(&store, &k, fp(1)).await,
        "claim after peeks (peek does not claim)",
    );
    let seen = peeked_in_progress(store.peek(&k, fp(1)).await, "peek of a claim");
    assert_eq!(seen.token, holder.token, "the holder's token: {seen:?}");
    assert_eq!(
        seen.fingerprint,
        fp(1),
        "the holder's fingerprint: {seen:?}"
    );
    assert!(!seen.abandoned, "the holder runs: {seen:?}");
    assert!(
        seen.lease_remaining.is_some(),
        "a claim has a lease: {seen:?}"
    );
    peeked_in_progress(
        store.peek(&k, None).await,
        "peek without fingerprint of a claim",
    );
    peeked_mismatch(
        store.peek(&k, fp(2)).await,
        "peek with another fingerprint of a claim",
    );
    stored(
        store.complete(&k, holder.token, value("200"), None).await,
        "complete by the holder",
    );
    let replay = peeked_completed(store.peek(&k, fp(1)).await, "peek of a record");
    replays(&replay, "200", fp(1), "peek of a record");
    peeked_completed(
        store.peek(&k, None).await,
        "peek without fingerprint of a record",
    );
    peeked_mismatch(
        store.peek(&k, fp(2)).await,
        "peek with another fingerprint of a record",
    );
}

/// A record is kept for the retention given to
/// [`complete`](Store::complete), or for the store's default
/// ([`Options::retention`]) when given none, and is gone after: the key is
/// free and a claim acquires it.
pub async fn a_record_expires_after_its_retention<H: Harness>(h: &H) {
    let unit = h.unit();
    let options = Options {
        retention: unit * 6,
        ..options(h)
    };
    let store = h.store(options).await;
    let short = key("short-retention");
    let default = key("default-retention");

    let holder = acquired(claim(&store, &short, fp(1)).await, "claim of a free key");
    stored(
        store
            .complete(&short, holder.token, value("402"), Some(unit * 2))
            .await,
        "complete with a retention of 2 units",
    );
    let holder = acquired(claim(&store, &default, fp(1)).await, "claim of a free key");
    stored(
        store
            .complete(&default, holder.token, value("201"), None)
            .await,
        "complete with the default retention (6 units)",
    );

    let replay = completed(
        claim(&store, &short, fp(1)).await,
        "retry within the short retention",
    );
    assert!(
        replay.expires_in() <= unit * 2,
        "a record kept 2 units expires within them: {replay:?}"
    );
    let replay = completed(
        claim(&store, &default, fp(1)).await,
        "retry within the default retention",
    );
    assert!(
        replay.expires_in() <= unit * 6 && replay.expires_in() > unit * 2,
        "a record kept for the default retention (6 units) expires within it: {replay:?}"
    );

    h.advance(&store, unit * 3).await;
    peeked_free(
        store.peek(&short, fp(1)).await,
        "peek after the short retention",
    );
    acquired(
        claim(&store, &short, fp(2)).await,
        "claim after the short retention (no fingerprint kept)",
    );
    let replay = completed(
        claim(&store, &default, fp(1)).await,
        "retry after 3 units, within the default retention",
    );
    replays(&replay, "201", fp(1), "retry within the default retention");

    h.advance(&store, unit * 4).await;
    peeked_free(
        store.peek(&default, fp(1)).await,
        "peek after the default retention",
    );
    acquired(
        claim(&store, &default, fp(1)).await,
        "claim after the default retention",
    );
}

/// [`Store::remove`] forgets a completed record (answering whether there
/// was one): the key is free again. A claim in progress keeps its key.
pub async fn remove_forgets_a_completed_record<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("removed");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    stored(
        store.complete(&k, holder.token, value("200"), None).await,
        "complete by the holder",
    );
    assert!(
        ok(store.remove(&k).await, "remove of a record"),
        "remove of a completed record answers true"
    );
    peeked_free(store.peek(&k, fp(2)).await, "peek after remove");
    let next = acquired(
        claim(&store, &k, fp(2)).await,
        "claim with another fingerprint after remove",
    );
    assert!(
        !ok(
            store.remove(&key("never-used")).await,
            "remove of a free key"
        ),
        "remove of a free key answers false"
    );

    // A claim in progress keeps its key (whether its result is then stored
    // is the store's choice).
    ok(store.remove(&k).await, "remove of a claim in progress");
    let seen = in_progress(
        claim(&store, &k, fp(2)).await,
        "claim after removing a claim in progress",
    );
    assert_eq!(
        seen.token, next.token,
        "the claim still holds its key: {seen:?}"
    );
    ok(
        store.complete(&k, next.token, value("201"), None).await,
        "complete by the holder after a remove",
    );
}

/// Sixteen claims of one free key, polled together, each with its own
/// [`ClaimId`]: exactly one acquires, every other is in progress with its
/// token.
pub async fn concurrent_claims_acquire_exactly_once<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("contended");
    let claims = (0..16)
        .map(|_| store.claim(&k, fp(1), ClaimId::random()))
        .collect();
    let outcomes = join_all(claims).await;
    let winners: Vec<Acquired> = outcomes
        .iter()
        .filter_map(|found| match found {
            Ok(ClaimOutcome::Acquired(acquired)) => Some(*acquired),
            _ => None,
        })
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one of 16 concurrent claims acquires: {outcomes:?}"
    );
    let winner = winners[0];
    for found in outcomes {
        match found {
            Ok(ClaimOutcome::Acquired(acquired)) => assert_eq!(acquired, winner),
            Ok(ClaimOutcome::InProgress(seen)) => assert_eq!(
                seen.token, winner.token,
                "a losing claim sees the winner's claim: {seen:?}"
            ),
            other => panic!("a concurrent claim must acquire or be in progress: {other:?}"),
        }
    }
}

/// With `max_entries` 2 and two abandoned claims, a claim of a third key
/// is refused ([`ClaimOutcome::Full`], fail closed); once their leases
/// lapse, it acquires without any purge call: the store reclaims lapsed
/// claims by itself.
///
/// Returns early, checking nothing, if the harness does not
/// [support `max_entries`](Harness::supports_max_entries).
pub async fn a_full_store_refuses_claims_and_reclaims_lapsed_ones<H: Harness>(h: &H) {
    if !h.supports_max_entries() {
        return;
    }
    let options = Options {
        max_entries: Some(2),
        ..options(h)
    };
    let store = h.store(options).await;
    for name in ["first", "second"] {
        let k = key(name);
        let holder = acquired(claim(&store, &k, fp(1)).await, "claim in a store with room");
        ok(
            store.abandon(&k, holder.token).await,
            "abandon by the holder",
        );
    }
    let third = key("third");
    full(
        claim(&store, &third, fp(1)).await,
        "claim of a third key with two claims held",
    );
    h.advance(&store, options.lease + h.unit()).await;
    let holder = acquired(
        claim(&store, &third, fp(1)).await,
        "claim of a third key after the held claims lapsed",
    );
    stored(
        store
            .complete(&third, holder.token, value("200"), None)
            .await,
        "complete in a store that made room",
    );
}

/// With `max_entries` 2 and two completed records, a claim of a third key
/// is refused ([`ClaimOutcome::Full`]): a live record is never forgotten
/// to make room, so both are still replayed.
///
/// Returns early, checking nothing, if the harness does not
/// [support `max_entries`](Harness::supports_max_entries).
pub async fn a_full_store_keeps_its_completed_records<H: Harness>(h: &H) {
    if !h.supports_max_entries() {
        return;
    }
    let options = Options {
        max_entries: Some(2),
        ..options(h)
    };
    let store = h.store(options).await;
    for name in ["first", "second"] {
        let k = key(name);
        let holder = acquired(claim(&store, &k, fp(1)).await, "claim in a store with room");
        stored(
            store.complete(&k, holder.token, value(name), None).await,
            "complete in a store with room",
        );
    }
    full(
        claim(&store, &key("third"), fp(1)).await,
        "claim of a third key with two live records",
    );
    for name in ["first", "second"] {
        let replay = completed(
            claim(&store, &key(name), fp(1)).await,
            "retry of a record in a full store",
        );
        replays(&replay, name, fp(1), "retry of a record in a full store");
    }
}

/// The policy of the wait tests: far longer than they should take.
fn wait_policy<H: Harness>(h: &H) -> WaitPolicy {
    WaitPolicy {
        timeout: h.unit() * 10,
        ..WaitPolicy::default()
    }
}

/// [`wait_for_outcome`] on a claim in progress returns the completed
/// record once the holder completes (here, a moment after the wait began).
pub async fn wait_for_outcome_returns_the_completed_record<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("waited-for");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    let completing = async {
        h.sleep(h.unit() / 20).await;
        store.complete(&k, holder.token, value("201"), None).await
    };
    let waiting = wait_for_outcome(&store, &k, fp(1), wait_policy(h), |by| h.sleep(by));
    let (completion, seen) = join2(completing, waiting).await;
    stored(completion, "complete while a waiter waits");
    let replay = peeked_completed(seen, "wait for a claim that completes");
    replays(&replay, "201", fp(1), "wait for a claim that completes");
}

/// [`wait_for_outcome`] on a claim in progress returns
/// [`Peek::Free`] once the holder releases the key.
pub async fn wait_for_outcome_returns_free_after_a_release<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("released-while-waited-for");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    let releasing = async {
        h.sleep(h.unit() / 20).await;
        store.release(&k, holder.token).await
    };
    let waiting = wait_for_outcome(&store, &k, fp(1), wait_policy(h), |by| h.sleep(by));
    let (released, seen) = join2(releasing, waiting).await;
    ok(released, "release while a waiter waits");
    peeked_free(seen, "wait for a claim that is released");
}

/// [`wait_for_outcome`] on an abandoned claim returns it at once (as in
/// progress, abandoned): waiting would not end before the lease lapses.
pub async fn wait_for_outcome_returns_an_abandoned_claim_at_once<H: Harness>(h: &H) {
    let store = fresh(h).await;
    let k = key("abandoned-before-the-wait");
    let holder = acquired(claim(&store, &k, fp(1)).await, "claim of a free key");
    ok(
        store.abandon(&k, holder.token).await,
        "abandon by the holder",
    );
    let policy = wait_policy(h);
    let started = Instant::now();
    let seen = wait_for_outcome(&store, &k, fp(1), policy, |by| h.sleep(by)).await;
    let waited = started.elapsed();
    let seen = peeked_in_progress(seen, "wait for an abandoned claim");
    assert!(seen.abandoned, "the claim is abandoned: {seen:?}");
    assert!(
        waited < policy.timeout / 2,
        "the wait for an abandoned claim returns at once, not after {waited:?}"
    );
}

/// Makes one `#[test]` per test of the
/// [store conformance suite](crate::store::conformance), each running it
/// against the harness that `$harness` (evaluated anew in each test)
/// makes, on the executor `$block_on` (a function taking the test's
/// future and returning its output).
///
/// Needs the `conformance` feature. Expand it at module level of a test
/// file; the tests are named as the suite's functions.
///
/// # Examples
///
/// With the `CacheHarness` and `block_on` of the
/// [module docs](crate::store::conformance#example):
///
/// ```
/// # use std::future::Future;
/// # use std::time::Duration;
/// # use idemcache::Cache;
/// # use idemcache::clock::ManualClock;
/// # use idemcache::store::conformance::{Harness, Options};
/// # struct CacheHarness { clock: ManualClock }
/// # impl CacheHarness { fn new() -> Self { CacheHarness { clock: ManualClock::new() } } }
/// # impl Harness for CacheHarness {
/// #     type Store = Cache<String, String>;
/// #     async fn store(&self, options: Options) -> Self::Store {
/// #         Cache::builder().lease(options.lease).time_to_live(options.retention)
/// #             .clock(self.clock.clone()).build().unwrap()
/// #     }
/// #     async fn advance(&self, _store: &Self::Store, by: Duration) { self.clock.advance(by) }
/// #     async fn sleep(&self, by: Duration) { std::thread::sleep(by) }
/// #     fn supports_max_entries(&self) -> bool { false }
/// # }
/// # fn block_on<F: Future>(future: F) -> F::Output {
/// #     let mut future = std::pin::pin!(future);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop {
/// #         if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) { return out; }
/// #     }
/// # }
/// idemcache::store_conformance_tests!(CacheHarness::new(), block_on);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    (@tests $harness:expr, $block_on:path; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $block_on($crate::store::conformance::$name(&$harness));
            }
        )+
    };
    ($harness:expr, $block_on:path $(,)?) => {
        $crate::store_conformance_tests!(@tests $harness, $block_on;
            claim_of_a_free_key_acquires,
            a_completed_claim_is_replayed_with_its_value_and_fingerprint,
            a_claim_while_one_runs_is_in_progress,
            another_fingerprint_is_a_mismatch_while_the_first_runs,
            another_fingerprint_is_a_mismatch_after_completion,
            a_request_without_fingerprint_matches_any_record,
            release_frees_the_key_and_keeps_no_fingerprint,
            abandon_holds_the_key_until_the_lease_lapses,
            a_lapsed_lease_is_taken_over_with_a_larger_token,
            a_stale_token_cannot_complete_release_renew_or_abandon,
            an_ended_claim_cannot_be_released_renewed_or_abandoned,
            complete_after_release_is_fenced,
            renew_extends_the_lease,
            a_resent_claim_id_gets_the_same_acquisition,
            a_resent_claim_after_completion_is_replayed,
            peek_reports_free_in_progress_completed_and_mismatch,
            a_record_expires_after_its_retention,
            remove_forgets_a_completed_record,
            concurrent_claims_acquire_exactly_once,
            a_full_store_refuses_claims_and_reclaims_lapsed_ones,
            a_full_store_keeps_its_completed_records,
            wait_for_outcome_returns_the_completed_record,
            wait_for_outcome_returns_free_after_a_release,
            wait_for_outcome_returns_an_abandoned_claim_at_once,
        );
    };
}
