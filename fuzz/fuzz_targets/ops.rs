//! Differential fuzzing: an arbitrary list of operations on a manual-clock
//! cache, checked step by step against the reference model shared with the
//! proptest suite.
#![no_main]

#[path = "../../src/tests/model.rs"]
mod model;

use libfuzzer_sys::fuzz_target;
use model::{CONFIGS, Op, run};

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    config: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let config = CONFIGS[usize::from(input.config) % CONFIGS.len()];
    run(config, &input.ops[..input.ops.len().min(400)]);
});
