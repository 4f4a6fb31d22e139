//! When this node last read each account's shared state from Redis, so that MAIL FROM can
//! skip a read that cannot change the decision ([`super::ClusterPolicy`] says when).
//!
//! Only reads younger than [`FRESH_FOR`] matter, so the table holds only the accounts read
//! within about the last two seconds: the link prunes it at every health check. It costs
//! nothing per resident account, only per account active right now.

use std::time::Duration;

use compact_str::CompactString;
use dashmap::DashMap;

/// How long a read stands in for the next ones: a restriction made on another node reaches this
/// node by the broadcast within milliseconds, and by a read within this bound at the latest
/// (the specification's bound is 1 s).
pub const FRESH_FOR: Duration = Duration::from_millis(900);

/// The time (engine clock, nanoseconds) of each account's last read.
#[derive(Default)]
pub(crate) struct ReadTimes {
    map: DashMap<CompactString, u64, ahash::RandomState>,
}

impl ReadTimes {
    /// Whether `account` was read less than [`FRESH_FOR`] before `now_ns`.
    pub fn is_fresh(&self, account: &str, now_ns: u64) -> bool {
        self.map.get(account).is_some_and(|at| now_ns.saturating_sub(*at) < FRESH_FOR.as_nanos() as u64)
    }

    /// `account` was read at `at_ns` (when the read was sent: what it brought is at least as new).
    pub fn note(&self, account: &str, at_ns: u64) {
        match self.map.get_mut(account) {
            Some(mut t) => *t = (*t).max(at_ns),
            None => {
                self.map.insert(account.into(), at_ns);
            }
        }
    }

    /// Drops the reads that no longer stand in for anything.
    pub fn prune(&self, now_ns: u64) {
        let fresh_for = FRESH_FOR.as_nanos() as u64;
        self.map.retain(|_, at| now_ns.saturating_sub(*at) < fresh_for);
    }

    /// Forgets every read: after the link went down or a write failed the shared state may
    /// differ from what was read, so the next message of every account reads again.
    pub fn clear(&self) {
        self.map.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_read_stands_in_for_fresh_for_then_is_pruned() {
        let reads = ReadTimes::default();
        assert!(!reads.is_fresh("a@example.com", 0), "never read is not fresh");
        reads.note("a@example.com", 1000 * MS);
        assert!(reads.is_fresh("a@example.com", 1000 * MS + 899 * MS));
        assert!(!reads.is_fresh("a@example.com", 1000 * MS + 900 * MS));
        // An older read noted late does not make the account look staler.
        reads.note("a@example.com", 500 * MS);
        assert!(reads.is_fresh("a@example.com", 1000 * MS + 899 * MS));
        reads.note("b@example.com", 1500 * MS);
        reads.prune(1000 * MS + 900 * MS);
        assert_eq!(reads.len(), 1, "only the read still fresh is kept");
        assert!(reads.is_fresh("b@example.com", 1600 * MS));
        reads.clear();
        assert!(!reads.is_fresh("b@example.com", 1600 * MS));
    }
}
