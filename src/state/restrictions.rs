//! Restrictions: which accounts may not send outbound mail, why, since and until when.
//!
//! Behind a small trait so the in-memory map used here can be joined by a durable journal and
//! a Redis-backed store. The MAIL FROM check ([`RestrictionStore::is_restricted`]) is the hot
//! path: one map lookup, no clone; a restriction past its `until` no longer counts.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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
}

impl Restriction {
    /// Whether it is in force at `now` (seconds since the epoch).
    pub fn in_force(&self, now_secs: i64) -> bool {
        self.until.is_none_or(|u| u.unix_timestamp() > now_secs)
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("restrictions store: {0}")]
    Io(#[from] std::io::Error),
}

/// Where restrictions live.
pub trait RestrictionStore: Send + Sync {
    /// Whether `account` is restricted at `now_secs`.
    fn is_restricted(&self, account: &str, now_secs: i64) -> bool;
    /// The restriction in force, if any.
    fn get(&self, account: &str, now_secs: i64) -> Option<Restriction>;
    /// Records a restriction; an account already restricted keeps its first restriction.
    /// Returns whether it is new.
    ///
    /// # Errors
    /// When it cannot be recorded (durable stores).
    fn restrict(&self, restriction: Restriction) -> Result<bool, StoreError>;
    /// Lifts a restriction; returns it when there was one in force.
    ///
    /// # Errors
    /// When the release cannot be recorded (durable stores).
    fn release(&self, account: &str, now_secs: i64) -> Result<Option<Restriction>, StoreError>;
    /// Every restriction in force, oldest first.
    fn list(&self, now_secs: i64) -> Vec<Restriction>;
}

/// Restrictions in memory only.
#[derive(Debug, Default)]
pub struct MemoryRestrictions {
    map: DashMap<Box<str>, Restriction, ahash::RandomState>,
}

impl RestrictionStore for MemoryRestrictions {
    fn is_restricted(&self, account: &str, now_secs: i64) -> bool {
        self.map.get(account).is_some_and(|r| r.in_force(now_secs))
    }

    fn get(&self, account: &str, now_secs: i64) -> Option<Restriction> {
        self.map
            .get(account)
            .filter(|r| r.in_force(now_secs))
            .map(|r| r.clone())
    }

    fn restrict(&self, restriction: Restriction) -> Result<bool, StoreError> {
        let now = restriction.created_at.unix_timestamp();
        match self.map.entry(restriction.account.clone().into_boxed_str()) {
            Entry::Vacant(v) => {
                v.insert(restriction);
                Ok(true)
            }
            Entry::Occupied(o) if o.get().in_force(now) => Ok(false),
            Entry::Occupied(mut o) => {
                o.insert(restriction);
                Ok(true)
            }
        }
    }

    fn release(&self, account: &str, now_secs: i64) -> Result<Option<Restriction>, StoreError> {
        Ok(self
            .map
            .remove(account)
            .map(|(_, r)| r)
            .filter(|r| r.in_force(now_secs)))
    }

    fn list(&self, now_secs: i64) -> Vec<Restriction> {
        let mut all: Vec<Restriction> = self
            .map
            .iter()
            .filter(|r| r.in_force(now_secs))
            .map(|r| r.clone())
            .collect();
        all.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.account.cmp(&b.account))
        });
        all
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
        }
    }

    #[test]
    fn restrict_expire_and_release() {
        let s = MemoryRestrictions::default();
        assert!(s.restrict(restriction("a@x", 100, Some(200))).unwrap());
        assert!(
            !s.restrict(restriction("a@x", 150, None)).unwrap(),
            "the first restriction stays"
        );
        assert!(s.is_restricted("a@x", 199));
        assert!(!s.is_restricted("a@x", 200), "until is exclusive");
        assert!(
            s.restrict(restriction("a@x", 250, None)).unwrap(),
            "an expired one is replaced"
        );
        assert_eq!(s.list(300).len(), 1);
        assert!(s.release("a@x", 300).unwrap().is_some());
        assert!(!s.is_restricted("a@x", 300));
        assert!(s.release("a@x", 300).unwrap().is_none());
    }

    #[test]
    fn json_shape_has_rfc3339_times_and_null_until() {
        let json = serde_json::to_value(restriction("a@x", 0, None)).unwrap();
        assert_eq!(json["created_at"], "1970-01-01T00:00:00Z");
        assert!(json["until"].is_null());
        assert_eq!(json["source"], "policy");
    }
}
