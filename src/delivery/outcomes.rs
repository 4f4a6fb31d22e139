//! What became of the accepted messages, per account: the queue IDs the engine accepted,
//! each recipient's last status as the log tells it, and each account's counts over its
//! policy's `bounce_window`.
//!
//! Bounded everywhere: the queue-ID map holds at most [`MAX_MESSAGES`] messages, each leaves
//! it when Postfix removes the message from its queue or, as a backstop for lines lost to a
//! rotation, after [`QUEUE_LIFETIME`]; an account keeps at most [`MAX_OUTCOMES`] outcomes
//! and [`MAX_SAMPLES`] sample bounces.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use compact_str::CompactString;

use crate::maillog::{DeliveryStatus, Event, LogLine};
use crate::policy::engine::bounces::{Accepted, BounceEvidence};

/// Postfix's default `maximal_queue_lifetime`: a message still unaccounted for after this
/// has left the queue without our seeing it.
pub const QUEUE_LIFETIME: Duration = Duration::from_secs(5 * 24 * 3600 + 3600);
/// Messages followed at once at most; a new one beyond is not followed (and counted).
pub const MAX_MESSAGES: usize = 200_000;
/// Outcomes kept per account; older ones are forgotten first.
pub const MAX_OUTCOMES: usize = 10_000;
/// Sample bounces kept per account for the restriction's reason.
pub const MAX_SAMPLES: usize = 3;
/// Recipients of one message whose deferral is remembered (for `expired`).
const MAX_DEFERRED_PER_MESSAGE: usize = 1000;

/// A recipient's final outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Bounced,
}

/// An accepted message still in the MTA's queue.
#[derive(Debug)]
struct Pending {
    account: CompactString,
    expires: i64,
    /// Recipients whose last status is `deferred`: bounced if the message expires.
    deferred: Vec<CompactString>,
}

/// An account's outcomes in its window.
#[derive(Debug, Default)]
struct AccountOutcomes {
    /// (seconds, outcome), oldest first.
    finals: VecDeque<(i64, Outcome)>,
    /// Seconds of each deferral.
    deferrals: VecDeque<i64>,
    samples: VecDeque<String>,
}

/// A recipient's final outcome, for an account: what [`Outcomes::line`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    pub account: CompactString,
    pub outcome: Outcome,
}

/// The queue-ID map and the per-account counts.
#[derive(Debug, Default)]
pub struct Outcomes {
    messages: HashMap<CompactString, Pending>,
    accounts: HashMap<CompactString, AccountOutcomes>,
    /// Accepted messages not followed because the map was full.
    pub overflowed: u64,
}

impl Outcomes {
    /// The engine accepted a message at `now` (seconds).
    pub fn accepted(&mut self, a: Accepted, now: i64) {
        if self.messages.len() >= MAX_MESSAGES && !self.messages.contains_key(&a.queue_id) {
            self.expire(now);
            if self.messages.len() >= MAX_MESSAGES {
                if self.overflowed == 0 {
                    tracing::warn!(
                        followed = MAX_MESSAGES,
                        "too many messages in the queue to follow; outcomes of newer ones are not counted"
                    );
                }
                self.overflowed += 1;
                return;
            }
        }
        let expires = now + QUEUE_LIFETIME.as_secs() as i64;
        self.messages.insert(a.queue_id, Pending { account: a.account, expires, deferred: Vec::new() });
    }

    /// Whether the message with queue ID `id` is followed.
    pub fn follows(&self, id: &[u8]) -> bool {
        std::str::from_utf8(id).is_ok_and(|id| self.messages.contains_key(id))
    }

    /// Messages followed now.
    pub fn followed(&self) -> usize {
        self.messages.len()
    }

    /// Takes in one log line at `now`; hands over the final outcomes it gave (an `expired`
    /// line finishes every recipient still deferred).
    pub fn line(&mut self, line: &LogLine<'_>, now: i64, mut on_final: impl FnMut(Final)) {
        let Some(id) = line.queue_id.and_then(|q| std::str::from_utf8(q).ok()) else { return };
        match line.event {
            Event::Delivery { to, dsn, status, .. } => {
                let (to, dsn) = (String::from_utf8_lossy(to), String::from_utf8_lossy(dsn));
                self.outcome(id, &to, &dsn, status, now, on_final);
            }
            Event::Expired { .. } => {
                let Some(pending) = self.messages.get_mut(id) else { return };
                let account = pending.account.clone();
                let deferred = std::mem::take(&mut pending.deferred);
                for to in deferred {
                    self.record(&account, Outcome::Bounced, now, Some(format!("{to}: expired in the queue")));
                    on_final(Final { account: account.clone(), outcome: Outcome::Bounced });
                }
            }
            Event::Removed => {
                self.messages.remove(id);
            }
            _ => {}
        }
    }

    /// Takes in one recipient's status (`to=`, `dsn=`, `status=` of a delivery line) of the
    /// message `id` at `now`; hands over the final outcome it gave.
    pub fn outcome(
        &mut self,
        id: &str,
        to: &str,
        dsn: &str,
        status: DeliveryStatus,
        now: i64,
        mut on_final: impl FnMut(Final),
    ) {
        let Some(pending) = self.messages.get_mut(id) else { return };
        pending.deferred.retain(|r| *r != *to);
        let outcome = match status {
            DeliveryStatus::Sent => Outcome::Delivered,
            DeliveryStatus::Bounced | DeliveryStatus::Expired => Outcome::Bounced,
            DeliveryStatus::Deferred => {
                if pending.deferred.len() < MAX_DEFERRED_PER_MESSAGE {
                    pending.deferred.push(CompactString::from(to));
                }
                let account = pending.account.clone();
                self.accounts.entry(account).or_default().deferrals.push_back(now);
                return;
            }
            DeliveryStatus::Other => return,
        };
        let account = pending.account.clone();
        let sample = (outcome == Outcome::Bounced).then(|| format!("{to}: {dsn}"));
        self.record(&account, outcome, now, sample);
        on_final(Final { account, outcome });
    }

    fn record(&mut self, account: &CompactString, outcome: Outcome, now: i64, sample: Option<String>) {
        let a = self.accounts.entry(account.clone()).or_default();
        if a.finals.len() >= MAX_OUTCOMES {
            a.finals.pop_front();
        }
        a.finals.push_back((now, outcome));
        if let Some(sample) = sample {
            if a.samples.len() >= MAX_SAMPLES {
                a.samples.pop_front();
            }
            a.samples.push_back(sample);
        }
    }

    /// The account's counts within `window` before `now`, dropping what is older.
    pub fn evidence(&mut self, account: &str, now: i64, window: Duration) -> BounceEvidence {
        let Some(a) = self.accounts.get_mut(account) else { return BounceEvidence::default() };
        let since = now - window.as_secs() as i64;
        while a.finals.front().is_some_and(|(t, _)| *t <= since) {
            a.finals.pop_front();
        }
        while a.deferrals.front().is_some_and(|t| *t <= since) {
            a.deferrals.pop_front();
        }
        let bounced = a.finals.iter().filter(|(_, o)| *o == Outcome::Bounced).count() as u32;
        BounceEvidence {
            bounced,
            delivered: a.finals.len() as u32 - bounced,
            deferred: a.deferrals.len() as u32,
            samples: a.samples.iter().cloned().collect(),
        }
    }

    /// Forgets the account's outcomes: the evidence led to a restriction, and after its
    /// release the account starts afresh.
    pub fn forget(&mut self, account: &str) {
        self.accounts.remove(account);
    }

    /// Drops messages past their queue lifetime and accounts with no outcome left in a day.
    pub fn expire(&mut self, now: i64) {
        self.messages.retain(|_, p| p.expires > now);
        self.accounts.retain(|_, a| {
            let last = a.finals.back().map(|(t, _)| *t).max(a.deferrals.back().copied());
            last.is_some_and(|t| t > now - QUEUE_LIFETIME.as_secs() as i64)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maillog;

    fn accepted(id: &str, account: &str) -> Accepted {
        Accepted { queue_id: id.into(), account: account.into() }
    }

    fn feed(o: &mut Outcomes, line: &str, now: i64) -> Vec<Outcome> {
        let parsed = maillog::parse(line.as_bytes()).expect("a Postfix line");
        let mut finals = Vec::new();
        o.line(&parsed, now, |f| finals.push(f.outcome));
        finals
    }

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn a_recipients_last_status_decides_and_deferred_is_neither() {
        let mut o = Outcomes::default();
        o.accepted(accepted("4A4419D402D", "a@example.com"), 0);
        let d = "Jan  1 00:00:01 mx postfix/smtp[9]: 4A4419D402D: to=<x@remote.example>, relay=r[10.0.0.2]:25, delay=1, delays=0/0/0/1, dsn=4.2.0, status=deferred (host said: 450 try later)";
        assert!(feed(&mut o, d, 1).is_empty());
        let s = "Jan  1 00:00:02 mx postfix/smtp[9]: 4A4419D402D: to=<x@remote.example>, relay=r[10.0.0.2]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)";
        assert_eq!(feed(&mut o, s, 2), vec![Outcome::Delivered]);
        let b = "Jan  1 00:00:03 mx postfix/smtp[9]: 4A4419D402D: to=<y@remote.example>, relay=r[10.0.0.2]:25, delay=1, delays=0/0/0/1, dsn=5.1.1, status=bounced (host said: 550 no such user)";
        assert_eq!(feed(&mut o, b, 3), vec![Outcome::Bounced]);
        let e = o.evidence("a@example.com", 4, H);
        assert_eq!((e.bounced, e.delivered, e.deferred), (1, 1, 1));
        assert_eq!(e.samples, vec!["y@remote.example: 5.1.1".to_owned()]);
        // Out of the window.
        let e = o.evidence("a@example.com", 3600 + 3, H);
        assert_eq!((e.bounced, e.delivered, e.deferred), (0, 0, 0));
    }

    #[test]
    fn an_expired_message_bounces_its_deferred_recipients_and_removal_forgets_it() {
        let mut o = Outcomes::default();
        o.accepted(accepted("4A4419D402D", "a@example.com"), 0);
        let d = "Jan  1 00:00:01 mx postfix/smtp[9]: 4A4419D402D: to=<x@remote.example>, relay=none, delay=1, delays=0/0/0/1, dsn=4.4.1, status=deferred (connect refused)";
        feed(&mut o, d, 1);
        let x =
            "Jan  6 00:00:01 mx postfix/qmgr[3]: 4A4419D402D: from=<a@example.com>, status=expired, returned to sender";
        assert_eq!(feed(&mut o, x, 2), vec![Outcome::Bounced]);
        let r = "Jan  6 00:00:01 mx postfix/qmgr[3]: 4A4419D402D: removed";
        feed(&mut o, r, 3);
        assert_eq!(o.followed(), 0);
        // Lines of messages the filter did not accept are nobody's.
        let s = "Jan  1 00:00:02 mx postfix/smtp[9]: 0FFFFF0000: to=<x@remote.example>, relay=r[10.0.0.2]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)";
        assert!(feed(&mut o, s, 4).is_empty());
    }

    #[test]
    fn the_map_is_bounded_and_expires() {
        let mut o = Outcomes::default();
        for i in 0..MAX_MESSAGES {
            o.accepted(accepted(&format!("Q{i:X}"), "a"), 0);
        }
        o.accepted(accepted("FULL0", "a"), 1);
        assert_eq!((o.followed(), o.overflowed), (MAX_MESSAGES, 1));
        o.accepted(accepted("LATER", "a"), QUEUE_LIFETIME.as_secs() as i64 + 1);
        assert_eq!(o.followed(), 1, "the expired ones made room");
    }
}
