//! Cluster mode (`[state] backend = "redis"`): several filter nodes share each account's
//! counters and every restriction and release through one Redis.
//!
//! # Design
//!
//! Decisions stay local and synchronous (the [`Policy`](crate::policy::Policy) calls are
//! plain functions over in-memory records); Redis only keeps each node's local view close to
//! what all nodes together know, with at most **one awaited round trip per message**:
//!
//! - **Counters.** At MAIL FROM of an outbound account ([`ClusterPolicy`]), one pipelined read
//!   (`HMGET og:{account}:tat e i d` + `HGET og:{account}:ev data`) brings the account's shared
//!   GCRA state; each local TAT becomes the later of the two (a max, never a sum, so what this
//!   node already spent is not counted twice). RCPT TO then decides locally as with the memory
//!   backend. The read is skipped where it cannot change a decision ([`fresh`],
//!   [`ClusterPolicy`]): every account of the message read here less than
//!   [`fresh::FRESH_FOR`] ago, none restricted here, all far from their limits — so a steady
//!   sender costs about one read a second rather than one per message, while a restricted
//!   account or one near a limit is still read at every message. When the transaction ends,
//!   the recipients it counted are committed by a
//!   server-side script — `tat = max(tat, now) + n·T` per limit, atomic, with an expiry when
//!   the limit is fully replenished — sent by a background task that pipelines the commits of
//!   many messages; the milter never waits for it. TATs are stored in microseconds since the
//!   epoch (Lua numbers are doubles: nanoseconds would lose precision).
//! - **Restrictions.** [`ClusterRestrictions`] wraps the durable store (journal and audit log
//!   stay: they are the audit trail and what a node restarts with). Every restrict and
//!   release also becomes an [`events::ClusterEvent`] stamped (milliseconds, node id): a script
//!   stores it in `og:{account}:ev` only if it is newer than the one there, and then
//!   `PUBLISH`es it on `og:events`. Every node subscribes and applies the other nodes' events
//!   to its local store at once; MAIL FROM reads only the local copy. The same read at MAIL
//!   FROM also returns the account's newest event, so a release or restriction made elsewhere
//!   holds for the very next transaction even if the broadcast is still on its way; for an
//!   account restricted here that read confirms the restriction (a release elsewhere lifts it).
//!   The admin API answers only once its event has reached Redis
//!   ([`RestrictionStore::settled`](crate::policy::restriction::RestrictionStore::settled)).
//! - **Newest wins.** Each node remembers the newest event it made or applied per account
//!   (seeded at start from its audit log). A node's own new event is stamped later than any
//!   event it knows for the account, so clock skew between nodes cannot make an administrator's
//!   release lose against the restriction it lifts.
//! - **Apart from Redis** ([`link`]): requests fail fast (the link is known down) or time out
//!   (at most `min(io_timeout, 1 s)`, so never longer than `io_timeout`); the node decides on
//!   its local view — possibly lenient by up to N× for N nodes while apart — logs the
//!   transition once, shows `outbound_guard_redis_up 0` and counts
//!   `outbound_guard_redis_local_decisions_total`, and reconnects with backoff (0.1 s doubling
//!   to 5 s). On reconnect it **reconciles** before deciding with Redis again: subscribes, pulls
//!   every event (`og:accounts` lists the accounts that have one) and applies the newer ones,
//!   pushes its own newer ones (restrictions made and releases done while apart, or everything
//!   when Redis came back empty), and raises the shared TATs to its local ones (max).
//! - **Keys** carry the account as a hash tag (`og:{account}:…`), so the keys one script
//!   touches are in one Redis Cluster slot; `og:accounts` and the channel are single names.
//!   Redis Sentinel is supported by the URL (`redis+sentinel://`, [`crate::config::RedisUrl`]): the master is
//!   asked of the sentinels at each (re)connection, so a failover is a reconnection.
//! - **Redis Cluster** (`redis+cluster://`): the connection is a cluster client ([`conn`]),
//!   which follows MOVED, ASK and failovers; what is sent for many accounts at once goes as one
//!   pipeline per slot; the subscription is on one node and renewed with the link ([`link`]).
//!
//! Spam windows stay per node (a spam share is a ratio that N nodes each see the same way).

mod conn;
pub mod events;
mod fresh;
mod keys;
mod link;
pub mod policy;
pub mod restrictions;
mod scripts;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, info};

pub use policy::ClusterPolicy;
pub use restrictions::ClusterRestrictions;

use crate::config::RedisTarget;
use crate::metrics::Metrics;
use crate::policy::clock::EngineClock;
use crate::policy::engine::Engine;
use crate::policy::events::Event;
use crate::policy::restriction::{AuditAction, Restriction, RestrictionStore, StoreError};
use crate::state::durable::DurableRestrictions;
use events::{Change, ClusterEvent};

/// Upper bound of one Redis request made for a message (further bounded by `io_timeout`).
pub const REQUEST_TIMEOUT_CAP: Duration = Duration::from_secs(1);
/// Commits waiting for the background task at most; beyond, they are dropped (the local view
/// has them, and the next reconciliation pushes it).
const COMMIT_QUEUE: usize = 65_536;

/// One message's recipients, to add to the shared counters.
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    pub key: String,
    pub now_us: u64,
    /// (field, recipients, interval in µs) per limit in use.
    pub spent: Vec<(&'static str, u32, u64)>,
}

/// What the MAIL FROM read brought back.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    /// Shared TATs in nanoseconds (0 = none).
    pub tats: [u64; 3],
    pub event: Option<ClusterEvent>,
}

/// Why a request to Redis did not answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis is unreachable")]
    Down,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A node's share of the cluster: its identity, the link's state, what it knows of each
/// account's restriction events, and the queues of the background tasks.
pub struct Cluster {
    node: String,
    clock: EngineClock,
    metrics: Arc<Metrics>,
    durable: Arc<DurableRestrictions>,
    engine: OnceLock<Weak<Engine>>,
    up: AtomicBool,
    conn: ArcSwapOption<conn::Conn>,
    /// The newest event this node made or applied, per account.
    known: DashMap<Box<str>, ClusterEvent, ahash::RandomState>,
    /// When each account active right now was last read (MAIL FROM skips fresh reads).
    reads: fresh::ReadTimes,
    to_push: mpsc::UnboundedSender<(u64, ClusterEvent)>,
    push_seq: AtomicU64,
    pushed: watch::Sender<u64>,
    commits: mpsc::Sender<Commit>,
    /// A request failed: the link checks the connection at once.
    trouble: Notify,
    /// A write (event or commit) failed: the link reconciles even if the connection stayed.
    unsent: AtomicBool,
    request_timeout: Duration,
    receivers: Mutex<Option<Receivers>>,
    /// Turns true when the first connection attempt ended (either way).
    attempted: watch::Sender<bool>,
}

struct Receivers {
    to_push: mpsc::UnboundedReceiver<(u64, ClusterEvent)>,
    commits: mpsc::Receiver<Commit>,
}

impl Cluster {
    /// A node named `node` (unique per process: e.g. host name and process id) over the
    /// durable store; nothing is connected until [`Cluster::spawn`].
    pub fn new(
        node: String,
        durable: Arc<DurableRestrictions>,
        clock: EngineClock,
        metrics: Arc<Metrics>,
        io_timeout: Duration,
    ) -> Arc<Cluster> {
        let (to_push, push_rx) = mpsc::unbounded_channel();
        let (commits, commit_rx) = mpsc::channel(COMMIT_QUEUE);
        let cluster = Cluster {
            node,
            clock,
            metrics,
            durable,
            engine: OnceLock::new(),
            up: AtomicBool::new(false),
            conn: ArcSwapOption::empty(),
            known: DashMap::default(),
            reads: fresh::ReadTimes::default(),
            to_push,
            push_seq: AtomicU64::new(0),
            pushed: watch::Sender::new(0),
            commits,
            trouble: Notify::new(),
            unsent: AtomicBool::new(false),
            request_timeout: io_timeout.min(REQUEST_TIMEOUT_CAP),
            receivers: Mutex::new(Some(Receivers { to_push: push_rx, commits: commit_rx })),
            attempted: watch::Sender::new(false),
        };
        cluster.seed_known();
        cluster.metrics.redis_up.set(0);
        Arc::new(cluster)
    }

    /// This node's id in events.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the link to Redis is up and reconciled.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Starts the link (connection, subscription, reconciliation, reconnection) and the
    /// background writers, until `shutdown`.
    pub fn spawn(
        self: &Arc<Self>,
        target: RedisTarget,
        engine: &Arc<Engine>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = self.engine.set(Arc::downgrade(engine));
        let Some(rx) = self.receivers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
            return Vec::new();
        };
        vec![
            tokio::spawn(link::supervise(self.clone(), target, shutdown)),
            tokio::spawn(link::push_events(self.clone(), rx.to_push)),
            tokio::spawn(link::commit_counters(self.clone(), rx.commits)),
        ]
    }

    /// Waits (at most `limit`) until the first connection attempt ended, so that a node that
    /// can reach Redis starts with the shared view.
    pub async fn first_attempt(&self, limit: Duration) {
        let mut rx = self.attempted.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done)).await;
    }

    /// At shutdown: waits (at most `limit`) until queued events and commits were sent.
    pub async fn flush(&self, limit: Duration) {
        let drained = async {
            self.settled().await;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while self.is_up() && self.commits.capacity() < COMMIT_QUEUE {
                tick.tick().await;
            }
        };
        let _ = tokio::time::timeout(limit, drained).await;
    }

    /// A write did not reach Redis: what it carried is in the local view, and the link pushes
    /// it by reconciling (now if the connection still works, else after reconnecting).
    fn write_failed(&self) {
        self.reads.clear();
        self.unsent.store(true, Ordering::Release);
        self.trouble.notify_one();
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.get().and_then(Weak::upgrade)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.redis_up.set(i64::from(up));
        // Down, or up again after a reconciliation: what was read before may be stale.
        self.reads.clear();
        if !up {
            self.conn.store(None);
        }
    }

    /// Starts `known` from the audit log: the newest thing this node did or learnt per account.
    fn seed_known(&self) {
        let now = self.clock.now().secs();
        for entry in self.durable.latest_audit() {
            let change = match entry.action {
                AuditAction::Released => Change::Release { reason: entry.reason.clone() },
                AuditAction::Restricted | AuditAction::Escalated | AuditAction::Replaced => {
                    match self.durable.get(&entry.account, now) {
                        Some(restriction) => Change::Restrict { restriction },
                        None => continue,
                    }
                }
            };
            let at_ms = match &change {
                Change::Restrict { restriction } => restriction.created_at.unix_timestamp() * 1000,
                Change::Release { .. } => entry.at.unix_timestamp() * 1000,
            };
            let event =
                ClusterEvent { account: entry.account.clone(), at_ms, node: self.node.clone(), by: entry.by, change };
            self.known.insert(entry.account.into_boxed_str(), event);
        }
    }

    // ----- restrictions -------------------------------------------------------------------

    /// A restriction made on this node: durable first, then shared.
    fn restrict_local(&self, restriction: Restriction, by: &str, notice: Option<&Event>) -> Result<bool, StoreError> {
        let account = restriction.account.clone();
        let mut entry = self.known.entry(account.clone().into_boxed_str()).or_insert_with(|| ClusterEvent {
            account: account.clone(),
            at_ms: i64::MIN,
            node: String::new(),
            by: String::new(),
            change: Change::Release { reason: String::new() },
        });
        let created = self.durable.restrict(restriction.clone(), by, notice)?;
        if created {
            let event = self.stamp(&entry, by, Change::Restrict { restriction });
            *entry = event.clone();
            drop(entry);
            self.push(event);
        } else if entry.at_ms == i64::MIN {
            drop(entry);
            self.known.remove_if(&*account, |_, e| e.at_ms == i64::MIN);
        }
        Ok(created)
    }

    /// A restriction given a new reason and `until` on this node: durable first, then shared
    /// as the restriction it now is (a node that has the account restricted replaces its copy).
    fn replace_local(
        &self,
        account: &str,
        reason: &str,
        until: Option<time::OffsetDateTime>,
        now_secs: i64,
        by: &str,
    ) -> Result<Option<(Restriction, Restriction)>, StoreError> {
        let mut entry = self.known.entry(account.into()).or_insert_with(|| ClusterEvent {
            account: account.to_owned(),
            at_ms: i64::MIN,
            node: String::new(),
            by: String::new(),
            change: Change::Release { reason: String::new() },
        });
        let replaced = self.durable.replace(account, reason, until, now_secs, by)?;
        if let Some((_, restriction)) = &replaced {
            let event = self.stamp(&entry, by, Change::Restrict { restriction: restriction.clone() });
            *entry = event.clone();
            drop(entry);
            self.push(event);
        } else if entry.at_ms == i64::MIN {
            drop(entry);
            self.known.remove_if(account, |_, e| e.at_ms == i64::MIN);
        }
        Ok(replaced)
    }

    /// A release made on this node: durable first, then shared.
    fn release_local(
        &self,
        account: &str,
        now_secs: i64,
        by: &str,
        reason: &str,
        notice: Option<&Event>,
    ) -> Result<Option<Restriction>, StoreError> {
        let mut entry = self.known.entry(account.into()).or_insert_with(|| ClusterEvent {
            account: account.to_owned(),
            at_ms: i64::MIN,
            node: String::new(),
            by: String::new(),
            change: Change::Release { reason: String::new() },
        });
        let released = self.durable.release(account, now_secs, by, reason, notice)?;
        if released.is_some() {
            let event = self.stamp(&entry, by, Change::Release { reason: reason.to_owned() });
            *entry = event.clone();
            drop(entry);
            self.push(event);
        } else if entry.at_ms == i64::MIN {
            drop(entry);
            self.known.remove_if(account, |_, e| e.at_ms == i64::MIN);
        }
        Ok(released)
    }

    /// A new local event, stamped later than anything known of the account.
    fn stamp(&self, known: &ClusterEvent, by: &str, change: Change) -> ClusterEvent {
        let now_ms = (self.clock.now().nanos() / 1_000_000) as i64;
        ClusterEvent {
            account: known.account.clone(),
            at_ms: now_ms.max(known.at_ms.saturating_add(1)),
            node: self.node.clone(),
            by: by.to_owned(),
            change,
        }
    }

    fn push(&self, event: ClusterEvent) {
        let seq = self.push_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let _ = self.to_push.send((seq, event));
    }

    /// Waits until the events made so far were sent (or could not be), at most twice the
    /// request timeout.
    async fn settled(&self) {
        let target = self.push_seq.load(Ordering::Acquire);
        let mut rx = self.pushed.subscribe();
        let _ = tokio::time::timeout(self.request_timeout * 2, rx.wait_for(|done| *done >= target)).await;
    }

    /// Applies another node's event to the local store if it is newer than what this node
    /// knows of the account. Returns whether it was applied.
    pub(crate) fn apply_remote(&self, event: ClusterEvent) -> bool {
        let now_secs = self.clock.now().secs();
        let by = format!("{} (on {})", event.by, event.node);
        let mut released = false;
        {
            let mut entry = match self.known.entry(event.account.clone().into_boxed_str()) {
                Entry::Occupied(o) if o.get().stamp() >= event.stamp() => return false,
                Entry::Occupied(o) => o.into_ref(),
                Entry::Vacant(v) => v.insert(event.clone()),
            };
            *entry = event.clone();
            // Under the account's entry: two events of one account are applied in stamp order.
            match &event.change {
                Change::Restrict { restriction } if restriction.in_force(now_secs) => {
                    // The node that made it announces it.
                    match self.durable.restrict(restriction.clone(), &by, None) {
                        Ok(true) => {
                            info!(account = %event.account, node = %event.node, "account restricted on another node: {}", restriction.reason)
                        }
                        // Restricted here already: a replacement made there replaces it here.
                        Ok(false) => match self.durable.get(&event.account, now_secs) {
                            Some(here) if here.reason != restriction.reason || here.until != restriction.until => {
                                if let Err(e) = self.durable.replace(
                                    &event.account,
                                    &restriction.reason,
                                    restriction.until,
                                    now_secs,
                                    &by,
                                ) {
                                    error!(account = %event.account, "cannot record a replacement made on another node: {e}");
                                }
                            }
                            _ => {}
                        },
                        Err(e) => {
                            error!(account = %event.account, "cannot record a restriction made on another node: {e}")
                        }
                    }
                }
                Change::Restrict { .. } => {}
                Change::Release { reason } => match self.durable.release(&event.account, now_secs, &by, reason, None) {
                    Ok(Some(_)) => {
                        info!(account = %event.account, node = %event.node, by = %event.by, "account released on another node");
                        released = true;
                    }
                    Ok(None) => {}
                    Err(e) => error!(account = %event.account, "cannot record a release made on another node: {e}"),
                },
            }
        }
        if released && let Some(engine) = self.engine() {
            engine.note_released_elsewhere(&event.account);
        }
        true
    }

    // ----- counters -----------------------------------------------------------------------

    /// Reads an account's shared TATs and newest restriction event (one round trip).
    ///
    /// # Errors
    /// [`ClusterError`] when Redis is down, slow or answers with an error.
    pub(crate) async fn fetch(&self, account: &str) -> Result<Fetched, ClusterError> {
        let conn = self.conn.load_full().ok_or(ClusterError::Down)?;
        let mut conn = (*conn).clone();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(keys::tats(account)).arg(&keys::TAT_FIELDS[..]);
        pipe.cmd("HGET").arg(keys::event(account)).arg("data");
        let reply: redis::RedisResult<(Vec<Option<u64>>, Option<String>)> =
            tokio::time::timeout(self.request_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|_| ClusterError::Timeout(self.request_timeout))?;
        let (tats_us, data) = reply?;
        let mut tats = [0u64; 3];
        for (t, us) in tats.iter_mut().zip(tats_us) {
            *t = us.unwrap_or(0).saturating_mul(1000);
        }
        let event = data.and_then(|d| events::decode(&d));
        Ok(Fetched { tats, event })
    }

    /// Whether `account` was read within [`fresh::FRESH_FOR`] before `now_ns`.
    pub(crate) fn read_recently(&self, account: &str, now_ns: u64) -> bool {
        self.reads.is_fresh(account, now_ns)
    }

    /// `account` was read; `at_ns` is when the read was sent.
    pub(crate) fn note_read(&self, account: &str, at_ns: u64) {
        self.reads.note(account, at_ns);
    }

    /// Drops the reads too old to stand in for anything (at every health check).
    pub(crate) fn prune_reads(&self) {
        self.reads.prune(self.clock.now().nanos());
    }

    /// Queues a transaction's recipients for the shared counters (never waits).
    pub(crate) fn commit(&self, account: &str, counted: [u32; 3], intervals_ns: [u64; 3]) {
        let spent: Vec<_> = keys::TAT_FIELDS
            .iter()
            .zip(counted.iter().zip(intervals_ns))
            .filter(|(_, (n, t))| **n > 0 && *t > 0)
            .map(|(f, (n, t))| (*f, *n, t.div_ceil(1000)))
            .collect();
        if spent.is_empty() {
            return;
        }
        let commit = Commit { key: keys::tats(account), now_us: self.clock.now().nanos() / 1000, spent };
        if self.commits.try_send(commit).is_err() {
            self.metrics.redis_error("commit");
        }
    }

    /// A message decided on the local view alone.
    pub(crate) fn decided_locally(&self, why: &ClusterError) {
        self.metrics.redis_local_decisions.inc();
        match why {
            ClusterError::Down => {}
            ClusterError::Timeout(_) | ClusterError::Redis(_) => {
                tracing::debug!("deciding on the local view: {why}");
                self.metrics.redis_error("fetch");
                self.trouble.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use time::OffsetDateTime;

    use super::*;
    use crate::policy::restriction::Counters;

    const NOW: i64 = 1_795_341_600;

    fn restriction(account: &str) -> Restriction {
        let at = OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        Restriction::by_policy(account, "limit", "default", at, None, Counters::default(), "")
    }

    fn node(dir: &std::path::Path, name: &str) -> Arc<Cluster> {
        let durable = Arc::new(DurableRestrictions::open(dir, NOW).unwrap());
        let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(NOW as u64));
        Cluster::new(name.into(), durable, clock, Arc::new(Metrics::for_cluster()), Duration::from_secs(30))
    }

    fn event(account: &str, at_ms: i64, node: &str, change: Change) -> ClusterEvent {
        ClusterEvent { account: account.into(), at_ms, node: node.into(), by: "admin".into(), change }
    }

    #[test]
    fn the_newest_event_wins_and_a_local_event_is_stamped_after_what_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let a = node(dir.path(), "a");
        assert!(a.restrict_local(restriction("x@example.com"), "policy", None).unwrap());
        let mine = a.known.get("x@example.com").unwrap().clone();
        assert_eq!(mine.at_ms, NOW * 1000);

        // An older release from another node loses; a newer one is applied.
        let old = event("x@example.com", mine.at_ms - 1, "b", Change::Release { reason: "old".into() });
        assert!(!a.apply_remote(old));
        assert!(a.durable.is_restricted("x@example.com", NOW));
        let new = event("x@example.com", mine.at_ms + 5000, "b", Change::Release { reason: "ok".into() });
        assert!(a.apply_remote(new.clone()));
        assert!(!a.durable.is_restricted("x@example.com", NOW));
        assert!(!a.apply_remote(new), "the same event twice is applied once");
        let by = a.durable.history("x@example.com").last().unwrap().by.clone();
        assert_eq!(by, "admin (on b)");

        // B's clock was ahead: this node's next restriction is still stamped after B's release.
        assert!(a.restrict_local(restriction("x@example.com"), "policy", None).unwrap());
        assert_eq!(a.known.get("x@example.com").unwrap().at_ms, mine.at_ms + 5001);
    }

    #[test]
    fn a_restarted_node_knows_its_last_events_from_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let a = node(dir.path(), "a");
            a.restrict_local(restriction("x@example.com"), "policy", None).unwrap();
            a.restrict_local(restriction("y@example.com"), "policy", None).unwrap();
            a.release_local("y@example.com", NOW + 10, "admin", "ok", None).unwrap();
        }
        let a = node(dir.path(), "a2");
        let x = a.known.get("x@example.com").unwrap().clone();
        assert!(matches!(x.change, Change::Restrict { .. }));
        let y = a.known.get("y@example.com").unwrap().clone();
        assert!(matches!(y.change, Change::Release { .. }));
        assert_eq!(y.at_ms, (NOW + 10) * 1000);
        // A release not in force is no event; nor is a release of an account never restricted.
        assert_eq!(a.release_local("z@example.com", NOW, "admin", "", None).unwrap(), None);
        assert!(a.known.get("z@example.com").is_none());
    }

    /// An escalated restriction made on another node is escalated here too: a restriction
    /// start by the policy in this node's history, and known as a restriction after a restart.
    #[test]
    fn an_escalated_restriction_from_another_node_is_one_here_and_after_a_restart() {
        use crate::policy::restriction::AuditAction;
        let dir = tempfile::tempdir().unwrap();
        {
            let a = node(dir.path(), "a");
            let escalated = Restriction { escalated: true, ..restriction("x@example.com") };
            let change = Change::Restrict { restriction: escalated };
            assert!(
                a.apply_remote(ClusterEvent { by: "policy".into(), ..event("x@example.com", NOW * 1000, "b", change) })
            );
            let trail = a.durable.history("x@example.com");
            assert_eq!((trail[0].action, trail[0].by.as_str()), (AuditAction::Escalated, "policy (on b)"));
            assert!(trail[0].is_policy_restriction());
        }
        let a = node(dir.path(), "a2");
        let known = a.known.get("x@example.com").unwrap().clone();
        assert!(matches!(known.change, Change::Restrict { restriction } if restriction.escalated));
        assert!(a.durable.is_restricted("x@example.com", NOW + 86_400 * 30));
    }
}
