//! Graceful shutdown: stop taking claims, wait for handlers in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct ShutdownState {
    closing: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl ShutdownState {
    /// Whether [`ShutdownHandle::shutdown`] was called. Sequentially
    /// consistent, with [`started`](Self::started), `shutdown` and
    /// `drained`: a request that counts itself and then finds the layer
    /// open is seen by a `drained` that follows `shutdown`.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Counts a handler in flight; each call is matched by one call of
    /// [`finished`](Self::finished) (the layer's claim does both, so a
    /// request takes no reference of its own to this state).
    pub(crate) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A handler counted by [`started`](Self::started) has finished.
    pub(crate) fn finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Stops a layer taking claims and waits for its handlers in flight. Get
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
        self.0.closing.store(true, Ordering::SeqCst);
    }

    /// Handlers running right now.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves once no handler is in flight.
    pub async fn drained(&self) {
        loop {
            let idle = self.0.idle.notified();
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
