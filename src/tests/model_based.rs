//! Model-based property tests: random sequences of 1..200 operations over
//! six keys (plain cache operations, `get_or_compute`, claims, completions,
//! releases, renewals, abandonments and clock moves past TTLs and leases),
//! checked step by step against a reference model (see `model.rs`), for
//! one shard and many, bounded and not, evicting and refusing. Each case
//! ends by abandoning the reservations still held.
//!
//! Cases per configuration: `PROPTEST_CASES` (CI sets 1000; default 256).
//! Unit tests rather than integration tests: the harness needs the
//! test-only `Cache::__is_stored`. Not compiled under miri (too slow there); the
//! fixed regressions below still run.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::model::{CONFIGS, Config, KEYS, Op, run};
use crate::CapacityPolicy;

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
        1 => any::<u8>().prop_map(|reservation| Op::Abandon { reservation }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..200)
}

proptest! {
    // Failures are saved next to this file, as
    // `src/tests/model_based.proptest-regressions`, and replayed first.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    #[cfg(not(miri))]
    fn one_shard_unbounded(ops in ops()) {
        run(CONFIGS[0], &ops);
    }

    #[test]
    #[cfg(not(miri))]
    fn many_shards_unbounded(ops in ops()) {
        run(CONFIGS[1], &ops);
    }

    #[test]
    #[cfg(not(miri))]
    fn one_shard_bounded_evicts_exactly_the_soonest(ops in ops()) {
        run(CONFIGS[2], &ops);
    }

    #[test]
    #[cfg(not(miri))]
    fn many_shards_bounded_evicting(ops in ops()) {
        run(CONFIGS[3], &ops);
    }

    #[test]
    #[cfg(not(miri))]
    fn one_shard_bounded_refusing(ops in ops()) {
        run(CONFIGS[4], &ops);
    }

    #[test]
    #[cfg(not(miri))]
    fn many_shards_bounded_refusing(ops in ops()) {
        run(CONFIGS[5], &ops);
    }
}

/// Runs `ops` in every configuration.
fn run_everywhere(ops: &[Op]) {
    for config in CONFIGS {
        run(config, ops);
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
                policy: CapacityPolicy::Refuse,
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

/// The cases shrunk to in `model_based.proptest-regressions`, spelled out:
/// the file's seeds generate other operations once the strategy changes.
#[test]
fn regressions_of_the_seed_file() {
    run_everywhere(&[
        Op::Insert { key: 2, value: 0 },
        Op::Advance { ticks: 10 },
        Op::Insert { key: 2, value: 0 },
    ]);
    run_everywhere(&[
        Op::Insert { key: 4, value: 0 },
        Op::Advance { ticks: 10 },
        Op::ComputeOk { key: 4, value: 0 },
    ]);
    run_everywhere(&[
        Op::ComputeOk { key: 0, value: 0 },
        Op::InsertWithTtl {
            key: 5,
            value: 0,
            ttl: 11,
        },
        Op::Advance { ticks: 1 },
        Op::Advance { ticks: 9 },
        Op::Claim {
            key: 1,
            fingerprint: 0,
        },
        Op::Insert { key: 1, value: 0 },
    ]);
    run_everywhere(&[
        Op::ComputeOk { key: 1, value: 0 },
        Op::Claim {
            key: 2,
            fingerprint: 0,
        },
        Op::Claim {
            key: 0,
            fingerprint: 0,
        },
        Op::Insert { key: 0, value: 0 },
        Op::Complete {
            reservation: 13,
            value: 0,
            ttl: None,
        },
    ]);
}

/// An abandoned claim keeps its key and its unit until its lease lapses;
/// then a full cache reclaims it (one shard: exactly it, refusing or not),
/// and the holder's watcher sees it lapse.
#[test]
fn abandoned_claims_hold_their_unit_until_the_lease_lapses() {
    run_everywhere(&[
        Op::Claim {
            key: 0,
            fingerprint: 1,
        },
        Op::Insert { key: 1, value: 1 },
        Op::Claim {
            key: 2,
            fingerprint: 0,
        },
        Op::Abandon { reservation: 0 }, // key 0's
        Op::Claim {
            key: 0,
            fingerprint: 1,
        }, // in progress, abandoned
        Op::Claim {
            key: 0,
            fingerprint: 2,
        }, // mismatch
        Op::Insert { key: 3, value: 3 }, // full: refused unless evicting
        Op::Advance { ticks: 7 },       // both leases lapse
        Op::Insert { key: 4, value: 4 }, // reclaims a lapsed claim
        Op::Renew { reservation: 0 },   // key 2's: fenced iff reclaimed
        Op::Claim {
            key: 5,
            fingerprint: 0,
        },
        Op::Complete {
            reservation: 0,
            value: 9,
            ttl: None,
        },
        Op::Abandon { reservation: 0 },
        Op::Advance { ticks: 7 },
        Op::PurgeExpired,
    ]);
}

/// Abandoning a claim whose lease already lapsed frees its key at once.
#[test]
fn abandoning_after_the_lease_lapsed_frees_the_key() {
    run_everywhere(&[
        Op::Claim {
            key: 0,
            fingerprint: 0,
        },
        Op::Advance { ticks: 8 },
        Op::Abandon { reservation: 0 },
        Op::Claim {
            key: 0,
            fingerprint: 0,
        },
        Op::Release { reservation: 0 },
        Op::Claim {
            key: 0,
            fingerprint: 0,
        },
    ]);
}
