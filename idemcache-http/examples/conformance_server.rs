//! A payments API behind the `Idempotency-Key` layer, with its defaults,
//! for independent HTTP clients to drive.
//!
//! ```sh
//! cargo run -p idemcache-http --example conformance_server -- --listen 127.0.0.1:0
//! ```
//!
//! The first line on stdout is `listening on http://127.0.0.1:PORT`; the
//! server runs until SIGTERM (or Ctrl-C), then stops taking requests,
//! waits for handlers in flight, and exits.
//!
//! With `--redis redis://127.0.0.1:PORT` the records live in Redis
//! (`idemcache-redis`), so several servers on one Redis share them, and
//! `GET /executions` counts executions across all of them (a Redis hash).
//!
//! Keys are scoped by the `Authorization` header's value (absent: one
//! anonymous scope). Routes:
//!
//! | route | answer |
//! |---|---|
//! | `POST /charges` `{"amount": N}` | 201, `Location: /charges/<id>`, `Set-Cookie: session=<random>`, `{"id": "<id>", "amount": N}`; one execution counted for the key |
//! | `PATCH /charges`, `POST /refunds` | the same (the layer wraps the whole router: a key reused on another path is a mismatch) |
//! | `?delay_ms=N` | charge, then wait N ms before responding |
//! | `?fail=503` | 503 without charging (nothing counted) |
//! | `?status=402` | declined: 402 with a JSON error, counted as an execution |
//! | `GET /executions` | `{ "<key>": <executions>, ... }` (keys unquoted) |
//! | `GET /health` | 200 |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use idemcache::Cache;
use idemcache_http::{IdempotencyLayer, Scope, ScopedKey, StoredResponse};
use serde::Deserialize;

/// Where executions are counted: in this process, or in Redis (shared by
/// every server on it).
struct Ledger {
    executions: Executions,
    next_id: AtomicU64,
}

enum Executions {
    Local(Mutex<HashMap<String, u64>>),
    Redis(redis::aio::ConnectionManager),
}

/// The Redis hash of executions per key.
const EXECUTIONS_HASH: &str = "conformance-server:executions";

impl Ledger {
    async fn count(&self, key: String) {
        match &self.executions {
            Executions::Local(map) => *map.lock().unwrap().entry(key).or_default() += 1,
            Executions::Redis(connection) => {
                let mut connection = connection.clone();
                let _: Result<u64, _> = redis::cmd("HINCRBY")
                    .arg(EXECUTIONS_HASH)
                    .arg(key)
                    .arg(1)
                    .query_async(&mut connection)
                    .await;
            }
        }
    }

    async fn all(&self) -> HashMap<String, u64> {
        match &self.executions {
            Executions::Local(map) => map.lock().unwrap().clone(),
            Executions::Redis(connection) => {
                let mut connection = connection.clone();
                redis::cmd("HGETALL")
                    .arg(EXECUTIONS_HASH)
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default()
            }
        }
    }
}

/// `StoredResponse` in Redis, in its own stable byte format.
struct StoredResponseCodec;

impl idemcache_redis::Codec<StoredResponse> for StoredResponseCodec {
    fn encode(&self, value: &StoredResponse) -> Result<Vec<u8>, idemcache_redis::CodecError> {
        Ok(value.to_bytes())
    }

    fn decode(&self, bytes: &[u8]) -> Result<StoredResponse, idemcache_redis::CodecError> {
        StoredResponse::from_bytes(bytes).map_err(idemcache_redis::CodecError::new)
    }
}

#[derive(Deserialize)]
struct Controls {
    delay_ms: Option<u64>,
    fail: Option<u16>,
    status: Option<u16>,
}

#[derive(Deserialize)]
struct ChargeRequest {
    amount: u64,
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn charge(
    State(ledger): State<Arc<Ledger>>,
    Query(controls): Query<Controls>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if controls.fail == Some(503) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "downstream unavailable"}),
        );
    }
    let Ok(request) = serde_json::from_slice::<ChargeRequest>(&body) else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "expected a JSON body {\"amount\": <u64>}"}),
        );
    };
    // The layer has checked the key; the ledger counts executions per key.
    let key = idemcache_http::parse_key(&headers, "idempotency-key", idemcache_http::MAX_KEY_LEN)
        .unwrap_or_default();
    ledger.count(key).await;
    if let Some(delay) = controls.delay_ms {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if controls.status == Some(402) {
        return json(
            StatusCode::PAYMENT_REQUIRED,
            serde_json::json!({"error": "card declined", "amount": request.amount}),
        );
    }
    let id = format!("ch_{}", ledger.next_id.fetch_add(1, Ordering::Relaxed) + 1);
    let session = idemcache::key::random();
    let mut response = json(
        StatusCode::CREATED,
        serde_json::json!({"id": id, "amount": request.amount}),
    );
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, format!("/charges/{id}").parse().unwrap());
    headers.insert(
        header::SET_COOKIE,
        format!("session={session}").parse().unwrap(),
    );
    response
}

async fn executions(State(ledger): State<Arc<Ledger>>) -> Response {
    let executions = ledger.all().await;
    json(StatusCode::OK, serde_json::to_value(executions).unwrap())
}

/// `--listen ADDR` (default 127.0.0.1:0) and `--redis URL` (optional).
fn arguments() -> Result<(SocketAddr, Option<String>), String> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_string();
    let mut redis = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "--redis" => redis = Some(args.next().ok_or("--redis needs a URL")?),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: --listen ADDR [--redis redis://HOST:PORT])"
                ));
            }
        }
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    Ok((listen, redis))
}

/// Keys are scoped by the `Authorization` header's value (absent: one
/// anonymous scope).
fn scope(parts: &http::request::Parts) -> Scope {
    match parts.headers.get(http::header::AUTHORIZATION) {
        Some(credential) => Scope::of([credential.as_bytes()]),
        None => Scope::anonymous(),
    }
}

/// The routes, behind `layer`.
fn app<St>(layer: IdempotencyLayer<St>, ledger: Arc<Ledger>) -> Router
where
    St: idemcache::store::Store<Value = StoredResponse> + 'static,
    St::Key: From<ScopedKey> + 'static,
{
    Router::new()
        .route("/charges", post(charge).patch(charge))
        .route("/refunds", post(charge))
        .route("/executions", get(executions))
        .route("/health", get(|| async { StatusCode::OK }))
        .with_state(ledger)
        .layer(layer)
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (address, redis_url) = arguments()?;
    let (app, shutdown) = match redis_url {
        None => {
            let store: Cache<ScopedKey, StoredResponse> = Cache::builder()
                .max_entries(1_000_000)
                .background_eviction(Duration::from_secs(1))
                .build()?;
            let layer = IdempotencyLayer::scoped(store, scope);
            let shutdown = layer.shutdown_handle();
            let ledger = Ledger {
                executions: Executions::Local(Mutex::default()),
                next_id: AtomicU64::new(0),
            };
            (app(layer, Arc::new(ledger)), shutdown)
        }
        Some(url) => {
            let store = idemcache_redis::RedisStore::builder(url.clone())
                .prefix("conformance-server")
                .connect_with_codec(StoredResponseCodec)
                .await?;
            let layer = IdempotencyLayer::scoped(store, scope);
            let shutdown = layer.shutdown_handle();
            let connection = redis::Client::open(url)?.get_connection_manager().await?;
            let ledger = Ledger {
                executions: Executions::Redis(connection),
                // Ids differ between servers sharing the Redis.
                next_id: AtomicU64::new(u64::from(std::process::id()) << 32),
            };
            (app(layer, Arc::new(ledger)), shutdown)
        }
    };

    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(terminated())
        .await?;
    // Connections are done; handlers detached from them may not be.
    shutdown.shutdown();
    shutdown.drained().await;
    Ok(())
}
