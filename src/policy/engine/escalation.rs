//! Every restriction the policy makes (a limit, the spam share, bounces) goes through
//! [`Engine::restrict_by_policy`]: escalated first when the account is a repeat offender, then
//! recorded, counted, logged and announced.
//!
//! Repeat offenders: with `escalate_after = N`, a policy restriction that is the account's N-th
//! (or later) by the policy within `escalate_window` is made until released, whatever the
//! policy's action says, and is recorded as `escalated` in its history. The earlier ones are
//! read from the account's audit trail; restrictions an administrator made do not count. This
//! runs only when a restriction is being made, never for a recipient that passes.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::warn;

use super::Engine;
use crate::config::PolicySettings;
use crate::config::duration;
use crate::policy::clock::rfc3339;
use crate::policy::events::Event;
use crate::policy::limits::LimitKind;
use crate::policy::restriction::{AuditEntry, Restriction, StoreError};

impl Engine {
    /// Records `restriction`, made by the policy under `settings` (escalated first when
    /// [`escalation`] says so), and, when it is new, counts it, logs it and announces it with
    /// `limit` as the limit reached. Returns whether it is new: `false` when the account was
    /// restricted already (another transaction got there first).
    ///
    /// # Errors
    /// When the store cannot record it; nothing is announced then.
    pub(super) fn restrict_by_policy(
        &self,
        restriction: Restriction,
        settings: &PolicySettings,
        limit: Option<LimitKind>,
        node: &str,
    ) -> Result<bool, StoreError> {
        // The trail is read (from disk, on the durable store) only when escalation is on.
        let nth = match settings.escalate_after {
            0 => None,
            _ => escalation(settings, &self.restrictions.history(&restriction.account), restriction.created_at),
        };
        let restriction = match nth {
            Some(nth) => escalated(restriction, nth, settings.escalate_window),
            None => restriction,
        };
        let event = Event::restricted(&restriction, limit, node, None);
        if !self.restrictions.restrict(restriction.clone(), "policy", Some(&event))? {
            return Ok(false);
        }
        let cause = restriction.cause();
        self.metrics.restricted(cause);
        if let Some(domain) = restriction.account.strip_prefix('@') {
            self.metrics.domain_restricted(domain);
        }
        if restriction.escalated {
            self.metrics.escalated(cause);
        }
        let until = restriction.until.map_or_else(|| "until released".to_owned(), rfc3339);
        warn!(account = %restriction.account, policy = %settings.name, until = %until, escalated = restriction.escalated, "account restricted: {}", restriction.reason);
        self.events.emit(event);
        Ok(true)
    }
}

/// Whether a policy restriction made at `now` is escalated, given the account's audit trail
/// `history`: `Some(n)` when it is the n-th policy restriction within `escalate_window` and n
/// reaches `escalate_after` (0: never).
fn escalation(settings: &PolicySettings, history: &[AuditEntry], now: OffsetDateTime) -> Option<usize> {
    if settings.escalate_after == 0 {
        return None;
    }
    let nth = earlier_in_window(history, now, settings.escalate_window) + 1;
    (nth >= settings.escalate_after as usize).then_some(nth)
}

/// How many restrictions by the policy in `history` began within `window` before `now`.
fn earlier_in_window(history: &[AuditEntry], now: OffsetDateTime, window: Duration) -> usize {
    let now = now.unix_timestamp();
    let since = now.saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
    history.iter().filter(|e| e.is_policy_restriction() && (since..=now).contains(&e.at.unix_timestamp())).count()
}

/// `r` made until released as the `nth` policy restriction within `window`, saying so in its
/// reason.
fn escalated(mut r: Restriction, nth: usize, window: Duration) -> Restriction {
    r.until = None;
    r.escalated = true;
    r.reason =
        format!("{} ({} restriction within {}: until released)", r.reason, ordinal(nth), duration::format(window));
    r
}

/// `1st`, `2nd`, `3rd`, `4th` … `11th`, `12th`, `13th`, `21st` …
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::builtin_default_policy;
    use crate::policy::restriction::{Counters, Source};

    const DAY: i64 = 86_400;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    fn policy_restriction(secs: i64) -> Restriction {
        Restriction::by_policy("a@x", "limit", "default", at(secs), Some(at(secs + DAY)), Counters::default(), "spam")
    }

    fn settings(after: u32, window_days: u64) -> PolicySettings {
        PolicySettings {
            escalate_after: after,
            escalate_window: Duration::from_secs(window_days * 86_400),
            ..builtin_default_policy()
        }
    }

    #[test]
    fn only_policy_restrictions_within_the_window_count() {
        let now = 100 * DAY;
        let mut admin = Restriction::by_admin("a@x", "by hand", "default", at(now - DAY), None, Counters::default());
        admin.source = Source::Admin;
        let history = vec![
            AuditEntry::restricted(&policy_restriction(now - 8 * DAY), "policy"),
            AuditEntry::restricted(&policy_restriction(now - 2 * DAY), "policy"),
            AuditEntry::released("a@x", at(now - 2 * DAY + 60), "admin", ""),
            AuditEntry::restricted(&admin, "alice"),
            AuditEntry::replaced(&policy_restriction(now - 3 * DAY), at(now - 60), "alice"),
            // From another node (its source not kept in older trails).
            AuditEntry { source: None, ..AuditEntry::restricted(&policy_restriction(now - DAY), "policy (on b)") },
        ];
        assert_eq!(earlier_in_window(&history, at(now), Duration::from_secs(7 * 86_400)), 2);
        assert_eq!(earlier_in_window(&history, at(now), Duration::from_secs(9 * 86_400)), 3);
        assert_eq!(earlier_in_window(&history, at(now), Duration::from_secs(3600)), 0);
    }

    #[test]
    fn the_nth_restriction_is_escalated_and_zero_never() {
        let now = 100 * DAY;
        let one = vec![AuditEntry::restricted(&policy_restriction(now - DAY), "policy")];
        assert_eq!(escalation(&settings(2, 7), &[], at(now)), None, "the first of two");
        assert_eq!(escalation(&settings(2, 7), &one, at(now)), Some(2));
        assert_eq!(escalation(&settings(1, 7), &[], at(now)), Some(1), "every restriction");
        assert_eq!(escalation(&settings(3, 7), &one, at(now)), None);
        assert_eq!(escalation(&settings(0, 7), &one, at(now)), None, "off");
        assert_eq!(escalation(&settings(2, 1), &one, at(now + 60)), None, "outside the window");
    }

    #[test]
    fn an_escalated_restriction_is_until_released_and_says_why() {
        let r = escalated(policy_restriction(0), 2, Duration::from_secs(7 * 86_400));
        assert_eq!((r.until, r.escalated), (None, true));
        assert_eq!(r.reason, "limit (2nd restriction within 7d: until released)");
        let entry = AuditEntry::restricted(&r, "policy");
        assert_eq!(entry.action, crate::policy::restriction::AuditAction::Escalated);
        assert!(entry.starts_restriction() && entry.is_policy_restriction());
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["action"], "escalated");
    }

    #[test]
    fn ordinals() {
        let words: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111].into_iter().map(ordinal).collect();
        assert_eq!(
            words,
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th"]
        );
    }
}
