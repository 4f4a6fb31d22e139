//! Events for the administrators (restricted, limit exceeded in alert mode, approaching a
//! limit, released), handed to the notifier over a bounded channel. Emitting never waits: the
//! milter path must not stall because a notifier is slow; a full channel drops the event with
//! a log line and a count.
//!
//! A restriction's or a release's event carries an [`Event::id`] and is written into the audit
//! trail together with the change (see `state::durable`), before the MTA or the administrator
//! hears of it; an event that never reached the notifier's spool (the process was killed, the
//! channel was full) is handed over again at the next start, and the id keeps one that did
//! from being sent twice.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::limits::LimitKind;
use super::restriction::{Counters, Restriction};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SenderRestricted,
    SendingLimitExceeded,
    ApproachingLimit,
    SenderReleased,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::SenderRestricted => "sender_restricted",
            EventKind::SendingLimitExceeded => "sending_limit_exceeded",
            EventKind::ApproachingLimit => "approaching_limit",
            EventKind::SenderReleased => "sender_released",
        }
    }
}

/// One event with the facts a notification needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per restriction or release ([`Event::new_id`]), the key of its notices against
    /// duplicates; empty for the alerts, which are not durable.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub kind: EventKind,
    pub account: String,
    pub reason: String,
    pub policy: String,
    /// The limit concerned, for limit events.
    pub limit: Option<LimitKind>,
    pub counters: Counters,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    pub node: String,
    /// Who acted, for administrator actions.
    pub by: Option<String>,
    /// What led to a restriction, as the metrics label it ([`Restriction::cause`]): a limit's
    /// key, `spam`, `bounces`, `login_spread` or `manual`; empty for other events and in records written
    /// before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause: String,
    /// A restriction made until released because the account is a repeat offender
    /// ([`Restriction::escalated`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
}

impl Event {
    /// The event announcing `r`, a new restriction, with a fresh id.
    pub fn restricted(r: &Restriction, limit: Option<LimitKind>, node: &str, by: Option<&str>) -> Event {
        Event {
            id: Event::new_id(),
            kind: EventKind::SenderRestricted,
            account: r.account.clone(),
            reason: r.reason.clone(),
            policy: r.policy.clone(),
            limit,
            counters: r.counters.clone(),
            since: r.created_at,
            until: r.until,
            node: node.to_owned(),
            by: by.map(str::to_owned),
            cause: r.cause.clone(),
            escalated: r.escalated,
        }
    }

    /// The event announcing that `r` is lifted at `at` by `by`, with a fresh id; `counters`
    /// are the account's at the release.
    pub fn released(
        r: &Restriction,
        reason: String,
        counters: Counters,
        at: OffsetDateTime,
        node: &str,
        by: &str,
    ) -> Event {
        Event {
            id: Event::new_id(),
            kind: EventKind::SenderReleased,
            account: r.account.clone(),
            reason,
            policy: r.policy.clone(),
            limit: None,
            counters,
            since: r.created_at,
            until: Some(at),
            node: node.to_owned(),
            by: Some(by.to_owned()),
            cause: String::new(),
            escalated: false,
        }
    }

    /// An alert of `kind` about `account` at `at` (a limit reached or the spam share passed
    /// under the `alert` action, a limit approached): not a durable fact, so no id. The caller
    /// fills in the reason, the limit and the counters.
    pub fn alert(kind: EventKind, account: &str, policy: &str, node: &str, at: OffsetDateTime) -> Event {
        Event {
            id: String::new(),
            kind,
            account: account.to_owned(),
            reason: String::new(),
            policy: policy.to_owned(),
            limit: None,
            counters: Counters::default(),
            since: at,
            until: None,
            node: node.to_owned(),
            by: None,
            cause: String::new(),
            escalated: false,
        }
    }

    /// A fresh event id: 64 random bits in hex. Random rather than a counter so that ids from
    /// two nodes, or from before and after a restart, never meet.
    pub fn new_id() -> String {
        let bits = getrandom::u64().unwrap_or_else(|_| {
            // No entropy source: the time to the nanosecond is unique enough for one node.
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        format!("{bits:016x}")
    }
}

/// The sending side of the event channel.
#[derive(Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    dropped: AtomicU64,
}

impl EventSink {
    /// A sink and the receiver the notifier reads.
    pub fn channel(capacity: usize) -> (EventSink, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity);
        (EventSink { tx, dropped: AtomicU64::new(0) }, rx)
    }

    /// Hands an event over without waiting.
    pub fn emit(&self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(e)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event = e.kind.name(), account = %e.account, "event channel full; event dropped");
            }
            Err(mpsc::error::TrySendError::Closed(e)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event = e.kind.name(), account = %e.account, "no notifier running; event dropped");
            }
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(account: &str) -> Event {
        Event {
            id: String::new(),
            kind: EventKind::SenderRestricted,
            account: account.to_owned(),
            reason: "test".to_owned(),
            policy: "default".to_owned(),
            limit: None,
            counters: Counters::default(),
            since: OffsetDateTime::UNIX_EPOCH,
            until: None,
            node: "mx1".to_owned(),
            by: None,
            cause: String::new(),
            escalated: false,
        }
    }

    /// The milter path hands events over without waiting: a full channel or a notifier that is
    /// gone drops the event and counts it, it never blocks the caller.
    #[test]
    fn a_full_or_closed_channel_drops_and_counts_without_waiting() {
        let (sink, mut rx) = EventSink::channel(1);
        sink.emit(event("a@example.com"));
        sink.emit(event("b@example.com"));
        assert_eq!(sink.dropped(), 1);
        assert_eq!(rx.try_recv().map(|e| e.account).as_deref(), Ok("a@example.com"));
        assert!(rx.try_recv().is_err(), "the second event was dropped, not queued");
        drop(rx);
        sink.emit(event("c@example.com"));
        assert_eq!(sink.dropped(), 2);
    }
}
