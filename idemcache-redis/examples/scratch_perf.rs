// SCRATCH (to be deleted): interleaved pair vs SET NX PX, plus server-side usec per call.
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
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(10);
    let per = 2000;
    let mut n = 0u64;
    let (mut tp, mut ts) = (Duration::ZERO, Duration::ZERO);
    let v = vec![b'x'; 200];
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per { n += 1; let k = format!("k{n}");
            let ClaimOutcome::Acquired(c) = store.claim(&k, None, ClaimId::random()).await.unwrap() else { panic!() };
            store.complete(&k, c.token, v.clone(), None).await.unwrap(); }
        tp += t.elapsed();
        let t = Instant::now();
        for _ in 0..per { n += 1; let _: Option<String> = redis::cmd("SET").arg(format!("s{n}")).arg(v.clone()).arg("NX").arg("PX").arg(120_000).query_async(&mut raw).await.unwrap(); }
        ts += t.elapsed();
    }
    let total = (rounds * per) as f64;
    let pairs = total / tp.as_secs_f64(); let sets = total / ts.as_secs_f64();
    // raw evalsha of a trivial script and of a claim-like script through the manager
    let triv = redis::Script::new("#!lua\nreturn {'A', 1700000000000000, 60000000, 0}");
    let mut tt = Duration::ZERO; let mut tr = Duration::ZERO;
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per { n += 1; let _: redis::Value = triv.key(format!("t{n}")).arg("").arg(&[7u8;16][..]).arg(60000).arg(30000).invoke_async(&mut raw).await.unwrap(); }
        tt += t.elapsed();
        let t = Instant::now();
        for _ in 0..per { n += 1; let _: redis::Value = redis::cmd("EVALSHA").arg(triv.get_hash()).arg(1).arg(format!("t{n}")).arg("").arg(&[7u8;16][..]).arg(60000).arg(30000).query_async(&mut raw).await.unwrap(); }
        tr += t.elapsed();
    }
    let (mut tc, mut tk) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let mut claims = Vec::new();
        let t = Instant::now();
        for _ in 0..per { n += 1; let k = format!("k{n}");
            let ClaimOutcome::Acquired(c) = store.claim(&k, None, ClaimId::random()).await.unwrap() else { panic!() }; claims.push((k, c.token)); }
        tc += t.elapsed();
        let t = Instant::now();
        for (k, tok) in claims { store.complete(&k, tok, v.clone(), None).await.unwrap(); }
        tk += t.elapsed();
    }
    let (mut pc, mut pk) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds*per { n += 1; let k = format!("k{n}");
        let t = Instant::now();
        let ClaimOutcome::Acquired(c) = store.claim(&k, None, ClaimId::random()).await.unwrap() else { panic!() };
        pc += t.elapsed(); let t = Instant::now();
        store.complete(&k, c.token, v.clone(), None).await.unwrap();
        pk += t.elapsed(); }
    println!("in pairs: claim {:.1}us complete {:.1}us", pc.as_secs_f64()*1e6/(rounds*per) as f64, pk.as_secs_f64()*1e6/(rounds*per) as f64);
    println!("store claim {:.1}us  store complete {:.1}us", tc.as_secs_f64()*1e6/(rounds*per) as f64, tk.as_secs_f64()*1e6/(rounds*per) as f64);
    let claim_src = std::fs::read_to_string("/tmp/rexp/cur/claim.lua").unwrap();
    let claim = redis::Script::new(&claim_src);
    let cfg = redis::aio::ConnectionManagerConfig::new().set_connection_timeout(Some(Duration::from_secs(1))).set_response_timeout(Some(Duration::from_millis(500))).set_number_of_retries(3).set_max_delay(Duration::from_millis(500));
    let mut conf = redis::aio::ConnectionManager::new_with_config(redis::Client::open(server.url()).unwrap(), cfg).await.unwrap();
    let (mut t1, mut t2, mut t3, mut t4) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per { n += 1; let _: redis::Value = claim.key(format!("c{n}")).arg("").arg(&[7u8;16][..]).arg(60000).arg(30000).invoke_async(&mut raw).await.unwrap(); }
        t1 += t.elapsed();
        let t = Instant::now();
        for _ in 0..per { n += 1; let _: redis::Value = triv.key(format!("c{n}")).arg("").arg(&[7u8;16][..]).arg(60000).arg(30000).invoke_async(&mut conf.clone()).await.unwrap(); }
        t2 += t.elapsed();
        let t = Instant::now();
        for _ in 0..per { n += 1; let _: redis::Value = tokio::time::timeout(Duration::from_millis(500), triv.key(format!("c{n}")).arg("").arg(&[7u8;16][..]).arg(60000).arg(30000).invoke_async(&mut raw.clone())).await.unwrap().unwrap(); }
        t3 += t.elapsed();
        let t = Instant::now();
        for _ in 0..per { n += 1; let _: redis::Value = triv.key(format!("c{n}")).arg("").arg(&[7u8;16][..]).arg(60000).arg(30000).invoke_async(&mut raw).await.unwrap(); }
        t4 += t.elapsed();
    }
    let f = |d: Duration| d.as_secs_f64()*1e6/(rounds*per) as f64;
    println!("raw claim script {:.1}us  trivial on store-config conn {:.1}us  trivial+timeout {:.1}  trivial {:.1}", f(t1), f(t2), f(t3), f(t4));
    println!("trivial script invoke {:.1}us  trivial raw EVALSHA cmd {:.1}us", tt.as_secs_f64()*1e6/(rounds*per) as f64, tr.as_secs_f64()*1e6/(rounds*per) as f64);
    println!("pairs/s {pairs:.0}  set/s {sets:.0}  ratio {:.3}  pair {:.1}us set {:.1}us", pairs / sets, 1e6 / pairs, 1e6 / sets);
    println!("{}", server.cli(&["INFO", "commandstats"]));
}
