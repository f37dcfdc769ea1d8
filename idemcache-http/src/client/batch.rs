//! Batches: one key per item, derived from the batch's key, so a batch
//! that partly failed can be sent again and only what did not succeed
//! executes.
//!
//! Each item runs its own retry loop (its own attempts, backoff and
//! deadline, from when the item starts), so an item that fails is retried
//! alone while the others finish. The items of one batch run on the
//! calling task, up to a concurrency limit, without spawning: the builder
//! closure may borrow the batch's data.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use super::{IdempotentClient, IdempotentResponse, RetryError};

/// The idempotency key of item `index` of the batch keyed `batch_key`:
/// [`idemcache::key::deterministic`]`([batch_key, index in decimal])`,
/// that is 64 lowercase hex digits of SHA-256 over each part's length
/// (little-endian `u64`) followed by its bytes.
///
/// The derivation is fixed: the same batch key and index give the same
/// key on any machine and version, so a batch replayed from a file (or by
/// another process) reuses the keys of its first run. The length prefixes
/// keep `("ab", 1)` and `("a", 11)`-style pairs apart.
///
/// # Examples
///
/// ```
/// use idemcache::key;
/// use idemcache_http::client::item_key;
///
/// let batch = "payouts-2024-06-01";
/// assert_eq!(item_key(batch, 3), key::deterministic([batch, "3"]));
/// assert_ne!(item_key(batch, 3), item_key(batch, 4));
/// assert_ne!(item_key("a", 11), item_key("a1", 1));
/// ```
pub fn item_key(batch_key: &str, index: usize) -> String {
    let index = index.to_string();
    idemcache::key::deterministic([batch_key, index.as_str()])
}

/// How the items of a batch are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchMode {
    /// One item at a time, in the order given: an item starts once the
    /// previous one has its final outcome (retries included).
    Sequential,
    /// Up to this many items in flight at once, started in the order
    /// given (`usize::MAX` for all at once; 0 is taken as 1).
    Concurrent(usize),
}

impl BatchMode {
    fn limit(self) -> usize {
        match self {
            BatchMode::Sequential => 1,
            BatchMode::Concurrent(limit) => limit.max(1),
        }
    }
}

/// One item's final outcome in a [`BatchOutcome`].
#[derive(Debug)]
pub struct ItemOutcome {
    /// The item's index, as given to
    /// [`send_batch`](IdempotentClient::send_batch).
    pub index: usize,
    /// Its final answer, or why the client gave up on it.
    pub result: Result<IdempotentResponse, RetryError>,
}

impl ItemOutcome {
    /// The item's key ([`item_key`] of the batch key and the index).
    pub fn key(&self) -> &str {
        match &self.result {
            Ok(response) => response.key(),
            Err(err) => err.key(),
        }
    }

    /// Attempts sent for this item.
    pub fn attempts(&self) -> u32 {
        match &self.result {
            Ok(response) => response.attempts(),
            Err(err) => err.attempts(),
        }
    }

    /// Whether the item got a 2xx answer.
    pub fn is_success(&self) -> bool {
        self.result
            .as_ref()
            .is_ok_and(|response| response.status().is_success())
    }
}

/// The outcome of every item of a batch, in the order the indices were
/// given.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(client: idemcache_http::client::IdempotentClient, url: &str) {
/// use idemcache_http::client::BatchMode;
///
/// let amounts = [500u64, 1200, 90];
/// let build = |http: &reqwest::Client, i: usize| {
///     http.post(url).body(format!(r#"{{"amount": {}}}"#, amounts[i]))
/// };
/// let outcome = client
///     .send_batch("payouts-2024-06-01", 0..amounts.len(), BatchMode::Concurrent(8), build)
///     .await;
/// if !outcome.unfinished().is_empty() {
///     // Later (or in another process): only these items are sent again,
///     // under the same keys.
///     let again = client
///         .send_batch(outcome.batch_key(), outcome.unfinished(), BatchMode::Sequential, build)
///         .await;
///     # let _ = again;
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct BatchOutcome {
    batch_key: String,
    items: Vec<ItemOutcome>,
}

impl BatchOutcome {
    /// The batch's key, from which each item's key is derived.
    pub fn batch_key(&self) -> &str {
        &self.batch_key
    }

    /// Every item's outcome, in the order the indices were given.
    pub fn items(&self) -> &[ItemOutcome] {
        &self.items
    }

    /// Takes every item's outcome.
    pub fn into_items(self) -> Vec<ItemOutcome> {
        self.items
    }

    /// Whether every item got a 2xx answer.
    pub fn all_succeeded(&self) -> bool {
        self.items.iter().all(ItemOutcome::is_success)
    }

    /// The indices of the items the client gave up on for lack of attempts
    /// or time ([`RetryError::is_retryable`]): worth sending again, with
    /// the same batch key. Items the server answered with an error (a 422)
    /// are not among them: sending them again would get the same answer.
    pub fn unfinished(&self) -> Vec<usize> {
        self.items
            .iter()
            .filter(|item| item.result.as_ref().is_err_and(RetryError::is_retryable))
            .map(|item| item.index)
            .collect()
    }
}

impl IdempotentClient {
    /// Sends the items `indices` of the batch keyed `batch_key`, each as
    /// its own logical request under [`item_key`]`(batch_key, index)`,
    /// retried alone as the policy says; returns every item's outcome.
    ///
    /// `build` is called once per attempt of an item, with the client and
    /// the item's index. Pass `0..len` the first time; to finish a batch
    /// that partly failed, pass [`BatchOutcome::unfinished`] (or send the
    /// whole batch again: items that succeeded are replayed by the server,
    /// not executed).
    ///
    /// A repeated index is sent again under the same key (the server
    /// replays it).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons every item in flight; the server may
    /// still execute them. Sending the batch again with the same batch key
    /// is safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: idemcache_http::client::IdempotentClient) {
    /// use idemcache_http::client::BatchMode;
    ///
    /// let lines = ["a", "b", "c"];
    /// let outcome = client
    ///     .send_batch("import-17", 0..lines.len(), BatchMode::Sequential, |http, i| {
    ///         http.post("http://127.0.0.1:8080/lines").body(lines[i])
    ///     })
    ///     .await;
    /// for item in outcome.items() {
    ///     println!("line {}: {} attempts, success: {}", item.index, item.attempts(), item.is_success());
    /// }
    /// # }
    /// ```
    pub async fn send_batch<I, F>(
        &self,
        batch_key: &str,
        indices: I,
        mode: BatchMode,
        build: F,
    ) -> BatchOutcome
    where
        I: IntoIterator<Item = usize>,
        F: Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder,
    {
        let build = &build;
        let items = indices.into_iter().map(|index| async move {
            let result = self
                .send_with_key(item_key(batch_key, index), |client| build(client, index))
                .await;
            ItemOutcome { index, result }
        });
        BatchOutcome {
            batch_key: batch_key.to_owned(),
            items: run_limited(items, mode.limit()).await,
        }
    }
}

/// Runs `futures` on the calling task, at most `limit` at once, starting
/// them in order; returns their outputs in that order.
///
/// Each wake polls every running future (at most `limit`), which is
/// nothing next to an HTTP round trip.
async fn run_limited<Fut: Future>(
    futures: impl IntoIterator<Item = Fut>,
    limit: usize,
) -> Vec<Fut::Output> {
    let mut waiting = futures.into_iter().enumerate();
    let mut running: Vec<(usize, Pin<Box<Fut>>)> = Vec::new();
    let mut done: Vec<(usize, Fut::Output)> = Vec::new();
    poll_fn(|cx| {
        loop {
            while running.len() < limit {
                let Some((slot, future)) = waiting.next() else {
                    break;
                };
                running.push((slot, Box::pin(future)));
            }
            if running.is_empty() {
                return Poll::Ready(());
            }
            let before = running.len();
            let mut i = 0;
            while i < running.len() {
                if let Poll::Ready(output) = running[i].1.as_mut().poll(cx) {
                    let (slot, _) = running.swap_remove(i);
                    done.push((slot, output));
                } else {
                    i += 1;
                }
            }
            if running.len() == before {
                // Every running future is pending and has our waker.
                return Poll::Pending;
            }
            // Some finished: start the next ones and poll them too.
        }
    })
    .await;
    done.sort_unstable_by_key(|&(slot, _)| slot);
    done.into_iter().map(|(_, output)| output).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn run_limited_keeps_order_and_never_exceeds_the_limit() {
        let in_flight = Cell::new(0usize);
        let peak = Cell::new(0usize);
        let futures = (0..20u64).map(|i| {
            let (in_flight, peak) = (&in_flight, &peak);
            async move {
                in_flight.set(in_flight.get() + 1);
                peak.set(peak.get().max(in_flight.get()));
                // Later items finish first, so completion order differs
                // from start order.
                tokio::time::sleep(std::time::Duration::from_millis(20 - i)).await;
                in_flight.set(in_flight.get() - 1);
                i
            }
        });
        let outputs = run_limited(futures, 3).await;
        assert_eq!(outputs, (0..20).collect::<Vec<_>>());
        assert_eq!(peak.get(), 3);
    }

    #[tokio::test]
    async fn run_limited_with_nothing_to_run_returns_at_once() {
        let outputs = run_limited(std::iter::empty::<std::future::Ready<u8>>(), 4).await;
        assert!(outputs.is_empty());
    }

    #[test]
    fn a_zero_concurrency_limit_runs_one_at_a_time() {
        assert_eq!(BatchMode::Concurrent(0).limit(), 1);
        assert_eq!(BatchMode::Sequential.limit(), 1);
        assert_eq!(BatchMode::Concurrent(usize::MAX).limit(), usize::MAX);
    }
}
