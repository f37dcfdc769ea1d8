//! The layer's defaults, over real sockets: an axum server on loopback
//! behind `IdempotencyLayer`, driven by reqwest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body as AxumBody, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use idemcache::Cache;
use idemcache_http::{
    EventKind, IdempotencyLayer, IdempotencyLayerBuilder, Scope, ScopedKey, ShutdownHandle,
    StoredResponse,
};
use serde::Deserialize;

type Store = Cache<ScopedKey, StoredResponse>;

#[derive(Default)]
struct Ledger {
    executions: Mutex<HashMap<String, u64>>,
}

impl Ledger {
    fn executions(&self, key: &str) -> u64 {
        self.executions
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Deserialize, Default)]
struct Controls {
    delay_ms: Option<u64>,
    /// Delay only the key's first execution.
    delay_first_ms: Option<u64>,
    fail: Option<u16>,
    status: Option<u16>,
    stream: Option<bool>,
    /// Panic after counting the execution.
    panic: Option<bool>,
}

async fn charge(
    State(ledger): State<Arc<Ledger>>,
    Query(controls): Query<Controls>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if controls.fail == Some(503) {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
    }
    let key = idemcache_http::parse_key(&headers, "idempotency-key", 255).unwrap_or_default();
    *ledger
        .executions
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_default() += 1;
    if let Some(delay) = controls.delay_ms {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(delay) = controls.delay_first_ms
        && ledger.executions(&key) == 1
    {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if controls.panic == Some(true) {
        panic!("the handler failed mid side effect");
    }
    if controls.stream == Some(true) {
        return (StatusCode::OK, AxumBody::new(TwoChunks(0))).into_response();
    }
    let status = controls
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::CREATED);
    let executions = ledger.executions(&key);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            r#"{{"key":"{key}","body":{},"execution":{executions}}}"#,
            body.len()
        ),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, "/charges/1".parse().unwrap());
    response.headers_mut().insert(
        header::SET_COOKIE,
        format!("session={executions}").parse().unwrap(),
    );
    response
}

/// A body of two chunks whose length is not known up front (streaming).
struct TwoChunks(u8);

impl http_body::Body for TwoChunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0 += 1;
        std::task::Poll::Ready(match self.0 {
            1 | 2 => Some(Ok(http_body::Frame::data(Bytes::from_static(b"chunk")))),
            _ => None,
        })
    }
}

struct Server {
    address: SocketAddr,
    ledger: Arc<Ledger>,
    shutdown: ShutdownHandle,
    events: Arc<Mutex<Vec<EventKind>>>,
    client: reqwest::Client,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// A raw connection that has sent `start` (a request's head and part
    /// of its body), given 100 ms to reach the server.
    async fn send_the_start_of(&self, start: &[u8]) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(self.address).await.unwrap();
        stream.write_all(start).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream
    }

    async fn post(&self, path: &str, key: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).body(body.to_owned());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.expect("the server answers")
    }

    fn events(&self) -> Vec<EventKind> {
        self.events.lock().unwrap().clone()
    }
}

/// A server on a free loopback port with the layer `configure` gives.
async fn serve(
    configure: impl FnOnce(IdempotencyLayerBuilder<Store>) -> IdempotencyLayerBuilder<Store>,
) -> Server {
    serve_with(Cache::new(), configure).await
}

async fn serve_with(
    store: Store,
    configure: impl FnOnce(IdempotencyLayerBuilder<Store>) -> IdempotencyLayerBuilder<Store>,
) -> Server {
    let events = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&events);
    let builder = IdempotencyLayer::builder(store)
        .scoped(
            |parts: &http::request::Parts| match parts.headers.get(header::AUTHORIZATION) {
                Some(credential) => Scope::of([credential.as_bytes()]),
                None => Scope::anonymous(),
            },
        )
        .on_event(move |event| recorded.lock().unwrap().push(event.kind));
    let layer = configure(builder).build().expect("a valid configuration");
    let shutdown = layer.shutdown_handle();
    let ledger = Arc::new(Ledger::default());
    let app = Router::new()
        .route(
            "/charges",
            post(charge).patch(charge).get(|| async { "listed" }),
        )
        .route("/refunds", post(charge))
        .with_state(Arc::clone(&ledger))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        address,
        ledger,
        shutdown,
        events,
        client: reqwest::Client::new(),
    }
}

async fn problem(response: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_first_request_executes_and_a_retry_replays_it_with_its_status_location_and_body() {
    let server = serve(|b| b).await;
    let first = server.post("/charges", Some("k1"), "{}").await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(first.headers()[header::SET_COOKIE], "session=1");
    let first_body = first.text().await.unwrap();

    let retry = server.post("/charges", Some("k1"), "{}").await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()[header::LOCATION], "/charges/1");
    assert_eq!(retry.headers()[header::CONTENT_TYPE], "application/json");
    assert!(
        retry.headers().get(header::SET_COOKIE).is_none(),
        "a session cookie is never replayed"
    );
    assert_eq!(retry.text().await.unwrap(), first_body);
    assert_eq!(server.ledger.executions("k1"), 1);
    assert_eq!(server.events(), [EventKind::Executed, EventKind::Replayed]);
}

#[tokio::test]
async fn quoted_and_bare_keys_are_one_key() {
    let server = serve(|b| b).await;
    assert_eq!(
        server.post("/charges", Some("\"k2\""), "{}").await.status(),
        201
    );
    let retry = server.post("/charges", Some("k2"), "{}").await;
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(server.ledger.executions("k2"), 1);
}

#[tokio::test]
async fn missing_repeated_or_malformed_keys_are_400_problems() {
    let server = serve(|b| b).await;
    let (status, body) = problem(server.post("/charges", None, "{}").await).await;
    assert_eq!(status, 400);
    assert_eq!(body["status"], 400);
    assert!(body["title"].as_str().unwrap().contains("Idempotency-Key"));
    assert!(body["type"].is_string() && body["detail"].is_string());
    for bad in ["", "\"\"", "a,b", &"k".repeat(256), "\"open"] {
        let response = server.post("/charges", Some(bad), "{}").await;
        assert_eq!(response.status(), 400, "{bad:?}");
    }
    let repeated = server
        .client
        .post(server.url("/charges"))
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(repeated.status(), 400);
    assert_eq!(server.ledger.executions(""), 0, "nothing ran");
}

#[tokio::test]
async fn safe_methods_pass_through_without_a_key() {
    let server = serve(|b| b).await;
    let listed = server
        .client
        .get(server.url("/charges"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.text().await.unwrap(), "listed");
}

#[tokio::test]
async fn patch_is_protected_too() {
    let server = serve(|b| b).await;
    let request = || {
        server
            .client
            .patch(server.url("/charges"))
            .header("idempotency-key", "p1")
            .body("{}")
    };
    assert_eq!(request().send().await.unwrap().status(), 201);
    assert_eq!(
        request().send().await.unwrap().headers()["idempotent-replayed"],
        "true"
    );
    assert_eq!(server.ledger.executions("p1"), 1);
}

#[tokio::test]
async fn a_key_reused_for_another_body_or_path_is_422_even_while_the_first_runs() {
    let server = serve(|b| b).await;
    let slow = {
        let (client, url) = (server.client.clone(), server.url("/charges?delay_ms=500"));
        tokio::spawn(async move {
            client
                .post(url)
                .header("idempotency-key", "k3")
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, _) = problem(server.post("/charges", Some("k3"), "{\"other\":1}").await).await;
    assert_eq!(status, 422, "checked before in-flight");
    assert_eq!(slow.await.unwrap(), 201);
    let (status, body) = problem(server.post("/refunds", Some("k3"), "{}").await).await;
    assert_eq!(status, 422, "another path");
    assert_eq!(body["title"], "Idempotency-Key is already used");
    assert_eq!(server.ledger.executions("k3"), 1);
}

#[tokio::test]
async fn the_mismatch_status_is_configurable() {
    let server = serve(|b| b.mismatch_status(idemcache_http::MismatchStatus::BadRequest)).await;
    server.post("/charges", Some("k4"), "{}").await;
    assert_eq!(
        server.post("/charges", Some("k4"), "[]").await.status(),
        400
    );
}

#[tokio::test]
async fn a_duplicate_while_the_first_runs_gets_409_with_a_short_retry_after() {
    let server = serve(|b| b).await;
    let slow = {
        let (client, url) = (server.client.clone(), server.url("/charges?delay_ms=600"));
        tokio::spawn(async move {
            client
                .post(url)
                .header("idempotency-key", "k5")
                .body("{}")
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let duplicate = server.post("/charges?delay_ms=600", Some("k5"), "{}").await;
    let retry_after: u64 = duplicate.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    let (status, body) = problem(duplicate).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["title"],
        "A request is outstanding for this Idempotency-Key"
    );
    assert_eq!(slow.await.unwrap().status(), 201);
    assert_eq!(server.ledger.executions("k5"), 1);
}

#[tokio::test]
async fn a_5xx_releases_the_key_and_keeps_nothing_not_even_the_fingerprint() {
    let server = serve(|b| b).await;
    let failed = server.post("/charges?fail=503", Some("k6"), "{}").await;
    assert_eq!(failed.status(), 503);
    assert!(failed.headers().get("idempotent-replayed").is_none());
    // The retry runs, even with another body: the key was released.
    let retry = server
        .post("/charges", Some("k6"), "{\"changed\":true}")
        .await;
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(server.events(), [EventKind::Released, EventKind::Executed]);
}

#[tokio::test]
async fn a_4xx_is_stored_and_replayed() {
    let server = serve(|b| b).await;
    assert_eq!(
        server
            .post("/charges?status=402", Some("k7"), "{}")
            .await
            .status(),
        402
    );
    let retry = server.post("/charges?status=402", Some("k7"), "{}").await;
    assert_eq!(retry.status(), 402);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(server.ledger.executions("k7"), 1);
}

#[tokio::test]
async fn a_request_body_over_the_cap_is_413_without_executing() {
    let server = serve(|b| b.max_request_body(1024)).await;
    let (status, body) =
        problem(server.post("/charges", Some("k8"), &"x".repeat(1025)).await).await;
    assert_eq!(status, 413);
    assert_eq!(body["status"], 413);
    assert_eq!(server.ledger.executions("k8"), 0);
    // Chunked, without a Content-Length: caught while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b'x'; 800]), Ok(vec![b'x'; 800])];
    let streamed = server
        .client
        .post(server.url("/charges"))
        .header("idempotency-key", "k8")
        .body(reqwest::Body::wrap_stream(StreamOf(chunks.into_iter())))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    assert_eq!(server.ledger.executions("k8"), 0);
    // Within the cap, the key is still free.
    assert_eq!(
        server.post("/charges", Some("k8"), "{}").await.status(),
        201
    );
}

/// An iterator as a `Stream`, for reqwest's chunked bodies.
struct StreamOf<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for StreamOf<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_handler_gets_one_execution_and_its_retry_replays() {
    let server = serve(|b| b).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let cut = impatient
        .post(server.url("/charges?delay_ms=400"))
        .header("idempotency-key", "k9")
        .body("{}")
        .send()
        .await;
    assert!(cut.is_err(), "the client gave up");
    // The handler runs on, detached from the dropped connection.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let retry = server.post("/charges?delay_ms=400", Some("k9"), "{}").await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(server.ledger.executions("k9"), 1);
}

#[tokio::test]
async fn thirty_two_concurrent_duplicates_execute_once() {
    let server = Arc::new(serve(|b| b).await);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            server
                .post("/charges?delay_ms=200", Some("k10"), "{}")
                .await
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(server.ledger.executions("k10"), 1);
    assert!(
        statuses.contains(&201),
        "the first request got its response"
    );
    assert!(
        statuses.iter().all(|&s| s == 201 || s == 409),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn opt_in_coalescing_replays_the_first_result_to_waiting_duplicates() {
    let server = Arc::new(serve(|b| b.wait_for_in_flight(Duration::from_secs(5))).await);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            server
                .post("/charges?delay_ms=300", Some("k11"), "{}")
                .await
                .status()
                .as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 201, "every duplicate gets the result");
    }
    assert_eq!(server.ledger.executions("k11"), 1);
    assert!(server.events().contains(&EventKind::Waited));
}

#[tokio::test]
async fn scopes_keep_clients_apart() {
    let server = serve(|b| b).await;
    let as_client = |who: &'static str| {
        server
            .client
            .post(server.url("/charges"))
            .header("idempotency-key", "shared-key")
            .header(header::AUTHORIZATION, who)
            .body("{}")
    };
    assert_eq!(
        as_client("Bearer alice").send().await.unwrap().status(),
        201
    );
    let bob = as_client("Bearer bob").send().await.unwrap();
    assert!(
        bob.headers().get("idempotent-replayed").is_none(),
        "bob runs his own"
    );
    assert_eq!(server.ledger.executions("shared-key"), 2);
    let alice_again = as_client("Bearer alice").send().await.unwrap();
    assert_eq!(alice_again.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn a_full_store_answers_503_and_runs_nothing() {
    let store: Store = Cache::builder().max_entries(1).build().unwrap();
    let server = serve_with(store, |b| b).await;
    assert_eq!(server.post("/charges", Some("a"), "{}").await.status(), 201);
    let (status, _) = problem(server.post("/charges", Some("b"), "{}").await).await;
    assert_eq!(status, 503);
    assert_eq!(server.ledger.executions("b"), 0);
    assert_eq!(
        server.post("/charges", Some("a"), "{}").await.headers()["idempotent-replayed"],
        "true",
        "the stored record still replays"
    );
}

#[tokio::test]
async fn a_streaming_response_is_returned_as_it_came_and_its_key_stays_held() {
    let server = serve(|b| b).await;
    let first = server.post("/charges?stream=true", Some("k12"), "{}").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "chunkchunk");
    // Not stored, outcome unknown: held until the lease lapses.
    let retry = server.post("/charges?stream=true", Some("k12"), "{}").await;
    assert_eq!(retry.status(), 409);
    assert_eq!(server.ledger.executions("k12"), 1);
    assert!(server.events().contains(&EventKind::Abandoned));
}

#[tokio::test]
async fn graceful_shutdown_stops_new_claims_and_waits_for_the_handler_in_flight() {
    let server = Arc::new(serve(|b| b).await);
    let slow = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            server
                .post("/charges?delay_ms=500", Some("k13"), "{}")
                .await
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(server.shutdown.in_flight(), 1);
    server.shutdown.shutdown();
    let refused = server.post("/charges", Some("k14"), "{}").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    tokio::time::timeout(Duration::from_secs(10), server.shutdown.drained())
        .await
        .expect("drained once the handler finished");
    assert_eq!(server.shutdown.in_flight(), 0);
    assert_eq!(slow.await.unwrap(), 201);
    assert_eq!(server.ledger.executions("k13"), 1);
    assert_eq!(server.ledger.executions("k14"), 0);
}

#[tokio::test]
async fn graceful_shutdown_waits_for_a_request_waiting_on_the_key_too() {
    let server = Arc::new(serve(|b| b.wait_for_in_flight(Duration::from_secs(5))).await);
    let send = |server: &Arc<Server>| {
        let server = Arc::clone(server);
        tokio::spawn(async move {
            let response = server
                .post("/charges?delay_ms=500", Some("k15"), "{}")
                .await;
            (
                response.status(),
                response.headers().contains_key("idempotent-replayed"),
            )
        })
    };
    let first = send(&server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = send(&server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The handler and the request that waits for its outcome.
    assert_eq!(server.shutdown.in_flight(), 2);
    server.shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown.drained())
        .await
        .expect("drained once both finished");
    assert_eq!(server.shutdown.in_flight(), 0);
    assert_eq!(first.await.unwrap(), (StatusCode::CREATED, false));
    assert_eq!(waiting.await.unwrap(), (StatusCode::CREATED, true));
    assert_eq!(server.ledger.executions("k15"), 1);
}

#[tokio::test]
async fn leases_are_renewed_while_a_slow_handler_runs() {
    let store: Store = Cache::builder()
        .lease(Duration::from_millis(300))
        .build()
        .unwrap();
    let server = Arc::new(serve_with(store, |b| b).await);
    let slow = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            server
                .post("/charges?delay_ms=1200", Some("k15"), "{}")
                .await
                .status()
        })
    };
    // Well past the lease: without renewal a retry would run again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        server
            .post("/charges?delay_ms=1200", Some("k15"), "{}")
            .await
            .status(),
        409
    );
    assert_eq!(slow.await.unwrap(), 201);
    assert_eq!(server.ledger.executions("k15"), 1);
}

#[test]
fn invalid_configurations_are_refused_at_build() {
    let err = IdempotencyLayer::builder(Store::new())
        .retry_after(Duration::from_secs(5), Duration::from_secs(1))
        .build()
        .err()
        .unwrap();
    assert!(matches!(
        err,
        idemcache_http::ConfigError::RetryAfterRange { .. }
    ));
    let err = IdempotencyLayer::builder(Store::new())
        .stored_headers([header::SET_COOKIE])
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("set-cookie"), "{err}");
    assert!(
        IdempotencyLayer::builder(Store::new())
            .max_request_body(0)
            .build()
            .is_err()
    );
    assert!(
        IdempotencyLayer::builder(Store::new())
            .methods([])
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn a_handler_that_outlives_its_lease_is_answered_with_what_the_key_holds_now() {
    // A 200 ms lease renewed for at most 1 ms: the slow first execution
    // loses its key, a retry takes it over and completes first.
    let store: Store = Cache::builder()
        .lease(Duration::from_millis(200))
        .build()
        .unwrap();
    let server = Arc::new(serve_with(store, |b| b.renew_ceiling(Duration::from_millis(1))).await);
    let slow = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            server
                .post("/charges?delay_first_ms=700", Some("k16"), "{}")
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(350)).await;
    let retry = server
        .post("/charges?delay_first_ms=700", Some("k16"), "{}")
        .await;
    assert_eq!(retry.status(), 201);
    let retry_body = retry.text().await.unwrap();
    assert!(retry_body.contains(r#""execution":2"#), "{retry_body}");
    let first = slow.await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(
        first.headers()["idempotent-replayed"],
        "true",
        "the stale completion answers with the stored record, not its own"
    );
    assert_eq!(first.text().await.unwrap(), retry_body);
    assert!(server.events().contains(&EventKind::Fenced));
}

#[tokio::test]
async fn a_broken_request_body_is_400_and_runs_nothing() {
    use tower::ServiceExt;
    /// A body that fails after its first chunk.
    struct Broken(bool);
    impl http_body::Body for Broken {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            let first = !std::mem::replace(&mut self.0, true);
            std::task::Poll::Ready(Some(if first {
                Ok(http_body::Frame::data(Bytes::from_static(b"{")))
            } else {
                Err(std::io::Error::other("connection reset"))
            }))
        }
    }
    let ledger = Arc::new(Ledger::default());
    let app = Router::new()
        .route("/charges", post(charge))
        .with_state(Arc::clone(&ledger))
        .layer(IdempotencyLayer::unscoped(Store::new()));
    let request = http::Request::post("/charges")
        .header("idempotency-key", "k17")
        .body(AxumBody::new(Broken(false)))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(ledger.executions("k17"), 0);
}

#[tokio::test]
async fn a_handler_that_panics_gets_a_500_problem_and_its_key_stays_held() {
    let server = serve(|b| b).await;
    let (status, body) = problem(server.post("/charges?panic=true", Some("k18"), "{}").await).await;
    assert_eq!(status, 500);
    assert_eq!(body["status"], 500);
    // What the handler did is unknown: the key is held until its lease
    // lapses, so the retry does not run it again.
    let (status, _) = problem(server.post("/charges?panic=true", Some("k18"), "{}").await).await;
    assert_eq!(status, 409);
    assert_eq!(server.ledger.executions("k18"), 1);
    assert!(server.events().contains(&EventKind::Abandoned));
}

#[tokio::test]
async fn without_an_event_hook_the_defaults_hold() {
    let ledger = Arc::new(Ledger::default());
    let app = Router::new()
        .route("/charges", post(charge))
        .route("/refunds", post(charge))
        .with_state(Arc::clone(&ledger))
        .layer(IdempotencyLayer::unscoped(Store::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let post = |path: &str, key: Option<&str>| {
        let mut request = client.post(format!("http://{address}{path}")).body("{}");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    let first = post("/charges", Some("k19")).await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let retry = post("/charges", Some("k19")).await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(ledger.executions("k19"), 1);
    let (status, _) = problem(post("/refunds", Some("k19")).await.unwrap()).await;
    assert_eq!(status, 422);
    let (status, _) = problem(post("/charges", None).await.unwrap()).await;
    assert_eq!(status, 400);
    let running = tokio::spawn(post("/charges?delay_ms=300", Some("k20")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = problem(post("/charges?delay_ms=300", Some("k20")).await.unwrap()).await;
    assert_eq!(status, 409);
    assert_eq!(running.await.unwrap().unwrap().status(), 201);
    assert_eq!(ledger.executions("k20"), 1);
}

#[tokio::test]
async fn a_client_that_disconnects_before_its_body_arrives_runs_nothing_and_leaves_the_key_free() {
    let server = serve(|b| b).await;
    let stream = server
        .send_the_start_of(
            b"POST /charges HTTP/1.1\r\nhost: localhost\r\nidempotency-key: k21\r\n\
              content-length: 10\r\n\r\n{\"a\":",
        )
        .await;
    drop(stream); // gone before the rest of its body
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.ledger.executions("k21"), 0);
    // Nothing was claimed: the retry runs at once, neither 409 nor replay.
    let retry = server.post("/charges", Some("k21"), "{\"a\":1}").await;
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(server.ledger.executions("k21"), 1);
}

#[tokio::test]
async fn a_request_whose_body_arrives_after_shutdown_began_gets_503_and_runs_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = serve(|b| b).await;
    let mut stream = server
        .send_the_start_of(
            b"POST /charges HTTP/1.1\r\nhost: localhost\r\nidempotency-key: k22\r\n\
              content-length: 7\r\nconnection: close\r\n\r\n{\"a\":",
        )
        .await;
    // The request passed the layer's first check while its body was on
    // the way; shutdown begins before the claim.
    server.shutdown.shutdown();
    stream.write_all(b"1}").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert_eq!(server.ledger.executions("k22"), 0);
    tokio::time::timeout(Duration::from_secs(5), server.shutdown.drained())
        .await
        .expect("nothing is in flight");
}
