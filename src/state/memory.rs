//! Restrictions in memory: the store used alone where nothing must outlive the process (tests,
//! benches), and the in-memory half of the durable store, which answers every lookup.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use time::OffsetDateTime;

use crate::policy::events::Event;
use crate::policy::restriction::{AuditEntry, Restriction, RestrictionStore, StoreError};

/// Audit entries kept in memory per account (the file keeps them all).
pub const HISTORY_PER_ACCOUNT: usize = 100;

/// Restrictions in memory only (and the in-memory half of the durable store).
#[derive(Debug, Default)]
pub struct MemoryRestrictions {
    map: DashMap<Box<str>, Restriction, ahash::RandomState>,
    /// How many entries `map` holds, kept beside it so that the check every outbound MAIL FROM
    /// makes costs one load while nothing is restricted — the usual state — rather than a hash
    /// and a shard lock. Raised before an entry appears and lowered after one has gone, so it
    /// never counts fewer entries than a reader could find.
    entries: AtomicUsize,
    history: DashMap<Box<str>, Vec<AuditEntry>, ahash::RandomState>,
}

impl MemoryRestrictions {
    /// Adds an entry to an account's in-memory trail, keeping the last [`HISTORY_PER_ACCOUNT`].
    pub fn remember(&self, entry: AuditEntry) {
        let mut list = self.history.entry(entry.account.clone().into_boxed_str()).or_default();
        if list.len() >= HISTORY_PER_ACCOUNT {
            list.remove(0);
        }
        list.push(entry);
    }

    /// Puts back a restriction read from a journal (its history comes from the audit log).
    pub fn insert_replayed(&self, restriction: Restriction) {
        match self.map.entry(restriction.account.clone().into_boxed_str()) {
            Entry::Vacant(v) => {
                self.entries.fetch_add(1, Ordering::Release);
                v.insert(restriction);
            }
            Entry::Occupied(mut o) => {
                o.insert(restriction);
            }
        }
    }

    /// Records a restriction unless one is in force (then it is kept); no history. Returns
    /// whether it was recorded.
    pub fn insert_new(&self, restriction: Restriction) -> bool {
        let now = restriction.created_at.unix_timestamp();
        match self.map.entry(restriction.account.clone().into_boxed_str()) {
            Entry::Vacant(v) => {
                self.entries.fetch_add(1, Ordering::Release);
                v.insert(restriction);
                true
            }
            Entry::Occupied(o) if o.get().in_force(now) => false,
            Entry::Occupied(mut o) => {
                o.insert(restriction);
                true
            }
        }
    }

    /// Removes an account's restriction; returns it if it was in force. No history.
    pub fn take(&self, account: &str, now_secs: i64) -> Option<Restriction> {
        let removed = self.map.remove(account).map(|(_, r)| r);
        if removed.is_some() {
            self.entries.fetch_sub(1, Ordering::Release);
        }
        removed.filter(|r| r.in_force(now_secs))
    }

    /// The restriction in force with its reason and `until` replaced, and the restriction as
    /// it was; `None` when none is in force. Nothing is changed: the caller records it first.
    pub fn replaced(
        &self,
        account: &str,
        reason: &str,
        until: Option<OffsetDateTime>,
        now_secs: i64,
    ) -> Option<(Restriction, Restriction)> {
        let before = self.get(account, now_secs)?;
        let after = Restriction { reason: reason.to_owned(), until, ..before.clone() };
        Some((before, after))
    }

    /// Whether `account` has a restriction in force (the check the durable store makes before
    /// writing anything).
    pub fn in_force(&self, account: &str, now_secs: i64) -> bool {
        self.is_restricted(account, now_secs)
    }
}

impl RestrictionStore for MemoryRestrictions {
    fn is_restricted(&self, account: &str, now_secs: i64) -> bool {
        if self.entries.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.map.get(account).is_some_and(|r| r.in_force(now_secs))
    }

    fn get(&self, account: &str, now_secs: i64) -> Option<Restriction> {
        self.map.get(account).filter(|r| r.in_force(now_secs)).map(|r| r.clone())
    }

    /// Memory keeps no notices: nothing of it outlives the process.
    fn restrict(&self, restriction: Restriction, by: &str, _notice: Option<&Event>) -> Result<bool, StoreError> {
        let entry = AuditEntry::restricted(&restriction, by);
        let created = self.insert_new(restriction);
        if created {
            self.remember(entry);
        }
        Ok(created)
    }

    fn replace(
        &self,
        account: &str,
        reason: &str,
        until: Option<OffsetDateTime>,
        now_secs: i64,
        by: &str,
    ) -> Result<Option<(Restriction, Restriction)>, StoreError> {
        let Some((before, after)) = self.replaced(account, reason, until, now_secs) else {
            return Ok(None);
        };
        self.remember(AuditEntry::replaced(&after, at(now_secs), by));
        self.insert_replayed(after.clone());
        Ok(Some((before, after)))
    }

    fn release(
        &self,
        account: &str,
        now_secs: i64,
        by: &str,
        reason: &str,
        _notice: Option<&Event>,
    ) -> Result<Option<Restriction>, StoreError> {
        let released = self.take(account, now_secs);
        if released.is_some() {
            self.remember(AuditEntry::released(account, at(now_secs), by, reason));
        }
        Ok(released)
    }

    fn list(&self, now_secs: i64) -> Vec<Restriction> {
        let mut all: Vec<Restriction> = self.map.iter().filter(|r| r.in_force(now_secs)).map(|r| r.clone()).collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.account.cmp(&b.account)));
        all
    }

    fn history(&self, account: &str) -> Vec<AuditEntry> {
        self.history.get(account).map(|h| h.clone()).unwrap_or_default()
    }
}

/// A time in Unix seconds as a date (the epoch for one out of range).
pub(crate) fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::restriction::AuditAction;

    fn restriction(account: &str, at: i64, until: Option<i64>) -> Restriction {
        Restriction::for_test(account, "test", at, until)
    }

    #[test]
    fn the_entry_count_follows_restrictions_releases_and_replays() {
        let s = MemoryRestrictions::default();
        assert!(!s.is_restricted("a@x", 100));
        s.insert_replayed(restriction("a@x", 100, None));
        s.insert_replayed(restriction("a@x", 101, None));
        assert!(s.restrict(restriction("b@x", 100, None), "policy", None).unwrap());
        assert!(s.restrict(restriction("c@x", 100, Some(150)), "policy", None).unwrap());
        assert!(s.release("b@x", 120, "admin", "ok", None).unwrap().is_some());
        // Expired, still removed: the count goes down with the entry, not with what was in force.
        assert!(s.release("c@x", 200, "admin", "ok", None).unwrap().is_none());
        assert!(s.release("nobody@x", 200, "admin", "ok", None).unwrap().is_none());
        assert!(s.is_restricted("a@x", 300), "one entry left, still found");
        assert_eq!(s.entries.load(Ordering::Acquire), 1);
        assert!(s.release("a@x", 300, "admin", "ok", None).unwrap().is_some());
        assert_eq!(s.entries.load(Ordering::Acquire), 0);
        assert!(s.restrict(restriction("a@x", 400, None), "policy", None).unwrap());
        assert!(s.is_restricted("a@x", 400));
    }

    #[test]
    fn restrict_expire_and_release() {
        let s = MemoryRestrictions::default();
        assert!(s.restrict(restriction("a@x", 100, Some(200)), "policy", None).unwrap());
        assert!(!s.restrict(restriction("a@x", 150, None), "policy", None).unwrap(), "the first restriction stays");
        assert!(s.is_restricted("a@x", 199));
        assert!(!s.is_restricted("a@x", 200), "until is exclusive");
        assert!(s.restrict(restriction("a@x", 250, None), "policy", None).unwrap(), "an expired one is replaced");
        assert_eq!(s.list(300).len(), 1);
        assert!(s.release("a@x", 300, "admin", "ok", None).unwrap().is_some());
        assert!(!s.is_restricted("a@x", 300));
        assert!(s.release("a@x", 300, "admin", "ok", None).unwrap().is_none());
        let actions: Vec<_> = s.history("a@x").iter().map(|e| e.action).collect();
        assert_eq!(actions, [AuditAction::Restricted, AuditAction::Restricted, AuditAction::Released]);
    }

    #[test]
    fn json_shape_has_rfc3339_times_and_null_until() {
        let json = serde_json::to_value(restriction("a@x", 0, None)).unwrap();
        assert_eq!(json["created_at"], "1970-01-01T00:00:00Z");
        assert!(json["until"].is_null());
        assert_eq!(json["source"], "policy");
    }
}
