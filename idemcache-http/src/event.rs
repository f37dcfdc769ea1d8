//! What the layer did with each request, for logs and metrics.

use http::{Method, StatusCode};

use crate::ScopedKey;

/// What happened to one request. Passed to the hook given to
/// [`IdempotencyLayerBuilder::on_event`](crate::IdempotencyLayerBuilder::on_event).
///
/// # Feeding `tracing` or `metrics`
///
/// The crate depends on neither; the hook is where you connect them:
///
/// ```text
/// builder.on_event(|event| {
///     tracing::info!(kind = event.kind.as_str(), status = ?event.status, detail = event.detail, "idempotency");
///     metrics::counter!("idempotency_requests", "outcome" => event.kind.as_str()).increment(1);
/// })
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Event<'a> {
    /// What happened.
    pub kind: EventKind,
    /// The request's method.
    pub method: &'a Method,
    /// The request's path.
    pub path: &'a str,
    /// The scoped key, once it is known (not for rejected requests).
    pub key: Option<&'a ScopedKey>,
    /// The status sent to the client, when there is one.
    pub status: Option<StatusCode>,
    /// Why, for the kinds that have a reason (a store error, a response
    /// too large to store).
    pub detail: Option<&'a str>,
}

/// The kinds of [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// The handler ran and its response was stored (or not: see `detail`).
    Executed,
    /// A stored response was replayed.
    Replayed,
    /// A duplicate waited for the first request and replayed its response.
    Waited,
    /// 409: a request with the key was in progress.
    Conflict,
    /// 422 (or as configured): the key was used for another request.
    Mismatch,
    /// 503: the store was full or unavailable (`detail` says which).
    Full,
    /// The handler answered 5xx: the key was released, a retry runs again.
    Released,
    /// The outcome is unknown (handler panicked, streaming or oversized
    /// response, store error on completion): the key stays held until its
    /// lease lapses.
    Abandoned,
    /// The handler finished after its lease lapsed and another request
    /// took the key over: the response was not stored.
    Fenced,
    /// 400/413/503 before any claim: missing or malformed key, unreadable
    /// or oversized body, shutting down.
    Rejected,
}

impl EventKind {
    /// A stable lowercase name (`"executed"`, `"replayed"`, ...), for metric
    /// labels.
    ///
    /// ```
    /// assert_eq!(idemcache_http::EventKind::Replayed.as_str(), "replayed");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Executed => "executed",
            EventKind::Replayed => "replayed",
            EventKind::Waited => "waited",
            EventKind::Conflict => "conflict",
            EventKind::Mismatch => "mismatch",
            EventKind::Full => "full",
            EventKind::Released => "released",
            EventKind::Abandoned => "abandoned",
            EventKind::Fenced => "fenced",
            EventKind::Rejected => "rejected",
        }
    }
}
