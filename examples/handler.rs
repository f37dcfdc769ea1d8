//! An idempotent HTTP-style endpoint written with `Cache::claim`.
//!
//! No web framework: requests and responses are plain structs, so the
//! protocol is all there is to read. Each scenario prints the response a
//! client would get: 201 on first run, a replay (with
//! `Idempotent-Replayed: true`), 409 with `Retry-After` while a duplicate is
//! running (or the result, for a duplicate that waits), 422 for a reused
//! key, 400 without a key, and 503 with a released key after a transient
//! failure, whose retry then runs again.
//!
//! Run it with `cargo run --example handler`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use idemcache::{Cache, Claim, Fingerprint, Replay, Waited};

#[derive(Clone, Debug)]
struct Request {
    tenant: u64,
    method: &'static str,
    path: &'static str,
    idempotency_key: Option<&'static str>,
    body: &'static str,
}

#[derive(Clone, Debug, PartialEq)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// Keys are scoped by tenant: one client cannot replay another's response.
type Key = (u64, String);

struct Service {
    records: Cache<Key, Response>,
    charges: AtomicU64,
    /// Whether a duplicate waits (up to this long) instead of getting 409.
    wait_for_duplicates: Option<Duration>,
}

impl Service {
    fn handle(
        &self,
        request: &Request,
        work: impl FnOnce() -> Result<Response, String>,
    ) -> Response {
        let Some(key) = request
            .idempotency_key
            .filter(|k| !k.is_empty() && k.len() <= 255)
        else {
            return Response::new(400, "Idempotency-Key header required (1-255 characters)");
        };
        let fingerprint = Fingerprint::of([request.method, request.path, request.body]);
        match self
            .records
            .claim((request.tenant, key.to_string()), fingerprint)
        {
            Claim::Acquired(reservation) => match work() {
                Ok(response) => {
                    // Terminal outcomes, errors included, are stored and
                    // replayed; only retryable failures release the key.
                    if reservation.complete(response.clone()).is_err() {
                        return Response::new(409, "took too long: another attempt owns the key");
                    }
                    response
                }
                Err(transient) => {
                    reservation.release(); // a retry runs the request again
                    Response::new(503, transient).header("Retry-After", "1")
                }
            },
            Claim::Completed(replay) => replayed(replay),
            Claim::InProgress(pending) => {
                if let Some(patience) = self.wait_for_duplicates
                    && let Waited::Completed(replay) = pending.wait_timeout(patience)
                {
                    return replayed(replay);
                }
                Response::new(409, "a request with this key is in progress")
                    .header("Retry-After", pending.retry_after().as_secs().to_string())
            }
            Claim::Mismatch => Response::new(422, "this key was used with a different request"),
            Claim::Full => Response::new(503, "idempotency store full").header("Retry-After", "1"),
        }
    }

    fn charge(&self, amount: &str) -> Result<Response, String> {
        let id = self.charges.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Response::new(201, format!("charge ch_{id} for {amount}"))
            .header("Location", format!("/v1/charges/ch_{id}")))
    }
}

fn replayed(replay: Replay<Response>) -> Response {
    let expires = replay.expires_in().as_secs();
    let (name, value) = Replay::<Response>::HEADER;
    replay
        .into_value()
        .header(name, value)
        .header("Idempotency-Expires-In", expires.to_string())
}

fn post(key: Option<&'static str>, body: &'static str) -> Request {
    Request {
        tenant: 1,
        method: "POST",
        path: "/v1/charges",
        idempotency_key: key,
        body,
    }
}

fn show(scenario: &str, response: &Response) {
    println!("{scenario:<46} -> {} {}", response.status, response.body);
    for (name, value) in &response.headers {
        println!("{:<50}{name}: {value}", "");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = Service {
        records: Cache::builder()
            .time_to_live(Duration::from_secs(24 * 3600))
            .lease(Duration::from_secs(30))
            .max_entries(100_000)
            .build()?,
        charges: AtomicU64::new(0),
        wait_for_duplicates: None,
    };

    let first = service.handle(&post(Some("k-1"), "amount=100"), || service.charge("100"));
    show("first request", &first);
    let retry = service.handle(&post(Some("k-1"), "amount=100"), || service.charge("100"));
    show("retry, same key and body", &retry);
    assert_eq!(retry.body, first.body);
    show(
        "same key, different body",
        &service.handle(&post(Some("k-1"), "amount=999"), || service.charge("999")),
    );
    show(
        "no key",
        &service.handle(&post(None, "amount=5"), || service.charge("5")),
    );
    let other_tenant = Request {
        tenant: 2,
        ..post(Some("k-1"), "amount=100")
    };
    show(
        "another tenant reusing the key",
        &service.handle(&other_tenant, || service.charge("100")),
    );

    // A duplicate arrives while the first attempt is still running.
    let (started_tx, started_rx) = mpsc::channel();
    let (finish_tx, finish_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        let service = &service;
        let slow = s.spawn(move || {
            service.handle(&post(Some("k-2"), "amount=42"), || {
                started_tx.send(()).unwrap();
                finish_rx.recv().unwrap(); // a slow card network
                service.charge("42")
            })
        });
        started_rx.recv().unwrap();
        show(
            "duplicate while the first is running",
            &service.handle(&post(Some("k-2"), "amount=42"), || service.charge("42")),
        );
        finish_tx.send(()).unwrap();
        show("the first attempt finishes", &slow.join().unwrap());
    });

    // A waiting service answers the duplicate with the result instead.
    let patient = Service {
        wait_for_duplicates: Some(Duration::from_secs(5)),
        ..service
    };
    let (started_tx, started_rx) = mpsc::channel();
    thread::scope(|s| {
        let slow = s.spawn(|| {
            patient.handle(&post(Some("k-3"), "amount=7"), || {
                started_tx.send(()).unwrap();
                thread::sleep(Duration::from_millis(50));
                patient.charge("7")
            })
        });
        started_rx.recv().unwrap();
        show(
            "duplicate that waits for the first",
            &patient.handle(&post(Some("k-3"), "amount=7"), || patient.charge("7")),
        );
        slow.join().unwrap();
    });

    // A transient failure releases the key: the retry runs the work again.
    show(
        "transient failure",
        &patient.handle(&post(Some("k-4"), "amount=1"), || {
            Err("card network unavailable".into())
        }),
    );
    show(
        "retry after the failure",
        &patient.handle(&post(Some("k-4"), "amount=1"), || patient.charge("1")),
    );

    let charges = patient.charges.load(Ordering::SeqCst);
    println!(
        "charges executed: {charges} (one per distinct request, retries and duplicates replayed)"
    );
    println!("stats: {:?}", patient.records.stats());
    assert_eq!(charges, 5, "k-1 (tenants 1 and 2), k-2, k-3, k-4");
    Ok(())
}
