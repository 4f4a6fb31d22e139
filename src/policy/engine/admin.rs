//! What the administration (HTTP API, CLI, web page) reads and changes through the engine:
//! an account's live counters and policy, the busiest accounts, a release, a manual
//! restriction. Each change is recorded with the event that announces it (see
//! `policy::events`) before the caller hears of it.

use time::OffsetDateTime;
use tracing::{info, warn};

use super::Engine;
use crate::policy::account::canonical;
use crate::policy::events::Event;
use crate::policy::restriction::{Counters, Restriction, StoreError};

/// An account's live counters as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SenderInfo {
    pub account: String,
    pub policy: String,
    pub counters: Counters,
    pub restricted: bool,
}

impl Engine {
    /// The canonical form of an account name as an administrator typed it.
    pub fn canonical_account(&self, raw: &str) -> Option<String> {
        let strip = self.current.load().config.organization.strip_subaddress;
        canonical(raw.as_bytes(), strip).map(|c| c.into_owned())
    }

    /// Live counters of an account (zeros for one not seen recently).
    pub fn counters(&self, account: &str) -> Counters {
        let compiled = self.current.load();
        let policy = compiled.policies.select(account);
        let record = self.accounts.get(account).unwrap_or_default();
        compiled.counters_of(policy, &record, self.clock.now())
    }

    /// The name of the policy that applies to an account.
    pub fn policy_name(&self, account: &str) -> String {
        let compiled = self.current.load();
        compiled.policies.settings(compiled.policies.select(account)).name.clone()
    }

    /// Live counters of one account, if it is tracked or restricted.
    pub fn sender(&self, account: &str) -> Option<SenderInfo> {
        let compiled = self.current.load();
        let now = self.clock.now();
        let restriction = self.restrictions.get(account, self.clock.now().secs());
        let record = self.accounts.get(account);
        if record.is_none() && restriction.is_none() {
            return None;
        }
        let policy = compiled.policies.select(account);
        Some(SenderInfo {
            account: account.to_owned(),
            policy: compiled.policies.settings(policy).name.clone(),
            counters: compiled.counters_of(policy, &record.unwrap_or_default(), now),
            restricted: restriction.is_some(),
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
        let now = self.clock.now();
        let compiled = self.current.load_full();
        let policy = &compiled.policies.settings(compiled.policies.select(account)).name;
        let restriction = Restriction::by_admin(account, reason, policy, now.datetime(), until, self.counters(account));
        let event = Event::restricted(&restriction, None, &compiled.config.notify.node_name, Some(by));
        let created = self.restrictions.restrict(restriction.clone(), by, Some(&event))?;
        if created {
            self.metrics.restricted("manual");
            warn!(account, by, reason, "account restricted by an administrator");
            self.events.emit(event);
        }
        let current = self.restrictions.get(account, now.secs()).unwrap_or(restriction);
        Ok((current, created))
    }
}
