//! The tower layer and its service.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idemcache::Fingerprint;
use idemcache::store::{ClaimId, ClaimOutcome, Completion, Peek, Store, StoreError, WaitPolicy};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{Config, ConfigError, MismatchStatus};
use crate::shutdown::{ShutdownHandle, ShutdownState};
use crate::{
    Body, BoxError, Event, EventKind, KeyError, Problem, Scope, ScopedKey, StoredResponse,
};

/// Claims a request retried after its key was released may make before
/// the layer answers 409 (a key released and reclaimed over and over).
const MAX_CLAIMS: usize = 3;

/// The `Idempotency-Key` layer: wraps a service (an axum `Router`, a hyper
/// service, any tower stack) so that unsafe requests with the same key run
/// once and their retries replay the stored response.
///
/// Build it with [`scoped`](Self::scoped) or [`unscoped`](Self::unscoped)
/// (defaults), or [`builder`](Self::builder) to configure it. It is
/// generic over any [`Store`] of [`StoredResponse`]s whose key is made
/// from a [`ScopedKey`]: the in-process `idemcache::Cache<ScopedKey,
/// StoredResponse>`, or a store keyed by `String` and shared between
/// replicas (`idemcache-redis`, with [`StoredResponse::to_bytes`] as its
/// codec).
///
/// ```
/// use idemcache::Cache;
/// use idemcache_http::{IdempotencyLayer, ScopedKey, StoredResponse};
///
/// let store: Cache<ScopedKey, StoredResponse> = Cache::builder().max_entries(100_000).build()?;
/// let app: axum::Router = axum::Router::new()
///     .route("/charges", axum::routing::post(|| async { "charged" }))
///     .layer(IdempotencyLayer::unscoped(store));
/// # Ok::<(), idemcache::BuildError>(())
/// ```
pub struct IdempotencyLayer<St> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<St> {
    store: St,
    config: Config,
    shutdown: Arc<ShutdownState>,
}

impl<St> IdempotencyLayer<St>
where
    St: Store<Value = StoredResponse> + 'static,
    St::Key: From<ScopedKey> + 'static,
{
    /// A layer with the defaults (see the crate docs' table), scoping keys
    /// by `scope`: a digest of the request's principal, so that one
    /// client's key never replays another's response.
    ///
    /// ```
    /// use idemcache_http::{IdempotencyLayer, MemoryStore, Scope};
    ///
    /// let layer = IdempotencyLayer::scoped(MemoryStore::new(), |parts: &http::request::Parts| {
    ///     match parts.headers.get(http::header::AUTHORIZATION) {
    ///         Some(credential) => Scope::of([credential.as_bytes()]),
    ///         None => Scope::anonymous(),
    ///     }
    /// });
    /// ```
    pub fn scoped(store: St, scope: impl Fn(&Parts) -> Scope + Send + Sync + 'static) -> Self {
        Self::builder(store)
            .scoped(scope)
            .build()
            .expect("the defaults are valid")
    }

    /// A layer with the defaults and one scope for every request: only for
    /// services with a single client, or keys that are global by design.
    ///
    /// ```
    /// let layer = idemcache_http::IdempotencyLayer::unscoped(idemcache_http::MemoryStore::new());
    /// ```
    pub fn unscoped(store: St) -> Self {
        Self::builder(store)
            .build()
            .expect("the defaults are valid")
    }

    /// A builder, starting unscoped with the defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache_http::{IdempotencyLayer, MemoryStore, MismatchStatus};
    ///
    /// let layer = IdempotencyLayer::builder(MemoryStore::new())
    ///     .mismatch_status(MismatchStatus::BadRequest) // as Stripe does
    ///     .wait_for_in_flight(Duration::from_secs(2))   // coalesce duplicates
    ///     .build()?;
    /// # Ok::<(), idemcache_http::ConfigError>(())
    /// ```
    pub fn builder(store: St) -> IdempotencyLayerBuilder<St> {
        IdempotencyLayerBuilder {
            store,
            config: Config::new(None),
        }
    }

    /// The handle that stops the layer taking claims and waits for its
    /// detached handlers (graceful shutdown).
    ///
    /// ```
    /// let layer = idemcache_http::IdempotencyLayer::unscoped(idemcache_http::MemoryStore::new());
    /// let handle = layer.shutdown_handle();
    /// assert_eq!(handle.in_flight(), 0);
    /// ```
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.shared.shutdown))
    }

    /// The store the layer keeps its records in.
    pub fn store(&self) -> &St {
        &self.shared.store
    }
}

/// Configures an [`IdempotencyLayer`]; every option has a default (the
/// crate docs' table). [`build`](Self::build) checks them.
pub struct IdempotencyLayerBuilder<St> {
    store: St,
    config: Config,
}

impl<St> IdempotencyLayerBuilder<St>
where
    St: Store<Value = StoredResponse> + 'static,
    St::Key: From<ScopedKey> + 'static,
{
    /// Scopes keys by `scope` (see [`IdempotencyLayer::scoped`]).
    pub fn scoped(mut self, scope: impl Fn(&Parts) -> Scope + Send + Sync + 'static) -> Self {
        self.config.scope = Some(Arc::new(scope));
        self
    }

    /// One scope for every request (the builder's starting point).
    pub fn unscoped(mut self) -> Self {
        self.config.scope = None;
        self
    }

    /// The methods protected (default POST and PATCH); others pass through.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// The key header (default `Idempotency-Key`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config.header = name;
        self
    }

    /// Whether a protected request without a key is refused with 400 (the
    /// default) or passes through unprotected.
    pub fn require_key(mut self, required: bool) -> Self {
        self.config.require_key = required;
        self
    }

    /// The longest key accepted, 1..=255 bytes (default 255).
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.config.max_key_len = bytes;
        self
    }

    /// The largest request body read (default 1 MiB): larger ones get 413
    /// without running the handler.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.config.max_request_body = bytes;
        self
    }

    /// The largest response body stored (default 1 MiB): a larger or
    /// streaming response is returned as it came, and its claim abandoned
    /// (the key stays held until the lease lapses).
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.config.max_response_body = bytes;
        self
    }

    /// The status for a key reused with another request (default 422).
    pub fn mismatch_status(mut self, status: MismatchStatus) -> Self {
        self.config.mismatch = status;
        self
    }

    /// The range `Retry-After` is clamped to on a 409 (default 1–5 s); the
    /// hint within it comes from how long the first request has run.
    pub fn retry_after(mut self, min: Duration, max: Duration) -> Self {
        self.config.retry_after = (min, max);
        self
    }

    /// Opt-in coalescing: a duplicate of a request in progress waits up to
    /// `timeout` for its result and replays it, instead of a 409 at once
    /// (the 409 comes if the wait times out).
    pub fn wait_for_in_flight(mut self, timeout: Duration) -> Self {
        self.config.wait = Some(timeout);
        self
    }

    /// How long a handler's lease is renewed while it runs (default 10
    /// minutes): past it, the lease lapses and a retry may run again.
    pub fn renew_ceiling(mut self, ceiling: Duration) -> Self {
        self.config.renew_ceiling = ceiling;
        self
    }

    /// The response headers stored and replayed (default
    /// [`DEFAULT_STORED_HEADERS`](crate::DEFAULT_STORED_HEADERS)).
    /// `Set-Cookie`, `Date` and hop-by-hop headers are refused.
    pub fn stored_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.stored_headers = names.into_iter().collect();
        self
    }

    /// How long responses are kept; default: the store's retention.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = Some(retention);
        self
    }

    /// The request fingerprint (default [`default_fingerprint`](crate::default_fingerprint):
    /// method, path, query, body). Leave out what may differ between
    /// retries of one request (a timestamp header, say).
    pub fn fingerprint(
        mut self,
        fingerprint: impl Fn(&Parts, &Bytes) -> Fingerprint + Send + Sync + 'static,
    ) -> Self {
        self.config.fingerprint = Arc::new(fingerprint);
        self
    }

    /// Calls `hook` with every [`Event`] (see its docs for `tracing` and
    /// `metrics`). Keep it cheap: it runs on the request path.
    pub fn on_event(mut self, hook: impl for<'a> Fn(&Event<'a>) + Send + Sync + 'static) -> Self {
        self.config.on_event = Some(Arc::new(hook));
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the bad option.
    pub fn build(self) -> Result<IdempotencyLayer<St>, ConfigError> {
        self.config.check()?;
        Ok(IdempotencyLayer {
            shared: Arc::new(Shared {
                store: self.store,
                config: self.config,
                shutdown: Arc::default(),
            }),
        })
    }
}

impl<S, St> Layer<S> for IdempotencyLayer<St> {
    type Service = IdempotencyService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service an [`IdempotencyLayer`] wraps around another.
pub struct IdempotencyService<S, St> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for IdempotencyService<S, St> {
    fn clone(&self) -> Self {
        IdempotencyService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S, St>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store<Value = StoredResponse> + 'static,
    St::Key: From<ScopedKey> + 'static,
    ReqBody: HttpBody<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready serves this request; a fresh
        // clone takes its place for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(handle(shared, inner, request))
    }
}

/// A response with the layer's body type.
fn boxed<B>(response: Response<B>) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    response.map(Body::new)
}

fn full(bytes: Bytes) -> Body {
    Body::from_bytes(bytes)
}

/// What one request is, for events.
struct RequestInfo {
    method: Method,
    /// The whole URI (a reference-counted copy), so that the path is only
    /// read when there is an event hook to give it to.
    uri: http::Uri,
}

impl<St> Shared<St> {
    fn emit(
        &self,
        info: &RequestInfo,
        kind: EventKind,
        key: Option<&ScopedKey>,
        status: Option<StatusCode>,
        detail: Option<&str>,
    ) {
        if let Some(hook) = &self.config.on_event {
            hook(&Event {
                kind,
                method: &info.method,
                path: info.uri.path(),
                key,
                status,
                detail,
            });
        }
    }

    /// A problem response, with its event.
    fn problem(
        &self,
        info: &RequestInfo,
        kind: EventKind,
        key: Option<&ScopedKey>,
        problem: Problem,
        status: StatusCode,
        detail: &str,
    ) -> Response<Body> {
        self.emit(info, kind, key, Some(status), Some(detail));
        problem.response(status, detail).map(full)
    }

    /// 409 with a `Retry-After` clamped to the configured range.
    fn conflict(&self, info: &RequestInfo, key: &ScopedKey, hint: Duration) -> Response<Body> {
        let (min, max) = self.config.retry_after;
        let secs = hint.clamp(min, max).as_secs().max(1);
        let detail = "A request with this Idempotency-Key is still being processed; retry later.";
        let mut response = self.problem(
            info,
            EventKind::Conflict,
            Some(key),
            Problem::InProgress,
            StatusCode::CONFLICT,
            detail,
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
        response
    }

    fn unavailable(&self, info: &RequestInfo, key: &ScopedKey, detail: &str) -> Response<Body> {
        let mut response = self.problem(
            info,
            EventKind::Full,
            Some(key),
            Problem::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            detail,
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(1));
        response
    }

    fn replay(
        &self,
        info: &RequestInfo,
        key: &ScopedKey,
        stored: &StoredResponse,
        kind: EventKind,
    ) -> Response<Body> {
        self.emit(info, kind, Some(key), Some(stored.status()), None);
        stored.to_response().map(full)
    }
}

async fn handle<S, St, ReqBody, ResBody>(
    shared: Arc<Shared<St>>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store<Value = StoredResponse> + 'static,
    St::Key: From<ScopedKey> + 'static,
    ReqBody: HttpBody<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let config = &shared.config;
    let passthrough = |request: Request<ReqBody>, mut inner: S| async move {
        let request = request.map(Body::new);
        inner.call(request).await.map(boxed)
    };
    if !config.methods.contains(request.method()) {
        return passthrough(request, inner).await;
    }
    let info = RequestInfo {
        method: request.method().clone(),
        uri: request.uri().clone(),
    };
    let key = match crate::parse_key(
        request.headers(),
        config.header.as_str(),
        config.max_key_len,
    ) {
        Ok(key) => key,
        Err(KeyError::Missing) if !config.require_key => return passthrough(request, inner).await,
        Err(error) => {
            return Ok(shared.problem(
                &info,
                EventKind::Rejected,
                None,
                Problem::BadKey,
                StatusCode::BAD_REQUEST,
                error.detail(),
            ));
        }
    };
    if shared.shutdown.is_closing() {
        let mut response = shared.problem(
            &info,
            EventKind::Rejected,
            None,
            Problem::ShuttingDown,
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is shutting down; retry with the same Idempotency-Key.",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(1));
        return Ok(response);
    }
    let (parts, body) = request.into_parts();
    let body = match read_body(&parts, body, config.max_request_body).await {
        Ok(body) => body,
        Err((problem, status, detail)) => {
            return Ok(shared.problem(&info, EventKind::Rejected, None, problem, status, detail));
        }
    };
    let scope = config
        .scope
        .as_ref()
        .map_or_else(Scope::anonymous, |scope| scope(&parts));
    let key = ScopedKey::new(scope, key);
    let store_key = St::Key::from(key.clone());
    let fingerprint = (config.fingerprint)(&parts, &body);
    let claim_id = ClaimId::random();

    let mut claims = 0;
    loop {
        claims += 1;
        let claimed = match shared
            .store
            .claim(&store_key, Some(fingerprint), claim_id)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => return Ok(shared.unavailable(&info, &key, &store_detail(&error))),
        };
        match claimed {
            ClaimOutcome::Acquired(acquired) => {
                let request = Request::from_parts(parts, full(body));
                return execute(shared, inner, request, info, key, store_key, acquired.token).await;
            }
            ClaimOutcome::Completed(replay) => {
                return Ok(shared.replay(&info, &key, replay.value(), EventKind::Replayed));
            }
            ClaimOutcome::Mismatch => return Ok(mismatch(&shared, &info, &key)),
            ClaimOutcome::Full => {
                return Ok(shared.unavailable(
                    &info,
                    &key,
                    "The idempotency store is full; retry later.",
                ));
            }
            ClaimOutcome::InProgress(in_flight) => {
                let Some(timeout) = config
                    .wait
                    .filter(|_| !in_flight.abandoned && claims < MAX_CLAIMS)
                else {
                    return Ok(shared.conflict(&info, &key, in_flight.retry_after()));
                };
                let policy = WaitPolicy {
                    timeout,
                    ..WaitPolicy::default()
                };
                let seen = idemcache::store::wait_for_outcome(
                    &shared.store,
                    &store_key,
                    Some(fingerprint),
                    policy,
                    tokio::time::sleep,
                )
                .await;
                match seen {
                    Ok(Peek::Completed(replay)) => {
                        return Ok(shared.replay(&info, &key, replay.value(), EventKind::Waited));
                    }
                    Ok(Peek::Free) => continue, // released: this request runs
                    Ok(Peek::Mismatch) => return Ok(mismatch(&shared, &info, &key)),
                    Ok(Peek::InProgress(in_flight)) => {
                        return Ok(shared.conflict(&info, &key, in_flight.retry_after()));
                    }
                    Err(error) => {
                        return Ok(shared.unavailable(&info, &key, &store_detail(&error)));
                    }
                }
            }
        }
    }
}

fn mismatch<St>(shared: &Shared<St>, info: &RequestInfo, key: &ScopedKey) -> Response<Body> {
    let status = shared.config.mismatch.status();
    let detail =
        "This Idempotency-Key was used with a different request (method, path, query or body).";
    shared.problem(
        info,
        EventKind::Mismatch,
        Some(key),
        Problem::KeyReused,
        status,
        detail,
    )
}

fn store_detail(error: &StoreError) -> String {
    format!("The idempotency store is unavailable ({error}); retry later.")
}

/// Reads a request body up to `cap`: 413 for a larger one (by its
/// `Content-Length`, without reading, or while reading), 400 for a broken
/// one.
async fn read_body<B>(
    parts: &Parts,
    body: B,
    cap: usize,
) -> Result<Bytes, (Problem, StatusCode, &'static str)>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    const TOO_LARGE: &str = "The request body is larger than this endpoint accepts.";
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap as u64) {
        return Err((Problem::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE));
    }
    match Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err((Problem::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE))
        }
        Err(_) => Err((
            Problem::BadBody,
            StatusCode::BAD_REQUEST,
            "The request body could not be read.",
        )),
    }
}

/// Runs the handler for an acquired claim, detached from the connection:
/// a client that disconnects drops this future, not the handler, which
/// finishes and stores its response for the retry to replay. The work runs
/// in this future while it is polled (no task, no channel on the common
/// path) and moves to a task of its own only if this future is dropped
/// first.
async fn execute<S, St, ResBody>(
    shared: Arc<Shared<St>>,
    inner: S,
    request: Request<Body>,
    info: RequestInfo,
    key: ScopedKey,
    store_key: St::Key,
    token: u64,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store<Value = StoredResponse> + 'static,
    St::Key: From<ScopedKey> + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let in_flight = shared.shutdown.track();
    Detachable(Some(Box::pin(async move {
        let _in_flight = in_flight;
        run_and_record(&shared, inner, request, &info, (&key, &store_key), token).await
    })))
    .await
}

/// A future that, dropped before it completes, finishes on a task of its
/// own (the client's connection went away; the handler's work must not).
struct Detachable<T: 'static>(Option<Pin<Box<dyn Future<Output = T> + Send>>>);

impl<T: 'static> Future for Detachable<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let future = self.0.as_mut().expect("polled after completion");
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(output)
    }
}

impl<T: 'static> Drop for Detachable<T> {
    fn drop(&mut self) {
        if let Some(unfinished) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let _ = unfinished.await; // recorded for the retry
                    });
                }
                // No runtime to finish on (it is shutting down): the claim
                // stays held until its lease lapses, as after a crash.
                Err(_) => drop(unfinished),
            }
        }
    }
}

async fn run_and_record<S, St, ResBody>(
    shared: &Shared<St>,
    mut inner: S,
    request: Request<Body>,
    info: &RequestInfo,
    (key, store_key): (&ScopedKey, &St::Key),
    token: u64,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store<Value = StoredResponse> + 'static,
    St::Key: From<ScopedKey> + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let store = &shared.store;
    let config = &shared.config;
    // A panic is caught, so the claim is still recorded as abandoned.
    let handler = CatchUnwind(Box::pin(inner.call(request)));
    let joined = renew_while(handler, store, store_key, token, config.renew_ceiling).await;
    let response = match joined {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            // No response: what the handler did is unknown.
            let _ = store.abandon(store_key, token).await;
            shared.emit(
                info,
                EventKind::Abandoned,
                Some(key),
                None,
                Some("the service returned an error"),
            );
            return Err(error);
        }
        Err(_panicked) => {
            let _ = store.abandon(store_key, token).await;
            let detail = "The request failed; retry with the same Idempotency-Key later.";
            return Ok(shared.problem(
                info,
                EventKind::Abandoned,
                Some(key),
                Problem::HandlerFailed,
                StatusCode::INTERNAL_SERVER_ERROR,
                detail,
            ));
        }
    };
    let (parts, body) = response.into_parts();
    if parts.status.is_server_error() {
        // A failure worth retrying: nothing is kept.
        let _ = store.release(store_key, token).await;
        shared.emit(
            info,
            EventKind::Released,
            Some(key),
            Some(parts.status),
            None,
        );
        return Ok(boxed(Response::from_parts(parts, body)));
    }
    let cap = config.max_response_body as u64;
    let hint = body.size_hint();
    if hint.upper().is_none_or(|upper| upper > cap) || hint.exact().is_none() {
        // Streaming or too large to store: returned as it came; its
        // outcome is not kept, so the key stays held until the lease lapses.
        let _ = store.abandon(store_key, token).await;
        let detail = "response streaming or over the size cap: not stored";
        shared.emit(
            info,
            EventKind::Abandoned,
            Some(key),
            Some(parts.status),
            Some(detail),
        );
        return Ok(boxed(Response::from_parts(parts, body)));
    }
    let bytes = match Limited::new(body, config.max_response_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let _ = store.abandon(store_key, token).await;
            let detail =
                "The response could not be produced; retry with the same Idempotency-Key later.";
            return Ok(shared.problem(
                info,
                EventKind::Abandoned,
                Some(key),
                Problem::HandlerFailed,
                StatusCode::INTERNAL_SERVER_ERROR,
                detail,
            ));
        }
    };
    let stored = StoredResponse::capture(
        parts.status,
        &parts.headers,
        &config.stored_headers,
        bytes.clone(),
    );
    let response = Response::from_parts(parts, full(bytes));
    match store
        .complete(store_key, token, stored, config.retention)
        .await
    {
        Ok(Completion::Stored { .. }) => {
            shared.emit(
                info,
                EventKind::Executed,
                Some(key),
                Some(response.status()),
                None,
            );
        }
        Ok(Completion::NotStored(reason)) => {
            let detail = format!("response not stored ({reason:?}): a retry runs again");
            shared.emit(
                info,
                EventKind::Executed,
                Some(key),
                Some(response.status()),
                Some(&detail),
            );
        }
        Err(StoreError::Fenced(_)) => {
            // The lease lapsed and another request took the key over:
            // answer with what the key holds now.
            shared.emit(
                info,
                EventKind::Fenced,
                Some(key),
                Some(response.status()),
                None,
            );
            return Ok(match store.peek(store_key, None).await {
                Ok(Peek::Completed(replay)) => {
                    shared.replay(info, key, replay.value(), EventKind::Replayed)
                }
                Ok(Peek::InProgress(in_flight)) => {
                    shared.conflict(info, key, in_flight.retry_after())
                }
                _ => response,
            });
        }
        Err(error) => {
            let detail =
                format!("response not stored ({error}): the key stays held until its lease lapses");
            shared.emit(
                info,
                EventKind::Abandoned,
                Some(key),
                Some(response.status()),
                Some(&detail),
            );
        }
    }
    Ok(response)
}

/// The handler panicked.
struct Panicked;

/// Resolves to the future's output, or to [`Panicked`] if polling it
/// panicked.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}

/// Awaits `handler`, renewing the claim's lease every third of it until
/// `ceiling` has passed (then the lease runs out on its own). The renewal
/// timer is only set up if the handler does not finish at once.
async fn renew_while<F, St>(
    handler: F,
    store: &St,
    key: &St::Key,
    token: u64,
    ceiling: Duration,
) -> F::Output
where
    F: Future,
    St: Store,
{
    let mut handler = pin!(handler);
    let first = std::future::poll_fn(|cx| Poll::Ready(handler.as_mut().poll(cx))).await;
    if let Poll::Ready(output) = first {
        return output;
    }
    let started = Instant::now();
    let every = (store.lease() / 3).max(Duration::from_millis(10));
    let mut renewing = true;
    loop {
        tokio::select! {
            output = &mut handler => return output,
            () = tokio::time::sleep(every), if renewing => {
                if started.elapsed() + store.lease() > ceiling {
                    renewing = false;
                } else if store.renew(key, token).await.is_err() {
                    // Fenced (taken over) or the store is down: the
                    // completion will tell.
                    renewing = false;
                }
            }
        }
    }
}
