//! Waiting across replicas, against a real server: duplicates waiting on
//! one key in one process share one poller (the local single flight), a
//! cancelled leader hands over, a local write wakes waiters at once.
//!
//! Run with `-- --nocapture` to read the `WAIT` lines (round trips against
//! polls).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{RedisServer, redis_available, unique_prefix};
use idemcache::Fingerprint;
use idemcache::store::{ClaimId, ClaimOutcome, Peek, Store, WaitPolicy, wait_for_outcome};
use idemcache_redis::{Raw, RedisStore};

type TestStore = RedisStore<String, Raw>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

async fn connect(server: &RedisServer, prefix: &str) -> TestStore {
    RedisStore::builder(server.url())
        .prefix(prefix)
        .lease(Duration::from_secs(30))
        .response_timeout(Duration::from_secs(2))
        .connect_with_codec(Raw)
        .await
        .expect("connect")
}

fn fp(n: u8) -> Option<Fingerprint> {
    Some(Fingerprint::from_bytes([n; 16]))
}

/// Successful `EVALSHA` calls since the last `CONFIG RESETSTAT` (a first
/// call of a script fails with `NOSCRIPT`, is counted among the calls,
/// and is sent again).
fn evalsha_calls(server: &RedisServer) -> u64 {
    let stat = server
        .info("commandstats", "cmdstat_evalsha")
        .unwrap_or_default();
    let count = |name: &str| -> u64 {
        stat.split(',')
            .find_map(|part| part.strip_prefix(name))
            .map_or(0, |n| n.parse().expect("a count"))
    };
    count("calls=") - count("failed_calls=")
}

async fn acquire(store: &TestStore, key: &str, fingerprint: Option<Fingerprint>) -> u64 {
    match store
        .claim(&key.to_string(), fingerprint, ClaimId::random())
        .await
    {
        Ok(ClaimOutcome::Acquired(claim)) => claim.token,
        other => panic!("{key}: expected an acquisition, got {other:?}"),
    }
}

/// 32 duplicates wait on one key on this replica while another replica
/// holds it for 1.5 s: the key is polled by one leader per backoff step,
/// not by every waiter, and every waiter gets the completed record.
#[test]
fn waiters_on_one_key_share_one_poller() {
    if !redis_available() {
        return;
    }
    const WAITERS: usize = 32;
    let server = RedisServer::start(&[]);
    runtime().block_on(async {
        let prefix = unique_prefix("wait");
        let holder = connect(&server, &prefix).await; // another replica
        let here = connect(&server, &prefix).await; // where duplicates wait
        let key = "order-1".to_string();
        let token = acquire(&holder, &key, fp(1)).await;
        // Loads the peek script, so that every later call is one EVALSHA.
        assert!(matches!(
            here.peek(&key, fp(1)).await,
            Ok(Peek::InProgress(_))
        ));
        server.cli(&["CONFIG", "RESETSTAT"]);
        let led_before = here.peek_round_trips();

        let polls = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..WAITERS {
            let (here, key, polls) = (here.clone(), key.clone(), Arc::clone(&polls));
            waiters.spawn(async move {
                let sleep = |pause| {
                    polls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause)
                };
                let seen = wait_for_outcome(&here, &key, fp(1), WaitPolicy::default(), sleep).await;
                polls.fetch_add(1, Ordering::Relaxed); // the last poll
                seen
            });
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        holder
            .complete(&key, token, "201 charged".to_string(), None)
            .await
            .expect("complete");
        let mut completed = 0;
        while let Some(seen) = waiters.join_next().await {
            match seen.expect("a waiter") {
                Ok(Peek::Completed(replay)) => {
                    assert_eq!(replay.value(), "201 charged");
                    completed += 1;
                }
                other => panic!("a waiter saw {other:?}"),
            }
        }
        let waited = started.elapsed();
        assert_eq!(completed, WAITERS, "every waiter gets the record");

        let polls = polls.load(Ordering::Relaxed);
        let led = here.peek_round_trips() - led_before;
        let peeks_on_server = evalsha_calls(&server) - 1; // the holder's complete
        println!(
            "WAIT {WAITERS} waiters, {waited:?}: {polls} polls by the waiters, {led} peek round trips ({peeks_on_server} EVALSHA on the server besides the complete)"
        );
        assert_eq!(
            peeks_on_server, led,
            "every round trip the store counts is one EVALSHA, and nothing else was sent"
        );
        assert!(
            polls >= WAITERS * 6,
            "each waiter polled through its backoff ({polls} polls)"
        );
        assert!(
            led * 8 <= polls as u64,
            "the key is polled by one leader, not by every waiter: {led} round trips for {polls} polls"
        );
    });
}

/// A holder completing on the same replica wakes its waiters at once,
/// whatever their backoff.
#[test]
fn a_local_complete_wakes_waiters_at_once() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start(&[]);
    runtime().block_on(async {
        let store = connect(&server, &unique_prefix("wake")).await;
        let key = "order-2".to_string();
        let token = acquire(&store, &key, fp(2)).await;
        let slow = WaitPolicy {
            timeout: Duration::from_secs(20),
            first_poll: Duration::from_secs(10),
            max_poll: Duration::from_secs(10),
        };
        let started = Instant::now();
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, key) = (store.clone(), key.clone());
            waiters.spawn(async move {
                wait_for_outcome(&store, &key, fp(2), slow, tokio::time::sleep).await
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        store
            .complete(&key, token, "done".to_string(), None)
            .await
            .expect("complete");
        while let Some(seen) = waiters.join_next().await {
            assert!(
                matches!(seen.expect("a waiter"), Ok(Peek::Completed(ref r)) if r.value() == "done")
            );
        }
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(3),
            "woken by the complete, not by a 5-10 s timer: {waited:?}"
        );
    });
}

/// Peeks in one flight with different fingerprints each get their own
/// answer (the script is asked without one; each checks its own).
#[test]
fn one_round_trip_answers_every_fingerprint() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start(&[]);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(async {
            let prefix = unique_prefix("fingerprints");
            let holder = connect(&server, &prefix).await;
            let here = connect(&server, &prefix).await;
            let key = "order-3".to_string();
            let token = acquire(&holder, &key, fp(3)).await;
            for completed in [false, true] {
                if completed {
                    holder
                        .complete(&key, token, "v".to_string(), None)
                        .await
                        .expect("complete");
                }
                let before = here.peek_round_trips();
                let (same, other, none) = tokio::join!(
                    here.peek(&key, fp(3)),
                    here.peek(&key, fp(4)),
                    here.peek(&key, None)
                );
                assert_eq!(here.peek_round_trips() - before, 1, "one round trip");
                if completed {
                    assert!(matches!(same, Ok(Peek::Completed(_))), "{same:?}");
                    assert!(matches!(none, Ok(Peek::Completed(_))), "{none:?}");
                } else {
                    assert!(matches!(same, Ok(Peek::InProgress(ref f)) if f.token == token));
                    assert!(matches!(none, Ok(Peek::InProgress(_))), "{none:?}");
                }
                assert!(matches!(other, Ok(Peek::Mismatch)), "{other:?}");
            }
        });
}

/// The leader of a flight is cancelled while Redis is paused: its
/// followers are not stranded; one of them leads a round trip of its own.
#[test]
fn a_cancelled_leader_hands_over_to_its_followers() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start(&[]);
    runtime().block_on(async {
        let store = connect(&server, &unique_prefix("cancel")).await;
        let key = "order-4".to_string();
        acquire(&store, &key, fp(5)).await;
        assert!(store.peek(&key, fp(5)).await.is_ok()); // loads the script
        let before = store.peek_round_trips();
        server.signal("STOP");
        let leader = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.peek(&key, fp(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut followers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, key) = (store.clone(), key.clone());
            followers.spawn(async move { store.peek(&key, fp(5)).await });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.peek_round_trips() - before,
            1,
            "the followers joined the leader's round trip"
        );
        leader.abort();
        assert!(leader.await.is_err(), "the leader was cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.signal("CONT");
        let started = Instant::now();
        while let Some(seen) = followers.join_next().await {
            assert!(
                matches!(seen.expect("a follower"), Ok(Peek::InProgress(_))),
                "a follower gets an answer"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            store.peek_round_trips() - before,
            2,
            "one follower took over with one round trip for all"
        );
    });
}
