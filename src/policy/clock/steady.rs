//! The system clock as the engine reads it: wall time that does not jump when the system
//! clock is stepped.
//!
//! Restrictions end at wall-clock instants and the rate windows roll with the clock, so a
//! step of the system clock (a wrong NTP server, an administrator's `date -s`, a VM restored
//! from a snapshot) would otherwise act on them at once: a step forward by a day would lift
//! every restriction early and empty every window; a step back by a day would make every
//! account's counters lie a day in the future, holding accounts back for a day. The engine's
//! time therefore runs on the monotonic clock, anchored to the wall clock, and a [`Follower`]
//! (ticked once a second by the daemon) keeps it on the wall clock:
//! - small differences (up to [`SNAP`] ahead of the engine: the kernel's own corrections) are
//!   taken at once;
//! - a larger step, in either direction, is followed at most a tenth as fast as time passes
//!   ([`SLEW_DIVISOR`]): after a step of an hour the engine catches up in ten hours, its
//!   windows running at 0.9–1.1 of real speed meanwhile, so no restriction ends early by more
//!   than a tenth of the time it had left and none is held much longer than it should be;
//! - time the machine spent suspended (the boot-time clock moved, the monotonic one did not)
//!   really passed, and is added at once.
//!
//! The hot path reads one coarse monotonic clock and one atomic: the same cost as the coarse
//! wall clock it replaces.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// The engine's time minus the coarse monotonic clock, in nanoseconds; [`UNSET`] until the
/// first read anchors it to the wall clock.
static OFFSET: AtomicI64 = AtomicI64::new(UNSET);
const UNSET: i64 = i64::MIN;

/// Whether a [`Follower`] exists: one per process, or two would each apply a suspend.
static FOLLOWING: AtomicBool = AtomicBool::new(false);

/// Differences up to this far ahead are taken at once.
pub const SNAP: i64 = 1_000_000_000;
/// A step is followed at most 1/SLEW_DIVISOR as fast as time passes.
pub const SLEW_DIVISOR: i64 = 10;

/// The engine's time now, in nanoseconds since the epoch.
pub(super) fn now_nanos() -> u64 {
    let mono = read(Clock::MonotonicCoarse);
    let mut offset = OFFSET.load(Ordering::Relaxed);
    if offset == UNSET {
        offset = anchor(mono);
    }
    mono.saturating_add(offset).max(0) as u64
}

/// Sets the offset from the wall clock, once; a racing first read takes the winner's.
#[cold]
fn anchor(mono: i64) -> i64 {
    let offset = read(Clock::RealtimeCoarse) - mono;
    match OFFSET.compare_exchange(UNSET, offset, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => offset,
        Err(theirs) => theirs,
    }
}

/// What one tick of the [`Follower`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The wall clock minus the engine's time after this tick, in nanoseconds: non-zero while a
    /// step is being followed.
    pub behind_nanos: i64,
    /// A step of the system clock seen since the last tick (nanoseconds, positive forward):
    /// more than [`SNAP`], suspended time left out.
    pub stepped_nanos: Option<i64>,
    /// The engine has just caught up with the steps it was following.
    pub caught_up: bool,
}

/// Keeps the engine's time on the wall clock (see the module documentation). One per
/// process; `None` from [`Follower::start`] when one exists.
#[derive(Debug)]
pub struct Follower {
    last_mono: i64,
    last_boot: i64,
    /// `Tick::behind_nanos` of the last tick.
    last_behind: i64,
}

impl Follower {
    pub fn start() -> Option<Follower> {
        if FOLLOWING.swap(true, Ordering::AcqRel) {
            return None;
        }
        now_nanos();
        Some(Follower { last_mono: read(Clock::MonotonicCoarse), last_boot: read(Clock::Boottime), last_behind: 0 })
    }

    /// Reads the clocks and moves the engine's time toward the wall clock.
    pub fn tick(&mut self) -> Tick {
        let mono = read(Clock::MonotonicCoarse);
        let boot = read(Clock::Boottime);
        let wall = read(Clock::RealtimeCoarse);
        let elapsed = mono - self.last_mono;
        let slept = ((boot - self.last_boot) - elapsed).max(0);
        self.last_mono = mono;
        self.last_boot = boot;
        let engine = mono + OFFSET.load(Ordering::Relaxed);
        let ahead = wall - engine;
        let moved = adjustment(ahead, slept, elapsed);
        OFFSET.fetch_add(moved, Ordering::Relaxed);
        let behind = ahead - moved;
        // Wall and engine time pass alike; what the gap grew by, beyond time asleep, is a step.
        let jump = ahead - slept.clamp(0, ahead.max(0)) - self.last_behind;
        let tick = Tick {
            behind_nanos: behind,
            stepped_nanos: (jump.abs() > SNAP).then_some(jump),
            caught_up: self.last_behind != 0 && behind == 0,
        };
        self.last_behind = behind;
        tick
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        FOLLOWING.store(false, Ordering::Release);
    }
}

/// How far to move the engine's time, given how far the wall clock is ahead of it (`behind`,
/// negative when the wall clock is behind), the time spent suspended since the last tick and
/// the monotonic time elapsed.
pub fn adjustment(behind: i64, slept: i64, elapsed: i64) -> i64 {
    // Suspended time passed for real; what is left after it is a step (or nothing).
    let slept = slept.clamp(0, behind.max(0));
    let rest = behind - slept;
    let limit = (elapsed / SLEW_DIVISOR).max(0);
    let followed = if (0..=SNAP).contains(&rest) { rest } else { rest.clamp(-limit, limit) };
    slept + followed
}

#[derive(Clone, Copy)]
enum Clock {
    MonotonicCoarse,
    RealtimeCoarse,
    Boottime,
}

/// A clock's reading in nanoseconds. The coarse clocks are plain reads of values the kernel
/// keeps (a few milliseconds' resolution, fine for limits counted per hour and day); the two
/// coarse clocks move at the same tick, so their difference is exact.
#[cfg(target_os = "linux")]
fn read(clock: Clock) -> i64 {
    let id = match clock {
        Clock::MonotonicCoarse => libc::CLOCK_MONOTONIC_COARSE,
        Clock::RealtimeCoarse => libc::CLOCK_REALTIME_COARSE,
        Clock::Boottime => libc::CLOCK_BOOTTIME,
    };
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec, and all three clocks exist since Linux 2.6.39.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return fallback(clock);
    }
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

#[cfg(not(target_os = "linux"))]
fn read(clock: Clock) -> i64 {
    fallback(clock)
}

/// Portable clocks: the wall clock from `SystemTime`, the monotonic ones from a process-wide
/// `Instant` (no suspend detection there).
fn fallback(clock: Clock) -> i64 {
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};
    static START: OnceLock<Instant> = OnceLock::new();
    match clock {
        Clock::RealtimeCoarse => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
        Clock::MonotonicCoarse | Clock::Boottime => START.get_or_init(Instant::now).elapsed().as_nanos() as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn on_time_nothing_moves() {
        assert_eq!(adjustment(0, 0, S), 0);
    }

    #[test]
    fn small_corrections_forward_are_taken_at_once() {
        assert_eq!(adjustment(S / 2, 0, S), S / 2);
        assert_eq!(adjustment(SNAP, 0, S), SNAP);
    }

    #[test]
    fn a_step_back_never_moves_the_engine_back_by_more_than_a_tenth_of_the_time_passed() {
        // Even a few milliseconds back is followed slowly: the engine never jumps back.
        assert_eq!(adjustment(-5_000_000, 0, S), -5_000_000);
        assert_eq!(adjustment(-86_400 * S, 0, S), -S / SLEW_DIVISOR);
    }

    #[test]
    fn a_step_forward_is_followed_at_a_tenth_of_the_speed() {
        assert_eq!(adjustment(86_400 * S, 0, S), S / SLEW_DIVISOR);
        assert_eq!(adjustment(2 * S, 0, 2 * S), 2 * S / SLEW_DIVISOR);
    }

    #[test]
    fn suspended_time_is_taken_at_once_and_only_as_far_as_the_wall_clock_moved() {
        // An hour asleep, and the wall clock an hour ahead: all of it at once.
        assert_eq!(adjustment(3600 * S, 3600 * S, S), 3600 * S);
        // An hour asleep but the wall clock only a minute ahead (it was stepped back meanwhile):
        // the minute, not the hour.
        assert_eq!(adjustment(60 * S, 3600 * S, S), 60 * S);
        // Asleep for an hour and stepped forward by a day: the hour now, the day slowly.
        assert_eq!(adjustment(25 * 3600 * S, 3600 * S, S), 3600 * S + S / SLEW_DIVISOR);
    }

    #[test]
    fn a_day_step_is_caught_up_in_ten_days_of_ticks() {
        let mut behind = 86_400 * S;
        let mut ticks = 0;
        while behind != 0 {
            // Time passing moves wall and engine alike; only the adjustment closes the gap.
            behind -= adjustment(behind, 0, S);
            ticks += 1;
        }
        assert_eq!(ticks, 864_000 - 9, "the last second of the gap is snapped");
    }

    #[test]
    fn the_engine_reads_the_wall_clock_when_nothing_was_stepped() {
        let engine = now_nanos() as i64;
        let wall = read(Clock::RealtimeCoarse);
        assert!((engine - wall).abs() < 100_000_000, "{engine} vs {wall}");
    }
}
