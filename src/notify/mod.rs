//! Administrator notifications (docs/notifications.md): events from the policy engine become emails (in
//! the configured language) and webhook posts, through a durable spool, retried with
//! backoff until delivered — never on the milter path, which only `try_send`s an event.
//!
//! - [`notice`]: the facts of one notification and its deduplication id.
//! - [`templates`]: subject and body texts, built in (en, sv, nl, da) or the
//!   administrator's own; the variables they see.
//! - [`email`]: the relay URL, the message (typed headers), the SMTP transaction.
//! - [`webhook`]: the JSON post.
//! - [`spool`]: the files under `state.dir/spool/`.
//! - [`worker`]: the task that ties them together: spool first, then attempt, then retry.
//!
//! [`spawn`] starts it and returns a [`NotifierHandle`] for reload, statistics and shutdown.

pub mod email;
pub mod notice;
pub mod spool;
pub mod templates;
pub mod webhook;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::policy::events::Event;
pub use notice::Channel;
use templates::Templates;

/// Why a notification could not be prepared or delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification spool \"{path}\": {source}")]
    Spool { path: PathBuf, source: std::io::Error },
    #[error("notification template \"{path}\" cannot be read: {source}")]
    TemplateRead { path: PathBuf, source: std::io::Error },
    #[error("notification template \"{name}\": {message}")]
    Template { name: String, message: String },
    #[error("notify.smtp \"{url}\": {why}")]
    SmtpUrl { url: String, why: String },
    #[error("notification address \"{address}\": {why}")]
    Address { address: String, why: String },
    #[error("notification message cannot be built: {0}")]
    Message(String),
    #[error("smtp relay \"{relay}\": {message}")]
    Smtp { relay: String, message: String },
    #[error("webhook \"{url}\": {message}")]
    Webhook { url: String, message: String },
    #[error("webhook client cannot be set up: {0}")]
    HttpClient(String),
}

/// Timing of deliveries and retries. docs/notifications.md gives the defaults (first retry within 10 s,
/// capped at 10 minutes); tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Delay before the first retry; each further failure doubles it.
    pub retry_first: Duration,
    /// The longest delay between two attempts.
    pub retry_cap: Duration,
    /// Per SMTP command (the whole transaction gets four times this).
    pub smtp_timeout: Duration,
    /// Per webhook request, connection included.
    pub webhook_timeout: Duration,
    /// How long [`NotifierHandle::join`] keeps delivering before leaving the rest spooled.
    pub flush_timeout: Duration,
    /// Attempts running at once, so a burst of events cannot open hundreds of connections.
    pub max_in_flight: usize,
    /// How long a delivered notice's id is remembered against duplicates.
    pub keep_done: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            retry_first: Duration::from_secs(5),
            retry_cap: Duration::from_secs(600),
            smtp_timeout: Duration::from_secs(30),
            webhook_timeout: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(5),
            max_in_flight: 4,
            keep_done: Duration::from_secs(7 * 86_400),
        }
    }
}

impl Tuning {
    /// The delay after the `failures`-th failed attempt in a row (1 = the first failure).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.retry_first.saturating_mul(factor).min(self.retry_cap)
    }
}

/// Counters of one channel at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Notifications delivered since start.
    pub delivered: u64,
    /// Attempts that failed since start (each retry counts).
    pub failed_attempts: u64,
    /// Notifications in the spool now.
    pub pending: u64,
}

/// [`ChannelStats`] per channel, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifyStats {
    pub email: ChannelStats,
    pub webhook: ChannelStats,
}

/// The live counters behind [`NotifyStats`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Per channel: delivered, failed attempts, pending.
    counters: [[AtomicU64; 3]; 2],
}

impl Stats {
    fn slot(channel: Channel) -> usize {
        match channel {
            // The account's own notice is an email too, through the same relay.
            Channel::Email | Channel::Sender => 0,
            Channel::Webhook => 1,
        }
    }
    pub(crate) fn delivered(&self, channel: Channel) {
        self.counters[Self::slot(channel)][0].fetch_add(1, Ordering::Relaxed);
        self.counters[Self::slot(channel)][2].fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn failed(&self, channel: Channel) {
        self.counters[Self::slot(channel)][1].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn queued(&self, channel: Channel) {
        self.counters[Self::slot(channel)][2].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dropped(&self, channel: Channel) {
        self.counters[Self::slot(channel)][2].fetch_sub(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> NotifyStats {
        let of = |c: Channel| {
            let [d, f, p] = &self.counters[Self::slot(c)];
            ChannelStats {
                delivered: d.load(Ordering::Relaxed),
                failed_attempts: f.load(Ordering::Relaxed),
                pending: p.load(Ordering::Relaxed),
            }
        };
        NotifyStats { email: of(Channel::Email), webhook: of(Channel::Webhook) }
    }
}

/// What an attempt renders and delivers with: swapped whole on reload.
pub(crate) struct Current {
    pub config: Arc<Config>,
    pub templates: Arc<Templates>,
}

/// The running notifier. Dropping it stops the notifier as [`NotifierHandle::join`] does,
/// without waiting for it.
pub struct NotifierHandle {
    current: watch::Sender<Arc<Current>>,
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    spool_dir: PathBuf,
}

/// Checks what the notifier would refuse at start — the administrator's templates (the relay
/// URL was parsed with the configuration) — for `check-config`.
///
/// # Errors
/// The first problem found, naming the file.
pub fn check(config: &Config) -> Result<(), NotifyError> {
    templates::check(config)
}

/// Starts the notifier with the default [`Tuning`]. Must be called inside a tokio runtime.
///
/// Opens the spool (`state.dir/spool/`) and reads what is pending before returning, so
/// [`NotifierHandle::stats`] counts it at once; pending notices are attempted right away.
/// `replay` are events recorded before this start (the durable store's recent notices): each
/// is spooled unless the spool has it pending or delivered, before any new event.
///
/// # Errors
/// A template override that does not compile or a spool that cannot be opened — at start,
/// where the administrator sees it.
pub fn spawn(
    config: Arc<Config>,
    events: mpsc::Receiver<Event>,
    replay: Vec<Event>,
    shutdown: watch::Receiver<bool>,
) -> Result<NotifierHandle, NotifyError> {
    spawn_with(config, events, replay, shutdown, Tuning::default())
}

/// [`spawn`] with explicit timing.
///
/// # Errors
/// As [`spawn`].
pub fn spawn_with(
    config: Arc<Config>,
    events: mpsc::Receiver<Event>,
    replay: Vec<Event>,
    shutdown: watch::Receiver<bool>,
    tuning: Tuning,
) -> Result<NotifierHandle, NotifyError> {
    let templates = Arc::new(Templates::load(&config)?);
    let http = webhook::client(tuning.webhook_timeout)?;
    let spool_dir = config.state.dir.join("spool");
    let spool = spool::Spool::open(&spool_dir)?;
    let pruned = spool.prune(tuning.keep_done);
    if pruned > 0 {
        tracing::debug!(pruned, "old delivered-notification markers removed");
    }
    let pending = spool.load()?;
    let stats = Arc::new(Stats::default());
    for e in &pending {
        stats.queued(e.channel);
    }
    if !pending.is_empty() {
        tracing::info!(
            pending = pending.len(),
            spool = %spool_dir.display(),
            "undelivered notifications found; delivering them now"
        );
    }
    let (current, current_rx) = watch::channel(Arc::new(Current { config, templates }));
    let (stop, stop_rx) = watch::channel(false);
    let worker = worker::Worker::new(current_rx, spool, stats.clone(), tuning, http, pending);
    let task = tokio::spawn(worker.run(replay, events, shutdown, stop_rx));
    Ok(NotifierHandle { current, stats, stop, task, spool_dir })
}

impl NotifierHandle {
    /// Puts a new configuration in force for the next attempt (recipients, relay, language,
    /// templates). Pending notices are rendered with it too.
    ///
    /// # Errors
    /// When the new templates do not compile: the new configuration is still used, with the
    /// templates that were in force.
    pub fn reload(&self, config: Arc<Config>) -> Result<(), NotifyError> {
        let old = self.current.borrow().templates.clone();
        let (templates, result) = match Templates::load(&config) {
            Ok(t) => (Arc::new(t), Ok(())),
            Err(e) => {
                tracing::error!("notification settings partly refused, keeping the previous templates: {e}");
                (old, Err(e))
            }
        };
        self.current.send_replace(Arc::new(Current { config, templates }));
        result
    }

    /// Counters per channel.
    pub fn stats(&self) -> NotifyStats {
        self.stats.snapshot()
    }

    /// The spool directory in use.
    pub fn spool_dir(&self) -> &std::path::Path {
        &self.spool_dir
    }

    /// Stops the notifier: events already handed over are spooled, what is due is
    /// attempted for at most [`Tuning::flush_timeout`], the rest stays in the spool for the
    /// next start. Returns the counters as they ended, for a last log line.
    pub async fn join(self) -> NotifyStats {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            tracing::error!("notifier task panicked: {e}");
        }
        self.stats.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_within_ten_seconds_and_caps_at_ten_minutes() {
        let t = Tuning::default();
        assert!(t.backoff(1) <= Duration::from_secs(10));
        let delays: Vec<u64> = (1..=10).map(|n| t.backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
        assert_eq!(t.backoff(u32::MAX), Duration::from_secs(600));
    }
}
