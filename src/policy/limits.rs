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
//! - **Snapshots** (c): a record is plain numbers; [`AccountRecord::to_bytes`] and
//!   [`AccountRecord::from_bytes`] give a fixed-size form for the snapshot file.
//! - **Bounded memory** (d): a record whose TATs are all in the past is indistinguishable from
//!   a fresh one; [`evict_idle`] drops those (and ones with no other state worth keeping), so
//!   memory follows the accounts active within the last day, not all accounts ever seen.
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

use super::clock::{At, EpochInstant, utc_day};
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

    /// The window the limit rolls over.
    pub fn period(self) -> Duration {
        match self {
            LimitKind::PerDay => Duration::from_secs(86_400),
            _ => Duration::from_secs(3600),
        }
    }
}

/// What the engine keeps per account between messages.
///
/// Kept to 40 bytes (64 with its key in the map): one million accounts are resident on a busy
/// server, and every byte here is a million bytes there. Hence the packed notice state below
/// rather than an hour number per notice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountRecord {
    /// GCRA state per [`LimitKind`]; 0 = never used (or fully replenished).
    pub tat: [u64; 3],
    /// Messages and spam verdicts over the policy's window: counted inline until the first spam
    /// verdict, then in a ring (see [`super::spam::SpamSlot`]).
    pub spam: super::spam::SpamSlot,
    /// Which notices went out in which hour: the hour number in the low 24 bits (good until
    /// the year 3800), one bit per [`Notice`] above them. A new hour clears every bit.
    pub(crate) notices: u32,
    /// The policy the TATs were computed under.
    pub policy: PolicyIndex,
    /// UTC day number an administrator last released the account (the day's grace), 0 = never.
    pub(crate) released_day: u16,
}

/// Notices sent at most once an hour per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// "Limit exceeded" under the `alert` action, per limit kind.
    LimitAlert(LimitKind),
    /// "Approaching the limit", per limit kind.
    Warning(LimitKind),
    /// The spam share passed its thresholds under the `alert` action.
    SpamAlert,
}

impl Notice {
    fn bit(self) -> u32 {
        let n = match self {
            Notice::LimitAlert(kind) => kind as u32,
            Notice::Warning(kind) => 3 + kind as u32,
            Notice::SpamAlert => 6,
        };
        1 << (HOUR_BITS + n)
    }
}

const HOUR_BITS: u32 = 24;
const HOUR_MASK: u32 = (1 << HOUR_BITS) - 1;

/// Size of [`AccountRecord::to_bytes`].
pub const RECORD_BYTES: usize = 3 * 8 + 2 + 4 + 2;

/// Size of a record in the previous snapshot format (`OGSNAP02`): an hour number per notice.
pub const RECORD_BYTES_V2: usize = 3 * 8 + 2 + 3 * 4 + 3 * 4 + 4 + 4;

impl AccountRecord {
    /// Whether `notice` has not gone out yet in `hour`; marks it as gone out. Call it only
    /// when the notice is due, so that "first" means first.
    pub fn first_notice_this_hour(&mut self, notice: Notice, hour: u32) -> bool {
        let hour = hour & HOUR_MASK;
        if self.notices & HOUR_MASK != hour {
            self.notices = hour;
        }
        let first = self.notices & notice.bit() == 0;
        self.notices |= notice.bit();
        first
    }

    /// Marks the account released on UTC day `day` (see [`AccountRecord::released_on`]).
    pub fn set_released(&mut self, day: u32) {
        self.released_day = u16::try_from(day).unwrap_or(u16::MAX);
    }

    /// Whether an administrator released the account on UTC day `day`.
    pub fn released_on(&self, day: u32) -> bool {
        self.released_day != 0 && u32::from(self.released_day) == day
    }

    /// Fixed-size little-endian form for snapshots.
    pub fn to_bytes(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0u8; RECORD_BYTES];
        for (i, t) in self.tat.iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&t.to_le_bytes());
        }
        out[24..26].copy_from_slice(&self.policy.to_le_bytes());
        out[26..30].copy_from_slice(&self.notices.to_le_bytes());
        out[30..32].copy_from_slice(&self.released_day.to_le_bytes());
        out
    }

    /// The inverse of [`AccountRecord::to_bytes`].
    pub fn from_bytes(b: &[u8; RECORD_BYTES]) -> AccountRecord {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        AccountRecord {
            tat: [u64_at(0), u64_at(8), u64_at(16)],
            policy: u16::from_le_bytes([b[24], b[25]]),
            notices: u32::from_le_bytes(b[26..30].try_into().expect("4 bytes")),
            released_day: u16::from_le_bytes([b[30], b[31]]),
            spam: super::spam::SpamSlot::default(),
        }
    }

    /// A record of the previous snapshot format, which kept an hour number per notice: the
    /// notices of the latest of those hours are kept, older ones had lapsed anyway.
    pub fn from_v2_bytes(b: &[u8; RECORD_BYTES_V2]) -> AccountRecord {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let mut record = AccountRecord {
            tat: [u64_at(0), u64_at(8), u64_at(16)],
            policy: u16::from_le_bytes([b[24], b[25]]),
            ..Default::default()
        };
        record.set_released(u32_at(50));
        let mut notices: Vec<(u32, Notice)> = Vec::with_capacity(7);
        for (i, kind) in LimitKind::ALL.into_iter().enumerate() {
            notices.push((u32_at(26 + 4 * i), Notice::LimitAlert(kind)));
            notices.push((u32_at(38 + 4 * i), Notice::Warning(kind)));
        }
        notices.push((u32_at(54), Notice::SpamAlert));
        let latest = notices.iter().map(|(hour, _)| *hour).max().unwrap_or(0);
        if latest != 0 {
            for (hour, notice) in notices {
                if hour == latest {
                    record.first_notice_this_hour(notice, hour);
                }
            }
        }
        record
    }

    /// Whether nothing in the record still matters at `now`: every limit fully replenished, no
    /// notice within the current hour, no release today.
    pub fn is_idle(&self, now_nanos: u64) -> bool {
        let hour = super::clock::hour_number(now_nanos) & HOUR_MASK;
        self.tat.iter().all(|&t| t <= now_nanos)
            && (self.notices & !HOUR_MASK == 0 || self.notices & HOUR_MASK != hour)
            && !self.released_on(utc_day(now_nanos))
            && self.spam.is_empty_at(now_nanos / 1_000_000_000)
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

type Limiter = RateLimiter<TatCell, CellStore, At, NoOpMiddleware<EpochInstant>>;

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
    fn at(&self, now_nanos: u64) -> Limiter {
        RateLimiter::new(self.quota, CellStore, At(now_nanos))
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
    /// `now_nanos`. On success the record is updated; on refusal nothing changes and the limit
    /// reached is returned.
    pub fn try_add_recipient(
        &self,
        policy: PolicyIndex,
        record: &mut AccountRecord,
        hourly: LimitKind,
        now_nanos: u64,
    ) -> Result<(), LimitKind> {
        let cells = [
            TatCell(Cell::new(record.tat[hourly as usize])),
            TatCell(Cell::new(record.tat[LimitKind::PerDay as usize])),
        ];
        for (cell, kind) in cells.iter().zip([hourly, LimitKind::PerDay]) {
            if let Some(limit) = self.limiter(policy, kind) {
                limit.at(now_nanos).check_key(cell).map_err(|_| kind)?;
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
        now_nanos: u64,
    ) -> [Option<LimitKind>; 2] {
        let mut full = [None; 2];
        for (slot, kind) in full.iter_mut().zip([hourly, LimitKind::PerDay]) {
            let Some(limit) = self.limiter(policy, kind) else { continue };
            let cell = TatCell(Cell::new(record.tat[kind as usize]));
            match limit.at(now_nanos).check_key(&cell) {
                Ok(()) => record.tat[kind as usize] = cell.0.get(),
                Err(_) => *slot = Some(kind),
            }
        }
        full
    }

    /// Recipients counted against `kind` at `now` (how much of the burst is in use), and the
    /// limit; `None` when the policy has no such limit.
    pub fn usage(
        &self,
        policy: PolicyIndex,
        record: &AccountRecord,
        kind: LimitKind,
        now_nanos: u64,
    ) -> Option<(u32, u32)> {
        let limit = self.limiter(policy, kind)?;
        Some((used_at(record.tat[kind as usize], now_nanos, limit.interval, limit.limit), limit.limit))
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
        now_nanos: u64,
        percent: u8,
    ) -> bool {
        let Some(limit) = self.limiter(policy, kind) else { return false };
        // `used = ⌈debt / interval⌉ ≥ level` ⇔ `debt > (level − 1) · interval`, with `level`
        // the smallest count at the percentage (never above the limit, so the cap in
        // `used_at` does not matter).
        let level = (u64::from(limit.limit) * u64::from(percent.min(100))).div_ceil(100);
        let Some(below) = level.checked_sub(1) else { return true };
        let tat = record.tat[kind as usize];
        tat > now_nanos && tat - now_nanos > below * limit.interval
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
    now_nanos: u64,
) {
    for kind in LimitKind::ALL {
        let (old_limit, new_limit) = (kind.limit_in(old), kind.limit_in(new));
        let count = used(record.tat[kind as usize], now_nanos, kind.period(), old_limit);
        record.tat[kind as usize] = tat_for(count, now_nanos, kind.period(), new_limit);
    }
    record.policy = new_index;
}

/// Drops the records with nothing left to remember; returns how many were dropped.
pub fn evict_idle<K: Eq + std::hash::Hash, S: std::hash::BuildHasher + Clone>(
    map: &dashmap::DashMap<K, AccountRecord, S>,
    now_nanos: u64,
) -> usize {
    let before = map.len();
    map.retain(|_, r| !r.is_idle(now_nanos));
    map.shrink_to_fit();
    before - map.len()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    /// 40 bytes, so a map slot with its 24-byte key is one 64-byte cache line.
    #[test]
    fn an_account_record_is_40_bytes() {
        assert_eq!(std::mem::size_of::<AccountRecord>(), 40);
    }
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
            let now = 1_795_300_000_000_000_000u64;
            let interval = interval(period_limit.period(), limit);
            // Debts on, just before and just after each multiple of the interval.
            for step in 0..=u64::from(limit) + 1 {
                for offset in [-1i64, 0, 1] {
                    let debt = (step * interval).saturating_add_signed(offset);
                    let mut r = AccountRecord::default();
                    r.tat[period_limit as usize] = if debt == 0 { 0 } else { now + debt };
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
            assert_eq!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()), Ok(()));
        }
        assert_eq!(
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()),
            Err(LimitKind::ExternalPerHour)
        );
        // Internal recipients have no limit here.
        assert_eq!(l.try_add_recipient(0, &mut r, LimitKind::InternalPerHour, clock.now_nanos()), Ok(()));
    }

    #[test]
    fn the_hourly_limit_rolls_one_recipient_per_interval() {
        let (l, clock) = setup(4, 0, 0);
        let mut r = AccountRecord::default();
        for _ in 0..4 {
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).unwrap();
        }
        assert!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).is_err());
        clock.advance(Duration::from_secs(899));
        assert!(
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).is_err(),
            "3600/4 s not yet over"
        );
        clock.advance(Duration::from_secs(1));
        assert!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).is_ok());
        assert!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).is_err());
        clock.advance(Duration::from_secs(3600));
        for _ in 0..4 {
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).unwrap();
        }
    }

    #[test]
    fn the_daily_limit_counts_both_classes_and_a_refusal_spends_nothing() {
        let (l, clock) = setup(100, 100, 3);
        let mut r = AccountRecord::default();
        l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).unwrap();
        l.try_add_recipient(0, &mut r, LimitKind::InternalPerHour, clock.now_nanos()).unwrap();
        l.try_add_recipient(0, &mut r, LimitKind::InternalPerHour, clock.now_nanos()).unwrap();
        let before = r.clone();
        assert_eq!(
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()),
            Err(LimitKind::PerDay)
        );
        assert_eq!(r, before, "the refused recipient must not count against the hourly limit");
        let now = clock.now_nanos();
        assert_eq!(l.usage(0, &r, LimitKind::PerDay, now), Some((3, 3)));
        assert_eq!(l.usage(0, &r, LimitKind::ExternalPerHour, now), Some((1, 100)));
        assert_eq!(l.usage(0, &r, LimitKind::InternalPerHour, now), Some((2, 100)));
        clock.advance(Duration::from_secs(86_400 / 3));
        assert!(l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).is_ok());
    }

    #[test]
    fn reload_keeps_the_count_in_use() {
        let (l, clock) = setup(500, 0, 0);
        let mut r = AccountRecord::default();
        for _ in 0..400 {
            l.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).unwrap();
        }
        let now = clock.now_nanos();
        let raised = settings(1000, 0, 0);
        convert_for_reload(&mut r, &settings(500, 0, 0), &raised, 0, now);
        let l2 = Limiters::new(&[raised]);
        assert_eq!(l2.usage(0, &r, LimitKind::ExternalPerHour, now), Some((400, 1000)));
        for _ in 0..600 {
            l2.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).unwrap();
        }
        assert!(l2.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).is_err());

        // Lowered below what is in use: the account is at the new limit at once.
        let lowered = settings(100, 0, 0);
        convert_for_reload(&mut r, &settings(1000, 0, 0), &lowered, 0, now);
        let l3 = Limiters::new(&[lowered]);
        assert_eq!(l3.usage(0, &r, LimitKind::ExternalPerHour, now).map(|u| u.0 >= 100), Some(true));
        assert!(l3.try_add_recipient(0, &mut r, LimitKind::ExternalPerHour, clock.now_nanos()).is_err());
    }

    #[test]
    fn each_notice_goes_out_once_an_hour() {
        let mut r = AccountRecord::default();
        let hour = 498_706;
        assert!(r.first_notice_this_hour(Notice::LimitAlert(LimitKind::PerDay), hour));
        assert!(!r.first_notice_this_hour(Notice::LimitAlert(LimitKind::PerDay), hour));
        // Other notices and other kinds are independent within the hour.
        assert!(r.first_notice_this_hour(Notice::LimitAlert(LimitKind::ExternalPerHour), hour));
        assert!(r.first_notice_this_hour(Notice::Warning(LimitKind::PerDay), hour));
        assert!(r.first_notice_this_hour(Notice::SpamAlert, hour));
        assert!(!r.first_notice_this_hour(Notice::SpamAlert, hour));
        // A new hour starts afresh.
        assert!(r.first_notice_this_hour(Notice::SpamAlert, hour + 1));
        assert!(r.first_notice_this_hour(Notice::LimitAlert(LimitKind::PerDay), hour + 1));
        assert!(!r.released_on(0), "never released is not released on day 0");
        r.set_released(20_779);
        assert!(r.released_on(20_779) && !r.released_on(20_780));
    }

    #[test]
    fn a_previous_format_record_keeps_its_latest_notices() {
        let mut b = [0u8; RECORD_BYTES_V2];
        b[0..8].copy_from_slice(&42u64.to_le_bytes());
        b[24..26].copy_from_slice(&3u16.to_le_bytes());
        b[26..30].copy_from_slice(&100u32.to_le_bytes()); // limit alert, external: older hour
        b[42..46].copy_from_slice(&101u32.to_le_bytes()); // warning, internal: latest hour
        b[50..54].copy_from_slice(&20_779u32.to_le_bytes()); // released
        b[54..58].copy_from_slice(&101u32.to_le_bytes()); // spam alert: latest hour
        let mut r = AccountRecord::from_v2_bytes(&b);
        assert_eq!((r.tat[0], r.policy), (42, 3));
        assert!(r.released_on(20_779));
        assert!(!r.first_notice_this_hour(Notice::Warning(LimitKind::InternalPerHour), 101));
        assert!(!r.first_notice_this_hour(Notice::SpamAlert, 101));
        assert!(r.first_notice_this_hour(Notice::LimitAlert(LimitKind::ExternalPerHour), 101));
    }

    #[test]
    fn records_round_trip_through_bytes_and_idle_ones_are_evicted() {
        let mut r = AccountRecord { tat: [1, 2, 3], policy: 7, ..Default::default() };
        r.set_released(10);
        r.first_notice_this_hour(Notice::Warning(LimitKind::PerDay), 11);
        r.first_notice_this_hour(Notice::SpamAlert, 11);
        assert_eq!(AccountRecord::from_bytes(&r.to_bytes()), r);

        let (l, clock) = setup(10, 10, 10);
        let map: dashmap::DashMap<Box<str>, AccountRecord, ahash::RandomState> = dashmap::DashMap::default();
        let mut busy = AccountRecord::default();
        l.try_add_recipient(0, &mut busy, LimitKind::ExternalPerHour, clock.now_nanos()).unwrap();
        map.insert("busy@example.com".into(), busy);
        map.insert("idle@example.com".into(), AccountRecord::default());
        assert_eq!(evict_idle(&map, clock.now_nanos()), 1);
        assert!(map.contains_key("busy@example.com"));
        clock.advance(Duration::from_secs(86_400));
        assert_eq!(evict_idle(&map, clock.now_nanos()), 1);
        assert!(map.is_empty());
    }
}
