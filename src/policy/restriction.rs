//! Restrictions as the policy knows them: which accounts may not send outbound mail, why,
//! since and until when; their audit trail; and [`RestrictionStore`], the trait the storage
//! behind them implements (in memory, the durable journal, shared through Redis — see
//! `crate::state` and `crate::cluster`). The MAIL FROM check ([`RestrictionStore::is_restricted`])
//! is the hot path: one map lookup, no clone; a restriction past its `until` no longer counts.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::events::Event;
use super::limits::LimitKind;

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
    /// Made until released because the account was restricted by the policy again within its
    /// `escalate_window` (`escalate_after`); recorded as `escalated` in the history. Left out
    /// of the JSON when false, so records written before it read back unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
}

impl Restriction {
    /// A policy restriction of `account` made at `at` (Unix seconds) until `until`, for the
    /// stores' tests.
    #[cfg(test)]
    pub(crate) fn for_test(account: &str, reason: &str, at: i64, until: Option<i64>) -> Restriction {
        let at = OffsetDateTime::from_unix_timestamp(at).expect("a valid time");
        let until = until.map(|u| OffsetDateTime::from_unix_timestamp(u).expect("a valid time"));
        Restriction::by_policy(account, reason, "default", at, until, Counters::default(), "")
    }

    /// A restriction the policy makes: `cause` is what led to it, as the metrics label it (a
    /// limit's key, `spam` or `bounces`, see [`Restriction::cause`]).
    pub fn by_policy(
        account: &str,
        reason: &str,
        policy: &str,
        at: OffsetDateTime,
        until: Option<OffsetDateTime>,
        counters: Counters,
        cause: &str,
    ) -> Restriction {
        Restriction {
            account: account.to_owned(),
            reason: reason.to_owned(),
            policy: policy.to_owned(),
            created_at: at,
            until,
            counters,
            source: Source::Policy,
            cause: cause.to_owned(),
            escalated: false,
        }
    }

    /// A restriction an administrator makes.
    pub fn by_admin(
        account: &str,
        reason: &str,
        policy: &str,
        at: OffsetDateTime,
        until: Option<OffsetDateTime>,
        counters: Counters,
    ) -> Restriction {
        Restriction {
            source: Source::Admin,
            ..Restriction::by_policy(account, reason, policy, at, until, counters, "manual")
        }
    }

    /// What led to it, as one of the metrics' reasons: a limit's key (from
    /// [`LimitKind::key`]), `spam`, `bounces`, `login_spread` or `manual`; for records written before the cause was kept,
    /// what the source tells (`manual` or `policy`).
    pub fn cause(&self) -> &'static str {
        let limits = LimitKind::ALL.map(LimitKind::key);
        limits.into_iter().chain(["spam", "bounces", "login_spread", "manual"]).find(|c| *c == self.cause).unwrap_or(
            match self.source {
                Source::Admin => "manual",
                Source::Policy => "policy",
            },
        )
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
    /// `restricted`, `escalated`, `replaced` or `released`.
    pub action: AuditAction,
    pub reason: String,
    /// `policy` for the filter itself, otherwise the administrator's name.
    pub by: String,
    pub policy: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    pub counters: Option<Counters>,
    /// Who made a restriction that began here (the policy or an administrator); `None` for
    /// the other actions and in entries written before it was kept (see
    /// [`AuditEntry::is_policy_restriction`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
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
    /// A restriction by the policy that began until released because it was a repeat within
    /// `escalate_window`: a restriction start like `Restricted`.
    Escalated,
    /// An administrator gave a restriction in force a new reason and `until`.
    Replaced,
    Released,
}

impl AuditEntry {
    /// The entry for a new restriction: `escalated` when the policy made it until released as
    /// a repeat offence.
    pub fn restricted(r: &Restriction, by: &str) -> AuditEntry {
        AuditEntry {
            account: r.account.clone(),
            at: r.created_at,
            action: if r.escalated { AuditAction::Escalated } else { AuditAction::Restricted },
            reason: r.reason.clone(),
            by: by.to_owned(),
            policy: Some(r.policy.clone()),
            until: r.until,
            counters: Some(r.counters.clone()),
            source: Some(r.source),
            notice: None,
        }
    }

    /// The entry for a restriction given a new reason and `until` (`r` as it is now).
    pub fn replaced(r: &Restriction, at: OffsetDateTime, by: &str) -> AuditEntry {
        AuditEntry { at, action: AuditAction::Replaced, source: None, ..AuditEntry::restricted(r, by) }
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
            source: None,
            notice: None,
        }
    }

    /// Whether a restriction began here (`restricted` or `escalated`).
    pub fn starts_restriction(&self) -> bool {
        matches!(self.action, AuditAction::Restricted | AuditAction::Escalated)
    }

    /// Whether a restriction by the policy began here (not one an administrator made). An
    /// entry written before the source was kept tells it by who acted: the policy on this
    /// node (`policy`) or on another (`policy (on node)`).
    pub fn is_policy_restriction(&self) -> bool {
        self.starts_restriction()
            && match self.source {
                Some(source) => source == Source::Policy,
                None => self.by == "policy" || self.by.starts_with("policy (on "),
            }
    }

    /// The entry with the notification its change raised.
    #[must_use]
    pub fn announcing(mut self, notice: Option<&Event>) -> AuditEntry {
        self.notice = notice.cloned();
        self
    }
}

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
    /// Gives the restriction in force on `account` a new reason and `until` (when and why it
    /// began, its policy and source stay), recorded in its history as `replaced` by `by` at
    /// `now_secs`. Returns the restriction as it was and as it is now; `None`, recording
    /// nothing, when none is in force.
    ///
    /// # Errors
    /// When it cannot be recorded (durable stores).
    fn replace(
        &self,
        account: &str,
        reason: &str,
        until: Option<OffsetDateTime>,
        now_secs: i64,
        by: &str,
    ) -> Result<Option<(Restriction, Restriction)>, StoreError>;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn restriction(account: &str, at: i64, until: Option<i64>) -> Restriction {
        Restriction::for_test(account, "test", at, until)
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
        for cause in ["spam", "bounces", "login_spread"] {
            r.cause = cause.into();
            assert_eq!(r.cause(), cause);
        }
        // Written without the field (an older journal), read back with it empty.
        let mut json = serde_json::to_value(restriction("b@example.com", 0, None)).unwrap();
        json.as_object_mut().unwrap().remove("cause");
        let old: Restriction = serde_json::from_value(json).unwrap();
        assert_eq!(old.cause, "");
    }
}
