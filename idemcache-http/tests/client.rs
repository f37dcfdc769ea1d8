//! The reqwest client helper against a real server on a loopback socket:
//! what it retries, with which key, how long it waits, when it stops.
//!
//! The server is a small axum app written for these tests (no mocks, no
//! idempotency layer: `tests/client_layer.rs` has the layer). It logs every
//! request it receives, and its routes fail on purpose, per key:
//!
//! | route | answer |
//! |---|---|
//! | `/fail-first?n=N[&status=S][&retry_after=V]` | the first N requests of a key get S (503) with `Retry-After: V` if given; then 201 |
//! | `/slow-first?ms=M` | the first request of a key executes, then waits M ms before its 201; later ones replay at once |
//! | `/slow?ms=M` | waits M ms, then 201 |
//! | `/status?code=C` | always C |
//! | `/batch?fail_once=I,J&fail_always=K` | the item whose JSON body is `{"index": I}` gets 503 once (always for K, until `healthy`) |
//! | anything else | 201 |
//!
//! A 201 counts one execution for the key, or replays (with
//! `Idempotent-Replayed: true`) if the key already has one, as a server
//! behind the layer would.
//!
//! Tests assert what happened (attempts, keys, executions); durations only
//! as generous bounds, or as lower bounds the client's own sleep guarantees.

#![cfg(feature = "reqwest")]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use idemcache::key;
use idemcache_http::client::{
    BatchMode, IDEMPOTENCY_KEY, IdempotentClient, Reason, RetryErrorKind, RetryPolicy,
    RetryPolicyBuilder, item_key,
};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// One request as the server received it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    /// Every `Idempotency-Key` field value, raw (quoted as sent).
    keys: Vec<String>,
    body: Bytes,
    at: Instant,
}

impl Seen {
    fn key(&self) -> &str {
        assert_eq!(self.keys.len(), 1, "one Idempotency-Key field per request");
        &self.keys[0]
    }
}

#[derive(Default)]
struct Server {
    log: Mutex<Vec<Seen>>,
    executions: Mutex<HashMap<String, u32>>,
    /// While false, `/batch` items in `fail_always` get 503.
    healthy: AtomicBool,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    fn executions(&self, raw_key: &str) -> u32 {
        self.executions
            .lock()
            .unwrap()
            .get(raw_key)
            .copied()
            .unwrap_or(0)
    }

    /// Requests already received with this raw key, this one included.
    fn requests_with(&self, raw_key: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|s| s.keys.first().is_some_and(|k| k == raw_key))
            .count()
    }

    /// 201 for a first execution, or a replay of it.
    fn execute_or_replay(&self, raw_key: &str) -> Response {
        let mut executions = self.executions.lock().unwrap();
        let count = executions.entry(raw_key.to_owned()).or_default();
        if *count > 0 {
            return (
                StatusCode::CREATED,
                [("idempotent-replayed", "true")],
                "replayed",
            )
                .into_response();
        }
        *count += 1;
        (StatusCode::CREATED, "executed").into_response()
    }
}

async fn handle(
    State(server): State<Arc<Server>>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let keys: Vec<String> = headers
        .get_all("idempotency-key")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let raw_key = keys.first().cloned().unwrap_or_default();
    server.log.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        keys,
        body: body.clone(),
        at: Instant::now(),
    });
    let number = |name: &str| query.get(name).map(|v| v.parse::<u64>().unwrap());
    let list = |name: &str| -> HashSet<u64> {
        query
            .get(name)
            .map(|v| v.split(',').map(|i| i.parse().unwrap()).collect())
            .unwrap_or_default()
    };
    match uri.path() {
        "/fail-first" if server.requests_with(&raw_key) as u64 <= number("n").unwrap() => {
            let status = StatusCode::from_u16(number("status").unwrap_or(503) as u16).unwrap();
            return match query.get("retry_after") {
                Some(value) => (status, [("retry-after", value.as_str())]).into_response(),
                None => status.into_response(),
            };
        }
        "/slow-first" if server.requests_with(&raw_key) == 1 => {
            let response = server.execute_or_replay(&raw_key);
            tokio::time::sleep(MS * number("ms").unwrap() as u32).await;
            return response;
        }
        "/slow" => tokio::time::sleep(MS * number("ms").unwrap() as u32).await,
        "/status" => {
            let status = StatusCode::from_u16(number("code").unwrap() as u16).unwrap();
            let problem = r#"{"type":"about:blank","title":"refused","status":422}"#;
            return (
                status,
                [("content-type", "application/problem+json")],
                problem,
            )
                .into_response();
        }
        "/batch" => {
            let item: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let index = item["index"].as_u64().unwrap();
            let failing =
                list("fail_always").contains(&index) && !server.healthy.load(Ordering::SeqCst);
            let first = server.requests_with(&raw_key) == 1;
            if failing || (first && list("fail_once").contains(&index)) {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        }
        _ => {}
    }
    server.execute_or_replay(&raw_key)
}

/// Starts the server on 127.0.0.1:0; returns its base URL.
async fn start() -> (String, Arc<Server>) {
    let server = Arc::new(Server::default());
    let app = Router::new().fallback(handle).with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), server)
}

/// Short waits, so tests that retry stay fast; generous timeouts, so none
/// fails on a slow machine unless it means to.
fn fast() -> RetryPolicyBuilder {
    RetryPolicy::builder()
        .initial_backoff(5 * MS)
        .max_backoff(20 * MS)
        .attempt_timeout(10 * SEC)
        .deadline(30 * SEC)
}

fn client(policy: RetryPolicyBuilder) -> IdempotentClient {
    // No proxy: a proxy from the environment must not see loopback tests.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    IdempotentClient::new(http, policy.build().unwrap())
}

fn quoted(key: &str) -> String {
    format!("\"{key}\"")
}

// Retrying with one key -------------------------------------------------------

#[tokio::test]
async fn a_503_is_retried_with_the_same_quoted_key_until_it_succeeds() {
    let (base, server) = start().await;
    let client = client(fast());

    let response = client
        .send(|http| http.post(format!("{base}/fail-first?n=2")))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.attempts(), 3);
    assert!(!response.is_replayed());
    assert_eq!(response.key().len(), 36, "a UUID from key::random");
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.key(), quoted(response.key()));
    }
    assert_eq!(server.executions(&quoted(response.key())), 1);
}

#[tokio::test]
async fn an_attempt_slower_than_its_timeout_is_retried_with_the_same_key_and_replayed() {
    let (base, server) = start().await;
    let client = client(fast().attempt_timeout(200 * MS));

    let response = client
        .send(|http| http.post(format!("{base}/slow-first?ms=5000")))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.attempts(), 2);
    assert!(
        response.is_replayed(),
        "the first attempt executed; its answer was lost"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].key(), seen[1].key());
    assert_eq!(server.executions(seen[0].key()), 1);
}

#[tokio::test]
async fn each_attempt_sends_the_whole_body_again() {
    let (base, server) = start().await;
    let client = client(fast());
    let body = serde_json::json!({"amount": 500, "currency": "eur"});

    let response = client
        .send(|http| http.post(format!("{base}/fail-first?n=1")).json(&body))
        .await
        .unwrap();

    assert_eq!(response.attempts(), 2);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&request.body).unwrap(),
            body
        );
    }
}

#[tokio::test]
async fn a_key_set_by_the_builder_is_replaced_by_the_request_key() {
    let (base, server) = start().await;
    let client = client(fast());

    let response = client
        .send_with_key("the-key", |http| {
            http.post(format!("{base}/ok"))
                .header("idempotency-key", "another")
        })
        .await
        .unwrap();

    assert_eq!(response.key(), "the-key");
    assert_eq!(server.seen()[0].keys, vec![quoted("the-key")]);
}

#[tokio::test]
async fn a_deterministic_key_makes_a_resubmitted_form_a_replay() {
    let (base, server) = start().await;
    let client = client(fast());
    let form = [("user", "42"), ("cart", "7")];
    let submit = || {
        client.send_with_key(
            key::deterministic(["checkout", "user-42", "cart-7"]),
            |http| http.post(format!("{base}/checkout")).form(&form),
        )
    };

    let first = submit().await.unwrap();
    let second = submit().await.unwrap();

    assert!(!first.is_replayed());
    assert!(second.is_replayed());
    assert_eq!(first.key(), second.key());
    assert_eq!(server.executions(&quoted(first.key())), 1);
}

// Retry-After -----------------------------------------------------------------

#[tokio::test]
async fn retry_after_seconds_is_honoured_on_503_and_429() {
    let (base, server) = start().await;
    let client = client(fast());

    for status in [503, 429] {
        let url = format!("{base}/fail-first?n=1&status={status}&retry_after=1");
        let response = client.send(|http| http.post(&url)).await.unwrap();

        assert_eq!(response.attempts(), 2);
        let seen: Vec<Seen> = server
            .seen()
            .into_iter()
            .filter(|s| s.key() == quoted(response.key()))
            .collect();
        // The backoff alone would retry within 20 ms; the server asked for 1 s.
        let gap = seen[1].at - seen[0].at;
        assert!(gap >= 900 * MS, "{status}: retried after {gap:?}");
    }
}

#[tokio::test]
async fn a_retry_after_longer_than_the_cap_is_cut_to_the_cap() {
    let (base, _server) = start().await;
    let client = client(fast().max_retry_after(50 * MS));
    let started = Instant::now();

    let response = client
        .send(|http| http.post(format!("{base}/fail-first?n=1&retry_after=3600")))
        .await
        .unwrap();

    assert_eq!(response.attempts(), 2);
    assert!(
        started.elapsed() < 30 * SEC,
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_garbage_retry_after_falls_back_to_the_backoff() {
    let (base, _server) = start().await;
    let client = client(fast());
    let started = Instant::now();

    let response = client
        .send(|http| http.post(format!("{base}/fail-first?n=2&retry_after=soon")))
        .await
        .unwrap();

    assert_eq!(response.attempts(), 3);
    assert!(
        started.elapsed() < 30 * SEC,
        "waited {:?}",
        started.elapsed()
    );
}

// Stopping ----------------------------------------------------------------------

#[tokio::test]
async fn a_422_400_or_413_stops_at_once_and_is_returned_to_read() {
    let (base, server) = start().await;
    let client = client(fast());

    for code in [422u16, 400, 413] {
        let response = client
            .send(|http| http.post(format!("{base}/status?code={code}")))
            .await
            .unwrap();

        assert_eq!(response.status().as_u16(), code);
        assert_eq!(response.attempts(), 1);
        assert_eq!(server.requests_with(&quoted(response.key())), 1);
        let body = response.into_response().text().await.unwrap();
        assert!(body.contains("refused"), "the body is the caller's to read");
    }
}

#[tokio::test]
async fn gives_up_after_max_attempts_and_hands_back_the_last_response() {
    let (base, server) = start().await;
    let client = client(fast().max_attempts(3));

    let err = client
        .send(|http| http.post(format!("{base}/status?code=503")))
        .await
        .unwrap_err();

    assert_eq!(err.kind(), RetryErrorKind::AttemptsExhausted);
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.last_status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.last_reason(), Some(Reason::ServerError));
    assert!(err.is_retryable());
    assert_eq!(
        err.to_string(),
        format!(
            "gave up after 3 attempts with idempotency key {:?}; last attempt: server error (5xx) \
             (503 Service Unavailable); resending later with the same key is safe",
            err.key()
        )
    );
    assert_eq!(server.requests_with(&quoted(err.key())), 3);
    let last = err.into_response().unwrap();
    assert_eq!(last.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn gives_up_at_the_overall_deadline() {
    let (base, server) = start().await;
    let client = client(fast().max_attempts(u32::MAX).deadline(SEC));
    let started = Instant::now();

    let err = client
        .send(|http| http.post(format!("{base}/status?code=503")))
        .await
        .unwrap_err();

    assert_eq!(err.kind(), RetryErrorKind::DeadlineExceeded);
    assert!(
        err.attempts() >= 2,
        "retried until the deadline: {}",
        err.attempts()
    );
    // The last attempt either got its 503 or was cut short by the deadline
    // (then the server may not have seen it).
    let seen = server.seen();
    match err.last_reason() {
        Some(Reason::ServerError) => {
            assert_eq!(err.last_status(), Some(StatusCode::SERVICE_UNAVAILABLE));
            assert_eq!(seen.len() as u32, err.attempts());
        }
        Some(Reason::Timeout) => {
            assert_eq!(err.last_status(), None);
            assert!(seen.len() as u32 >= err.attempts() - 1);
        }
        other => panic!("last attempt: {other:?}"),
    }
    assert!(seen.iter().all(|s| s.key() == quoted(err.key())));
    assert!(started.elapsed() < 20 * SEC, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn the_deadline_cuts_a_slow_attempt_short() {
    let (base, _server) = start().await;
    let client = client(fast().attempt_timeout(60 * SEC).deadline(300 * MS));
    let started = Instant::now();

    let err = client
        .send(|http| http.post(format!("{base}/slow?ms=30000")))
        .await
        .unwrap_err();

    assert_eq!(err.kind(), RetryErrorKind::DeadlineExceeded);
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.last_reason(), Some(Reason::Timeout));
    assert_eq!(err.last_status(), None);
    assert!(started.elapsed() < 20 * SEC, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported() {
    // A port nothing listens on: bound, then closed.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = client(fast().max_attempts(3));

    let err = client
        .send(|http| http.post(format!("http://{address}/ok")))
        .await
        .unwrap_err();

    assert_eq!(err.kind(), RetryErrorKind::AttemptsExhausted);
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.last_reason(), Some(Reason::Connect));
    assert!(err.to_string().contains("could not connect"), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the reqwest error"
    );
}

#[tokio::test]
async fn an_invalid_key_is_refused_before_anything_is_sent() {
    let (base, server) = start().await;
    let client = client(fast());

    for bad in ["", "a,b", "naïve"] {
        let err = client
            .send_with_key(bad, |http| http.post(format!("{base}/ok")))
            .await
            .unwrap_err();

        assert_eq!(err.kind(), RetryErrorKind::InvalidKey);
        assert_eq!(err.attempts(), 0);
        assert!(!err.is_retryable());
    }
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn an_unbuildable_request_is_not_retried() {
    let client = client(fast());

    let err = client
        .send(|http| http.post("http://[::1"))
        .await
        .unwrap_err();

    assert_eq!(err.kind(), RetryErrorKind::Unsendable);
    assert_eq!(err.attempts(), 0);
    assert_eq!(err.last_reason(), Some(Reason::Unsendable));
    assert!(!err.is_retryable());
}

// Batches ---------------------------------------------------------------------

fn item(http: &reqwest::Client, url: &str, index: usize) -> reqwest::RequestBuilder {
    http.post(url).json(&serde_json::json!({"index": index}))
}

#[tokio::test]
async fn a_batch_retries_only_the_items_that_failed() {
    let (base, server) = start().await;
    let client = client(fast());
    let url = format!("{base}/batch?fail_once=1,3");

    let outcome = client
        .send_batch("batch-7", 0..6, BatchMode::Concurrent(4), |http, i| {
            item(http, &url, i)
        })
        .await;

    assert!(outcome.all_succeeded());
    assert!(outcome.unfinished().is_empty());
    let attempts: Vec<u32> = outcome.items().iter().map(|item| item.attempts()).collect();
    assert_eq!(attempts, [1, 2, 1, 2, 1, 1]);
    for (i, item) in outcome.items().iter().enumerate() {
        assert_eq!(item.index, i);
        assert_eq!(item.key(), item_key("batch-7", i));
        assert_eq!(
            server.requests_with(&quoted(item.key())),
            attempts[i] as usize
        );
        assert_eq!(server.executions(&quoted(item.key())), 1);
    }
}

#[tokio::test]
async fn a_partly_failed_batch_sent_again_sends_only_the_unfinished_items() {
    let (base, server) = start().await;
    let client = client(fast().max_attempts(2));
    let url = format!("{base}/batch?fail_always=2");
    let build = |http: &reqwest::Client, i: usize| item(http, &url, i);

    let first = client
        .send_batch("batch-8", 0..4, BatchMode::Concurrent(usize::MAX), build)
        .await;

    assert!(!first.all_succeeded());
    assert_eq!(first.unfinished(), [2]);
    let failed = first.items()[2].result.as_ref().unwrap_err();
    assert_eq!(failed.kind(), RetryErrorKind::AttemptsExhausted);
    assert_eq!(failed.attempts(), 2);

    server.healthy.store(true, Ordering::SeqCst);
    let sent_before = server.seen().len();
    let second = client
        .send_batch(
            first.batch_key(),
            first.unfinished(),
            BatchMode::Sequential,
            build,
        )
        .await;

    assert!(second.all_succeeded());
    let resent = &server.seen()[sent_before..];
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].key(), quoted(&item_key("batch-8", 2)));
    for i in 0..4 {
        assert_eq!(server.executions(&quoted(&item_key("batch-8", i))), 1);
    }
}

#[tokio::test]
async fn a_sequential_batch_finishes_each_item_before_the_next() {
    let (base, server) = start().await;
    let client = client(fast());
    let url = format!("{base}/batch?fail_once=1");

    let outcome = client
        .send_batch("batch-9", [0, 1, 2, 3], BatchMode::Sequential, |http, i| {
            item(http, &url, i)
        })
        .await;

    assert!(outcome.all_succeeded());
    let order: Vec<u64> = server
        .seen()
        .iter()
        .map(|s| {
            serde_json::from_slice::<serde_json::Value>(&s.body).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(order, [0, 1, 1, 2, 3]);
    assert!(server.seen().iter().all(|s| s.path == "/batch"));
}

// Types -------------------------------------------------------------------------

#[test]
fn the_client_its_futures_and_its_errors_can_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<IdempotentClient>();
    send_sync::<idemcache_http::client::RetryError>();
    send_sync::<idemcache_http::client::IdempotentResponse>();
    send_sync::<idemcache_http::client::BatchOutcome>();

    let client = client(fast());
    let body = String::from("{}");
    send(&client.send(|http| http.post("http://127.0.0.1:9/").body(body.clone())));
    send(
        &client.send_batch("b", 0..2, BatchMode::Concurrent(2), |http, _| {
            http.post("http://127.0.0.1:9/")
        }),
    );
    assert_eq!(IDEMPOTENCY_KEY.as_str(), "idempotency-key");
}
