//! The backoff schedule: capped exponential ceilings with full jitter.
//!
//! The wait before retry `n` is drawn uniformly from `[0, ceiling(n)]`,
//! where `ceiling(n) = min(max_backoff, initial_backoff ×
//! multiplierⁿ⁻¹)`. Drawing from zero ("full jitter", as in the AWS
//! architecture note on backoff and jitter) spreads the retries of many
//! clients that failed together, so they do not return together.
//!
//! The random source is a SplitMix64 generator: a few lines, no
//! dependency, and a seed makes a schedule reproducible in tests. Jitter
//! needs spread, not secrecy.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::Duration;

use super::RetryPolicy;

/// The backoff schedule of one logical request.
///
/// [`IdempotentClient`](super::IdempotentClient) makes one per request
/// with a random seed; tests make one with a fixed seed
/// ([`with_seed`](Self::with_seed)) to get the same delays every run.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idemcache_http::client::{Backoff, RetryPolicy};
///
/// let policy = RetryPolicy::builder()
///     .initial_backoff(Duration::from_millis(100))
///     .max_backoff(Duration::from_secs(1))
///     .build()
///     .unwrap();
/// let mut backoff = Backoff::with_seed(&policy, 7);
/// assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(400));
/// assert_eq!(backoff.ceiling(10), Duration::from_secs(1));
/// for retry in 1..=10 {
///     assert!(backoff.delay(retry) <= backoff.ceiling(retry));
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    rng: SplitMix64,
}

impl Backoff {
    /// The schedule of `policy`, with a fresh random seed.
    ///
    /// ```
    /// use idemcache_http::client::{Backoff, RetryPolicy};
    ///
    /// let mut backoff = Backoff::new(&RetryPolicy::default());
    /// assert!(backoff.delay(1) <= RetryPolicy::default().initial_backoff());
    /// ```
    pub fn new(policy: &RetryPolicy) -> Self {
        // `RandomState::new` takes fresh keys on every call (random per
        // thread, then incremented), so the hash of nothing differs too.
        Self::with_seed(policy, RandomState::new().build_hasher().finish())
    }

    /// The schedule of `policy`, with its jitter drawn from `seed`: the
    /// same seed gives the same delays.
    ///
    /// ```
    /// use idemcache_http::client::{Backoff, RetryPolicy};
    ///
    /// let policy = RetryPolicy::default();
    /// let (mut a, mut b) = (Backoff::with_seed(&policy, 1), Backoff::with_seed(&policy, 1));
    /// assert_eq!(a.delay(4), b.delay(4));
    /// ```
    pub fn with_seed(policy: &RetryPolicy, seed: u64) -> Self {
        Backoff {
            initial: policy.initial_backoff(),
            multiplier: policy.multiplier(),
            max: policy.max_backoff(),
            rng: SplitMix64(seed),
        }
    }

    /// The longest wait before retry `retry` (1 for the first retry; 0 is
    /// taken as 1): `min(max_backoff, initial_backoff × multiplierʳᵉᵗʳʸ⁻¹)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::{Backoff, RetryPolicy};
    ///
    /// let backoff = Backoff::with_seed(&RetryPolicy::default(), 0);
    /// assert_eq!(backoff.ceiling(2), Duration::from_millis(200));
    /// assert_eq!(backoff.ceiling(u32::MAX), RetryPolicy::default().max_backoff());
    /// ```
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        // `RetryPolicy` guarantees a finite multiplier ≥ 1 and
        // initial ≤ max, so `secs` is ≥ initial, possibly +∞, never NaN.
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        if secs >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::try_from_secs_f64(secs).map_or(self.max, |d| d.min(self.max))
    }

    /// The wait before retry `retry` (1 for the first retry): uniform in
    /// `[0, ceiling(retry)]`, with nanosecond resolution.
    ///
    /// ```
    /// use idemcache_http::client::{Backoff, RetryPolicy};
    ///
    /// let mut backoff = Backoff::with_seed(&RetryPolicy::default(), 42);
    /// let delay = backoff.delay(3);
    /// assert!(delay <= backoff.ceiling(3));
    /// ```
    pub fn delay(&mut self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        // Ceilings past u64 nanoseconds (584 years) are cut there.
        let span = u64::try_from(ceiling.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        // Lemire's multiply-shift: uniform in [0, span) without division.
        let nanos = ((u128::from(self.rng.next_u64()) * u128::from(span)) >> 64) as u64;
        Duration::from_nanos(nanos)
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): every seed is valid, and
/// consecutive outputs pass BigCrush.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
