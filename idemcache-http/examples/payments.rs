//! The main job, end to end over HTTP on loopback, in one process: a
//! payments server behind the `Idempotency-Key` layer, and clients that
//! retry through a flaky network with one key per logical request.
//!
//! ```sh
//! cargo run --release -p idemcache-http --features reqwest --example payments
//! ```
//!
//! The network and the downstream fail on purpose:
//!
//! - **lost responses**: the charge is made and stored, but its response
//!   reaches the client after the client gave up;
//! - **slow handlers**: the charge takes longer than the client waits;
//! - **transient 503s**: the payment provider is down, nothing is charged
//!   (the layer releases the key, the retry charges);
//! - **a batch**: one request per item, each with its own key
//!   (`item_key(batch, i)`), retried item by item.
//!
//! It prints requests sent, retries, executions (charges made, which must
//! equal the distinct keys), replays, and exits non-zero if any key was
//! charged twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use idemcache::Cache;
use idemcache_http::client::{BatchMode, IdempotentClient, RetryPolicy};
use idemcache_http::{EventKind, IdempotencyLayer, ScopedKey, StoredResponse};

const CLIENTS: u64 = 8;
const REQUESTS_PER_CLIENT: u64 = 40;
const BATCH_ITEMS: usize = 24;
/// How long a client waits for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(150);

/// The payment provider's ledger: charges made, per idempotency key.
#[derive(Default)]
struct Provider {
    charges: Mutex<HashMap<String, u64>>,
    calls: AtomicU64,
}

/// A small deterministic PRNG (xorshift64*), so runs are repeatable.
fn noise(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// `POST /charges`: sometimes the provider is down (503, nothing charged),
/// sometimes it is slow, sometimes the response is lost on the way back.
async fn charge(
    State(provider): State<Arc<Provider>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = idemcache_http::parse_key(&headers, "idempotency-key", idemcache_http::MAX_KEY_LEN)
        .unwrap_or_default();
    let roll = noise(provider.calls.fetch_add(1, Ordering::Relaxed)) % 100;
    if roll < 10 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "payment provider unavailable",
        )
            .into_response();
    }
    let charge_id = {
        let mut charges = provider.charges.lock().unwrap();
        let count = charges.entry(key.clone()).or_default();
        *count += 1;
        format!("ch_{}_{}", key.len(), *count)
    };
    if roll < 25 {
        // Slower than the client waits: the client times out and retries
        // while this runs on, detached from its connection.
        tokio::time::sleep(ATTEMPT_TIMEOUT * 2).await;
    }
    let mut response = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"id":"{charge_id}","bytes":{}}}"#, body.len()),
    )
        .into_response();
    response.headers_mut().insert(
        header::LOCATION,
        format!("/charges/{charge_id}").parse().unwrap(),
    );
    if roll < 35 {
        // A lost response: made and stored, but it arrives too late.
        tokio::time::sleep(ATTEMPT_TIMEOUT * 2).await;
    }
    response
}

#[derive(Default)]
struct Tally {
    logical: u64,
    sent: u64,
    replayed_to_client: u64,
    failed: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let store: Cache<ScopedKey, StoredResponse> =
        Cache::builder().max_entries(1_000_000).build()?;
    let replays = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&replays);
    let layer = IdempotencyLayer::builder(store)
        // Duplicates of a charge in progress wait for it and replay it.
        .wait_for_in_flight(Duration::from_secs(2))
        .on_event(move |event| {
            if matches!(event.kind, EventKind::Replayed | EventKind::Waited) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()?;
    let provider = Arc::new(Provider::default());
    let app = Router::new()
        .route("/charges", post(charge))
        .with_state(Arc::clone(&provider))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/charges", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let policy = RetryPolicy::builder()
        .max_attempts(20)
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(100))
        .max_retry_after(Duration::from_millis(200))
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .deadline(Duration::from_secs(20))
        .build()?;
    let client = Arc::new(IdempotentClient::new(reqwest::Client::new(), policy));

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, url) = (Arc::clone(&client), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            for r in 0..REQUESTS_PER_CLIENT {
                tally.logical += 1;
                let body = format!(
                    r#"{{"client":{c},"request":{r},"amount":{}}}"#,
                    100 + noise(c * 1000 + r) % 10_000
                );
                match client.send(|http| http.post(&url).body(body.clone())).await {
                    Ok(response) => {
                        tally.sent += u64::from(response.attempts());
                        tally.replayed_to_client += u64::from(response.is_replayed());
                        if !response.status().is_success() {
                            tally.failed += 1;
                        }
                    }
                    Err(error) => {
                        tally.sent += u64::from(error.attempts());
                        tally.failed += 1;
                    }
                }
            }
            tally
        }));
    }
    // A batch: one key per item, so a partly failed batch retries only what
    // did not succeed.
    let batch = {
        let (client, url) = (Arc::clone(&client), url.clone());
        tokio::spawn(async move {
            client
                .send_batch(
                    "import-2026-11-30",
                    0..BATCH_ITEMS,
                    BatchMode::Concurrent(4),
                    |http, i| http.post(&url).body(format!(r#"{{"line":{i}}}"#)),
                )
                .await
        })
    };
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await?;
        total.logical += tally.logical;
        total.sent += tally.sent;
        total.replayed_to_client += tally.replayed_to_client;
        total.failed += tally.failed;
    }
    let batch = batch.await?;
    total.logical += batch.items().len() as u64;
    for item in batch.items() {
        total.sent += u64::from(item.attempts());
        if !item.is_success() {
            total.failed += 1;
        }
    }
    // Let detached handlers whose clients gave up finish.
    tokio::time::sleep(ATTEMPT_TIMEOUT * 5).await;

    let charges = provider.charges.lock().unwrap().clone();
    let executions: u64 = charges.values().sum();
    let duplicated: Vec<_> = charges.iter().filter(|&(_, &n)| n > 1).collect();
    println!("logical requests        {}", total.logical);
    println!("requests sent           {}", total.sent);
    println!("retries                 {}", total.sent - total.logical);
    println!("distinct keys charged   {}", charges.len());
    println!("executions (charges)    {executions}");
    println!(
        "replays (server)        {}",
        replays.load(Ordering::Relaxed)
    );
    println!("replays seen by clients {}", total.replayed_to_client);
    println!("gave up                 {}", total.failed);
    println!(
        "batch items succeeded   {}/{}",
        batch.items().iter().filter(|i| i.is_success()).count(),
        BATCH_ITEMS
    );
    println!(
        "took                    {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !duplicated.is_empty() {
        eprintln!("DUPLICATE EXECUTIONS: {duplicated:?}");
        std::process::exit(1);
    }
    if executions != charges.len() as u64 {
        std::process::exit(1);
    }
    println!("every key charged exactly once");
    Ok(())
}
