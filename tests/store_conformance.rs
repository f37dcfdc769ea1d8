//! The store conformance suite against the in-process store: `Cache` on a
//! manual clock, run on a tokio current-thread runtime.

use std::future::Future;
use std::time::Duration;

use idemcache::Cache;
use idemcache::clock::ManualClock;
use idemcache::store::conformance::{Harness, Options};
use idemcache::store_conformance_tests;

/// Makes caches on one manual clock: each test makes its own harness (the
/// macro evaluates `CacheHarness::new()` in every test), so a test's
/// stores share a clock with nothing but each other.
struct CacheHarness {
    clock: ManualClock,
}

impl CacheHarness {
    fn new() -> Self {
        CacheHarness {
            clock: ManualClock::new(),
        }
    }
}

impl Harness for CacheHarness {
    type Store = Cache<String, String>;

    async fn store(&self, options: Options) -> Self::Store {
        let mut builder = Cache::builder()
            .lease(options.lease)
            .time_to_live(options.retention)
            .clock(self.clock.clone());
        if let Some(max_entries) = options.max_entries {
            builder = builder.max_entries(max_entries);
        }
        builder.build().expect("the suite's options are valid")
    }

    async fn advance(&self, _store: &Self::Store, by: Duration) {
        self.clock.advance(by);
    }

    async fn sleep(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

store_conformance_tests!(CacheHarness::new(), block_on);
