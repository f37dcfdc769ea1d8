//! The retrying client: one idempotency key per logical request, reused on
//! every attempt, so a retry can never execute twice on a server that
//! honours the key (such as one behind this crate's layer).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use idemcache_http::client::{IdempotentClient, RetryErrorKind, RetryPolicy};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = RetryPolicy::builder()
//!     .max_attempts(6)
//!     .attempt_timeout(Duration::from_secs(2))
//!     .deadline(Duration::from_secs(15))
//!     .build()?;
//! let client = IdempotentClient::new(reqwest::Client::new(), policy);
//!
//! let body = r#"{"amount": 500}"#;
//! match client
//!     .send(|http| {
//!         http.post("http://127.0.0.1:8080/charges")
//!             .header("content-type", "application/json")
//!             .body(body)
//!     })
//!     .await
//! {
//!     Ok(response) if response.status().is_success() => {
//!         println!("charged after {} attempts (key {})", response.attempts(), response.key());
//!     }
//!     Ok(response) => println!("refused: {}", response.status()), // 400, 413, 422, ...
//!     Err(err) if err.kind() == RetryErrorKind::DeadlineExceeded => {
//!         println!("{err}"); // resend later with err.key(): safe
//!     }
//!     Err(err) => return Err(err.into()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What is retried
//!
//! | attempt outcome | what the client does |
//! |---|---|
//! | 1xx–3xx | returns the response |
//! | 409 (the first request with this key is still running), 429, 408 | retries |
//! | 5xx but 501 and 505 (the server released the key) | retries |
//! | connect error, timeout, broken connection or request body (lost response) | retries |
//! | 400, 413, 422 and every other 4xx; 501, 505 | returns the response after that one attempt |
//! | a request that cannot be built or sent as built | [`RetryErrorKind::Unsendable`] |
//!
//! A final answer is `Ok` whatever its status; `Err` ([`RetryError`]) means
//! no final answer was had, and tells the attempts made, the last status or
//! transport error, and the key. [`Classification::of`] is the table above
//! as code.
//!
//! # Keys
//!
//! [`IdempotentClient::send`] draws a key with [`idemcache::key::random`];
//! [`IdempotentClient::send_with_key`] takes one, for example from
//! [`idemcache::key::deterministic`] so a resubmitted form gets the same
//! key. Every attempt carries it as `Idempotency-Key: "<key>"`, an RFC 8941
//! sf-string (servers accept it quoted or bare). A response with
//! `Idempotent-Replayed: true` ([`IdempotentResponse::is_replayed`]) was
//! executed on an earlier attempt whose answer was lost.
//!
//! # Waits, timeouts and the deadline
//!
//! Before retry `n` the client waits the response's `Retry-After`
//! (delta-seconds or HTTP-date, capped at
//! [`RetryPolicy::max_retry_after`]; garbage is ignored) or else a
//! [`Backoff`] delay: uniform in `[0, min(max_backoff, initial_backoff ×
//! multiplierⁿ⁻¹)]`. Each attempt is timed until its response headers
//! arrive ([`RetryPolicy::attempt_timeout`]); the whole logical request,
//! waits included, by [`RetryPolicy::deadline`], which also cuts the last
//! attempt short and gives up at once when the next wait would end past
//! it.
//!
//! # Batches
//!
//! [`IdempotentClient::send_batch`] sends the items of a batch, each under
//! its own key [`item_key`]`(batch_key, index)` and retried alone,
//! sequentially or concurrently; [`BatchOutcome::unfinished`] lists what to
//! send again. Because item keys derive from the batch key, sending a
//! partly failed batch again executes only the items that did not succeed.
//!
//! # Testing without a network
//!
//! The retry decisions are plain functions and types: [`Classification`],
//! [`Backoff`] (seedable), [`parse_retry_after`] and [`retry_after`] (given
//! `now`), and [`RetryPolicy`]. The crate tests them as tables, and the
//! client itself against a server on a loopback socket
//! (`tests/client.rs`).

mod backoff;
mod batch;
mod classify;
mod error;
mod header;
mod idempotent;
mod policy;
mod retry_after;

pub use backoff::Backoff;
pub use batch::{BatchMode, BatchOutcome, ItemOutcome, item_key};
pub use classify::{Classification, Decision, Outcome, Reason};
pub use error::{RetryError, RetryErrorKind};
pub use header::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, is_replayed};
pub use idempotent::{IdempotentClient, IdempotentResponse};
pub use policy::{PolicyError, RetryPolicy, RetryPolicyBuilder};
pub use retry_after::{parse_retry_after, retry_after};
