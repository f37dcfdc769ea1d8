//! The tower layer and its service.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use idemcache::Fingerprint;
use idemcache::store::{ClaimId, ClaimOutcome, Completion, Peek, Store, StoreError, WaitPolicy};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{Config, ConfigError, MismatchStatus};
use crate::key::parse_key_str;
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

/// What every request of a layer reads. Aligned so that it starts on a
/// cache line of its own, away from the `Arc`'s counts, which every
/// request writes (it clones the `Arc`) from whichever thread runs it.
#[repr(align(128))]
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
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    /// What needs no I/O is decided here, before any future of the layer's
    /// own is boxed: passing through, refusing a bad key, refusing during
    /// shutdown. The rest (reading the body, claiming, replaying or
    /// running the handler) is one boxed future, and running the handler a
    /// second, detachable one.
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let config = &shared.config;
        if !config.methods.contains(request.method()) {
            return ResponseFuture::passthrough(self.inner.call(request.map(Body::new)));
        }
        let key: Arc<str> =
            match parse_key_str(request.headers(), &config.header, config.max_key_len) {
                Ok(key) => Arc::from(key), // the one copy of the key
                Err(KeyError::Missing) if !config.require_key => {
                    return ResponseFuture::passthrough(self.inner.call(request.map(Body::new)));
                }
                Err(error) => {
                    return ResponseFuture::ready(shared.reject(
                        request.method(),
                        request.uri(),
                        Problem::BadKey,
                        StatusCode::BAD_REQUEST,
                        error.detail(),
                    ));
                }
            };
        if shared.shutdown.is_closing() {
            return ResponseFuture::ready(shared.shutting_down(request.method(), request.uri()));
        }
        let (parts, body) = request.into_parts();
        let scope = config
            .scope
            .as_ref()
            .map_or_else(Scope::anonymous, |scope| scope(&parts));
        let key = ScopedKey::from_shared(scope, key);
        let trace = config.on_event.is_some().then(|| {
            Box::new(Trace {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                key: key.clone(),
            })
        });
        // The service that was polled ready serves this request; a fresh
        // clone takes its place for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let request = Claimant {
            shared: Arc::clone(shared),
            inner,
            parts,
            store_key: St::Key::from(key),
            trace,
        };
        ResponseFuture::deciding(Box::pin(decide(request, body)))
    }
}

/// A boxed future of the layer's response.
type BoxedResponse<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

/// The future an [`IdempotencyService`] returns: the layer's answer, the
/// handler's response, or the inner service's for requests the layer
/// passes through.
///
/// Dropped while the handler runs (the client went away), it hands the
/// handler to a task of its own, which finishes it and stores its
/// response for the retry to replay.
///
/// It holds only boxes and a ready response (128 bytes, whatever the
/// inner service's future), because the stack above moves it around.
pub struct ResponseFuture<E: 'static> {
    state: State<E>,
}

enum State<E: 'static> {
    Passthrough(BoxedResponse<E>),
    Ready(Option<Response<Body>>),
    Deciding(Pin<Box<dyn Future<Output = Decided<E>> + Send>>),
    Executing(Detachable<Result<Response<Body>, E>>),
}

/// What the first phase of a protected request came to.
enum Decided<E> {
    /// An answer without running the handler: a replay, a conflict, a
    /// refusal.
    Respond(Response<Body>),
    /// The claim was acquired: the handler's run, to be polled detachable.
    Execute(BoxedResponse<E>),
}

impl<E: 'static> ResponseFuture<E> {
    fn passthrough<F, B>(future: F) -> Self
    where
        F: Future<Output = Result<Response<B>, E>> + Send + 'static,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let future = async move { future.await.map(boxed) };
        ResponseFuture {
            state: State::Passthrough(Box::pin(future)),
        }
    }

    fn ready(response: Response<Body>) -> Self {
        ResponseFuture {
            state: State::Ready(Some(response)),
        }
    }

    fn deciding(future: Pin<Box<dyn Future<Output = Decided<E>> + Send>>) -> Self {
        ResponseFuture {
            state: State::Deciding(future),
        }
    }
}

impl<E: 'static> Future for ResponseFuture<E> {
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.state {
                State::Passthrough(future) => return future.as_mut().poll(cx),
                State::Ready(response) => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response));
                }
                State::Deciding(future) => match ready!(future.as_mut().poll(cx)) {
                    Decided::Respond(response) => {
                        self.state = State::Ready(None);
                        return Poll::Ready(Ok(response));
                    }
                    Decided::Execute(run) => self.state = State::Executing(Detachable(Some(run))),
                },
                State::Executing(future) => return Pin::new(future).poll(cx),
            }
        }
    }
}

impl<E: 'static> std::fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Passthrough(_) => "passthrough",
            State::Ready(_) => "ready",
            State::Deciding(_) => "deciding",
            State::Executing(_) => "executing",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
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

/// What events say about a protected request: built only when there is
/// an event hook, so requests without one copy nothing for it.
struct Trace {
    method: Method,
    uri: http::Uri,
    key: ScopedKey,
}

impl<St> Shared<St> {
    fn event(
        &self,
        method: &Method,
        uri: &http::Uri,
        kind: EventKind,
        key: Option<&ScopedKey>,
        status: Option<StatusCode>,
        detail: Option<&str>,
    ) {
        if let Some(hook) = &self.config.on_event {
            hook(&Event {
                kind,
                method,
                path: uri.path(),
                key,
                status,
                detail,
            });
        }
    }

    /// The event of a request whose key is known (`trace` is `None` only
    /// without a hook).
    fn emit(
        &self,
        trace: Option<&Trace>,
        kind: EventKind,
        status: Option<StatusCode>,
        detail: Option<&str>,
    ) {
        if let Some(trace) = trace {
            let key = Some(&trace.key);
            self.event(&trace.method, &trace.uri, kind, key, status, detail);
        }
    }

    /// A problem response for a request with a known key, with its event.
    fn problem(
        &self,
        trace: Option<&Trace>,
        kind: EventKind,
        problem: Problem,
        status: StatusCode,
        detail: &str,
    ) -> Response<Body> {
        self.emit(trace, kind, Some(status), Some(detail));
        problem.response(status, detail).map(full)
    }

    /// A request refused before any claim (its event carries no key).
    fn reject(
        &self,
        method: &Method,
        uri: &http::Uri,
        problem: Problem,
        status: StatusCode,
        detail: &str,
    ) -> Response<Body> {
        let kind = EventKind::Rejected;
        self.event(method, uri, kind, None, Some(status), Some(detail));
        problem.response(status, detail).map(full)
    }

    /// 503 while shutting down, with `Retry-After: 1`.
    fn shutting_down(&self, method: &Method, uri: &http::Uri) -> Response<Body> {
        let detail = "The server is shutting down; retry with the same Idempotency-Key.";
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let mut response = self.reject(method, uri, Problem::ShuttingDown, status, detail);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(1));
        response
    }

    /// 409 with a `Retry-After` clamped to the configured range.
    fn conflict(&self, trace: Option<&Trace>, hint: Duration) -> Response<Body> {
        let (min, max) = self.config.retry_after;
        let secs = hint.clamp(min, max).as_secs().max(1);
        let detail = "A request with this Idempotency-Key is still being processed; retry later.";
        let mut response = self.problem(
            trace,
            EventKind::Conflict,
            Problem::InProgress,
            StatusCode::CONFLICT,
            detail,
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
        response
    }

    fn unavailable(&self, trace: Option<&Trace>, detail: &str) -> Response<Body> {
        let mut response = self.problem(
            trace,
            EventKind::Full,
            Problem::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            detail,
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(1));
        response
    }

    fn mismatch(&self, trace: Option<&Trace>) -> Response<Body> {
        let status = self.config.mismatch.status();
        let detail =
            "This Idempotency-Key was used with a different request (method, path, query or body).";
        self.problem(
            trace,
            EventKind::Mismatch,
            Problem::KeyReused,
            status,
            detail,
        )
    }

    fn replay(
        &self,
        trace: Option<&Trace>,
        stored: StoredResponse,
        kind: EventKind,
    ) -> Response<Body> {
        self.emit(trace, kind, Some(stored.status()), None);
        stored.into_response().map(full)
    }
}

/// A protected request with a valid key, before its body is read.
struct Claimant<S, St: Store> {
    shared: Arc<Shared<St>>,
    inner: S,
    parts: Parts,
    store_key: St::Key,
    trace: Option<Box<Trace>>,
}

/// Reads the body, claims the key and answers from the store, or hands
/// back the handler's run for an acquired claim.
async fn decide<S, St, ReqBody, ResBody>(
    claimant: Claimant<S, St>,
    body: ReqBody,
) -> Decided<S::Error>
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
    let Claimant {
        shared,
        mut inner,
        parts,
        store_key,
        trace,
    } = claimant;
    let body = match read_body(&parts, body, shared.config.max_request_body).await {
        Ok(body) => body,
        Err((problem, status, detail)) => {
            let response = shared.reject(&parts.method, &parts.uri, problem, status, detail);
            return Decided::Respond(response);
        }
    };
    // Counted for graceful shutdown before the store is asked, then
    // checked against a shutdown that began while the body was read (see
    // `ShutdownState::start`): either this request sees the shutdown and
    // claims nothing, or `drained` waits for it, claim and handler both.
    let open = shared.shutdown.start();
    let counted = Counted(&shared.shutdown);
    if !open {
        return Decided::Respond(shared.shutting_down(&parts.method, &parts.uri));
    }
    let trace_ref = trace.as_deref();
    let fingerprint = (shared.config.fingerprint)(&parts, &body);
    let claim_id = ClaimId::random();
    let mut claims = 0;
    let token = loop {
        claims += 1;
        let claimed = match shared
            .store
            .claim(&store_key, Some(fingerprint), claim_id)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                return Decided::Respond(shared.unavailable(trace_ref, &store_detail(&error)));
            }
        };
        let in_flight = match claimed {
            ClaimOutcome::Acquired(acquired) => break acquired.token,
            ClaimOutcome::Completed(replay) => {
                let response = shared.replay(trace_ref, replay.into_value(), EventKind::Replayed);
                return Decided::Respond(response);
            }
            ClaimOutcome::Mismatch => return Decided::Respond(shared.mismatch(trace_ref)),
            ClaimOutcome::Full => {
                let detail = "The idempotency store is full; retry later.";
                return Decided::Respond(shared.unavailable(trace_ref, detail));
            }
            ClaimOutcome::InProgress(in_flight) => in_flight,
        };
        let Some(timeout) = shared
            .config
            .wait
            .filter(|_| !in_flight.abandoned && claims < MAX_CLAIMS)
        else {
            return Decided::Respond(shared.conflict(trace_ref, in_flight.retry_after()));
        };
        let policy = WaitPolicy {
            timeout,
            ..WaitPolicy::default()
        };
        // Boxed: waiting is the rare path, and its timers would otherwise
        // make every request's future larger.
        let seen = Box::pin(idemcache::store::wait_for_outcome(
            &shared.store,
            &store_key,
            Some(fingerprint),
            policy,
            tokio::time::sleep,
        ))
        .await;
        let response = match seen {
            Ok(Peek::Free) => continue, // released: this request runs
            Ok(Peek::Completed(replay)) => {
                shared.replay(trace_ref, replay.into_value(), EventKind::Waited)
            }
            Ok(Peek::Mismatch) => shared.mismatch(trace_ref),
            Ok(Peek::InProgress(in_flight)) => shared.conflict(trace_ref, in_flight.retry_after()),
            Err(error) => shared.unavailable(trace_ref, &store_detail(&error)),
        };
        return Decided::Respond(response);
    };
    counted.hand_over();
    let claim = Claim::new(shared, store_key, token, trace);
    // `call` itself runs here; only polling the handler is caught.
    let handler = CatchUnwind(Box::pin(inner.call(Request::from_parts(parts, full(body)))));
    Decided::Execute(Box::pin(run_and_record(claim, handler)))
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
    match collect(body, cap).await {
        Ok(bytes) => Ok(bytes),
        Err(Collect::TooLarge) => {
            Err((Problem::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE))
        }
        Err(Collect::Broken) => Err((
            Problem::BadBody,
            StatusCode::BAD_REQUEST,
            "The request body could not be read.",
        )),
    }
}

/// Why [`collect`] gave up.
enum Collect {
    /// More than the cap.
    TooLarge,
    /// The body returned an error.
    Broken,
}

/// A body's data frames (trailers are dropped) up to `cap` bytes, as one
/// buffer. A body of one frame, the usual case, is returned as it came,
/// without a copy or a list of chunks.
async fn collect<B>(body: B, cap: usize) -> Result<Bytes, Collect>
where
    B: HttpBody<Data = Bytes>,
{
    let mut body = pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(data) = frame.map_err(|_| Collect::Broken)?.into_data() else {
            continue; // trailers
        };
        len += data.len();
        if len > cap {
            return Err(Collect::TooLarge);
        }
        if data.is_empty() {
            continue;
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(earlier) => {
                joined.reserve(earlier.len() + data.len());
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(match first {
        Some(only) => only,
        None => Bytes::from(joined),
    })
}

/// A future that, dropped before it completes, finishes on a task of its
/// own (the client's connection went away; the handler's work must not).
/// The handler's run is polled in place while the client waits (no task,
/// no channel on the common path) and moves to a task only if this is
/// dropped first.
struct Detachable<T: 'static>(Option<Pin<Box<dyn Future<Output = T> + Send>>>);

impl<T: 'static> Future for Detachable<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let future = self.0.as_mut().expect("polled after completion");
        let output = ready!(future.as_mut().poll(cx));
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

/// An acquired claim, for recording the handler's outcome.
struct Claim<St: Store> {
    shared: Arc<Shared<St>>,
    store_key: St::Key,
    token: u64,
    trace: Option<Box<Trace>>,
}

impl<St: Store> Claim<St> {
    /// Takes over the request's count for graceful shutdown (see
    /// [`Counted`]) until the claim is dropped.
    fn new(
        shared: Arc<Shared<St>>,
        store_key: St::Key,
        token: u64,
        trace: Option<Box<Trace>>,
    ) -> Self {
        Claim {
            shared,
            store_key,
            token,
            trace,
        }
    }
}

/// A request counted by [`ShutdownState::start`] while it claims its key:
/// dropped (the layer was closing, the claim answered without acquiring,
/// the store failed, the future was dropped), it ends the count; an
/// acquired claim takes the count over ([`hand_over`](Self::hand_over)).
struct Counted<'a>(&'a ShutdownState);

impl Counted<'_> {
    /// The [`Claim`] made next ends the count when it is dropped.
    fn hand_over(self) {
        std::mem::forget(self);
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

impl<St: Store> Drop for Claim<St> {
    fn drop(&mut self) {
        self.shared.shutdown.finished();
    }
}

/// Why a handler left no response to record.
enum Failure<E> {
    /// The service returned an error.
    Error(E),
    /// Polling the handler panicked.
    Panicked,
}

/// Runs the handler for an acquired claim and records its outcome.
///
/// Written as phases (`run`, then `record` or `fail`), each its own
/// future awaited in turn, and returned as a block that uses its captures
/// in place: an `async fn` would copy its arguments, and locals that live
/// across several awaits would each keep a slot, making this future (one
/// allocation per first execution) larger than the allocator's fast path.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would copy its arguments into the future a second time"
)]
fn run_and_record<F, St, ResBody, E>(
    claim: Claim<St>,
    handler: CatchUnwind<F>,
) -> impl Future<Output = Result<Response<Body>, E>>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    St: Store<Value = StoredResponse>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    async move {
        match claim.run(handler).await {
            Ok(response) => Ok(claim.record(response).await),
            Err(failure) => claim.fail(failure).await,
        }
    }
}

impl<St> Claim<St>
where
    St: Store<Value = StoredResponse>,
{
    /// Awaits the handler, renewing the lease while it runs; a panic is
    /// caught, so the claim is still recorded as abandoned.
    async fn run<F, R, E>(&self, handler: CatchUnwind<F>) -> Result<Response<R>, Failure<E>>
    where
        F: Future<Output = Result<Response<R>, E>>,
    {
        let (store, ceiling) = (&self.shared.store, self.shared.config.renew_ceiling);
        match renew_while(handler, store, &self.store_key, self.token, ceiling).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(Failure::Error(error)),
            Err(Panicked) => Err(Failure::Panicked),
        }
    }

    /// No response: what the handler did is unknown, so the claim is
    /// abandoned (the key stays held until its lease lapses).
    async fn fail<E>(&self, failure: Failure<E>) -> Result<Response<Body>, E> {
        match failure {
            Failure::Error(error) => {
                self.abandon(None, "the service returned an error").await;
                Err(error)
            }
            Failure::Panicked => {
                let detail = "The request failed; retry with the same Idempotency-Key later.";
                self.abandon(Some(StatusCode::INTERNAL_SERVER_ERROR), detail)
                    .await;
                Ok(Self::handler_failed(detail))
            }
        }
    }

    fn handler_failed(detail: &str) -> Response<Body> {
        Problem::HandlerFailed
            .response(StatusCode::INTERNAL_SERVER_ERROR, detail)
            .map(full)
    }

    /// Gives the claim up without an outcome (the key stays held until its
    /// lease lapses), with an event. Boxed: a rare path, kept out of the
    /// size of every request's future.
    async fn abandon(&self, status: Option<StatusCode>, detail: &str) {
        let _ = Box::pin(self.shared.store.abandon(&self.store_key, self.token)).await;
        let trace = self.trace.as_deref();
        self.shared
            .emit(trace, EventKind::Abandoned, status, Some(detail));
    }

    /// Stores the handler's response (2xx–4xx), releases the key (5xx),
    /// or abandons the claim (streaming, oversized or broken response).
    async fn record<R>(&self, response: Response<R>) -> Response<Body>
    where
        R: HttpBody<Data = Bytes> + Send + 'static,
        R::Error: Into<BoxError>,
    {
        let (shared, store_key, token) = (&self.shared, &self.store_key, self.token);
        let (store, config) = (&shared.store, &shared.config);
        let trace = self.trace.as_deref();
        let (parts, body) = response.into_parts();
        if parts.status.is_server_error() {
            // A failure worth retrying: nothing is kept.
            let _ = Box::pin(store.release(store_key, token)).await;
            shared.emit(trace, EventKind::Released, Some(parts.status), None);
            return boxed(Response::from_parts(parts, body));
        }
        let cap = config.max_response_body as u64;
        let hint = body.size_hint();
        if hint.upper().is_none_or(|upper| upper > cap) || hint.exact().is_none() {
            // Streaming or too large to store: returned as it came; its
            // outcome is not kept, so the key stays held until the lease
            // lapses.
            let detail = "response streaming or over the size cap: not stored";
            self.abandon(Some(parts.status), detail).await;
            return boxed(Response::from_parts(parts, body));
        }
        let Ok(bytes) = collect(body, config.max_response_body).await else {
            let detail =
                "The response could not be produced; retry with the same Idempotency-Key later.";
            self.abandon(Some(StatusCode::INTERNAL_SERVER_ERROR), detail)
                .await;
            return Self::handler_failed(detail);
        };
        let stored = StoredResponse::capture(
            parts.status,
            &parts.headers,
            &config.stored_headers,
            bytes.clone(),
        );
        let response = Response::from_parts(parts, full(bytes));
        let status = Some(response.status());
        match store
            .complete(store_key, token, stored, config.retention)
            .await
        {
            Ok(Completion::Stored { .. }) => {
                shared.emit(trace, EventKind::Executed, status, None);
            }
            Ok(Completion::NotStored(reason)) => {
                let detail = format!("response not stored ({reason:?}): a retry runs again");
                shared.emit(trace, EventKind::Executed, status, Some(&detail));
            }
            Err(StoreError::Fenced(_)) => {
                // The lease lapsed and another request took the key over:
                // answer with what the key holds now.
                shared.emit(trace, EventKind::Fenced, status, None);
                return match Box::pin(store.peek(store_key, None)).await {
                    Ok(Peek::Completed(replay)) => {
                        shared.replay(trace, replay.into_value(), EventKind::Replayed)
                    }
                    Ok(Peek::InProgress(in_flight)) => {
                        shared.conflict(trace, in_flight.retry_after())
                    }
                    _ => response,
                };
            }
            Err(error) => {
                let detail = format!(
                    "response not stored ({error}): the key stays held until its lease lapses"
                );
                shared.emit(trace, EventKind::Abandoned, status, Some(&detail));
            }
        }
        response
    }
}

/// The handler panicked.
struct Panicked;

/// Resolves to the future's output, or to [`Panicked`] if polling it
/// panicked. The handler's future is boxed so that the run's own future
/// stays small: it is moved a few times, and a large one (over 1 KiB)
/// would take the allocator's slow path.
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
/// timer is only set up, in a box of its own, if the handler does not
/// finish at once.
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
    Box::pin(renew_until_done(handler, store, key, token, ceiling)).await
}

async fn renew_until_done<F, St>(
    mut handler: Pin<&mut F>,
    store: &St,
    key: &St::Key,
    token: u64,
    ceiling: Duration,
) -> F::Output
where
    F: Future,
    St: Store,
{
    let started = Instant::now();
    let every = (store.lease() / 3).max(Duration::from_millis(10));
    let mut renewing = true;
    loop {
        tokio::select! {
            output = handler.as_mut() => return output,
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body::Frame;

    use super::*;

    /// A body that yields the given frames, then ends.
    struct Frames(VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn data(bytes: &'static [u8]) -> Result<Frame<Bytes>, std::io::Error> {
        Ok(Frame::data(Bytes::from_static(bytes)))
    }

    fn collected(
        frames: impl IntoIterator<Item = Result<Frame<Bytes>, std::io::Error>>,
        cap: usize,
    ) -> Result<Bytes, Collect> {
        let body = Frames(frames.into_iter().collect());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(collect(body, cap))
    }

    #[test]
    fn the_response_future_is_small_whatever_the_inner_service() {
        let size = std::mem::size_of::<ResponseFuture<std::convert::Infallible>>();
        println!("ResponseFuture: {size} bytes");
        assert!(size <= 160, "{size} bytes");
    }

    #[test]
    fn one_frame_is_returned_as_it_came() {
        let only = Bytes::from_static(b"{\"amount\":1}");
        let body = Frames(VecDeque::from([Ok(Frame::data(only.clone()))]));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = runtime.block_on(collect(body, 1024)).ok().unwrap();
        assert_eq!(bytes.as_ptr(), only.as_ptr(), "not copied");
    }

    #[test]
    fn frames_are_joined_in_order_and_trailers_dropped() {
        let trailers = Ok(Frame::trailers(http::HeaderMap::new()));
        let frames = [data(b"ab"), data(b""), data(b"c"), trailers, data(b"de")];
        assert_eq!(collected(frames, 5).ok().unwrap(), "abcde");
        assert_eq!(collected([], 5).ok().unwrap(), "");
    }

    #[test]
    fn more_than_the_cap_or_a_broken_body_is_refused() {
        let over = collected([data(b"abc"), data(b"def")], 5);
        assert!(matches!(over, Err(Collect::TooLarge)));
        let broken = collected([data(b"a"), Err(std::io::Error::other("reset"))], 5);
        assert!(matches!(broken, Err(Collect::Broken)));
    }
}
