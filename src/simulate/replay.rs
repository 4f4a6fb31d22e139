//! Each rebuilt message through the daemon's own policy engine, on the log's clock.
//!
//! The engine is the one `run` uses, with the restrictions kept in memory and its events read
//! from its channel after each message: a restriction becomes a report entry, an alert a
//! count. Nothing is written and nothing is sent. A message goes through the same stages the
//! milter would drive: MAIL FROM (direction, account, restricted or not), each recipient, the
//! end of message; what the engine refuses is what the filter would have refused.
//!
//! The bounce signal is the daemon's too: the replayed message's delivery lines, and the later
//! lines of its queue ID, go to `delivery::outcomes` and are judged as the follower judges
//! them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use compact_str::CompactString;
use tokio::sync::mpsc;

use super::messages::{Message, Origin, QueueKey};
use super::report::{RestrictedAccount, Tracker, rfc3339};
use crate::config::Config;
use crate::delivery::outcomes::{Outcome, Outcomes};
use crate::maillog::{DeliveryStatus, Event as LogEvent, LogLine};
use crate::metrics::Metrics;
use crate::policy::account::{is_outbound, recipient_is_internal};
use crate::policy::clock::EngineClock;
use crate::policy::engine::bounces::Accepted;
use crate::policy::engine::{Engine, Transaction};
use crate::policy::events::{Event, EventKind, EventSink};
use crate::policy::{Decision, MailFacts, MessageFacts, Policy, RcptFacts};
use crate::state::memory::MemoryRestrictions;

/// Events waiting to be read at most (read after every message, so a handful at most).
const EVENT_QUEUE: usize = 4096;

/// The engine, its clock and what it is told.
pub struct Replay {
    engine: Engine,
    clock: EngineClock,
    events: mpsc::Receiver<Event>,
    tx: Transaction,
    /// The engine's clock, seconds: it only moves forward.
    now: i64,
    /// Queue IDs of replayed messages still in the queue → the account whose outcomes they
    /// are (`None`: inbound, exempt or refused in the replay, so their lines count for no one).
    in_queue: HashMap<QueueKey, Option<CompactString>, ahash::RandomState>,
    /// Whether any policy has the bounce signal on.
    bounces: bool,
    outcomes: Outcomes,
    local_domains: Vec<String>,
    internal_networks: Vec<ipnet::IpNet>,
    pub tracker: Tracker,
}

impl Replay {
    pub fn new(config: Arc<Config>) -> Replay {
        let clock = EngineClock::manual(SystemTime::UNIX_EPOCH);
        let (sink, events) = EventSink::channel(EVENT_QUEUE);
        let bounces = std::iter::once(&config.policies.default)
            .chain(config.policies.rules.iter().map(|r| &r.settings))
            .any(|s| s.bounce_percent > 0);
        let local_domains = config.organization.local_domains.clone();
        let internal_networks = config.organization.internal_networks.clone();
        let engine =
            Engine::new(config, Arc::new(MemoryRestrictions::default()), sink, clock.clone(), Arc::new(Metrics::new()));
        Replay {
            engine,
            clock,
            events,
            tx: Transaction::default(),
            now: 0,
            in_queue: HashMap::default(),
            bounces,
            outcomes: Outcomes::default(),
            local_domains,
            internal_networks,
            tracker: Tracker::default(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether the queue ID of `key` is a replayed message still followed.
    pub fn follows(&self, key: QueueKey) -> bool {
        self.in_queue.contains_key(&key)
    }

    fn advance_to(&mut self, secs: i64) {
        if secs > self.now {
            self.now = secs;
            self.clock.set(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64));
        }
    }

    /// Replays one message at the time the MTA received it; its later lines are then
    /// [`Replay::later_line`]'s.
    pub fn message(&mut self, m: Message) {
        let key = QueueKey::of(m.queue_id.as_bytes());
        let removed = m.removed;
        let followed = self.replay(m);
        if !removed {
            self.in_queue.insert(key, followed);
        }
    }

    /// Replays `m`; the account whose outcomes its later lines are, if it was delivered.
    fn replay(&mut self, m: Message) -> Option<CompactString> {
        self.advance_to(m.received);
        let local = matches!(m.origin, Origin::Local { .. });
        let (login, client) = match &m.origin {
            Origin::Smtp { client, login } => (login.as_deref(), *client),
            Origin::Local { .. } => (None, None),
            Origin::Mta => {
                // The MTA's own notices are never an account's mail.
                self.tracker.messages.exempt += 1;
                return None;
            }
        };
        if !local && !is_outbound(login.map(str::as_bytes), client, &self.internal_networks) {
            self.tracker.messages.inbound += 1;
            return None;
        }
        let facts = MailFacts {
            sender: m.sender.as_bytes(),
            auth_login: login.map(str::as_bytes),
            client_addr: client,
            queue_id: Some(m.queue_id.as_bytes()),
            local_submission: local,
        };
        let mut tx = std::mem::take(&mut self.tx);
        let at_mail = self.engine.mail_from(&mut tx, &facts);
        let Some(account) = tx.account().map(CompactString::from) else {
            // The null sender, `notify.from`, an address that is no account: not counted.
            self.tracker.messages.exempt += 1;
            self.engine.end_transaction(&mut tx);
            self.tx = tx;
            return None;
        };
        if at_mail == Decision::Accept {
            self.tracker.messages.exempt += 1;
            self.engine.end_transaction(&mut tx);
            self.tx = tx;
            return None;
        }
        self.tracker.messages.outbound += 1;
        self.tracker.messages.local_submissions += u64::from(local);
        let mut recipients = m.recipients;
        recipients
            .extend((0..m.unknown_recipients).map(|i| CompactString::from(format!("unknown-{i}@recipient.invalid"))));
        let mut accepted = 0u32;
        let mut refused = 0u32;
        if at_mail == Decision::Continue {
            for r in &recipients {
                match self.engine.rcpt_to(&mut tx, &RcptFacts { recipient: r.as_bytes() }) {
                    Decision::Continue | Decision::Accept => accepted += 1,
                    _ => refused += 1,
                }
            }
        } else {
            refused = recipients.len() as u32;
        }
        if accepted > 0 {
            let outcome = self.engine.end_of_message(
                &mut tx,
                &MessageFacts { queue_id: Some(m.queue_id.as_bytes()), headers: &[], scanned: &[] },
            );
            if !matches!(outcome.decision, Decision::Continue | Decision::Accept) {
                refused += accepted;
                accepted = 0;
            }
        }
        let aggregate = tx.aggregate().and_then(Transaction::account).map(CompactString::from);
        self.engine.end_transaction(&mut tx);
        self.tx = tx;

        let internal =
            recipients.iter().filter(|r| recipient_is_internal(r.as_bytes(), &self.local_domains)).count() as u32;
        let external = recipients.len() as u32 - internal;
        self.tracker.messages.recipients += recipients.len() as u64;
        self.tracker.messages.refused_recipients += u64::from(refused);
        self.tracker.messages.refused_messages += u64::from(accepted == 0 && refused > 0);
        self.read_events();
        let (mut delivered, mut bounced, mut deferred) = (0, 0, 0);
        if accepted > 0 {
            for d in &m.deliveries {
                match d.status {
                    DeliveryStatus::Sent => delivered += 1,
                    DeliveryStatus::Bounced | DeliveryStatus::Expired => bounced += 1,
                    DeliveryStatus::Deferred => deferred += 1,
                    DeliveryStatus::Other => {}
                }
            }
        }
        for (i, name) in std::iter::once(&account).chain(aggregate.as_ref()).enumerate() {
            let stats = self.tracker.account(name);
            stats.message(m.received, external, internal, refused);
            if i == 0 {
                stats.delivered += delivered;
                stats.bounced += bounced;
                stats.deferred += deferred;
            }
            if refused > 0 {
                self.tracker.refused_after_restriction(name, refused, accepted == 0);
            }
        }
        if accepted == 0 {
            return None;
        }
        // What became of it, for the bounce signal: the lines seen so far, and the later ones
        // by its queue ID.
        if self.bounces {
            let window = self.engine.bounce_thresholds(&account).window;
            self.outcomes
                .accepted(Accepted { queue_id: m.queue_id.clone(), account: account.clone(), window }, m.received);
            for d in &m.deliveries {
                let to = recipients.get(d.recipient as usize).map_or("", |r| r.as_str());
                self.judge_outcome(&account, m.queue_id.as_str(), d.at, to, d.dsn.as_str(), d.status);
            }
        }
        Some(account)
    }

    /// A log line of a replayed message (a delivery, an expiry, its removal); `key` is its
    /// queue ID's.
    pub fn later_line(&mut self, line: &LogLine<'_>, key: QueueKey, now: i64) {
        if line.event == LogEvent::Removed {
            let followed = self.in_queue.remove(&key).flatten().is_some();
            if followed && self.bounces {
                self.outcomes.line(line, now, |_| {});
            }
            return;
        }
        let Some(Some(account)) = self.in_queue.get(&key).cloned() else { return };
        let id = line.queue_id.map(String::from_utf8_lossy).unwrap_or_default();
        match line.event {
            LogEvent::Delivery { to, orig_to, dsn, status, .. } => {
                let stats = self.tracker.account(&account);
                match status {
                    DeliveryStatus::Sent => stats.delivered += 1,
                    DeliveryStatus::Bounced | DeliveryStatus::Expired => stats.bounced += 1,
                    DeliveryStatus::Deferred => stats.deferred += 1,
                    DeliveryStatus::Other => {}
                }
                if self.bounces {
                    let to = orig_to.filter(|o| !o.is_empty()).unwrap_or(to);
                    let (to, dsn) = (String::from_utf8_lossy(to), String::from_utf8_lossy(dsn));
                    self.judge_outcome(&account, &id, now, &to, &dsn, status);
                }
            }
            LogEvent::Expired { .. } if self.bounces => {
                let mut finished = false;
                self.outcomes.line(line, now, |_| finished = true);
                if finished {
                    self.judge_bounces(&account);
                }
            }
            _ => {}
        }
    }

    /// One recipient's outcome for the bounce signal, judged when it is a bounce.
    fn judge_outcome(&mut self, account: &str, queue_id: &str, at: i64, to: &str, dsn: &str, status: DeliveryStatus) {
        let mut bounced = false;
        self.outcomes.outcome(queue_id, to, dsn, status, at, |f| bounced |= f.outcome == Outcome::Bounced);
        if bounced {
            self.judge_bounces(account);
        }
    }

    fn judge_bounces(&mut self, account: &str) {
        crate::delivery::judge(&self.engine, &mut self.outcomes, account, self.now);
        self.read_events();
    }

    /// The engine's events since the last call: restrictions and alerts.
    fn read_events(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            match e.kind {
                EventKind::SenderRestricted => self.tracker.restriction(RestrictedAccount {
                    account: e.account,
                    policy: e.policy,
                    at: rfc3339(e.since.unix_timestamp()),
                    cause: e.cause,
                    reason: e.reason,
                    until: e.until.map(|u| rfc3339(u.unix_timestamp())),
                    escalated: e.escalated,
                    counters: e.counters,
                    refused_recipients: 0,
                    refused_messages: 0,
                    series: Vec::new(),
                }),
                EventKind::SendingLimitExceeded => {
                    self.tracker.alert(&e.account, e.since.unix_timestamp(), &e.reason);
                }
                EventKind::ApproachingLimit | EventKind::SenderReleased => {}
            }
        }
    }
}
