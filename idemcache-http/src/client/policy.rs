//! The retry policy: how many attempts, how long to wait between them, and
//! how long a logical request may take in all.
//!
//! Every value is checked once, when the policy is built: an invalid
//! combination is a [`PolicyError`], so the retry loop itself never has to
//! decide what a zero timeout or a NaN multiplier means.

use std::fmt;
use std::time::Duration;

/// How an [`IdempotentClient`](super::IdempotentClient) retries one logical
/// request.
///
/// | option | default | meaning |
/// |---|---|---|
/// | [`max_attempts`](RetryPolicyBuilder::max_attempts) | 5 | attempts in all, the first one included |
/// | [`initial_backoff`](RetryPolicyBuilder::initial_backoff) | 100 ms | ceiling of the wait before the first retry |
/// | [`multiplier`](RetryPolicyBuilder::multiplier) | 2.0 | growth of that ceiling per retry |
/// | [`max_backoff`](RetryPolicyBuilder::max_backoff) | 10 s | the ceiling never grows past this |
/// | [`max_retry_after`](RetryPolicyBuilder::max_retry_after) | 30 s | a server's `Retry-After` is followed up to this |
/// | [`attempt_timeout`](RetryPolicyBuilder::attempt_timeout) | 10 s | one attempt, until the response headers arrive |
/// | [`deadline`](RetryPolicyBuilder::deadline) | 60 s | the whole logical request, every attempt and wait included |
///
/// The wait before retry `n` (1 for the first retry) is drawn uniformly
/// from `[0, min(max_backoff, initial_backoff × multiplierⁿ⁻¹)]` ("full
/// jitter"), unless the response carried a `Retry-After`, which is followed
/// instead, capped at `max_retry_after`. See [`Backoff`](super::Backoff).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idemcache_http::client::{PolicyError, RetryPolicy};
///
/// let policy = RetryPolicy::builder()
///     .max_attempts(8)
///     .initial_backoff(Duration::from_millis(50))
///     .deadline(Duration::from_secs(20))
///     .build()?;
/// assert_eq!(policy.max_attempts(), 8);
///
/// let err = RetryPolicy::builder().max_attempts(0).build().unwrap_err();
/// assert_eq!(err, PolicyError::ZeroMaxAttempts);
/// assert_eq!(err.field(), "max_attempts");
/// # Ok::<(), PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    multiplier: f64,
    max_backoff: Duration,
    max_retry_after: Duration,
    attempt_timeout: Option<Duration>,
    deadline: Option<Duration>,
}

impl RetryPolicy {
    /// Attempts in all, by default.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
    /// Ceiling of the wait before the first retry, by default.
    pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
    /// Growth of the backoff ceiling per retry, by default.
    pub const DEFAULT_MULTIPLIER: f64 = 2.0;
    /// Largest backoff ceiling, by default.
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
    /// Longest `Retry-After` followed, by default.
    pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
    /// Timeout of one attempt, by default.
    pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Overall deadline of a logical request, by default.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

    /// A builder starting from the defaults (see the table on
    /// [`RetryPolicy`]).
    ///
    /// ```
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder().build().unwrap();
    /// assert_eq!(policy, RetryPolicy::default());
    /// ```
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: RetryPolicy::default(),
        }
    }

    /// Attempts in all, the first one included (at least 1).
    ///
    /// ```
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::default().max_attempts(), 5);
    /// ```
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Ceiling of the wait before the first retry.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::default().initial_backoff(), Duration::from_millis(100));
    /// ```
    pub fn initial_backoff(&self) -> Duration {
        self.initial_backoff
    }

    /// Growth of the backoff ceiling per retry (finite, at least 1).
    ///
    /// ```
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::default().multiplier(), 2.0);
    /// ```
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// Largest backoff ceiling.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::default().max_backoff(), Duration::from_secs(10));
    /// ```
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// Longest `Retry-After` followed: a server asking for more is retried
    /// after this long.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::default().max_retry_after(), Duration::from_secs(30));
    /// ```
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// Timeout of one attempt, from sending the request until the response
    /// headers arrive; `None` when attempts are not timed (the
    /// [`deadline`](Self::deadline) still bounds them).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::default().attempt_timeout(), Some(Duration::from_secs(10)));
    /// ```
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// Overall deadline of a logical request, from its first attempt;
    /// `None` when only [`max_attempts`](Self::max_attempts) bounds it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::default().deadline(), Some(Duration::from_secs(60)));
    /// ```
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            initial_backoff: Self::DEFAULT_INITIAL_BACKOFF,
            multiplier: Self::DEFAULT_MULTIPLIER,
            max_backoff: Self::DEFAULT_MAX_BACKOFF,
            max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER,
            attempt_timeout: Some(Self::DEFAULT_ATTEMPT_TIMEOUT),
            deadline: Some(Self::DEFAULT_DEADLINE),
        }
    }
}

/// Builds a [`RetryPolicy`]; [`build`](Self::build) checks every value.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idemcache_http::client::RetryPolicy;
///
/// let policy = RetryPolicy::builder()
///     .attempt_timeout(Duration::from_secs(2))
///     .no_deadline()
///     .build()
///     .unwrap();
/// assert_eq!(policy.deadline(), None);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// Attempts in all, the first one included; at least 1 (1 means never
    /// retry).
    ///
    /// ```
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder().max_attempts(1).build().unwrap();
    /// assert_eq!(policy.max_attempts(), 1);
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// Ceiling of the wait before the first retry; greater than zero and
    /// at most [`max_backoff`](Self::max_backoff).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder()
    ///     .initial_backoff(Duration::from_millis(20))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(policy.initial_backoff(), Duration::from_millis(20));
    /// ```
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.policy.initial_backoff = backoff;
        self
    }

    /// Growth of the backoff ceiling per retry; finite and at least 1
    /// (1 keeps the ceiling constant).
    ///
    /// ```
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// assert!(RetryPolicy::builder().multiplier(1.5).build().is_ok());
    /// assert!(RetryPolicy::builder().multiplier(f64::NAN).build().is_err());
    /// ```
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.policy.multiplier = multiplier;
        self
    }

    /// Largest backoff ceiling; at least
    /// [`initial_backoff`](Self::initial_backoff).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder()
    ///     .max_backoff(Duration::from_secs(2))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(policy.max_backoff(), Duration::from_secs(2));
    /// ```
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.policy.max_backoff = backoff;
        self
    }

    /// Longest `Retry-After` followed; greater than zero. A server asking
    /// for a longer wait is retried after this long (and the overall
    /// deadline still applies).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder()
    ///     .max_retry_after(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(policy.max_retry_after(), Duration::from_secs(5));
    /// ```
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.policy.max_retry_after = cap;
        self
    }

    /// Timeout of one attempt, from sending the request until the response
    /// headers arrive; greater than zero. An attempt that times out is
    /// retried with the same key. Reading the body of the final response is
    /// not covered: bound it with the `reqwest::Client`'s own timeouts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder()
    ///     .attempt_timeout(Duration::from_secs(3))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(policy.attempt_timeout(), Some(Duration::from_secs(3)));
    /// ```
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.policy.attempt_timeout = Some(timeout);
        self
    }

    /// Attempts are not timed; only the [`deadline`](Self::deadline) (if
    /// any) and the `reqwest::Client`'s own timeouts bound them.
    ///
    /// ```
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder().no_attempt_timeout().build().unwrap();
    /// assert_eq!(policy.attempt_timeout(), None);
    /// ```
    pub fn no_attempt_timeout(mut self) -> Self {
        self.policy.attempt_timeout = None;
        self
    }

    /// Overall deadline of a logical request, from its first attempt;
    /// greater than zero. An attempt still running at the deadline is cut
    /// short, and a retry whose wait would end past it is not made.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder()
    ///     .deadline(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(policy.deadline(), Some(Duration::from_secs(5)));
    /// ```
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.policy.deadline = Some(deadline);
        self
    }

    /// No overall deadline: [`max_attempts`](Self::max_attempts) alone
    /// bounds a logical request.
    ///
    /// ```
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder().no_deadline().build().unwrap();
    /// assert_eq!(policy.deadline(), None);
    /// ```
    pub fn no_deadline(mut self) -> Self {
        self.policy.deadline = None;
        self
    }

    /// Checks every value and returns the policy.
    ///
    /// # Errors
    ///
    /// A [`PolicyError`] naming the first invalid option, checked in the
    /// order of the variants of [`PolicyError`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::client::{PolicyError, RetryPolicy};
    ///
    /// let err = RetryPolicy::builder()
    ///     .initial_backoff(Duration::from_secs(5))
    ///     .max_backoff(Duration::from_secs(1))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(err, PolicyError::MaxBackoffBelowInitial { .. }));
    /// ```
    pub fn build(self) -> Result<RetryPolicy, PolicyError> {
        let p = self.policy;
        if p.max_attempts == 0 {
            return Err(PolicyError::ZeroMaxAttempts);
        }
        if p.initial_backoff.is_zero() {
            return Err(PolicyError::ZeroInitialBackoff);
        }
        if !(p.multiplier.is_finite() && p.multiplier >= 1.0) {
            return Err(PolicyError::InvalidMultiplier {
                multiplier: p.multiplier,
            });
        }
        if p.max_backoff < p.initial_backoff {
            return Err(PolicyError::MaxBackoffBelowInitial {
                initial: p.initial_backoff,
                max: p.max_backoff,
            });
        }
        if p.max_retry_after.is_zero() {
            return Err(PolicyError::ZeroMaxRetryAfter);
        }
        if p.attempt_timeout.is_some_and(|t| t.is_zero()) {
            return Err(PolicyError::ZeroAttemptTimeout);
        }
        if p.deadline.is_some_and(|d| d.is_zero()) {
            return Err(PolicyError::ZeroDeadline);
        }
        Ok(p)
    }
}

/// Why [`RetryPolicyBuilder::build`] refused a policy.
///
/// Every variant names the builder option at fault
/// ([`field`](Self::field)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idemcache_http::client::{PolicyError, RetryPolicy};
///
/// let err = RetryPolicy::builder().deadline(Duration::ZERO).build().unwrap_err();
/// assert_eq!(err, PolicyError::ZeroDeadline);
/// assert_eq!(err.field(), "deadline");
/// println!("{err}"); // deadline must be greater than zero ...
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_attempts` was zero: the request would never be sent.
    ZeroMaxAttempts,
    /// `initial_backoff` was zero: every retry would follow at once.
    ZeroInitialBackoff,
    /// `multiplier` was NaN, infinite or below 1.
    InvalidMultiplier {
        /// The multiplier given.
        multiplier: f64,
    },
    /// `max_backoff` was below `initial_backoff`.
    MaxBackoffBelowInitial {
        /// The initial backoff given.
        initial: Duration,
        /// The maximum backoff given.
        max: Duration,
    },
    /// `max_retry_after` was zero: every `Retry-After` would be ignored.
    ZeroMaxRetryAfter,
    /// `attempt_timeout` was zero: every attempt would time out unsent.
    ZeroAttemptTimeout,
    /// `deadline` was zero: the request would be out of time before its
    /// first attempt.
    ZeroDeadline,
}

impl PolicyError {
    /// The builder option this error is about, spelled as the builder
    /// method is.
    ///
    /// ```
    /// use idemcache_http::client::RetryPolicy;
    ///
    /// let err = RetryPolicy::builder().multiplier(0.5).build().unwrap_err();
    /// assert_eq!(err.field(), "multiplier");
    /// ```
    pub fn field(&self) -> &'static str {
        match self {
            PolicyError::ZeroMaxAttempts => "max_attempts",
            PolicyError::ZeroInitialBackoff => "initial_backoff",
            PolicyError::InvalidMultiplier { .. } => "multiplier",
            PolicyError::MaxBackoffBelowInitial { .. } => "max_backoff",
            PolicyError::ZeroMaxRetryAfter => "max_retry_after",
            PolicyError::ZeroAttemptTimeout => "attempt_timeout",
            PolicyError::ZeroDeadline => "deadline",
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::ZeroMaxAttempts => f.write_str(
                "max_attempts must be at least 1 (1 sends the request once, without retries)",
            ),
            PolicyError::ZeroInitialBackoff => f.write_str(
                "initial_backoff must be greater than zero (retries would hammer the server)",
            ),
            PolicyError::InvalidMultiplier { multiplier } => write!(
                f,
                "multiplier must be a finite number of at least 1 (got {multiplier}; 1 keeps the backoff constant)"
            ),
            PolicyError::MaxBackoffBelowInitial { initial, max } => write!(
                f,
                "max_backoff ({max:?}) must be at least initial_backoff ({initial:?})"
            ),
            PolicyError::ZeroMaxRetryAfter => f.write_str(
                "max_retry_after must be greater than zero (it caps how long a server's Retry-After is followed)",
            ),
            PolicyError::ZeroAttemptTimeout => f.write_str(
                "attempt_timeout must be greater than zero (use no_attempt_timeout to leave attempts untimed)",
            ),
            PolicyError::ZeroDeadline => f.write_str(
                "deadline must be greater than zero (use no_deadline to bound a request by max_attempts alone)",
            ),
        }
    }
}

impl std::error::Error for PolicyError {}
