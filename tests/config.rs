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
    };
    let json = serde_json::to_string(&config).unwrap();
    assert!(json.contains(r#""time_to_live":"1m 30s""#), "{json}");
    assert_eq!(serde_json::from_str::<CacheConfig>(&json).unwrap(), config);
    let text = toml::to_string(&config).unwrap();
    assert_eq!(toml::from_str::<CacheConfig>(&text).unwrap(), config);
}
