//! The one place the crate names its synchronisation primitives.
//!
//! Every other module imports locks, condition variables, atomics, `Arc` and
//! threads from here. Normally they are `parking_lot` and `std`; under
//! `--cfg loom` they are loom's instrumented versions, so the model checker
//! sees every lock, wait and wake-up the cache performs (parking_lot is
//! invisible to loom: without this shim a lost wake-up would pass).
//!
//! Both arms expose the parking_lot surface: `lock()` returns the guard
//! directly (no poisoning), and a condition variable waits on `&mut guard`.

#[cfg(not(loom))]
mod inner {
    pub(crate) use parking_lot::{Condvar, Mutex};
    pub(crate) use std::sync::Arc;
    pub(crate) mod atomic {
        pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    }
    pub(crate) mod thread {
        pub(crate) use std::thread::{Builder, JoinHandle, current, yield_now};
    }

    /// Unlocks and hands the lock straight to a waiting thread, if any,
    /// rather than letting the unlocking thread take it right back: for a
    /// thread that works through a shard in batches.
    pub(crate) fn unlock_fair<T>(guard: parking_lot::MutexGuard<'_, T>) {
        parking_lot::MutexGuard::unlock_fair(guard);
    }
}

#[cfg(loom)]
mod inner {
    use std::ops::{Deref, DerefMut};
    use std::time::Duration;

    pub(crate) use loom::sync::Arc;
    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    }
    pub(crate) mod thread {
        pub(crate) use loom::thread::{Builder, JoinHandle, current, yield_now};
    }

    /// loom's mutex behind parking_lot's surface. Nothing runs user code while
    /// holding one of the crate's locks, so poisoning cannot happen; it is
    /// stripped rather than propagated.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Self::new(T::default())
        }
    }

    /// The guard is an `Option` only so that [`Condvar::wait`] can hand it to
    /// loom by value and put it back; it is `Some` whenever user code sees it.
    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0
                .as_deref()
                .expect("guard is present outside Condvar::wait")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0
                .as_deref_mut()
                .expect("guard is present outside Condvar::wait")
        }
    }

    /// loom's mutex has no fairness to choose: a plain unlock.
    pub(crate) fn unlock_fair<T>(guard: MutexGuard<'_, T>) {
        drop(guard);
    }

    /// What a timed wait reports, as in parking_lot.
    pub(crate) struct WaitTimeoutResult(bool);

    impl WaitTimeoutResult {
        pub(crate) fn timed_out(&self) -> bool {
            self.0
        }
    }

    /// loom's condition variable behind parking_lot's surface. loom has no
    /// clock: a timed wait only ends when notified, so every path that relies
    /// on a timeout to make progress must also notify.
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("guard is present");
            guard.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
        }

        pub(crate) fn wait_for<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            timeout: Duration,
        ) -> WaitTimeoutResult {
            let inner = guard.0.take().expect("guard is present");
            let (inner, result) = self
                .0
                .wait_timeout(inner, timeout)
                .unwrap_or_else(|e| e.into_inner());
            guard.0 = Some(inner);
            WaitTimeoutResult(result.timed_out())
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

pub(crate) use inner::*;
