//! `CacheConfig` (the `serde` feature): every builder option from a file,
//! human durations, unknown fields rejected, invalid values as `BuildError`.
#![cfg(feature = "serde")]

use std::time::Duration;

use idemcache::{BuildError, Cache, CacheConfig, CapacityPolicy};

#[test]
fn a_toml_file_sets_every_option_with_human_durations() {
    let config: CacheConfig = toml::from_str(
        r#"
        time_to_live = "24h"
        max_entries = 1000
        shards = 8
        background_eviction = "1s"
        lease = "90s"
        capacity_policy = "refuse"
        "#,
    )
    .unwrap();
    assert_eq!(
        config,
        CacheConfig {
            time_to_live: Duration::from_secs(24 * 3600),
            max_entries: Some(1000),
            shards: Some(8),
            background_eviction: Some(Duration::from_secs(1)),
            lease: Duration::from_secs(90),
            capacity_policy: CapacityPolicy::Refuse,
            ..CacheConfig::default()
        }
    );
    let cache: Cache<String, String> = config.build().unwrap();
    assert_eq!(cache.time_to_live(), Duration::from_secs(24 * 3600));
    assert_eq!(cache.max_entries(), Some(1000));
    assert_eq!(cache.shard_count(), 8);
    assert_eq!(cache.lease(), Duration::from_secs(90));
}

#[test]
fn missing_fields_take_the_builder_defaults() {
    let config: CacheConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, CacheConfig::default());
    let cache: Cache<u64, u64> = Cache::builder().config(&config).build().unwrap();
    let defaults: Cache<u64, u64> = Cache::new();
    assert_eq!(cache.time_to_live(), defaults.time_to_live());
    assert_eq!(cache.lease(), defaults.lease());
    assert_eq!(cache.max_entries(), None);
    assert_eq!(cache.shard_count(), defaults.shard_count());
}

#[test]
fn unknown_fields_are_an_error_naming_them() {
    let err = toml::from_str::<CacheConfig>(r#"time_to_lve = "1h""#).unwrap_err();
    assert!(err.to_string().contains("time_to_lve"), "{err}");
    let err = serde_json::from_str::<CacheConfig>(r#"{"max_entry": 5}"#).unwrap_err();
    assert!(err.to_string().contains("max_entry"), "{err}");
}

#[test]
fn bad_durations_and_values_are_errors_not_panics() {
    assert!(toml::from_str::<CacheConfig>(r#"time_to_live = "soon""#).is_err());
    assert!(serde_json::from_str::<CacheConfig>(r#"{"shards": -1}"#).is_err());
    assert!(serde_json::from_str::<CacheConfig>(r#"{"capacity_policy": "lru"}"#).is_err());
    for (text, expected) in [
        (r#"time_to_live = "0s""#, BuildError::ZeroTimeToLive),
        ("max_entries = 0", BuildError::ZeroMaxEntries),
        ("shards = 0", BuildError::ZeroShards),
        (
            r#"background_eviction = "0s""#,
            BuildError::ZeroEvictionInterval,
        ),
        (r#"lease = "0s""#, BuildError::ZeroLease),
    ] {
        let config: CacheConfig = toml::from_str(text).unwrap();
        let err = config.build::<u64, u64>().unwrap_err();
        assert_eq!(err, expected, "{text}");
        assert!(
            text.starts_with(err.field()),
            "the error names the field: {text}"
        );
    }
}

#[test]
fn a_config_round_trips_through_json_and_toml() {
    let config = CacheConfig {
        time_to_live: Duration::from_secs(90),
        max_entries: Some(7),
        shards: None,
        background_eviction: Some(Duration::from_millis(250)),
        lease: Duration::from_secs(60),
        capacity_policy: CapacityPolicy::EvictSoonest,
        ..CacheConfig::default()
    };
    let json = serde_json::to_string(&config).unwrap();
    assert!(json.contains(r#""time_to_live":"1m 30s""#), "{json}");
    assert_eq!(serde_json::from_str::<CacheConfig>(&json).unwrap(), config);
    let text = toml::to_string(&config).unwrap();
    assert_eq!(toml::from_str::<CacheConfig>(&text).unwrap(), config);
}

#[test]
fn the_default_capacity_policy_is_refuse() {
    assert_eq!(
        CacheConfig::default().capacity_policy,
        CapacityPolicy::Refuse
    );
    let cache: Cache<u8, u8> = Cache::builder().max_entries(1).build().unwrap();
    assert_eq!(cache.capacity_policy(), CapacityPolicy::Refuse);
}

#[cfg(feature = "persistence")]
#[test]
fn a_snapshot_section_configures_periodic_snapshots() {
    let dir = std::env::temp_dir().join(format!("idemcache-config-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("records.snapshot");
    let config: CacheConfig = toml::from_str(&format!(
        "[snapshot]\npath = \"{}\"\nevery = \"10s\"\n",
        path.display()
    ))
    .unwrap();
    let snapshot = config.snapshot.clone().unwrap();
    assert_eq!(
        (snapshot.path.as_path(), snapshot.every),
        (path.as_path(), Duration::from_secs(10))
    );

    let cache: Cache<String, String> = Cache::builder()
        .config_with_snapshots(&config)
        .build()
        .unwrap();
    assert_eq!(cache.snapshot_status().unwrap().path, path);
    cache.insert("k".to_string(), "v".to_string());
    cache.shutdown().unwrap();
    assert!(
        path.exists(),
        "the final snapshot went to the configured path"
    );

    // `config` cannot apply the section (it needs serializable types): it
    // says so at build instead of silently ignoring it.
    let err = Cache::<String, String>::builder()
        .config(&config)
        .build()
        .unwrap_err();
    assert_eq!(err, idemcache::BuildError::SnapshotNotApplied);
    assert_eq!(err.field(), "snapshot");

    // Unknown fields in the section are rejected, like everywhere else.
    assert!(
        toml::from_str::<CacheConfig>("[snapshot]\npath = \"x\"\nevery = \"1s\"\nevry = 1\n")
            .is_err()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
