//! What became of the accepted messages, per account: the queue IDs the engine accepted,
//! each recipient's last status as the log tells it, and each account's counts over its
//! policy's `bounce_window`.
//!
//! Bounded everywhere: the queue-ID map holds at most [`MAX_MESSAGES`] messages, each leaves
//! it when Postfix removes the message from its queue or, as a backstop for lines lost to a
//! rotation, after [`QUEUE_LIFETIME`]; an account keeps its counts in at most
//! [`BUCKETS`]` + 1` time buckets, whatever its volume, and [`MAX_SAMPLES`] sample bounces.

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
/// The buckets an account's `bounce_window` is cut into: each counts the outcomes of its
/// 1/60 of the window (whole seconds, at least one). An outcome counts while the end of its
/// bucket is within the window: for more than the window and at most one bucket longer.
pub const BUCKETS: i64 = 60;
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

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Final(Outcome),
    Deferred,
}

/// An accepted message still in the MTA's queue.
#[derive(Debug)]
struct Pending {
    account: CompactString,
    expires: i64,
    /// Its policy's `bounce_window` when it was accepted, seconds.
    window: i64,
    /// Recipients whose last status is `deferred`: bounced if the message expires.
    deferred: Vec<CompactString>,
}

/// The outcomes of one bucket of an account's window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// The bucket's number: its start is `slot * width` seconds.
    slot: i64,
    delivered: u32,
    bounced: u32,
    deferred: u32,
}

impl Bucket {
    fn add(&mut self, c: Count) {
        let n = match c {
            Count::Final(Outcome::Delivered) => &mut self.delivered,
            Count::Final(Outcome::Bounced) => &mut self.bounced,
            Count::Deferred => &mut self.deferred,
        };
        *n = n.saturating_add(1);
    }
}

/// An account's counts in its window: a fixed number of buckets, so its size does not grow
/// with its volume, and its evidence is a sum over them.
#[derive(Debug)]
struct AccountOutcomes {
    /// The window the buckets cover, and a bucket's width, seconds.
    window: i64,
    width: i64,
    /// The buckets with something in them, oldest first: at most `BUCKETS + 1`, the newest
    /// one's window.
    buckets: VecDeque<Bucket>,
    /// Seconds of the newest outcome.
    last: i64,
    samples: VecDeque<String>,
}

/// A bucket's width for `window` seconds: its 1/[`BUCKETS`], rounded up, at least a second.
fn width(window: i64) -> i64 {
    (window.max(1) + BUCKETS - 1) / BUCKETS
}

impl AccountOutcomes {
    fn new(window: i64) -> AccountOutcomes {
        AccountOutcomes {
            window,
            width: width(window),
            buckets: VecDeque::new(),
            last: i64::MIN,
            samples: VecDeque::new(),
        }
    }

    /// Whether the bucket `slot` still counts at `now`: its end is within the window.
    fn counts(&self, slot: i64, now: i64) -> bool {
        (slot + 1).saturating_mul(self.width) > now.saturating_sub(self.window)
    }

    /// Drops the buckets that no longer count at `now`.
    fn drop_before(&mut self, now: i64) {
        while self.buckets.front().is_some_and(|b| !self.counts(b.slot, now)) {
            self.buckets.pop_front();
        }
    }

    /// Counts `c` at `t` seconds. One older than the newest outcome's window (a line read
    /// late) counts nowhere: no later evidence would include it.
    fn add(&mut self, c: Count, t: i64) {
        let slot = t.div_euclid(self.width);
        let newest = self.buckets.back().map(|b| b.slot);
        if newest.is_none_or(|n| slot > n) {
            let mut b = Bucket { slot, ..Bucket::default() };
            b.add(c);
            self.buckets.push_back(b);
        } else if !self.counts(slot, self.last) {
            return;
        } else {
            // An older bucket, in the window: there, or in its place among the others.
            let at = self.buckets.iter().rposition(|b| b.slot <= slot);
            match at {
                Some(i) if self.buckets[i].slot == slot => self.buckets[i].add(c),
                _ => {
                    let mut b = Bucket { slot, ..Bucket::default() };
                    b.add(c);
                    self.buckets.insert(at.map_or(0, |i| i + 1), b);
                }
            }
        }
        self.last = self.last.max(t);
        self.drop_before(self.last);
    }

    /// Cuts the buckets to `window` seconds, when it is not the one they were made for (a
    /// reload changed it): each old bucket's counts go to the new bucket of its start.
    fn resize(&mut self, window: i64) {
        if window == self.window {
            return;
        }
        let (old, w) = (std::mem::take(&mut self.buckets), self.width);
        self.window = window;
        self.width = width(window);
        for b in old {
            let slot = (b.slot * w).div_euclid(self.width);
            match self.buckets.back_mut() {
                Some(n) if n.slot == slot => {
                    n.delivered = n.delivered.saturating_add(b.delivered);
                    n.bounced = n.bounced.saturating_add(b.bounced);
                    n.deferred = n.deferred.saturating_add(b.deferred);
                }
                _ => self.buckets.push_back(Bucket { slot, ..b }),
            }
        }
        self.drop_before(self.last);
    }
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
        let window = i64::try_from(a.window.as_secs()).unwrap_or(i64::MAX);
        self.messages.insert(a.queue_id, Pending { account: a.account, expires, window, deferred: Vec::new() });
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
                let (account, window) = (pending.account.clone(), pending.window);
                let deferred = std::mem::take(&mut pending.deferred);
                for to in deferred {
                    let sample = Some(format!("{to}: expired in the queue"));
                    self.record(&account, window, Count::Final(Outcome::Bounced), now, sample);
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
                let (account, window) = (pending.account.clone(), pending.window);
                self.record(&account, window, Count::Deferred, now, None);
                return;
            }
            DeliveryStatus::Other => return,
        };
        let (account, window) = (pending.account.clone(), pending.window);
        let sample = (outcome == Outcome::Bounced).then(|| format!("{to}: {dsn}"));
        self.record(&account, window, Count::Final(outcome), now, sample);
        on_final(Final { account, outcome });
    }

    /// Counts `c` for `account` at `now`; a new account's buckets cover `window` (seconds).
    fn record(&mut self, account: &CompactString, window: i64, c: Count, now: i64, sample: Option<String>) {
        let a = match self.accounts.get_mut(account.as_str()) {
            Some(a) => a,
            None => self.accounts.entry(account.clone()).or_insert_with(|| AccountOutcomes::new(window)),
        };
        a.add(c, now);
        if let Some(sample) = sample {
            if a.samples.len() >= MAX_SAMPLES {
                a.samples.pop_front();
            }
            a.samples.push_back(sample);
        }
    }

    /// The account's counts within `window` before `now` (to the bucket: see [`BUCKETS`]),
    /// dropping what is older.
    pub fn evidence(&mut self, account: &str, now: i64, window: Duration) -> BounceEvidence {
        let Some(a) = self.accounts.get_mut(account) else { return BounceEvidence::default() };
        a.resize(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
        a.drop_before(now);
        let mut e = BounceEvidence { samples: a.samples.iter().cloned().collect(), ..BounceEvidence::default() };
        for b in &a.buckets {
            e.bounced = e.bounced.saturating_add(b.bounced);
            e.delivered = e.delivered.saturating_add(b.delivered);
            e.deferred = e.deferred.saturating_add(b.deferred);
        }
        e
    }

    /// The buckets `account` holds now (at most [`BUCKETS`]` + 1`).
    pub fn buckets(&self, account: &str) -> usize {
        self.accounts.get(account).map_or(0, |a| a.buckets.len())
    }

    /// Forgets the account's outcomes: the evidence led to a restriction, and after its
    /// release the account starts afresh.
    pub fn forget(&mut self, account: &str) {
        self.accounts.remove(account);
    }

    /// Drops messages past their queue lifetime and accounts with no outcome left in a day.
    pub fn expire(&mut self, now: i64) {
        self.messages.retain(|_, p| p.expires > now);
        self.accounts.retain(|_, a| a.last > now - QUEUE_LIFETIME.as_secs() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maillog;

    fn accepted(id: &str, account: &str) -> Accepted {
        Accepted { queue_id: id.into(), account: account.into(), window: H }
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
        // Out of the window once their bucket (the first minute) is.
        let e = o.evidence("a@example.com", 3600 + 59, H);
        assert_eq!((e.bounced, e.delivered, e.deferred), (1, 1, 1));
        let e = o.evidence("a@example.com", 3600 + 60, H);
        assert_eq!((e.bounced, e.delivered, e.deferred), (0, 0, 0));
    }

    /// Counts `c` for account "a" at `t`, as a delivery line would.
    fn count(o: &mut Outcomes, c: Count, t: i64) {
        o.record(&CompactString::from("a"), 3600, c, t, None);
    }

    #[test]
    fn an_outcome_counts_while_its_bucket_ends_within_the_window() {
        // A bucket of the hour is a minute: [60, 120) is the second.
        let mut o = Outcomes::default();
        count(&mut o, Count::Final(Outcome::Delivered), 60);
        count(&mut o, Count::Final(Outcome::Bounced), 119);
        count(&mut o, Count::Deferred, 120);
        let at = |o: &mut Outcomes, now| {
            let e = o.evidence("a", now, H);
            (e.delivered, e.bounced, e.deferred)
        };
        assert_eq!(at(&mut o, 120), (1, 1, 1));
        // The bucket of 60 and 119 ends at 120: counted up to 3,600 s after that, so the
        // outcome at 119 for 3,601 s and the one at 60 for 3,660 s, a bucket more.
        assert_eq!(at(&mut o, 3600 + 119), (1, 1, 1));
        assert_eq!(at(&mut o, 3600 + 120), (0, 0, 1));
        assert_eq!(at(&mut o, 3600 + 179), (0, 0, 1));
        assert_eq!(at(&mut o, 3600 + 180), (0, 0, 0));
    }

    #[test]
    fn the_count_is_the_outcomes_of_the_window_to_the_bucket() {
        // One outcome every 7 s for three hours, every third bounced; at each minute's edge
        // and just before it, the evidence is every outcome after now - window, and those of
        // the bucket the window's start falls in.
        let mut o = Outcomes::default();
        let times: Vec<i64> = (0..3 * 3600 / 7).map(|i| i * 7).collect();
        for (i, t) in times.iter().enumerate() {
            let c = if i % 3 == 0 { Count::Final(Outcome::Bounced) } else { Count::Final(Outcome::Delivered) };
            count(&mut o, c, *t);
            let now = *t;
            if now % 60 > 52 || now % 60 < 7 {
                let e = o.evidence("a", now, H);
                let bucket_start = (now - 3600).div_euclid(60) * 60;
                let expected = |bounced: bool| {
                    (0..=i).filter(|j| times[*j] >= bucket_start && (j % 3 == 0) == bounced).count() as u32
                };
                assert_eq!((e.bounced, e.delivered), (expected(true), expected(false)), "at {now}");
            }
        }
    }

    #[test]
    fn an_account_holds_at_most_a_window_of_buckets_whatever_its_volume() {
        let mut o = Outcomes::default();
        // A million outcomes over ten hours, 28 a second.
        let at = |i: i64| i * 36_000 / 1_000_000;
        for i in 0..1_000_000i64 {
            count(&mut o, Count::Final(Outcome::Delivered), at(i));
            assert!(o.buckets("a") <= BUCKETS as usize + 1, "{} buckets after {i}", o.buckets("a"));
        }
        let a = &o.accounts["a"];
        assert_eq!(a.buckets.len(), BUCKETS as usize + 1);
        assert!(a.buckets.capacity() <= 64, "capacity {}", a.buckets.capacity());
        // The last hour's and those of the minute it starts in (32,340 to 32,399 s).
        let e = o.evidence("a", 35_999, H);
        assert_eq!(e.delivered as usize, (0..1_000_000i64).filter(|i| at(*i) >= 32_340).count());
    }

    #[test]
    fn late_lines_count_in_their_bucket_and_a_new_window_regroups_the_counts() {
        let mut o = Outcomes::default();
        count(&mut o, Count::Final(Outcome::Delivered), 600);
        count(&mut o, Count::Final(Outcome::Bounced), 1200);
        // Read late: in its own bucket, between the two; one older than the window, nowhere.
        count(&mut o, Count::Final(Outcome::Bounced), 900);
        count(&mut o, Count::Final(Outcome::Bounced), 1200 - 3600 - 60);
        assert_eq!(o.buckets("a"), 3);
        let e = o.evidence("a", 1200, H);
        assert_eq!((e.delivered, e.bounced), (1, 2));
        // The window cut to 10 minutes (a reload): 10 s buckets, each outcome in the one of
        // its old bucket's start; [600, 610) leaves at 1,210, [900, 910) at 1,510.
        let e = o.evidence("a", 1209, Duration::from_secs(600));
        assert_eq!((e.delivered, e.bounced), (1, 2));
        let e = o.evidence("a", 1210, Duration::from_secs(600));
        assert_eq!((e.delivered, e.bounced), (0, 2));
        let e = o.evidence("a", 1510, Duration::from_secs(600));
        assert_eq!((e.delivered, e.bounced), (0, 1));
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
