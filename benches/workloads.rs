//! Criterion benchmarks, one group per workload, idemcache next to its
//! peers (and, in the read groups, the hashbrown reference) at 1 and 2
//! threads (String keys, 100k preloaded, values
//! `Arc<[u8; 256]>`). `benches/compare.rs` prints the full ratio table at
//! 1M entries; this is the fine-grained view with criterion's statistics.
//!
//! `cargo bench --bench workloads -- --noplot`

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Peer, Store, indices, keys, timed, value};
use criterion::{Criterion, criterion_group, criterion_main};

const N: usize = 100_000;

/// Runs `per_op(store, thread, i)` `iters` times split over `threads`, for
/// every peer (those that can be written only if the group `writes`).
fn bench_threads(
    c: &mut Criterion,
    group: &str,
    writes: bool,
    per_op: impl Fn(&dyn Store<String>, usize, u64) + Sync + Copy,
) {
    let (present, _) = keys::<String>(N);
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for peer in Peer::ALL {
        let store = peer.preloaded(&present);
        if writes && !store.writable() {
            continue;
        }
        for threads in [1usize, 2] {
            g.bench_function(format!("{}/{threads}t", peer.name()), |b| {
                b.iter_custom(|iters| {
                    let per_thread = iters / threads as u64 + 1;
                    timed(threads, |t| {
                        for i in 0..per_thread {
                            per_op(&*store, t, i);
                        }
                    })
                })
            });
        }
    }
    g.finish();
}

fn get_hit(c: &mut Criterion) {
    let (present, _) = keys::<String>(N);
    let idx = indices(N, 1 << 20, false, 1);
    let (present, idx) = (&present, &idx);
    bench_threads(c, "get_hit_uniform", false, move |s, t, i| {
        let j = idx[((i as usize) + t * 7919) & ((1 << 20) - 1)] as usize;
        black_box(s.get(&present[j]));
    });
}

fn get_miss(c: &mut Criterion) {
    let (_, absent) = keys::<String>(N);
    let absent = &absent;
    bench_threads(c, "get_miss", false, move |s, t, i| {
        black_box(s.get(&absent[(i as usize + t * 7919) % N]));
    });
}

fn mixed(c: &mut Criterion) {
    let (present, _) = keys::<String>(N);
    let present = &present;
    bench_threads(c, "mixed_90_get_10_insert", true, move |s, t, i| {
        let j = (i as usize + t * 7919) % N;
        if i % 10 == 0 {
            s.insert(present[j].clone(), value(i));
        } else {
            black_box(s.get(&present[j]));
        }
    });
}

fn get_or_compute_hit(c: &mut Criterion) {
    let (present, _) = keys::<String>(N);
    let present = &present;
    bench_threads(c, "get_or_compute_hit", false, move |s, t, i| {
        let key = present[(i as usize + t * 7919) % N].clone();
        black_box(s.get_or_compute(key, &|| unreachable!("preloaded")));
    });
}

criterion_group!(benches, get_hit, get_miss, mixed, get_or_compute_hit);
criterion_main!(benches);
