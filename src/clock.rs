//! Time sources for expiry.
//!
//! A cache reads its clock to stamp each write with a deadline and to decide
//! whether an entry is still live. The default is the monotonic clock
//! ([`MonotonicClock`], [`Instant::now`]); tests plug in a [`ManualClock`] and
//! move time by hand, so expiry is checked exactly, without sleeping.
//!
//! ```
//! use std::time::Duration;
//! use idemcache::Cache;
//! use idemcache::clock::ManualClock;
//!
//! let clock = ManualClock::new();
//! let cache: Cache<&str, u32> = Cache::builder()
//!     .time_to_live(Duration::from_secs(10))
//!     .clock(clock.clone())
//!     .build()?;
//!
//! cache.insert("order-1", 7);
//! clock.advance(Duration::from_secs(9));
//! assert_eq!(cache.get("order-1"), Some(7));
//! clock.advance(Duration::from_secs(1)); // now == written + TTL: expired
//! assert_eq!(cache.get("order-1"), None);
//! # Ok::<(), idemcache::BuildError>(())
//! ```

use std::any::Any;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use crate::sync::Arc;
use crate::sync::atomic::{AtomicU64, Ordering};

/// A source of monotonic time for a cache.
///
/// Implement it to drive expiry from your own notion of time (a simulation,
/// a coarse clock shared with the rest of a server). Time must never go
/// backwards: a clock that does would make expired entries live again.
///
/// # Examples
///
/// ```
/// use std::time::Instant;
/// use idemcache::clock::Clock;
///
/// /// A clock that reads the system's monotonic clock, as the default does.
/// struct Monotonic;
///
/// impl Clock for Monotonic {
///     fn now(&self) -> Instant {
///         Instant::now()
///     }
/// }
///
/// let cache: idemcache::Cache<u64, u64> = idemcache::Cache::builder()
///     .clock(Monotonic)
///     .build()
///     .unwrap();
/// cache.insert(1, 2);
/// assert_eq!(cache.get(&1), Some(2));
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current time. Successive calls must never go backwards.
    fn now(&self) -> Instant;

    /// The wall-clock time matching [`now`](Self::now). Used only where a
    /// deadline must mean something outside this process: in
    /// [snapshots](crate::Snapshot) (which outlive a restart, where an
    /// `Instant` means nothing) and in
    /// [`Replay::expires_at`](crate::Replay::expires_at). The default reads
    /// the system clock; a simulated clock overrides it so that its
    /// snapshots expire in simulated time.
    fn system_time(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The default clock: the operating system's monotonic clock.
///
/// Writes read it exactly ([`Instant::now`]) to set deadlines. On Linux,
/// reads compare against `CLOCK_MONOTONIC_COARSE`, the same clock as of the
/// last timer tick, which is several times cheaper on the hit path: an
/// entry is never seen expired early, and seen expired at most one tick
/// late ([`default_clock_granularity`], typically 1–4 ms). Elsewhere reads
/// use [`Instant::now`] too (exact). A [`ManualClock`] is always exact.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to, for tests and simulations.
///
/// Clones share one time: advance any clone and every cache built with any
/// of them sees the new time. A cache built with a `ManualClock` measures
/// expiry exactly, to the nanosecond.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idemcache::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let other = clock.clone();
/// let start = clock.now();
/// other.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now() - start, Duration::from_millis(1500));
/// assert_eq!(clock.elapsed(), Duration::from_millis(1500));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    base: Instant,
    /// The wall-clock time at `base`: [`Clock::system_time`] moves with
    /// the manual time, so snapshots taken under it expire when it advances.
    system_base: SystemTime,
    /// Nanoseconds since `base`; saturates instead of wrapping.
    offset_nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at the moment of the call; it moves only through
    /// [`advance`](Self::advance).
    ///
    /// ```
    /// use idemcache::clock::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// assert_eq!(clock.elapsed(), std::time::Duration::ZERO);
    /// ```
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            system_base: SystemTime::now(),
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves time forward by `by`, for this clock and all its clones.
    ///
    /// Time saturates at about 584 years after the clock was made rather
    /// than wrapping around.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::clock::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// let clone = clock.clone();
    /// clone.advance(Duration::from_secs(3));
    /// assert_eq!(clock.elapsed(), Duration::from_secs(3)); // clones share time
    /// ```
    pub fn advance(&self, by: Duration) {
        let by = duration_to_nanos(by);
        // A CAS loop rather than fetch_add so that time saturates instead of
        // wrapping back to the past.
        let mut current = self.offset_nanos.load(Ordering::Acquire);
        loop {
            let next = current.saturating_add(by);
            match self.offset_nanos.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// How far this clock has been advanced since it was made.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::clock::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_millis(1500));
    /// assert_eq!(clock.elapsed(), Duration::from_millis(1500));
    /// ```
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset())
    }

    fn offset(&self) -> u64 {
        self.offset_nanos.load(Ordering::Acquire)
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let offset = self.elapsed();
        // Only a clock advanced by centuries can overflow `Instant`; stay at
        // the furthest representable point rather than panicking or going
        // backwards.
        furthest_after(self.base, offset, Instant::checked_add)
    }

    /// The system time when the clock was made, plus the time it has been
    /// advanced by (saturating at the furthest representable time).
    fn system_time(&self) -> SystemTime {
        let offset = self.elapsed();
        system_time_after(self.system_base, offset)
    }
}

/// `system_now + after`, saturating at the latest representable time.
pub(crate) fn system_time_after(system_now: SystemTime, after: Duration) -> SystemTime {
    furthest_after(system_now, after, SystemTime::checked_add)
}

/// `base + offset`, or the latest representable time before it: never a
/// panic, never a step backwards.
fn furthest_after<T: Copy>(
    base: T,
    offset: Duration,
    checked_add: fn(&T, Duration) -> Option<T>,
) -> T {
    // Moves towards `base + offset` in steps that halve whenever one would
    // overflow: each success shortens what is left, each failure the step.
    let mut at = base;
    let mut left = offset;
    let mut step = offset;
    while !left.is_zero() && !step.is_zero() {
        step = step.min(left);
        match checked_add(&at, step) {
            Some(next) => {
                at = next;
                left -= step;
            }
            None => step /= 2,
        }
    }
    at
}

/// Nanoseconds in `d`, saturating at `u64::MAX` (about 584 years).
fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A point in a cache's time: nanoseconds since the cache was built, read
/// from its clock. Deadlines and leases are stored as these (8 bytes,
/// compared with one instruction) rather than as `Instant`s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub(crate) struct CacheTime(u64);

impl CacheTime {
    /// Later than any time a cache reaches: the deadline of what never
    /// lapses (a `get_or_compute` leader has no lease).
    pub(crate) const NEVER: CacheTime = CacheTime(u64::MAX);

    pub(crate) const fn from_nanos(nanos: u64) -> Self {
        CacheTime(nanos)
    }

    pub(crate) const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The latest time a lease can end: one before [`NEVER`](Self::NEVER),
    /// which means "no lease".
    pub(crate) const LATEST: CacheTime = CacheTime(u64::MAX - 1);

    /// `self + span`, saturating at [`NEVER`](Self::NEVER).
    #[inline]
    pub(crate) fn after(self, span: Span) -> CacheTime {
        CacheTime(self.0.saturating_add(span.0))
    }

    /// How long from `self` until `later`; zero if `later` is not later.
    #[inline]
    pub(crate) fn until(self, later: CacheTime) -> Duration {
        Duration::from_nanos(later.0.saturating_sub(self.0))
    }
}

/// A length of cache time (a time-to-live, a lease), converted from a
/// `Duration` once, saturating at about 584 years.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Span(u64);

impl Span {
    pub(crate) fn from_duration(d: Duration) -> Self {
        Span(duration_to_nanos(d))
    }
}

/// The cache's view of time: nanoseconds since the cache was built, read
/// from whichever clock it was given.
///
/// Deadlines are stored as these `u64` timestamps (8 bytes, compared with
/// one instruction) instead of `Instant`s.
pub(crate) enum TimeSource {
    /// The operating system's monotonic clock. Writes (which set deadlines)
    /// read it exactly; reads (which only compare against deadlines) read
    /// its coarse variant where the platform has one: see [`coarse`].
    Monotonic {
        epoch: Instant,
        #[cfg(target_os = "linux")]
        coarse_epoch: u64,
    },
    /// A `ManualClock` is read through its counter directly: exact, and
    /// immune to `Instant` overflow.
    Manual {
        clock: ManualClock,
        epoch_offset: u64,
    },
    Custom {
        clock: Box<dyn Clock>,
        epoch: Instant,
    },
}

impl TimeSource {
    pub(crate) fn monotonic() -> Self {
        // The coarse clock lags the precise one by less than a tick, so its
        // epoch is taken first: coarse time since it never exceeds precise
        // time since `epoch`.
        #[cfg(target_os = "linux")]
        let coarse_epoch = coarse::now_nanos();
        TimeSource::Monotonic {
            epoch: Instant::now(),
            #[cfg(target_os = "linux")]
            coarse_epoch,
        }
    }

    pub(crate) fn from_clock<C: Clock>(clock: C) -> Self {
        if let Some(manual) = (&clock as &dyn Any).downcast_ref::<ManualClock>() {
            return TimeSource::Manual {
                epoch_offset: manual.offset(),
                clock: manual.clone(),
            };
        }
        if (&clock as &dyn Any).is::<MonotonicClock>() {
            return Self::monotonic();
        }
        let epoch = clock.now();
        TimeSource::Custom {
            clock: Box::new(clock),
            epoch,
        }
    }

    /// Nanoseconds since this cache's epoch, exactly: for setting deadlines.
    #[inline]
    pub(crate) fn now(&self) -> CacheTime {
        CacheTime(match self {
            TimeSource::Monotonic { epoch, .. } => elapsed_nanos(*epoch, Instant::now()),
            TimeSource::Manual {
                clock,
                epoch_offset,
            } => clock.offset().saturating_sub(*epoch_offset),
            TimeSource::Custom { clock, epoch } => elapsed_nanos(*epoch, clock.now()),
        })
    }

    /// The time for deciding whether an entry is still live: never ahead
    /// of [`now`](Self::now), and behind it by at most the coarse clock's
    /// granularity. Since deadlines come from `now`, an entry is never seen
    /// expired early, and seen expired at most that granularity late.
    #[inline]
    pub(crate) fn now_for_reads(&self) -> CacheTime {
        match self {
            #[cfg(target_os = "linux")]
            TimeSource::Monotonic { coarse_epoch, .. } => {
                CacheTime(coarse::now_nanos().saturating_sub(*coarse_epoch))
            }
            _ => self.now(),
        }
    }

    /// A real-time sleep after which this clock has surely reached `at`,
    /// as reads see it: for the monotonic clock, the time until `at` plus
    /// one coarse tick; for manual and custom clocks, whose time need not
    /// follow real time, a short slice after which the sleeper looks again.
    pub(crate) fn real_time_until(&self, at: CacheTime) -> Duration {
        const RECHECK: Duration = Duration::from_millis(20);
        let wanted = self.now().until(at);
        match self {
            // Reads compare against the coarse clock, which lags by up to
            // a tick: sleep that much longer, so a reader that wakes sees
            // the deadline passed rather than spinning until it does.
            TimeSource::Monotonic { .. } => wanted.saturating_add(default_clock_granularity()),
            TimeSource::Manual { .. } | TimeSource::Custom { .. } => wanted.min(RECHECK),
        }
    }

    /// The wall-clock time matching [`now`](Self::now): the system clock,
    /// or the clock's own notion of it (a manual clock's moves with it).
    pub(crate) fn system_now(&self) -> SystemTime {
        match self {
            TimeSource::Monotonic { .. } => SystemTime::now(),
            TimeSource::Manual { clock, .. } => clock.system_time(),
            TimeSource::Custom { clock, .. } => clock.system_time(),
        }
    }

    pub(crate) fn describe(&self) -> &'static str {
        match self {
            TimeSource::Monotonic { .. } => "monotonic",
            TimeSource::Manual { .. } => "manual",
            TimeSource::Custom { .. } => "custom",
        }
    }
}

/// `CLOCK_MONOTONIC_COARSE`: the monotonic clock as of the last timer
/// tick. Reading it costs a few nanoseconds and, unlike the precise clock,
/// no `rdtsc`, which would stop consecutive lookups from overlapping their
/// cache misses (measured: 463 → ~290 ns per `get` on 1M String keys).
#[cfg(target_os = "linux")]
pub(crate) mod coarse {
    use std::time::Duration;

    /// Nanoseconds on the coarse monotonic clock.
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) fn now_nanos() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable `timespec` that outlives the
        // call, and `clock_gettime` writes nothing else. The clock id is
        // valid on every Linux since 2.6.32; were it rejected, `ts` would
        // stay zero and reads would use an earlier time, which is never
        // early (only later) expiry.
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
        }
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    }

    /// The coarse clock's granularity (one timer tick, typically 1 to 4 ms).
    #[cfg(not(miri))]
    #[allow(unsafe_code)]
    pub(crate) fn granularity() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in `now_nanos`; `clock_getres` writes only to `ts`.
        unsafe {
            libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Miri cannot call `clock_getres` (it does emulate `clock_gettime`,
    /// so the read path above is still checked under miri): report the
    /// largest common tick.
    #[cfg(miri)]
    pub(crate) fn granularity() -> Duration {
        Duration::from_millis(4)
    }
}

/// How late the default clock may see an entry expire: the coarse clock's
/// granularity where reads use it (Linux), zero elsewhere.
///
/// ```
/// // An entry is seen expired at most this late with the default clock.
/// assert!(idemcache::clock::default_clock_granularity() < std::time::Duration::from_millis(100));
/// ```
pub fn default_clock_granularity() -> Duration {
    #[cfg(target_os = "linux")]
    {
        coarse::granularity()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Duration::ZERO
    }
}

#[inline]
fn elapsed_nanos(epoch: Instant, now: Instant) -> u64 {
    duration_to_nanos(now.saturating_duration_since(epoch))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_saturates_instead_of_wrapping() {
        let clock = ManualClock::new();
        clock.advance(Duration::MAX);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.elapsed(), Duration::from_nanos(u64::MAX));
        // Reading it never panics and never goes back before the start.
        assert!(clock.now() >= clock.base);
    }

    #[test]
    fn wall_clock_offsets_are_exact_or_saturate() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let offset = Duration::from_nanos(123_456_789_012);
        assert_eq!(system_time_after(base, offset), base + offset);
        assert_eq!(system_time_after(base, Duration::ZERO), base);
        // Far past the representable range: the latest time there is.
        let far = system_time_after(base, Duration::MAX);
        assert!(far > base);
        assert!(far.checked_add(Duration::from_secs(1)).is_none());

        let clock = ManualClock::new();
        let start = clock.system_time();
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.system_time(), start + Duration::from_secs(90));
    }

    #[test]
    fn manual_time_source_counts_from_the_build() {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(5));
        let source = TimeSource::from_clock(clock.clone());
        assert_eq!(source.now().as_nanos(), 0);
        clock.advance(Duration::from_nanos(7));
        assert_eq!(source.now().as_nanos(), 7);
        assert_eq!(source.describe(), "manual");
    }

    #[test]
    fn custom_clock_goes_through_the_trait() {
        struct Fixed(Instant);
        impl Clock for Fixed {
            fn now(&self) -> Instant {
                self.0
            }
        }
        let source = TimeSource::from_clock(Fixed(Instant::now()));
        assert_eq!(source.now().as_nanos(), 0);
        assert_eq!(source.describe(), "custom");
    }
}
