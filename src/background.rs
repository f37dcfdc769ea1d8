//! The optional background thread: one per cache, running the jobs
//! registered at build time, each every interval: the purge of expired
//! entries and lapsed claims ([`CacheBuilder::background_eviction`]), and
//! with the `persistence` feature the periodic snapshot
//! ([`CacheBuilder::snapshot_every`]).
//!
//! The jobs hold the cache's engine, not a handle, so the thread does not
//! keep the cache alive: when the last [`Cache`](crate::Cache) handle is
//! dropped, the [`Background`] it owned is dropped too, which sets the stop
//! flag, notifies the thread (it may be asleep for a whole interval) and
//! joins it.
//!
//! [`CacheBuilder::background_eviction`]: crate::CacheBuilder::background_eviction
//! [`CacheBuilder::snapshot_every`]: crate::CacheBuilder::snapshot_every

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::sync::thread::{self, JoinHandle};
use crate::sync::{Arc, Condvar, Mutex};

/// The name the background thread runs under (visible in debuggers and `top`).
pub(crate) const THREAD_NAME: &str = "idemcache-reaper";

/// The work of one job, given a function that says whether to stop early
/// (between bounded batches).
pub(crate) type Work = Box<dyn Fn(&dyn Fn() -> bool) + Send + Sync>;

/// A job of the background thread.
pub(crate) struct Job {
    pub(crate) every: Duration,
    pub(crate) work: Work,
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

/// Owner of the background thread; dropping it stops and joins the thread.
pub(crate) struct Background {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the thread with `jobs`; `None` (no thread) when there are
    /// none.
    pub(crate) fn spawn(jobs: Vec<Job>) -> io::Result<Option<Background>> {
        if jobs.is_empty() {
            return Ok(None);
        }
        let signal = Arc::new(Signal {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread_signal = Arc::clone(&signal);
        let thread = thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || run(&jobs, &thread_signal))?;
        Ok(Some(Background {
            signal,
            thread: Some(thread),
        }))
    }
}

fn run(jobs: &[Job], signal: &Signal) {
    // `None` for a job whose interval is too long to add to an `Instant`:
    // it never runs.
    let after = |every: Duration| Instant::now().checked_add(every);
    let mut next: Vec<Option<Instant>> = jobs.iter().map(|job| after(job.every)).collect();
    loop {
        let due = next.iter().flatten().min().copied();
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
        // A job that panics (in user code: a key's `Hash`, a value's
        // `Drop`) is abandoned for this round, not the thread: the cache's
        // state stays consistent through such panics, and the next round
        // runs.
        let now = Instant::now();
        for (job, at) in jobs.iter().zip(next.iter_mut()) {
            if at.is_some_and(|at| now >= at) {
                let _ = catch_unwind(AssertUnwindSafe(|| (job.work)(&|| signal.is_stopped())));
                *at = after(job.every);
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        *self.signal.stopped.lock() = true;
        self.signal.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The last handle can be dropped on the background thread itself
            // (a value that owns a handle, dropped while being purged): joining
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
