//! The notifier task: takes events off the channel, writes each notice to the spool before
//! anything else, attempts delivery, and reschedules failures with backoff. Attempts run as
//! separate tasks (at most [`Tuning::max_in_flight`]) so a relay that hangs for its whole
//! timeout does not hold up the webhook or the next event.
//!
//! A burst of events (many accounts restricted at once) is taken off the channel in groups of
//! up to [`GROUP`]: the group's notices are spooled with one directory sync, and deliveries
//! that finish together are marked done together, so the disk syncs per notice fall from four
//! to about one. What is due next comes from a queue ordered by due time, so a step costs a
//! logarithm of what is pending, not a scan and sort of all of it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use time::OffsetDateTime;

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

/// Events spooled together, and finished deliveries marked done together, at most.
const GROUP: usize = 256;

/// A pending entry's place in the due queue: due time, then the event's time (oldest events
/// first when the in-flight cap makes some wait), then the id.
type DueKey = Reverse<(Instant, OffsetDateTime, String)>;

pub(super) struct Worker {
    current: watch::Receiver<Arc<Current>>,
    spool: Spool,
    stats: Arc<Stats>,
    tuning: Tuning,
    http: reqwest::Client,
    pending: HashMap<String, Pending>,
    /// Every pending entry that is not in flight, by [`DueKey`]. A key whose entry has since
    /// left, gone in flight or been rescheduled is stale and skipped when it surfaces.
    due: BinaryHeap<DueKey>,
    /// Delivered since the last spool write: marked done together.
    delivered: Vec<String>,
    /// Failed since the last spool write: their attempt counts saved together.
    failed: Vec<Entry>,
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
        let mut worker = Worker {
            current,
            spool,
            stats,
            tuning,
            http,
            pending: HashMap::new(),
            due: BinaryHeap::new(),
            delivered: Vec::new(),
            failed: Vec::new(),
            attempts: JoinSet::new(),
            attempt_ids: HashMap::new(),
        };
        let now = Instant::now();
        for entry in loaded {
            worker.schedule(entry, now);
        }
        worker
    }

    /// Adds `entry` to what is pending, due at `due`.
    fn schedule(&mut self, entry: Entry, due: Instant) {
        self.due.push(Reverse((due, entry.notice.since, entry.id.clone())));
        self.pending.insert(entry.id.clone(), Pending { entry, due, in_flight: false });
    }

    /// The first live key of the due queue, dropping stale ones on the way.
    fn next_due(&mut self) -> Option<Instant> {
        while let Some(Reverse((due, _, id))) = self.due.peek() {
            if self.pending.get(id).is_some_and(|p| !p.in_flight && p.due == *due) {
                return Some(*due);
            }
            self.due.pop();
        }
        None
    }

    pub(super) async fn run(
        mut self,
        replay: Vec<Event>,
        mut events: mpsc::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut recovered = 0;
        for group in replay.chunks(GROUP) {
            recovered += self.accept(group).await;
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
            let next_due = if self.attempts.len() >= self.tuning.max_in_flight { None } else { self.next_due() };
            tokio::select! {
                // A dropped sender means the owner is gone: stop as for the signal itself.
                changed = shutdown.changed() => if changed.is_err() { break },
                changed = stop.changed() => if changed.is_err() { break },
                Some(done) = self.attempts.join_next_with_id(), if !self.attempts.is_empty() => {
                    self.finished(done);
                    // Whatever else has finished meanwhile is marked done in the same write.
                    while self.delivered.len() < GROUP {
                        let Some(done) = self.attempts.try_join_next_with_id() else { break };
                        self.finished(done);
                    }
                    self.save_outcomes().await;
                }
                event = events.recv(), if events_open => match event {
                    Some(e) => {
                        let mut group = vec![e];
                        while group.len() < GROUP {
                            let Ok(e) = events.try_recv() else { break };
                            group.push(e);
                        }
                        self.accept(&group).await;
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
        let mut queued = Vec::new();
        while let Ok(e) = events.try_recv() {
            queued.push(e);
        }
        for group in queued.chunks(GROUP) {
            self.accept(group).await;
        }
        let deadline = Instant::now() + self.tuning.flush_timeout;
        let now = Instant::now();
        // Only what was never tried or is due: something that failed a second ago would
        // most likely fail again and only delay the exit.
        loop {
            self.launch_due_by(now);
            if self.attempts.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = self.attempts.join_next_with_id() => {
                    self.finished(done);
                    self.save_outcomes().await;
                }
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

    /// New events: one notice per configured channel each, spooled together, then due at
    /// once. Returns how many notices they added (none for one already pending or delivered).
    async fn accept(&mut self, events: &[Event]) -> usize {
        let current = self.current.borrow().clone();
        let mut added = Vec::new();
        for event in events {
            let notice = Notice::from(event);
            for channel in channels(&current, &notice) {
                let entry = Entry::new(notice.clone(), channel);
                if self.pending.contains_key(&entry.id) || self.spool.is_known(&entry.id) {
                    debug!(id = %entry.id, "notification already spooled or delivered; not sent twice");
                    continue;
                }
                self.stats.queued(channel);
                // Pending at once, so the same notice twice in one group is taken once; no
                // attempt starts before the group is written below.
                self.schedule(entry.clone(), Instant::now());
                added.push(entry);
            }
        }
        if !added.is_empty() {
            let spool = self.spool.clone();
            let count = added.len();
            match tokio::task::spawn_blocking(move || spool.write_all(&added)).await {
                Ok(failures) => {
                    for (id, e) in failures {
                        error!(%id, "notification not spooled, delivering from memory only: {e}");
                    }
                }
                Err(e) => error!(notices = count, "notifications not spooled, delivering from memory only: {e}"),
            }
            return count;
        }
        0
    }

    /// Marks what was delivered done and saves what failed, each group in one spool write.
    async fn save_outcomes(&mut self) {
        if !self.delivered.is_empty() {
            let ids = std::mem::take(&mut self.delivered);
            let spool = self.spool.clone();
            if let Ok(failures) = tokio::task::spawn_blocking(move || spool.complete_all(&ids)).await {
                for (id, e) in failures {
                    error!(%id, "delivered notification not marked done; it may be sent again: {e}");
                }
            }
        }
        if !self.failed.is_empty() {
            let entries = std::mem::take(&mut self.failed);
            let spool = self.spool.clone();
            if let Ok(failures) = tokio::task::spawn_blocking(move || spool.write_all(&entries)).await {
                for (id, e) in failures {
                    warn!(%id, "attempt count not saved: {e}");
                }
            }
        }
    }

    fn launch_due(&mut self) {
        self.launch_due_by(Instant::now());
    }

    /// Starts attempts for what is due by `now`, earliest first, up to the in-flight cap.
    fn launch_due_by(&mut self, now: Instant) {
        while self.attempts.len() < self.tuning.max_in_flight {
            let Some(due) = self.next_due() else { break };
            if due > now {
                break;
            }
            let Some(Reverse((_, _, id))) = self.due.pop() else { break };
            let Some(p) = self.pending.get_mut(&id) else { continue };
            p.in_flight = true;
            let entry = p.entry.clone();
            let current = self.current.borrow().clone();
            let http = self.http.clone();
            let tuning = self.tuning.clone();
            let task = self.attempts.spawn(async move {
                let outcome = attempt(&entry, &current, &http, &tuning).await;
                (entry.id, outcome)
            });
            self.attempt_ids.insert(task.id(), id);
        }
    }

    /// Takes in one attempt's end; what it means for the spool is written by
    /// [`Worker::save_outcomes`].
    fn finished(&mut self, done: Result<(tokio::task::Id, (String, Outcome)), tokio::task::JoinError>) {
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
                info!(channel = channel.name(), event = kind, %id, attempts, "notification delivered");
                self.delivered.push(id);
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
                self.due.push(Reverse((p.due, p.entry.notice.since, id.clone())));
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
                self.failed.push(p.entry.clone());
            }
        }
    }
}

/// The channels `notice` goes to under the configuration in force.
fn channels(current: &Current, notice: &Notice) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(3);
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
    channels
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
