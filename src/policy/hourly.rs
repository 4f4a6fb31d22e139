//! The per-hour series an account's panel plots: for each of the last 23 whole hours, the most
//! recipients the account had in use against each hourly limit (external, internal) among the
//! samples taken in that hour — or "not recorded".
//!
//! Kept off the decision path on purpose: a message never touches this table. A sampler
//! ([`super::engine::Engine::sample_hourly`], run every [`SAMPLE_EVERY`] by the daemon) walks
//! the account table, and every account with recipients in use against an hourly limit (its
//! TAT after now) gets that figure written into its ring here; the highest sample of an hour
//! is the hour's figure. An account with nothing in use takes no room, and one whose 24 slots
//! are all zero is dropped; past [`MAX_SAMPLED_ACCOUNTS`] a new account is not taken in and the
//! hour is marked incomplete, so that every account outside the table reads "not recorded"
//! for that hour rather than 0.
//!
//! What is shown is only what was seen: an hour is recorded when the sampler ran through it
//! from its start to its end with no gap longer than [`MAX_GAP`] between two samples. Hours
//! before the process started (the series is not kept across a restart), the hour it started
//! in and hours a gap broke read "not recorded". Within a recorded hour, an account absent
//! from the table had nothing in use at any sample: 0.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use compact_str::CompactString;

use super::clock::{HOUR_NANOS, Timestamp};

/// How often the sampler walks the account table. A burst is read at most this long after it,
/// so an hour's figure can be up to `limit × SAMPLE_EVERY / 1 h` below the true peak.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// A longer gap between two samples (a stalled process, a stopped one, a clock step) makes the
/// hours it touches "not recorded".
pub const MAX_GAP: Duration = Duration::from_secs(3 * 60);
/// Whole hours the series holds before the current one.
pub const HOURS: usize = 23;
/// Slots of an account's ring: the whole hours and the current one.
const SLOTS: usize = HOURS + 1;
/// Most accounts the table holds (294 bytes each with the map's overhead, measured by
/// `tests/hourly_memory.rs`): past it, accounts not yet in the table are not sampled and the hour is marked
/// incomplete.
pub const MAX_SAMPLED_ACCOUNTS: usize = 100_000;

/// Recipients in use against the external and the internal hourly limit.
pub type InUse = [u32; 2];

/// One whole hour of an account's series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourSample {
    /// The hour's first instant.
    pub start: Timestamp,
    /// The highest sample of the hour; `None`: not recorded.
    pub in_use: Option<InUse>,
}

/// What one pass of the sampler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// Accounts with something in use, written into the table.
    pub sampled: usize,
    /// Accounts with something in use left out because the table was full.
    pub left_out: usize,
    /// Accounts dropped from the table: 24 hours of zeros.
    pub dropped: usize,
    /// Accounts in the table after the pass.
    pub held: usize,
}

/// How far the sampler saw an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Coverage {
    /// No sample in it (or an hour of an earlier day in the same slot).
    #[default]
    Unseen,
    /// Sampled from its start, no gap so far; not over yet.
    Open,
    /// Sampled from its start to its end, no gap: recorded.
    Whole,
    /// A gap (or the first sample of the process) fell into it.
    Broken,
}

#[derive(Debug, Clone, Copy, Default)]
struct HourState {
    hour: u32,
    coverage: Coverage,
    /// The table was full at a sample of the hour: an account outside it may have been left out.
    full: bool,
}

/// One account's ring: the highest sample of each hour, for the hours up to `last_hour`.
#[derive(Debug, Clone)]
struct Series {
    /// The first hour whose slot holds every sample of the account (before it, the account was
    /// outside the table).
    first_hour: u32,
    /// The newest hour with a sample above zero; later hours are 0.
    last_hour: u32,
    slots: [InUse; SLOTS],
}

impl Series {
    /// The slot of `hour` (less than a day before `last_hour`, or later), with the hours since
    /// `last_hour` zeroed.
    fn slot_for(&mut self, hour: u32) -> &mut InUse {
        if hour > self.last_hour {
            let stale = (hour - self.last_hour).min(SLOTS as u32);
            for h in hour + 1 - stale..=hour {
                self.slots[h as usize % SLOTS] = [0, 0];
            }
            self.last_hour = hour;
        }
        &mut self.slots[hour as usize % SLOTS]
    }

    /// The figure of `hour`: `None` when the account was outside the table then.
    fn get(&self, hour: u32) -> Option<InUse> {
        if hour < self.first_hour {
            None
        } else if hour > self.last_hour {
            Some([0, 0])
        } else if self.last_hour - hour >= SLOTS as u32 {
            // Its slot has been taken by a later hour.
            None
        } else {
            Some(self.slots[hour as usize % SLOTS])
        }
    }
}

struct Inner {
    accounts: HashMap<CompactString, Series, ahash::RandomState>,
    hours: [HourState; SLOTS],
    last_sample: Option<Timestamp>,
}

impl Inner {
    fn state(&self, hour: u32) -> HourState {
        let s = self.hours[hour as usize % SLOTS];
        if s.hour == hour { s } else { HourState { hour, ..HourState::default() } }
    }

    fn state_mut(&mut self, hour: u32) -> &mut HourState {
        let s = &mut self.hours[hour as usize % SLOTS];
        if s.hour != hour {
            *s = HourState { hour, ..HourState::default() };
        }
        s
    }

    /// Notes a sample at `now`: which hours it closes, opens or breaks.
    fn note_sample(&mut self, now: Timestamp) {
        let hour = now.hour();
        let gap = MAX_GAP.as_nanos() as u64;
        match self.last_sample {
            Some(prev) if prev <= now && now.nanos() - prev.nanos() <= gap => {
                if prev.hour() < hour {
                    // A gap of minutes crosses at most one boundary: the previous hour ran to its end.
                    let before = self.state_mut(prev.hour());
                    if before.coverage == Coverage::Open {
                        before.coverage = Coverage::Whole;
                    }
                }
                let current = self.state_mut(hour);
                if current.coverage == Coverage::Unseen {
                    current.coverage = Coverage::Open;
                }
            }
            _ => self.state_mut(hour).coverage = Coverage::Broken,
        }
        self.last_sample = Some(now);
    }
}

/// The accounts' per-hour series, and how far the sampler saw each hour.
pub struct HourlyTable {
    inner: Mutex<Inner>,
    cap: usize,
}

impl Default for HourlyTable {
    fn default() -> Self {
        HourlyTable::with_cap(MAX_SAMPLED_ACCOUNTS)
    }
}

impl HourlyTable {
    /// A table holding at most `cap` accounts.
    pub fn with_cap(cap: usize) -> HourlyTable {
        HourlyTable {
            inner: Mutex::new(Inner {
                accounts: HashMap::default(),
                hours: [HourState::default(); SLOTS],
                last_sample: None,
            }),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere leaves figures that are still figures: go on with them.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One pass of the sampler at `now`: `samples` are the accounts with something in use
    /// (others are 0 by being absent). Drops the accounts with nothing above zero in the last
    /// 24 hours when a new hour has begun.
    pub fn record(&self, now: Timestamp, samples: impl IntoIterator<Item = (CompactString, InUse)>) -> Pass {
        let hour = now.hour();
        let mut inner = self.lock();
        let new_hour = inner.last_sample.is_none_or(|p| p.hour() != hour);
        inner.note_sample(now);
        let mut pass = Pass::default();
        if new_hour {
            let before = inner.accounts.len();
            inner.accounts.retain(|_, s| hour - s.last_hour.min(hour) < SLOTS as u32);
            pass.dropped = before - inner.accounts.len();
            if inner.accounts.capacity() > 4 * inner.accounts.len().max(1024) {
                inner.accounts.shrink_to_fit();
            }
        }
        for (account, in_use) in samples {
            if in_use == [0, 0] {
                continue;
            }
            let held = inner.accounts.len();
            let full_before = inner.state(hour).full;
            let series = match inner.accounts.get_mut(&account) {
                Some(s) => s,
                None if held < self.cap => {
                    // Under a full table earlier this hour, it may have been left out then.
                    let first_hour = if full_before { hour + 1 } else { hour };
                    inner.accounts.entry(account).or_insert(Series {
                        first_hour,
                        last_hour: hour,
                        slots: [[0, 0]; SLOTS],
                    })
                }
                None => {
                    inner.state_mut(hour).full = true;
                    pass.left_out += 1;
                    continue;
                }
            };
            if hour + SLOTS as u32 <= series.last_hour {
                // A clock set back by more than a day: its slot belongs to a later hour.
                continue;
            }
            let slot = series.slot_for(hour);
            slot[0] = slot[0].max(in_use[0]);
            slot[1] = slot[1].max(in_use[1]);
            pass.sampled += 1;
        }
        pass.held = inner.accounts.len();
        pass
    }

    /// The account's series over the [`HOURS`] whole hours before `now`'s, oldest first.
    pub fn series(&self, account: &str, now: Timestamp) -> Vec<HourSample> {
        let inner = self.lock();
        let series = inner.accounts.get(account);
        let current = now.hour();
        (current.saturating_sub(HOURS as u32)..current)
            .map(|hour| {
                let state = inner.state(hour);
                let in_use = (state.coverage == Coverage::Whole)
                    .then(|| match series.and_then(|s| s.get(hour)) {
                        Some(v) => Some(v),
                        None if state.full => None,
                        None => Some([0, 0]),
                    })
                    .flatten();
                HourSample { start: Timestamp::from_nanos(u64::from(hour) * HOUR_NANOS), in_use }
            })
            .collect()
    }

    /// Whether the table holds a series of `account` (something in use within the last 24 h).
    pub fn holds(&self, account: &str) -> bool {
        self.lock().accounts.contains_key(account)
    }

    /// Accounts in the table.
    pub fn len(&self) -> usize {
        self.lock().accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60 * 1_000_000_000;
    /// 2026-11-22 10:00:00 UTC.
    const START: u64 = 1_795_860_000 * 1_000_000_000;

    fn at(minutes: u64) -> Timestamp {
        Timestamp::from_nanos(START + minutes * MINUTE)
    }

    fn sample(account: &str, ext: u32, int: u32) -> Vec<(CompactString, InUse)> {
        vec![(account.into(), [ext, int])]
    }

    /// Samples every minute from `from` to `to` (minutes after START, `to` excluded), with
    /// what `f` says is in use at each minute.
    fn run(table: &HourlyTable, from: u64, to: u64, f: impl Fn(u64) -> Vec<(CompactString, InUse)>) {
        for m in from..to {
            table.record(at(m), f(m));
        }
    }

    fn figures(table: &HourlyTable, account: &str, now: Timestamp) -> Vec<Option<InUse>> {
        table.series(account, now).into_iter().map(|h| h.in_use).collect()
    }

    #[test]
    fn an_hour_is_the_highest_sample_and_only_whole_hours_are_recorded() {
        let table = HourlyTable::default();
        // Started at 10:00 exactly: the first sample of the process breaks its hour anyway.
        run(&table, 0, 4 * 60 + 1, |m| match m {
            // 11:05–11:20 a burst rising to 40, read down again.
            65..80 => sample("a@x", (m - 60) as u32 * 2, 1),
            // 12:30 one sample of internal mail.
            150 => sample("a@x", 0, 7),
            _ => vec![],
        });
        let now = at(4 * 60 + 5); // 14:05
        let series = table.series("a@x", now);
        assert_eq!(series.len(), HOURS);
        assert_eq!(series[HOURS - 1].start, at(3 * 60), "the newest whole hour is 13:00");
        let f = figures(&table, "a@x", now);
        assert_eq!(f[HOURS - 4], None, "10:00, the hour the sampler started in");
        assert_eq!(f[HOURS - 3], Some([38, 1]), "11:00: the highest sample");
        assert_eq!(f[HOURS - 2], Some([0, 7]), "12:00");
        assert_eq!(f[HOURS - 1], Some([0, 0]), "13:00: nothing in use");
        assert!(f[..HOURS - 4].iter().all(Option::is_none), "before the start: not recorded");
        // An account never seen is 0 in the recorded hours, not recorded in the others.
        assert_eq!(figures(&table, "b@x", now)[HOURS - 3..], [Some([0, 0]); 3]);
        assert_eq!(figures(&table, "b@x", now)[HOURS - 4], None);
    }

    #[test]
    fn a_gap_or_an_unfinished_hour_is_not_recorded() {
        let table = HourlyTable::default();
        run(&table, 0, 120, |_| sample("a@x", 3, 0));
        // 12:00–12:29 sampled, then nothing until 12:40: 12:00 is broken by the gap.
        run(&table, 120, 150, |_| sample("a@x", 4, 0));
        run(&table, 160, 200, |_| sample("a@x", 5, 0));
        let f = figures(&table, "a@x", at(200));
        assert_eq!(f[HOURS - 2..], [Some([3, 0]), None], "11:00 whole; 12:00 broken by the gap");
        // The process stopped at 13:19: 13:00 never ran to its end.
        let f = figures(&table, "a@x", at(300));
        assert_eq!(f[HOURS - 1], None, "14:00 has no sample");
        assert_eq!(f[HOURS - 2], None, "13:00 unfinished");
        // A clock set back breaks the hour it lands in.
        let table = HourlyTable::default();
        run(&table, 0, 130, |_| vec![]);
        table.record(at(125), vec![]);
        run(&table, 126, 190, |_| vec![]);
        let f = figures(&table, "a@x", at(190));
        assert_eq!(f[HOURS - 2..], [Some([0, 0]), None]);
    }

    #[test]
    fn idle_accounts_leave_and_the_ring_wraps() {
        let table = HourlyTable::default();
        let busy = |m: u64| match m {
            60 => sample("a@x", 9, 0),   // 11:00 on the first day
            1470 => sample("a@x", 1, 0), // 10:30 on the next
            _ => vec![],
        };
        run(&table, 0, 1561, busy);
        let f = figures(&table, "a@x", at(1561)); // 12:01 on the second day
        assert_eq!(f[HOURS - 2..], [Some([1, 0]), Some([0, 0])], "11:00 is not read from the day before's slot");
        assert!(f[..HOURS - 2].iter().all(|v| *v == Some([0, 0])), "{f:?}");
        // 23 hours after its last sample above zero it is still held; at 24, dropped.
        run(&table, 1561, 2880, |_| vec![]);
        assert_eq!(table.len(), 1);
        let pass = table.record(at(2880), vec![]);
        assert_eq!((pass.dropped, pass.held), (1, 0));
        run(&table, 2881, 2941, |_| vec![]);
        let f = figures(&table, "a@x", at(2941));
        assert!(f.iter().all(|v| *v == Some([0, 0])), "{f:?}");
    }

    #[test]
    fn past_the_cap_accounts_outside_read_not_recorded() {
        let table = HourlyTable::with_cap(2);
        let three = |m: u64| {
            let mut s = sample("a@x", 1, 0);
            s.extend(sample("b@x", 2, 0));
            if m >= 90 {
                s.extend(sample("c@x", 3, 0));
            }
            s
        };
        run(&table, 0, 180, three);
        let pass = table.record(at(180), three(180));
        assert_eq!((pass.sampled, pass.left_out, pass.held), (2, 1, 2));
        let now = at(181);
        assert_eq!(figures(&table, "a@x", now)[HOURS - 2..], [Some([1, 0]), Some([1, 0])]);
        assert_eq!(figures(&table, "c@x", now)[HOURS - 2..], [None, None], "left out: not recorded");
        assert_eq!(figures(&table, "d@x", now)[HOURS - 2..], [None, None], "in a full hour, unknown");
        assert_eq!(figures(&table, "d@x", now)[HOURS - 3], None, "10:00, the hour the sampler started in");
    }

    #[test]
    fn a_slot_is_small() {
        // The table's bytes per account beyond its key: the README's figure builds on it.
        assert_eq!(std::mem::size_of::<Series>(), 200);
    }
}
