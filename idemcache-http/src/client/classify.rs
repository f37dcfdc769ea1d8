//! Classification: what one attempt's outcome means for the logical
//! request — accept it, retry with the same key, or stop.
//!
//! This is the whole retry table, in one `match` ([`Classification::of`]),
//! with no transport in sight: the reqwest wrapper maps a response or an
//! error to an [`Outcome`] and asks here.

use std::fmt;

use http::StatusCode;

/// What one attempt came to, as the retry loop sees it.
///
/// # Examples
///
/// ```
/// use http::StatusCode;
/// use idemcache_http::client::{Classification, Decision, Outcome};
///
/// let class = Classification::of(Outcome::Status(StatusCode::SERVICE_UNAVAILABLE));
/// assert_eq!(class.decision, Decision::Retry);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The server answered with this status.
    Status(StatusCode),
    /// No connection could be made (refused, unreachable, name not
    /// resolved, handshake failed). The server never saw the request.
    Connect,
    /// The attempt timed out before the response headers arrived. The
    /// server may have executed the request: only its key makes the retry
    /// safe.
    Timeout,
    /// Sending the request body failed.
    Body,
    /// The connection failed otherwise while the request was sent or the
    /// response awaited (reset, closed before a response: a lost response).
    Transport,
    /// The request cannot be sent as built (an invalid URL or header, a
    /// redirect loop): sending it again cannot help.
    Unsendable,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The server answered and the answer is final and not an error
    /// (1xx–3xx): return it.
    Accept,
    /// Try again with the same key, after a backoff or the server's
    /// `Retry-After`.
    Retry,
    /// Do not try again: the answer is final (a 4xx other than 408, 409,
    /// 429; a 501 or 505) or the request cannot be sent. A response is
    /// returned to the caller as it came.
    Stop,
}

/// Why an outcome was classified as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// 1xx, 2xx or 3xx.
    Success,
    /// 409: a request with this key is still running on the server.
    InFlight,
    /// 429: the server asks for fewer requests.
    RateLimited,
    /// 408: the server gave up waiting for the request; a transport
    /// failure told in HTTP.
    RequestTimeout,
    /// A 5xx other than 501 and 505: a server that keeps idempotency
    /// records releases the key on these, so a retry executes afresh.
    ServerError,
    /// A 4xx other than 408, 409 and 429 (400 malformed or missing key,
    /// 413 body too large, 422 key reused with another request, ...): the
    /// same request would get the same answer.
    Rejected,
    /// 501 Not Implemented or 505 HTTP Version Not Supported: the server
    /// will never handle this request.
    Unsupported,
    /// See [`Outcome::Connect`].
    Connect,
    /// See [`Outcome::Timeout`].
    Timeout,
    /// See [`Outcome::Body`].
    Body,
    /// See [`Outcome::Transport`].
    Transport,
    /// See [`Outcome::Unsendable`].
    Unsendable,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Success => "the server answered",
            Reason::InFlight => "a request with this key is still running (409)",
            Reason::RateLimited => "rate limited (429)",
            Reason::RequestTimeout => "the server timed out reading the request (408)",
            Reason::ServerError => "server error (5xx)",
            Reason::Rejected => "the server rejected the request (4xx)",
            Reason::Unsupported => "the server does not support the request (501 or 505)",
            Reason::Connect => "could not connect",
            Reason::Timeout => "the attempt timed out",
            Reason::Body => "sending the request body failed",
            Reason::Transport => "the connection failed",
            Reason::Unsendable => "the request cannot be sent as built",
        })
    }
}

/// An outcome's [`Decision`] and the [`Reason`] for it.
///
/// # Examples
///
/// ```
/// use http::StatusCode;
/// use idemcache_http::client::{Classification, Decision, Outcome, Reason};
///
/// assert_eq!(
///     Classification::of(Outcome::Status(StatusCode::UNPROCESSABLE_ENTITY)),
///     Classification { decision: Decision::Stop, reason: Reason::Rejected },
/// );
/// assert_eq!(
///     Classification::of(Outcome::Timeout),
///     Classification { decision: Decision::Retry, reason: Reason::Timeout },
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Classification {
    /// What to do.
    pub decision: Decision,
    /// Why.
    pub reason: Reason,
}

impl Classification {
    /// Classifies one attempt's outcome.
    ///
    /// | outcome | decision | reason |
    /// |---|---|---|
    /// | 1xx, 2xx, 3xx | accept | [`Success`](Reason::Success) |
    /// | 408 | retry | [`RequestTimeout`](Reason::RequestTimeout) |
    /// | 409 | retry | [`InFlight`](Reason::InFlight) |
    /// | 429 | retry | [`RateLimited`](Reason::RateLimited) |
    /// | other 4xx (400, 413, 422, ...) | stop | [`Rejected`](Reason::Rejected) |
    /// | 501, 505 | stop | [`Unsupported`](Reason::Unsupported) |
    /// | other 5xx | retry | [`ServerError`](Reason::ServerError) |
    /// | connect, timeout, body, transport error | retry | the same-named reason |
    /// | unsendable | stop | [`Unsendable`](Reason::Unsendable) |
    ///
    /// ```
    /// use http::StatusCode;
    /// use idemcache_http::client::{Classification, Decision, Outcome};
    ///
    /// let retried = [409, 429, 500, 502, 503, 504];
    /// for code in retried {
    ///     let status = StatusCode::from_u16(code).unwrap();
    ///     assert_eq!(Classification::of(Outcome::Status(status)).decision, Decision::Retry);
    /// }
    /// ```
    pub fn of(outcome: Outcome) -> Classification {
        use Decision::{Accept, Retry, Stop};
        let (decision, reason) = match outcome {
            Outcome::Status(status) => match status.as_u16() {
                100..=399 => (Accept, Reason::Success),
                408 => (Retry, Reason::RequestTimeout),
                409 => (Retry, Reason::InFlight),
                429 => (Retry, Reason::RateLimited),
                501 | 505 => (Stop, Reason::Unsupported),
                500..=599 => (Retry, Reason::ServerError),
                // 4xx, and codes outside 100..=599 (which `StatusCode`
                // accepts up to 999): nothing says a retry would differ.
                _ => (Stop, Reason::Rejected),
            },
            Outcome::Connect => (Retry, Reason::Connect),
            Outcome::Timeout => (Retry, Reason::Timeout),
            Outcome::Body => (Retry, Reason::Body),
            Outcome::Transport => (Retry, Reason::Transport),
            Outcome::Unsendable => (Stop, Reason::Unsendable),
        };
        Classification { decision, reason }
    }
}
