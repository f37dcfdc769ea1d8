//! The reqwest wrapper: one key per logical request, attempts until a
//! final answer, the key in every attempt.
//!
//! The loop, per logical request:
//!
//! 1. Check the key once (an unsendable key is an error before any I/O).
//! 2. Build the request afresh from the caller's closure, so each attempt
//!    has its own body, and set `Idempotency-Key` (replacing one the
//!    closure set).
//! 3. Send it, timed by `min(attempt_timeout, time left before the
//!    deadline)`, until the response headers arrive.
//! 4. Classify the outcome ([`Classification::of`]). Accept or stop:
//!    return the response. Retry: give up if attempts or time ran out,
//!    else wait `Retry-After` (capped) or the next backoff, and go to 2.

use std::time::{Duration, SystemTime};

use tokio::time::{Instant, sleep, timeout};

use super::error::{RetryError, RetryErrorKind};
use super::header::{IDEMPOTENCY_KEY, is_replayed, key_header_value};
use super::{Backoff, Classification, Decision, Outcome, Reason, RetryPolicy, retry_after};

/// A `reqwest::Client` that sends each logical request with one
/// idempotency key and retries it under a [`RetryPolicy`].
///
/// Cloning is cheap (the `reqwest::Client` is a handle) and clones share
/// connection pools.
///
/// # Examples
///
/// ```no_run
/// use idemcache_http::client::{IdempotentClient, RetryPolicy};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = IdempotentClient::new(reqwest::Client::new(), RetryPolicy::default());
/// let response = client
///     .send(|http| {
///         http.post("http://127.0.0.1:8080/charges")
///             .header("content-type", "application/json")
///             .body(r#"{"amount": 500}"#)
///     })
///     .await?;
/// println!(
///     "{} after {} attempts with key {}{}",
///     response.status(),
///     response.attempts(),
///     response.key(),
///     if response.is_replayed() { " (replayed)" } else { "" },
/// );
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct IdempotentClient {
    client: reqwest::Client,
    policy: RetryPolicy,
}

impl IdempotentClient {
    /// A client sending through `client` under `policy`.
    ///
    /// ```
    /// use idemcache_http::client::{IdempotentClient, RetryPolicy};
    ///
    /// let client = IdempotentClient::new(reqwest::Client::new(), RetryPolicy::default());
    /// assert_eq!(client.policy().max_attempts(), 5);
    /// ```
    pub fn new(client: reqwest::Client, policy: RetryPolicy) -> Self {
        IdempotentClient { client, policy }
    }

    /// The `reqwest::Client` requests go through (the one passed to the
    /// builder closures).
    ///
    /// ```
    /// use idemcache_http::client::{IdempotentClient, RetryPolicy};
    ///
    /// let client = IdempotentClient::new(reqwest::Client::new(), RetryPolicy::default());
    /// let _plain = client.client().get("http://127.0.0.1:8080/health");
    /// ```
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The retry policy.
    ///
    /// ```
    /// use idemcache_http::client::{IdempotentClient, RetryPolicy};
    ///
    /// let client = IdempotentClient::new(reqwest::Client::new(), RetryPolicy::default());
    /// assert_eq!(client.policy(), &RetryPolicy::default());
    /// ```
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Sends one logical request under a new random key
    /// ([`idemcache::key::random`]), retrying as the policy says.
    ///
    /// `build` is called once per attempt with [`client`](Self::client)
    /// and returns the request to send; building afresh is what makes a
    /// body re-sendable. It may send through another `reqwest::Client`:
    /// the request goes through the client its builder came from. An
    /// `Idempotency-Key` it sets is replaced.
    ///
    /// To resend later after an error, or to resume after this future was
    /// dropped, the key is needed: [`RetryError::key`] has it, or choose
    /// it beforehand with [`send_with_key`](Self::send_with_key).
    ///
    /// # Errors
    ///
    /// A [`RetryError`] when no final answer was had: attempts or time ran
    /// out ([`RetryErrorKind::AttemptsExhausted`],
    /// [`RetryErrorKind::DeadlineExceeded`]) or the request cannot be sent
    /// ([`RetryErrorKind::Unsendable`]). A final answer that is an error
    /// (400, 413, 422, ...) is not an `Err`: it is returned after one
    /// attempt, to be read.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the attempt in progress; the server
    /// may still execute it. Sending again with the same key is safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: idemcache_http::client::IdempotentClient) -> Result<(), idemcache_http::client::RetryError> {
    /// let body = r#"{"amount": 500}"#;
    /// let response = client
    ///     .send(|http| http.post("http://127.0.0.1:8080/charges").body(body))
    ///     .await?;
    /// assert_eq!(response.key().len(), 36);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send<F>(&self, build: F) -> Result<IdempotentResponse, RetryError>
    where
        F: FnMut(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        self.send_with_key(idemcache::key::random(), build).await
    }

    /// Sends one logical request under `key`, retrying as the policy
    /// says; otherwise as [`send`](Self::send).
    ///
    /// Use a key from [`idemcache::key::deterministic`] for a form that
    /// may be submitted twice (the same contents give the same key, so the
    /// second submission replays), or keep a [`idemcache::key::random`]
    /// key with the work item to resend it after a crash.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`RetryErrorKind::InvalidKey`] (before
    /// anything is sent) when `key` is empty, longer than
    /// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN), or holds a byte that is neither
    /// visible ASCII nor a space, or a comma.
    ///
    /// # Cancel safety
    ///
    /// As [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: idemcache_http::client::IdempotentClient) -> Result<(), idemcache_http::client::RetryError> {
    /// use idemcache::key;
    ///
    /// let form = [("user", "42"), ("cart", "7")];
    /// let key = key::deterministic(["checkout", "user-42", "cart-7"]);
    /// let response = client
    ///     .send_with_key(key.clone(), |http| http.post("http://127.0.0.1:8080/orders").form(&form))
    ///     .await?;
    /// assert_eq!(response.key(), key);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_with_key<F>(
        &self,
        key: impl Into<String>,
        mut build: F,
    ) -> Result<IdempotentResponse, RetryError>
    where
        F: FnMut(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let key = key.into();
        let Some(header) = key_header_value(&key) else {
            return Err(RetryError::new(RetryErrorKind::InvalidKey, key, 0));
        };
        let policy = &self.policy;
        let deadline = policy
            .deadline()
            .and_then(|d| Instant::now().checked_add(d));
        let mut backoff = Backoff::new(policy);
        let mut attempts = 0u32;
        loop {
            let (client, request) = build(&self.client).build_split();
            let mut request = match request {
                Ok(request) => request,
                Err(error) => {
                    let mut err = RetryError::new(RetryErrorKind::Unsendable, key, attempts);
                    err.last_reason = Some(Reason::Unsendable);
                    err.source = Some(error);
                    return Err(err);
                }
            };
            request
                .headers_mut()
                .insert(IDEMPOTENCY_KEY, header.clone());

            let attempt = Attempt::send(&client, request, self.attempt_limit(deadline)).await;
            let outcome = attempt.outcome();
            if outcome != Outcome::Unsendable {
                attempts += 1; // it reached the network
            }
            let class = Classification::of(outcome);
            let (response, error) = match attempt {
                Attempt::Answered(response) => (Some(response), None),
                Attempt::Failed(error) => (None, Some(error)),
                Attempt::TimedOut => (None, None),
            };
            let last_status = response.as_ref().map(reqwest::Response::status);

            let (kind, response) = match (class.decision, response) {
                (Decision::Accept | Decision::Stop, Some(response)) => {
                    return Ok(IdempotentResponse {
                        response,
                        key,
                        attempts,
                    });
                }
                (Decision::Accept | Decision::Stop, None) => (RetryErrorKind::Unsendable, None),
                (Decision::Retry, response) => {
                    let wait = response
                        .as_ref()
                        .and_then(|r| {
                            retry_after(r.headers(), SystemTime::now(), policy.max_retry_after())
                        })
                        .unwrap_or_else(|| backoff.delay(attempts));
                    let now = Instant::now();
                    let out_of_time = |wait| {
                        deadline.is_some_and(|d| now.checked_add(wait).is_none_or(|at| at >= d))
                    };
                    let kind = if out_of_time(Duration::ZERO) {
                        RetryErrorKind::DeadlineExceeded
                    } else if attempts >= policy.max_attempts() {
                        RetryErrorKind::AttemptsExhausted
                    } else if out_of_time(wait) {
                        // The retry could not start in time: say so now
                        // rather than sleep to the deadline.
                        RetryErrorKind::DeadlineExceeded
                    } else {
                        // Unread, the body's connection is closed rather
                        // than pooled: release it before waiting.
                        drop(response);
                        sleep(wait).await;
                        continue;
                    };
                    (kind, response)
                }
            };
            return Err(RetryError {
                kind,
                key,
                attempts,
                last_reason: Some(class.reason),
                last_status,
                source: error,
                response,
            });
        }
    }

    /// How long the next attempt may take: the attempt timeout, cut to the
    /// time left before the deadline.
    fn attempt_limit(&self, deadline: Option<Instant>) -> Option<Duration> {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match (self.policy.attempt_timeout(), left) {
            (Some(timeout), Some(left)) => Some(timeout.min(left)),
            (timeout, left) => timeout.or(left),
        }
    }
}

/// How one attempt ended.
enum Attempt {
    /// Response headers arrived (the body is unread).
    Answered(reqwest::Response),
    /// reqwest failed.
    Failed(reqwest::Error),
    /// The attempt's time limit passed first.
    TimedOut,
}

impl Attempt {
    /// Sends `request` through `client`, until its response headers
    /// arrive or `limit` passes.
    async fn send(
        client: &reqwest::Client,
        request: reqwest::Request,
        limit: Option<Duration>,
    ) -> Attempt {
        let sent = match limit {
            Some(limit) => match timeout(limit, client.execute(request)).await {
                Ok(sent) => sent,
                Err(_elapsed) => return Attempt::TimedOut,
            },
            None => client.execute(request).await,
        };
        match sent {
            Ok(response) => Attempt::Answered(response),
            Err(error) => Attempt::Failed(error),
        }
    }

    /// The attempt as the classification sees it.
    fn outcome(&self) -> Outcome {
        match self {
            Attempt::Answered(response) => Outcome::Status(response.status()),
            Attempt::TimedOut => Outcome::Timeout,
            Attempt::Failed(error) if error.is_builder() || error.is_redirect() => {
                Outcome::Unsendable
            }
            Attempt::Failed(error) if error.is_connect() => Outcome::Connect,
            Attempt::Failed(error) if error.is_timeout() => Outcome::Timeout,
            Attempt::Failed(error) if error.is_body() => Outcome::Body,
            Attempt::Failed(_) => Outcome::Transport,
        }
    }
}

impl RetryError {
    fn new(kind: RetryErrorKind, key: String, attempts: u32) -> Self {
        RetryError {
            kind,
            key,
            attempts,
            last_reason: None,
            last_status: None,
            source: None,
            response: None,
        }
    }
}

/// The server's final answer to a logical request, with the key it was
/// sent under and the attempts it took.
///
/// The status may be an error the server will not change its mind about
/// (400, 413, 422, ...): check [`status`](Self::status).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(client: idemcache_http::client::IdempotentClient) -> Result<(), Box<dyn std::error::Error>> {
/// let response = client.send(|http| http.post("http://127.0.0.1:8080/charges")).await?;
/// if response.is_replayed() {
///     println!("executed on an earlier attempt whose answer was lost");
/// }
/// let (key, attempts) = (response.key().to_owned(), response.attempts());
/// let body = response.into_response().bytes().await?;
/// # let _ = (key, attempts, body);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct IdempotentResponse {
    response: reqwest::Response,
    key: String,
    attempts: u32,
}

impl IdempotentResponse {
    /// The response's status.
    pub fn status(&self) -> http::StatusCode {
        self.response.status()
    }

    /// The response's headers.
    pub fn headers(&self) -> &http::HeaderMap {
        self.response.headers()
    }

    /// Whether the server replayed a stored outcome
    /// (`Idempotent-Replayed: true`, see [`is_replayed`](super::is_replayed))
    /// rather than executing on this attempt.
    pub fn is_replayed(&self) -> bool {
        is_replayed(self.response.headers())
    }

    /// The idempotency key every attempt carried (unquoted).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Attempts sent, this one included (1 when the first attempt had the
    /// final answer).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The response.
    pub fn response(&self) -> &reqwest::Response {
        &self.response
    }

    /// Takes the response, to read its body.
    pub fn into_response(self) -> reqwest::Response {
        self.response
    }
}
