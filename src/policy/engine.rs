//! The policy engine: from the facts of each stage to a [`Decision`], with the side effects —
//! counting, restricting, events — that hang off it.
//!
//! MAIL FROM decides the direction and the account and refuses a restricted account; each
//! RCPT TO is counted against the account's policy or reaches a limit, which, per the policy's
//! action, restricts the account (`block`, `block_until_tomorrow`) or only raises an event
//! (`alert`); the end of message takes the spam verdict. The configuration in force is a
//! [`Compiled`] swapped whole on reload and picked up by the next transaction; the accounts'
//! records live in the [`AccountTable`] the engine owns.
//!
//! Beside the decisions: [`admin`] (what the API and the CLI read and change), [`scanning`]
//! (asking spamd and rspamd at end of message) and [`shared`] (cluster mode's view).

use std::sync::Arc;

use arc_swap::ArcSwap;
use compact_str::CompactString;
use tracing::{info, warn};

use super::account::{self, canonical};
use super::accounts::AccountTable;
use super::clock::{EngineClock, Timestamp};
use super::compiled::Compiled;
use super::events::{Event, EventKind, EventSink};
use super::hourly::{self, HourlyTable};
use super::limits::LimitKind;
use super::logins::LoginTable;
use super::record::{AccountRecord, HourlyNotice};
use super::restriction::{Restriction, RestrictionStore};
use super::rules::PolicyIndex;
use super::spam::over_threshold;
use super::{Decision, MailFacts, MessageFacts, MessageOutcome, Needs, Policy, RcptFacts, Refusal, ScanRequest};
use crate::config::{Config, LimitAction, SpamMessageAction};
use crate::metrics::Metrics;
use crate::verdict::Verdict;

pub mod admin;
pub mod bounces;
/// Every restriction the policy makes, and repeat offenders made until released.
mod escalation;
pub mod login_spread;
mod scanning;
/// What cluster mode (`crate::cluster`) reads and merges; kept apart from the decisions.
mod shared;

pub use admin::{HistoryEntry, Limits, ManualRestriction, SenderDetail, SenderInfo};

/// Per-transaction state, reused across the transactions of a connection.
#[derive(Default)]
pub struct Transaction {
    compiled: Option<Arc<Compiled>>,
    account: String,
    policy: PolicyIndex,
    recipients: u32,
    /// When the message was counted in the account's spam window, if it is yet.
    message_counted: Option<Timestamp>,
    /// Whether the message reached its end of message (and so its verdict).
    reached_end: bool,
    /// The account is restricted: at MAIL FROM when its policy lists
    /// `always_allowed_recipients` (only those pass), or by a limit this transaction reached.
    restricted: bool,
    /// A local submission of a restricted account has a recipient outside its policy's
    /// `always_allowed_recipients`: the message is refused at its end.
    local_disallowed: bool,
    /// Recipients counted per [`LimitKind`] in this transaction: reserved at RCPT TO, kept
    /// when the end of message delivers (and then shared with other nodes in cluster mode),
    /// given back otherwise.
    counted: [u32; 3],
    /// Whether the end of message delivered the message, which makes its recipients counted.
    committed: bool,
    /// A local submission: recipients are only classified at RCPT TO (external, internal) and
    /// the whole message is decided at its end.
    local: bool,
    local_recipients: [u32; 2],
    /// Of `local_recipients`, those always allowed (noted only when the account is restricted
    /// or has domain caps): the caps count them where they have room but never refuse them.
    local_allowed: [u32; 2],
    /// For a local submission, the same message counted under the aggregate account.
    aggregate: Option<Box<Transaction>>,
    /// The same recipients counted under each `[[policy.domain]]` cap of the account's
    /// domain (`@domain`), as the aggregate account is: reserved with the account's, kept or
    /// given back with them. Empty (and never allocated) for an account without a cap.
    domains: Vec<Transaction>,
}

/// The engine shared by all milter connections.
pub struct Engine {
    metrics: Arc<Metrics>,
    current: ArcSwap<Compiled>,
    accounts: AccountTable,
    /// Where authenticated accounts sent from lately (the login-spread signal); empty while
    /// no policy has it on.
    logins: LoginTable,
    restrictions: Arc<dyn RestrictionStore>,
    events: EventSink,
    clock: EngineClock,
    /// Set when a delivery follower listens (`[delivery] postfix_log`).
    delivery: std::sync::OnceLock<bounces::DeliveryTap>,
    /// Per-hour series of the accounts' recipients in use, written by the sampler
    /// ([`Engine::sample_hourly`]), never by a decision.
    hourly: HourlyTable,
}

/// One decision in this many is timed for `decision_seconds` (see [`Engine::timed`]).
const TIMING_SAMPLE: u32 = 16;

thread_local! {
    /// Decisions taken on this thread, for choosing the timed sample without sharing a counter.
    static DECISIONS_SEEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl Engine {
    pub fn new(
        config: Arc<Config>,
        restrictions: Arc<dyn RestrictionStore>,
        events: EventSink,
        clock: EngineClock,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let compiled = Compiled::new(config);
        Engine {
            metrics,
            logins: LoginTable::new(compiled.login_layout),
            current: ArcSwap::from_pointee(compiled),
            accounts: AccountTable::default(),
            restrictions,
            events,
            clock,
            delivery: std::sync::OnceLock::new(),
            hourly: HourlyTable::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.current.load().config.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Events dropped because the notifier could not keep up.
    pub fn events_dropped(&self) -> u64 {
        self.events.dropped()
    }

    pub fn clock(&self) -> &EngineClock {
        &self.clock
    }

    pub fn restrictions(&self) -> &Arc<dyn RestrictionStore> {
        &self.restrictions
    }

    /// Puts a new configuration in force for the next transaction. Each account keeps the
    /// recipients it has in use, re-expressed against its (possibly new) policy's limits.
    pub fn reload(&self, config: Arc<Config>) {
        let old = self.current.load_full();
        let new = Compiled::new(config);
        self.accounts.convert_for_reload(&old.policies, &new.policies, self.clock.now());
        // Before the new limits are in force: a raised limit finds its slots there.
        self.logins.set_layout(new.login_layout);
        self.current.store(Arc::new(new));
    }

    /// The account table (the snapshot, cluster mode and the admin reads go through it).
    pub fn accounts(&self) -> &AccountTable {
        &self.accounts
    }

    /// Accounts currently tracked.
    pub fn tracked_accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Every tracked account's record (for the snapshot).
    pub fn records(&self) -> impl Iterator<Item = (String, AccountRecord)> + '_ {
        self.accounts.records()
    }

    /// Puts back records from a snapshot, under the policy each account has now.
    pub fn restore_records(&self, records: Vec<(CompactString, AccountRecord)>) -> usize {
        let compiled = self.current.load();
        self.accounts.restore(records, |account| compiled.policies.select(account), self.clock.now())
    }

    /// Drops the account records with nothing left to remember (and the login-spread entries
    /// with nothing seen in the last day).
    pub fn evict_idle(&self) -> usize {
        self.logins.evict_idle(login_spread::secs(self.clock.now()));
        self.accounts.evict_idle(self.clock.now())
    }

    /// One pass of the per-hour sampler (`policy::hourly`): every account's recipients in use
    /// against its hourly limits now, into its series. Off the decision path: the daemon calls
    /// it every [`hourly::SAMPLE_EVERY`]; a decision never waits for more than one shard's read.
    pub fn sample_hourly(&self) -> hourly::Pass {
        let compiled = self.current.load();
        let now = self.clock.now();
        // Copied out (name, hourly TATs, policy) while a shard is read-locked; worked out and
        // written after, with no shard locked. Only accounts with something in use are copied.
        let hourly = [LimitKind::ExternalPerHour as usize, LimitKind::InternalPerHour as usize];
        let in_use: Vec<(CompactString, [u64; 2], PolicyIndex)> = self
            .accounts
            .iter()
            .filter(|e| hourly.iter().any(|&k| e.tat[k] > now.nanos()))
            .map(|e| (e.key().clone(), hourly.map(|k| e.tat[k]), e.policy))
            .collect();
        let samples = in_use.into_iter().map(|(account, tat, policy)| {
            let record = AccountRecord { tat: [tat[0], tat[1], 0], policy, ..AccountRecord::default() };
            let used = |kind| compiled.limiters.usage(policy, &record, kind, now).map_or(0, |(used, _)| used);
            (account, [used(LimitKind::ExternalPerHour), used(LimitKind::InternalPerHour)])
        });
        self.hourly.record(now, samples)
    }

    /// The account's per-hour series over the whole hours before the current one.
    pub fn hourly_series(&self, account: &str) -> Vec<hourly::HourSample> {
        self.hourly.series(account, self.clock.now())
    }

    /// Accounts the per-hour series holds.
    pub fn hourly_accounts(&self) -> usize {
        self.hourly.len()
    }
}

impl Engine {
    /// The recipient metric of a recipient of class `hourly`, delivered or refused.
    fn count_recipient(&self, hourly: LimitKind, accepted: bool) {
        let r = &self.metrics.recipients;
        match (hourly, accepted) {
            (LimitKind::InternalPerHour, true) => r.internal_accepted.inc(),
            (LimitKind::InternalPerHour, false) => r.internal_refused.inc(),
            (_, true) => r.external_accepted.inc(),
            (_, false) => r.external_refused.inc(),
        };
    }

    /// The recipient (of class `hourly`) reached `kind`: restrict or alert per the policy's
    /// action.
    // Cold: rare, and inlined it tripled the recipient path's code (33 instructions per
    // decision, callgrind).
    #[cold]
    fn limit_reached(
        &self,
        tx: &mut Transaction,
        compiled: &Compiled,
        hourly: LimitKind,
        kind: LimitKind,
        now: Timestamp,
    ) -> Decision {
        let settings = compiled.policies.settings(tx.policy);
        let mut record = self.accounts.record_mut(&tx.account, tx.policy);
        let in_grace = record.released_on(now.utc_day());
        let action = if in_grace { LimitAction::Alert } else { settings.action_when_threshold_reached };
        if action == LimitAction::Alert {
            // Delivered, so counted: in the limit that still has room (the daily one when the
            // hourly is full, so that it too can be reached and alert), and as a message.
            let full = compiled.limiters.add_recipient_where_room(tx.policy, &mut record, hourly, now);
            for counted in [hourly, LimitKind::PerDay] {
                if !full.contains(&Some(counted)) {
                    tx.counted[counted as usize] += 1;
                }
            }
            tx.recipients += 1;
            count_message(tx, compiled, &mut record, now);
            let hour = now.hour();
            let alerts: Vec<LimitKind> = full
                .into_iter()
                .flatten()
                .filter(|&k| record.first_notice_this_hour(HourlyNotice::LimitAlert(k), hour))
                .collect();
            let counters = compiled.counters_of(tx.policy, &record, now);
            drop(record);
            for kind in alerts {
                let mut reason = kind.reached_reason(settings);
                if in_grace {
                    reason.push_str(
                        "; delivered anyway: an administrator released the account today, so limits \
                         only alert until 00:00 UTC",
                    );
                }
                warn!(account = %tx.account, policy = %settings.name, grace = in_grace, "{reason}; delivering (alert only)");
                let at = now.datetime();
                let node = &compiled.config.notify.node_name;
                self.events.emit(Event {
                    reason,
                    limit: Some(kind),
                    counters: counters.clone(),
                    ..Event::alert(EventKind::SendingLimitExceeded, &tx.account, &settings.name, node, at)
                });
            }
            return Decision::Continue;
        }
        let counters = compiled.counters_of(tx.policy, &record, now);
        let reason = kind.reached_reason(settings);
        drop(record);
        let until = (action == LimitAction::BlockUntilTomorrow).then(|| now.next_utc_midnight().datetime());
        let restriction =
            Restriction::by_policy(&tx.account, &reason, &settings.name, now.datetime(), until, counters, kind.key());
        match self.restrict_by_policy(restriction, settings, Some(kind), &compiled.config.notify.node_name) {
            Ok(created) => {
                tx.restricted = true;
                if !created {
                    // Another transaction of the account reached the limit first and got the
                    // 5.2.2; from here on the account is simply restricted.
                    return Decision::Refuse(Refusal::AccountRestricted);
                }
                Decision::Refuse(Refusal::LimitReached)
            }
            Err(e) => {
                // Never tell the MTA 5xx for a restriction that is not recorded.
                tracing::error!(account = %tx.account, "cannot record restriction: {e}");
                Decision::InternalError
            }
        }
    }

    fn warn_if_approaching(
        &self,
        tx: &Transaction,
        compiled: &Compiled,
        record: &mut AccountRecord,
        hourly: LimitKind,
        now: Timestamp,
    ) -> Option<Event> {
        let percent = compiled.config.notify.warn_at_percent;
        if percent == 0 {
            return None;
        }
        let hour = now.hour();
        for kind in [hourly, LimitKind::PerDay] {
            if !compiled.limiters.reached_percent(tx.policy, record, kind, now, percent) {
                continue;
            }
            let Some((used, limit)) = compiled.limiters.usage(tx.policy, record, kind, now) else {
                continue;
            };
            if record.first_notice_this_hour(HourlyNotice::Warning(kind), hour) {
                let settings = compiled.policies.settings(tx.policy);
                let at = now.datetime();
                let node = &compiled.config.notify.node_name;
                return Some(Event {
                    reason: format!("{used} of {limit} {} in use ({percent}% warning level)", kind.describe()),
                    limit: Some(kind),
                    counters: compiled.counters_of(tx.policy, record, now),
                    ..Event::alert(EventKind::ApproachingLimit, &tx.account, &settings.name, node, at)
                });
            }
        }
        None
    }
}

impl Engine {
    /// The transaction ended without the MTA accepting its message: the recipients it reserved
    /// are not counted after all (a client that retries is not charged twice), nor, when it
    /// ended before its end of message, the message in the spam share. A message refused at
    /// its end keeps its verdict: the share is of what the account tried to send. Limits
    /// reached and restrictions made on the way stand: they were answered to the MTA.
    fn give_back(&self, tx: &mut Transaction) {
        let Some(compiled) = &tx.compiled else { return };
        let message = tx.message_counted.filter(|_| !tx.reached_end);
        if tx.counted.iter().all(|&n| n == 0) && message.is_none() {
            return;
        }
        let mut record = self.accounts.record_mut(&tx.account, tx.policy);
        for kind in LimitKind::ALL {
            compiled.limiters.give_back(tx.policy, &mut record, kind, tx.counted[kind as usize]);
        }
        if let Some(at) = message {
            let window = compiled.policies.settings(tx.policy).spam_window;
            record.spam.uncount_message(at, self.clock.now(), window);
        }
        drop(record);
        tx.counted = [0; 3];
        tx.message_counted = None;
    }
}

/// Whether `recipient` is in the `always_allowed_recipients` of `policy` (both canonical).
fn always_allowed(compiled: &Compiled, policy: PolicyIndex, recipient: &[u8]) -> bool {
    let allowed = &compiled.policies.settings(policy).always_allowed_recipients;
    if allowed.is_empty() {
        return false;
    }
    let strip = compiled.config.organization.strip_subaddress;
    canonical(recipient, strip).is_some_and(|r| allowed.iter().any(|a| *a == *r))
}

/// Counts the transaction's message, once, in the account's spam window when verdicts are
/// enabled: the spam share is of all the account's messages, judged or not.
fn count_message(tx: &mut Transaction, compiled: &Compiled, record: &mut AccountRecord, now: Timestamp) {
    if tx.message_counted.is_some() || !compiled.config.verdict.any_source() {
        return;
    }
    tx.message_counted = Some(now);
    let window = compiled.policies.settings(tx.policy).spam_window;
    record.spam.count_message(now, window);
}

impl Transaction {
    fn reset(&mut self) {
        self.compiled = None;
        self.account.clear();
        self.policy = 0;
        self.recipients = 0;
        self.message_counted = None;
        self.reached_end = false;
        self.restricted = false;
        self.local_disallowed = false;
        self.counted = [0; 3];
        self.committed = false;
        self.local = false;
        self.local_recipients = [0; 2];
        self.local_allowed = [0; 2];
        self.aggregate = None;
        self.domains.clear();
    }

    /// The sub-transactions counted alongside: the aggregate account, the domain caps.
    fn subs_mut(&mut self) -> impl Iterator<Item = &mut Transaction> {
        self.aggregate.as_deref_mut().into_iter().chain(self.domains.iter_mut())
    }
}

impl Engine {
    fn decide_mail(&self, tx: &mut Transaction, facts: &MailFacts<'_>) -> Decision {
        tx.reset();
        let compiled = self.current.load_full();
        let org = &compiled.config.organization;
        if !facts.local_submission && !account::is_outbound(facts.auth_login, facts.client_addr, &org.internal_networks)
        {
            self.metrics.messages.inbound_accepted.inc();
            return Decision::Accept;
        }
        // The null sender (bounces, notifications of delivery status) is never restricted.
        if facts.sender.is_empty() || facts.sender == b"<>" {
            self.metrics.messages.outbound_exempt.inc();
            return Decision::Accept;
        }
        // A local submission has no login: its account is the envelope sender (which Postfix's
        // `local_login_sender_maps` can tie to the Unix user).
        let raw = if facts.local_submission { facts.sender } else { facts.auth_login.unwrap_or(facts.sender) };
        let account = match canonical(raw, org.strip_subaddress) {
            Some(a) => a,
            None => match canonical(String::from_utf8_lossy(raw).as_bytes(), org.strip_subaddress) {
                Some(a) => std::borrow::Cow::Owned(a.into_owned()),
                None => return Decision::Accept,
            },
        };
        if compiled.exempt.iter().any(|e| *e == account) {
            self.metrics.messages.outbound_exempt.inc();
            return Decision::Accept;
        }
        // Known even when refused, so cluster mode can check a restriction with the other nodes.
        tx.account.push_str(&account);
        let policy = compiled.policies.select(&account);
        if self.restrictions.is_restricted(&account, self.clock.now().secs()) {
            if compiled.policies.settings(policy).always_allowed_recipients.is_empty() {
                info!(account = %account, "MAIL FROM refused: account restricted");
                self.metrics.messages.outbound_refused.inc();
                return Decision::Refuse(Refusal::AccountRestricted);
            }
            // Its policy names recipients it may still write to (the helpdesk): decided per
            // recipient, or at the end of a local submission.
            info!(account = %account, "restricted account: only its always-allowed recipients pass");
            tx.restricted = true;
        }
        if compiled.policies.has_domain_caps()
            && let Some(refusal) = self.open_domain_caps(tx, &compiled, &account, policy)
        {
            return refusal;
        }
        if facts.local_submission {
            if let Some(aggregate) = &compiled.local_submission_account {
                if self.restrictions.is_restricted(aggregate, self.clock.now().secs()) {
                    info!(account = %account, aggregate = %aggregate, "MAIL FROM refused: local submissions restricted");
                    self.metrics.messages.outbound_refused.inc();
                    return Decision::Refuse(Refusal::AccountRestricted);
                }
                let mut sub = Box::<Transaction>::default();
                sub.account.push_str(aggregate);
                sub.policy = compiled.policies.select(aggregate);
                sub.compiled = Some(compiled.clone());
                sub.local = true;
                tx.aggregate = Some(sub);
            }
            tx.local = true;
        }
        tx.policy = policy;
        if compiled.login_spread
            && !facts.local_submission
            && !tx.restricted
            && facts.auth_login.is_some()
            && let Some(client) = facts.client_addr
            && let Some(refused) = self.note_login(tx, &compiled, client)
        {
            return refused;
        }
        tx.compiled = Some(compiled);
        self.metrics.messages.outbound_checked.inc();
        Decision::Continue
    }

    /// Opens a sub-transaction for each domain cap of the account's domain. When one of those
    /// domains is restricted as a unit, the MAIL FROM is refused, unless the account's policy
    /// (`policy`) lists always-allowed recipients: then the transaction goes on as that of a
    /// restricted account, and only those recipients pass.
    #[cold]
    fn open_domain_caps(
        &self,
        tx: &mut Transaction,
        compiled: &Arc<Compiled>,
        account: &str,
        policy: PolicyIndex,
    ) -> Option<Decision> {
        let now = self.clock.now().secs();
        let has_allowed = !compiled.policies.settings(policy).always_allowed_recipients.is_empty();
        for cap in compiled.policies.domain_caps(account) {
            let restricted = self.restrictions.is_restricted(&cap.account, now);
            if restricted && !has_allowed {
                info!(account = %account, domain = %cap.account, "MAIL FROM refused: domain restricted");
                self.metrics.messages.outbound_refused.inc();
                tx.domains.clear();
                return Some(Decision::Refuse(Refusal::AccountRestricted));
            }
            if restricted {
                info!(account = %account, domain = %cap.account, "domain restricted: only the account's always-allowed recipients pass");
                tx.restricted = true;
            }
            let mut sub = Transaction::default();
            sub.account.push_str(&cap.account);
            sub.policy = cap.policy;
            sub.compiled = Some(compiled.clone());
            sub.restricted = restricted;
            tx.domains.push(sub);
        }
        None
    }

    /// Counts an always-allowed recipient under each domain cap of the transaction's account
    /// where the cap has room: a domain cap never refuses such a recipient, and a full one is
    /// not reached by it (the helpdesk stays in reach, and writing to it restricts nobody).
    fn count_allowed_under_domains(&self, tx: &mut Transaction, compiled: &Compiled, hourly: LimitKind, n: u32) {
        for sub in tx.domains.iter_mut() {
            for _ in 0..n {
                self.count_allowed(sub, compiled, hourly, false);
            }
        }
    }

    /// Reserves a recipient for the account and then for each of its domain caps; a cap that
    /// refuses it (its limit reached, or the domain restricted by now) refuses the recipient,
    /// and what the account and the caps before it reserved for it is given back.
    ///
    /// An always-allowed recipient of the account is counted under the caps only where they
    /// have room (see [`Engine::count_allowed_under_domains`]).
    #[cold]
    fn reserve_with_domains(
        &self,
        tx: &mut Transaction,
        compiled: &Compiled,
        hourly: LimitKind,
        recipient: &[u8],
    ) -> Decision {
        let before = tx.counted;
        let mut decision = self.reserve_recipient(tx, compiled, hourly, false);
        if decision == Decision::Continue && always_allowed(compiled, tx.policy, recipient) {
            self.count_allowed_under_domains(tx, compiled, hourly, 1);
            self.count_recipient(hourly, true);
            return decision;
        }
        let mut domains = std::mem::take(&mut tx.domains);
        if decision == Decision::Continue {
            for i in 0..domains.len() {
                let sub = &mut domains[i];
                let sub_before = sub.counted;
                decision = if sub.restricted {
                    Decision::Refuse(Refusal::AccountRestricted)
                } else {
                    self.reserve_recipient(sub, compiled, hourly, false)
                };
                if decision != Decision::Continue {
                    // The refused recipient is not counted anywhere.
                    self.give_back_since(sub, compiled, sub_before);
                    for earlier in &mut domains[..i] {
                        let mut one = earlier.counted;
                        for kind in [hourly, LimitKind::PerDay] {
                            one[kind as usize] = one[kind as usize].saturating_sub(1);
                        }
                        self.give_back_since(earlier, compiled, one);
                    }
                    self.give_back_since(tx, compiled, before);
                    tx.recipients = tx.recipients.saturating_sub(1);
                    break;
                }
            }
        }
        tx.domains = domains;
        self.count_recipient(hourly, decision == Decision::Continue);
        decision
    }

    /// Gives back what `tx` reserved since its counts were `before`.
    fn give_back_since(&self, tx: &mut Transaction, compiled: &Compiled, before: [u32; 3]) {
        if tx.counted == before {
            return;
        }
        let mut record = self.accounts.record_mut(&tx.account, tx.policy);
        for kind in LimitKind::ALL {
            let n = tx.counted[kind as usize].saturating_sub(before[kind as usize]);
            compiled.limiters.give_back(tx.policy, &mut record, kind, n);
        }
        drop(record);
        tx.counted = before;
    }

    fn decide_rcpt(&self, tx: &mut Transaction, facts: &RcptFacts<'_>) -> Decision {
        // Taken out and put back rather than cloned: a clone is an atomic add and subtract on
        // a count every thread shares, for each recipient.
        let Some(compiled) = tx.compiled.take() else {
            return Decision::Continue;
        };
        let decision = self.decide_rcpt_under(tx, &compiled, facts);
        tx.compiled = Some(compiled);
        decision
    }

    fn decide_rcpt_under(&self, tx: &mut Transaction, compiled: &Arc<Compiled>, facts: &RcptFacts<'_>) -> Decision {
        let hourly = if account::recipient_is_internal(facts.recipient, &compiled.config.organization.local_domains) {
            LimitKind::InternalPerHour
        } else {
            LimitKind::ExternalPerHour
        };
        if tx.local {
            // The MTA cannot refuse one recipient of a local message (it would defer the whole
            // message and submit it again): noted here, decided at the end of the message.
            tx.local_recipients[hourly as usize] += 1;
            if tx.restricted || !tx.domains.is_empty() {
                if always_allowed(compiled, tx.policy, facts.recipient) {
                    tx.local_allowed[hourly as usize] += 1;
                } else if tx.restricted {
                    tx.local_disallowed = true;
                }
            }
            return Decision::Continue;
        }
        if tx.restricted {
            return self.restricted_rcpt(tx, compiled, hourly, facts);
        }
        let cap = compiled.policies.settings(tx.policy).max_recipients_per_message;
        if cap > 0 && tx.recipients >= cap {
            self.metrics.recipients.deferred_over_cap.inc();
            return Decision::Refuse(Refusal::TooManyRecipients);
        }
        if !tx.domains.is_empty() {
            return self.reserve_with_domains(tx, compiled, hourly, facts.recipient);
        }
        self.reserve_recipient(tx, compiled, hourly, true)
    }

    /// A recipient of a restricted account: refused unless its policy always allows it; an
    /// allowed one is counted as any other, but cannot restrict the account again.
    #[cold]
    fn restricted_rcpt(
        &self,
        tx: &mut Transaction,
        compiled: &Compiled,
        hourly: LimitKind,
        facts: &RcptFacts<'_>,
    ) -> Decision {
        if !always_allowed(compiled, tx.policy, facts.recipient) {
            return Decision::Refuse(Refusal::AccountRestricted);
        }
        let cap = compiled.policies.settings(tx.policy).max_recipients_per_message;
        if cap > 0 && tx.recipients >= cap {
            self.metrics.recipients.deferred_over_cap.inc();
            return Decision::Refuse(Refusal::TooManyRecipients);
        }
        self.count_allowed(tx, compiled, hourly, true);
        self.count_allowed_under_domains(tx, compiled, hourly, 1);
        Decision::Continue
    }

    /// Counts an always-allowed recipient of a restricted account in the limits that still
    /// have room: counted as usual (and given back if the message is not delivered), but a
    /// full limit neither refuses it nor restricts anew.
    fn count_allowed(&self, tx: &mut Transaction, compiled: &Compiled, hourly: LimitKind, metered: bool) {
        let now = self.clock.now();
        let mut record = self.accounts.record_mut(&tx.account, tx.policy);
        let full = compiled.limiters.add_recipient_where_room(tx.policy, &mut record, hourly, now);
        for kind in [hourly, LimitKind::PerDay] {
            if !full.contains(&Some(kind)) {
                tx.counted[kind as usize] += 1;
            }
        }
        tx.recipients += 1;
        count_message(tx, compiled, &mut record, now);
        drop(record);
        if metered {
            self.count_recipient(hourly, true);
        }
    }

    /// Reserves one recipient of class `hourly` for the transaction's account, or reaches a
    /// limit (restrict or alert per the policy). `metered`: counted in the recipient metrics
    /// (not for the aggregate account's second count of the same recipient).
    fn reserve_recipient(
        &self,
        tx: &mut Transaction,
        compiled: &Compiled,
        hourly: LimitKind,
        metered: bool,
    ) -> Decision {
        let now = self.clock.now();
        let mut record = self.accounts.record_mut(&tx.account, tx.policy);
        match compiled.limiters.try_add_recipient(tx.policy, &mut record, hourly, now) {
            Ok(()) => {
                tx.recipients += 1;
                tx.counted[hourly as usize] += 1;
                tx.counted[LimitKind::PerDay as usize] += 1;
                if metered {
                    self.count_recipient(hourly, true);
                }
                count_message(tx, compiled, &mut record, now);
                let warning = self.warn_if_approaching(tx, compiled, &mut record, hourly, now);
                drop(record);
                if let Some(event) = warning {
                    self.events.emit(event);
                }
                Decision::Continue
            }
            Err(kind) => {
                drop(record);
                let decision = self.limit_reached(tx, compiled, hourly, kind, now);
                if metered {
                    self.count_recipient(hourly, decision == Decision::Continue);
                }
                decision
            }
        }
    }

    /// The end of a local submission: the whole message over the per-message cap is refused
    /// for good; otherwise its recipients are counted under the sender and the aggregate
    /// account, and one that reaches a limit refuses the message as a recipient of an SMTP
    /// message would be (what was counted is given back when the transaction ends).
    fn decide_local_message(&self, tx: &mut Transaction) -> Decision {
        let Some(compiled) = tx.compiled.clone() else { return Decision::Continue };
        if tx.local_disallowed {
            info!(account = %tx.account, "local submission refused: restricted, and not every recipient is always allowed");
            return Decision::Refuse(Refusal::AccountRestricted);
        }
        let total: u32 = tx.local_recipients.iter().sum();
        let cap = compiled.policies.settings(tx.policy).max_recipients_per_message;
        if cap > 0 && total > cap {
            // Counted as a refused message (not as deferred recipients: this refusal is final).
            info!(account = %tx.account, recipients = total, cap, "local submission refused: over the per-message cap");
            return Decision::Refuse(Refusal::TooManyRecipientsLocal);
        }
        let counts = tx.local_recipients;
        let mut aggregate = tx.aggregate.take();
        let mut decision = if tx.restricted {
            // Every recipient is always allowed (checked above): counted, never refused.
            for hourly in [LimitKind::ExternalPerHour, LimitKind::InternalPerHour] {
                for _ in 0..counts[hourly as usize] {
                    self.count_allowed(tx, &compiled, hourly, true);
                }
            }
            Decision::Continue
        } else {
            self.reserve_local(tx, &compiled, counts, true)
        };
        if decision == Decision::Continue
            && let Some(sub) = aggregate.as_deref_mut()
        {
            decision = self.reserve_local(sub, &compiled, counts, false);
        }
        tx.aggregate = aggregate;
        if decision != Decision::Continue || tx.domains.is_empty() {
            return decision;
        }
        // Under the domain caps, the other recipients first (they may reach a cap), then the
        // always-allowed ones where the caps still have room.
        let allowed = tx.local_allowed;
        let others = [0, 1].map(|i| counts[i].saturating_sub(allowed[i]));
        let mut domains = std::mem::take(&mut tx.domains);
        for sub in domains.iter_mut() {
            if others == [0, 0] {
                break;
            }
            decision = if sub.restricted {
                Decision::Refuse(Refusal::AccountRestricted)
            } else {
                self.reserve_local(sub, &compiled, others, false)
            };
            if decision != Decision::Continue {
                break;
            }
        }
        tx.domains = domains;
        if decision == Decision::Continue {
            for hourly in [LimitKind::ExternalPerHour, LimitKind::InternalPerHour] {
                self.count_allowed_under_domains(tx, &compiled, hourly, allowed[hourly as usize]);
            }
        }
        decision
    }

    /// Reserves a local submission's recipients (`counts`: external, internal) for one
    /// account; the first that is not simply counted decides.
    fn reserve_local(&self, tx: &mut Transaction, compiled: &Compiled, counts: [u32; 2], metered: bool) -> Decision {
        for hourly in [LimitKind::ExternalPerHour, LimitKind::InternalPerHour] {
            for _ in 0..counts[hourly as usize] {
                let decision = self.reserve_recipient(tx, compiled, hourly, metered);
                if decision != Decision::Continue {
                    return decision;
                }
            }
        }
        Decision::Continue
    }

    /// The spam verdict on a message: counted in the account's window, thresholds checked,
    /// and the per-message action chosen.
    fn judge_message(&self, tx: &mut Transaction, facts: &MessageFacts<'_>) -> MessageOutcome {
        // Taken out and put back, not cloned, as for a recipient (see `decide_rcpt`).
        let Some(compiled) = tx.compiled.take() else { return MessageOutcome::deliver() };
        let outcome = self.judge_message_under(tx, &compiled, facts);
        tx.compiled = Some(compiled);
        outcome
    }

    fn judge_message_under(
        &self,
        tx: &mut Transaction,
        compiled: &Compiled,
        facts: &MessageFacts<'_>,
    ) -> MessageOutcome {
        let from_headers =
            if compiled.config.verdict.headers { compiled.judge.judge(facts.headers.iter().copied()) } else { None };
        let verdicts = || from_headers.iter().chain(facts.scanned);
        for v in verdicts() {
            self.metrics.verdict(v.source.as_str(), if v.spam { "spam" } else { "ham" });
        }
        if verdicts().next().is_none() {
            return MessageOutcome::deliver();
        }
        let spam = verdicts().any(|v| v.spam);
        let settings = compiled.policies.settings(tx.policy);
        let now = self.clock.now();
        // The message was counted with its first recipient; a verdict of ham adds nothing.
        if !spam && tx.message_counted.is_some() {
            return MessageOutcome::deliver();
        }
        let (spam_count, total) = {
            let mut record = self.accounts.record_mut(&tx.account, tx.policy);
            // A message that reached its end without an accepted recipient (not from Postfix).
            count_message(tx, compiled, &mut record, now);
            if spam {
                record.spam.count_spam(now, settings.spam_window);
            }
            record.spam.counts(now, settings.spam_window)
        };
        if !spam {
            return MessageOutcome::deliver();
        }
        if let Some(v) = verdicts().find(|v| v.spam) {
            info!(account = %tx.account, source = v.source.as_str(), detail = %v.detail, spam = spam_count, messages = total, "outbound message judged spam");
        }
        if over_threshold(spam_count, total, settings.spam_min_messages, settings.spam_percent) {
            self.spam_threshold_reached(tx, compiled, spam_count, total, now);
        }
        let bcc = settings.bcc_suspicious_to.clone();
        match settings.spam_message_action {
            SpamMessageAction::Accept => MessageOutcome { bcc, ..MessageOutcome::deliver() },
            SpamMessageAction::Tag => MessageOutcome { tag: true, bcc, ..MessageOutcome::deliver() },
            SpamMessageAction::Quarantine => MessageOutcome { quarantine: true, bcc, ..MessageOutcome::deliver() },
            SpamMessageAction::Reject => {
                MessageOutcome { decision: Decision::Refuse(Refusal::Spam), ..MessageOutcome::deliver() }
            }
        }
    }

    /// The account's spam share passed the policy's thresholds: restrict or alert.
    fn spam_threshold_reached(&self, tx: &Transaction, compiled: &Compiled, spam: u32, total: u32, now: Timestamp) {
        let settings = compiled.policies.settings(tx.policy);
        let reason = format!(
            "{spam} of its {total} messages in the last {} were judged spam (thresholds: {} messages and {}%)",
            crate::config::duration::format(settings.spam_window),
            settings.spam_min_messages,
            settings.spam_percent
        );
        if settings.spam_action == LimitAction::Alert {
            let hour = now.hour();
            let first =
                self.accounts.record_mut(&tx.account, tx.policy).first_notice_this_hour(HourlyNotice::SpamAlert, hour);
            if first {
                warn!(account = %tx.account, "{reason}; delivering (alert only)");
                let counters = self.counters(&tx.account);
                let node = &compiled.config.notify.node_name;
                self.events.emit(Event {
                    reason,
                    counters,
                    ..Event::alert(EventKind::SendingLimitExceeded, &tx.account, &settings.name, node, now.datetime())
                });
            }
            return;
        }
        let until =
            (settings.spam_action == LimitAction::BlockUntilTomorrow).then(|| now.next_utc_midnight().datetime());
        let counters = self.counters(&tx.account);
        let restriction =
            Restriction::by_policy(&tx.account, &reason, &settings.name, now.datetime(), until, counters, "spam");
        if let Err(e) = self.restrict_by_policy(restriction, settings, None, &compiled.config.notify.node_name) {
            tracing::error!(account = %tx.account, "cannot record restriction: {e}");
        }
    }

    /// Runs a decision, timing one in [`TIMING_SAMPLE`] of them for the decision histogram:
    /// two clock reads and a histogram update (a lock shared by every thread) cost more than
    /// the decision itself, and a sample shows the distribution as well.
    fn timed(&self, decide: impl FnOnce() -> Decision) -> Decision {
        let sampled = DECISIONS_SEEN.with(|seen| {
            let n = seen.get().wrapping_add(1);
            seen.set(n);
            n % TIMING_SAMPLE == 0
        });
        if !sampled {
            return decide();
        }
        let started = std::time::Instant::now();
        let decision = decide();
        self.metrics.decision_seconds.observe(started.elapsed().as_secs_f64());
        decision
    }
}

impl Policy for Engine {
    type Transaction = Transaction;

    fn needs(&self) -> Needs {
        self.current.load().needs()
    }

    fn scans(&self) -> bool {
        self.current.load().scans()
    }

    fn header_names(&self) -> Arc<crate::verdict::HeaderNames> {
        self.current.load().header_names()
    }

    fn scan<'a>(&'a self, request: ScanRequest<'a>) -> impl std::future::Future<Output = Vec<Verdict>> + Send + 'a {
        self.scan_message(request)
    }

    fn mail_from(&self, tx: &mut Transaction, facts: &MailFacts<'_>) -> Decision {
        self.timed(|| self.decide_mail(tx, facts))
    }

    fn rcpt_to(&self, tx: &mut Transaction, facts: &RcptFacts<'_>) -> Decision {
        self.timed(|| self.decide_rcpt(tx, facts))
    }

    fn end_of_message(&self, tx: &mut Transaction, facts: &MessageFacts<'_>) -> MessageOutcome {
        let counted = if tx.local { self.timed(|| self.decide_local_message(tx)) } else { Decision::Continue };
        let outcome = match counted {
            Decision::Continue => self.judge_message(tx, facts),
            refused => MessageOutcome { decision: refused, ..MessageOutcome::deliver() },
        };
        tx.reached_end = true;
        if tx.compiled.is_some() {
            match outcome.decision {
                Decision::Continue | Decision::Accept => {
                    tx.committed = true;
                    for sub in tx.subs_mut() {
                        sub.committed = true;
                    }
                    self.metrics.messages.outbound_delivered.inc();
                    self.tell_delivery(tx, facts.queue_id);
                }
                _ => {
                    self.metrics.messages.outbound_rejected.inc();
                }
            }
        }
        outcome
    }

    fn end_transaction(&self, tx: &mut Transaction) {
        if !tx.committed {
            self.give_back(tx);
            let mut subs = std::mem::take(&mut tx.domains);
            if let Some(sub) = tx.aggregate.as_deref_mut() {
                self.give_back(sub);
            }
            for sub in &mut subs {
                self.give_back(sub);
            }
            tx.domains = subs;
        }
        tx.reset();
    }
}
