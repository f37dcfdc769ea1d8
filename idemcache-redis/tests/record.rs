//! The record in Redis, against a real server: which fields a record
//! keeps in each state, and what `renew` and a resent `complete` keep.

mod common;

use std::time::Duration;

use common::{RedisServer, redis_available, unique_prefix};
use idemcache::Fingerprint;
use idemcache::store::{ClaimId, ClaimOutcome, Completion, Peek, Store};
use idemcache_redis::{Raw, RedisStore};

type TestStore = RedisStore<String, Raw>;

fn run(test: impl AsyncFnOnce(&RedisServer, TestStore)) {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start(&[]);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(async {
            let store = RedisStore::builder(server.url())
                .prefix(unique_prefix("record"))
                .lease(Duration::from_secs(30))
                .grace(Duration::from_secs(5))
                .retention(Duration::from_secs(100))
                .connect_with_codec(Raw)
                .await
                .expect("connect");
            test(&server, store).await;
        });
}

fn fields(server: &RedisServer, store: &TestStore, key: &str) -> Vec<String> {
    let redis_key = String::from_utf8(store.redis_key(key).unwrap()).unwrap();
    let mut fields: Vec<String> = server
        .cli(&["HKEYS", &redis_key])
        .lines()
        .map(str::to_string)
        .collect();
    fields.sort();
    fields
}

fn pttl(server: &RedisServer, store: &TestStore, key: &str) -> i64 {
    let redis_key = String::from_utf8(store.redis_key(key).unwrap()).unwrap();
    server.cli(&["PTTL", &redis_key]).parse().expect("a PTTL")
}

#[test]
fn a_record_has_four_fields_in_every_state() {
    run(async |server, store| {
        let key = "k1".to_string();
        let fp = Some(Fingerprint::from_bytes([1; 16]));
        let ClaimOutcome::Acquired(claim) = store.claim(&key, fp, ClaimId::random()).await.unwrap()
        else {
            panic!("a free key")
        };
        assert_eq!(fields(server, &store, &key), ["d", "f", "s", "t"]);
        let ttl = pttl(server, &store, &key);
        assert!((30_000..=35_000).contains(&ttl), "lease + grace: {ttl}");
        store
            .complete(&key, claim.token, "v".into(), None)
            .await
            .unwrap();
        // The value took the holder's place: nothing of the claim is left.
        assert_eq!(fields(server, &store, &key), ["d", "f", "s", "t"]);
        let ttl = pttl(server, &store, &key);
        assert!((90_000..=100_000).contains(&ttl), "the retention: {ttl}");
    });
}

#[test]
fn a_completed_records_time_left_is_its_ttl() {
    run(async |server, store| {
        let key = "k2".to_string();
        let ClaimOutcome::Acquired(claim) =
            store.claim(&key, None, ClaimId::random()).await.unwrap()
        else {
            panic!("a free key")
        };
        let Completion::Stored { expires_at } = store
            .complete(&key, claim.token, "v".into(), Some(Duration::from_secs(50)))
            .await
            .unwrap()
        else {
            panic!("stored")
        };
        let left = expires_at
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(49), "{left:?}");
        // An operator shortens the TTL: replays and a resent complete say so.
        let redis_key = String::from_utf8(store.redis_key(&key).unwrap()).unwrap();
        server.cli(&["PEXPIRE", &redis_key, "7000"]);
        let Ok(Peek::Completed(replay)) = store.peek(&key, None).await else {
            panic!("completed")
        };
        assert!(
            (Duration::from_secs(6)..=Duration::from_secs(7)).contains(&replay.expires_in()),
            "{:?}",
            replay.expires_in()
        );
        let Completion::Stored { expires_at } = store
            .complete(&key, claim.token, "v".into(), Some(Duration::from_secs(50)))
            .await
            .unwrap()
        else {
            panic!("a resent complete succeeds")
        };
        let left = expires_at
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(
            left <= Duration::from_secs(7),
            "unchanged by the resend: {left:?}"
        );
        assert!(pttl(server, &store, &key) <= 7000);
    });
}

#[test]
fn renew_keeps_the_claims_start_and_id() {
    run(async |_server, store| {
        let key = "k3".to_string();
        let id = ClaimId::random();
        let ClaimOutcome::Acquired(claim) = store.claim(&key, None, id).await.unwrap() else {
            panic!("a free key")
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            store.renew(&key, claim.token).await.unwrap(),
            Duration::from_secs(30)
        );
        // The resent claim still finds its own acquisition...
        match store.claim(&key, None, id).await.unwrap() {
            ClaimOutcome::Acquired(again) => {
                assert!(again.resent);
                assert_eq!(again.token, claim.token);
                assert!(again.lease > Duration::from_secs(29), "{:?}", again.lease);
            }
            other => panic!("{other:?}"),
        }
        // ...and the claim has run since it began, not since the renewal.
        let Ok(Peek::InProgress(in_flight)) = store.peek(&key, None).await else {
            panic!("in progress")
        };
        assert!(
            in_flight.running_for >= Duration::from_millis(290),
            "{:?}",
            in_flight.running_for
        );
        assert_eq!(in_flight.token, claim.token);
    });
}
