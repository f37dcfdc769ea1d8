//! Differential fuzzing: an arbitrary list of operations on a manual-clock
//! cache, checked step by step against the reference model shared with the
//! proptest suite.
#![no_main]

#[path = "../../tests/model/mod.rs"]
mod model;

use libfuzzer_sys::fuzz_target;
use model::{Config, Op, run};

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    config: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let config = match input.config % 4 {
        0 => Config {
            shards: 1,
            max_entries: None,
        },
        1 => Config {
            shards: 8,
            max_entries: None,
        },
        2 => Config {
            shards: 1,
            max_entries: Some(3),
        },
        _ => Config {
            shards: 4,
            max_entries: Some(3),
        },
    };
    run(config, &input.ops[..input.ops.len().min(400)]);
});
