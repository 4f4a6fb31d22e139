//! The engine's side of the bounce signal: it tells the delivery follower (`crate::delivery`)
//! which queue ID belongs to which account when it accepts a message, and restricts (or
//! alerts about) an account whose recipients bounce too often, as the follower reports.
//!
//! The hand-over at end of message is a `try_send` on a bounded channel that exists only with
//! `[delivery] postfix_log`: without it the milter path pays one empty check; with it a full
//! channel (a stuck follower) drops the pair and counts it, never waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use compact_str::CompactString;
use tokio::sync::mpsc;
use tracing::warn;

use super::{Engine, Transaction};
use crate::config::LimitAction;
use crate::policy::events::{Event, EventKind};
use crate::policy::record::HourlyNotice;
use crate::policy::restriction::Restriction;

/// The restriction cause and metrics reason of the bounce signal.
pub const CAUSE: &str = "bounces";

/// A message the filter accepted at end of message: the MTA's queue ID, the account and its
/// policy's `bounce_window` then (the follower sizes a new account's counts by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub queue_id: CompactString,
    pub account: CompactString,
    pub window: Duration,
}

/// The sending end of the engine's hand-over to the delivery follower.
#[derive(Debug)]
pub(super) struct DeliveryTap {
    tx: mpsc::Sender<Accepted>,
    dropped: AtomicU64,
}

/// The bounce keys of the policy an account falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BounceThresholds {
    pub window: Duration,
    pub min_recipients: u32,
    /// 0: the signal is off.
    pub percent: u8,
    pub action: LimitAction,
}

impl BounceThresholds {
    /// Whether `bounced` of `bounced + delivered` recipients pass both thresholds.
    pub fn reached(&self, bounced: u32, delivered: u32) -> bool {
        let total = u64::from(bounced) + u64::from(delivered);
        self.percent > 0
            && bounced >= self.min_recipients
            && u64::from(bounced) * 100 >= u64::from(self.percent) * total
    }
}

/// What the follower saw of an account in its window: the counts and a few bounce lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BounceEvidence {
    pub bounced: u32,
    pub delivered: u32,
    pub deferred: u32,
    /// A few of the bounces, as `recipient: dsn`, newest last.
    pub samples: Vec<String>,
}

/// What [`Engine::bounces_reached`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceAction {
    /// A new restriction.
    Restricted,
    /// Already restricted, or an alert already went out this hour.
    Nothing,
    /// The alert of this hour.
    Alerted,
    /// The restriction could not be recorded.
    Failed,
}

impl Engine {
    /// Starts handing accepted messages to a delivery follower, over a channel of `capacity`;
    /// `None` when it was started before (one follower per engine).
    pub fn tap_deliveries(&self, capacity: usize) -> Option<mpsc::Receiver<Accepted>> {
        let (tx, rx) = mpsc::channel(capacity);
        self.delivery.set(DeliveryTap { tx, dropped: AtomicU64::new(0) }).ok()?;
        Some(rx)
    }

    /// Accepted messages not handed to the follower because it could not keep up.
    pub fn deliveries_dropped(&self) -> u64 {
        self.delivery.get().map_or(0, |t| t.dropped.load(Ordering::Relaxed))
    }

    /// The end of message accepted `tx`'s message: hands its queue ID and account over, when
    /// a follower listens and the MTA told the queue ID.
    pub(super) fn tell_delivery(&self, tx: &Transaction, queue_id: Option<&[u8]>) {
        let Some(tap) = self.delivery.get() else { return };
        let Some(id) = queue_id.and_then(|q| std::str::from_utf8(q).ok()).filter(|q| !q.is_empty()) else {
            return;
        };
        let Some(compiled) = tx.compiled.as_ref() else { return };
        let accepted = Accepted {
            queue_id: CompactString::from(id),
            account: CompactString::from(tx.account.as_str()),
            window: compiled.policies.settings(tx.policy).bounce_window,
        };
        if tap.tx.try_send(accepted).is_err() && tap.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!("delivery follower not keeping up; outcomes of some accepted messages are not followed");
        }
    }

    /// The bounce keys of the policy `account` falls under now.
    pub fn bounce_thresholds(&self, account: &str) -> BounceThresholds {
        let compiled = self.current.load();
        let s = compiled.policies.settings(compiled.policies.select(account));
        BounceThresholds {
            window: s.bounce_window,
            min_recipients: s.bounce_min_recipients,
            percent: s.bounce_percent,
            action: s.bounce_action,
        }
    }

    /// `account`'s recipients bounced past its policy's thresholds (`evidence`): restrict it,
    /// or alert at most once an hour, per `bounce_action`.
    pub fn bounces_reached(&self, account: &str, evidence: &BounceEvidence) -> BounceAction {
        let compiled = self.current.load();
        let policy = compiled.policies.select(account);
        let settings = compiled.policies.settings(policy);
        let now = self.clock.now();
        let reason =
            bounce_reason(evidence, settings.bounce_window, settings.bounce_min_recipients, settings.bounce_percent);
        let node = &compiled.config.notify.node_name;
        if settings.bounce_action == LimitAction::Alert {
            let first =
                self.accounts.record_mut(account, policy).first_notice_this_hour(HourlyNotice::BounceAlert, now.hour());
            if !first {
                return BounceAction::Nothing;
            }
            warn!(account, "{reason}; delivering (alert only)");
            self.events.emit(Event {
                reason,
                counters: self.counters(account),
                cause: CAUSE.to_owned(),
                ..Event::alert(EventKind::SendingLimitExceeded, account, &settings.name, node, now.datetime())
            });
            return BounceAction::Alerted;
        }
        let until =
            (settings.bounce_action == LimitAction::BlockUntilTomorrow).then(|| now.next_utc_midnight().datetime());
        let restriction = Restriction::by_policy(
            account,
            &reason,
            &settings.name,
            now.datetime(),
            until,
            self.counters(account),
            CAUSE,
        );
        match self.restrict_by_policy(restriction, settings, None, node) {
            Ok(true) => BounceAction::Restricted,
            Ok(false) => BounceAction::Nothing,
            Err(e) => {
                tracing::error!(account, "cannot record restriction: {e}");
                BounceAction::Failed
            }
        }
    }
}

/// The reason of a bounce restriction: the counts, the thresholds and a few of the bounces.
fn bounce_reason(e: &BounceEvidence, window: Duration, min: u32, percent: u8) -> String {
    let total = e.bounced + e.delivered;
    let mut reason = format!(
        "{} of its {total} recipients with a final outcome in the last {} bounced ({} delivered, {} deferred \
         and not yet final; thresholds: {min} recipients and {percent}%)",
        e.bounced,
        crate::config::duration::format(window),
        e.delivered,
        e.deferred,
    );
    if !e.samples.is_empty() {
        reason.push_str("; e.g. ");
        reason.push_str(&e.samples.join("; "));
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds(min: u32, percent: u8) -> BounceThresholds {
        BounceThresholds { window: Duration::from_secs(3600), min_recipients: min, percent, action: LimitAction::Block }
    }

    #[test]
    fn both_thresholds_must_be_passed_and_zero_percent_is_off() {
        assert!(thresholds(3, 50).reached(3, 3));
        assert!(!thresholds(3, 50).reached(2, 0), "too few bounces");
        assert!(!thresholds(3, 50).reached(3, 4), "too small a share");
        assert!(!thresholds(1, 0).reached(100, 0), "0 percent: the signal is off");
        assert!(thresholds(1, 100).reached(1, 0));
    }

    #[test]
    fn the_reason_names_the_counts_and_the_bounces() {
        let e = BounceEvidence {
            bounced: 3,
            delivered: 1,
            deferred: 2,
            samples: vec!["a@x.example: 5.1.1".into(), "b@x.example: 5.7.1".into()],
        };
        let r = bounce_reason(&e, Duration::from_secs(3600), 3, 50);
        assert!(r.starts_with("3 of its 4 recipients with a final outcome in the last 1h bounced"), "{r}");
        assert!(r.contains("1 delivered, 2 deferred"), "{r}");
        assert!(r.ends_with("e.g. a@x.example: 5.1.1; b@x.example: 5.7.1"), "{r}");
    }
}
