//! What became of the accepted messages, from the MTA's log (`[delivery] postfix_log`), and
//! the bounce signal it feeds.
//!
//! - [`follow`]: the log file followed across rotations, truncation and absence.
//! - [`outcomes`]: queue ID → account for the messages the engine accepted; each recipient's
//!   outcome; each account's counts over its `bounce_window`.
//!
//! [`Delivery`] joins them: the engine's accepted messages come in over a bounded channel
//! (`Engine::tap_deliveries`), log lines are parsed by `crate::maillog`, and an account whose
//! recipients bounce past its policy's thresholds goes to `Engine::bounces_reached`. [`spawn`]
//! runs it off the milter path: a poll every [`POLL_EVERY`] on a blocking thread, so a slow
//! or stuck log delays only the follower, never a milter reply.

pub mod follow;
pub mod outcomes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::LimitAction;
use crate::maillog;
use crate::policy::engine::Engine;
use crate::policy::engine::bounces::{Accepted, BounceAction};
use follow::{Follower, Found};
use outcomes::{Outcome, Outcomes};

/// How often the log is read. Outcomes are minutes to hours apart from the sending; a second
/// is prompt enough and costs a `stat` a second.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Accepted messages waiting for the follower at most; beyond, the engine drops them.
pub const ACCEPTED_QUEUE: usize = 10_000;

/// The follower, the outcomes and the engine they report to.
pub struct Delivery {
    engine: Arc<Engine>,
    follower: Follower,
    outcomes: Outcomes,
    accepted: mpsc::Receiver<Accepted>,
    /// Polls since the last sweep of expired messages.
    polls: u32,
}

impl Delivery {
    /// Starts taking the engine's accepted messages and following `log`; `None` when the
    /// engine already feeds another follower.
    pub fn new(engine: Arc<Engine>, log: impl Into<PathBuf>) -> Option<Delivery> {
        let accepted = engine.tap_deliveries(ACCEPTED_QUEUE)?;
        Some(Delivery { engine, follower: Follower::new(log), outcomes: Outcomes::default(), accepted, polls: 0 })
    }

    /// Messages followed now.
    pub fn followed(&self) -> usize {
        self.outcomes.followed()
    }

    /// Takes in the messages accepted so far, then reads the log: one step of [`spawn`]'s
    /// loop, which tests call directly.
    pub fn poll(&mut self) -> Found {
        let now = self.engine.clock().now().secs();
        while let Ok(a) = self.accepted.try_recv() {
            self.outcomes.accepted(a, now);
        }
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(600) {
            self.outcomes.expire(now);
        }
        let Delivery { engine, follower, outcomes, accepted, .. } = self;
        let metrics = engine.metrics().clone();
        let mut finished = Vec::new();
        let found = follower.poll(|line| {
            let Ok(parsed) = maillog::parse(line) else { return };
            // A message accepted since the poll began may already have its first line here:
            // the engine hands it over before it answers the MTA, so before Postfix logs it.
            while let Ok(a) = accepted.try_recv() {
                outcomes.accepted(a, now);
            }
            if let maillog::Event::Delivery { status: maillog::DeliveryStatus::Deferred, .. } = parsed.event
                && parsed.queue_id.is_some_and(|id| outcomes.follows(id))
            {
                metrics.delivery_outcome("deferred");
            }
            outcomes.line(&parsed, now, |f| {
                metrics.delivery_outcome(match f.outcome {
                    Outcome::Delivered => "delivered",
                    Outcome::Bounced => "bounced",
                });
                if f.outcome == Outcome::Bounced && !finished.contains(&f.account) {
                    finished.push(f.account);
                }
            });
        });
        // Only a bounce can pass the thresholds; each account once per poll.
        for account in finished {
            self.judge(&account, now);
        }
        found
    }

    fn judge(&mut self, account: &str, now: i64) {
        judge(&self.engine, &mut self.outcomes, account, now);
    }
}

/// Judges `account`'s outcomes at `now` against its policy's bounce thresholds, and has the
/// engine restrict or alert when they are passed (the simulator judges the same way).
pub fn judge(engine: &Engine, outcomes: &mut Outcomes, account: &str, now: i64) {
    let thresholds = engine.bounce_thresholds(account);
    if thresholds.percent == 0 {
        return;
    }
    let evidence = outcomes.evidence(account, now, thresholds.window);
    if !thresholds.reached(evidence.bounced, evidence.delivered) {
        return;
    }
    match engine.bounces_reached(account, &evidence) {
        BounceAction::Restricted => outcomes.forget(account),
        // Restricted already: what bounces now was sent before; after a release the
        // account starts afresh.
        BounceAction::Nothing if thresholds.action != LimitAction::Alert => outcomes.forget(account),
        _ => {}
    }
}

/// Follows `log` for `engine` until `shutdown` turns true. Each poll runs on a blocking
/// thread: the milter's workers never wait for the log's filesystem.
pub fn spawn(
    engine: Arc<Engine>,
    log: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut delivery = Delivery::new(engine, log)?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let step = tokio::task::spawn_blocking(move || {
                delivery.poll();
                delivery
            });
            delivery = match step.await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!("delivery follower stopped: {e}");
                    return;
                }
            };
        }
    }))
}
