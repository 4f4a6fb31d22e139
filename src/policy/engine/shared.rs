//! The engine's side of cluster mode (`crate::cluster`): what a transaction spent, the GCRA
//! intervals it was measured with, and merging other nodes' state into the local records.
//!
//! Kept out of the decisions on purpose: with the memory backend nothing here is called, and
//! the decisions themselves stay synchronous and local — cluster mode only moves the local
//! records closer to what every node together has spent.

use super::super::clock::Timestamp;
use super::super::limits::LimitKind;
use super::{Engine, Transaction};

/// Share of a limit in use from which an account is near it ([`Engine::near_limit`]), percent.
const NEAR_PERCENT: u64 = 80;
/// Recipients left under a limit at or below which an account is near it, whatever the share.
const NEAR_LEFT: u32 = 10;

impl Transaction {
    /// The account of the transaction, once MAIL FROM named one (also when it was refused).
    pub fn account(&self) -> Option<&str> {
        Some(self.account.as_str()).filter(|a| !a.is_empty())
    }

    /// For a local submission, the same message as counted under the aggregate account
    /// (`organization.local_submission_account`).
    pub fn aggregate(&self) -> Option<&Transaction> {
        self.aggregate.as_deref()
    }

    /// The same recipients as counted under each `[[policy.domain]]` cap of the account's
    /// domain (their accounts are `@domain`).
    pub fn domains(&self) -> &[Transaction] {
        &self.domains
    }

    /// The account turned out restricted (another node restricted it) after MAIL FROM let it
    /// go on: whether its policy's `always_allowed_recipients` still let the transaction go
    /// on, for those recipients only (the transaction is then treated as restricted).
    pub fn continue_restricted(&mut self) -> bool {
        let Some(compiled) = &self.compiled else { return false };
        if compiled.policies.settings(self.policy).always_allowed_recipients.is_empty() {
            return false;
        }
        self.restricted = true;
        true
    }

    /// The `i`-th domain cap's domain turned out restricted (on another node) after MAIL FROM
    /// let the account go on: as [`Transaction::continue_restricted`], and that cap then counts
    /// the always-allowed recipients only, where it has room.
    pub fn continue_restricted_in_domain(&mut self, i: usize) -> bool {
        if !self.continue_restricted() {
            return false;
        }
        if let Some(sub) = self.domains.get_mut(i) {
            sub.restricted = true;
        }
        true
    }

    /// Whether MAIL FROM let an outbound account go on (its recipients are counted).
    pub fn is_counted(&self) -> bool {
        self.compiled.is_some()
    }

    /// Recipients counted in this transaction per [`LimitKind`].
    pub fn counted(&self) -> [u32; 3] {
        self.counted
    }

    /// Whether the end of message delivered the message, so that its recipients count (and are
    /// shared); otherwise they are given back when the transaction ends.
    pub fn is_committed(&self) -> bool {
        self.committed
    }

    /// The GCRA emission interval (nanoseconds per recipient) of each [`LimitKind`] under the
    /// transaction's policy; 0 where the policy has no such limit.
    pub fn intervals(&self) -> [u64; 3] {
        let Some(compiled) = &self.compiled else { return [0; 3] };
        let settings = compiled.policies.settings(self.policy);
        LimitKind::ALL.map(|kind| match kind.limit_in(settings) {
            0 => 0,
            limit => (kind.period().as_nanos() as u64 / u64::from(limit)).max(1),
        })
    }
}

impl Engine {
    /// Raises the transaction's account's GCRA state to what the cluster has spent: each TAT
    /// becomes the later of the local and the shared one (never a sum, so a node's own spending,
    /// already in both, is not counted twice).
    pub fn merge_shared_tats(&self, tx: &Transaction, shared: [u64; 3]) {
        if shared.iter().all(|&t| t == 0) || !tx.is_counted() {
            return;
        }
        let mut record = self.accounts.record_mut(&tx.account, tx.policy);
        for (local, shared) in record.tat.iter_mut().zip(shared) {
            *local = (*local).max(shared);
        }
    }

    /// Whether the account's local record is near one of its limits at `now`: 80 % or more of
    /// it used, or at most [`NEAR_LEFT`] recipients left. Cluster mode reads the shared state
    /// for such an account at every message (`ClusterPolicy`): there what other nodes spent a
    /// moment ago can decide; further from every limit it cannot, and a recent read stands.
    pub fn near_limit(&self, tx: &Transaction, now: Timestamp) -> bool {
        let Some(compiled) = &tx.compiled else { return false };
        let record = self.accounts.record_mut(&tx.account, tx.policy);
        LimitKind::ALL.into_iter().any(|kind| match compiled.limiters.usage(tx.policy, &record, kind, now) {
            Some((used, limit)) => {
                u64::from(used) * 100 >= u64::from(limit) * NEAR_PERCENT || limit.saturating_sub(used) <= NEAR_LEFT
            }
            None => false,
        })
    }

    /// Another node's administrator released `account`: the day's grace applies here too.
    pub fn note_released_elsewhere(&self, account: &str) {
        let now = self.clock.now();
        self.accounts.record_mut(account, self.current.load().policies.select(account)).set_released(now.utc_day());
    }

    /// Every tracked account whose limits are still in use at `now`, with its TATs — what a node
    /// pushes to the cluster after being apart from it.
    pub fn tats_in_use(&self) -> Vec<(String, [u64; 3])> {
        let now = self.clock.now();
        self.accounts
            .iter()
            .filter(|e| e.tat.iter().any(|&t| t > now.nanos()))
            .map(|e| (e.key().to_string(), e.tat))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::policy::clock::EngineClock;
    use crate::policy::engine::{Engine, Transaction};
    use crate::policy::events::EventSink;
    use crate::policy::{Decision, MailFacts, Policy, RcptFacts};
    use crate::state::memory::MemoryRestrictions;

    fn engine(limit: u32) -> Engine {
        let policy = format!(
            "[organization]\nlocal_domains = [\"example.com\"]\n\
             [policy.default]\nrecipient_limit_external_per_hour = {limit}\n"
        );
        let config = Arc::new(Config::parse(&Path::new(".").join("plugin.toml"), &policy).unwrap());
        let (sink, _events) = EventSink::channel(64);
        let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1_795_300_000));
        Engine::new(config, Arc::new(MemoryRestrictions::default()), sink, clock, Arc::new(Metrics::new()))
    }

    /// After `used` external recipients of one account: whether its next MAIL FROM is near a limit.
    fn near_after(limit: u32, used: u32) -> bool {
        let engine = engine(limit);
        let facts = MailFacts {
            sender: b"fay@example.com",
            auth_login: Some(b"fay@example.com"),
            client_addr: None,
            queue_id: None,
            local_submission: false,
        };
        let mut tx = Transaction::default();
        assert_eq!(engine.mail_from(&mut tx, &facts), Decision::Continue);
        for i in 0..used {
            let recipient = format!("r{i}@example.net");
            assert_eq!(engine.rcpt_to(&mut tx, &RcptFacts { recipient: recipient.as_bytes() }), Decision::Continue);
        }
        engine.near_limit(&tx, engine.clock().now())
    }

    #[test]
    fn near_a_limit_is_80_percent_used_or_10_recipients_left() {
        assert!(!near_after(100, 79));
        assert!(near_after(100, 80), "80 % used");
        assert!(!near_after(20, 9));
        assert!(near_after(20, 10), "10 left");
        assert!(near_after(4, 0), "a limit of 10 or less is always near");
    }
}
