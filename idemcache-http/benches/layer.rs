//! What the layer costs per request: a hyper (axum) server on loopback with
//! and without `IdempotencyLayer`, driven by a keep-alive hyper client, in
//! one run.
//!
//! `cargo bench -p idemcache-http --bench layer` (about 30 s). Workloads:
//!
//! - **bare**: the handler without the layer;
//! - **first execution**: through the layer, a new key per request (claim,
//!   run, store);
//! - **replay**: through the layer, one key already completed (claim,
//!   replay; the handler does not run), every client on that one key: both
//!   server threads then share its record's cache lines;
//! - **replay, 1,024 keys**: the same over 1,024 completed keys taken in
//!   turn, as retries of different requests arrive (loopback only);
//! - **first execution, store keeps nothing** (loopback only): the layer
//!   over a store that acquires every claim and stores nothing, so that
//!   the layer's own cost shows apart from the in-process store's.
//!
//! Each is run in short rounds interleaved with the others (so drift on a
//! shared machine spreads over all of them) with `BENCH_CONCURRENCY` client
//! tasks (default 4): `BENCH_ROUNDS` rounds (default 12) of `BENCH_SECONDS`
//! each (default 0.5). Reported: requests/s, the ratio to bare from the
//! same run (over all rounds, and the median of the rounds' own ratios,
//! which a burst of load on one round cannot move), and p50/p99 latency.
//! `BENCH_ONLY=<text>[|<text>...]` runs only the loopback workloads whose
//! name contains one of the texts (to profile one); `BENCH_IN_PROCESS_ONLY=1`
//! only the in-process table (for A/B runs between builds).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idemcache::store::{Acquired, ClaimId, ClaimOutcome, Peek, Store, StoreError};
use idemcache::{Cache, Completion, Fingerprint};
use idemcache_http::{IdempotencyLayer, ScopedKey, StoredResponse};

/// The handler: take a small JSON body, answer 201 with a small JSON body
/// and a Location header, as a payments endpoint would.
async fn charge(body: Bytes) -> impl IntoResponse {
    let amount = body.len();
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::LOCATION, "/charges/ch_1"),
        ],
        format!(r#"{{"id":"ch_1","amount":{amount}}}"#),
    )
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Bare,
    First,
    Replay,
    ReplayMany,
    FirstNoStore,
}

/// Completed keys the `ReplayMany` workload cycles through.
const REPLAYED_KEYS: u64 = 1024;

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Bare => "bare handler",
            Workload::First => "first execution (layer)",
            Workload::Replay => "replay (layer), one key",
            Workload::ReplayMany => "replay (layer), 1,024 keys",
            Workload::FirstNoStore => "first execution (layer), store keeps nothing",
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn send(client: &HttpClient, address: SocketAddr, key: &str) {
    let request = http::Request::post(format!("http://{address}/charges"))
        .header("idempotency-key", key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(br#"{"amount":4200}"#)))
        .unwrap();
    let response = client.request(request).await.expect("the server answers");
    assert!(response.status().is_success(), "{}", response.status());
    response.into_body().collect().await.unwrap();
}

/// The CPU time this process (client and server together) has used, in
/// seconds: user + system from `/proc/self/stat`; `None` off Linux.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ
}

/// Runs `workload` for `seconds` with `tasks` client tasks; latencies in µs.
async fn round(
    client: &HttpClient,
    address: SocketAddr,
    workload: Workload,
    tasks: usize,
    seconds: f64,
    next_key: &Arc<AtomicU64>,
) -> (u64, Vec<f64>) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (client, next_key) = (client.clone(), Arc::clone(next_key));
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let n = next_key.fetch_add(1, Ordering::Relaxed);
                let key = match workload {
                    Workload::Replay => "the-replayed-key".to_string(),
                    Workload::ReplayMany => format!("replayed-{}", n % REPLAYED_KEYS),
                    Workload::Bare | Workload::First | Workload::FirstNoStore => {
                        format!("key-{n}")
                    }
                };
                let start = Instant::now();
                send(&client, address, &key).await;
                latencies.push(start.elapsed().as_secs_f64() * 1e6);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    (all.len() as u64, all)
}

/// Whether `BENCH_ONLY` (if set) selects `workload`.
fn selected(workload: Workload) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| {
        only.split('|').any(|part| workload.name().contains(part))
    })
}

/// The layer's CPU cost without the network: the router called in
/// process (tower `oneshot`), `n` requests per workload; µs per request.
async fn in_process(n: u64) -> [f64; 3] {
    use tower::{Service, ServiceExt};
    let bare = Router::new().route("/charges", post(charge));
    let store: Cache<ScopedKey, StoredResponse> =
        Cache::builder().max_entries(10_000_000).build().unwrap();
    let layered = Router::new()
        .route("/charges", post(charge))
        .layer(IdempotencyLayer::unscoped(store));
    let mut out = [0.0; 3];
    for (slot, (mut app, workload)) in [
        (bare, Workload::Bare),
        (layered.clone(), Workload::First),
        (layered, Workload::Replay),
    ]
    .into_iter()
    .enumerate()
    {
        let start = Instant::now();
        for i in 0..n {
            let key = match workload {
                Workload::Replay => "the-replayed-key".to_string(),
                Workload::ReplayMany | Workload::FirstNoStore => unreachable!("loopback only"),
                Workload::Bare | Workload::First => format!("in-process-{i}"),
            };
            let request = http::Request::post("/charges")
                .header("idempotency-key", key)
                .body(axum::body::Body::from(r#"{"amount":4200}"#))
                .unwrap();
            let ready = ServiceExt::<http::Request<axum::body::Body>>::ready(&mut app)
                .await
                .unwrap();
            let response = ready.call(request).await.unwrap();
            axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
        }
        out[slot] = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    }
    out
}

/// A store that acquires every claim and keeps nothing: the layer's own
/// cost, apart from the store's (a benchmark's reference only; it
/// protects nothing).
struct KeepsNothing;

impl Store for KeepsNothing {
    type Key = ScopedKey;
    type Value = StoredResponse;

    fn claim(
        &self,
        _: &ScopedKey,
        _: Option<Fingerprint>,
        _: ClaimId,
    ) -> impl Future<Output = Result<ClaimOutcome<StoredResponse>, StoreError>> + Send {
        let lease = self.lease();
        let acquired = Acquired {
            token: 1,
            lease,
            resent: false,
        };
        std::future::ready(Ok(ClaimOutcome::Acquired(acquired)))
    }

    fn complete(
        &self,
        _: &ScopedKey,
        _: u64,
        _: StoredResponse,
        _: Option<Duration>,
    ) -> impl Future<Output = Result<Completion, StoreError>> + Send {
        let expires_at = std::time::SystemTime::now();
        std::future::ready(Ok(Completion::Stored { expires_at }))
    }

    fn release(
        &self,
        _: &ScopedKey,
        _: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(Ok(()))
    }

    fn renew(
        &self,
        _: &ScopedKey,
        _: u64,
    ) -> impl Future<Output = Result<Duration, StoreError>> + Send {
        std::future::ready(Ok(self.lease()))
    }

    fn abandon(
        &self,
        _: &ScopedKey,
        _: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(Ok(()))
    }

    fn peek(
        &self,
        _: &ScopedKey,
        _: Option<Fingerprint>,
    ) -> impl Future<Output = Result<Peek<StoredResponse>, StoreError>> + Send {
        std::future::ready(Ok(Peek::Free))
    }

    fn remove(&self, _: &ScopedKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(Ok(false))
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(30)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and then it only checks that it starts.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let setting = |name: &str, default: f64| -> f64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let tasks = setting("BENCH_CONCURRENCY", 4.0) as usize;
    let rounds = setting("BENCH_ROUNDS", 12.0) as usize;
    let seconds = setting("BENCH_SECONDS", 0.5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if std::env::var_os("BENCH_ONLY").is_none() {
            let [bare_us, first_us, replay_us] = in_process(200_000).await;
        println!("In process (the router called directly, no network), µs per request:");
        println!();
        println!("| workload | µs/request | added |");
        println!("|---|---|---|");
        println!("| bare handler | {bare_us:.2} | |");
        println!("| first execution (layer) | {first_us:.2} | {:+.2} |", first_us - bare_us);
        println!("| replay (layer) | {replay_us:.2} | {:+.2} |", replay_us - bare_us);
        println!();
        }
        if std::env::var_os("BENCH_IN_PROCESS_ONLY").is_some() {
            return;
        }
        let bare = serve(Router::new().route("/charges", post(charge))).await;
        let store: Cache<ScopedKey, StoredResponse> = Cache::builder().max_entries(10_000_000).build().unwrap();
        let layered = serve(Router::new().route("/charges", post(charge)).layer(IdempotencyLayer::unscoped(store))).await;
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let next_key = Arc::new(AtomicU64::new(0));
        // Warm up both servers and complete the replayed keys.
        send(&client, layered, "the-replayed-key").await;
        for i in 0..REPLAYED_KEYS {
            send(&client, layered, &format!("replayed-{i}")).await;
        }
        let workloads: Vec<Workload> = [
            Workload::Bare,
            Workload::First,
            Workload::Replay,
            Workload::ReplayMany,
            Workload::FirstNoStore,
        ]
        .into_iter()
        .filter(|&workload| selected(workload))
        .collect();
        let no_store = serve(Router::new().route("/charges", post(charge)).layer(IdempotencyLayer::unscoped(KeepsNothing))).await;
        let address = |workload| match workload {
            Workload::Bare => bare,
            Workload::FirstNoStore => no_store,
            _ => layered,
        };
        for &workload in &workloads {
            round(&client, address(workload), workload, tasks, 0.5, &next_key).await;
        }
        // Per workload: requests in each round, CPU seconds, every latency.
        let mut counts = vec![Vec::new(); workloads.len()];
        let mut cpu = vec![0.0; workloads.len()];
        let mut latencies = vec![Vec::new(); workloads.len()];
        for round_index in 0..rounds {
            // Rotate the order, so no workload always follows another.
            for step in 0..workloads.len() {
                let i = (step + round_index) % workloads.len();
                let workload = workloads[i];
                let cpu_before = cpu_seconds();
                let (count, measured) = round(&client, address(workload), workload, tasks, seconds, &next_key).await;
                if let (Some(after), Some(before)) = (cpu_seconds(), cpu_before) {
                    cpu[i] += after - before;
                }
                counts[i].push(count);
                latencies[i].extend(measured);
            }
        }
        let total = rounds as f64 * seconds;
        let bare_index = workloads.iter().position(|&w| w == Workload::Bare);
        println!("{tasks} client tasks, 2 server worker threads, {total} s per workload in {rounds} interleaved rounds");
        println!();
        println!("CPU µs/request: the process's CPU time (client, server and kernel work on its behalf) over its requests.");
        println!();
        println!("| workload | requests/s | vs bare | vs bare, median of rounds | CPU µs/request | p50 µs | p99 µs |");
        println!("|---|---|---|---|---|---|---|");
        let summary = |i: usize| {
            let sorted = &mut latencies[i].clone();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let requests = counts[i].iter().sum::<u64>() as f64;
            let cpu_us = cpu[i] * 1e6 / requests;
            (requests / total, cpu_us, percentile(sorted, 0.50), percentile(sorted, 0.99))
        };
        let bare_summary = bare_index.map(summary);
        for (i, workload) in workloads.iter().enumerate() {
            let (rps, cpu_us, p50, p99) = summary(i);
            let Some((bare_rps, bare_cpu_us, bare_p50, bare_p99)) = bare_summary else {
                println!("| {} | {rps:.0} | | | {cpu_us:.1} | {p50:.0} | {p99:.0} |", workload.name());
                continue;
            };
            let bare_counts = &counts[bare_index.unwrap()];
            let mut ratios: Vec<f64> = counts[i]
                .iter()
                .zip(bare_counts)
                .map(|(&count, &bare)| count as f64 / bare as f64)
                .collect();
            ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "| {} | {rps:.0} | {:.2}× | {:.2}× | {cpu_us:.1} ({:+.1}) | {p50:.0} ({:+.0}) | {p99:.0} ({:+.0}) |",
                workload.name(),
                rps / bare_rps,
                percentile(&ratios, 0.5),
                cpu_us - bare_cpu_us,
                p50 - bare_p50,
                p99 - bare_p99,
            );
        }
    });
}
