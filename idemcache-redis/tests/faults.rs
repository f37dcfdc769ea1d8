//! Faults, against real servers: Redis paused past the response timeout,
//! killed and restarted (without and with AOF), out of memory, connections
//! killed mid-operation; and a failover measured (not asserted).
//!
//! Each test prints a `FAULT` line (what the client saw, executions lost
//! or duplicated): run with `-- --nocapture` to read them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RedisServer, redis_available, unique_prefix};
use idemcache::Fingerprint;
use idemcache::store::{ClaimId, ClaimOutcome, Store, StoreError};
use idemcache_redis::{
    ConnectError, Durability, EvictionPolicyCheck, Raw, RedisStore, RedisStoreBuilder,
};

type TestStore = RedisStore<String, Raw>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn builder(server: &RedisServer, prefix: &str) -> RedisStoreBuilder {
    RedisStore::builder(server.url())
        .prefix(prefix)
        .lease(Duration::from_secs(10))
        .response_timeout(Duration::from_millis(300))
}

async fn connect(server: &RedisServer, prefix: &str) -> TestStore {
    builder(server, prefix)
        .connect_with_codec(Raw)
        .await
        .expect("connect")
}

fn fp() -> Option<Fingerprint> {
    Some(Fingerprint::from_bytes([9; 16]))
}

async fn acquire(store: &TestStore, key: &str) -> u64 {
    match store.claim(&key.to_string(), fp(), ClaimId::random()).await {
        Ok(ClaimOutcome::Acquired(claim)) => claim.token,
        other => panic!("{key}: expected an acquisition, got {other:?}"),
    }
}

/// Claims, "executes" and completes `n` keys `{name}-{i}`.
async fn complete_keys(store: &TestStore, name: &str, n: usize) {
    for i in 0..n {
        let key = format!("{name}-{i}");
        let token = acquire(store, &key).await;
        store
            .complete(&key, token, format!("result {i}"), None)
            .await
            .expect("complete");
    }
}

/// Retries `claim` until Redis answers (after a restart), bounded.
async fn until_answered(store: &TestStore, key: &str) -> ClaimOutcome<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.claim(&key.to_string(), fp(), ClaimId::random()).await {
            Ok(outcome) => return outcome,
            Err(err) => {
                assert!(
                    err.is_unavailable(),
                    "a restart is seen as unavailable: {err}"
                );
                assert!(
                    Instant::now() < deadline,
                    "no answer 10 s after the restart: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn kind(result: &Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Ok(value) => {
            let value = format!("{value:?}");
            if value.contains("resent: true") {
                "Acquired (resent: true, same token)".into()
            } else {
                value
                    .split([' ', '('])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }
        }
        Err(StoreError::Timeout { after }) => format!("Timeout after {after:?}"),
        Err(StoreError::Unavailable { .. }) => "Unavailable".into(),
        Err(other) => format!("{other:?}"),
    }
}

/// SIGSTOP past the response timeout: the client sees `Timeout` at once
/// (bounded by the response timeout, not by the pause); the paused
/// commands run when Redis resumes, and resending them (the claim with its
/// id, the complete with its token) gets the same acquisition and
/// succeeds: each key executes once.
#[test]
fn a_paused_server_times_out_and_resent_operations_run_once() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start(&[]);
    runtime().block_on(async {
        let store = connect(&server, &unique_prefix("paused")).await;
        let (a, b) = ("paused-a".to_string(), "paused-b".to_string());
        let mut executions: HashMap<&str, u32> = HashMap::new();

        let token_a = acquire(&store, &a).await;
        *executions.entry("a").or_default() += 1;

        server.signal("STOP");
        let started = Instant::now();
        let complete = store.complete(&a, token_a, "A".into(), None).await;
        let id_b = ClaimId::random();
        let claim = store.claim(&b, fp(), id_b).await;
        let waited = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.signal("CONT");

        assert!(
            matches!(complete, Err(StoreError::Timeout { .. })),
            "{complete:?}"
        );
        assert!(matches!(claim, Err(StoreError::Timeout { .. })), "{claim:?}");
        assert!(
            waited < Duration::from_millis(1500),
            "two calls are bounded by the response timeout, not by the pause: {waited:?}"
        );

        // Resent after the pause.
        let resent_complete = store.complete(&a, token_a, "A".into(), None).await;
        assert!(
            matches!(resent_complete, Ok(ref c) if c.is_stored()),
            "{resent_complete:?}"
        );
        let resent_claim = store.claim(&b, fp(), id_b).await;
        let token_b = match &resent_claim {
            Ok(ClaimOutcome::Acquired(claim)) => claim.token,
            other => panic!("a resent claim gets its acquisition: {other:?}"),
        };
        *executions.entry("b").or_default() += 1;
        store
            .complete(&b, token_b, "B".into(), None)
            .await
            .expect("complete b");

        for key in [&a, &b] {
            let again = store.claim(key, fp(), ClaimId::random()).await;
            assert!(matches!(again, Ok(ClaimOutcome::Completed(_))), "{again:?}");
        }
        assert_eq!(executions["a"], 1);
        assert_eq!(executions["b"], 1);
        eprintln!(
            "FAULT paused (SIGSTOP 800 ms > 300 ms timeout): complete -> {}, claim -> {}; after SIGCONT: resent complete -> {}, resent claim -> {}; executions duplicated: 0",
            kind(&complete),
            kind(&claim),
            kind(&resent_complete),
            kind(&resent_claim),
        );
    });
}

/// SIGKILL without persistence: while down, every call is `Unavailable`;
/// after the restart the connection manager reconnects by itself, and
/// every record is gone (retries would run again: the documented loss).
#[test]
fn a_killed_server_without_persistence_loses_its_records() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start(&[]);
    runtime().block_on(async {
        let prefix = unique_prefix("killed");
        let store = connect(&server, &prefix).await;
        complete_keys(&store, "k", 100).await;
        server.kill();
        let down = store.claim(&"k-0".to_string(), fp(), ClaimId::random()).await;
        assert!(
            matches!(&down, Err(err) if err.is_unavailable()),
            "{down:?}"
        );
        server.restart();
        let mut lost = 0;
        for i in 0..100 {
            if let ClaimOutcome::Acquired(_) = until_answered(&store, &format!("k-{i}")).await {
                lost += 1;
            }
        }
        assert_eq!(lost, 100, "a server without persistence restarts empty");
        eprintln!(
            "FAULT killed, no persistence: while down -> {}; after restart: {lost} of 100 completed records lost (their retries would execute again)",
            kind(&down)
        );
    });
}

/// SIGKILL with `appendonly yes, appendfsync always`: every completed
/// record and every claim in progress survives the restart (Redis fsyncs
/// before it answers): no key executes twice.
#[test]
fn a_killed_server_with_aof_always_keeps_every_record() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    runtime().block_on(async {
        let prefix = unique_prefix("aof");
        let store = connect(&server, &prefix).await;
        complete_keys(&store, "k", 100).await;
        let running = "running".to_string();
        let token = acquire(&store, &running).await;
        server.kill();
        server.restart();
        let mut lost = 0;
        for i in 0..100 {
            match until_answered(&store, &format!("k-{i}")).await {
                ClaimOutcome::Completed(replay) => assert_eq!(replay.value(), &format!("result {i}")),
                other => {
                    lost += 1;
                    eprintln!("k-{i}: {other:?}");
                }
            }
        }
        let seen = until_answered(&store, &running).await;
        assert!(
            matches!(seen, ClaimOutcome::InProgress(ref in_flight) if in_flight.token == token),
            "the claim in progress survives: {seen:?}"
        );
        store
            .complete(&running, token, "late".into(), None)
            .await
            .expect("the holder completes after the restart");
        assert_eq!(lost, 0, "appendfsync always keeps every acknowledged write");
        eprintln!(
            "FAULT killed, AOF appendfsync always: 0 of 100 completed records lost; the claim in progress kept its token and completed; executions duplicated: 0"
        );
    });
}

/// SIGKILL with `appendfsync everysec`, right after the writes: a
/// measurement of what the last second loses, not a guarantee.
#[test]
fn a_killed_server_with_aof_everysec_measurement() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "everysec"]);
    runtime().block_on(async {
        let store = connect(&server, &unique_prefix("everysec")).await;
        complete_keys(&store, "k", 200).await;
        server.kill();
        server.restart();
        let mut lost = 0;
        for i in 0..200 {
            if !matches!(
                until_answered(&store, &format!("k-{i}")).await,
                ClaimOutcome::Completed(_)
            ) {
                lost += 1;
            }
        }
        eprintln!(
            "FAULT (measurement) killed right after the writes, AOF appendfsync everysec: {lost} of 200 completed records lost"
        );
    });
}

/// `maxmemory` reached (noeviction): new claims answer `Full` (503), while
/// completed records are still replayed, a claim in progress is still in
/// progress, an admitted claim completes (`allow-oom`), and a resent claim
/// still finds its acquisition. Memory stays near the limit.
#[test]
fn out_of_memory_refuses_new_claims_and_keeps_answering_existing_ones() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start(&["--maxmemory-policy", "noeviction"]);
    runtime().block_on(async {
        let store = connect(&server, &unique_prefix("oom")).await;
        complete_keys(&store, "done", 1).await;
        let done = "done-0".to_string();
        let running = "running".to_string();
        let running_token = acquire(&store, &running).await;

        let used: u64 = server
            .info("memory", "used_memory")
            .and_then(|v| v.parse().ok())
            .expect("used_memory");
        let limit = used + 256 * 1024;
        server.cli(&["CONFIG", "SET", "maxmemory", &limit.to_string()]);

        let mut admitted = 0u32;
        let mut last = None;
        let mut full_at = None;
        for i in 0..50_000 {
            let key = format!("filler-{i}");
            let id = ClaimId::random();
            match store.claim(&key, fp(), id).await.expect("a claim answers") {
                ClaimOutcome::Acquired(claim) => {
                    admitted += 1;
                    last = Some((key, id, claim.token));
                }
                ClaimOutcome::Full => {
                    full_at = Some(i);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(full_at.is_some(), "claims must hit the limit");
        let peak: u64 = server
            .info("memory", "used_memory")
            .and_then(|v| v.parse().ok())
            .expect("used_memory");
        assert!(
            peak < limit + 64 * 1024,
            "scripts with a shebang respect maxmemory: used {peak}, limit {limit}"
        );

        let replay = store.claim(&done, fp(), ClaimId::random()).await;
        assert!(matches!(replay, Ok(ClaimOutcome::Completed(_))), "{replay:?}");
        let busy = store.claim(&running, fp(), ClaimId::random()).await;
        assert!(matches!(busy, Ok(ClaimOutcome::InProgress(_))), "{busy:?}");
        let (last_key, last_id, last_token) = last.expect("some claims were admitted");
        let resent = store.claim(&last_key, fp(), last_id).await;
        assert!(
            matches!(resent, Ok(ClaimOutcome::Acquired(ref a)) if a.resent && a.token == last_token),
            "{resent:?}"
        );
        let completed = store
            .complete(&running, running_token, "finished under OOM".into(), None)
            .await;
        assert!(matches!(completed, Ok(ref c) if c.is_stored()), "{completed:?}");
        let replay = store.claim(&running, fp(), ClaimId::random()).await;
        assert!(matches!(replay, Ok(ClaimOutcome::Completed(_))), "{replay:?}");
        eprintln!(
            "FAULT maxmemory (+256 KiB, noeviction): {admitted} claims admitted, then claim -> Full; used_memory {peak} <= limit {limit} + slack; replay -> Completed, other claim -> InProgress, resent claim -> Acquired(resent), admitted complete -> Stored; executions lost/duplicated: 0"
        );
    });
}

/// A server that may evict keys is refused at connect (the default), or
/// accepted with a warning when asked.
#[test]
fn an_evicting_server_is_refused_at_connect() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start(&["--maxmemory-policy", "allkeys-lru"]);
    runtime().block_on(async {
        let refused: Result<TestStore, _> =
            builder(&server, "evicting").connect_with_codec(Raw).await;
        match refused {
            Err(ConnectError::EvictionPolicy { ref policy, .. }) => {
                assert_eq!(policy, "allkeys-lru")
            }
            other => panic!("expected EvictionPolicy, got {other:?}"),
        }
        let warned: TestStore = builder(&server, "evicting")
            .eviction_policy_check(EvictionPolicyCheck::Warn)
            .connect_with_codec(Raw)
            .await
            .expect("Warn connects");
        assert_eq!(warned.eviction_policies()[0].1, "allkeys-lru");
    });
}

/// `Durability::Aof` needs WAITAOF (Redis 7.2): on an older server the
/// store refuses to connect with a typed error naming the version.
#[test]
fn waitaof_is_checked_at_connect() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start(&["--appendonly", "yes"]);
    let version = server.info("server", "redis_version").unwrap_or_default();
    runtime().block_on(async {
        let result: Result<TestStore, _> = builder(&server, "waitaof")
            .durability(Durability::Aof {
                local: 1,
                replicas: 0,
                timeout: Duration::from_millis(100),
            })
            .connect_with_codec(Raw)
            .await;
        let major_minor: Vec<u32> = version
            .split('.')
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        if major_minor < vec![7, 2] {
            match result {
                Err(ConnectError::Unsupported { ref reason, .. }) => {
                    assert!(
                        reason.contains("7.2") && reason.contains(&version),
                        "{reason}"
                    );
                }
                other => panic!("expected Unsupported on {version}, got {other:?}"),
            }
        } else {
            let store = result.expect("WAITAOF is supported");
            complete_keys(&store, "k", 3).await;
        }
    });
}

/// Connections killed (`CLIENT KILL TYPE normal`) every few milliseconds
/// while 400 keys are claimed and completed by two tasks each: operations
/// fail with `Unavailable`, the tasks resend (the claim with its id, the
/// complete with its token), and every key executes exactly once.
#[test]
fn killed_connections_never_execute_a_key_twice() {
    if !redis_available() {
        return;
    }
    const KEYS: usize = 400;
    let server = RedisServer::start(&[]);
    let url = server.url();
    runtime().block_on(async {
        let store = Arc::new(
            builder(&server, &unique_prefix("client-kill"))
                .response_timeout(Duration::from_secs(1))
                // Longer than any run: on a loaded machine a holder can
                // retry its complete through the kills for over 10 s, and
                // a lapsed lease is (rightly) taken over and fenced, which
                // is not what this test is about.
                .lease(Duration::from_secs(120))
                .connect_with_codec(Raw)
                .await
                .expect("connect"),
        );
        let executions: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let kills = Arc::new(AtomicU64::new(0));

        let killer = {
            let (stop, kills) = (Arc::clone(&stop), Arc::clone(&kills));
            tokio::spawn(async move {
                let client = redis::Client::open(url).expect("url");
                let mut admin = client.get_multiplexed_async_connection().await.expect("admin");
                while !stop.load(Ordering::Relaxed) {
                    let killed: redis::RedisResult<i64> = redis::cmd("CLIENT")
                        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                        .query_async(&mut admin)
                        .await;
                    if let Ok(n) = killed {
                        kills.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        };

        let mut tasks = tokio::task::JoinSet::new();
        for key in 0..KEYS {
            for _copy in 0..2 {
                let (store, executions, errors) =
                    (Arc::clone(&store), Arc::clone(&executions), Arc::clone(&errors));
                tasks.spawn(async move {
                    let name = format!("k-{key}");
                    run_once(&store, &name, &executions[key], &errors).await;
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a task panicked");
        }
        stop.store(true, Ordering::Relaxed);
        killer.await.expect("the killer");

        let twice: Vec<usize> = (0..KEYS)
            .filter(|&k| executions[k].load(Ordering::Relaxed) != 1)
            .collect();
        assert!(twice.is_empty(), "keys not executed exactly once: {twice:?}");
        eprintln!(
            "FAULT connections killed every ~3 ms ({} kills): {} operations answered Unavailable/Timeout and were resent; {KEYS} keys executed exactly once each",
            kills.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        );
    });
}

/// A request retried through transport errors until it sees the result:
/// the claim resent with its id, the complete with its token.
async fn run_once(store: &TestStore, name: &String, executions: &AtomicU64, errors: &AtomicU64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{name}: no result within 30 s");
        let id = ClaimId::random();
        let outcome = loop {
            match store.claim(name, fp(), id).await {
                Ok(outcome) => break outcome,
                Err(err) => {
                    assert!(err.is_unavailable(), "{err}");
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        match outcome {
            ClaimOutcome::Acquired(claim) => {
                executions.fetch_add(1, Ordering::Relaxed);
                loop {
                    match store.complete(name, claim.token, "ok".into(), None).await {
                        Ok(_) => return,
                        Err(err) => {
                            assert!(err.is_unavailable(), "{name}: {err}");
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                }
            }
            ClaimOutcome::Completed(_) => return,
            ClaimOutcome::InProgress(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            other => panic!("{other:?}"),
        }
    }
}

/// A primary with one replica; 16 tasks claim and complete records, and
/// the primary is SIGKILLed in the middle of the burst; the replica is
/// promoted (`REPLICAOF NO ONE`): how many records whose `complete` had
/// answered Ok did the promoted replica lose? Without WAIT (asynchronous
/// replication) and with `Durability::Replicas` (WAIT 1). A measurement,
/// printed; not a pass/fail guarantee.
#[test]
fn failover_to_a_replica_measurement() {
    if !redis_available() {
        return;
    }
    for wait in [false, true] {
        // No 5 s wait before the first (diskless) sync.
        let mut primary = RedisServer::start(&["--repl-diskless-sync-delay", "0"]);
        let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while replica.info("replication", "master_link_status").as_deref() != Some("up") {
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
        let prefix = unique_prefix("failover");
        let acknowledged = runtime().block_on(async {
            let mut builder = builder(&primary, &prefix).response_timeout(Duration::from_secs(1));
            if wait {
                builder = builder.durability(Durability::Replicas {
                    replicas: 1,
                    timeout: Duration::from_millis(500),
                });
            }
            let store: Arc<TestStore> =
                Arc::new(builder.connect_with_codec(Raw).await.expect("connect"));
            let mut tasks = tokio::task::JoinSet::new();
            for task in 0..16 {
                let store = Arc::clone(&store);
                tasks.spawn(async move {
                    let mut acknowledged = Vec::new();
                    for i in 0.. {
                        let key = format!("k-{task}-{i}");
                        let Ok(ClaimOutcome::Acquired(claim)) =
                            store.claim(&key, fp(), ClaimId::random()).await
                        else {
                            break;
                        };
                        match store.complete(&key, claim.token, "ok".into(), None).await {
                            Ok(_) => acknowledged.push(key),
                            Err(_) => break,
                        }
                    }
                    acknowledged
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            primary.signal("KILL");
            let mut acknowledged = Vec::new();
            while let Some(done) = tasks.join_next().await {
                acknowledged.extend(done.expect("a task"));
            }
            acknowledged
        });
        primary.kill();
        replica.cli(&["REPLICAOF", "NO", "ONE"]);
        let lost = runtime().block_on(async {
            let promoted = connect(&replica, &prefix).await;
            let mut lost = 0;
            for key in &acknowledged {
                let seen = promoted
                    .claim(key, fp(), ClaimId::random())
                    .await
                    .expect("the promoted replica answers");
                if !matches!(seen, ClaimOutcome::Completed(_)) {
                    lost += 1;
                }
            }
            lost
        });
        eprintln!(
            "FAULT (measurement) failover, primary SIGKILLed mid-burst (16 tasks), replica promoted, {}: {lost} of {} acknowledged records lost (each a key that would execute again)",
            if wait {
                "Durability::Replicas { replicas: 1 } (WAIT)"
            } else {
                "asynchronous replication (no WAIT)"
            },
            acknowledged.len()
        );
    }
}
