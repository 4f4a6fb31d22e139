//! What the engine keeps per account between messages — [`AccountRecord`] — and the counting
//! that reads it: the live [`Counters`] an account shows, and which notices already went out
//! this hour. The GCRA arithmetic on its TATs is `policy::limits`'; the table that holds the
//! records is `policy::accounts`; their byte form in the snapshot file is `state::snapshot`'s.

use std::time::Duration;

use super::clock::Timestamp;
use super::limits::{LimitKind, Limiters};
use super::restriction::Counters;
use super::rules::PolicyIndex;

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
    /// the year 3800), one bit per [`HourlyNotice`] above them. A new hour clears every bit.
    pub(crate) notices: u32,
    /// The policy the TATs were computed under.
    pub policy: PolicyIndex,
    /// UTC day number an administrator last released the account (the day's grace), 0 = never.
    pub(crate) released_day: u16,
}

/// HourlyNotices sent at most once an hour per account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HourlyNotice {
    /// "Limit exceeded" under the `alert` action, per limit kind.
    LimitAlert(LimitKind),
    /// "Approaching the limit", per limit kind.
    Warning(LimitKind),
    /// The spam share passed its thresholds under the `alert` action.
    SpamAlert,
    /// The bounce share passed its thresholds under the `alert` action.
    BounceAlert,
}

impl HourlyNotice {
    fn bit(self) -> u32 {
        let n = match self {
            HourlyNotice::LimitAlert(kind) => kind as u32,
            HourlyNotice::Warning(kind) => 3 + kind as u32,
            HourlyNotice::SpamAlert => 6,
            HourlyNotice::BounceAlert => 7,
        };
        1 << (HOUR_BITS + n)
    }
}

const HOUR_BITS: u32 = 24;
const HOUR_MASK: u32 = (1 << HOUR_BITS) - 1;

impl AccountRecord {
    /// Whether `notice` has not gone out yet in `hour`; marks it as gone out. Call it only
    /// when the notice is due, so that "first" means first.
    pub fn first_notice_this_hour(&mut self, notice: HourlyNotice, hour: u32) -> bool {
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

    /// Whether nothing in the record still matters at `now`: every limit fully replenished, no
    /// notice within the current hour, no release today.
    pub fn is_idle(&self, now: Timestamp) -> bool {
        let hour = now.hour() & HOUR_MASK;
        self.tat.iter().all(|&t| t <= now.nanos())
            && (self.notices & !HOUR_MASK == 0 || self.notices & HOUR_MASK != hour)
            && !self.released_on(now.utc_day())
            && self.spam.is_empty_at(now)
    }
}

impl AccountRecord {
    /// The live counters of this record under `policy` at `now`: recipients in use
    /// against each limit, and the spam share over `spam_window`.
    pub fn counters(
        &self,
        limiters: &Limiters,
        policy: PolicyIndex,
        spam_window: Duration,
        now: Timestamp,
    ) -> Counters {
        let (spam_messages, messages) = self.spam.counts(now, spam_window);
        let usage = |kind| limiters.usage(policy, self, kind, now).unwrap_or((0, 0));
        let (external_last_hour, external_limit_per_hour) = usage(LimitKind::ExternalPerHour);
        let (internal_last_hour, internal_limit_per_hour) = usage(LimitKind::InternalPerHour);
        let (last_day, limit_per_day) = usage(LimitKind::PerDay);
        Counters {
            external_last_hour,
            external_limit_per_hour,
            internal_last_hour,
            internal_limit_per_hour,
            last_day,
            limit_per_day,
            spam_messages,
            messages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 bytes, so a map slot with its 24-byte key is one 64-byte cache line.
    #[test]
    fn an_account_record_is_40_bytes() {
        assert_eq!(std::mem::size_of::<AccountRecord>(), 40);
    }

    #[test]
    fn each_notice_goes_out_once_an_hour() {
        let mut r = AccountRecord::default();
        let hour = 498_706;
        assert!(r.first_notice_this_hour(HourlyNotice::LimitAlert(LimitKind::PerDay), hour));
        assert!(!r.first_notice_this_hour(HourlyNotice::LimitAlert(LimitKind::PerDay), hour));
        // Other notices and other kinds are independent within the hour.
        assert!(r.first_notice_this_hour(HourlyNotice::LimitAlert(LimitKind::ExternalPerHour), hour));
        assert!(r.first_notice_this_hour(HourlyNotice::Warning(LimitKind::PerDay), hour));
        assert!(r.first_notice_this_hour(HourlyNotice::SpamAlert, hour));
        assert!(!r.first_notice_this_hour(HourlyNotice::SpamAlert, hour));
        // A new hour starts afresh.
        assert!(r.first_notice_this_hour(HourlyNotice::SpamAlert, hour + 1));
        assert!(r.first_notice_this_hour(HourlyNotice::LimitAlert(LimitKind::PerDay), hour + 1));
        assert!(!r.released_on(0), "never released is not released on day 0");
        r.set_released(20_779);
        assert!(r.released_on(20_779) && !r.released_on(20_780));
    }
}
