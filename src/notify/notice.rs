//! The facts of one notification as the notifier keeps them: built from a policy
//! [`Event`], written to the spool, read back after a restart, rendered into an email or a
//! webhook body. A type of our own (not `Event` itself) so the spool format is under this
//! module's control: a field added to `Event` cannot make yesterday's spool unreadable.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::policy::events::{Event, EventKind};
use crate::policy::restriction::Counters;

/// Which event a notice reports. Mirrors [`EventKind`] with a serde shape we own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    SenderRestricted,
    SendingLimitExceeded,
    ApproachingLimit,
    SenderReleased,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 4] = [
        NoticeKind::SenderRestricted,
        NoticeKind::SendingLimitExceeded,
        NoticeKind::ApproachingLimit,
        NoticeKind::SenderReleased,
    ];

    /// The event name used in templates file names, the webhook and logs.
    pub fn name(self) -> &'static str {
        match self {
            NoticeKind::SenderRestricted => "sender_restricted",
            NoticeKind::SendingLimitExceeded => "sending_limit_exceeded",
            NoticeKind::ApproachingLimit => "approaching_limit",
            NoticeKind::SenderReleased => "sender_released",
        }
    }

    /// The severities docs/notifications.md lists, for the webhook receiver's routing.
    pub fn severity(self) -> &'static str {
        match self {
            NoticeKind::SenderRestricted => "high",
            NoticeKind::SendingLimitExceeded | NoticeKind::ApproachingLimit => "medium",
            NoticeKind::SenderReleased => "info",
        }
    }
}

impl From<EventKind> for NoticeKind {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::SenderRestricted => NoticeKind::SenderRestricted,
            EventKind::SendingLimitExceeded => NoticeKind::SendingLimitExceeded,
            EventKind::ApproachingLimit => NoticeKind::ApproachingLimit,
            EventKind::SenderReleased => NoticeKind::SenderReleased,
        }
    }
}

/// A delivery channel. Each event becomes one spooled notice per channel so a webhook that
/// is down never holds back (or duplicates) the email, and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Webhook,
    /// The restricted account's own notice (`notify_sender`), emailed to the account.
    Sender,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
            Channel::Sender => "sender",
        }
    }
}

/// What happened, in the shape the spool stores and templates read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub kind: NoticeKind,
    pub account: String,
    /// The engine's own (English) explanation.
    pub reason: String,
    pub policy: String,
    /// The configuration key of the limit concerned (`recipient_limit_per_day`, ...), for
    /// limit events.
    pub limit: Option<String>,
    pub counters: Counters,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    pub node: String,
    pub by: Option<String>,
    /// When the notifier took the event in, in nanoseconds since the epoch (0 in spool files
    /// written before it was kept). Part of the id, because everything else can repeat: an
    /// account restricted, released and restricted again within one second gives two
    /// `sender_restricted` events alike in kind, account, `since` and limit.
    #[serde(default)]
    pub taken_in_ns: u64,
    /// The id of the restriction or release it reports ([`Event::id`]), recorded with the
    /// change; empty for alerts and in spool files written before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_id: String,
    /// What led to a restriction ([`Event::cause`]); empty for other notices and in spool
    /// files written before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause: String,
    /// A restriction made until released as a repeat within the policy's `escalate_window`
    /// ([`Event::escalated`]); false in spool files written before it was kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
}

impl From<&Event> for Notice {
    fn from(e: &Event) -> Self {
        Notice {
            kind: e.kind.into(),
            account: e.account.clone(),
            reason: e.reason.clone(),
            policy: e.policy.clone(),
            limit: e.limit.map(|l| l.key().to_owned()),
            counters: e.counters.clone(),
            since: e.since,
            until: e.until,
            node: e.node.clone(),
            by: e.by.clone(),
            taken_in_ns: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
            event_id: e.id.clone(),
            cause: e.cause.clone(),
            escalated: e.escalated,
        }
    }
}

impl Notice {
    /// The id of this notice on `channel`: its spool file's name, and the webhook's
    /// idempotency key, so that a receiver can tell a retry from a new event.
    ///
    /// A restriction's or release's notice is named by its event's id, which was recorded
    /// with the change: the same event handed over again after a restart gets the same id, and
    /// the spool knows it. An alert's (no event id) is derived from kind, account, `since`,
    /// the limit, the channel and the time the notifier took the event in — the limit because
    /// two different limits can be approached in the same second, the intake time because
    /// alerts can repeat within one second. FNV-1a rather than std's hasher, whose output is
    /// not promised to stay the same across Rust releases.
    pub fn id(&self, channel: Channel) -> String {
        if !self.event_id.is_empty() {
            return format!("{}-{}-{}", self.kind.name(), channel.name(), self.event_id);
        }
        let mut h = Fnv64::new();
        let taken_in = (self.taken_in_ns != 0).then(|| self.taken_in_ns.to_string());
        for part in [
            self.kind.name(),
            &self.account,
            &self.since.unix_timestamp().to_string(),
            self.limit.as_deref().unwrap_or(""),
            channel.name(),
        ]
        .into_iter()
        .chain(taken_in.as_deref())
        {
            h.write(part.as_bytes());
            // A separator that cannot occur in the parts' lengths-free concatenation
            // ambiguously: ("ab","c") and ("a","bc") must differ.
            h.write(&[0xff]);
        }
        format!("{}-{}-{:016x}", self.kind.name(), channel.name(), h.finish())
    }
}

/// 64-bit FNV-1a.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use time::macros::datetime;

    /// A restriction notice as the engine would raise it, for tests across the module.
    pub(crate) fn restricted(account: &str) -> Notice {
        Notice {
            kind: NoticeKind::SenderRestricted,
            account: account.to_owned(),
            reason: "reached the limit of 500 external recipients per hour (500 counted in the last hour)".into(),
            policy: "default".into(),
            limit: Some("recipient_limit_external_per_hour".into()),
            counters: Counters {
                external_last_hour: 500,
                external_limit_per_hour: 500,
                internal_last_hour: 12,
                internal_limit_per_hour: 1000,
                last_day: 512,
                limit_per_day: 1000,
                spam_messages: 0,
                messages: 40,
            },
            since: datetime!(2026-11-22 10:15:00 UTC),
            until: Some(datetime!(2026-11-23 00:00:00 UTC)),
            node: "mx1".into(),
            by: None,
            taken_in_ns: 0,
            event_id: String::new(),
            cause: String::new(),
            escalated: false,
        }
    }

    #[test]
    fn id_is_stable_and_per_channel() {
        let n = restricted("alice@example.com");
        assert_eq!(n.id(Channel::Email), n.clone().id(Channel::Email));
        assert_ne!(n.id(Channel::Email), n.id(Channel::Webhook));
        assert!(n.id(Channel::Email).starts_with("sender_restricted-email-"));
        let mut other = n.clone();
        other.since += time::Duration::seconds(1);
        assert_ne!(n.id(Channel::Email), other.id(Channel::Email));
        let mut other = n.clone();
        other.account = "bob@example.com".into();
        assert_ne!(n.id(Channel::Email), other.id(Channel::Email));
        // The same restriction event taken in twice (restricted, released, restricted again
        // in one second): two notices.
        let (mut first, mut again) = (n.clone(), n.clone());
        first.taken_in_ns = 1_795_000_000_000_000_001;
        again.taken_in_ns = 1_795_000_000_000_000_002;
        assert_ne!(first.id(Channel::Email), again.id(Channel::Email));
        // A restriction's notice is named by its event: taken in again after a restart (a
        // new intake time), it is the same notice.
        first.event_id = "00c0ffee00c0ffee".into();
        again.event_id = first.event_id.clone();
        assert_eq!(first.id(Channel::Email), again.id(Channel::Email));
        assert_eq!(first.id(Channel::Webhook), "sender_restricted-webhook-00c0ffee00c0ffee");
        again.event_id = "00c0ffee00c0fff0".into();
        assert_ne!(first.id(Channel::Email), again.id(Channel::Email));
    }

    #[test]
    fn id_pinned_value() {
        let n = restricted("alice@example.com");
        let id = n.id(Channel::Email);
        // Pinned for a notice from a spool written before the intake time was kept (0):
        // its id, and so its file and done marker, stay what they were.
        assert_eq!(id, "sender_restricted-email-68f1bd9cb30f1322");
        // Fnv64 reference values (from the FNV spec test vectors).
        let mut h = Fnv64::new();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn spool_shape_round_trips() {
        let n = restricted("jörg@exämple.se");
        let json = serde_json::to_string(&n).unwrap();
        assert!(json.contains("\"since\":\"2026-11-22T10:15:00Z\""));
        let back: Notice = serde_json::from_str(&json).unwrap();
        assert_eq!(back, n);
    }
}
