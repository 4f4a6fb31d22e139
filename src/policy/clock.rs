//! The engine's clock: wall time in nanoseconds since the Unix epoch, real or manual (tests).
//!
//! Governor gets the time through [`At`]: the instant the engine read once for a decision, so a
//! recipient checked against two limits reads the clock once, not three times. Governor stores a key's GCRA state (its "theoretical arrival
//! time") relative to the instant each `RateLimiter` was created; we want it absolute, so that a
//! value written by one limiter means the same to the limiter that replaces it after a reload,
//! and to the next process after a restart. [`EpochInstant::duration_since`] therefore answers
//! with the time since the epoch whatever the reference point — governor only ever asks it
//! `now.duration_since(start)`, so every stored state is an absolute epoch timestamp.
//!
//! Wall time rather than a monotonic clock, because restrictions end at wall-clock instants
//! (00:00 UTC) and counters survive restarts; an NTP step shifts the rolling windows by the same
//! step, which is harmless at these time scales.

use std::ops::Add;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;

/// Nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EpochInstant(pub u64);

impl Add<Nanos> for EpochInstant {
    type Output = Self;
    fn add(self, other: Nanos) -> Self {
        EpochInstant(self.0.saturating_add(other.as_u64()))
    }
}

impl Reference for EpochInstant {
    /// Time since the epoch, ignoring `_earlier` (see the module documentation).
    fn duration_since(&self, _earlier: Self) -> Nanos {
        Nanos::from(self.0)
    }
    fn saturating_sub(&self, duration: Nanos) -> Self {
        EpochInstant(self.0.saturating_sub(duration.as_u64()))
    }
}

/// The time source of the engine.
#[derive(Debug, Clone)]
pub enum EngineClock {
    /// The system's wall clock.
    System,
    /// A clock that moves only when told to (tests).
    Manual(Arc<AtomicU64>),
}

impl EngineClock {
    /// A manual clock starting at `start`.
    pub fn manual(start: SystemTime) -> EngineClock {
        let nanos = start.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        EngineClock::Manual(Arc::new(AtomicU64::new(nanos)))
    }

    /// Moves a manual clock forward; no effect on the system clock.
    pub fn advance(&self, by: Duration) {
        if let EngineClock::Manual(n) = self {
            n.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    /// Sets a manual clock; no effect on the system clock.
    pub fn set(&self, to: SystemTime) {
        if let EngineClock::Manual(n) = self {
            n.store(to.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64, Ordering::SeqCst);
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_nanos(&self) -> u64 {
        match self {
            EngineClock::System => coarse_now_nanos(),
            EngineClock::Manual(n) => n.load(Ordering::SeqCst),
        }
    }

    /// Seconds since the epoch.
    pub fn now_secs(&self) -> i64 {
        (self.now_nanos() / 1_000_000_000) as i64
    }
}

/// Governor's clock for one check: a fixed instant, in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At(pub u64);

impl Clock for At {
    type Instant = EpochInstant;
    fn now(&self) -> EpochInstant {
        EpochInstant(self.0)
    }
}

/// The wall clock at the kernel's tick resolution (a few milliseconds), which is fine for
/// limits counted per hour and day.
///
/// Why not `SystemTime::now`: a recipient reads the clock three times (the engine once,
/// governor once per limit), and the precise clock's read costs more than the coarse one's,
/// which is a plain read of a value the kernel keeps current.
#[cfg(target_os = "linux")]
fn coarse_now_nanos() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME_COARSE exists since Linux 2.6.32
    // and a failure is handled below.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        return precise_now_nanos();
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(not(target_os = "linux"))]
fn coarse_now_nanos() -> u64 {
    precise_now_nanos()
}

fn precise_now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// Nanoseconds per hour and per day.
pub const HOUR_NANOS: u64 = 3_600_000_000_000;
pub const DAY_NANOS: u64 = 24 * HOUR_NANOS;

/// The UTC day number (days since the epoch) of an instant.
pub fn utc_day(nanos: u64) -> u32 {
    (nanos / DAY_NANOS) as u32
}

/// The hour number (hours since the epoch) of an instant.
pub fn hour_number(nanos: u64) -> u32 {
    (nanos / HOUR_NANOS) as u32
}

/// The next 00:00 UTC after `nanos`, in seconds since the epoch.
pub fn next_utc_midnight_secs(nanos: u64) -> i64 {
    (i64::from(utc_day(nanos)) + 1) * 86_400
}

/// UTC, RFC 3339, whole seconds: how a time is shown in the API, the notices and the log.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let coarse = EngineClock::System.now_nanos();
        let precise = precise_now_nanos();
        // The coarse clock lags the precise one by at most the kernel's tick (a few ms).
        assert!(coarse.abs_diff(precise) < 100_000_000, "{coarse} vs {precise}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(c.now_secs(), 1000);
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now_secs(), 1005);
    }

    #[test]
    fn midnight_and_day_numbers() {
        // 2026-11-22T23:59:59Z
        let n = 1_795_391_999u64 * 1_000_000_000;
        assert_eq!(next_utc_midnight_secs(n), 1_795_392_000);
        assert_eq!(utc_day(n) + 1, utc_day(n + 1_000_000_000));
    }

    #[test]
    fn governor_sees_absolute_time() {
        let i = EpochInstant(42);
        assert_eq!(i.duration_since(EpochInstant(40)), Nanos::from(42));
    }
}
