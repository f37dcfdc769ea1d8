//! Stored responses survive a restart through the core's snapshot files
//! (the `serde` feature).
#![cfg(feature = "serde")]

use http::{StatusCode, header};
use idemcache::store::{ClaimId, ClaimOutcome, Store};
use idemcache_http::{MemoryStore, Scope, ScopedKey, StoredResponse};

#[tokio::test]
async fn a_memory_store_of_responses_round_trips_through_a_snapshot_file() {
    let dir = std::env::temp_dir().join(format!("idemcache-http-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("responses.snapshot");

    let before = MemoryStore::new();
    let key = ScopedKey::new(Scope::of(["Bearer alice"]), "order-7");
    let stored = StoredResponse::new(
        StatusCode::CREATED,
        vec![(header::LOCATION, "/charges/ch_1".parse().unwrap())],
        r#"{"id":"ch_1"}"#,
    );
    let ClaimOutcome::Acquired(claim) = Store::claim(&before, &key, None, ClaimId::random())
        .await
        .unwrap()
    else {
        panic!("a new key")
    };
    before
        .complete(&key, claim.token, stored.clone(), None)
        .await
        .unwrap();
    assert_eq!(before.save_to(&path).unwrap(), 1);

    let after = MemoryStore::new();
    assert_eq!(after.load_from(&path).unwrap().restored, 1);
    match Store::claim(&after, &key, None, ClaimId::random())
        .await
        .unwrap()
    {
        ClaimOutcome::Completed(replay) => assert_eq!(replay.value(), &stored),
        other => panic!("expected the restored record, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
