//! The client helper against this crate's own layer, end to end over a
//! loopback socket: the two halves of the protocol agree on the key, on
//! 409 + `Retry-After` while the first request runs, on replays, and on
//! 422 for a key reused with another request.
//!
//! The handler behind the layer counts charges per key (the key as the
//! layer parsed it, unquoted), so "executed once" is asserted directly.

#![cfg(all(feature = "reqwest", feature = "tower"))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use idemcache::Cache;
use idemcache_http::client::{BatchMode, IdempotentClient, RetryPolicy, item_key};
use idemcache_http::{IdempotencyLayer, MAX_KEY_LEN, ScopedKey, StoredResponse, parse_key};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Ledger {
    /// Requests the handler ran, per key.
    runs: Mutex<HashMap<String, u32>>,
    /// Charges made (2xx answers), per key.
    charges: Mutex<HashMap<String, u32>>,
}

impl Ledger {
    fn charges(&self, key: &str) -> u32 {
        self.charges.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// `POST /charges[?delay_ms=N][&fail_first=1]`: charges, then waits N ms;
/// with `fail_first`, the first run of a key answers 503 without charging.
async fn charge(
    State(ledger): State<Arc<Ledger>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = parse_key(&headers, "idempotency-key", MAX_KEY_LEN).unwrap();
    let run = {
        let mut runs = ledger.runs.lock().unwrap();
        let run = runs.entry(key.clone()).or_default();
        *run += 1;
        *run
    };
    if query.contains_key("fail_first") && run == 1 {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    *ledger.charges.lock().unwrap().entry(key).or_default() += 1;
    if let Some(delay) = query.get("delay_ms") {
        tokio::time::sleep(MS * delay.parse::<u32>().unwrap()).await;
    }
    (StatusCode::CREATED, body).into_response()
}

async fn start() -> (String, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let store: Cache<ScopedKey, StoredResponse> = Cache::new();
    let app = Router::new()
        .route("/charges", post(charge))
        .with_state(ledger.clone())
        .layer(IdempotencyLayer::unscoped(store));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/charges"), ledger)
}

fn client(attempt_timeout: Duration) -> IdempotentClient {
    let policy = RetryPolicy::builder()
        .initial_backoff(5 * MS)
        .max_backoff(20 * MS)
        .attempt_timeout(attempt_timeout)
        .deadline(60 * SEC)
        .build()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    IdempotentClient::new(http, policy)
}

#[tokio::test]
async fn a_client_timeout_shorter_than_the_handler_charges_once_and_gets_the_replay() {
    let (url, ledger) = start().await;
    // Attempt 1 times out while the detached handler runs; a retry while it
    // still runs gets 409 with Retry-After; a retry after it finished
    // gets the stored 201, replayed.
    let client = client(200 * MS);

    let response = client
        .send(|http| http.post(format!("{url}?delay_ms=600")).body("amount=500"))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.is_replayed());
    assert!(response.attempts() >= 2, "{} attempts", response.attempts());
    assert_eq!(ledger.charges(response.key()), 1);
    let key = response.key().to_owned();
    assert_eq!(response.into_response().text().await.unwrap(), "amount=500");
    assert_eq!(ledger.charges(&key), 1);
}

#[tokio::test]
async fn a_key_reused_with_another_request_gets_422_at_once() {
    let (url, ledger) = start().await;
    let client = client(10 * SEC);
    let key = idemcache::key::random();

    let first = client
        .send_with_key(key.clone(), |http| http.post(&url).body("amount=500"))
        .await
        .unwrap();
    let reused = client
        .send_with_key(key.clone(), |http| http.post(&url).body("amount=900"))
        .await
        .unwrap();

    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.attempts(), 1);
    assert_eq!(ledger.charges(&key), 1);
}

#[tokio::test]
async fn a_batch_through_the_layer_charges_each_item_once_even_when_sent_twice() {
    let (url, ledger) = start().await;
    let client = client(10 * SEC);
    let url = format!("{url}?fail_first=1");
    let build = |http: &reqwest::Client, i: usize| http.post(&url).body(format!("item={i}"));

    let first = client
        .send_batch("payouts-1", 0..5, BatchMode::Concurrent(3), build)
        .await;
    let again = client
        .send_batch("payouts-1", 0..5, BatchMode::Concurrent(3), build)
        .await;

    assert!(first.all_succeeded());
    assert!(
        first.items().iter().all(|item| item.attempts() == 2),
        "each 503 once, released"
    );
    assert!(again.all_succeeded());
    for item in again.items() {
        let response = item.result.as_ref().unwrap();
        assert!(response.is_replayed());
        assert_eq!(response.attempts(), 1);
        assert_eq!(ledger.charges(&item_key("payouts-1", item.index)), 1);
    }
}
