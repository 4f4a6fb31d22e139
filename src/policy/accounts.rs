//! The account table: every tracked account's [`AccountRecord`], keyed by its canonical name.
//! It owns its map; the engine, the admin reads, the snapshot and cluster mode go through it.
//!
//! Account names are inline strings: up to 24 bytes (nearly every address) live in the map's
//! bucket itself, so a lookup compares without following a pointer and a new account costs no
//! separate allocation. Memory follows the accounts active within the last day:
//! [`AccountTable::evict_idle`] drops the records with nothing left to remember.

use compact_str::CompactString;
use dashmap::DashMap;
use dashmap::mapref::multiple::RefMulti;
use dashmap::mapref::one::RefMut;

use super::clock::Timestamp;
use super::limits;
use super::record::AccountRecord;
use super::rules::{CompiledPolicies, PolicyIndex};

/// Every tracked account's record.
#[derive(Default)]
pub struct AccountTable {
    map: DashMap<CompactString, AccountRecord, ahash::RandomState>,
}

impl AccountTable {
    /// The account's record, created under `policy` if it is new; held locked until dropped.
    // Not #[inline]: one copy with dashmap's lookup inlined into it costs fewer instructions than
    // a copy at each caller calling the lookup out of line (58 per decision, callgrind).
    pub fn record_mut(&self, account: &str, policy: PolicyIndex) -> RefMut<'_, CompactString, AccountRecord> {
        match self.map.get_mut(account) {
            Some(r) => r,
            None => self.insert(account, policy),
        }
    }

    /// A new account's record; only a new account pays for the key's allocation. Cold and
    /// apart, so that `record_mut`, which nearly every call leaves at the lookup, stays small
    /// (10 instructions per decision, callgrind).
    #[cold]
    fn insert(&self, account: &str, policy: PolicyIndex) -> RefMut<'_, CompactString, AccountRecord> {
        self.map.entry(account.into()).or_insert_with(|| AccountRecord { policy, ..Default::default() })
    }

    /// A copy of the account's record, if it is tracked.
    pub fn get(&self, account: &str) -> Option<AccountRecord> {
        self.map.get(account).map(|r| r.clone())
    }

    /// Accounts tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every tracked account with its record, locked a shard at a time.
    pub fn iter(&self) -> impl Iterator<Item = RefMulti<'_, CompactString, AccountRecord>> + '_ {
        self.map.iter()
    }

    /// Every tracked account's record, copied (for the snapshot).
    pub fn records(&self) -> impl Iterator<Item = (String, AccountRecord)> + '_ {
        self.map.iter().map(|e| (e.key().to_string(), e.value().clone()))
    }

    /// Puts back records from a snapshot, each under the policy `select` gives its account now;
    /// records with nothing left to remember at `now` are left out. Returns how many.
    pub fn restore(
        &self,
        records: Vec<(CompactString, AccountRecord)>,
        select: impl Fn(&str) -> PolicyIndex,
        now: Timestamp,
    ) -> usize {
        let mut restored = 0;
        for (account, mut record) in records {
            record.policy = select(&account);
            if !record.is_idle(now) {
                self.map.insert(account, record);
                restored += 1;
            }
        }
        restored
    }

    /// After a reload: each account keeps the recipients it has in use, re-expressed against
    /// the limits of the policy it has under `new`.
    pub fn convert_for_reload(&self, old: &CompiledPolicies, new: &CompiledPolicies, now: Timestamp) {
        for mut entry in self.map.iter_mut() {
            let index = new.select(entry.key());
            let old_settings = old.settings(entry.policy);
            limits::convert_for_reload(entry.value_mut(), old_settings, new.settings(index), index, now);
        }
    }

    /// Drops the records with nothing left to remember; returns how many were dropped.
    pub fn evict_idle(&self, now: Timestamp) -> usize {
        let before = self.map.len();
        self.map.retain(|_, r| !r.is_idle(now));
        self.map.shrink_to_fit();
        before - self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::config::builtin_default_policy;
    use crate::policy::clock::EngineClock;
    use crate::policy::limits::{LimitKind, Limiters};

    #[test]
    fn idle_records_are_evicted() {
        let mut settings = builtin_default_policy();
        settings.recipient_limit_external_per_hour = 10;
        let limiters = Limiters::new(&[settings]);
        let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1_795_300_000));
        let table = AccountTable::default();
        let mut busy = table.record_mut("busy@example.com", 0);
        limiters.try_add_recipient(0, &mut busy, LimitKind::ExternalPerHour, clock.now()).unwrap();
        drop(busy);
        drop(table.record_mut("idle@example.com", 0));
        assert_eq!(table.evict_idle(clock.now()), 1);
        assert!(table.get("busy@example.com").is_some());
        clock.advance(Duration::from_secs(86_400));
        assert_eq!(table.evict_idle(clock.now()), 1);
        assert!(table.is_empty());
    }
}
