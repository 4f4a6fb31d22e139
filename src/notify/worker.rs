//! The notifier task: takes events off the channel, writes each notice to the spool before
//! anything else, attempts delivery, and reschedules failures with backoff. Attempts run as
//! separate tasks (at most [`Tuning::max_in_flight`]) so a relay that hangs for its whole
//! timeout does not hold up the webhook or the next event.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::notice::{Channel, Notice, NoticeKind};
use super::spool::{Entry, Spool};
use super::templates::printable;
use super::{Current, NotifyError, Stats, Tuning, email, webhook};
use crate::policy::events::Event;

/// How an attempt ended.
enum Outcome {
    Delivered,
    Failed(NotifyError),
    /// The channel is no longer configured: nothing to retry.
    Dropped(&'static str),
}

struct Pending {
    entry: Entry,
    due: Instant,
    in_flight: bool,
}

pub(super) struct Worker {
    current: watch::Receiver<Arc<Current>>,
    spool: Spool,
    stats: Arc<Stats>,
    tuning: Tuning,
    http: reqwest::Client,
    pending: HashMap<String, Pending>,
    attempts: JoinSet<(String, Outcome)>,
    /// Which notice each attempt task carries, to reschedule it should the task panic.
    attempt_ids: HashMap<tokio::task::Id, String>,
}

impl Worker {
    pub(super) fn new(
        current: watch::Receiver<Arc<Current>>,
        spool: Spool,
        stats: Arc<Stats>,
        tuning: Tuning,
        http: reqwest::Client,
        loaded: Vec<Entry>,
    ) -> Worker {
        let now = Instant::now();
        let pending =
            loaded.into_iter().map(|entry| (entry.id.clone(), Pending { entry, due: now, in_flight: false })).collect();
        Worker { current, spool, stats, tuning, http, pending, attempts: JoinSet::new(), attempt_ids: HashMap::new() }
    }

    pub(super) async fn run(
        mut self,
        replay: Vec<Event>,
        mut events: mpsc::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut recovered = 0;
        for e in &replay {
            recovered += self.accept(e).await;
        }
        if recovered > 0 {
            warn!(
                notices = recovered,
                "notices of restrictions or releases recorded before the last stop had not reached the spool; spooled now"
            );
        }
        let mut events_open = true;
        loop {
            if *shutdown.borrow() || *stop.borrow() {
                break;
            }
            self.launch_due();
            // At the in-flight cap a due entry must wait for a finished attempt, not wake
            // the loop at once (and forever).
            let next_due = if self.attempts.len() >= self.tuning.max_in_flight {
                None
            } else {
                self.pending.values().filter(|p| !p.in_flight).map(|p| p.due).min()
            };
            tokio::select! {
                // A dropped sender means the owner is gone: stop as for the signal itself.
                changed = shutdown.changed() => if changed.is_err() { break },
                changed = stop.changed() => if changed.is_err() { break },
                Some(done) = self.attempts.join_next_with_id(), if !self.attempts.is_empty() => {
                    self.finished(done).await;
                }
                event = events.recv(), if events_open => match event {
                    Some(e) => {
                        self.accept(&e).await;
                    }
                    None => {
                        // The engine is gone; what is pending still gets delivered.
                        events_open = false;
                        debug!("event channel closed");
                    }
                },
                () = sleep_until(next_due), if next_due.is_some() => {}
            }
        }
        self.flush(&mut events).await;
    }

    /// Shutdown: spool whatever events are queued, then deliver what is due for a short
    /// while; anything unfinished stays in the spool.
    async fn flush(&mut self, events: &mut mpsc::Receiver<Event>) {
        while let Ok(e) = events.try_recv() {
            self.accept(&e).await;
        }
        let deadline = Instant::now() + self.tuning.flush_timeout;
        let now = Instant::now();
        // Only what was never tried or is due: something that failed a second ago would
        // most likely fail again and only delay the exit.
        loop {
            self.launch_where(|p| p.due <= now);
            if self.attempts.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = self.attempts.join_next_with_id() => self.finished(done).await,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let left = self.pending.len();
        self.attempts.abort_all();
        if left > 0 {
            info!(
                pending = left,
                spool = %self.spool.dir().display(),
                "notifier stopped; undelivered notifications stay spooled for the next start"
            );
        }
    }

    /// A new event: one notice per configured channel, spooled, then due at once. Returns how
    /// many notices it added (none for one already pending or delivered).
    async fn accept(&mut self, event: &Event) -> usize {
        let current = self.current.borrow().clone();
        let notice = Notice::from(event);
        let mut channels = Vec::with_capacity(2);
        if email::recipients(&current.config, &notice.policy).is_empty() {
            debug!(event = notice.kind.name(), "no email recipients configured");
        } else {
            channels.push(Channel::Email);
        }
        if current.config.notify.webhook.is_some() {
            channels.push(Channel::Webhook);
        }
        if notice.kind == NoticeKind::SenderRestricted
            && email::policy_settings(&current.config, &notice.policy).is_some_and(|p| p.notify_sender)
        {
            // A login without `@` (or a domain restricted as a unit) has no mailbox to tell.
            if email::account_address(&notice.account).is_some() {
                channels.push(Channel::Sender);
            } else {
                debug!(account = %printable(&notice.account), "restricted account has no address; no notice to it");
            }
        }
        let mut added = 0;
        for channel in channels {
            let entry = Entry::new(notice.clone(), channel);
            let id = entry.id.clone();
            if self.pending.contains_key(&id) || self.spool.is_known(&id) {
                debug!(%id, "notification already spooled or delivered; not sent twice");
                continue;
            }
            let spool = self.spool.clone();
            let to_write = entry.clone();
            let written = tokio::task::spawn_blocking(move || spool.write(&to_write)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    error!(%id, "notification not spooled, delivering from memory only: {e}")
                }
                Err(e) => error!(%id, "notification not spooled, delivering from memory only: {e}"),
            }
            self.stats.queued(channel);
            self.pending.insert(id, Pending { entry, due: Instant::now(), in_flight: false });
            added += 1;
        }
        added
    }

    fn launch_due(&mut self) {
        let now = Instant::now();
        self.launch_where(|p| p.due <= now);
    }

    fn launch_where(&mut self, ready: impl Fn(&Pending) -> bool) {
        let mut ready: Vec<&mut Pending> = self.pending.values_mut().filter(|p| !p.in_flight && ready(p)).collect();
        // Oldest events first when the in-flight cap makes some wait.
        ready.sort_by(|a, b| a.due.cmp(&b.due).then(a.entry.notice.since.cmp(&b.entry.notice.since)));
        for p in ready {
            if self.attempts.len() >= self.tuning.max_in_flight {
                break;
            }
            p.in_flight = true;
            let entry = p.entry.clone();
            let current = self.current.borrow().clone();
            let http = self.http.clone();
            let tuning = self.tuning.clone();
            let id = entry.id.clone();
            let task = self.attempts.spawn(async move {
                let outcome = attempt(&entry, &current, &http, &tuning).await;
                (entry.id, outcome)
            });
            self.attempt_ids.insert(task.id(), id);
        }
    }

    async fn finished(&mut self, done: Result<(tokio::task::Id, (String, Outcome)), tokio::task::JoinError>) {
        let (id, outcome) = match done {
            Ok((task, r)) => {
                self.attempt_ids.remove(&task);
                r
            }
            Err(e) => {
                // A panicking attempt is a failed attempt: retried like any other.
                let Some(id) = self.attempt_ids.remove(&e.id()) else {
                    return;
                };
                (id, Outcome::Failed(NotifyError::Message(format!("attempt aborted: {e}"))))
            }
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        p.in_flight = false;
        let channel = p.entry.channel;
        let kind = p.entry.notice.kind.name();
        match outcome {
            Outcome::Delivered => {
                let attempts = p.entry.attempts + 1;
                self.pending.remove(&id);
                self.stats.delivered(channel);
                let spool = self.spool.clone();
                let marked = {
                    let id = id.clone();
                    tokio::task::spawn_blocking(move || spool.complete(&id)).await
                };
                if let Ok(Err(e)) = marked {
                    error!(%id, "delivered notification not marked done; it may be sent again: {e}");
                }
                info!(channel = channel.name(), event = kind, %id, attempts, "notification delivered");
            }
            Outcome::Dropped(why) => {
                self.pending.remove(&id);
                self.stats.dropped(channel);
                self.spool.discard(&id);
                warn!(channel = channel.name(), event = kind, %id, "notification dropped: {why}");
            }
            Outcome::Failed(e) => {
                p.entry.attempts += 1;
                p.entry.last_error = Some(e.to_string());
                let delay = self.tuning.backoff(p.entry.attempts);
                p.due = Instant::now() + delay;
                let attempts = p.entry.attempts;
                self.stats.failed(channel);
                error!(
                    channel = channel.name(),
                    event = kind,
                    %id,
                    attempts,
                    retry_in = ?delay,
                    "notification not delivered: {e}"
                );
                let spool = self.spool.clone();
                let entry = p.entry.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.write(&entry)).await {
                    warn!(%id, "attempt count not saved: {e}");
                }
            }
        }
    }
}

/// One delivery attempt, rendered with the configuration in force now.
async fn attempt(entry: &Entry, current: &Current, http: &reqwest::Client, tuning: &Tuning) -> Outcome {
    let config = &current.config;
    let rendered = match entry.channel {
        Channel::Sender => current.templates.render_for_account(&entry.notice, config),
        Channel::Email | Channel::Webhook => current.templates.render(&entry.notice, config),
    };
    let rendered = match rendered {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e),
    };
    match entry.channel {
        Channel::Sender => {
            let Some(to) = email::account_address(&entry.notice.account) else {
                return Outcome::Dropped("the account is not an address");
            };
            let message = match email::build(config, &[to], &rendered, entry.notice.kind.name(), &entry.id) {
                Ok(m) => m,
                Err(e) => return Outcome::Failed(e),
            };
            match email::send(&config.notify.smtp, &config.notify.node_name, tuning.smtp_timeout, message).await {
                Ok(()) => Outcome::Delivered,
                Err(e) => Outcome::Failed(e),
            }
        }
        Channel::Email => {
            let to = email::recipients(config, &entry.notice.policy);
            if to.is_empty() {
                return Outcome::Dropped("no email recipients are configured any more");
            }
            let relay = &config.notify.smtp;
            let message = match email::build(config, &to, &rendered, entry.notice.kind.name(), &entry.id) {
                Ok(m) => m,
                Err(e) => return Outcome::Failed(e),
            };
            match email::send(relay, &config.notify.node_name, tuning.smtp_timeout, message).await {
                Ok(()) => Outcome::Delivered,
                Err(e) => Outcome::Failed(e),
            }
        }
        Channel::Webhook => {
            let Some(url) = &config.notify.webhook else {
                return Outcome::Dropped("notify.webhook is no longer configured");
            };
            let payload = webhook::Payload::new(&entry.id, &entry.notice, &rendered.subject, config);
            match webhook::post(http, url, &payload).await {
                Ok(()) => Outcome::Delivered,
                Err(e) => Outcome::Failed(e),
            }
        }
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
