//! A test driver, not an application: one OS process of the multi-process
//! exactly-once test (`tests/multi_process.rs`). It runs `keys` logical
//! requests against a `RedisStore`, each from `duplicates` concurrent tasks
//! (the duplicates a load balancer spreads), with the retries a client
//! makes: claims resent after a "lost" answer, completes resent, releases
//! before running, waits on claims in progress. Each execution is recorded
//! as `INCR <prefix>:exec:<key>` (a separate key), so the test can count
//! executions across processes.
//!
//! `idemcache-redis-worker <redis-url> <prefix> <keys> <duplicates> <seed>`
//!
//! Prints `executed=N resent_claims=N resent_completes=N waits=N errors=N`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idemcache::Fingerprint;
use idemcache::store::{ClaimId, ClaimOutcome, Peek, Store, WaitPolicy, wait_for_outcome};
use idemcache_redis::{Raw, RedisStore};
use redis::AsyncCommands;

#[derive(Default)]
struct Counts {
    executed: AtomicU64,
    resent_claims: AtomicU64,
    resent_completes: AtomicU64,
    waits: AtomicU64,
    errors: AtomicU64,
    released: AtomicU64,
}

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn usage() -> ! {
    eprintln!("usage: idemcache-redis-worker <redis-url> <prefix> <keys> <duplicates> <seed>");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 5 {
        usage();
    }
    let url = args[0].clone();
    let prefix = args[1].clone();
    let keys: u64 = args[2].parse().unwrap_or_else(|_| usage());
    let duplicates: u64 = args[3].parse().unwrap_or_else(|_| usage());
    let seed: u64 = args[4].parse().unwrap_or_else(|_| usage());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let counts = runtime.block_on(run(url, prefix, keys, duplicates, seed));
    println!(
        "executed={} resent_claims={} resent_completes={} waits={} errors={} released={}",
        counts.executed.load(Ordering::Relaxed),
        counts.resent_claims.load(Ordering::Relaxed),
        counts.resent_completes.load(Ordering::Relaxed),
        counts.waits.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        counts.released.load(Ordering::Relaxed),
    );
}

async fn run(url: String, prefix: String, keys: u64, duplicates: u64, seed: u64) -> Counts {
    let store: RedisStore<String, Raw> = RedisStore::builder(url.clone())
        .prefix(prefix.clone())
        .lease(Duration::from_secs(20))
        .response_timeout(Duration::from_secs(2))
        .connect_with_codec(Raw)
        .await
        .expect("connect the store");
    let client = redis::Client::open(url).expect("a redis URL");
    let side_effects = client
        .get_connection_manager()
        .await
        .expect("connect for side effects");
    let counts = Arc::new(Counts::default());
    // Both processes walk the keys in the same order, a window at a time,
    // so most keys are contended across processes as well as within one.
    let window = 64;
    let mut next = 0;
    while next < keys {
        let mut tasks = tokio::task::JoinSet::new();
        for key in next..(next + window).min(keys) {
            for copy in 0..duplicates {
                let store = store.clone();
                let side_effects = side_effects.clone();
                let counts = Arc::clone(&counts);
                let prefix = prefix.clone();
                let rng = Rng((seed.wrapping_mul(1_000_003) ^ (key << 8) ^ copy) | 1);
                tasks.spawn(async move {
                    request(&store, side_effects, &prefix, key, rng, &counts).await;
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a request task panicked");
        }
        next += window;
    }
    Arc::try_unwrap(counts).unwrap_or_else(|_| unreachable!("all tasks joined"))
}

/// One client's request for `key`: retried until it sees the key's result.
async fn request(
    store: &RedisStore<String, Raw>,
    mut side_effects: redis::aio::ConnectionManager,
    prefix: &str,
    key: u64,
    mut rng: Rng,
    counts: &Counts,
) {
    let name = format!("k-{key}");
    let fingerprint = Some(Fingerprint::from_bytes([(key % 251) as u8; 16]));
    for _attempt in 0..200 {
        let id = ClaimId::random();
        let outcome = match store.claim(&name, fingerprint, id).await {
            Ok(outcome) => outcome,
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        match outcome {
            ClaimOutcome::Acquired(claim) => {
                if rng.chance(5) {
                    // Nothing happened yet: give the key back.
                    store
                        .release(&name, claim.token)
                        .await
                        .expect("release by the holder");
                    counts.released.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if rng.chance(10) {
                    // The claim's answer was "lost": resend it with its id.
                    match store.claim(&name, fingerprint, id).await {
                        Ok(ClaimOutcome::Acquired(again)) => {
                            assert!(again.resent && again.token == claim.token, "{again:?}");
                            counts.resent_claims.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("a resent claim must get its acquisition: {other:?}"),
                    }
                }
                // The side effect, recorded where every process counts it.
                let _: i64 = side_effects
                    .incr(format!("{prefix}:exec:{name}"), 1)
                    .await
                    .expect("record the execution");
                counts.executed.fetch_add(1, Ordering::Relaxed);
                let result = format!("done {name}");
                let mut sent = 0;
                loop {
                    match store
                        .complete(&name, claim.token, result.clone(), None)
                        .await
                    {
                        Ok(_) if sent == 0 && rng.chance(10) => {
                            // The answer was "lost": resend the same complete.
                            counts.resent_completes.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => return,
                        Err(err) if err.is_unavailable() && sent < 50 => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => panic!("complete of {name} failed: {err}"),
                    }
                    sent += 1;
                }
            }
            ClaimOutcome::Completed(replay) => {
                assert_eq!(replay.value(), &format!("done {name}"));
                return;
            }
            ClaimOutcome::InProgress(_) => {
                counts.waits.fetch_add(1, Ordering::Relaxed);
                let policy = WaitPolicy {
                    timeout: Duration::from_secs(5),
                    ..WaitPolicy::default()
                };
                match wait_for_outcome(store, &name, fingerprint, policy, tokio::time::sleep).await
                {
                    Ok(Peek::Completed(_)) => return,
                    _ => continue,
                }
            }
            other => panic!("unexpected claim outcome for {name}: {other:?}"),
        }
    }
    panic!("{name}: no result after 200 attempts");
}
