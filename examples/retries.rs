//! A payment service behind a flaky network, made safe with idemcache.
//!
//! Clients send charges with an idempotency key. Responses get lost, some
//! requests time out while the server is still working, and the server's
//! downstream sometimes fails transiently. Clients retry every request with
//! the same key and exponential backoff; the service deduplicates through
//! `get_or_compute`, so each key is charged exactly once.
//!
//! Run it with `cargo run --release --example retries`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use idemcache::Cache;

const CLIENTS: u64 = 8;
const REQUESTS_PER_CLIENT: u64 = 40;
/// Chance that the server's response never reaches the client.
const LOST_RESPONSE_PERCENT: u64 = 25;
/// Chance that the downstream processor fails before charging (a 503).
const TRANSIENT_FAILURE_PERCENT: u64 = 10;
/// How long a client waits for a response before it retries.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(4);
const MAX_ATTEMPTS: u32 = 12;

#[derive(Clone, Debug, PartialEq)]
struct Receipt {
    charge_id: u64,
    amount_cents: u64,
}

#[derive(Debug)]
struct Unavailable;

/// The service: every charge goes through the idempotency cache.
struct PaymentService {
    cache: Cache<String, Receipt>,
    charges_executed: AtomicU64,
    requests_received: AtomicU64,
}

impl PaymentService {
    fn charge(
        &self,
        key: &str,
        amount_cents: u64,
        noise: &mut Noise,
    ) -> Result<Receipt, Unavailable> {
        self.requests_received.fetch_add(1, Ordering::Relaxed);
        let transient = noise.percent(TRANSIENT_FAILURE_PERCENT);
        let work = Duration::from_micros(500 + noise.below(5_000));
        self.cache.get_or_compute(key.to_string(), || {
            thread::sleep(work); // talk to the card network
            if transient {
                return Err(Unavailable); // failed before charging: retryable
            }
            let charge_id = self.charges_executed.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Receipt {
                charge_id,
                amount_cents,
            })
        })
    }
}

/// A small deterministic PRNG (xorshift64*), so runs are repeatable.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Self {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Default)]
struct ClientTally {
    sent: u64,
    retries: u64,
    succeeded: u64,
    gave_up: u64,
}

/// One client: sends each request until it gets a receipt, retrying with
/// the same idempotency key after lost responses, timeouts and 503s.
fn run_client(service: Arc<PaymentService>, client: u64) -> ClientTally {
    let mut tally = ClientTally::default();
    let mut noise = Noise::new(client + 1);
    for request in 0..REQUESTS_PER_CLIENT {
        let key = format!("client-{client}-request-{request}");
        let amount_cents = 100 + noise.below(10_000);
        let mut backoff = Duration::from_millis(1);
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tally.retries += 1;
                thread::sleep(backoff + Duration::from_micros(noise.below(1_000)));
                backoff = (backoff * 2).min(Duration::from_millis(16));
            }
            tally.sent += 1;
            // Each attempt is its own connection: it keeps running on the
            // server even after the client stops waiting for it.
            let (reply, response) = mpsc::channel();
            let lose_response = noise.percent(LOST_RESPONSE_PERCENT);
            let mut server_noise = Noise::new(noise.next());
            let (service, key) = (Arc::clone(&service), key.clone());
            thread::spawn(move || {
                let result = service.charge(&key, amount_cents, &mut server_noise);
                if !lose_response {
                    let _ = reply.send(result);
                }
            });
            match response.recv_timeout(CLIENT_TIMEOUT) {
                Ok(Ok(receipt)) => {
                    assert_eq!(receipt.amount_cents, amount_cents);
                    tally.succeeded += 1;
                    break;
                }
                Ok(Err(Unavailable)) | Err(_) => {
                    if attempt + 1 == MAX_ATTEMPTS {
                        tally.gave_up += 1;
                    }
                }
            }
        }
    }
    tally
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = Arc::new(PaymentService {
        cache: Cache::builder()
            .time_to_live(Duration::from_secs(24 * 3600))
            .max_entries(1_000_000)
            .build()?,
        charges_executed: AtomicU64::new(0),
        requests_received: AtomicU64::new(0),
    });

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let service = Arc::clone(&service);
            thread::spawn(move || run_client(service, client))
        })
        .collect();
    let mut total = ClientTally::default();
    for client in clients {
        let tally = client.join().expect("client thread");
        total.sent += tally.sent;
        total.retries += tally.retries;
        total.succeeded += tally.succeeded;
        total.gave_up += tally.gave_up;
    }
    // Let attempts whose clients stopped waiting finish on the server.
    let distinct_keys = CLIENTS * REQUESTS_PER_CLIENT;
    while service.requests_received.load(Ordering::SeqCst) < total.sent {
        thread::sleep(Duration::from_millis(1));
    }
    // Every key's receipt is stored, ready to replay to a later retry.
    assert_eq!(service.cache.len() as u64, distinct_keys);

    let charges = service.charges_executed.load(Ordering::SeqCst);
    let stats = service.cache.stats();
    println!("idempotent payments over a flaky network");
    println!(
        "  clients x requests        {CLIENTS} x {REQUESTS_PER_CLIENT} = {distinct_keys} distinct keys"
    );
    println!("  requests sent             {}", total.sent);
    println!("  retries                   {}", total.retries);
    println!(
        "  receipts received         {} (gave up: {})",
        total.succeeded, total.gave_up
    );
    println!("  charges executed          {charges}");
    println!("  replays (cache hits)      {}", stats.hits);
    println!("  joined a running charge   {}", stats.coalesced);
    println!("  cache stats               {stats:?}");
    if charges != distinct_keys {
        return Err(
            format!("{charges} charges for {distinct_keys} keys: a duplicate charge").into(),
        );
    }
    println!(
        "OK: every key charged exactly once despite {} retries",
        total.retries
    );
    Ok(())
}
