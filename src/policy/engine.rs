//! The policy engine: from the facts of each stage to a [`Decision`], with the side effects —
//! counting, restricting, events — that hang off it.
//!
//! MAIL FROM decides the direction and the account and refuses a restricted account; each
//! RCPT TO is counted against the account's policy or reaches a limit, which, per the policy's
//! action, restricts the account (`block`, `block_until_tomorrow`) or only raises an event
//! (`alert`). The configuration in force is an `Arc` swapped on reload and picked up by the
//! next transaction.

use std::sync::Arc;

use arc_swap::ArcSwap;
use compact_str::CompactString;
use dashmap::DashMap;
use dashmap::mapref::one::RefMut;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::account::{self, canonical};
use super::clock::{EngineClock, hour_number, next_utc_midnight_secs, rfc3339, utc_day};
use super::events::{Event, EventKind, EventSink};
use super::limits::{self, AccountRecord, LimitKind, Limiters, Notice};
use super::rules::{CompiledPolicies, PolicyIndex};
use super::spam::over_threshold;
use super::{Decision, MailFacts, MessageFacts, MessageOutcome, Policy, RcptFacts, Refusal, ScanRequest};
use crate::config::{Config, LimitAction, PolicySettings, SpamMessageAction};
use crate::metrics::Metrics;
use crate::policy::Needs;
use crate::policy::restriction::{Counters, Restriction, RestrictionStore, Source, StoreError};
use crate::verdict::{HeaderJudge, RspamdClient, SpamdClient, Verdict};

/// What cluster mode (`crate::cluster`) reads and merges; kept apart from the decisions.
mod shared;

/// Account names are inline strings: up to 24 bytes (nearly every address) live in the map's
/// bucket itself, so a lookup compares without following a pointer and a new account costs no
/// separate allocation.
type Accounts = DashMap<CompactString, AccountRecord, ahash::RandomState>;

/// One configuration, compiled for deciding.
pub struct Compiled {
    pub config: Arc<Config>,
    pub policies: CompiledPolicies,
    pub limiters: Limiters,
    /// Accounts never counted: the notifier's own address and relay login.
    exempt: Vec<String>,
    judge: HeaderJudge,
    spamd: Option<SpamdClient>,
    rspamd: Option<RspamdClient>,
}

impl Compiled {
    fn new(config: Arc<Config>) -> Compiled {
        let strip = config.organization.strip_subaddress;
        let policies = CompiledPolicies::new(&config.policies, &config.groups, strip);
        let limiters = Limiters::new(policies.all());
        // The notifier's own mail: its sender, and the login it authenticates with when
        // `notify.smtp` names one (then the account is that login, not the sender). Nothing
        // else: exempting any mail that merely claims `notify.from` as its sender would let an
        // authenticated account forge it and never be counted.
        let relay_login = crate::notify::email::RelayUrl::parse(&config.notify.smtp)
            .ok()
            .and_then(|relay| relay.credentials.map(|(user, _)| user));
        let exempt = std::iter::once(config.notify.from.as_str())
            .chain(relay_login.as_deref())
            .filter_map(|raw| canonical(raw.as_bytes(), strip).map(|c| c.into_owned()))
            .collect();
        // Rules were validated with the configuration; should one still not compile, the
        // built-in rules keep working.
        let judge = HeaderJudge::new(&config.verdict).unwrap_or_else(|e| {
            tracing::error!("header rules ignored: {e}");
            let mut builtin = config.verdict.clone();
            builtin.rules.clear();
            HeaderJudge::new(&builtin).expect("built-in header rules compile")
        });
        let spamd = SpamdClient::from_config(&config.verdict);
        let rspamd = RspamdClient::from_config(&config.verdict)
            .and_then(|r| r.map_err(|e| tracing::error!("rspamd disabled: {e}")).ok());
        Compiled { config, policies, limiters, exempt, judge, spamd, rspamd }
    }

    /// What the MTA must send and allow for this configuration.
    fn needs(&self) -> Needs {
        let v = &self.config.verdict;
        let scanners = self.spamd.is_some() || self.rspamd.is_some();
        let all = self.policies.all();
        Needs {
            headers: v.headers || scanners,
            body: scanners,
            add_headers: all.iter().any(|p| p.spam_message_action == SpamMessageAction::Tag),
            quarantine: all.iter().any(|p| p.spam_message_action == SpamMessageAction::Quarantine),
            add_recipients: all.iter().any(|p| !p.bcc_suspicious_to.is_empty()),
            max_scan_bytes: v.max_scan_bytes,
        }
    }
}

/// An account's live counters as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SenderInfo {
    pub account: String,
    pub policy: String,
    pub counters: Counters,
    pub restricted: bool,
}

/// Per-transaction state, reused across the transactions of a connection.
#[derive(Default)]
pub struct Transaction {
    compiled: Option<Arc<Compiled>>,
    account: String,
    policy: PolicyIndex,
    recipients: u32,
    /// Whether the message is counted in the account's spam window yet.
    message_counted: bool,
    restricted: bool,
    /// Recipients counted per [`LimitKind`] in this transaction (shared with other nodes at
    /// its end in cluster mode).
    counted: [u32; 3],
}

/// The engine shared by all milter connections.
pub struct Engine {
    metrics: Arc<Metrics>,
    current: ArcSwap<Compiled>,
    accounts: Accounts,
    restrictions: Arc<dyn RestrictionStore>,
    events: EventSink,
    clock: EngineClock,
}

/// One decision in this many is timed for `decision_seconds` (see [`Engine::timed`]).
const TIMING_SAMPLE: u32 = 16;

thread_local! {
    /// Decisions taken on this thread, for choosing the timed sample without sharing a counter.
    static DECISIONS_SEEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn to_datetime(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Engine {
    pub fn new(
        config: Arc<Config>,
        restrictions: Arc<dyn RestrictionStore>,
        events: EventSink,
        clock: EngineClock,
        metrics: Arc<Metrics>,
    ) -> Engine {
        Engine {
            metrics,
            current: ArcSwap::from_pointee(Compiled::new(config)),
            accounts: Accounts::default(),
            restrictions,
            events,
            clock,
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
        let now = self.clock.now_nanos();
        for mut entry in self.accounts.iter_mut() {
            let index = new.policies.select(entry.key());
            let old_settings = old.policies.settings(entry.policy).clone();
            limits::convert_for_reload(entry.value_mut(), &old_settings, new.policies.settings(index), index, now);
        }
        self.current.store(Arc::new(new));
    }

    /// The canonical form of an account name as an administrator typed it.
    pub fn canonical_account(&self, raw: &str) -> Option<String> {
        let strip = self.current.load().config.organization.strip_subaddress;
        canonical(raw.as_bytes(), strip).map(|c| c.into_owned())
    }

    /// Live counters of an account (zeros for one not seen recently).
    pub fn counters(&self, account: &str) -> Counters {
        let compiled = self.current.load();
        let policy = compiled.policies.select(account);
        let record = self.accounts.get(account).map(|r| r.clone()).unwrap_or_default();
        counters_of(&compiled, policy, &record, self.clock.now_nanos())
    }

    /// The name of the policy that applies to an account.
    pub fn policy_name(&self, account: &str) -> String {
        let compiled = self.current.load();
        compiled.policies.settings(compiled.policies.select(account)).name.clone()
    }

    /// Accounts currently tracked.
    pub fn tracked_accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Live counters of one account, if it is tracked or restricted.
    pub fn sender(&self, account: &str) -> Option<SenderInfo> {
        let compiled = self.current.load();
        let now = self.clock.now_nanos();
        let restriction = self.restrictions.get(account, self.clock.now_secs());
        let record = self.accounts.get(account).map(|r| r.clone());
        if record.is_none() && restriction.is_none() {
            return None;
        }
        let policy = compiled.policies.select(account);
        Some(SenderInfo {
            account: account.to_owned(),
            policy: compiled.policies.settings(policy).name.clone(),
            counters: counters_of(&compiled, policy, &record.unwrap_or_default(), now),
            restricted: restriction.is_some(),
        })
    }

    /// The `n` busiest accounts: most recipients in the last day, then in the last hour.
    pub fn top_senders(&self, n: usize) -> Vec<SenderInfo> {
        let compiled = self.current.load();
        let now = self.clock.now_nanos();
        let now_secs = self.clock.now_secs();
        let mut all: Vec<SenderInfo> = self
            .accounts
            .iter()
            .map(|entry| {
                let counters = counters_of(&compiled, entry.policy, entry.value(), now);
                SenderInfo {
                    account: entry.key().to_string(),
                    policy: compiled.policies.settings(entry.policy).name.clone(),
                    counters,
                    restricted: self.restrictions.is_restricted(entry.key(), now_secs),
                }
            })
            .filter(|s| s.counters.last_day + s.counters.external_last_hour + s.counters.internal_last_hour > 0)
            .collect();
        let busy =
            |s: &SenderInfo| (s.counters.last_day, s.counters.external_last_hour + s.counters.internal_last_hour);
        all.sort_by(|a, b| busy(b).cmp(&busy(a)).then_with(|| a.account.cmp(&b.account)));
        all.truncate(n);
        all
    }

    /// Every tracked account's record (for the snapshot).
    pub fn records(&self) -> impl Iterator<Item = (String, AccountRecord)> + '_ {
        self.accounts.iter().map(|e| (e.key().to_string(), e.value().clone()))
    }

    /// Puts back records from a snapshot, under the policy each account has now.
    pub fn restore_records(&self, records: Vec<(CompactString, AccountRecord)>) -> usize {
        let compiled = self.current.load();
        let now = self.clock.now_nanos();
        let mut restored = 0;
        for (account, mut record) in records {
            record.policy = compiled.policies.select(&account);
            if !record.is_idle(now) {
                self.accounts.insert(account, record);
                restored += 1;
            }
        }
        restored
    }

    /// Drops the account records with nothing left to remember.
    pub fn evict_idle(&self) -> usize {
        limits::evict_idle(&self.accounts, self.clock.now_nanos())
    }

    /// Releases a restricted account: it may send again at once, and a limit does not restrict
    /// it again on the same UTC day. Returns the restriction lifted, if there was one.
    ///
    /// # Errors
    /// When the release cannot be recorded.
    pub fn release(&self, account: &str, by: &str, reason: Option<&str>) -> Result<Option<Restriction>, StoreError> {
        let now = self.clock.now_nanos();
        let now_secs = self.clock.now_secs();
        let Some(in_force) = self.restrictions.get(account, now_secs) else {
            return Ok(None);
        };
        // Built before the release, to be recorded with it (see `events`).
        let event = Event {
            id: Event::new_id(),
            kind: EventKind::SenderReleased,
            account: account.to_owned(),
            reason: reason.map_or_else(|| format!("released by {by}"), str::to_owned),
            policy: in_force.policy.clone(),
            limit: None,
            counters: self.counters(account),
            since: in_force.created_at,
            until: Some(to_datetime(now_secs)),
            node: self.current.load().config.notify.node_name.clone(),
            by: Some(by.to_owned()),
        };
        let released = self.restrictions.release(account, now_secs, by, reason.unwrap_or(""), Some(&event))?;
        if let Some(r) = &released {
            self.metrics.released(r.cause());
            self.record_mut(account, self.current.load().policies.select(account)).set_released(utc_day(now));
            info!(account, by, reason = reason.unwrap_or(""), "account released");
            self.events.emit(event);
        }
        Ok(released)
    }

    /// Restricts an account by hand. Returns the restriction in force and whether it is new.
    ///
    /// # Errors
    /// When the restriction cannot be recorded.
    pub fn restrict_manually(
        &self,
        account: &str,
        reason: &str,
        until: Option<OffsetDateTime>,
        by: &str,
    ) -> Result<(Restriction, bool), StoreError> {
        let now_secs = self.clock.now_secs();
        let compiled = self.current.load_full();
        let restriction = Restriction {
            account: account.to_owned(),
            reason: reason.to_owned(),
            policy: compiled.policies.settings(compiled.policies.select(account)).name.clone(),
            created_at: to_datetime(now_secs),
            until,
            counters: self.counters(account),
            source: Source::Admin,
            cause: "manual".to_owned(),
        };
        let event = restricted_event(&compiled, &restriction, None, Some(by));
        let created = self.restrictions.restrict(restriction.clone(), by, Some(&event))?;
        if created {
            self.metrics.restricted("manual");
            warn!(account, by, reason, "account restricted by an administrator");
            self.events.emit(event);
        }
        let current = self.restrictions.get(account, now_secs).unwrap_or(restriction);
        Ok((current, created))
    }

    fn record_mut(&self, account: &str, policy: PolicyIndex) -> RefMut<'_, CompactString, AccountRecord> {
        match self.accounts.get_mut(account) {
            Some(r) => r,
            // Only a new account pays for the key's allocation.
            None => {
                self.accounts.entry(account.into()).or_insert_with(|| AccountRecord { policy, ..Default::default() })
            }
        }
    }

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
    fn limit_reached(
        &self,
        tx: &mut Transaction,
        compiled: &Compiled,
        hourly: LimitKind,
        kind: LimitKind,
        now: u64,
    ) -> Decision {
        let settings = compiled.policies.settings(tx.policy);
        let mut record = self.record_mut(&tx.account, tx.policy);
        let in_grace = record.released_on(utc_day(now));
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
            let hour = hour_number(now);
            let alerts: Vec<LimitKind> = full
                .into_iter()
                .flatten()
                .filter(|&k| record.first_notice_this_hour(Notice::LimitAlert(k), hour))
                .collect();
            let counters = counters_of(compiled, tx.policy, &record, now);
            drop(record);
            for kind in alerts {
                let mut reason = limit_reason(settings, kind);
                if in_grace {
                    reason.push_str(
                        "; delivered anyway: an administrator released the account today, so limits \
                         only alert until 00:00 UTC",
                    );
                }
                warn!(account = %tx.account, policy = %settings.name, grace = in_grace, "{reason}; delivering (alert only)");
                self.events.emit(Event {
                    id: String::new(),
                    kind: EventKind::SendingLimitExceeded,
                    account: tx.account.clone(),
                    reason,
                    policy: settings.name.clone(),
                    limit: Some(kind),
                    counters: counters.clone(),
                    since: to_datetime((now / 1_000_000_000) as i64),
                    until: None,
                    node: compiled.config.notify.node_name.clone(),
                    by: None,
                });
            }
            return Decision::Continue;
        }
        let counters = counters_of(compiled, tx.policy, &record, now);
        let reason = limit_reason(settings, kind);
        drop(record);
        let now_secs = (now / 1_000_000_000) as i64;
        let until = (action == LimitAction::BlockUntilTomorrow).then(|| to_datetime(next_utc_midnight_secs(now)));
        let restriction = Restriction {
            account: tx.account.clone(),
            reason,
            policy: settings.name.clone(),
            created_at: to_datetime(now_secs),
            until,
            counters,
            source: Source::Policy,
            cause: kind.key().to_owned(),
        };
        let event = restricted_event(compiled, &restriction, Some(kind), None);
        match self.restrictions.restrict(restriction.clone(), "policy", Some(&event)) {
            Ok(created) => {
                tx.restricted = true;
                if !created {
                    // Another transaction of the account reached the limit first and got the
                    // 5.2.2; from here on the account is simply restricted.
                    return Decision::Refuse(Refusal::AccountRestricted);
                }
                self.metrics.restricted(kind.key());
                let until_text = until.map_or_else(|| "until released".to_owned(), rfc3339);
                warn!(account = %tx.account, policy = %settings.name, until = %until_text, "account restricted: {}", restriction.reason);
                self.events.emit(event);
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
        now: u64,
    ) -> Option<Event> {
        let percent = compiled.config.notify.warn_at_percent;
        if percent == 0 {
            return None;
        }
        let hour = hour_number(now);
        for kind in [hourly, LimitKind::PerDay] {
            if !compiled.limiters.reached_percent(tx.policy, record, kind, now, percent) {
                continue;
            }
            let Some((used, limit)) = compiled.limiters.usage(tx.policy, record, kind, now) else {
                continue;
            };
            if record.first_notice_this_hour(Notice::Warning(kind), hour) {
                let settings = compiled.policies.settings(tx.policy);
                return Some(Event {
                    id: String::new(),
                    kind: EventKind::ApproachingLimit,
                    account: tx.account.clone(),
                    reason: format!("{used} of {limit} {} in use ({percent}% warning level)", kind.describe()),
                    policy: settings.name.clone(),
                    limit: Some(kind),
                    counters: counters_of(compiled, tx.policy, record, now),
                    since: to_datetime((now / 1_000_000_000) as i64),
                    until: None,
                    node: compiled.config.notify.node_name.clone(),
                    by: None,
                });
            }
        }
        None
    }
}

/// Why an account reached `kind`, in the restriction and the notices.
fn limit_reason(settings: &PolicySettings, kind: LimitKind) -> String {
    let limit = kind.limit_in(settings);
    format!(
        "reached the limit of {limit} {} ({limit} counted in the last {})",
        kind.describe(),
        if kind == LimitKind::PerDay { "24 hours" } else { "hour" }
    )
}

/// Counts the transaction's message, once, in the account's spam window when verdicts are
/// enabled: the spam share is of all the account's messages, judged or not.
fn count_message(tx: &mut Transaction, compiled: &Compiled, record: &mut AccountRecord, now: u64) {
    if tx.message_counted || !compiled.config.verdict.any_source() {
        return;
    }
    tx.message_counted = true;
    let window = compiled.policies.settings(tx.policy).spam_window;
    record.spam.count_message(now / 1_000_000_000, window);
}

/// Counters of a record under a policy at `now`.
fn counters_of(compiled: &Compiled, policy: PolicyIndex, record: &AccountRecord, now: u64) -> Counters {
    let window = compiled.policies.settings(policy).spam_window;
    let (spam_messages, messages) = record.spam.counts(now / 1_000_000_000, window);
    let usage = |kind| compiled.limiters.usage(policy, record, kind, now).unwrap_or((0, 0));
    let (external_last_hour, external_limit_per_hour) = usage(LimitKind::ExternalPerHour);
    let (internal_last_hour, internal_limit_per_hour) = usage(LimitKind::InternalPerHour);
    let (last_day, limit_per_day) = usage(LimitKind::PerDay);
    Counters {
        external_last_hour,
        external_limit_per_hour,
        internal_last_hour,
        internal_limit_per_hour,
        last_day,
        limit_per_day,
        spam_messages,
        messages,
    }
}

impl Transaction {
    fn reset(&mut self) {
        self.compiled = None;
        self.account.clear();
        self.policy = 0;
        self.recipients = 0;
        self.message_counted = false;
        self.restricted = false;
        self.counted = [0; 3];
    }
}

impl Engine {
    fn decide_mail(&self, tx: &mut Transaction, facts: &MailFacts<'_>) -> Decision {
        tx.reset();
        let compiled = self.current.load_full();
        let org = &compiled.config.organization;
        if !account::is_outbound(facts.auth_login, facts.client_addr, &org.internal_networks) {
            self.metrics.messages.inbound_accepted.inc();
            return Decision::Accept;
        }
        // The null sender (bounces, notifications of delivery status) is never restricted.
        if facts.sender.is_empty() || facts.sender == b"<>" {
            self.metrics.messages.outbound_exempt.inc();
            return Decision::Accept;
        }
        let raw = facts.auth_login.unwrap_or(facts.sender);
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
        if self.restrictions.is_restricted(&account, self.clock.now_secs()) {
            info!(account = %account, "MAIL FROM refused: account restricted");
            self.metrics.messages.outbound_refused.inc();
            return Decision::Refuse(Refusal::AccountRestricted);
        }
        tx.policy = compiled.policies.select(&account);
        tx.compiled = Some(compiled);
        self.metrics.messages.outbound_checked.inc();
        Decision::Continue
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
        if tx.restricted {
            return Decision::Refuse(Refusal::AccountRestricted);
        }
        let settings = compiled.policies.settings(tx.policy);
        let cap = settings.max_recipients_per_message;
        if cap > 0 && tx.recipients >= cap {
            self.metrics.recipients.deferred_over_cap.inc();
            return Decision::Refuse(Refusal::TooManyRecipients);
        }
        let hourly = if account::recipient_is_internal(facts.recipient, &compiled.config.organization.local_domains) {
            LimitKind::InternalPerHour
        } else {
            LimitKind::ExternalPerHour
        };
        let now = self.clock.now_nanos();
        let mut record = self.record_mut(&tx.account, tx.policy);
        match compiled.limiters.try_add_recipient(tx.policy, &mut record, hourly, now) {
            Ok(()) => {
                tx.recipients += 1;
                tx.counted[hourly as usize] += 1;
                tx.counted[LimitKind::PerDay as usize] += 1;
                self.count_recipient(hourly, true);
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
                self.count_recipient(hourly, decision == Decision::Continue);
                decision
            }
        }
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
        let now = self.clock.now_nanos();
        let now_secs = now / 1_000_000_000;
        // The message was counted with its first recipient; a verdict of ham adds nothing.
        if !spam && tx.message_counted {
            return MessageOutcome::deliver();
        }
        let (spam_count, total) = {
            let mut record = self.record_mut(&tx.account, tx.policy);
            // A message that reached its end without an accepted recipient (not from Postfix).
            count_message(tx, compiled, &mut record, now);
            if spam {
                record.spam.count_spam(now_secs, settings.spam_window);
            }
            record.spam.counts(now_secs, settings.spam_window)
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
    fn spam_threshold_reached(&self, tx: &Transaction, compiled: &Compiled, spam: u32, total: u32, now: u64) {
        let settings = compiled.policies.settings(tx.policy);
        let reason = format!(
            "{spam} of its {total} messages in the last {} were judged spam (thresholds: {} messages and {}%)",
            crate::config::duration::format(settings.spam_window),
            settings.spam_min_messages,
            settings.spam_percent
        );
        let now_secs = (now / 1_000_000_000) as i64;
        if settings.spam_action == LimitAction::Alert {
            let hour = hour_number(now);
            let first = self.record_mut(&tx.account, tx.policy).first_notice_this_hour(Notice::SpamAlert, hour);
            if first {
                warn!(account = %tx.account, "{reason}; delivering (alert only)");
                let counters = self.counters(&tx.account);
                self.events.emit(Event {
                    id: String::new(),
                    kind: EventKind::SendingLimitExceeded,
                    account: tx.account.clone(),
                    reason,
                    policy: settings.name.clone(),
                    limit: None,
                    counters,
                    since: to_datetime(now_secs),
                    until: None,
                    node: compiled.config.notify.node_name.clone(),
                    by: None,
                });
            }
            return;
        }
        let until =
            (settings.spam_action == LimitAction::BlockUntilTomorrow).then(|| to_datetime(next_utc_midnight_secs(now)));
        let restriction = Restriction {
            account: tx.account.clone(),
            reason,
            policy: settings.name.clone(),
            created_at: to_datetime(now_secs),
            until,
            counters: self.counters(&tx.account),
            source: Source::Policy,
            cause: "spam".to_owned(),
        };
        let event = restricted_event(compiled, &restriction, None, None);
        match self.restrictions.restrict(restriction.clone(), "policy", Some(&event)) {
            Ok(true) => {
                self.metrics.restricted("spam");
                let until_text = until.map_or_else(|| "until released".to_owned(), rfc3339);
                warn!(account = %tx.account, until = %until_text, "account restricted: {}", restriction.reason);
                self.events.emit(event);
            }
            Ok(false) => {}
            Err(e) => tracing::error!(account = %tx.account, "cannot record restriction: {e}"),
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
        let c = self.current.load();
        c.spamd.is_some() || c.rspamd.is_some()
    }

    fn scan<'a>(&'a self, request: ScanRequest<'a>) -> impl std::future::Future<Output = Vec<Verdict>> + Send + 'a {
        let compiled = self.current.load_full();
        async move {
            let spamd = async {
                match &compiled.spamd {
                    Some(c) => Some(c.check(&request).await),
                    None => None,
                }
            };
            let rspamd = async {
                match &compiled.rspamd {
                    Some(c) => Some(c.check(&request).await),
                    None => None,
                }
            };
            let (a, b) = tokio::join!(spamd, rspamd);
            let mut verdicts = Vec::new();
            for (name, result) in [("spamd", a), ("rspamd", b)] {
                match result {
                    Some(Ok(v)) => verdicts.push(v),
                    Some(Err(e)) => {
                        // Never a refusal: the message goes on without this verdict.
                        warn!(queue_id = request.queue_id.unwrap_or(""), "{name} gave no verdict: {e}");
                        self.metrics.verdict(name, "error");
                    }
                    None => {}
                }
            }
            verdicts
        }
    }

    fn mail_from(&self, tx: &mut Transaction, facts: &MailFacts<'_>) -> Decision {
        self.timed(|| self.decide_mail(tx, facts))
    }

    fn rcpt_to(&self, tx: &mut Transaction, facts: &RcptFacts<'_>) -> Decision {
        self.timed(|| self.decide_rcpt(tx, facts))
    }

    fn end_of_message(&self, tx: &mut Transaction, facts: &MessageFacts<'_>) -> MessageOutcome {
        let outcome = self.judge_message(tx, facts);
        if tx.compiled.is_some() {
            match outcome.decision {
                Decision::Continue => self.metrics.messages.outbound_delivered.inc(),
                _ => self.metrics.messages.outbound_rejected.inc(),
            };
        }
        outcome
    }

    fn end_transaction(&self, tx: &mut Transaction) {
        tx.reset();
    }
}

/// The event announcing `r`, a new restriction, with a fresh id.
fn restricted_event(compiled: &Compiled, r: &Restriction, limit: Option<LimitKind>, by: Option<&str>) -> Event {
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
        node: compiled.config.notify.node_name.clone(),
        by: by.map(str::to_owned),
    }
}
