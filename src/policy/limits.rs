//! Per-account recipient limits: GCRA (governor) with the state kept in our own account records.
//!
//! # Design
//!
//! governor's `RateLimiter` has one quota for all its keys (its issue #193) and keeps state in
//! its own store without persistence (#179). We use its GCRA through its `StateStore` trait
//! instead, with the state — one `u64` "theoretical arrival time" (TAT) per limit kind — living
//! in *our* [`AccountRecord`], which sits in one `DashMap` keyed by the canonical account:
//!
//! - **One quota per policy and kind.** [`Limiters`] holds a `RateLimiter` for each
//!   (policy, kind) with a non-zero limit. A check copies the record's TAT into a `Cell`, which
//!   is the limiter's key; [`CellStore`] reads and writes that cell. So (a) every policy rule has
//!   its own quotas over the same records.
//! - **All or nothing.** A recipient is checked against its hourly kind and the daily limit on
//!   local cells; only when every check passes are the cells written back. A refused recipient
//!   spends nothing.
//! - **Absolute time.** TATs are nanoseconds since the Unix epoch (see `policy::clock`), so they
//!   mean the same to every limiter, before and after a reload, and in the next process.
//! - **Reload keeps what was consumed** (b): [`convert_for_reload`] turns each TAT back into a
//!   count of recipients under the old quota and re-expresses that count under the new one,
//!   so 400 of 500 becomes 400 of 1000, not a rescaled time debt.
//! - **Snapshots** (c): a record is plain numbers, written in a fixed-size form by
//!   `state::snapshot`.
//! - **Bounded memory** (d): a record whose TATs are all in the past is indistinguishable from
//!   a fresh one; the account table (`policy::accounts`) drops those (and ones with no other
//!   state worth keeping), so memory follows the accounts active within the last day, not all
//!   accounts ever seen.
//!
//! With a limit of N, N recipients pass and the N+1-th reaches the limit; after that one more is
//! allowed every period/N (hourly: 3600/N s; daily: 86400/N s).

use std::cell::Cell;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::clock::{At, Timestamp};
use super::record::AccountRecord;
use super::rules::PolicyIndex;
use crate::config::PolicySettings;

/// The three counted limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    ExternalPerHour = 0,
    InternalPerHour = 1,
    PerDay = 2,
}

impl LimitKind {
    pub const ALL: [LimitKind; 3] = [LimitKind::ExternalPerHour, LimitKind::InternalPerHour, LimitKind::PerDay];

    /// The configuration key of this limit.
    pub fn key(self) -> &'static str {
        match self {
            LimitKind::ExternalPerHour => "recipient_limit_external_per_hour",
            LimitKind::InternalPerHour => "recipient_limit_internal_per_hour",
            LimitKind::PerDay => "recipient_limit_per_day",
        }
    }

    /// Words for messages: "external recipients per hour".
    pub fn describe(self) -> &'static str {
        match self {
            LimitKind::ExternalPerHour => "external recipients per hour",
            LimitKind::InternalPerHour => "internal recipients per hour",
            LimitKind::PerDay => "recipients per day",
        }
    }

    /// The configured limit (0 = none).
    pub fn limit_in(self, s: &PolicySettings) -> u32 {
        match self {
            LimitKind::ExternalPerHour => s.recipient_limit_external_per_hour,
            LimitKind::InternalPerHour => s.recipient_limit_internal_per_hour,
            LimitKind::PerDay => s.recipient_limit_per_day,
        }
    }

    /// Why an account reached this limit under `settings`, in the restriction and the notices.
    pub fn reached_reason(self, settings: &PolicySettings) -> String {
        let limit = self.limit_in(settings);
        format!(
            "reached the limit of {limit} {} ({limit} counted in the last {})",
            self.describe(),
            if self == LimitKind::PerDay { "24 hours" } else { "hour" }
        )
    }

    /// The window the limit rolls over.
    pub fn period(self) -> Duration {
        match self {
            LimitKind::PerDay => Duration::from_secs(86_400),
            _ => Duration::from_secs(3600),
        }
    }
}

/// One limit's GCRA state, lent to governor as the key of a check.
///
/// governor's keyed checks want a hashable key; ours is never hashed (the store below reads the
/// cell directly), but the trait bounds ask for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TatCell(Cell<u64>);

impl std::hash::Hash for TatCell {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.get().hash(state);
    }
}

/// governor's state store: the key *is* the state cell.
#[derive(Debug, Default, Clone, Copy)]
pub struct CellStore;

impl StateStore for CellStore {
    type Key = TatCell;

    fn measure_and_replace<T, F, E>(&self, key: &TatCell, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let old = key.0.get();
        let (result, new) = f((old != 0).then(|| Nanos::from(old)))?;
        key.0.set(new.as_u64());
        Ok(result)
    }
}

type Limiter = RateLimiter<TatCell, CellStore, At, NoOpMiddleware<Timestamp>>;

/// A limit as checked: its governor quota, the limit, and its emission interval in nanoseconds
/// (period / limit, kept to spare a division per usage query).
///
/// The `RateLimiter` itself is made per check, around the instant of the decision: it is two
/// words computed from the quota, and it saves governor reading the clock on every check.
struct Limit {
    quota: Quota,
    limit: u32,
    interval: u64,
}

impl Limit {
    fn at(&self, now: Timestamp) -> Limiter {
        RateLimiter::new(self.quota, CellStore, At(now))
    }
}

/// One limiter per (policy, kind) with a non-zero limit.
pub struct Limiters {
    by_policy: Vec<[Option<Limit>; 3]>,
}

impl Limiters {
    /// Builds the limiters for `policies` (default first, then rules by priority).
    pub fn new(policies: &[PolicySettings]) -> Limiters {
        let by_policy = policies
            .iter()
            .map(|p| {
                LimitKind::ALL.map(|kind| {
                    let n = NonZeroU32::new(kind.limit_in(p))?;
                    let quota = Quota::with_period(kind.period() / n.get())?.allow_burst(n);
                    Some(Limit { quota, limit: n.get(), interval: interval(kind.period(), n.get()) })
                })
            })
            .collect();
        Limiters { by_policy }
    }

    fn limiter(&self, policy: PolicyIndex, kind: LimitKind) -> Option<&Limit> {
        self.by_policy.get(policy as usize).and_then(|l| l[kind as usize].as_ref())
    }

    /// Tries to add one recipient of the given hourly kind (plus the daily limit) at
    /// `now`. On success the record is updated; on refusal nothing changes and the limit
    /// reached is returned.
    // Inlined: it is on every recipient's path, and left to itself the compiler moves it out
    // of line whenever the code around changes (73 instructions per decision, callgrind).
    #[inline]
    pub fn try_add_recipient(
        &self,
        policy: PolicyIndex,
        record: &mut AccountRecord,
        hourly: LimitKind,
        now: Timestamp,
    ) -> Result<(), LimitKind> {
        let cells = [
            TatCell(Cell::new(record.tat[hourly as usize])),
            TatCell(Cell::new(record.tat[LimitKind::PerDay as usize])),
        ];
        for (cell, kind) in cells.iter().zip([hourly, LimitKind::PerDay]) {
            if let Some(limit) = self.limiter(policy, kind) {
                limit.at(now).check_key(cell).map_err(|_| kind)?;
            }
        }
        record.tat[hourly as usize] = cells[0].0.get();
        record.tat[LimitKind::PerDay as usize] = cells[1].0.get();
        Ok(())
    }

    /// Counts a recipient that is delivered although a limit is reached (the `alert` action,
    /// or the day's grace after a release): in the hourly and the daily limit each where it
    /// has room, as [`Self::try_add_recipient`] would; a limit without room stays full.
    /// Returns the limits that were full, hourly first.
    pub fn add_recipient_where_room(
        &self,
        policy: PolicyIndex,
        record: &mut AccountRecord,
        hourly: LimitKind,
        now: Timestamp,
    ) -> [Option<LimitKind>; 2] {
        let mut full = [None; 2];
        for (slot, kind) in full.iter_mut().zip([hourly, LimitKind::PerDay]) {
            let Some(limit) = self.limiter(policy, kind) else { continue };
            let cell = TatCell(Cell::new(record.tat[kind as usize]));
            match limit.at(now).check_key(&cell) {
                Ok(()) => record.tat[kind as usize] = cell.0.get(),
                Err(_) => *slot = Some(kind),
            }
        }
        full
    }

    /// Gives back `count` recipients of `kind` that a transaction reserved and the MTA then did
    /// not accept (an abort, a refusal or tempfail later, a lost connection): the TAT moves back
    /// by as many emission intervals — the exact inverse of the checks that reserved them,
    /// whatever other transactions spent meanwhile. A TAT that lands in the past means nothing
    /// in use, as it would have had they never been counted.
    pub fn give_back(&self, policy: PolicyIndex, record: &mut AccountRecord, kind: LimitKind, count: u32) {
        if let Some(limit) = self.limiter(policy, kind) {
            let tat = &mut record.tat[kind as usize];
            *tat = tat.saturating_sub(u64::from(count).saturating_mul(limit.interval));
        }
    }

    /// Recipients counted against `kind` at `now` (how much of the burst is in use), and the
    /// limit; `None` when the policy has no such limit.
    pub fn usage(
        &self,
        policy: PolicyIndex,
        record: &AccountRecord,
        kind: LimitKind,
        now: Timestamp,
    ) -> Option<(u32, u32)> {
        let limit = self.limiter(policy, kind)?;
        Some((used_at(record.tat[kind as usize], now.nanos(), limit.interval, limit.limit), limit.limit))
    }

    /// Whether the recipients counted against `kind` at `now` have reached `percent` (0–100)
    /// of its limit — `used · 100 ≥ limit · percent` with `used` as [`Self::usage`] counts it —
    /// decided on the time debt itself. It is asked after every accepted recipient, and a
    /// multiplication there spares the two divisions `usage` needs; `usage` is for the rare
    /// recipient that does reach the level. `false` when the policy has no such limit.
    pub fn reached_percent(
        &self,
        policy: PolicyIndex,
        record: &AccountRecord,
        kind: LimitKind,
        now: Timestamp,
        percent: u8,
    ) -> bool {
        let Some(limit) = self.limiter(policy, kind) else { return false };
        // `used = ⌈debt / interval⌉ ≥ level` ⇔ `debt > (level − 1) · interval`, with `level`
        // the smallest count at the percentage (never above the limit, so the cap in
        // `used_at` does not matter).
        let level = (u64::from(limit.limit) * u64::from(percent.min(100))).div_ceil(100);
        let Some(below) = level.checked_sub(1) else { return true };
        let tat = record.tat[kind as usize];
        tat > now.nanos() && tat - now.nanos() > below * limit.interval
    }
}

/// The emission interval of a limit: one recipient is replenished every `period / limit`.
fn interval(period: Duration, limit: u32) -> u64 {
    (period.as_nanos() as u64 / u64::from(limit.max(1))).max(1)
}

/// Recipients in use under a GCRA state: the time debt over the emission interval, rounded up.
fn used(tat: u64, now_nanos: u64, period: Duration, limit: u32) -> u32 {
    used_at(tat, now_nanos, interval(period, limit), limit)
}

fn used_at(tat: u64, now_nanos: u64, interval: u64, limit: u32) -> u32 {
    if tat <= now_nanos || limit == 0 {
        return 0;
    }
    let debt = tat - now_nanos;
    (debt.div_ceil(interval)).min(u64::from(limit)) as u32
}

/// The TAT that represents `count` recipients in use at `now` under a limit.
fn tat_for(count: u32, now_nanos: u64, period: Duration, limit: u32) -> u64 {
    if count == 0 || limit == 0 {
        return 0;
    }
    now_nanos + u64::from(count) * interval(period, limit)
}

/// Re-expresses a record's consumption under a new policy after a reload: the same number of
/// recipients in use, against the new limits.
pub fn convert_for_reload(
    record: &mut AccountRecord,
    old: &PolicySettings,
    new: &PolicySettings,
    new_index: PolicyIndex,
    now: Timestamp,
) {
    for kind in LimitKind::ALL {
        let (old_limit, new_limit) = (kind.limit_in(old), kind.limit_in(new));
        let count = used(record.tat[kind as usize], now.nanos(), kind.period(), old_limit);
        record.tat[kind as usize] = tat_for(count, now.nanos(), kind.period(), new_limit);
    }
    record.policy = new_index;
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    use crate::config::builtin_default_policy;
    use crate::policy::clock::EngineClock;

    fn settings(ext: u32, int: u32, day: u32) -> PolicySettings {
        let mut s = builtin_default_policy();
        s.recipient_limit_external_per_hour = ext;
        s.recipient_limit_internal_per_hour = int;
        s.recipient_limit_per_day = day;
        s
    }

    fn setup(ext: u32, int: u32, day: u32) -> (Limiters, EngineClock) {
        let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1_795_300_000));
        (Limiters::new(&[settings(ext, int, day)]), clock)
    }

    #[test]
    fn the_warning_level_agrees_with_the_usage_count() {
        for (limit, period_limit) in
            [(1u32, LimitKind::ExternalPerHour), (7, LimitKind::PerDay), (250, LimitKind::PerDay)]
        {
            let mut s = settings(0, 0, 0);
            match period_limit {
                LimitKind::PerDay => s.recipient_limit_per_day = limit,
                _ => s.recipient_limit_external_per_hour = limit,
            }
            let l = Limiters::new(&[s]);
            let now = Timestamp::from_secs(1_795_300_000);
            let interval = interval(period_limit.period(), limit);
            // Debts on, just before and just after each multiple of the interval.
            for step in 0..=u64::from(limit) + 1 {
                for offset in [-1i64, 0, 1] {
                    let debt = (step * interval).saturating_add_signed(offset);
                    let mut r = AccountRecord::default();
                    r.tat[period_limit as usize] = if debt == 0 { 0 } else { now.nanos() + debt };
                    let (used, lim) = l.usage(0, &r, period_limit, now).unwrap();
                    for percent in [0u8, 1, 50, 80, 99, 100] {
                        let expected = u64::from(used) * 100 >= u64::from(lim) * u64::from(percent);
                        assert_eq!(
                            l.reached_percent(0, &r, period_limit, now, percent),
                            expected,
                            "limit {limit}, debt {debt}, used {used}, percent {percent}"
                        );
                    }
                }
            }
            assert!(!l.reached_percent(0, &AccountRecord::default(), LimitKind::InternalPerHour, now, 0));
        }
    }

    #[test]
    fn n_recipients_pass_and_the_next_reaches_the_limit() {
        let (l, clock) = setup(5, 0, 0);
        let mut r = AccountRecord::default();
        for _ in 0..5 {
            assert_eq!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()), Ok(()));
        }
        assert_eq!(
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()),
            Err(LimitKind::ExternalPerHour)
        );
        // Internal recipients have no limit here.
        assert_eq!(l.try_add_recipient(0, &mut r, LimitKind::InternalPerHour, clock.now()), Ok(()));
    }

    #[test]
    fn the_hourly_limit_rolls_one_recipient_per_interval() {
        let (l, clock) = setup(4, 0, 0);
        let mut r = AccountRecord::default();
        for _ in 0..4 {
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).unwrap();
        }
        assert!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).is_err());
        clock.advance(Duration::from_secs(899));
        assert!(
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).is_err(),
            "3600/4 s not yet over"
        );
        clock.advance(Duration::from_secs(1));
        assert!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).is_ok());
        assert!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).is_err());
        clock.advance(Duration::from_secs(3600));
        for _ in 0..4 {
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).unwrap();
        }
    }

    #[test]
    fn the_daily_limit_counts_both_classes_and_a_refusal_spends_nothing() {
        let (l, clock) = setup(100, 100, 3);
        let mut r = AccountRecord::default();
        l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).unwrap();
        l.try_add_recipient(0, &mut r, LimitKind::InternalPerHour, clock.now()).unwrap();
        l.try_add_recipient(0, &mut r, LimitKind::InternalPerHour, clock.now()).unwrap();
        let before = r.clone();
        assert_eq!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()), Err(LimitKind::PerDay));
        assert_eq!(r, before, "the refused recipient must not count against the hourly limit");
        let now = clock.now();
        assert_eq!(l.usage(0, &r, LimitKind::PerDay, now), Some((3, 3)));
        assert_eq!(l.usage(0, &r, LimitKind::ExternalPerHour, now), Some((1, 100)));
        assert_eq!(l.usage(0, &r, LimitKind::InternalPerHour, now), Some((2, 100)));
        clock.advance(Duration::from_secs(86_400 / 3));
        assert!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).is_ok());
    }

    #[test]
    fn reload_keeps_the_count_in_use() {
        let (l, clock) = setup(500, 0, 0);
        let mut r = AccountRecord::default();
        for _ in 0..400 {
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).unwrap();
        }
        let now = clock.now();
        let raised = settings(1000, 0, 0);
        convert_for_reload(&mut r, &settings(500, 0, 0), &raised, 0, now);
        let l2 = Limiters::new(&[raised]);
        assert_eq!(l2.usage(0, &r, LimitKind::ExternalPerHour, now), Some((400, 1000)));
        for _ in 0..600 {
            l2.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).unwrap();
        }
        assert!(l2.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).is_err());

        // Lowered below what is in use: the account is at the new limit at once.
        let lowered = settings(100, 0, 0);
        convert_for_reload(&mut r, &settings(1000, 0, 0), &lowered, 0, now);
        let l3 = Limiters::new(&[lowered]);
        assert_eq!(l3.usage(0, &r, LimitKind::ExternalPerHour, now).map(|u| u.0 >= 100), Some(true));
        assert!(l3.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now()).is_err());
    }
}
