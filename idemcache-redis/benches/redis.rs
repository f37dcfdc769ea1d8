//! Throughput against a local Redis the bench starts (loopback, no
//! persistence): claim+complete pairs/s (two round trips), replays/s (one,
//! or none from the local tier), and the raw `SET NX PX` baseline (one
//! round trip, no script), each from 1 and 2 client tasks sharing the
//! store's one multiplexed connection.
//!
//! `cargo bench -p idemcache-redis --bench redis`
//!
//! Criterion measures each operation in turn, a few seconds each; on a
//! machine whose loopback latency drifts (a shared VM), the ratios between
//! them drift too. So the bench ends with an `INTERLEAVED` line: one
//! claim+complete pair, one `SET NX PX` and one replay per iteration,
//! 10 000 iterations from one task, so that all three see the same
//! conditions.
//!
//! Only `cargo bench` does real work: run as a test (`cargo test
//! --all-targets`, no `--bench` argument) it returns at once.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use idemcache::store::{ClaimId, ClaimOutcome, Store};
use idemcache_redis::{Raw, RedisStore};

type BenchStore = RedisStore<Vec<u8>, Raw>;

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

fn fresh_key() -> String {
    format!("bench-{}", NEXT_KEY.fetch_add(1, Ordering::Relaxed))
}

/// The 200-byte value every bench stores.
fn value() -> Vec<u8> {
    vec![b'x'; 200]
}

/// Runs `iters` calls of `op`, spread over `tasks` concurrent tasks; the
/// wall time of all.
fn spread<F, Fut>(runtime: &tokio::runtime::Runtime, iters: u64, tasks: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    runtime.block_on(async {
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for task in 0..tasks {
            let op = Arc::clone(&op);
            let share = iters / tasks + u64::from(task < iters % tasks);
            set.spawn(async move {
                for _ in 0..share {
                    op().await;
                }
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("a bench task");
        }
        started.elapsed()
    })
}

async fn claim_complete(store: &BenchStore) {
    let key = fresh_key();
    let ClaimOutcome::Acquired(claim) = store
        .claim(&key, None, ClaimId::random())
        .await
        .expect("claim")
    else {
        panic!("a fresh key is acquired");
    };
    store
        .complete(&key, claim.token, value(), None)
        .await
        .expect("complete");
}

async fn replay(store: &BenchStore, key: &String) {
    match store
        .claim(key, None, ClaimId::random())
        .await
        .expect("claim")
    {
        ClaimOutcome::Completed(_) => {}
        other => panic!("expected a replay: {other:?}"),
    }
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "redis bench: skipped (run it with `cargo bench -p idemcache-redis --bench redis`)"
        );
        return;
    }
    if !common::redis_available() {
        return;
    }
    let server = common::RedisServer::start(&[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let store: BenchStore = runtime.block_on(async {
        RedisStore::builder(server.url())
            .prefix("bench")
            .retention(Duration::from_secs(120))
            .connect_with_codec(Raw)
            .await
            .expect("connect")
    });
    let local: BenchStore = runtime.block_on(async {
        RedisStore::builder(server.url())
            .prefix("bench")
            .retention(Duration::from_secs(120))
            .local_tier(Duration::from_secs(5), 10_000)
            .connect_with_codec(Raw)
            .await
            .expect("connect")
    });
    let raw = runtime.block_on(async {
        redis::Client::open(server.url())
            .expect("url")
            .get_connection_manager()
            .await
            .expect("connect")
    });
    let replayed = "bench-replayed".to_string();
    runtime.block_on(async {
        let ClaimOutcome::Acquired(claim) = store
            .claim(&replayed, None, ClaimId::random())
            .await
            .expect("claim")
        else {
            panic!("a fresh key");
        };
        store
            .complete(&replayed, claim.token, value(), None)
            .await
            .expect("complete");
    });

    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    for tasks in [1u64, 2] {
        let mut group = criterion.benchmark_group(format!("redis/{tasks}-task"));
        group.throughput(Throughput::Elements(1));
        {
            let store = store.clone();
            group.bench_function("claim+complete", |b| {
                b.iter_custom(|iters| {
                    let store = store.clone();
                    spread(&runtime, iters, tasks, move || {
                        let store = store.clone();
                        async move { claim_complete(&store).await }
                    })
                })
            });
        }
        {
            let (store, key) = (store.clone(), replayed.clone());
            group.bench_function("replay", |b| {
                b.iter_custom(|iters| {
                    let (store, key) = (store.clone(), key.clone());
                    spread(&runtime, iters, tasks, move || {
                        let (store, key) = (store.clone(), key.clone());
                        async move { replay(&store, &key).await }
                    })
                })
            });
        }
        {
            let (local, key) = (local.clone(), replayed.clone());
            group.bench_function("replay (local tier)", |b| {
                b.iter_custom(|iters| {
                    let (local, key) = (local.clone(), key.clone());
                    spread(&runtime, iters, tasks, move || {
                        let (local, key) = (local.clone(), key.clone());
                        async move { replay(&local, &key).await }
                    })
                })
            });
        }
        {
            let raw = raw.clone();
            group.bench_function("SET NX PX (baseline)", |b| {
                b.iter_custom(|iters| {
                    let raw = raw.clone();
                    spread(&runtime, iters, tasks, move || {
                        let mut raw = raw.clone();
                        async move {
                            let _: Option<String> = redis::cmd("SET")
                                .arg(fresh_key())
                                .arg(value())
                                .arg("NX")
                                .arg("PX")
                                .arg(120_000)
                                .query_async(&mut raw)
                                .await
                                .expect("SET NX PX");
                        }
                    })
                })
            });
        }
        group.finish();
    }
    criterion.final_summary();
    interleaved(&runtime, &store, &raw, &replayed);
}

/// Pairs, `SET NX PX` and replays measured in turn within each iteration:
/// ratios that the drift of a shared machine's latency does not skew.
fn interleaved(
    runtime: &tokio::runtime::Runtime,
    store: &BenchStore,
    raw: &redis::aio::ConnectionManager,
    replayed: &String,
) {
    const WARM_UP: u64 = 1_000;
    const ITERATIONS: u64 = 10_000;
    let (pairs, sets, replays) = runtime.block_on(async {
        let (mut pairs, mut sets, mut replays) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for n in 0..WARM_UP + ITERATIONS {
            let started = Instant::now();
            claim_complete(store).await;
            let paired = Instant::now();
            let _: Option<String> = redis::cmd("SET")
                .arg(fresh_key())
                .arg(value())
                .arg("NX")
                .arg("PX")
                .arg(120_000)
                .query_async(&mut raw.clone())
                .await
                .expect("SET NX PX");
            let set = Instant::now();
            replay(store, replayed).await;
            if n >= WARM_UP {
                pairs += paired - started;
                sets += set - paired;
                replays += set.elapsed();
            }
        }
        (pairs, sets, replays)
    });
    let per = |total: Duration| total.as_secs_f64() * 1e6 / ITERATIONS as f64;
    println!(
        "INTERLEAVED (1 task, {ITERATIONS} iterations): pair {:.1} µs, SET NX PX {:.1} µs, replay {:.1} µs; pairs/s = {:.3}× SET NX PX/s, replays/s = {:.3}×",
        per(pairs),
        per(sets),
        per(replays),
        sets.as_secs_f64() / pairs.as_secs_f64(),
        sets.as_secs_f64() / replays.as_secs_f64(),
    );
}
