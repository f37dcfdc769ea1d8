//! The error of a logical request the client gave up on.

use std::error::Error;
use std::fmt;

use http::StatusCode;

use super::Reason;

/// Why the client gave up, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryErrorKind {
    /// Every attempt [`RetryPolicy::max_attempts`](super::RetryPolicy::max_attempts)
    /// allows was made, and the last one failed in a way worth retrying.
    AttemptsExhausted,
    /// The overall [`deadline`](super::RetryPolicy::deadline) passed, or
    /// the wait before the next retry would have ended past it.
    DeadlineExceeded,
    /// The request cannot be sent as built (an invalid URL or header, a
    /// redirect loop); it was not retried.
    Unsendable,
    /// The key cannot be sent: it is empty, longer than
    /// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN), or holds a byte that is neither
    /// visible ASCII nor a space, or a comma. Nothing was sent.
    InvalidKey,
}

/// A logical request the client gave up on: why, after how many attempts,
/// with which key, and what the last attempt came to.
///
/// Answers from the server that are final (a 422, a 400) are not errors:
/// they come back as an [`IdempotentResponse`](super::IdempotentResponse)
/// for the caller to read. A `RetryError` means no final answer was had.
///
/// When [`is_retryable`](Self::is_retryable), sending the same request
/// again later **with the same [`key`](Self::key)** is safe: the server
/// executes it at most once, and replays the outcome if an attempt did run.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(client: idemcache_http::client::IdempotentClient) {
/// use idemcache_http::client::RetryErrorKind;
///
/// let key = idemcache::key::random();
/// match client.send_with_key(key, |http| http.post("http://127.0.0.1:8080/charges")).await {
///     Ok(response) => println!("{} after {} attempts", response.status(), response.attempts()),
///     Err(err) if err.is_retryable() => {
///         // Queue it: resend later with err.key().
///         eprintln!("{err}");
///     }
///     Err(err) => assert_ne!(err.kind(), RetryErrorKind::AttemptsExhausted),
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct RetryError {
    pub(super) kind: RetryErrorKind,
    pub(super) key: String,
    pub(super) attempts: u32,
    pub(super) last_reason: Option<Reason>,
    pub(super) last_status: Option<StatusCode>,
    pub(super) source: Option<reqwest::Error>,
    pub(super) response: Option<reqwest::Response>,
}

impl RetryError {
    /// Why the client gave up.
    pub fn kind(&self) -> RetryErrorKind {
        self.kind
    }

    /// The idempotency key every attempt carried (unquoted).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Attempts sent (0 when nothing was sent).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How the last attempt ended; `None` when nothing was sent.
    pub fn last_reason(&self) -> Option<Reason> {
        self.last_reason
    }

    /// The status of the last attempt's response; `None` when it got none
    /// (a transport error or timeout) or nothing was sent.
    pub fn last_status(&self) -> Option<StatusCode> {
        self.last_status
    }

    /// The last attempt's response (a 409, 429 or 5xx), to read its body;
    /// `None` when it got none.
    pub fn response(&self) -> Option<&reqwest::Response> {
        self.response.as_ref()
    }

    /// Takes the last attempt's response, to read its body.
    pub fn into_response(self) -> Option<reqwest::Response> {
        self.response
    }

    /// Whether sending the request again later, with the same key, may
    /// succeed: true when the client ran out of attempts or time, false
    /// when the request or its key cannot be sent.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            RetryErrorKind::AttemptsExhausted | RetryErrorKind::DeadlineExceeded
        )
    }
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let attempts = match self.attempts {
            1 => "1 attempt".to_owned(),
            n => format!("{n} attempts"),
        };
        match self.kind {
            RetryErrorKind::AttemptsExhausted => {
                write!(f, "gave up after {attempts} with idempotency key {key:?}")?;
            }
            RetryErrorKind::DeadlineExceeded => write!(
                f,
                "deadline passed after {attempts} with idempotency key {key:?}"
            )?,
            RetryErrorKind::Unsendable => write!(
                f,
                "request cannot be sent as built (after {attempts} with idempotency key {key:?}); fix the request builder"
            )?,
            RetryErrorKind::InvalidKey => {
                return write!(
                    f,
                    "idempotency key {key:?} cannot be sent: use 1 to 255 bytes of visible ASCII or spaces, without commas (key::random and key::deterministic always qualify)"
                );
            }
        }
        if let Some(reason) = self.last_reason.filter(|_| self.attempts > 0) {
            write!(f, "; last attempt: {reason}")?;
        }
        if let Some(status) = self.last_status {
            write!(f, " ({status})")?;
        }
        if self.is_retryable() {
            f.write_str("; resending later with the same key is safe")?;
        }
        Ok(())
    }
}

impl Error for RetryError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn Error + 'static))
    }
}
