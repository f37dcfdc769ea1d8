//! The layer's own futures stay small. glibc's malloc serves requests of
//! up to 1,032 bytes from a per-thread cache; a larger one locks the arena
//! and may first consolidate its free lists, which showed up as a fifth of
//! the layer's cost per request when its futures were 2–4 KiB. These
//! tests count allocations over 1 KiB made while requests go through the
//! layer in process (one thread, the router called directly), and all
//! allocations of a replay against those of the handler it stands in for.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use idemcache::Cache;
use idemcache::Fingerprint;
use idemcache::store::{ClaimId, ClaimOutcome, Store};
use idemcache_http::{IdempotencyLayer, Scope, ScopedKey, StoredResponse};
use tower::ServiceExt;

/// Allocations over this size are the ones counted.
const LARGE: usize = 1024;

struct CountingAllocator;

thread_local! {
    /// Whether this thread is measuring (tests run on threads of their own).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// This thread's large allocations while measuring.
    static LARGE_ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    /// This thread's allocations of any size while measuring.
    static ALL_ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count(size: usize) {
    if COUNTING.with(Cell::get) {
        ALL_ALLOCATIONS.with(|n| n.set(n.get() + 1));
        if size > LARGE {
            LARGE_ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds `GlobalAlloc`'s contract; counting allocates nothing.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; the caller's
        // contract for `realloc` covers `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

async fn charge(body: Bytes) -> impl IntoResponse {
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::LOCATION, "/charges/ch_1"),
        ],
        format!(r#"{{"id":"ch_1","amount":{}}}"#, body.len()),
    )
}

async fn send(app: &Router, key: &str) -> StatusCode {
    let request = http::Request::post("/charges")
        .header("idempotency-key", key)
        .body(Body::from(r#"{"amount":4200}"#))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    status
}

/// Large allocations made by `requests` calls of `request(i)`.
async fn large_allocations<F: Future<Output = StatusCode>>(
    requests: usize,
    request: impl FnMut(usize) -> F,
) -> usize {
    allocations(requests, request).await.0
}

/// Allocations (over 1 KiB, and all) made by `requests` calls of
/// `request(i)`.
async fn allocations<F: Future<Output = StatusCode>>(
    requests: usize,
    mut request: impl FnMut(usize) -> F,
) -> (usize, usize) {
    LARGE_ALLOCATIONS.with(|n| n.set(0));
    ALL_ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    for i in 0..requests {
        assert!(request(i).await.is_success());
    }
    COUNTING.with(|c| c.set(false));
    (
        LARGE_ALLOCATIONS.with(Cell::get),
        ALL_ALLOCATIONS.with(Cell::get),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn layered() -> Router {
    let store: Cache<ScopedKey, StoredResponse> = Cache::new();
    Router::new()
        .route("/charges", post(charge))
        .layer(IdempotencyLayer::unscoped(store))
}

#[test]
fn replays_make_no_large_allocation() {
    runtime().block_on(async {
        let app = layered();
        assert_eq!(send(&app, "replayed").await, StatusCode::CREATED);
        let large = large_allocations(2_000, |_| send(&app, "replayed")).await;
        assert_eq!(large, 0, "large allocations in 2,000 replays");
    });
}

#[test]
fn a_replay_allocates_less_often_than_the_handler_it_stands_in_for() {
    runtime().block_on(async {
        let bare: Router = Router::new().route("/charges", post(charge));
        let app = layered();
        // Warm both up; complete the replayed key.
        assert_eq!(send(&bare, "replayed").await, StatusCode::CREATED);
        assert_eq!(send(&app, "replayed").await, StatusCode::CREATED);
        // The same requests (one key: building the request allocates the
        // same), the same response to read back.
        let (_, handler) = allocations(1_000, |_| send(&bare, "replayed")).await;
        let (_, replay) = allocations(1_000, |_| send(&app, "replayed")).await;
        // Measured: 21 per replay against 23 per handler run, the test's
        // own request and response included; a replay's response map that
        // grew when the server added `Content-Length` made it 25.
        assert!(
            replay < handler,
            "{replay} allocations in 1,000 replays, {handler} in 1,000 runs of the handler"
        );
    });
}

#[test]
fn first_executions_make_large_allocations_only_as_the_store_grows() {
    runtime().block_on(async {
        let keys: Vec<String> = (0..2_000).map(|i| format!("key-{i}")).collect();
        // The store's own growth, the same claims and completions made
        // directly: its tables double as keys arrive.
        let store: Cache<ScopedKey, StoredResponse> = Cache::new();
        let stored = StoredResponse::new(StatusCode::CREATED, Vec::new(), Bytes::new());
        let growth = large_allocations(keys.len(), |i| {
            let (store, stored) = (&store, stored.clone());
            let key = ScopedKey::new(Scope::anonymous(), keys[i].as_str());
            async move {
                let fingerprint = Some(Fingerprint::of([key.key()]));
                let claimed = Store::claim(store, &key, fingerprint, ClaimId::random()).await;
                let Ok(ClaimOutcome::Acquired(acquired)) = claimed else {
                    panic!("a new key is acquired");
                };
                let completed = Store::complete(store, &key, acquired.token, stored, None).await;
                assert!(completed.is_ok());
                StatusCode::OK
            }
        })
        .await;
        let app = layered();
        let large = large_allocations(keys.len(), |i| send(&app, &keys[i])).await;
        // Before the layer's futures were made small it added two per
        // request; allow one per hundred (unoptimised builds make a few).
        assert!(
            large <= growth + keys.len() / 100,
            "{large} large allocations in 2,000 first executions; the store's growth makes {growth}"
        );
    });
}
