//! The engine's clock and its one time type, [`Timestamp`]: wall time in nanoseconds since the
//! Unix epoch, real or manual (tests).
//!
//! Governor gets the time through [`At`]: the instant the engine read once for a decision, so a
//! recipient checked against two limits reads the clock once, not three times. Governor stores a key's GCRA state (its "theoretical arrival
//! time") relative to the instant each `RateLimiter` was created; we want it absolute, so that a
//! value written by one limiter means the same to the limiter that replaces it after a reload,
//! and to the next process after a restart. [`Timestamp::duration_since`] therefore answers
//! with the time since the epoch whatever the reference point — governor only ever asks it
//! `now.duration_since(start)`, so every stored state is an absolute epoch timestamp.
//!
//! Wall time rather than a monotonic clock, because restrictions end at wall-clock instants
//! (00:00 UTC) and counters survive restarts; but wall time that does not jump when the system
//! clock is stepped: [`steady`] follows a step gradually.

use std::ops::Add;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;

pub mod steady;

/// An instant of wall time, in nanoseconds since the Unix epoch: the engine's one type for
/// time. Seconds (restrictions), hour and day numbers (notices, the day's grace) and governor's
/// instants are all read from it, never kept beside it as raw numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

/// Nanoseconds per second, hour and day.
const SECOND_NANOS: u64 = 1_000_000_000;
pub const HOUR_NANOS: u64 = 3600 * SECOND_NANOS;
pub const DAY_NANOS: u64 = 24 * HOUR_NANOS;

impl Timestamp {
    pub const fn from_nanos(nanos: u64) -> Timestamp {
        Timestamp(nanos)
    }

    /// The instant `secs` seconds after the epoch (the epoch itself for a negative value).
    pub const fn from_secs(secs: i64) -> Timestamp {
        Timestamp((if secs < 0 { 0 } else { secs as u64 }).saturating_mul(SECOND_NANOS))
    }

    /// Nanoseconds since the epoch (how GCRA states are kept).
    pub const fn nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch, as restrictions count them.
    pub const fn secs(self) -> i64 {
        (self.0 / SECOND_NANOS) as i64
    }

    /// The hour number (hours since the epoch).
    pub const fn hour(self) -> u32 {
        (self.0 / HOUR_NANOS) as u32
    }

    /// The UTC day number (days since the epoch).
    pub const fn utc_day(self) -> u32 {
        (self.0 / DAY_NANOS) as u32
    }

    /// The next 00:00 UTC after this instant.
    pub const fn next_utc_midnight(self) -> Timestamp {
        Timestamp((self.0 / DAY_NANOS + 1) * DAY_NANOS)
    }

    /// As a date and time (UTC), for restrictions and notices.
    pub fn datetime(self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(self.secs()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }
}

impl Add<Nanos> for Timestamp {
    type Output = Self;
    fn add(self, other: Nanos) -> Self {
        Timestamp(self.0.saturating_add(other.as_u64()))
    }
}

impl Reference for Timestamp {
    /// Time since the epoch, ignoring `_earlier` (see the module documentation).
    fn duration_since(&self, _earlier: Self) -> Nanos {
        Nanos::from(self.0)
    }
    fn saturating_sub(&self, duration: Nanos) -> Self {
        Timestamp(self.0.saturating_sub(duration.as_u64()))
    }
}

/// The time source of the engine.
#[derive(Debug, Clone)]
pub enum EngineClock {
    /// The system's wall clock, followed gradually when it is stepped ([`steady`]).
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

    /// The time now.
    pub fn now(&self) -> Timestamp {
        Timestamp(match self {
            EngineClock::System => steady::now_nanos(),
            EngineClock::Manual(n) => n.load(Ordering::SeqCst),
        })
    }
}

/// Governor's clock for one check: a fixed instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At(pub Timestamp);

impl Clock for At {
    type Instant = Timestamp;
    fn now(&self) -> Timestamp {
        self.0
    }
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
        let coarse = EngineClock::System.now().nanos();
        let precise = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        // The coarse clock lags the precise one by at most the kernel's tick (a few ms).
        assert!(coarse.abs_diff(precise) < 100_000_000, "{coarse} vs {precise}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(c.now().secs(), 1000);
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now().secs(), 1005);
    }

    #[test]
    fn midnight_and_day_numbers() {
        // 2026-11-22T23:59:59Z
        let t = Timestamp::from_secs(1_795_391_999);
        assert_eq!(t.next_utc_midnight(), Timestamp::from_secs(1_795_392_000));
        assert_eq!(t.utc_day() + 1, Timestamp::from_secs(1_795_392_000).utc_day());
        assert_eq!(t.hour() + 1, t.next_utc_midnight().hour());
        assert_eq!(t.datetime().unix_timestamp(), 1_795_391_999);
        assert_eq!(Timestamp::from_secs(-5), Timestamp::default());
    }

    #[test]
    fn governor_sees_absolute_time() {
        let i = Timestamp(42);
        assert_eq!(i.duration_since(Timestamp(40)), Nanos::from(42));
    }
}
