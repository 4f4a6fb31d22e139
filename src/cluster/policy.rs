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
            Decision::Continue => tx.inner.is_counted(),
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
        // A local submission also counts under the aggregate account, and an account of a
        // capped domain under each cap: the reads go out together, so the message still waits
        // for one round trip (the caps of one account are read one after another; there is
        // usually one).
        let aggregate = tx.inner.aggregate().and_then(Transaction::account).map(str::to_owned);
        let domains: Vec<String> =
            tx.inner.domains().iter().filter_map(Transaction::account).map(str::to_owned).collect();
        let fetch_aggregate = async {
            match &aggregate {
                Some(aggregate) => Some(self.cluster.fetch(aggregate).await),
                None => None,
            }
        };
        let fetch_domains = async {
            let mut fetched = Vec::with_capacity(domains.len());
            for domain in &domains {
                fetched.push(self.cluster.fetch(domain).await);
            }
            fetched
        };
        let (fetched, fetched_aggregate, fetched_domains) =
            tokio::join!(self.cluster.fetch(&account), fetch_aggregate, fetch_domains);
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                self.cluster.decided_locally(&e);
                return decision;
            }
        };
        // Nothing below awaits: once the answer is here, the step completes.
        if let Some(event) = fetched.event {
            self.cluster.apply_remote(event);
        }
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
        self.engine.merge_shared_tats(&tx.inner, fetched.tats);
        if let Some(sub) = tx.inner.aggregate()
            && let Some(fetched) = fetched_aggregate
        {
            let decision = self.merge_sub_fetched(sub, fetched);
            if decision != Decision::Continue {
                return decision;
            }
        }
        for (i, fetched) in fetched_domains.into_iter().enumerate() {
            let decision = self.merge_sub_fetched(&tx.inner.domains()[i], fetched);
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
    /// [`ClusterPolicy::merge_sub`], or the local decision when the read failed.
    fn merge_sub_fetched(&self, sub: &Transaction, fetched: Result<super::Fetched, super::ClusterError>) -> Decision {
        match fetched {
            Ok(shared) => self.merge_sub(sub, shared),
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
