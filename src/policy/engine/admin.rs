//! What the administration (HTTP API, CLI, web page) reads and changes through the engine:
//! an account's live counters, limits, policy and history, the busiest accounts, a release, a
//! manual restriction (or a new reason and `until` for one in force). Each change is recorded with the event that announces it (see
//! `policy::events`) before the caller hears of it.

use time::OffsetDateTime;
use tracing::{info, warn};

use super::Engine;
use crate::policy::account::canonical;
use crate::policy::events::Event;
use crate::policy::hourly::HourSample;
use crate::policy::restriction::{AuditAction, AuditEntry, Counters, Restriction, StoreError};

/// An account's live counters as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SenderInfo {
    pub account: String,
    pub policy: String,
    pub counters: Counters,
    pub restricted: bool,
}

/// The limits of the policy that applies to an account, by their configuration keys (0 = none).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    pub recipient_limit_external_per_hour: u32,
    pub recipient_limit_internal_per_hour: u32,
    pub recipient_limit_per_day: u32,
    pub max_recipients_per_message: u32,
    pub spam_window_seconds: u64,
    pub spam_min_messages: u32,
    pub spam_percent: u8,
}

/// One line of an account's history as the administration shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub action: AuditAction,
    pub reason: String,
    pub by: String,
    /// The end of the restriction made or replaced (`null`: until released; always `null` for
    /// a release).
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
}

impl From<AuditEntry> for HistoryEntry {
    fn from(e: AuditEntry) -> HistoryEntry {
        HistoryEntry { at: e.at, action: e.action, reason: e.reason, by: e.by, until: e.until }
    }
}

/// Everything the filter knows of one account: `senders show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderDetail {
    pub account: String,
    pub policy: String,
    pub counters: Counters,
    pub limits: Limits,
    pub restriction: Option<Restriction>,
    pub history: Vec<HistoryEntry>,
    /// The whole hours before `as_of`'s, oldest first: the highest sample of the recipients in
    /// use against each hourly limit (`policy::hourly`), or not recorded.
    pub hourly: Vec<HourSample>,
    /// When the counters were read, by the engine's clock.
    pub as_of: OffsetDateTime,
}

/// What `restrict_manually` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualRestriction {
    /// The account was not restricted; now it is.
    Created,
    /// It was: its reason and `until` were replaced.
    Replaced,
}

impl Engine {
    /// The canonical form of an account name as an administrator typed it.
    /// A domain restricted as a unit is written `@customer.example`.
    pub fn canonical_account(&self, raw: &str) -> Option<String> {
        if let Some(domain) = raw.trim().strip_prefix('@') {
            let domain = crate::policy::account::canonical_domain(domain);
            let valid = !domain.is_empty() && !domain.contains(['@', ' ']) && !domain.chars().any(char::is_control);
            return valid.then(|| format!("@{domain}"));
        }
        let strip = self.current.load().config.organization.strip_subaddress;
        canonical(raw.as_bytes(), strip).map(|c| c.into_owned())
    }

    /// Whether `account` is a domain (`@customer.example`, canonical) with a
    /// `[[policy.domain]]` cap: only those can be restricted as a unit, since only a cap's
    /// domain is checked at MAIL FROM.
    pub fn is_capped_domain(&self, account: &str) -> bool {
        account.strip_prefix('@').is_some_and(|d| self.current.load().policies.domain_cap(d).is_some())
    }

    /// Live counters of an account (zeros for one not seen recently).
    pub fn counters(&self, account: &str) -> Counters {
        let compiled = self.current.load();
        let policy = compiled.policies.select(account);
        let record = self.accounts.get(account).unwrap_or_default();
        compiled.counters_of(policy, &record, self.clock.now())
    }

    /// The recipients in use under each configured domain cap (for `/metrics`).
    pub fn domain_usage(&self) -> Vec<crate::metrics::DomainUsage> {
        let compiled = self.current.load();
        let now = self.clock.now();
        compiled
            .policies
            .domain_cap_list()
            .iter()
            .map(|cap| {
                let record = self.accounts.get(&cap.account).unwrap_or_default();
                let c = compiled.counters_of(cap.policy, &record, now);
                crate::metrics::DomainUsage {
                    domain: cap.domain.clone(),
                    external_last_hour: (c.external_limit_per_hour > 0).then_some(c.external_last_hour),
                    last_day: (c.limit_per_day > 0).then_some(c.last_day),
                }
            })
            .collect()
    }

    /// The name of the policy that applies to an account.
    pub fn policy_name(&self, account: &str) -> String {
        let compiled = self.current.load();
        compiled.policies.settings(compiled.policies.select(account)).name.clone()
    }

    /// An account's history (its newest entries, oldest first), in the administration's shape.
    pub fn history(&self, account: &str) -> Vec<HistoryEntry> {
        self.restrictions.history(account).into_iter().map(HistoryEntry::from).collect()
    }

    /// Counters, limits, policy, restriction and history of an account the filter knows: one
    /// it counts, one restricted, one with a history (released, or restricted and expired), or
    /// one the per-hour series still holds (its record dropped as idle);
    /// `None` for any other.
    pub fn sender_detail(&self, account: &str) -> Option<SenderDetail> {
        let compiled = self.current.load();
        let now = self.clock.now();
        let restriction = self.restrictions.get(account, now.secs());
        let record = self.accounts.get(account);
        let history = self.history(account);
        if record.is_none() && restriction.is_none() && history.is_empty() && !self.hourly.holds(account) {
            return None;
        }
        let policy = compiled.policies.select(account);
        let settings = compiled.policies.settings(policy);
        Some(SenderDetail {
            account: account.to_owned(),
            policy: settings.name.clone(),
            counters: compiled.counters_of(policy, &record.unwrap_or_default(), now),
            limits: Limits {
                recipient_limit_external_per_hour: settings.recipient_limit_external_per_hour,
                recipient_limit_internal_per_hour: settings.recipient_limit_internal_per_hour,
                recipient_limit_per_day: settings.recipient_limit_per_day,
                max_recipients_per_message: settings.max_recipients_per_message,
                spam_window_seconds: settings.spam_window.as_secs(),
                spam_min_messages: settings.spam_min_messages,
                spam_percent: settings.spam_percent,
            },
            restriction,
            history,
            hourly: self.hourly.series(account, now),
            as_of: now.datetime(),
        })
    }

    /// The `n` busiest accounts: most recipients in the last day, then in the last hour.
    pub fn top_senders(&self, n: usize) -> Vec<SenderInfo> {
        let compiled = self.current.load();
        let now = self.clock.now();
        let now_secs = self.clock.now().secs();
        let mut all: Vec<SenderInfo> = self
            .accounts
            .iter()
            .map(|entry| {
                let counters = compiled.counters_of(entry.policy, entry.value(), now);
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

    /// Releases a restricted account: it may send again at once, and a limit does not restrict
    /// it again on the same UTC day. Returns the restriction lifted, if there was one.
    ///
    /// # Errors
    /// When the release cannot be recorded.
    pub fn release(&self, account: &str, by: &str, reason: Option<&str>) -> Result<Option<Restriction>, StoreError> {
        let now = self.clock.now();
        let now_secs = now.secs();
        let Some(in_force) = self.restrictions.get(account, now_secs) else {
            return Ok(None);
        };
        // Built before the release, to be recorded with it (see `events`).
        let event = Event::released(
            &in_force,
            reason.map_or_else(|| format!("released by {by}"), str::to_owned),
            self.counters(account),
            now.datetime(),
            &self.current.load().config.notify.node_name,
            by,
        );
        let released = self.restrictions.release(account, now_secs, by, reason.unwrap_or(""), Some(&event))?;
        if let Some(r) = &released {
            self.metrics.released(r.cause());
            self.accounts.record_mut(account, self.current.load().policies.select(account)).set_released(now.utc_day());
            info!(account, by, reason = reason.unwrap_or(""), "account released");
            self.events.emit(event);
        }
        Ok(released)
    }

    /// Restricts an account by hand; an account restricted already gets the new reason and
    /// `until` instead (recorded as `replaced` in its history; no new notice, since the account
    /// was told of its restriction when it began). Returns the restriction in force and which
    /// of the two happened.
    ///
    /// # Errors
    /// When the restriction cannot be recorded.
    pub fn restrict_manually(
        &self,
        account: &str,
        reason: &str,
        until: Option<OffsetDateTime>,
        by: &str,
    ) -> Result<(Restriction, ManualRestriction), StoreError> {
        let now = self.clock.now();
        let compiled = self.current.load_full();
        let policy = &compiled.policies.settings(compiled.policies.select(account)).name;
        // A release or an expiry between the two steps leaves nothing to replace, and a
        // restriction made between them leaves something: a few rounds settle it.
        for _ in 0..3 {
            let restriction =
                Restriction::by_admin(account, reason, policy, now.datetime(), until, self.counters(account));
            let event = Event::restricted(&restriction, None, &compiled.config.notify.node_name, Some(by));
            if self.restrictions.restrict(restriction.clone(), by, Some(&event))? {
                self.metrics.restricted("manual");
                if let Some(domain) = account.strip_prefix('@') {
                    self.metrics.domain_restricted(domain);
                }
                warn!(account, by, reason, "account restricted by an administrator");
                self.events.emit(event);
                let current = self.restrictions.get(account, now.secs()).unwrap_or(restriction);
                return Ok((current, ManualRestriction::Created));
            }
            if let Some((before, after)) = self.restrictions.replace(account, reason, until, now.secs(), by)? {
                warn!(account, by, reason, was = before.reason, "restriction replaced by an administrator");
                return Ok((after, ManualRestriction::Replaced));
            }
        }
        Err(StoreError::Io(std::io::Error::other(format!(
            "the restriction of {account} kept changing while it was being replaced"
        ))))
    }
}
