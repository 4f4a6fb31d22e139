//! The engine as the milter sees it in cluster mode: the same decisions, plus the one read of
//! shared state after MAIL FROM ([`Policy::prepare`]) and the commit of what a transaction
//! spent when it ends.

use std::net::IpAddr;
use std::sync::Arc;

use tracing::info;

use super::Cluster;
use crate::policy::Needs;
use crate::policy::engine::{Engine, Transaction};
use crate::policy::{Decision, MailFacts, MessageFacts, MessageOutcome, Policy, RcptFacts, Refusal, ScanRequest};
use crate::verdict::Verdict;

/// [`Engine`] with its counters and restrictions shared through a [`Cluster`].
pub struct ClusterPolicy {
    engine: Arc<Engine>,
    cluster: Arc<Cluster>,
}

impl ClusterPolicy {
    pub fn new(engine: Arc<Engine>, cluster: Arc<Cluster>) -> ClusterPolicy {
        ClusterPolicy { engine, cluster }
    }
}

/// The engine's transaction, and the MAIL FROM facts of an account refused as restricted
/// here (to decide again should the cluster say it was released).
#[derive(Default)]
pub struct ClusterTransaction {
    inner: Transaction,
    refused: Option<RefusedMail>,
}

struct RefusedMail {
    sender: Vec<u8>,
    auth_login: Option<Vec<u8>>,
    client_addr: Option<IpAddr>,
    queue_id: Option<Vec<u8>>,
    local_submission: bool,
}

impl RefusedMail {
    fn facts(&self) -> MailFacts<'_> {
        MailFacts {
            sender: &self.sender,
            auth_login: self.auth_login.as_deref(),
            client_addr: self.client_addr,
            queue_id: self.queue_id.as_deref(),
            local_submission: self.local_submission,
        }
    }
}

impl Policy for ClusterPolicy {
    type Transaction = ClusterTransaction;

    fn needs(&self) -> Needs {
        self.engine.needs()
    }

    fn mail_from(&self, tx: &mut ClusterTransaction, facts: &MailFacts<'_>) -> Decision {
        tx.refused = None;
        let decision = self.engine.mail_from(&mut tx.inner, facts);
        if decision == Decision::Refuse(Refusal::AccountRestricted) && self.cluster.is_up() {
            tx.refused = Some(RefusedMail {
                sender: facts.sender.to_vec(),
                auth_login: facts.auth_login.map(<[u8]>::to_vec),
                client_addr: facts.client_addr,
                queue_id: facts.queue_id.map(<[u8]>::to_vec),
                local_submission: facts.local_submission,
            });
        }
        decision
    }

    fn prepares(&self, tx: &ClusterTransaction, decision: Decision) -> bool {
        let shared = match decision {
            // Decided here, not in `prepare`, when no read is needed: the session then answers
            // MAIL FROM at once, on its synchronous path, as with the memory backend.
            Decision::Continue if tx.inner.is_counted() => {
                let now = self.engine.clock().now();
                let reads = self.needs_read(&tx.inner, now)
                    || tx.inner.aggregate().is_some_and(|sub| self.needs_read(sub, now))
                    || tx.inner.domains().iter().any(|sub| self.needs_read(sub, now));
                if !reads {
                    self.engine.metrics().redis_reads_skipped.inc();
                }
                reads
            }
            Decision::Refuse(Refusal::AccountRestricted) => tx.refused.is_some(),
            _ => false,
        };
        if shared && !self.cluster.is_up() {
            self.cluster.decided_locally(&super::ClusterError::Down);
            return false;
        }
        shared
    }

    async fn prepare(&self, tx: &mut ClusterTransaction, decision: Decision) -> Decision {
        let Some(account) = tx.inner.account().map(str::to_owned) else { return decision };
        let now = self.engine.clock().now();
        // Which accounts to read (`ClusterPolicy::needs_read`): an account refused as restricted
        // here is always read, with its sub-accounts, so that a release made elsewhere lifts it.
        let refused = tx.refused.is_some();
        let read_main = refused || self.needs_read(&tx.inner, now);
        // A local submission also counts under the aggregate account, and an account of a
        // capped domain under each cap: the reads go out together, so the message still waits
        // for one round trip (the caps of one account are read one after another; there is
        // usually one).
        let aggregate = tx
            .inner
            .aggregate()
            .filter(|sub| refused || self.needs_read(sub, now))
            .and_then(Transaction::account)
            .map(str::to_owned);
        let domains: Vec<Option<String>> = tx
            .inner
            .domains()
            .iter()
            .map(|sub| sub.account().filter(|_| refused || self.needs_read(sub, now)).map(str::to_owned))
            .collect();
        if !read_main && aggregate.is_none() && domains.iter().all(Option::is_none) {
            self.engine.metrics().redis_reads_skipped.inc();
            return decision;
        }
        self.engine.metrics().redis_reads_done.inc();
        let fetch_main = async {
            match read_main {
                true => Some(self.cluster.fetch(&account).await),
                false => None,
            }
        };
        let fetch_aggregate = async {
            match &aggregate {
                Some(aggregate) => Some(self.cluster.fetch(aggregate).await),
                None => None,
            }
        };
        let fetch_domains = async {
            let mut fetched = Vec::with_capacity(domains.len());
            for domain in &domains {
                fetched.push(match domain {
                    Some(domain) => Some(self.cluster.fetch(domain).await),
                    None => None,
                });
            }
            fetched
        };
        let (fetched, fetched_aggregate, fetched_domains) = tokio::join!(fetch_main, fetch_aggregate, fetch_domains);
        let fetched = match fetched {
            Some(Ok(f)) => {
                self.cluster.note_read(&account, now.nanos());
                Some(f)
            }
            Some(Err(e)) => {
                self.cluster.decided_locally(&e);
                return decision;
            }
            None => None,
        };
        // Nothing below awaits: once the answer is here, the step completes.
        let tats = fetched.map(|fetched| {
            if let Some(event) = fetched.event {
                self.cluster.apply_remote(event);
            }
            fetched.tats
        });
        let restricted = self.engine.restrictions().is_restricted(&account, self.engine.clock().now().secs());
        let decision = match decision {
            Decision::Refuse(Refusal::AccountRestricted) if !restricted => match tx.refused.take() {
                Some(mail) => self.engine.mail_from(&mut tx.inner, &mail.facts()),
                None => decision,
            },
            Decision::Continue if restricted && !tx.inner.continue_restricted() => {
                info!(account = %account, "MAIL FROM refused: account restricted on another node");
                self.engine.metrics().messages.outbound_refused.inc();
                Decision::Refuse(Refusal::AccountRestricted)
            }
            other => other,
        };
        if decision != Decision::Continue {
            return decision;
        }
        if let Some(tats) = tats {
            self.engine.merge_shared_tats(&tx.inner, tats);
        }
        if let Some(sub) = tx.inner.aggregate()
            && let Some(fetched) = fetched_aggregate
        {
            let decision = self.merge_sub_fetched(sub, fetched, now.nanos());
            if decision != Decision::Continue {
                return decision;
            }
        }
        for (i, fetched) in fetched_domains.into_iter().enumerate() {
            let Some(fetched) = fetched else { continue };
            let decision = self.merge_sub_fetched(&tx.inner.domains()[i], fetched, now.nanos());
            // A domain restricted on another node leaves its accounts their always-allowed
            // recipients, as one restricted here does (`Engine::mail_from`).
            if decision != Decision::Continue && !tx.inner.continue_restricted_in_domain(i) {
                return decision;
            }
        }
        Decision::Continue
    }

    fn rcpt_to(&self, tx: &mut ClusterTransaction, facts: &RcptFacts<'_>) -> Decision {
        self.engine.rcpt_to(&mut tx.inner, facts)
    }

    fn scans(&self) -> bool {
        self.engine.scans()
    }

    fn header_names(&self) -> std::sync::Arc<crate::verdict::HeaderNames> {
        self.engine.header_names()
    }

    fn scan<'a>(&'a self, request: ScanRequest<'a>) -> impl std::future::Future<Output = Vec<Verdict>> + Send + 'a {
        self.engine.scan(request)
    }

    fn end_of_message(&self, tx: &mut ClusterTransaction, facts: &MessageFacts<'_>) -> MessageOutcome {
        self.engine.end_of_message(&mut tx.inner, facts)
    }

    /// Recipients of a message the end of message delivered are committed to the shared
    /// counters here; those of a message that was not (abort, refusal, tempfail, a lost
    /// connection) were never shared and are given back locally by the engine.
    fn end_transaction(&self, tx: &mut ClusterTransaction) {
        self.commit(&tx.inner);
        if let Some(sub) = tx.inner.aggregate() {
            self.commit(sub);
        }
        for sub in tx.inner.domains() {
            self.commit(sub);
        }
        self.engine.end_transaction(&mut tx.inner);
        tx.refused = None;
    }
}

impl ClusterPolicy {
    /// Whether MAIL FROM must read `tx`'s account from Redis before the message goes on. The
    /// read is skipped only where it cannot change a decision that matters:
    /// - never read on this node, or not within [`super::fresh::FRESH_FOR`]: read (so a
    ///   restriction made elsewhere holds here within that bound even if its broadcast was lost
    ///   on the way — normally the broadcast brings it within milliseconds);
    /// - restricted in the local view: read, so that a release made on another node holds for
    ///   the very next transaction;
    /// - near a limit in the local view ([`Engine::near_limit`]): read, so that what the other
    ///   nodes spent a moment ago counts where it can decide;
    /// - otherwise the local view decides: what other nodes spent since the last read (less than
    ///   a second ago) cannot bring the account to a limit it is this far from.
    fn needs_read(&self, tx: &Transaction, now: crate::policy::clock::Timestamp) -> bool {
        let Some(account) = tx.account() else { return false };
        !self.cluster.read_recently(account, now.nanos())
            || self.engine.restrictions().is_restricted(account, now.secs())
            || self.engine.near_limit(tx, now)
    }

    /// Queues what a delivered transaction spent for the shared counters.
    fn commit(&self, tx: &Transaction) {
        let counted = tx.counted();
        if tx.is_counted()
            && tx.is_committed()
            && counted.iter().any(|&n| n > 0)
            && let Some(account) = tx.account()
        {
            self.cluster.commit(account, counted, tx.intervals());
        }
    }

    /// A sub-transaction's account — the aggregate account of a local submission, a domain
    /// cap's `@domain` — as the cluster knows it: restricted on another node, the message is
    /// refused at MAIL FROM as it would be there; otherwise its local record is raised to what
    /// every node has spent.
    /// [`ClusterPolicy::merge_sub`], or the local decision when the read failed. `read_at_ns`
    /// is when the read was sent.
    fn merge_sub_fetched(
        &self,
        sub: &Transaction,
        fetched: Result<super::Fetched, super::ClusterError>,
        read_at_ns: u64,
    ) -> Decision {
        match fetched {
            Ok(shared) => {
                if let Some(account) = sub.account() {
                    self.cluster.note_read(account, read_at_ns);
                }
                self.merge_sub(sub, shared)
            }
            Err(e) => {
                self.cluster.decided_locally(&e);
                Decision::Continue
            }
        }
    }

    fn merge_sub(&self, sub: &Transaction, shared: super::Fetched) -> Decision {
        if let Some(event) = shared.event {
            self.cluster.apply_remote(event);
        }
        let aggregate = sub.account().unwrap_or_default();
        if self.engine.restrictions().is_restricted(aggregate, self.engine.clock().now().secs()) {
            info!(aggregate = %aggregate, "MAIL FROM refused: restricted on another node");
            self.engine.metrics().messages.outbound_refused.inc();
            return Decision::Refuse(Refusal::AccountRestricted);
        }
        self.engine.merge_shared_tats(sub, shared.tats);
        Decision::Continue
    }
}
