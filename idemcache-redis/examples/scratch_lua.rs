// SCRATCH (to be deleted): server-side cost of claim/complete script variants.
// usage: scratch_lua PORT DIR  (DIR has claim.lua complete.lua)
use redis::{Script, Value};
fn stat(c: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines().find(|l| l.starts_with("cmdstat_evalsha:")).and_then(|l| l.split("usec_per_call=").nth(1)).and_then(|s| s.split(',').next()).unwrap().parse().unwrap()
}
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{}", a[1])).unwrap().get_connection().unwrap();
    let claim = Script::new(&std::fs::read_to_string(format!("{}/claim.lua", a[2])).unwrap());
    let complete = Script::new(&std::fs::read_to_string(format!("{}/complete.lua", a[2])).unwrap());
    let _: () = redis::cmd("SCRIPT").arg("LOAD").arg(claim_src(&a[2], "claim")).query(&mut c).map(|_: String| ()).unwrap();
    let _: () = redis::cmd("SCRIPT").arg("LOAD").arg(claim_src(&a[2], "complete")).query(&mut c).map(|_: String| ()).unwrap();
    let n = 20000; let batch = 200;
    let mut best = (f64::MAX, f64::MAX);
    for round in 0..5 {
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
        let mut tokens = Vec::new();
        for b in 0..n / batch {
            let mut p = redis::pipe();
            for i in 0..batch { p.cmd("EVALSHA").arg(claim.get_hash()).arg(1).arg(format!("k{round}-{}", b * batch + i)).arg("").arg(&[7u8; 16][..]).arg(60000).arg(30000); }
            let vs: Vec<Value> = p.query(&mut c).unwrap();
            for v in vs { let Value::Array(items) = v else { panic!("{v:?}") }; tokens.push(match &items[1] { Value::Int(t) => t.to_string(), Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(), o => panic!("{o:?}") }); }
        }
        let sc = stat(&mut c);
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
        for b in 0..n / batch {
            let mut p = redis::pipe();
            for i in 0..batch { let k = b * batch + i; p.cmd("EVALSHA").arg(complete.get_hash()).arg(1).arg(format!("k{round}-{k}")).arg(&tokens[k]).arg(&[b'x'; 200][..]).arg(120000); }
            let vs: Vec<Value> = p.query(&mut c).unwrap();
            for v in vs { let Value::Array(items) = v else { panic!("{v:?}") }; assert!(matches!(&items[0], Value::BulkString(t) if t == b"S"), "{items:?}"); }
        }
        let sp = stat(&mut c);
        best = (best.0.min(sc), best.1.min(sp));
    }
    println!("{}: claim {:.2} us  complete {:.2} us  (min of 5 rounds, server usec_per_call)", a[2], best.0, best.1);
}
fn claim_src(dir: &str, name: &str) -> String { std::fs::read_to_string(format!("{dir}/{name}.lua")).unwrap() }
