//! Accepted messages rebuilt from the log's lines, handed over in the order the MTA accepted
//! them.
//!
//! A message's facts are spread over lines of several daemons: smtpd's `client=` (address and
//! SASL login) or pickup's `uid= from=` (a local submission), qmgr's `from= nrcpt= (queue
//! active)` (the sender and how many recipients were accepted), then one delivery line per
//! recipient and attempt (`to=`, `orig_to=`, `status=`). A message is complete once as many
//! distinct recipients as `nrcpt` have shown, or qmgr removed it; one whose recipients do not
//! all show within [`HORIZON_SECS`] of its acceptance goes with those that did (the rest counted as
//! unknown).
//!
//! Messages go out strictly in acceptance order (qmgr's first `queue active`), so the replay's
//! clock only moves forward; memory is bounded by the messages accepted within the horizon,
//! not by the log's length. A queue ID that never reaches qmgr (a milter or cleanup refused
//! the message, or the log began after its first lines) is dropped after the horizon.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use compact_str::CompactString;

use crate::maillog::{DeliveryStatus, Event, LogLine};

/// How long after its acceptance a message waits for its recipients' first delivery lines.
pub const HORIZON_SECS: i64 = 30 * 60;
/// Queue IDs looked at between sweeps of those that never reached qmgr.
const SWEEP_EVERY: u32 = 1 << 16;

/// A queue ID as a map key without allocating or checking UTF-8: up to 16 bytes packed as
/// they are; a longer (long-format) ID as its first 8 bytes beside a 64-bit FNV-1a hash of
/// it all, which cannot collide between the few messages in flight at once in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueKey(u128);

impl QueueKey {
    pub fn of(id: &[u8]) -> QueueKey {
        let mut packed = [0u8; 16];
        if id.len() <= 16 {
            packed[..id.len()].copy_from_slice(id);
            return QueueKey(u128::from_le_bytes(packed) | ((id.len() as u128) << 124));
        }
        let hash = id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        packed[..8].copy_from_slice(&id[..8]);
        packed[8..].copy_from_slice(&hash.to_le_bytes());
        QueueKey(!u128::from_le_bytes(packed))
    }
}

/// Who handed the message to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An SMTP client, with its SASL login when it authenticated.
    Smtp { client: Option<IpAddr>, login: Option<CompactString> },
    /// `sendmail(1)` (pickup): a local submission by Unix user `uid`.
    Local { uid: u32 },
    /// The MTA itself: a bounce or delay notice (null sender, no client and no pickup line).
    Mta,
}

/// A recipient's delivery line, before the message was replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub at: i64,
    /// Index of the recipient in [`Message::recipients`].
    pub recipient: u32,
    pub status: DeliveryStatus,
    /// The DSN code of a bounce (for the bounce signal's samples); empty otherwise.
    pub dsn: CompactString,
}

/// An accepted message, complete or as complete as it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub queue_id: CompactString,
    /// When the MTA received it (the first line seen of it), seconds.
    pub received: i64,
    pub origin: Origin,
    pub sender: CompactString,
    /// Envelope recipients as the client gave them (`orig_to` when an alias was expanded).
    pub recipients: Vec<CompactString>,
    /// Recipients `nrcpt` counted whose lines did not show within the horizon.
    pub unknown_recipients: u32,
    /// The delivery lines seen so far.
    pub deliveries: Vec<Delivery>,
    /// Whether qmgr removed it already (no line of it follows).
    pub removed: bool,
}

#[derive(Debug)]
struct Pending {
    id: CompactString,
    received: i64,
    origin: Option<Origin>,
    sender: CompactString,
    nrcpt: u32,
    /// When qmgr first took it (seconds); `None` before.
    active: Option<i64>,
    removed: bool,
    recipients: Vec<CompactString>,
    deliveries: Vec<Delivery>,
}

/// What became of the lines the reassembly was given, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages that never reached qmgr (refused by a milter or cleanup, or cut by the log's
    /// start).
    pub not_queued: u64,
    /// Messages queued whose origin lines came before the log began.
    pub origin_unknown: u64,
    /// Messages whose recipients did not all show within the horizon.
    pub incomplete: u64,
}

/// The messages in flight.
#[derive(Debug, Default)]
pub struct Reassembly {
    pending: HashMap<QueueKey, Pending, ahash::RandomState>,
    /// Queued messages in acceptance order.
    order: VecDeque<QueueKey>,
    since_sweep: u32,
    pub tally: Tally,
}

/// Bytes as a queue ID or address (lossy: a log is not always UTF-8).
fn text(bytes: &[u8]) -> CompactString {
    match std::str::from_utf8(bytes) {
        Ok(s) => CompactString::from(s),
        Err(_) => CompactString::from(String::from_utf8_lossy(bytes)),
    }
}

impl Reassembly {
    /// Messages in flight (for the memory bound's test).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Takes in one line at `now` (seconds) of a message not handed over yet (`key` is its
    /// queue ID's).
    pub fn line(&mut self, line: &LogLine<'_>, key: QueueKey, now: i64) {
        let Some(id) = line.queue_id else { return };
        match line.event {
            Event::Client { addr, sasl_username, .. } => {
                let client = std::str::from_utf8(addr).ok().and_then(|a| a.parse().ok());
                let origin = Origin::Smtp { client, login: sasl_username.map(text) };
                self.begin(key, id, now).origin = Some(origin);
            }
            Event::Pickup { uid, sender } => {
                let p = self.begin(key, id, now);
                p.origin = Some(Origin::Local { uid });
                p.sender = text(sender);
            }
            Event::QueueActive { sender, nrcpt, .. } => {
                let p = self.begin(key, id, now);
                if p.active.is_none() {
                    p.active = Some(now);
                    p.sender = text(sender);
                    p.nrcpt = nrcpt;
                    self.order.push_back(key);
                }
            }
            Event::Delivery { to, orig_to, status, dsn, .. } => {
                let Some(p) = self.pending.get_mut(&key) else { return };
                let recipient = orig_to.filter(|o| !o.is_empty()).unwrap_or(to);
                let index = match p.recipients.iter().position(|r| r.as_bytes() == recipient) {
                    Some(known) => known,
                    None => {
                        p.recipients.push(text(recipient));
                        p.recipients.len() - 1
                    }
                };
                let bounce = matches!(status, DeliveryStatus::Bounced | DeliveryStatus::Expired);
                let dsn = if bounce { text(dsn) } else { CompactString::default() };
                p.deliveries.push(Delivery { at: now, recipient: index as u32, status, dsn });
            }
            Event::Removed => {
                if let Some(p) = self.pending.get_mut(&key) {
                    p.removed = true;
                }
            }
            _ => {}
        }
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.sweep(now);
        }
    }

    fn begin(&mut self, key: QueueKey, id: &[u8], now: i64) -> &mut Pending {
        self.pending.entry(key).or_insert_with(|| Pending {
            id: text(id),
            received: now,
            origin: None,
            sender: CompactString::default(),
            nrcpt: 0,
            active: None,
            removed: false,
            recipients: Vec::new(),
            deliveries: Vec::new(),
        })
    }

    /// Drops the queue IDs that never reached qmgr within the horizon.
    fn sweep(&mut self, now: i64) {
        self.since_sweep = 0;
        let before = self.pending.len();
        self.pending.retain(|_, p| p.active.is_some() || p.received + HORIZON_SECS > now);
        self.tally.not_queued += (before - self.pending.len()) as u64;
    }

    /// Hands over, in acceptance order, the messages that are complete or past the horizon at
    /// `now`; with `now` = `None` (the end of the input), all of them.
    pub fn ready(&mut self, now: Option<i64>, mut each: impl FnMut(Message)) {
        while let Some(key) = self.order.front() {
            let Some(p) = self.pending.get(key) else {
                self.order.pop_front();
                continue;
            };
            let complete = p.removed || p.recipients.len() as u64 >= u64::from(p.nrcpt);
            let due = now.is_none_or(|now| p.active.unwrap_or(p.received) + HORIZON_SECS <= now);
            if !complete && !due {
                return;
            }
            let Some(key) = self.order.pop_front() else { return };
            let Some(p) = self.pending.remove(&key) else { continue };
            let origin = match p.origin {
                Some(origin) => origin,
                None if p.sender.is_empty() => Origin::Mta,
                None => {
                    self.tally.origin_unknown += 1;
                    continue;
                }
            };
            let unknown_recipients = p.nrcpt.saturating_sub(p.recipients.len() as u32);
            if unknown_recipients > 0 && !p.removed {
                self.tally.incomplete += 1;
            }
            each(Message {
                queue_id: p.id,
                received: p.received,
                origin,
                sender: p.sender,
                recipients: p.recipients,
                unknown_recipients: if p.removed { 0 } else { unknown_recipients },
                deliveries: p.deliveries,
                removed: p.removed,
            });
        }
        if now.is_none() {
            let left = self.pending.len() as u64;
            self.tally.not_queued += left;
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maillog;

    fn feed(r: &mut Reassembly, lines: &[(&str, i64)]) -> Vec<Message> {
        let mut out = Vec::new();
        for (line, now) in lines {
            let parsed = maillog::parse(line.as_bytes()).expect("a Postfix line");
            if let Some(id) = parsed.queue_id {
                r.line(&parsed, QueueKey::of(id), *now);
            }
            r.ready(Some(*now), |m| out.push(m));
        }
        out
    }

    const CLIENT: &str = "Jan  1 00:00:01 mx postfix/smtpd[1]: AAAAA11111: client=x[10.0.0.1], sasl_method=PLAIN, sasl_username=a@example.com";
    const ACTIVE: &str =
        "Jan  1 00:00:01 mx postfix/qmgr[2]: AAAAA11111: from=<a@example.com>, size=100, nrcpt=2 (queue active)";
    const TO_X: &str = "Jan  1 00:00:02 mx postfix/smtp[3]: AAAAA11111: to=<x@remote.example>, relay=r[10.0.0.2]:25, delay=1, delays=0/0/0/1, dsn=4.2.0, status=deferred (450 later)";
    const TO_Y: &str = "Jan  1 00:00:02 mx postfix/local[3]: AAAAA11111: to=<y@example.com>, orig_to=<list@example.com>, relay=local, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (delivered)";

    #[test]
    fn a_message_goes_out_once_all_its_recipients_showed() {
        let mut r = Reassembly::default();
        let out = feed(&mut r, &[(CLIENT, 1), (ACTIVE, 1), (TO_X, 2)]);
        assert!(out.is_empty(), "one of two recipients");
        let out = feed(&mut r, &[(TO_Y, 2)]);
        assert_eq!(out.len(), 1);
        let m = &out[0];
        assert_eq!(m.origin, Origin::Smtp { client: "10.0.0.1".parse().ok(), login: Some("a@example.com".into()) });
        assert_eq!(m.sender, "a@example.com");
        assert_eq!(m.recipients, vec![CompactString::from("x@remote.example"), "list@example.com".into()]);
        assert_eq!(m.deliveries.len(), 2);
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn acceptance_order_holds_and_the_horizon_lets_an_incomplete_message_go() {
        let mut r = Reassembly::default();
        let second = "Jan  1 00:00:03 mx postfix/pickup[4]: BBBBB22222: uid=1000 from=<cron@example.com>";
        let second_active =
            "Jan  1 00:00:03 mx postfix/qmgr[2]: BBBBB22222: from=<cron@example.com>, size=10, nrcpt=1 (queue active)";
        let second_to = "Jan  1 00:00:04 mx postfix/smtp[3]: BBBBB22222: to=<z@remote.example>, relay=r[10.0.0.2]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)";
        let out = feed(&mut r, &[(CLIENT, 1), (ACTIVE, 1), (TO_X, 2), (second, 3), (second_active, 3), (second_to, 4)]);
        assert!(out.is_empty(), "the second waits for the first");
        let late = 1 + HORIZON_SECS;
        let mut out = Vec::new();
        r.ready(Some(late), |m| out.push(m));
        assert_eq!(out.iter().map(|m| m.queue_id.as_str()).collect::<Vec<_>>(), ["AAAAA11111", "BBBBB22222"]);
        assert_eq!(out[0].unknown_recipients, 1);
        assert_eq!(out[1].origin, Origin::Local { uid: 1000 });
        assert_eq!(r.tally.incomplete, 1);
    }

    #[test]
    fn a_refused_message_never_queued_is_dropped_and_counted() {
        let mut r = Reassembly::default();
        let reject = "Jan  1 00:00:01 mx postfix/cleanup[5]: CCCCC33333: milter-reject: END-OF-MESSAGE from x[10.0.0.1]: 5.7.1 spam; from=<a@example.com> to=<x@remote.example> proto=ESMTP helo=<x>";
        let client = "Jan  1 00:00:01 mx postfix/smtpd[1]: CCCCC33333: client=x[10.0.0.1]";
        feed(&mut r, &[(client, 1), (reject, 1)]);
        let mut out = Vec::new();
        r.ready(None, |m| out.push(m));
        assert!(out.is_empty());
        assert_eq!(r.tally.not_queued, 1);
    }

    #[test]
    fn memory_holds_the_messages_in_flight_not_the_log() {
        // Two days of a message every 10 s whose recipient never shows: each waits out the
        // horizon, so what is held is the horizon's worth, whatever the length of the log.
        let mut r = Reassembly::default();
        let mut most = 0;
        let mut out = 0;
        for i in 0..(2 * 86_400 / 10) {
            let now = i64::from(i) * 10;
            let (h, m, sec) = (now / 3600 % 24, now / 60 % 60, now % 60);
            let id = format!("{:X}", 0x100000 + i);
            let client = format!("Jan  1 {h:02}:{m:02}:{sec:02} mx postfix/smtpd[1]: {id}: client=x[10.0.0.1]");
            let active = format!(
                "Jan  1 {h:02}:{m:02}:{sec:02} mx postfix/qmgr[2]: {id}: from=<a@example.com>, size=1, nrcpt=1 (queue active)"
            );
            for line in [client, active] {
                let parsed = maillog::parse(line.as_bytes()).unwrap();
                r.line(&parsed, QueueKey::of(parsed.queue_id.unwrap()), now);
            }
            r.ready(Some(now), |_| out += 1);
            most = most.max(r.in_flight());
        }
        assert!(most <= (HORIZON_SECS / 10 + 1) as usize, "held {most}");
        assert!(out > 17_000);
    }

    #[test]
    fn queue_keys_tell_ids_apart() {
        assert_ne!(QueueKey::of(b"ABCDE1"), QueueKey::of(b"ABCDE10"));
        assert_eq!(QueueKey::of(b"4ZbXyq0Cx9z4Ld2m"), QueueKey::of(b"4ZbXyq0Cx9z4Ld2m"));
        assert_ne!(QueueKey::of(b"4ZbXyq0Cx9z4Ld2mQ"), QueueKey::of(b"4ZbXyq0Cx9z4Ld2mR"));
        assert_ne!(QueueKey::of(b"4ZbXyq0Cx9z4Ld2m"), QueueKey::of(b"4ZbXyq0Cx9z4Ld2m7"));
    }
}
