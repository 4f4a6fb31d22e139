//! What the simulator found, as data: counted while the log is replayed ([`Tracker`]), then
//! summarised ([`Report`]) for the text, JSON and HTML renderings.
//!
//! Peaks are measured the way the limits count: the hourly peak is the most recipients in any
//! 60 minutes (at minute resolution), the daily one the most in any 24 hours (at hour
//! resolution). A suggested limit is above the peak of every account of the policy that was
//! not restricted, with a margin, rounded up to a round number.

use std::collections::{BTreeMap, HashMap, VecDeque};

use compact_str::CompactString;
use serde::Serialize;

use crate::policy::restriction::Counters;

/// One hour of an account's recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HourPoint {
    /// Hours since the epoch (rendered as the hour's start).
    #[serde(serialize_with = "hour_as_rfc3339")]
    pub hour: u32,
    pub external: u32,
    pub internal: u32,
    /// Recipients the policy would have refused in this hour.
    pub refused: u32,
}

fn hour_as_rfc3339<S: serde::Serializer>(hour: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(i64::from(*hour) * 3600))
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs).map_or_else(|_| secs.to_string(), crate::policy::clock::rfc3339)
}

/// The most recipients in any window of `WINDOW` buckets.
#[derive(Debug, Default, Clone)]
struct Rolling<const WINDOW: u32> {
    buckets: VecDeque<(u32, u32)>,
    sum: u32,
    peak: u32,
}

impl<const WINDOW: u32> Rolling<WINDOW> {
    fn add(&mut self, bucket: u32, n: u32) {
        if n == 0 {
            return;
        }
        match self.buckets.back_mut() {
            // A bucket at or before the newest (lines a little out of order) joins it.
            Some((last, count)) if *last >= bucket => *count += n,
            _ => self.buckets.push_back((bucket, n)),
        }
        self.sum += n;
        let newest = self.buckets.back().map_or(bucket, |(b, _)| *b);
        while let Some(&(b, count)) = self.buckets.front() {
            if b + WINDOW > newest {
                break;
            }
            self.sum -= count;
            self.buckets.pop_front();
        }
        self.peak = self.peak.max(self.sum);
    }
}

/// What the replay counted of one account.
#[derive(Debug, Default)]
pub struct AccountStats {
    pub messages: u64,
    pub recipients_external: u64,
    pub recipients_internal: u64,
    pub refused_recipients: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub deferred: u64,
    hours: Vec<HourPoint>,
    external_hour: Rolling<60>,
    internal_hour: Rolling<60>,
    pub restricted: bool,
}

impl AccountStats {
    fn hour_mut(&mut self, hour: u32) -> &mut HourPoint {
        let at = match self.hours.iter().rposition(|h| h.hour <= hour) {
            Some(i) if self.hours[i].hour == hour => i,
            found => {
                let i = found.map_or(0, |i| i + 1);
                self.hours.insert(i, HourPoint { hour, external: 0, internal: 0, refused: 0 });
                i
            }
        };
        &mut self.hours[at]
    }

    /// A message of `external` and `internal` recipients at `secs`, `refused` of them refused.
    pub fn message(&mut self, secs: i64, external: u32, internal: u32, refused: u32) {
        let minute = (secs.max(0) / 60) as u32;
        self.messages += 1;
        self.recipients_external += u64::from(external);
        self.recipients_internal += u64::from(internal);
        self.refused_recipients += u64::from(refused);
        self.external_hour.add(minute, external);
        self.internal_hour.add(minute, internal);
        let h = self.hour_mut(minute / 60);
        h.external += external;
        h.internal += internal;
        h.refused += refused;
    }

    /// The most recipients in any 24 hours.
    fn peak_per_day(&self) -> u32 {
        let mut day = Rolling::<24>::default();
        for h in &self.hours {
            day.add(h.hour, h.external + h.internal);
        }
        day.peak
    }
}

/// A restriction the policy would have made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestrictedAccount {
    pub account: String,
    pub policy: String,
    pub at: String,
    /// The limit's key, `spam`, `bounces`, … (as the metrics label restrictions).
    pub cause: String,
    pub reason: String,
    /// `null`: until released.
    pub until: Option<String>,
    /// A repeat within `escalate_window` made "until released" (`escalate_after`).
    pub escalated: bool,
    pub counters: Counters,
    /// Recipients and messages refused after it (until it ended or the next one).
    pub refused_recipients: u64,
    pub refused_messages: u64,
    pub series: Vec<HourPoint>,
}

/// An account among the busiest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountSummary {
    pub account: String,
    pub policy: String,
    pub messages: u64,
    pub recipients_external: u64,
    pub recipients_internal: u64,
    pub peak_external_per_hour: u32,
    pub peak_internal_per_hour: u32,
    pub peak_per_day: u32,
    pub limit_external_per_hour: u32,
    pub limit_internal_per_hour: u32,
    pub limit_per_day: u32,
    /// Each peak as a share of its limit (`null` where there is no limit).
    pub percent_external_per_hour: Option<u32>,
    pub percent_internal_per_hour: Option<u32>,
    pub percent_per_day: Option<u32>,
    pub delivered: u64,
    pub bounced: u64,
    pub deferred: u64,
    /// Share of the recipients with a final outcome that bounced (`null` when none had one).
    pub bounce_percent: Option<f64>,
    pub refused_recipients: u64,
    pub restricted: bool,
    pub series: Vec<HourPoint>,
}

/// The limits of a policy, or suggested ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LimitSet {
    pub recipient_limit_external_per_hour: u32,
    pub recipient_limit_internal_per_hour: u32,
    pub recipient_limit_per_day: u32,
}

/// How many accounts of a policy peaked at up to `up_to` external recipients in an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PeakBucket {
    pub up_to: u32,
    pub accounts: u64,
}

/// One policy: its accounts, its limits and what the log suggests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicySummary {
    pub name: String,
    pub accounts: u64,
    pub restricted_accounts: u64,
    pub limits: LimitSet,
    /// The highest peaks of the accounts that were not restricted.
    pub peaks: LimitSet,
    /// Above every such peak, with a margin; `null` when the policy had no such account.
    pub suggested: Option<LimitSet>,
    /// The distribution of the accounts' peak external recipients per hour.
    pub peak_distribution: Vec<PeakBucket>,
}

/// The input as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputSummary {
    /// The sources in the order read.
    pub files: Vec<String>,
    pub lines: u64,
    pub postfix_lines: u64,
    /// Lines that gave nothing, by kind: `unreadable`, `not_postfix`, `malformed`.
    pub unread: BTreeMap<String, u64>,
    pub first: Option<String>,
    pub last: Option<String>,
}

/// The messages rebuilt and replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MessageSummary {
    pub outbound: u64,
    pub local_submissions: u64,
    pub inbound: u64,
    /// Outbound but never counted (the null sender, `notify.from`).
    pub exempt: u64,
    pub recipients: u64,
    /// Outbound messages and recipients the policy would have refused.
    pub refused_messages: u64,
    pub refused_recipients: u64,
    /// Messages that never reached the queue manager (refused by the MTA or a milter).
    pub not_queued: u64,
    /// Queued messages whose first lines came before the log began (not replayed).
    pub origin_unknown: u64,
    /// Messages whose recipients did not all show in the log (replayed with what showed;
    /// the others counted as external).
    pub incomplete: u64,
}

/// An alert-only signal (`alert` actions): the policy would have told, not refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertSummary {
    pub account: String,
    pub first_at: String,
    pub alerts: u64,
    pub reason: String,
}

/// Everything `simulate` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub input: InputSummary,
    pub messages: MessageSummary,
    pub restricted: Vec<RestrictedAccount>,
    pub alerts: Vec<AlertSummary>,
    pub top: Vec<AccountSummary>,
    pub policies: Vec<PolicySummary>,
}

/// What is counted while the log is replayed.
#[derive(Debug, Default)]
pub struct Tracker {
    pub accounts: HashMap<CompactString, AccountStats, ahash::RandomState>,
    pub restricted: Vec<RestrictedAccount>,
    /// Per account, its newest restriction in `restricted`.
    pub latest_restriction: HashMap<String, usize>,
    pub alerts: Vec<AlertSummary>,
    alert_index: HashMap<String, usize>,
    pub messages: MessageSummary,
}

impl Tracker {
    pub fn account(&mut self, account: &str) -> &mut AccountStats {
        // An account name is mostly short enough for CompactString to keep inline: no
        // allocation for the key looked up.
        self.accounts.entry(CompactString::from(account)).or_default()
    }

    /// Refusals after `account`'s newest restriction.
    pub fn refused_after_restriction(&mut self, account: &str, recipients: u32, whole_message: bool) {
        if let Some(&i) = self.latest_restriction.get(account) {
            let r = &mut self.restricted[i];
            r.refused_recipients += u64::from(recipients);
            r.refused_messages += u64::from(whole_message);
        }
    }

    pub fn restriction(&mut self, r: RestrictedAccount) {
        self.account(&r.account).restricted = true;
        self.latest_restriction.insert(r.account.clone(), self.restricted.len());
        self.restricted.push(r);
    }

    pub fn alert(&mut self, account: &str, at: i64, reason: &str) {
        match self.alert_index.get(account) {
            Some(&i) => self.alerts[i].alerts += 1,
            None => {
                self.alert_index.insert(account.to_owned(), self.alerts.len());
                self.alerts.push(AlertSummary {
                    account: account.to_owned(),
                    first_at: rfc3339(at),
                    alerts: 1,
                    reason: reason.to_owned(),
                });
            }
        }
    }
}

/// A limit's figures for one account: its policy's name and limits.
pub struct AccountPolicy {
    pub name: String,
    pub limits: LimitSet,
}

fn percent(peak: u32, limit: u32) -> Option<u32> {
    (limit > 0).then(|| (u64::from(peak) * 100 / u64::from(limit)) as u32)
}

/// A round number above `peak`, with a margin of a fifth (at least 5): 1, 2, 2.5, 5 times a
/// power of ten.
pub fn suggest_above(peak: u32) -> u32 {
    let want = u64::from(peak) + (u64::from(peak) / 5).max(5);
    let mut scale = 1u64;
    loop {
        for step in [10u64, 20, 25, 50] {
            let candidate = step * scale / 10;
            if candidate >= want && candidate > u64::from(peak) {
                return candidate.min(u64::from(u32::MAX)) as u32;
            }
        }
        scale *= 10;
    }
}

/// Upper bounds of the peak distribution's buckets (the last one: no bound).
pub const PEAK_BUCKETS: [u32; 14] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, u32::MAX];

impl Tracker {
    /// The summary: `top` busiest accounts by recipients, `policy_of` naming each account's
    /// policy and limits.
    pub fn finish(
        mut self,
        input: InputSummary,
        top: usize,
        mut policy_of: impl FnMut(&str) -> AccountPolicy,
    ) -> Report {
        let mut policies: BTreeMap<String, PolicySummary> = BTreeMap::new();
        let mut ranked: Vec<(&CompactString, &AccountStats)> = self.accounts.iter().collect();
        ranked.sort_by(|a, b| {
            let total = |s: &AccountStats| s.recipients_external + s.recipients_internal;
            total(b.1).cmp(&total(a.1)).then_with(|| a.0.cmp(b.0))
        });
        let mut summaries = Vec::new();
        for (rank, (account, stats)) in ranked.iter().enumerate() {
            let policy = policy_of(account);
            let peak_ext = stats.external_hour.peak;
            let peak_int = stats.internal_hour.peak;
            let peak_day = stats.peak_per_day();
            let p = policies.entry(policy.name.clone()).or_insert_with(|| PolicySummary {
                name: policy.name.clone(),
                accounts: 0,
                restricted_accounts: 0,
                limits: policy.limits,
                peaks: LimitSet::default(),
                suggested: None,
                peak_distribution: PEAK_BUCKETS.iter().map(|&up_to| PeakBucket { up_to, accounts: 0 }).collect(),
            });
            p.accounts += 1;
            if let Some(b) = p.peak_distribution.iter_mut().find(|b| peak_ext <= b.up_to) {
                b.accounts += 1;
            }
            if stats.restricted {
                p.restricted_accounts += 1;
            } else {
                p.peaks.recipient_limit_external_per_hour = p.peaks.recipient_limit_external_per_hour.max(peak_ext);
                p.peaks.recipient_limit_internal_per_hour = p.peaks.recipient_limit_internal_per_hour.max(peak_int);
                p.peaks.recipient_limit_per_day = p.peaks.recipient_limit_per_day.max(peak_day);
                p.suggested = Some(LimitSet::default());
            }
            if rank < top {
                let finals = stats.delivered + stats.bounced;
                summaries.push(AccountSummary {
                    account: account.to_string(),
                    policy: policy.name,
                    messages: stats.messages,
                    recipients_external: stats.recipients_external,
                    recipients_internal: stats.recipients_internal,
                    peak_external_per_hour: peak_ext,
                    peak_internal_per_hour: peak_int,
                    peak_per_day: peak_day,
                    limit_external_per_hour: policy.limits.recipient_limit_external_per_hour,
                    limit_internal_per_hour: policy.limits.recipient_limit_internal_per_hour,
                    limit_per_day: policy.limits.recipient_limit_per_day,
                    percent_external_per_hour: percent(peak_ext, policy.limits.recipient_limit_external_per_hour),
                    percent_internal_per_hour: percent(peak_int, policy.limits.recipient_limit_internal_per_hour),
                    percent_per_day: percent(peak_day, policy.limits.recipient_limit_per_day),
                    delivered: stats.delivered,
                    bounced: stats.bounced,
                    deferred: stats.deferred,
                    bounce_percent: (finals > 0)
                        .then(|| (stats.bounced as f64 * 1000.0 / finals as f64).round() / 10.0),
                    refused_recipients: stats.refused_recipients,
                    restricted: stats.restricted,
                    series: stats.hours.clone(),
                });
            }
        }
        for p in policies.values_mut() {
            if p.suggested.is_some() {
                p.suggested = Some(LimitSet {
                    recipient_limit_external_per_hour: suggest_above(p.peaks.recipient_limit_external_per_hour),
                    recipient_limit_internal_per_hour: suggest_above(p.peaks.recipient_limit_internal_per_hour),
                    recipient_limit_per_day: suggest_above(p.peaks.recipient_limit_per_day),
                });
            }
            // Trailing empty buckets say nothing.
            while p.peak_distribution.last().is_some_and(|b| b.accounts == 0) {
                p.peak_distribution.pop();
            }
        }
        for r in &mut self.restricted {
            if let Some(stats) = self.accounts.get(r.account.as_str()) {
                r.series = stats.hours.clone();
            }
        }
        Report {
            input,
            messages: self.messages,
            restricted: self.restricted,
            alerts: self.alerts,
            top: summaries,
            policies: policies.into_values().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hourly_peak_is_over_any_sixty_minutes() {
        let mut s = AccountStats::default();
        // 30 at 10:50 and 30 at 11:10: two clock hours of 30, but 60 within an hour.
        s.message(10 * 3600 + 50 * 60, 30, 0, 0);
        s.message(11 * 3600 + 10 * 60, 30, 0, 0);
        assert_eq!(s.external_hour.peak, 60);
        // An hour later the window holds only the new one.
        s.message(12 * 3600 + 10 * 60, 5, 0, 0);
        assert_eq!(s.external_hour.peak, 60);
        assert_eq!(s.hours.len(), 3);
        assert_eq!(s.peak_per_day(), 65);
    }

    #[test]
    fn a_late_message_lands_in_its_own_hour() {
        let mut s = AccountStats::default();
        s.message(5 * 3600, 1, 0, 0);
        s.message(3 * 3600, 0, 2, 1);
        assert_eq!(s.hours.iter().map(|h| (h.hour, h.internal)).collect::<Vec<_>>(), vec![(3, 2), (5, 0)]);
    }

    #[test]
    fn suggestions_are_round_and_above_the_peak() {
        assert_eq!(suggest_above(0), 5);
        assert_eq!(suggest_above(3), 10);
        assert_eq!(suggest_above(97), 200);
        assert_eq!(suggest_above(80), 100);
        assert_eq!(suggest_above(400), 500);
        assert_eq!(suggest_above(2000), 2500);
        for peak in 0..5000 {
            assert!(suggest_above(peak) > peak);
        }
    }
}
