//! Waiting for a claim in progress, written once for every store.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::{ClaimId, Peek, Store, StoreError};
use crate::Fingerprint;

/// How [`wait_for_outcome`] polls.
///
/// ```
/// use std::time::Duration;
/// use idemcache::store::WaitPolicy;
///
/// let policy = WaitPolicy { timeout: Duration::from_secs(2), ..WaitPolicy::default() };
/// assert_eq!(policy.first_poll, Duration::from_millis(10));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitPolicy {
    /// How long to wait in all (real time).
    pub timeout: Duration,
    /// The first pause between polls; it doubles after each poll...
    pub first_poll: Duration,
    /// ...up to this cap.
    pub max_poll: Duration,
}

impl Default for WaitPolicy {
    /// 5 s in all, polls 10 ms apart doubling up to 500 ms.
    fn default() -> Self {
        WaitPolicy {
            timeout: Duration::from_secs(5),
            first_poll: Duration::from_millis(10),
            max_poll: Duration::from_millis(500),
        }
    }
}

/// Waits until `key`'s claim in progress ends or `policy.timeout` passes,
/// and returns what the key holds then: [`Peek::Completed`] (replay it),
/// [`Peek::Free`] (claim again), [`Peek::Mismatch`], or
/// [`Peek::InProgress`] (still running, or abandoned: answer 409).
///
/// It polls [`Store::peek`] with capped exponential backoff and jitter
/// (each pause is between half and all of the current step), and wakes
/// early when [`Store::changed`] resolves: at once for the in-process
/// store. `sleep` is the runtime's timer (`tokio::time::sleep`, say): the
/// core depends on no runtime.
///
/// # Errors
///
/// The store's error, from the first poll that fails.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idemcache::Cache;
/// use idemcache::store::{wait_for_outcome, ClaimId, ClaimOutcome, Peek, Store, WaitPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idemcache::store::StoreError> {
/// let store: Cache<String, String> = Cache::new();
/// let key = "order-7".to_string();
/// let ClaimOutcome::Acquired(claim) = Store::claim(&store, &key, None, ClaimId::random()).await? else {
///     unreachable!()
/// };
/// let holder = async {
///     tokio::time::sleep(Duration::from_millis(20)).await;
///     store.complete(&key, claim.token, "201".to_string(), None).await
/// };
/// let waiter = wait_for_outcome(&store, &key, None, WaitPolicy::default(), tokio::time::sleep);
/// let (completed, seen) = tokio::join!(holder, waiter);
/// completed?;
/// assert!(matches!(seen?, Peek::Completed(replay) if replay.value() == "201"));
/// # Ok(())
/// # }
/// ```
pub async fn wait_for_outcome<St, Sleep, Nap>(
    store: &St,
    key: &St::Key,
    fingerprint: Option<Fingerprint>,
    policy: WaitPolicy,
    mut sleep: Sleep,
) -> Result<Peek<St::Value>, StoreError>
where
    St: Store,
    Sleep: FnMut(Duration) -> Nap,
    Nap: Future<Output = ()>,
{
    let give_up = Instant::now().checked_add(policy.timeout);
    let mut step = policy.first_poll.max(Duration::from_millis(1));
    loop {
        let peek = store.peek(key, fingerprint).await?;
        match &peek {
            Peek::InProgress(in_flight) if !in_flight.abandoned => {}
            _ => return Ok(peek),
        }
        let left = give_up.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return Ok(peek);
        }
        let pause = jitter(step).min(left);
        first_of(sleep(pause), store.changed(key)).await;
        step = (step * 2).min(policy.max_poll.max(step));
    }
}

/// Between half and all of `step`, so that waiters on many replicas do not
/// poll in step.
fn jitter(step: Duration) -> Duration {
    let half = step / 2;
    let random = ClaimId::random().as_u128() as u64;
    let extra = half.as_nanos() as u64;
    half + Duration::from_nanos(if extra == 0 { 0 } else { random % extra })
}

/// Resolves when either future does.
async fn first_of(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}
