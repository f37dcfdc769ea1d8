//! What the layer costs per request: a hyper (axum) server on loopback with
//! and without `IdempotencyLayer`, driven by a keep-alive hyper client, in
//! one run.
//!
//! `cargo bench -p idemcache-http --bench layer` (about a minute). The
//! handler is a payments endpoint without I/O, as the conformance server's:
//! it parses `{"amount": N}` (axum's `Json`) and answers 201 with a
//! `Location` header and the charge as JSON. Workloads:
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
//!   the layer's own cost shows apart from the in-process store's;
//! - **bare, a handler that does no work** (loopback only): a reference
//!   that reads only the body's length and formats its answer, so the
//!   replay can also be compared with a handler that costs almost nothing.
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

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idemcache::store::{Acquired, ClaimId, ClaimOutcome, Peek, Store, StoreError};
use idemcache::{Cache, Completion, Fingerprint};
use idemcache_http::{IdempotencyLayer, ScopedKey, StoredResponse};
use serde::{Deserialize, Serialize};

/// A charge request's body.
#[derive(Deserialize)]
struct NewCharge {
    amount: u64,
}

/// A charge, as the handler answers it.
#[derive(Serialize)]
struct Charge {
    id: String,
    amount: u64,
}

thread_local! {
    /// Charge ids, per thread: a shared counter would add a contended
    /// write to the bare handler that a real id generator does not have.
    static NEXT_CHARGE: Cell<u64> = const { Cell::new(0) };
}

/// The handler: a payments endpoint without I/O. Parses the JSON body,
/// answers 201 with the new charge's `Location` and the charge as JSON.
async fn charge(Json(new): Json<NewCharge>) -> impl IntoResponse {
    let n = NEXT_CHARGE.with(|next| next.replace(next.get() + 1));
    let id = format!("ch_{n}");
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/charges/{id}"))],
        Json(Charge {
            id,
            amount: new.amount,
        }),
    )
}

/// A reference handler that does almost nothing: reads the body's length
/// and formats a small JSON answer (no parsing).
async fn charge_doing_no_work(body: Bytes) -> impl IntoResponse {
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

/// The endpoint's router, without a layer.
fn charges() -> Router {
    Router::new().route("/charges", post(charge))
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
    BareNoWork,
}

/// Completed keys the `ReplayMany` workload cycles through.
const REPLAYED_KEYS: u64 = 1024;

impl Workload {
    const ALL: [Workload; 6] = [
        Workload::Bare,
        Workload::First,
        Workload::Replay,
        Workload::ReplayMany,
        Workload::FirstNoStore,
        Workload::BareNoWork,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Bare => "bare handler",
            Workload::First => "first execution (layer)",
            Workload::Replay => "replay (layer), one key",
            Workload::ReplayMany => "replay (layer), 1,024 keys",
            Workload::FirstNoStore => "first execution (layer over a store that keeps nothing)",
            Workload::BareNoWork => "bare, a handler that does no work",
        }
    }

    /// The idempotency key of request number `n`.
    fn key(self, n: u64) -> String {
        match self {
            Workload::Replay => "the-replayed-key".to_string(),
            Workload::ReplayMany => format!("replayed-{}", n % REPLAYED_KEYS),
            Workload::Bare | Workload::First | Workload::FirstNoStore | Workload::BareNoWork => {
                format!("key-{n}")
            }
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The request body every workload sends.
const BODY: &[u8] = br#"{"amount":4200}"#;

async fn send(client: &HttpClient, address: SocketAddr, key: &str) {
    let request = http::Request::post(format!("http://{address}/charges"))
        .header("idempotency-key", key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(BODY)))
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
) -> Vec<f64> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (client, next_key) = (client.clone(), Arc::clone(next_key));
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let key = workload.key(next_key.fetch_add(1, Ordering::Relaxed));
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
    all
}

/// Whether `BENCH_ONLY` (if set) selects `workload`.
fn selected(workload: Workload) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| {
        only.split('|').any(|part| workload.name().contains(part))
    })
}

/// The in-process store the layered servers use.
fn memory_store() -> Cache<ScopedKey, StoredResponse> {
    Cache::builder().max_entries(10_000_000).build().unwrap()
}

/// The layer's CPU cost without the network: the router called in
/// process (tower `oneshot`), `n` requests per workload; µs per request.
async fn in_process(n: u64) -> [f64; 3] {
    use tower::{Service, ServiceExt};
    let bare = charges();
    let layered = charges().layer(IdempotencyLayer::unscoped(memory_store()));
    let mut out = [0.0; 3];
    let workloads = [
        (bare, Workload::Bare),
        (layered.clone(), Workload::First),
        (layered, Workload::Replay),
    ];
    for (slot, (mut app, workload)) in workloads.into_iter().enumerate() {
        let start = Instant::now();
        for i in 0..n {
            let request = http::Request::post("/charges")
                .header("idempotency-key", workload.key(i))
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(BODY))
                .unwrap();
            let ready = ServiceExt::<http::Request<axum::body::Body>>::ready(&mut app)
                .await
                .unwrap();
            let response = ready.call(request).await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
        }
        out[slot] = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    }
    out
}

fn print_in_process([bare_us, first_us, replay_us]: [f64; 3]) {
    println!("In process (the router called directly, no network), µs per request:");
    println!();
    println!("| workload | µs/request | added |");
    println!("|---|---|---|");
    println!("| bare handler | {bare_us:.2} | |");
    let added = first_us - bare_us;
    println!("| first execution (layer) | {first_us:.2} | {added:+.2} |");
    let added = replay_us - bare_us;
    println!("| replay (layer) | {replay_us:.2} | {added:+.2} |");
    println!();
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

/// What one workload measured over all its rounds.
#[derive(Default)]
struct Measured {
    /// Requests in each round.
    counts: Vec<u64>,
    /// CPU seconds over all rounds.
    cpu: f64,
    /// Every request's latency, µs.
    latencies: Vec<f64>,
}

impl Measured {
    fn requests(&self) -> f64 {
        self.counts.iter().sum::<u64>() as f64
    }

    fn cpu_us_per_request(&self) -> f64 {
        self.cpu * 1e6 / self.requests()
    }

    /// The median over rounds of this workload's requests over `other`'s.
    fn median_ratio(&self, other: &Measured) -> f64 {
        let mut ratios: Vec<f64> = (self.counts.iter().zip(&other.counts))
            .map(|(&mine, &theirs)| mine as f64 / theirs as f64)
            .collect();
        ratios.sort_by(f64::total_cmp);
        percentile(&ratios, 0.5)
    }

    /// p50 and p99 latency, µs.
    fn p50_p99(&self) -> (f64, f64) {
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        (percentile(&sorted, 0.50), percentile(&sorted, 0.99))
    }
}

/// Runs the loopback workloads in `rounds` interleaved rounds.
async fn loopback(tasks: usize, rounds: usize, seconds: f64) -> Vec<(Workload, Measured)> {
    let bare = serve(charges()).await;
    let layered = serve(charges().layer(IdempotencyLayer::unscoped(memory_store()))).await;
    let no_store = serve(charges().layer(IdempotencyLayer::unscoped(KeepsNothing))).await;
    let no_work = serve(Router::new().route("/charges", post(charge_doing_no_work))).await;
    let address = |workload| match workload {
        Workload::Bare => bare,
        Workload::FirstNoStore => no_store,
        Workload::BareNoWork => no_work,
        Workload::First | Workload::Replay | Workload::ReplayMany => layered,
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let next_key = Arc::new(AtomicU64::new(0));
    // Complete the replayed keys, then warm every server up.
    send(&client, layered, &Workload::Replay.key(0)).await;
    for i in 0..REPLAYED_KEYS {
        send(&client, layered, &Workload::ReplayMany.key(i)).await;
    }
    let workloads: Vec<Workload> = Workload::ALL.into_iter().filter(|&w| selected(w)).collect();
    for &workload in &workloads {
        round(&client, address(workload), workload, tasks, 0.5, &next_key).await;
    }
    let mut measured: Vec<(Workload, Measured)> = workloads
        .iter()
        .map(|&w| (w, Measured::default()))
        .collect();
    for round_index in 0..rounds {
        // Rotate the order, so no workload always follows another.
        for step in 0..measured.len() {
            let i = (step + round_index) % measured.len();
            let (workload, measured) = &mut measured[i];
            let cpu_before = cpu_seconds();
            let latencies = round(
                &client,
                address(*workload),
                *workload,
                tasks,
                seconds,
                &next_key,
            )
            .await;
            if let (Some(after), Some(before)) = (cpu_seconds(), cpu_before) {
                measured.cpu += after - before;
            }
            measured.counts.push(latencies.len() as u64);
            measured.latencies.extend(latencies);
        }
    }
    measured
}

fn print_loopback(measured: &[(Workload, Measured)], tasks: usize, rounds: usize, seconds: f64) {
    let total = rounds as f64 * seconds;
    println!(
        "{tasks} client tasks, 2 server worker threads, {total} s per workload in {rounds} interleaved rounds"
    );
    println!();
    println!(
        "CPU µs/request: the process's CPU time (client, server and kernel work on its behalf) over its requests."
    );
    println!();
    println!(
        "| workload | requests/s | vs bare | vs bare, median of rounds | CPU µs/request | p50 µs | p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|");
    let find = |wanted| measured.iter().find(|(w, _)| *w == wanted).map(|(_, m)| m);
    for (workload, m) in measured {
        let rps = m.requests() / total;
        let cpu = m.cpu_us_per_request();
        let (p50, p99) = m.p50_p99();
        let name = workload.name();
        let Some(bare) = find(Workload::Bare) else {
            println!("| {name} | {rps:.0} | | | {cpu:.1} | {p50:.0} | {p99:.0} |");
            continue;
        };
        let ratio = m.requests() / bare.requests();
        let median = m.median_ratio(bare);
        let added_cpu = cpu - bare.cpu_us_per_request();
        let (bare_p50, bare_p99) = bare.p50_p99();
        let (added_p50, added_p99) = (p50 - bare_p50, p99 - bare_p99);
        println!(
            "| {name} | {rps:.0} | {ratio:.2}× | {median:.2}× | {cpu:.1} ({added_cpu:+.1}) | {p50:.0} ({added_p50:+.0}) | {p99:.0} ({added_p99:+.0}) |"
        );
    }
    if let (Some(replay), Some(no_work)) = (find(Workload::Replay), find(Workload::BareNoWork)) {
        let ratio = replay.requests() / no_work.requests();
        let median = replay.median_ratio(no_work);
        println!();
        println!(
            "replay (layer), one key, vs the handler that does no work: {ratio:.2}× (median of rounds {median:.2}×)"
        );
    }
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
            print_in_process(in_process(200_000).await);
        }
        if std::env::var_os("BENCH_IN_PROCESS_ONLY").is_none() {
            let measured = loopback(tasks, rounds, seconds).await;
            print_loopback(&measured, tasks, rounds, seconds);
        }
    });
}
