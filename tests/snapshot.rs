//! Snapshots: what `Cache::snapshot` captures, what `Cache::restore` does
//! with it (expiry, capacity, keys already present, fingerprints), and
//! round trips through JSON and the snapshot file format for several key
//! and value types. File-format failures and periodic snapshots are in
//! `tests/snapshot_file.rs`; crash safety in `tests/crash_safety.rs`.
#![cfg(all(feature = "serde", feature = "digest"))]

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, SystemTime};

use common::{FRAGILE_HASH, FragileKey, manual_cache};
use idemcache::clock::{Clock, ManualClock};
use idemcache::{Cache, Claim, Fingerprint, RestoreReport, Snapshot, SnapshotEntry};
use serde::Serialize;
use serde::de::DeserializeOwned;

const SEC: Duration = Duration::from_secs(1);

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of(["POST", "/v1/charges", body])
}

/// The snapshot's records by key, for order-independent comparison.
fn by_key<K: Ord + Clone, V: Clone>(snapshot: &Snapshot<K, V>) -> BTreeMap<K, SnapshotEntry<K, V>> {
    snapshot
        .iter()
        .map(|e| (e.key.clone(), e.clone()))
        .collect()
}

fn report(restored: usize, expired: usize, present: usize, refused: usize) -> RestoreReport {
    let mut r = RestoreReport::default();
    r.restored = restored;
    r.skipped_expired = expired;
    r.skipped_present = present;
    r.refused_capacity = refused;
    r
}

#[test]
fn a_snapshot_holds_live_completed_records_with_fingerprints_and_wall_clock_deadlines() {
    let (cache, clock) = manual_cache::<String, String>(SEC * 100, 4, None);
    cache.insert("plain".into(), "a".into());
    cache.insert_with_ttl("short".into(), "b".into(), SEC * 5);
    cache.insert_with_ttl("gone".into(), "c".into(), SEC * 2);
    let Claim::Acquired(done) = cache.claim("claimed".to_string(), fp("1")) else {
        panic!("fresh key")
    };
    done.complete("d".to_string()).unwrap();
    // In progress: neither a claim nor a computation is a record.
    let Claim::Acquired(_running) = cache.claim("running".to_string(), fp("2")) else {
        panic!("fresh key")
    };
    clock.advance(SEC * 3); // "gone" expires

    let snapshot = cache.snapshot();
    let now = clock.system_time();
    assert_eq!(snapshot.taken_at(), now);
    let records = by_key(&snapshot);
    assert_eq!(
        records.keys().map(String::as_str).collect::<Vec<_>>(),
        ["claimed", "plain", "short"]
    );
    assert_eq!(records["plain"].value, "a");
    assert_eq!(records["plain"].expires_at, now + SEC * 97);
    assert_eq!(records["short"].expires_at, now + SEC * 2);
    assert_eq!(records["plain"].fingerprint, None);
    assert_eq!(records["claimed"].fingerprint, Some(fp("1")));
    assert_eq!(records["claimed"].value, "d");
    // Taking a snapshot changes nothing.
    assert_eq!(cache.get("plain").as_deref(), Some("a"));
    assert_eq!(cache.len(), 4);
}

#[test]
fn restore_gives_records_their_deadlines_and_skips_expired_ones_after_a_clock_jump() {
    let (old, clock) = manual_cache::<String, u64>(SEC * 60, 4, None);
    old.insert("a".into(), 1); // expires at +60 s
    old.insert_with_ttl("b".into(), 2, SEC * 600);
    old.insert_with_ttl("c".into(), 3, SEC * 30);
    let snapshot = old.snapshot();
    drop(old);

    clock.advance(SEC * 45); // the restart took 45 s: "c" is gone
    let new = manual_cache_on::<String, u64>(&clock, SEC * 60, None);
    assert_eq!(new.restore(snapshot), report(2, 1, 0, 0));
    assert_eq!(new.get("a"), Some(1));
    assert_eq!(new.get("b"), Some(2));
    assert_eq!(new.get("c"), None);
    assert_eq!(new.len(), 2);
    // "a" keeps its deadline (15 s left), not a fresh time-to-live.
    clock.advance(SEC * 15);
    assert_eq!(new.get("a"), None);
    assert_eq!(new.get("b"), Some(2));
    clock.advance(SEC * 540);
    assert_eq!(new.get("b"), None);
}

/// A cache on an existing manual clock, one shard, fixed-seed hasher.
fn manual_cache_on<K, V>(clock: &ManualClock, ttl: Duration, max: Option<usize>) -> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let mut builder = Cache::builder()
        .time_to_live(ttl)
        .shards(1)
        .clock(clock.clone());
    if let Some(max) = max {
        builder = builder.max_entries(max);
    }
    builder.build().unwrap()
}

#[test]
fn a_restored_record_still_replays_and_still_catches_a_reused_key() {
    let (old, clock) = manual_cache::<String, String>(SEC * 60, 2, None);
    let Claim::Acquired(r) = old.claim("order-1".to_string(), fp("amount=100")) else {
        panic!()
    };
    r.complete("receipt-1".to_string()).unwrap();
    let json = serde_json::to_string(&old.snapshot()).unwrap();

    let new = manual_cache_on::<String, String>(&clock, SEC * 60, None);
    let snapshot: Snapshot<String, String> = serde_json::from_str(&json).unwrap();
    assert_eq!(new.restore(snapshot).restored, 1);
    assert!(matches!(
        new.claim("order-1".to_string(), fp("amount=999")),
        Claim::Mismatch
    ));
    match new.claim("order-1".to_string(), fp("amount=100")) {
        Claim::Completed(replay) => {
            assert_eq!(replay.value(), "receipt-1");
            assert_eq!(replay.fingerprint(), Some(fp("amount=100")));
            assert_eq!(replay.expires_in(), SEC * 60);
        }
        other => panic!("expected a replay, got {other:?}"),
    }
}

#[test]
fn restore_respects_max_entries_keeping_the_latest_deadlines() {
    let (old, clock) = manual_cache::<u32, u32>(SEC * 60, 4, None);
    for i in 0..10 {
        old.insert_with_ttl(i, i, SEC * (100 + i));
    }
    let snapshot = old.snapshot();
    let new = manual_cache_on::<u32, u32>(&clock, SEC * 60, Some(4));
    assert_eq!(new.restore(snapshot), report(4, 0, 0, 6));
    assert_eq!(new.len(), 4);
    for i in 0..10 {
        assert_eq!(new.contains_key(&i), i >= 6, "key {i}");
    }
}

#[test]
fn restore_never_evicts_live_entries_but_reclaims_expired_ones() {
    let clock = ManualClock::new();
    let new = manual_cache_on::<u32, u32>(&clock, SEC * 60, Some(4));
    new.insert(100, 100);
    new.insert(101, 101);
    new.insert_with_ttl(102, 102, SEC); // expires before the restore
    let entries = (0..5)
        .map(|i| SnapshotEntry {
            key: i,
            value: i,
            fingerprint: None,
            expires_at: clock.system_time() + SEC * 600,
        })
        .collect();
    clock.advance(SEC * 2);
    let snapshot = Snapshot::new(clock.system_time(), entries);
    // Room for 2: the two live entries stay, the expired one makes room.
    assert_eq!(new.restore(snapshot), report(2, 0, 0, 3));
    assert_eq!(new.get(&100), Some(100));
    assert_eq!(new.get(&101), Some(101));
    assert_eq!(new.len(), 4);
}

#[test]
fn restore_refuses_for_capacity_under_either_policy_and_with_claims_holding_room() {
    use idemcache::CapacityPolicy;
    for policy in [CapacityPolicy::EvictSoonest, CapacityPolicy::Refuse] {
        let clock = ManualClock::new();
        let new: Cache<u32, u32> = Cache::builder()
            .clock(clock.clone())
            .max_entries(2)
            .capacity_policy(policy)
            .build()
            .unwrap();
        let Claim::Acquired(_claim) = new.claim(50, None) else {
            panic!()
        };
        let snapshot = Snapshot::new(
            clock.system_time(),
            (0..3)
                .map(|i| SnapshotEntry {
                    key: i,
                    value: i,
                    fingerprint: None,
                    expires_at: clock.system_time() + SEC * (10 + i),
                })
                .collect(),
        );
        assert_eq!(new.restore(snapshot), report(1, 0, 0, 2), "{policy:?}");
        assert!(new.contains_key(&2), "the latest deadline is kept");
    }
}

#[test]
fn restore_leaves_newer_state_alone_and_replaces_expired_entries() {
    let clock = ManualClock::new();
    let system_start = clock.system_time();
    let new = manual_cache_on::<&str, u32>(&clock, SEC * 60, None);
    new.insert("live", 1);
    new.insert_with_ttl("expired", 2, SEC);
    let Claim::Acquired(_claim) = new.claim("claimed", None) else {
        panic!()
    };
    clock.advance(SEC * 2);
    let record = |key, value| SnapshotEntry {
        key,
        value,
        fingerprint: Some(fp("x")),
        expires_at: system_start + SEC * 30,
    };
    let snapshot = Snapshot::new(
        system_start,
        vec![
            record("live", 10),
            record("expired", 20),
            record("claimed", 30),
            record("fresh", 40),
        ],
    );
    assert_eq!(new.restore(snapshot), report(2, 0, 2, 0));
    assert_eq!(new.get("live"), Some(1), "the newer live entry stays");
    assert_eq!(new.get("expired"), Some(20), "an expired entry is replaced");
    assert_eq!(new.get("fresh"), Some(40));
    assert_eq!(
        new.get("claimed"),
        None,
        "the claim in progress keeps its key"
    );
    assert!(matches!(new.claim("fresh", fp("y")), Claim::Mismatch));
}

#[test]
fn a_key_listed_twice_keeps_its_latest_record() {
    let clock = ManualClock::new();
    let now = clock.system_time();
    let new = manual_cache_on::<&str, u32>(&clock, SEC * 60, None);
    let record = |value, secs| SnapshotEntry {
        key: "k",
        value,
        fingerprint: None,
        expires_at: now + SEC * secs,
    };
    let snapshot = Snapshot::new(now, vec![record(1, 10), record(2, 20), record(3, 0)]);
    assert_eq!(new.restore(snapshot), report(1, 1, 1, 0));
    assert_eq!(new.get("k"), Some(2));
}

#[test]
fn far_future_deadlines_survive_a_round_trip() {
    let (old, clock) = manual_cache::<u8, u8>(SEC, 1, None);
    old.insert_with_ttl(1, 1, Duration::MAX);
    let snapshot = old.snapshot();
    assert!(snapshot.entries()[0].expires_at > clock.system_time() + SEC * 86_400 * 365 * 500);
    let bytes = serde_json::to_vec(&snapshot).unwrap();
    let back: Snapshot<u8, u8> = serde_json::from_slice(&bytes).unwrap();
    let new = manual_cache_on::<u8, u8>(&clock, SEC, None);
    assert_eq!(new.restore(back).restored, 1);
    clock.advance(SEC * 86_400 * 365 * 100);
    assert_eq!(new.get(&1), Some(1));
}

#[test]
fn restored_records_are_reclaimed_and_counted_like_written_ones() {
    let (old, clock) = manual_cache::<u32, u32>(SEC * 10, 2, None);
    for i in 0..20 {
        old.insert(i, i);
    }
    let new = manual_cache_on::<u32, u32>(&clock, SEC * 10, Some(20));
    assert_eq!(new.restore(old.snapshot()).restored, 20);
    clock.advance(SEC * 10);
    assert_eq!(new.purge_expired(), 20);
    assert!(new.is_empty());
    // The room they held is free again.
    for i in 0..20 {
        new.insert(i, i);
    }
    assert_eq!(new.len(), 20);
}

// Round trips for several key and value types -----------------------------

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
struct TenantKey {
    tenant: u32,
    key: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
enum Outcome {
    Charged {
        id: u64,
        amount_cents: i64,
        note: Option<String>,
    },
    Declined(String),
    Refunded,
}

/// Fills a cache with `records`, snapshots it, sends the snapshot through
/// JSON and (with the `persistence` feature) through the file format, and
/// restores each into a fresh cache on the same clock.
fn round_trip<K, V>(records: Vec<(K, V, Option<Fingerprint>)>)
where
    K: Hash + Eq + Ord + Clone + Debug + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + PartialEq + Debug + Send + Serialize + DeserializeOwned + 'static,
{
    let (old, clock) = manual_cache::<K, V>(SEC * 3600, 4, None);
    for (i, (key, value, fingerprint)) in records.iter().enumerate() {
        let Claim::Acquired(r) = old.claim(key.clone(), *fingerprint) else {
            panic!("fresh key {key:?}")
        };
        r.complete_with_ttl(value.clone(), SEC * (60 + i as u32))
            .unwrap();
    }
    let snapshot = old.snapshot();
    assert_eq!(snapshot.len(), records.len());

    let json = serde_json::to_string(&snapshot).unwrap();
    let from_json: Snapshot<K, V> = serde_json::from_str(&json).unwrap();
    assert_eq!(by_key(&from_json), by_key(&snapshot));
    let mut copies = vec![from_json];

    #[cfg(feature = "persistence")]
    {
        let bytes = snapshot.encode().unwrap();
        let decoded = Snapshot::<K, V>::decode(&bytes).unwrap();
        assert_eq!(decoded, snapshot, "the file format keeps order too");
        copies.push(decoded);
    }

    for copy in copies {
        let new = manual_cache_on::<K, V>(&clock, SEC * 3600, None);
        assert_eq!(new.restore(copy).restored, records.len());
        for (key, value, fingerprint) in &records {
            match new.claim(key.clone(), *fingerprint) {
                Claim::Completed(replay) => {
                    assert_eq!(replay.value(), value);
                    assert_eq!(replay.fingerprint(), *fingerprint);
                }
                other => panic!("{key:?}: expected a replay, got {other:?}"),
            }
        }
    }
}

#[test]
fn round_trips_strings() {
    round_trip(vec![
        ("k1".to_string(), "v1".to_string(), Some(fp("1"))),
        ("".to_string(), "".to_string(), None),
        (
            "ключ ✓".to_string(),
            "\"quoted\"\n".to_string(),
            Some(fp("3")),
        ),
    ]);
}

#[test]
fn round_trips_integers_and_bytes() {
    round_trip(vec![
        (0u64, vec![0u8, 255, 7], None),
        (u64::MAX, Vec::new(), Some(fp("b"))),
        (42, vec![1; 1000], None),
    ]);
}

#[test]
fn round_trips_structs_enums_and_tuples() {
    round_trip(vec![
        (
            TenantKey {
                tenant: 1,
                key: "a".into(),
            },
            Outcome::Charged {
                id: 7,
                amount_cents: -5,
                note: None,
            },
            Some(fp("c")),
        ),
        (
            TenantKey {
                tenant: 2,
                key: "a".into(),
            },
            Outcome::Declined("insufficient funds".into()),
            None,
        ),
        (
            TenantKey {
                tenant: 1,
                key: "b".into(),
            },
            Outcome::Refunded,
            None,
        ),
    ]);
    round_trip(vec![
        ((1u32, "x".to_string()), (true, 1.5f64, 'z'), None),
        (
            (2u32, "y".to_string()),
            (false, -0.0f64, '✓'),
            Some(fp("t")),
        ),
    ]);
}

#[test]
fn an_empty_cache_round_trips_to_an_empty_snapshot() {
    round_trip::<String, String>(Vec::new());
}

#[test]
fn json_spells_fingerprints_as_hex_and_deadlines_as_system_times() {
    let clock = ManualClock::new();
    let cache = manual_cache_on::<String, u32>(&clock, SEC * 60, None);
    let Claim::Acquired(r) = cache.claim("k".to_string(), fp("1")) else {
        panic!()
    };
    r.complete(1).unwrap();
    let json: serde_json::Value = serde_json::to_value(cache.snapshot()).unwrap();
    let entry = &json["entries"][0];
    assert_eq!(entry["fingerprint"], fp("1").to_string());
    assert!(entry["expires_at"]["secs_since_epoch"].is_u64(), "{json}");
    let _: SystemTime = serde_json::from_value(entry["expires_at"].clone()).unwrap();
}

/// A restore that grows the index hashes no stored key (the entries keep
/// their hashes), so a stored key whose `Hash` panics cannot break it.
#[test]
fn a_restore_that_grows_the_index_hashes_no_stored_key() {
    let _serial = common::fragile_serial();
    use std::sync::atomic::Ordering::SeqCst;
    let clock = ManualClock::new();
    let cache = manual_cache_on::<FragileKey, u64>(&clock, SEC * 60, Some(100));
    cache.insert(FragileKey(0), 0);
    let expires_at = clock.system_time() + SEC * 30;
    FRAGILE_HASH.store(true, SeqCst);
    for i in 1..60 {
        let one = Snapshot::new(
            clock.system_time(),
            vec![SnapshotEntry {
                key: FragileKey(i),
                value: i,
                fingerprint: None,
                expires_at,
            }],
        );
        assert_eq!(cache.restore(one).restored, 1);
    }
    FRAGILE_HASH.store(false, SeqCst);
    assert_eq!(cache.len(), 60);
    assert!((0..60).all(|i| cache.contains_key(&FragileKey(i))));
}

/// Found by the model review: a restore into a full `EvictSoonest` cache
/// evicted live entries in other shards, and spun forever when the only
/// live entries were in the restored key's shard. A restore never evicts.
#[test]
fn a_restore_into_a_full_evicting_cache_refuses_instead_of_evicting_or_spinning() {
    for shards in [1, 4] {
        let clock = ManualClock::new();
        let cache: Cache<u32, u32> = Cache::builder()
            .clock(clock.clone())
            .shards(shards)
            .max_entries(1)
            .capacity_policy(idemcache::CapacityPolicy::EvictSoonest)
            .build()
            .unwrap();
        cache.insert(100, 100);
        let report = cache.restore(Snapshot::new(
            clock.system_time(),
            vec![SnapshotEntry {
                key: 0,
                value: 0,
                fingerprint: None,
                expires_at: clock.system_time() + Duration::from_secs(10),
            }],
        ));
        assert_eq!(report.refused_capacity, 1, "{shards} shards");
        assert_eq!(
            cache.get(&100),
            Some(100),
            "{shards} shards: nothing evicted"
        );
    }
}
