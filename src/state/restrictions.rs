//! Restrictions: which accounts may not send outbound mail, why, since and until when.
//!
//! Behind a small trait so the in-memory map used here can be joined by a durable journal and
//! a Redis-backed store. The MAIL FROM check ([`RestrictionStore::is_restricted`]) is the hot
//! path: one map lookup, no clone; a restriction past its `until` no longer counts.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::policy::events::Event;
use crate::policy::limits::LimitKind;

/// Counters of an account at one moment, with the limits they are measured against
/// (a limit of 0 = none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub external_last_hour: u32,
    pub external_limit_per_hour: u32,
    pub internal_last_hour: u32,
    pub internal_limit_per_hour: u32,
    pub last_day: u32,
    pub limit_per_day: u32,
    pub spam_messages: u32,
    pub messages: u32,
}

/// Who restricted the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Policy,
    Admin,
}

/// An account's state "may not send outbound mail".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    pub account: String,
    pub reason: String,
    pub policy: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// `None`: until an administrator releases it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    pub counters: Counters,
    pub source: Source,
    /// What led to it, as the metrics label it: a limit's key (`recipient_limit_per_day` …),
    /// `spam` or `manual`. Empty in records written before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause: String,
}

impl Restriction {
    /// What led to it, as one of the metrics' reasons: a limit's key (from
    /// [`LimitKind::key`]), `spam` or `manual`; for records written before the cause was kept,
    /// what the source tells (`manual` or `policy`).
    pub fn cause(&self) -> &'static str {
        let limits = LimitKind::ALL.map(LimitKind::key);
        limits.into_iter().chain(["spam", "manual"]).find(|c| *c == self.cause).unwrap_or(match self.source {
            Source::Admin => "manual",
            Source::Policy => "policy",
        })
    }

    /// Whether it is in force at `now` (seconds since the epoch).
    pub fn in_force(&self, now_secs: i64) -> bool {
        self.until.is_none_or(|u| u.unix_timestamp() > now_secs)
    }
}

/// One line of an account's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub account: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `restricted` or `released`.
    pub action: AuditAction,
    pub reason: String,
    /// `policy` for the filter itself, otherwise the administrator's name.
    pub by: String,
    pub policy: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    pub counters: Option<Counters>,
    /// The notification this change raised, for a restriction or release made on this node:
    /// written with the change, so that a notice lost before it reached the spool is raised
    /// again at the next start. Only in the durable trail, not in the API's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<Event>,
}

/// What an audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditAction {
    Restricted,
    Released,
}

impl AuditEntry {
    /// The entry for a new restriction.
    pub fn restricted(r: &Restriction, by: &str) -> AuditEntry {
        AuditEntry {
            account: r.account.clone(),
            at: r.created_at,
            action: AuditAction::Restricted,
            reason: r.reason.clone(),
            by: by.to_owned(),
            policy: Some(r.policy.clone()),
            until: r.until,
            counters: Some(r.counters.clone()),
            notice: None,
        }
    }

    /// The entry for a release.
    pub fn released(account: &str, at: OffsetDateTime, by: &str, reason: &str) -> AuditEntry {
        AuditEntry {
            account: account.to_owned(),
            at,
            action: AuditAction::Released,
            reason: reason.to_owned(),
            by: by.to_owned(),
            policy: None,
            until: None,
            counters: None,
            notice: None,
        }
    }

    /// The entry with the notification its change raised.
    #[must_use]
    pub fn announcing(mut self, notice: Option<&Event>) -> AuditEntry {
        self.notice = notice.cloned();
        self
    }
}

/// Audit entries kept in memory per account (the file keeps them all).
pub const HISTORY_PER_ACCOUNT: usize = 100;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("restrictions store: {0}")]
    Io(#[from] std::io::Error),
    /// Another process holds the state directory: two filters writing one journal would each
    /// replace the other's file and lose what it recorded.
    #[error("state directory {dir} is in use by another outbound-guard ({holder}); one filter per state.dir")]
    InUse { dir: String, holder: String },
}

/// Where restrictions live.
pub trait RestrictionStore: Send + Sync {
    /// Whether `account` is restricted at `now_secs`.
    fn is_restricted(&self, account: &str, now_secs: i64) -> bool;
    /// The restriction in force, if any.
    fn get(&self, account: &str, now_secs: i64) -> Option<Restriction>;
    /// Records a restriction; an account already restricted keeps its first restriction.
    /// Returns whether it is new. `notice` is the event announcing it, recorded with it by a
    /// durable store (see [`AuditEntry::notice`]); `None` for a change another node made.
    ///
    /// # Errors
    /// When it cannot be recorded (durable stores).
    fn restrict(&self, restriction: Restriction, by: &str, notice: Option<&Event>) -> Result<bool, StoreError>;
    /// Lifts a restriction; returns it when there was one in force. `notice` as for
    /// [`RestrictionStore::restrict`].
    ///
    /// # Errors
    /// When the release cannot be recorded (durable stores).
    fn release(
        &self,
        account: &str,
        now_secs: i64,
        by: &str,
        reason: &str,
        notice: Option<&Event>,
    ) -> Result<Option<Restriction>, StoreError>;
    /// Every restriction in force, oldest first.
    fn list(&self, now_secs: i64) -> Vec<Restriction>;
    /// The account's audit trail, oldest first.
    fn history(&self, account: &str) -> Vec<AuditEntry>;
    /// Resolves once the restrictions and releases recorded so far have reached the other
    /// nodes, or that could not be done in time (cluster mode); at once for a local store. The
    /// admin API awaits it so that "released" means released everywhere.
    fn settled(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

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

    /// The newest audit entry of every account with a trail (cluster mode's view of what this
    /// node last did or learnt about each account, when it starts).
    pub fn latest_audit(&self) -> Vec<AuditEntry> {
        self.history.iter().filter_map(|h| h.last().cloned()).collect()
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
        let now = restriction.created_at.unix_timestamp();
        let entry = AuditEntry::restricted(&restriction, by);
        let created = match self.map.entry(restriction.account.clone().into_boxed_str()) {
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
        };
        if created {
            self.remember(entry);
        }
        Ok(created)
    }

    fn release(
        &self,
        account: &str,
        now_secs: i64,
        by: &str,
        reason: &str,
        _notice: Option<&Event>,
    ) -> Result<Option<Restriction>, StoreError> {
        let removed = self.map.remove(account).map(|(_, r)| r);
        if removed.is_some() {
            self.entries.fetch_sub(1, Ordering::Release);
        }
        let released = removed.filter(|r| r.in_force(now_secs));
        if released.is_some() {
            let at = OffsetDateTime::from_unix_timestamp(now_secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            self.remember(AuditEntry::released(account, at, by, reason));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn restriction(account: &str, at: i64, until: Option<i64>) -> Restriction {
        Restriction {
            account: account.into(),
            reason: "test".into(),
            policy: "default".into(),
            created_at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            until: until.map(|u| OffsetDateTime::from_unix_timestamp(u).unwrap()),
            counters: Counters::default(),
            source: Source::Policy,
            cause: String::new(),
        }
    }

    #[test]
    fn every_limit_is_a_cause_and_old_records_fall_back_on_their_source() {
        let mut r = restriction("a@example.com", 0, None);
        assert_eq!(r.cause(), "policy");
        r.source = Source::Admin;
        assert_eq!(r.cause(), "manual");
        for kind in LimitKind::ALL {
            r.cause = kind.key().into();
            assert_eq!(r.cause(), kind.key());
        }
        r.cause = "spam".into();
        assert_eq!(r.cause(), "spam");
        // Written without the field (an older journal), read back with it empty.
        let mut json = serde_json::to_value(restriction("b@example.com", 0, None)).unwrap();
        json.as_object_mut().unwrap().remove("cause");
        let old: Restriction = serde_json::from_value(json).unwrap();
        assert_eq!(old.cause, "");
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
