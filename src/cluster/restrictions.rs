//! The restrictions store of cluster mode: the durable store (journal, audit log, the local
//! copy MAIL FROM reads) plus sharing every restrict and release with the other nodes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Cluster;
use crate::policy::events::Event;
use crate::policy::restriction::{AuditEntry, Restriction, RestrictionStore, StoreError};
use crate::state::durable::DurableRestrictions;

/// [`DurableRestrictions`] shared through the [`Cluster`].
pub struct ClusterRestrictions {
    durable: Arc<DurableRestrictions>,
    cluster: Arc<Cluster>,
}

impl ClusterRestrictions {
    pub fn new(durable: Arc<DurableRestrictions>, cluster: Arc<Cluster>) -> ClusterRestrictions {
        ClusterRestrictions { durable, cluster }
    }
}

impl RestrictionStore for ClusterRestrictions {
    fn is_restricted(&self, account: &str, now_secs: i64) -> bool {
        self.durable.is_restricted(account, now_secs)
    }

    fn get(&self, account: &str, now_secs: i64) -> Option<Restriction> {
        self.durable.get(account, now_secs)
    }

    /// On disk first (the MTA hears 5xx only after that), then shared in the background.
    fn restrict(&self, restriction: Restriction, by: &str, notice: Option<&Event>) -> Result<bool, StoreError> {
        self.cluster.restrict_local(restriction, by, notice)
    }

    fn replace(
        &self,
        account: &str,
        reason: &str,
        until: Option<time::OffsetDateTime>,
        now_secs: i64,
        by: &str,
    ) -> Result<Option<(Restriction, Restriction)>, StoreError> {
        self.cluster.replace_local(account, reason, until, now_secs, by)
    }

    fn release(
        &self,
        account: &str,
        now_secs: i64,
        by: &str,
        reason: &str,
        notice: Option<&Event>,
    ) -> Result<Option<Restriction>, StoreError> {
        self.cluster.release_local(account, now_secs, by, reason, notice)
    }

    fn list(&self, now_secs: i64) -> Vec<Restriction> {
        self.durable.list(now_secs)
    }

    fn history(&self, account: &str) -> Vec<AuditEntry> {
        self.durable.history(account)
    }

    fn settled(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.cluster.settled())
    }
}
