//! The optional background reaper: one thread per cache that purges expired
//! entries every interval, in bounded batches.
//!
//! The thread holds the cache's shared state, not a handle, so it does not
//! keep the cache alive: when the last [`Cache`](crate::Cache) handle is
//! dropped, the [`Reaper`] it owned is dropped too, which sets the stop flag,
//! notifies the thread (it may be asleep for a whole interval) and joins it.

use std::io;
use std::time::Duration;

use crate::sync::thread::{self, JoinHandle};
use crate::sync::{Arc, Condvar, Mutex};

/// The name the reaper thread runs under (visible in debuggers and `top`).
pub(crate) const THREAD_NAME: &str = "idemcache-reaper";

/// What the reaper purges. Implemented by the cache's shared state.
pub(crate) trait Reap: Send + Sync + 'static {
    /// Purges expired entries in bounded batches, asking `stop` between
    /// batches whether to give up early.
    fn reap(&self, stop: &dyn Fn() -> bool);
}

struct Signal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Signal {
    fn is_stopped(&self) -> bool {
        *self.stopped.lock()
    }
}

/// Owner of the reaper thread; dropping it stops and joins the thread.
pub(crate) struct Reaper {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Starts the thread, purging `target` every `interval`.
    pub(crate) fn spawn<R: Reap>(target: Arc<R>, interval: Duration) -> io::Result<Reaper> {
        let signal = Arc::new(Signal {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread_signal = Arc::clone(&signal);
        let thread = thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || run(&*target, &thread_signal, interval))?;
        Ok(Reaper {
            signal,
            thread: Some(thread),
        })
    }
}

fn run<R: Reap>(target: &R, signal: &Signal, interval: Duration) {
    loop {
        {
            let mut stopped = signal.stopped.lock();
            if !*stopped {
                // A spurious or early wake-up only purges early: harmless.
                signal.wake.wait_for(&mut stopped, interval);
            }
            if *stopped {
                return;
            }
        }
        target.reap(&|| signal.is_stopped());
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        *self.signal.stopped.lock() = true;
        self.signal.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The last handle can be dropped on the reaper thread itself (a
            // value that owns a handle, dropped while being purged): joining
            // there would wait forever. The thread sees the flag and exits on
            // its own right after.
            if thread.thread().id() != thread::current().id() {
                // A panic on the reaper thread came from a user `Drop`; it
                // was already reported there and must not escalate here.
                let _ = thread.join();
            }
        }
    }
}
