//! The core's store conformance suite against a single Redis server: one
//! server per test (started by the harness, killed when it drops), real
//! time with a 300 ms unit.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{RedisServer, redis_available, unique_prefix};
use idemcache::store::conformance::{Harness, Options};
use idemcache::store_conformance_tests;
use idemcache_redis::{Raw, RedisStore};

struct RedisHarness {
    server: Option<RedisServer>,
}

impl RedisHarness {
    fn new() -> Self {
        let installed = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
        RedisHarness {
            server: installed.then(|| RedisServer::start(&[])),
        }
    }
}

impl Harness for RedisHarness {
    type Store = RedisStore<String, Raw>;

    async fn store(&self, options: Options) -> Self::Store {
        let server = self
            .server
            .as_ref()
            .expect("run() checked for redis-server");
        RedisStore::builder(server.url())
            .prefix(unique_prefix("conformance"))
            .lease(options.lease)
            .retention(options.retention)
            .connect_with_codec(Raw)
            .await
            .expect("connect to the test server")
    }

    async fn advance(&self, _store: &Self::Store, by: Duration) {
        tokio::time::sleep(by).await;
    }

    async fn sleep(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    fn unit(&self) -> Duration {
        Duration::from_millis(300)
    }

    fn supports_max_entries(&self) -> bool {
        false
    }
}

fn run<F: Future<Output = ()>>(test: F) {
    if !redis_available() {
        return;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(test);
}

store_conformance_tests!(RedisHarness::new(), run);
