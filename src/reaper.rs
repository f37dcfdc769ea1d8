//! The optional background thread: one per cache, that purges expired
//! entries every interval, in bounded batches, and (with the `persistence`
//! feature) saves a snapshot every interval.
//!
//! The thread holds the cache's shared state, not a handle, so it does not
//! keep the cache alive: when the last [`Cache`](crate::Cache) handle is
//! dropped, the [`Reaper`] it owned is dropped too, which sets the stop flag,
//! notifies the thread (it may be asleep for a whole interval) and joins it.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::sync::thread::{self, JoinHandle};
use crate::sync::{Arc, Condvar, Mutex};

/// The name the reaper thread runs under (visible in debuggers and `top`).
pub(crate) const THREAD_NAME: &str = "idemcache-reaper";

/// What the reaper works on. Implemented by the cache's shared state.
pub(crate) trait Reap: Send + Sync + 'static {
    /// Purges expired entries in bounded batches, asking `stop` between
    /// batches whether to give up early.
    fn reap(&self, stop: &dyn Fn() -> bool);

    /// Saves the periodic snapshot (a failure is recorded, not raised).
    fn save_snapshot(&self);
}

/// How often the reaper does each of its jobs; `None`: never.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) purge: Option<Duration>,
    pub(crate) snapshot: Option<Duration>,
}

impl Schedule {
    /// Whether there is anything for a thread to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.purge.is_none() && self.snapshot.is_none()
    }
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
    /// Starts the thread, working on `target` as `schedule` says.
    pub(crate) fn spawn<R: Reap>(target: Arc<R>, schedule: Schedule) -> io::Result<Reaper> {
        let signal = Arc::new(Signal {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread_signal = Arc::clone(&signal);
        let thread = thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || run(&*target, &thread_signal, schedule))?;
        Ok(Reaper {
            signal,
            thread: Some(thread),
        })
    }
}

fn run<R: Reap>(target: &R, signal: &Signal, schedule: Schedule) {
    // `None` for a job that never runs, including one whose interval is
    // too long to add to an `Instant`.
    let after =
        |interval: Option<Duration>| interval.and_then(|every| Instant::now().checked_add(every));
    let mut next_purge = after(schedule.purge);
    let mut next_snapshot = after(schedule.snapshot);
    loop {
        let due = next_purge.into_iter().chain(next_snapshot).min();
        {
            let mut stopped = signal.stopped.lock();
            loop {
                if *stopped {
                    return;
                }
                let now = Instant::now();
                match due {
                    Some(due) if now >= due => break,
                    // A spurious or early wake-up only looks again.
                    Some(due) => {
                        signal.wake.wait_for(&mut stopped, due - now);
                    }
                    None => signal.wake.wait(&mut stopped),
                }
            }
        }
        // A job that panics (in user code: a key's `Hash`, a value's `Drop`)
        // is abandoned for this round, not the thread: the cache's state
        // stays consistent through such panics, and the next round runs.
        let now = Instant::now();
        if next_purge.is_some_and(|at| now >= at) {
            let _ = catch_unwind(AssertUnwindSafe(|| target.reap(&|| signal.is_stopped())));
            next_purge = after(schedule.purge);
        }
        if next_snapshot.is_some_and(|at| now >= at) {
            let _ = catch_unwind(AssertUnwindSafe(|| target.save_snapshot()));
            next_snapshot = after(schedule.snapshot);
        }
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
                // Jobs' panics are caught on the thread; should anything
                // else unwind there, it was reported there and must not
                // escalate here.
                let _ = thread.join();
            }
        }
    }
}
