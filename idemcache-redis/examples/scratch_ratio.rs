// SCRATCH (to be deleted): interleaved pair vs SET NX PX ratio.
#[path = "../tests/common/mod.rs"]
mod common;
use std::time::{Duration, Instant};
use idemcache::store::{ClaimId, ClaimOutcome, Store};
use idemcache_redis::{Raw, RedisStore};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = common::RedisServer::start(&[]);
    let store: RedisStore<Vec<u8>, Raw> = RedisStore::builder(server.url()).prefix("p").retention(Duration::from_secs(120)).connect_with_codec(Raw).await.unwrap();
    let mut raw = redis::Client::open(server.url()).unwrap().get_connection_manager().await.unwrap();
    let iters: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(20000);
    let mut n = 0u64;
    let (mut tp, mut ts, mut tr) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut tc, mut tk, mut tt) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let triv = redis::Script::new("#!lua\nreturn {'A', 1700000000000000, 60000000, 0}");
    let v = vec![b'x'; 200];
    let replayed = "replayed".to_string();
    let ClaimOutcome::Acquired(c) = store.claim(&replayed, None, ClaimId::random()).await.unwrap() else { panic!() };
    store.complete(&replayed, c.token, v.clone(), None).await.unwrap();
    for _ in 0..iters {
        n += 1; let k = format!("k{n}");
        let t = Instant::now();
        let ClaimOutcome::Acquired(c) = store.claim(&k, None, ClaimId::random()).await.unwrap() else { panic!() };
        tc += t.elapsed();
        let t2 = Instant::now();
        store.complete(&k, c.token, v.clone(), None).await.unwrap();
        tk += t2.elapsed();
        tp += t.elapsed();
        let t = Instant::now();
        let _: redis::Value = triv.key(format!("t{n}")).arg("").arg(&[7u8;16][..]).arg(60000).arg(30000).invoke_async(&mut raw).await.unwrap();
        tt += t.elapsed();
        let t = Instant::now();
        let _: Option<String> = redis::cmd("SET").arg(format!("s{n}")).arg(v.clone()).arg("NX").arg("PX").arg(120_000).query_async(&mut raw).await.unwrap();
        ts += t.elapsed();
        let t = Instant::now();
        let ClaimOutcome::Completed(_) = store.claim(&replayed, None, ClaimId::random()).await.unwrap() else { panic!() };
        tr += t.elapsed();
    }
    let f = |d: Duration| d.as_secs_f64() * 1e6 / iters as f64;
    println!("interleaved x{iters}: pair {:.1}us  set {:.1}us  replay {:.1}us  pair ratio {:.3}  replay ratio {:.3}", f(tp), f(ts), f(tr), f(ts) / f(tp), f(ts) / f(tr));
    println!("   claim {:.1}  complete {:.1}  trivial script {:.1}", f(tc), f(tk), f(tt));
}
