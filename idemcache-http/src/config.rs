//! The layer's configuration, checked when it is built.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::request::Parts;
use http::{Method, StatusCode};
use idemcache::Fingerprint;

use crate::{DEFAULT_STORED_HEADERS, Event, MAX_KEY_LEN, Scope};

/// How a request's scope is found.
pub(crate) type ScopeFn = Arc<dyn Fn(&Parts) -> Scope + Send + Sync>;
/// How a request's fingerprint is computed from its head and body.
pub(crate) type FingerprintFn = Arc<dyn Fn(&Parts, &Bytes) -> Fingerprint + Send + Sync>;
/// The event hook.
pub(crate) type EventFn = Arc<dyn for<'a> Fn(&Event<'a>) + Send + Sync>;

/// The status answered to a key reused with another request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MismatchStatus {
    /// 422 Unprocessable Content (the IETF draft; the default).
    #[default]
    UnprocessableContent,
    /// 400 Bad Request (Stripe), for APIs that use 422 for validation.
    BadRequest,
    /// 409 Conflict.
    Conflict,
}

impl MismatchStatus {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            MismatchStatus::UnprocessableContent => StatusCode::UNPROCESSABLE_ENTITY,
            MismatchStatus::BadRequest => StatusCode::BAD_REQUEST,
            MismatchStatus::Conflict => StatusCode::CONFLICT,
        }
    }
}

/// Why [`IdempotencyLayerBuilder::build`](crate::IdempotencyLayerBuilder::build)
/// refused a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No method would be protected.
    NoMethods,
    /// A body cap of zero: no request (or response) could pass.
    ZeroBodyCap {
        /// `"request"` or `"response"`.
        which: &'static str,
    },
    /// The key length limit is zero or above 255.
    KeyLength {
        /// The limit asked for.
        requested: usize,
    },
    /// The `Retry-After` range is empty or starts at zero.
    RetryAfterRange {
        /// The lower bound asked for.
        min: Duration,
        /// The upper bound asked for.
        max: Duration,
    },
    /// A stored header is one that must never be replayed.
    UnsafeStoredHeader {
        /// The header.
        name: String,
    },
    /// The lease renewal ceiling is zero.
    ZeroRenewCeiling,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoMethods => {
                f.write_str("methods: protect at least one method (default: POST, PATCH)")
            }
            ConfigError::ZeroBodyCap { which } => {
                write!(f, "max_{which}_body must be greater than zero")
            }
            ConfigError::KeyLength { requested } => {
                write!(f, "max_key_len must be 1..=255 (got {requested})")
            }
            ConfigError::RetryAfterRange { min, max } => write!(
                f,
                "retry_after range must satisfy 0 < min <= max (got {min:?}..={max:?})"
            ),
            ConfigError::UnsafeStoredHeader { name } => write!(
                f,
                "stored_headers: {name} must never be replayed (sessions, dates and hop-by-hop headers belong to one response)"
            ),
            ConfigError::ZeroRenewCeiling => f.write_str("renew_ceiling must be greater than zero"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Headers never stored: a session cookie replayed to another attempt, a
/// stale date, or hop-by-hop headers of one connection.
pub(crate) const NEVER_STORED: &[&str] = &[
    "set-cookie",
    "date",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "idempotent-replayed",
];

/// Every setting of a layer.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) methods: Vec<Method>,
    pub(crate) header: HeaderName,
    pub(crate) require_key: bool,
    pub(crate) max_key_len: usize,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) mismatch: MismatchStatus,
    pub(crate) retry_after: (Duration, Duration),
    pub(crate) wait: Option<Duration>,
    pub(crate) renew_ceiling: Duration,
    pub(crate) stored_headers: Vec<HeaderName>,
    pub(crate) retention: Option<Duration>,
    pub(crate) scope: Option<ScopeFn>,
    pub(crate) fingerprint: FingerprintFn,
    pub(crate) on_event: Option<EventFn>,
}

impl Config {
    pub(crate) fn new(scope: Option<ScopeFn>) -> Self {
        Config {
            methods: vec![Method::POST, Method::PATCH],
            header: HeaderName::from_static("idempotency-key"),
            require_key: true,
            max_key_len: MAX_KEY_LEN,
            max_request_body: 1 << 20,
            max_response_body: 1 << 20,
            mismatch: MismatchStatus::default(),
            retry_after: (Duration::from_secs(1), Duration::from_secs(5)),
            wait: None,
            renew_ceiling: Duration::from_secs(600),
            stored_headers: DEFAULT_STORED_HEADERS.to_vec(),
            retention: None,
            scope,
            fingerprint: Arc::new(default_fingerprint),
            on_event: None,
        }
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.methods.is_empty() {
            return Err(ConfigError::NoMethods);
        }
        if self.max_request_body == 0 {
            return Err(ConfigError::ZeroBodyCap { which: "request" });
        }
        if self.max_response_body == 0 {
            return Err(ConfigError::ZeroBodyCap { which: "response" });
        }
        if !(1..=MAX_KEY_LEN).contains(&self.max_key_len) {
            return Err(ConfigError::KeyLength {
                requested: self.max_key_len,
            });
        }
        let (min, max) = self.retry_after;
        if min.is_zero() || min > max {
            return Err(ConfigError::RetryAfterRange { min, max });
        }
        if let Some(name) = self
            .stored_headers
            .iter()
            .find(|name| NEVER_STORED.contains(&name.as_str()))
        {
            return Err(ConfigError::UnsafeStoredHeader {
                name: name.as_str().to_owned(),
            });
        }
        if self.renew_ceiling.is_zero() {
            return Err(ConfigError::ZeroRenewCeiling);
        }
        Ok(())
    }
}

/// The default request fingerprint: method, path, query and body, each
/// length-prefixed ([`Fingerprint::of`]).
///
/// ```
/// use bytes::Bytes;
/// use idemcache_http::default_fingerprint;
///
/// let (a, _) = http::Request::post("/charges?x=1").body(()).unwrap().into_parts();
/// let (b, _) = http::Request::post("/refunds?x=1").body(()).unwrap().into_parts();
/// let body = Bytes::from_static(b"{}");
/// assert_ne!(default_fingerprint(&a, &body), default_fingerprint(&b, &body));
/// ```
pub fn default_fingerprint(parts: &Parts, body: &Bytes) -> Fingerprint {
    let uri = &parts.uri;
    Fingerprint::of([
        parts.method.as_str().as_bytes(),
        uri.path().as_bytes(),
        uri.query().unwrap_or("").as_bytes(),
        body.as_ref(),
    ])
}
