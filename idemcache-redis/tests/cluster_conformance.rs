//! The core's store conformance suite against a Redis Cluster of three
//! primaries, started once for this test binary (about 2 s) and shared by
//! its tests, each store under its own prefix. The cluster lives in a
//! static, so no guard drops it: each node's watchdog kills it when this
//! process exits.

#![cfg(feature = "cluster")]

mod common;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use common::{RedisCluster, redis_available, unique_prefix};
use idemcache::store::conformance::{Harness, Options};
use idemcache::store_conformance_tests;
use idemcache_redis::{Raw, RedisStore};

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

struct ClusterHarness;

impl Harness for ClusterHarness {
    type Store = RedisStore<String, Raw>;

    async fn store(&self, options: Options) -> Self::Store {
        RedisStore::cluster_builder(cluster().urls())
            .prefix(unique_prefix("cluster-conformance"))
            .lease(options.lease)
            .retention(options.retention)
            .connect_with_codec(Raw)
            .await
            .expect("connect to the test cluster")
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
    cluster();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(test);
}

store_conformance_tests!(ClusterHarness, run);

/// Records of many keys land on all three primaries: the whole logical key
/// is the hash tag.
#[test]
fn records_spread_over_every_primary() {
    use idemcache::store::{ClaimId, ClaimOutcome, Store};
    run(async {
        let store = ClusterHarness
            .store(Options {
                lease: Duration::from_secs(10),
                retention: Duration::from_secs(60),
                max_entries: None,
            })
            .await;
        for n in 0..60 {
            let key = format!("spread-{n}");
            let ClaimOutcome::Acquired(claim) =
                store.claim(&key, None, ClaimId::random()).await.unwrap()
            else {
                panic!("a fresh key is acquired");
            };
            store
                .complete(&key, claim.token, "ok".into(), None)
                .await
                .unwrap();
        }
        for node in &cluster().nodes {
            let keys: u64 = node.cli(&["DBSIZE"]).parse().unwrap_or(0);
            assert!(
                keys > 0,
                "every primary holds some records (port {})",
                node.port
            );
        }
    });
}
