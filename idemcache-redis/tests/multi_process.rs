//! Exactly once across processes: two worker processes
//! (`idemcache-redis-worker`) on one Redis run the same 3,000 logical
//! requests, each from two concurrent tasks per process, with resent
//! claims, resent completes, releases and waits. Every execution is an
//! `INCR` of a counter key of its own; each must end at exactly 1.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::{RedisServer, redis_available, unique_prefix};
use redis::AsyncCommands;

const KEYS: u64 = 3000;

#[test]
fn two_processes_execute_every_key_exactly_once() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start(&[]);
    let prefix = unique_prefix("multi");
    let started = Instant::now();
    let workers: Vec<_> = (1..=2u64)
        .map(|seed| {
            Command::new(env!("CARGO_BIN_EXE_idemcache-redis-worker"))
                .args([
                    server.url(),
                    prefix.clone(),
                    KEYS.to_string(),
                    "2".into(),
                    seed.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a worker")
        })
        .collect();
    let mut executed = 0;
    for worker in workers {
        let output = worker.wait_with_output().expect("a worker's output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "a worker failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("worker: {}", stdout.trim());
        executed += stdout
            .split_whitespace()
            .find_map(|field| field.strip_prefix("executed="))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("executed=N");
    }
    eprintln!(
        "{KEYS} keys, 2 processes x 2 tasks each, in {:?}",
        started.elapsed()
    );

    let counters: Vec<Option<i64>> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(async {
            let client = redis::Client::open(server.url()).expect("a URL");
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let names: Vec<String> = (0..KEYS).map(|k| format!("{prefix}:exec:k-{k}")).collect();
            connection.mget(names).await.expect("MGET the counters")
        });
    let wrong: Vec<(usize, Option<i64>)> = counters
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, count)| *count != Some(1))
        .collect();
    assert!(
        wrong.is_empty(),
        "every key executes exactly once; these did not: {:?}",
        &wrong[..wrong.len().min(20)]
    );
    assert_eq!(executed, KEYS, "the workers' own counts agree");
}
