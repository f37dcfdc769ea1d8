//! Graceful shutdown: stop taking claims, wait for the requests in flight.

use std::sync::Arc;

#[cfg(idemcache_loom)]
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
#[cfg(not(idemcache_loom))]
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

#[cfg(idemcache_loom)]
use loom_notify::Notify;
#[cfg(not(idemcache_loom))]
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct ShutdownState {
    closing: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl ShutdownState {
    /// Whether [`ShutdownHandle::shutdown`] was called: the early check,
    /// before a request's body is read. It decides nothing for good:
    /// [`start`](Self::start) does.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Counts a request in flight (from before it claims its key until its
    /// outcome is recorded), then answers whether the layer is still open
    /// (if not, the request must claim nothing). Either way the count holds
    /// until the matching [`finished`](Self::finished).
    ///
    /// Count, then check, with a sequentially consistent fence between;
    /// `drained`, after `shutdown` has set the flag, fences, then reads the
    /// count. Whichever fence comes first in their single total order,
    /// either this call sees the shutdown or that `drained` sees this
    /// count. (Fences rather than sequentially consistent accesses,
    /// which would do as well: loom models fences exactly but treats such
    /// accesses as acquire/release, and the `tests` below check this with
    /// loom.)
    pub(crate) fn start(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        !self.closing.load(Ordering::Relaxed)
    }

    /// A request counted by [`start`](Self::start) has finished.
    pub(crate) fn finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Stops a layer taking claims and waits for its requests in flight. Get
/// it from [`IdempotencyLayer::shutdown_handle`](crate::IdempotencyLayer::shutdown_handle).
///
/// Handlers run detached from their connections, so a server's own
/// graceful shutdown (which waits for connections) does not wait for them:
/// call [`shutdown`](Self::shutdown) and await [`drained`](Self::drained)
/// after it, so no handler is cut off mid side effect.
///
/// ```no_run
/// # async fn run(app: axum::Router, listener: tokio::net::TcpListener, handle: idemcache_http::ShutdownHandle) -> std::io::Result<()> {
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
///     .await?;
/// handle.shutdown(); // new idempotent requests get 503 + Retry-After
/// handle.drained().await; // every handler has finished and stored its result
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ShutdownHandle(pub(crate) Arc<ShutdownState>);

impl ShutdownHandle {
    /// From now on, requests that would claim a key are answered 503 with
    /// `Retry-After: 1` (a retry goes to another replica or the restarted
    /// process); requests in flight go on.
    pub fn shutdown(&self) {
        // `drained`'s fence orders this store (which happens before it)
        // against the requests' counts; see `ShutdownState::start`.
        self.0.closing.store(true, Ordering::Relaxed);
    }

    /// Protected requests in flight right now: claiming their keys,
    /// running their handlers or recording their outcomes.
    pub fn in_flight(&self) -> usize {
        // Acquire: pairs with `finished`, so that what a finished handler
        // did (its stored result) is visible to whoever saw it finish.
        self.0.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight. After
    /// [`shutdown`](Self::shutdown), once it has resolved no key is
    /// claimed and no handler starts, and every handler's result is
    /// stored.
    pub async fn drained(&self) {
        loop {
            // Registered before the count is read, so the last handler's
            // `notify_waiters` cannot fall between the two.
            let idle = self.0.idle.notified();
            fence(Ordering::SeqCst); // pairs with `start`'s
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("closing", &self.0.is_closing())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// tokio's `Notify` cannot run under loom; this stands in for it with the
/// one guarantee `drained` relies on: `notify_waiters` wakes every
/// `Notified` created before the call, polled yet or not.
#[cfg(idemcache_loom)]
mod loom_notify {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use loom::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct Notify {
        /// Calls of `notify_waiters` so far, and the wakers to wake at the
        /// next.
        state: Mutex<(u64, Vec<Waker>)>,
    }

    impl Notify {
        pub(crate) fn notified(&self) -> Notified<'_> {
            let generation = self.state.lock().unwrap().0;
            Notified {
                notify: self,
                generation,
            }
        }

        pub(crate) fn notify_waiters(&self) {
            let wakers = {
                let mut state = self.state.lock().unwrap();
                state.0 += 1;
                std::mem::take(&mut state.1)
            };
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    pub(crate) struct Notified<'a> {
        notify: &'a Notify,
        generation: u64,
    }

    impl Future for Notified<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut state = self.notify.state.lock().unwrap();
            if state.0 != self.generation {
                return Poll::Ready(());
            }
            state.1.push(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Every interleaving of requests and a shutdown, under loom:
/// `RUSTFLAGS="--cfg idemcache_loom" cargo test -p idemcache-http --release --lib shutdown::tests`
/// (`.ci/run` does, in a target dir of its own). tokio's `Notify` is
/// replaced by the model above; everything else is this module's code.
#[cfg(all(test, idemcache_loom))]
mod tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::thread;

    /// A request as the layer runs it once its body is read: counted,
    /// then, only if the layer is open, it claims its key and runs the
    /// handler. `drained` is set once `drained()` has returned: no claim
    /// and no handler may see it set.
    fn request(state: &ShutdownState, drained: &AtomicBool) -> bool {
        let open = state.start();
        if open {
            // The claim and the handler's side effect, start and end.
            assert!(
                !drained.load(Ordering::SeqCst),
                "a claim or a handler started after drained"
            );
            thread::yield_now();
            assert!(
                !drained.load(Ordering::SeqCst),
                "a handler ran on after drained"
            );
        }
        state.finished();
        open
    }

    #[test]
    fn no_handler_runs_after_drained_returns() {
        loom::model(|| {
            let state = Arc::new(ShutdownState::default());
            let drained = Arc::new(AtomicBool::new(false));
            let handle = ShutdownHandle(Arc::clone(&state));
            let requester = {
                let (state, drained) = (Arc::clone(&state), Arc::clone(&drained));
                thread::spawn(move || request(&state, &drained))
            };
            handle.shutdown();
            loom::future::block_on(handle.drained());
            drained.store(true, Ordering::SeqCst);
            requester.join().unwrap();
            // And a request that comes after the shutdown is refused.
            assert!(!request(&state, &drained));
        });
    }

    #[test]
    fn drained_wakes_when_the_last_of_two_handlers_finishes() {
        loom::model(|| {
            let state = Arc::new(ShutdownState::default());
            let drained = Arc::new(AtomicBool::new(false));
            let handle = ShutdownHandle(Arc::clone(&state));
            let requesters: Vec<_> = (0..2)
                .map(|_| {
                    let (state, drained) = (Arc::clone(&state), Arc::clone(&drained));
                    thread::spawn(move || request(&state, &drained))
                })
                .collect();
            handle.shutdown();
            // A lost wake-up leaves this blocked for good: loom reports a
            // deadlock.
            loom::future::block_on(handle.drained());
            drained.store(true, Ordering::SeqCst);
            // (A refused request may still be counted here, for a moment.)
            for requester in requesters {
                requester.join().unwrap();
            }
            assert_eq!(handle.in_flight(), 0, "every start matched by a finish");
        });
    }
}
