//! Model-based property tests: random sequences of 1..200 operations over
//! six keys (plain cache operations, `get_or_compute`, claims, completions,
//! releases, renewals and clock moves past TTLs and leases), checked step by
//! step against a reference model (see `tests/model/mod.rs`), for one shard
//! and many, bounded and not, evicting and refusing.
//!
//! Cases per configuration: `PROPTEST_CASES` (CI sets 1000; default 256).

mod model;

use model::{CONFIGS, Config, KEYS, Op, run};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn key() -> impl Strategy<Value = u8> {
    0..KEYS
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), any::<u8>()).prop_map(|(key, value)| Op::Insert { key, value }),
        2 => (key(), any::<u8>(), 0..=20u8)
            .prop_map(|(key, value, ttl)| Op::InsertWithTtl { key, value, ttl }),
        4 => key().prop_map(|key| Op::Get { key }),
        1 => key().prop_map(|key| Op::ContainsKey { key }),
        2 => key().prop_map(|key| Op::Remove { key }),
        1 => Just(Op::Clear),
        1 => Just(Op::PurgeExpired),
        3 => (key(), any::<u8>()).prop_map(|(key, value)| Op::ComputeOk { key, value }),
        1 => key().prop_map(|key| Op::ComputeErr { key }),
        3 => (0..=15u8).prop_map(|ticks| Op::Advance { ticks }),
        4 => (key(), 0..3u8).prop_map(|(key, fingerprint)| Op::Claim { key, fingerprint }),
        3 => (any::<u8>(), any::<u8>(), proptest::option::of(0..=20u8))
            .prop_map(|(reservation, value, ttl)| Op::Complete { reservation, value, ttl }),
        1 => any::<u8>().prop_map(|reservation| Op::Release { reservation }),
        1 => any::<u8>().prop_map(|reservation| Op::Renew { reservation }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..200)
}

proptest! {
    // Failures are saved next to this file, as
    // `tests/model_based.proptest-regressions`, and replayed first.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn one_shard_unbounded(ops in ops()) {
        run(CONFIGS[0], &ops);
    }

    #[test]
    fn many_shards_unbounded(ops in ops()) {
        run(CONFIGS[1], &ops);
    }

    #[test]
    fn one_shard_bounded_evicts_exactly_the_soonest(ops in ops()) {
        run(CONFIGS[2], &ops);
    }

    #[test]
    fn many_shards_bounded(ops in ops()) {
        run(CONFIGS[3], &ops);
    }

    #[test]
    fn one_shard_bounded_refusing(ops in ops()) {
        run(CONFIGS[4], &ops);
    }

    #[test]
    fn many_shards_bounded_refusing(ops in ops()) {
        run(CONFIGS[5], &ops);
    }
}

/// Regression (found by the `ops` fuzz target): keys outside the checked
/// key space are folded into it, so every stored key is compared.
#[test]
fn fuzz_regression_keys_outside_the_key_space() {
    for shards in [1, 8] {
        run(
            Config {
                shards,
                max_entries: None,
                refuse_when_full: false,
            },
            &[
                Op::InsertWithTtl {
                    key: 200,
                    value: 1,
                    ttl: 1,
                },
                Op::Advance { ticks: 2 },
                Op::Insert { key: 0, value: 0 },
                Op::Insert { key: 2, value: 0 },
            ],
        );
    }
}
